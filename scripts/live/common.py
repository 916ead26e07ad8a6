"""Helpers shared by the live harness: commands in namespaces, the processes the harness starts
(each kept by PID so that it is stopped by PID), and logging. Standard library only."""

import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PY = sys.executable or "python3"


def log(*parts):
    print("[live %s]" % time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


class CommandError(RuntimeError):
    pass


def run(cmd, check=True, input=None, timeout=60, quiet=False):
    """Runs `cmd` (a list) and returns its stdout. Every command has a timeout, so that a hung tool
    cannot hold the run past its deadline."""
    try:
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise CommandError("timed out after %ss: %s" % (timeout, " ".join(cmd)))
    if check and p.returncode != 0:
        raise CommandError("%s: exit %d: %s" % (" ".join(cmd), p.returncode, (p.stderr or p.stdout).strip()))
    if not quiet and p.returncode != 0:
        log("(ignored) %s: %s" % (" ".join(cmd), (p.stderr or "").strip()))
    return p.stdout


def nsrun(ns, cmd, **kw):
    """Runs `cmd` inside namespace `ns`."""
    return run(["ip", "netns", "exec", ns] + list(cmd), **kw)


def nsjson(ns, cmd, timeout=120):
    """Runs a harness program (clients.py ...) in `ns` and parses the JSON it prints last."""
    out = nsrun(ns, cmd, timeout=timeout)
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines:
        raise CommandError("no output from %s" % " ".join(cmd))
    return json.loads(lines[-1])


def ip_batch(ns, lines):
    """Runs `ip` commands in `ns` in one process (`ip -batch`): building the topology takes a few
    hundred of them."""
    if not lines:
        return
    run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n")


def sysctls(ns, settings):
    """Writes each `key=value` of `settings` under /proc/sys in `ns`, in one shell."""
    script = "; ".join("echo %s > /proc/sys/%s" % (v, k.replace(".", "/")) for k, v in settings)
    nsrun(ns, ["sh", "-ec", script])


class Procs:
    """The processes the harness started, by PID. Each is stopped by its PID (SIGTERM, then SIGKILL
    after a grace period); nothing is ever killed by name."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = {}  # name -> Popen

    def start(self, name, ns, cmd, env=None, stdin=None):
        out = open(os.path.join(self.logdir, name + ".out"), "w")
        err = open(os.path.join(self.logdir, name + ".err"), "w")
        full = (["ip", "netns", "exec", ns] if ns else []) + list(cmd)
        e = dict(os.environ)
        if env:
            e.update(env)
        # Its own process group (setsid): a Ctrl-C at the terminal reaches the harness only, which then stops
        # every process in order; `ip netns exec` execs the command, so the PID is the command's.
        p = subprocess.Popen(full, stdout=out, stderr=err, stdin=stdin or subprocess.DEVNULL, env=e,
                             start_new_session=True)
        out.close()
        err.close()
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError("process name %s in use" % name)
        self.procs[name] = p
        return p

    def pid(self, name):
        return self.procs[name].pid

    def alive(self, name):
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    def send(self, name, sig):
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            os.kill(p.pid, sig)

    def stop(self, name, grace=5.0, sig=signal.SIGTERM):
        """Stops `name` and returns its exit code (None if it had to be killed)."""
        p = self.procs.pop(name, None)
        if p is None:
            return None
        if p.poll() is not None:
            return p.returncode
        try:
            os.kill(p.pid, sig)
            return p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
            return None
        except ProcessLookupError:
            return p.poll()

    def stop_all(self):
        for name in list(self.procs):
            try:
                self.stop(name, grace=3.0)
            except Exception as e:  # teardown goes on whatever one process does
                log("stopping %s: %s" % (name, e))

    def read(self, name, stream="out"):
        try:
            with open(os.path.join(self.logdir, "%s.%s" % (name, stream))) as f:
                return f.read()
        except OSError:
            return ""


class Deadline:
    """A global deadline: each check asks how long it may take, so the whole run stays bounded."""

    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return self.end - time.monotonic()

    def expired(self):
        return self.left() <= 0

    def cap(self, seconds):
        return max(1.0, min(seconds, self.left()))


def read_snmp(ns):
    """The TCP and UDP counters of /proc/net/snmp and /proc/net/netstat in `ns`, as {'Tcp.RetransSegs':
    N, ...} (per namespace, unlike nstat's history file, which all namespaces share)."""
    text = nsrun(ns, ["cat", "/proc/net/snmp", "/proc/net/netstat"], timeout=10)
    out = {}
    lines = [line.split() for line in text.splitlines()]
    for head, vals in zip(lines, lines[1:]):
        # Each table is a line of names followed by a line of values with the same prefix.
        if len(head) > 1 and len(head) == len(vals) and head[0] == vals[0] and not head[1].lstrip("-").isdigit() \
                and vals[1].lstrip("-").isdigit():
            for k, v in zip(head[1:], vals[1:]):
                out["%s.%s" % (head[0].rstrip(":"), k)] = int(v)
    return out


def link_stats(ns, dev):
    """rx/tx packet and byte counters of `dev` in `ns`."""
    base = "/sys/class/net/%s/statistics/" % dev
    names = ["rx_packets", "tx_packets", "rx_bytes", "tx_bytes", "rx_dropped", "tx_dropped"]
    out = nsrun(ns, ["cat"] + [base + n for n in names], timeout=10).split()
    return dict(zip(names, (int(x) for x in out)))


# The download blob: deterministic, so that a client computes the digest it expects without it
# ever crossing the network. MiB i is a fixed pseudo-random MiB with i in its first 8 bytes, so a
# MiB delivered twice or out of place changes the digest.
_BLOB_BASE = None


def blob_chunk(i):
    global _BLOB_BASE
    if _BLOB_BASE is None:
        import random
        _BLOB_BASE = random.Random(20130812).randbytes(1 << 20)
    return i.to_bytes(8, "big") + _BLOB_BASE[8:]


def blob_sha256(mib):
    import hashlib
    h = hashlib.sha256()
    for i in range(mib):
        h.update(blob_chunk(i))
    return h.hexdigest()
