#!/usr/bin/env python3
"""Clients of the live harness, run inside namespaces with real kernel sockets (standard library
only). Each prints one JSON line with what it measured (the long-connection client prints a line when
its connections are established, then its result). Every loop is bounded in count and in time.

  clients.py http --host VIP --port 80 --count N --sources A,B [--parallel 16] [--seconds S]
  clients.py udp --host VIP --port 53 --count N --sources A,B [--seconds S]
  clients.py download --host VIP --port 80 --mb 200 [--source A] [--seconds S]
  clients.py post --host VIP --port 80 --kb 256 [--seconds S]
  clients.py long --host VIP --port 80 --conns 64 --hold S [--sources A,B]
  clients.py watch --host VIP --port 80 --seconds S [--rate R]     (one request every 1/R s, logged)
  clients.py synflood --dst VIP --dport 80 --src-net 198.18.200.0/21 --count N [--seconds S]
  clients.py outbound --server ADDR --port 9000 --count 1000 [--seconds S]
  clients.py idle --host VIP --port 7 --idle S [--seconds S]
  clients.py pmtu --host VIP --port 53 [--size 1472] [--seconds S]
"""

import argparse
import hashlib
import ipaddress
import json
import os
import random
import resource
import selectors
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def out(obj):
    print(json.dumps(obj), flush=True)


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def http_get(host, port, path="/", source=None, timeout=5.0, method="GET", body=b""):
    """One request on a fresh connection. Returns (source address, source port, status, headers,
    body); raises with the connection's source port in the message, so that a failure names it."""
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.settimeout(timeout)
    sport = None
    try:
        s.bind((source or ("::" if ":" in host else "0.0.0.0"), 0))
        sport = s.getsockname()[1]
        s.connect((host, port))
        req = "%s %s HTTP/1.0\r\nHost: %s\r\n" % (method, path, host)
        if body:
            req += "Content-Length: %d\r\n" % len(body)
        s.sendall(req.encode() + b"\r\n" + body)
        data = bytearray()
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
        head, _, payload = bytes(data).partition(b"\r\n\r\n")
        lines = head.decode(errors="replace").split("\r\n")
        status = int(lines[0].split()[1]) if lines and len(lines[0].split()) > 1 else 0
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        return s.getsockname()[0], sport, status, headers, payload
    except (OSError, ValueError) as e:
        raise OSError("%s:%s -> %s:%d: %s" % (source or "*", sport, host, port, e))
    finally:
        s.close()


def cmd_http(a):
    """N requests, each on a fresh connection, from the source addresses in turn, `parallel` at a time."""
    sources = a.sources.split(",") if a.sources else [None]
    end = time.monotonic() + a.seconds
    lock = threading.Lock()
    state = {"next": 0, "ok": 0, "backends": {}, "failed": [], "mismatch": [], "locals": {}}

    def worker():
        while time.monotonic() < end:
            with lock:
                i = state["next"]
                if i >= a.count:
                    return
                state["next"] += 1
            src = sources[i % len(sources)]
            try:
                _, sport, status, _, body = http_get(a.host, a.port, a.path, src, timeout=a.timeout)
                r = json.loads(body)
                with lock:
                    if status != 200:
                        state["failed"].append("%s:%s status %d" % (src, sport, status))
                        continue
                    state["ok"] += 1
                    state["backends"][r["backend"]] = state["backends"].get(r["backend"], 0) + 1
                    state["locals"][r["local"]] = state["locals"].get(r["local"], 0) + 1
                    if src and (r["client"] != src or r["port"] != sport):
                        state["mismatch"].append("%s:%s seen as %s:%s" % (src, sport, r["client"], r["port"]))
            except (OSError, ValueError, KeyError) as e:
                with lock:
                    state["failed"].append(str(e))
            if a.gap:
                time.sleep(a.gap)

    t0 = time.monotonic()
    ths = [threading.Thread(target=worker) for _ in range(a.parallel)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    out({"count": a.count, "sent": state["next"], "ok": state["ok"], "backends": state["backends"],
         "failed": state["failed"][:20], "failures": len(state["failed"]), "mismatch": state["mismatch"][:20],
         "mismatches": len(state["mismatch"]), "locals": state["locals"],
         "seconds": round(time.monotonic() - t0, 2)})


def cmd_udp(a):
    """N requests, each from a fresh socket (a new flow); a lost datagram is retried twice on the
    same socket, and the retries are counted."""
    sources = a.sources.split(",") if a.sources else [None]
    end = time.monotonic() + a.seconds
    lock = threading.Lock()
    state = {"next": 0, "ok": 0, "retries": 0, "backends": {}, "failed": [], "mismatch": []}

    def one(i, src):
        s = socket.socket(family(a.host), socket.SOCK_DGRAM)
        s.settimeout(1.0)
        try:
            s.bind((src or ("::" if ":" in a.host else "0.0.0.0"), 0))
            sport = s.getsockname()[1]
            s.connect((a.host, a.port))
            for attempt in range(3):
                s.send(("req%d " % i).encode() + b"x" * 64)
                try:
                    r = json.loads(s.recv(65535))
                    return sport, attempt, r
                except socket.timeout:
                    continue
            raise OSError("%s:%s -> %s:%d: no answer in 3 tries" % (src, sport, a.host, a.port))
        finally:
            s.close()

    def worker():
        while time.monotonic() < end:
            with lock:
                i = state["next"]
                if i >= a.count:
                    return
                state["next"] += 1
            src = sources[i % len(sources)]
            try:
                sport, retries, r = one(i, src)
                with lock:
                    state["ok"] += 1
                    state["retries"] += retries
                    state["backends"][r["backend"]] = state["backends"].get(r["backend"], 0) + 1
                    if src and (r["client"] != src or r["port"] != sport):
                        state["mismatch"].append("%s:%s seen as %s:%s" % (src, sport, r["client"], r["port"]))
            except (OSError, ValueError, KeyError) as e:
                with lock:
                    state["failed"].append(str(e))

    t0 = time.monotonic()
    ths = [threading.Thread(target=worker) for _ in range(a.parallel)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    out({"count": a.count, "sent": state["next"], "ok": state["ok"], "retries": state["retries"],
         "backends": state["backends"], "failed": state["failed"][:20], "failures": len(state["failed"]),
         "mismatch": state["mismatch"][:20], "mismatches": len(state["mismatch"]),
         "seconds": round(time.monotonic() - t0, 2)})


def cmd_download(a):
    """GET /blob?mb=N and its SHA-256 against the digest the blob must have."""
    expect = common.blob_sha256(a.mb)
    s = socket.socket(family(a.host), socket.SOCK_STREAM)
    s.settimeout(10)
    res = {"mb": a.mb, "ok": False}
    t0 = time.monotonic()
    try:
        if a.source:
            s.bind((a.source, 0))
        s.connect((a.host, a.port))
        res["sport"] = s.getsockname()[1]
        s.sendall(("GET /blob?mb=%d HTTP/1.0\r\nHost: x\r\n\r\n" % a.mb).encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            b = s.recv(4096)
            if not b:
                raise OSError("closed before the headers")
            buf += b
        head, _, rest = buf.partition(b"\r\n\r\n")
        for line in head.decode().split("\r\n")[1:]:
            if line.lower().startswith("x-backend:"):
                res["backend"] = line.split(":", 1)[1].strip()
        h = hashlib.sha256(rest)
        n = len(rest)
        end = time.monotonic() + a.seconds
        while n < a.mb << 20:
            if time.monotonic() > end:
                raise OSError("deadline after %d bytes" % n)
            b = s.recv(1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
        res["bytes"] = n
        res["sha256"] = h.hexdigest()
        res["sha_ok"] = res["sha256"] == expect
        res["ok"] = res["sha_ok"] and n == a.mb << 20
        if hasattr(socket, "TCP_INFO"):
            # struct tcp_info: total retransmissions (tcpi_total_retrans) at offset 100.
            ti = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
            res["client_total_retrans"] = struct.unpack_from("I", ti, 100)[0]
    except OSError as e:
        res["error"] = str(e)
    finally:
        s.close()
    sec = time.monotonic() - t0
    res["seconds"] = round(sec, 2)
    res["mbit_s"] = round(res.get("bytes", 0) * 8 / sec / 1e6, 1) if sec else 0
    out(res)


def cmd_post(a):
    """POST a body of KB kilobytes to /echo; the server answers with its digest."""
    body = random.Random(7).randbytes(a.kb * 1024)
    res = {"kb": a.kb, "ok": False}
    try:
        _, sport, status, _, payload = http_get(a.host, a.port, "/echo", a.source, timeout=a.seconds,
                                                method="POST", body=body)
        r = json.loads(payload)
        res.update({"sport": sport, "status": status, "backend": r["backend"],
                    "ok": status == 200 and r["sha256"] == hashlib.sha256(body).hexdigest() and r["len"] == len(body)})
    except (OSError, ValueError, KeyError) as e:
        res["error"] = str(e)
    out(res)


def cmd_long(a):
    """`conns` connections to /stream, each receiving for `hold` seconds. Prints {"established": n}
    once they all are, then the result: bytes, the longest stall and the error of each broken one."""
    raise_nofile()
    sources = a.sources.split(",") if a.sources else [None]
    conns, results = [], {}
    for i in range(a.conns):
        s = socket.socket(family(a.host), socket.SOCK_STREAM)
        s.settimeout(10)
        src = sources[i % len(sources)]
        try:
            if src:
                s.bind((src, 0))
            s.connect((a.host, a.port))
            s.sendall(("GET /stream?seconds=%g&chunk=%d&gap=%g HTTP/1.0\r\nHost: x\r\n\r\n"
                       % (a.hold, a.chunk, a.gap)).encode())
            conns.append((s, "%s:%d" % s.getsockname()[:2]))
        except OSError as e:
            results["%s#%d" % (src, i)] = {"error": "connect: %s" % e}
            s.close()
    out({"established": len(conns)})
    lock = threading.Lock()

    def reader(s, name):
        r = {"bytes": 0, "max_gap": 0.0, "end": False}
        last = time.monotonic()
        deadline = last + a.hold + 30
        data_tail = b""
        head = b""
        try:
            while time.monotonic() < deadline:
                b = s.recv(65536)
                now = time.monotonic()
                if not b:
                    break
                r["max_gap"] = max(r["max_gap"], now - last)
                last = now
                r["bytes"] += len(b)
                data_tail = (data_tail + b)[-16:]
                if "backend" not in r and len(head) < 4096:
                    # The stream starts with the server's JSON line: which backend holds it.
                    head += b
                    _, sep, rest = head.partition(b"\r\n\r\n")
                    if sep and b"\n" in rest:
                        try:
                            r["backend"] = json.loads(rest.split(b"\n", 1)[0])["backend"]
                        except (ValueError, KeyError):
                            r["backend"] = "?"
            r["end"] = data_tail.endswith(b"END\n")
        except OSError as e:
            r["error"] = str(e)
        r["max_gap"] = round(r["max_gap"], 2)
        s.close()
        with lock:
            results[name] = r

    ths = [threading.Thread(target=reader, args=c) for c in conns]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    broken = {k: v for k, v in results.items() if "error" in v or not v.get("end")}
    per_backend = {}
    for v in results.values():
        b = v.get("backend", "?")
        per_backend.setdefault(b, [0, 0])[0 if ("error" not in v and v.get("end")) else 1] += 1
    out({"conns": a.conns, "established": len(conns), "completed": len(results) - len(broken),
         "broken": broken, "per_backend": per_backend, "bytes": sum(v.get("bytes", 0) for v in results.values()),
         "max_gap": max([v.get("max_gap", 0) for v in results.values()] or [0])})


def cmd_watch(a):
    """One request on a fresh connection every 1/rate seconds for `seconds`, each printed as a JSON
    line (time, backend or error): the health check sees from it when a backend stops taking
    connections and when it comes back."""
    end = time.monotonic() + a.seconds
    gap = 1.0 / a.rate
    n = 0
    while time.monotonic() < end and n < a.seconds * a.rate + 1:
        t0 = time.monotonic()
        n += 1
        try:
            _, sport, status, _, body = http_get(a.host, a.port, "/", None, timeout=2.0)
            out({"t": time.time(), "backend": json.loads(body)["backend"], "sport": sport})
        except (OSError, ValueError, KeyError) as e:
            out({"t": time.time(), "error": str(e)})
        time.sleep(max(0.0, gap - (time.monotonic() - t0)))
    out({"done": n})


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def cmd_synflood(a):
    """Spoofed SYNs from random addresses of `src-net` (which the router blackholes: the SYN-ACKs
    die there) at VIP:port, through a raw socket. The TCP checksum is the sum without the varying
    words (source address and port, sequence number) plus those words, so each packet costs a few
    additions."""
    net = ipaddress.ip_network(a.src_net)
    if not ipaddress.ip_network("198.18.0.0/15").supernet_of(net):
        raise SystemExit("flood sources must lie in 198.18.0.0/15")
    dst = socket.inet_aton(a.dst)
    base_src = int(net.network_address)
    nsrc = net.num_addresses - 2
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    rnd = random.Random(a.seed)
    # TCP header: sport, dport, seq, ack, offset 5 words + flags SYN, window, checksum, urgent.
    fixed = checksum(dst + struct.pack("!BBH", 0, 6, 20) + struct.pack("!HHHH", a.dport, 0, 0x5002, 65535))
    t0 = time.monotonic()
    end = t0 + a.seconds
    sent = errors = 0
    gap = 1.0 / a.rate if a.rate else 0
    while sent < a.count:
        if (sent & 1023) == 0:
            now = time.monotonic()
            if now > end:
                break
            if gap and sent * gap > now - t0:
                time.sleep(sent * gap - (now - t0))
        src = base_src + 1 + rnd.randrange(nsrc)
        sport = 1024 + rnd.randrange(64000)
        seq = rnd.getrandbits(32)
        c = fixed + (src >> 16) + (src & 0xFFFF) + sport + (seq >> 16) + (seq & 0xFFFF)
        while c >> 16:
            c = (c & 0xFFFF) + (c >> 16)
        tcp = struct.pack("!HHIIHHHH", sport, a.dport, seq, 0, 0x5002, 65535, (~c) & 0xFFFF, 0)
        iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, struct.pack("!I", src), dst)
        try:
            s.sendto(iph + tcp, (a.dst, 0))
            sent += 1
        except OSError:
            errors += 1
            if errors > 1000 and errors > sent:
                break
            time.sleep(0.001)
    sec = time.monotonic() - t0
    out({"sent": sent, "errors": errors, "seconds": round(sec, 2), "pps": int(sent / sec) if sec else 0})


def cmd_outbound(a):
    """`count` connections to the internet server at once, from this backend: each reads the line
    with the source address the server saw, and all are held open until every one has answered."""
    raise_nofile()
    sel = selectors.DefaultSelector()
    end = time.monotonic() + a.seconds
    pending, socks, seen, failed = {}, [], {}, []
    for i in range(a.count):
        s = socket.socket(family(a.server), socket.SOCK_STREAM)
        s.setblocking(False)
        err = s.connect_ex((a.server, a.port))
        if err not in (0, 115):  # EINPROGRESS
            failed.append("connect %d: errno %d" % (i, err))
            s.close()
            continue
        socks.append(s)
        pending[s] = b""
        sel.register(s, selectors.EVENT_READ)
    ports = set()
    while pending and time.monotonic() < end:
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            try:
                b = s.recv(4096)
            except OSError as e:
                failed.append("%s: %s" % (s.getsockname()[1], e))
                b = None
            if b:
                pending[s] += b
                if not pending[s].endswith(b"\n"):
                    continue
                r = json.loads(pending[s])
                seen[r["src"]] = seen.get(r["src"], 0) + 1
                ports.add(r["port"])
            elif b is not None:
                failed.append("%s: closed without a line" % s.getsockname()[1])
            sel.unregister(s)
            del pending[s]
    for s in pending:
        try:
            failed.append("%s: no answer before the deadline" % (s.getsockname()[1],))
        except OSError:
            failed.append("no answer before the deadline")
    for s in socks:
        s.close()
    out({"count": a.count, "answered": sum(seen.values()), "seen": seen, "distinct_ports": len(ports),
         "failed": failed[:20], "failures": len(failed)})


def cmd_idle(a):
    """A connection that exchanges one line and then idles: waits up to `idle` + `slack` seconds for
    the load balancer's reset."""
    s = socket.socket(family(a.host), socket.SOCK_STREAM)
    s.settimeout(10)
    res = {"idle": a.idle}
    try:
        s.connect((a.host, a.port))
        res["sport"] = s.getsockname()[1]
        s.sendall(b"hello\n")
        res["echo"] = s.recv(100).decode(errors="replace").strip()
        t0 = time.monotonic()
        s.settimeout(a.idle + a.slack)
        try:
            b = s.recv(100)
            res["got"] = "eof" if not b else "data"
        except ConnectionResetError:
            res["got"] = "reset"
        except socket.timeout:
            res["got"] = "timeout"
        res["after"] = round(time.monotonic() - t0, 1)
    except OSError as e:
        res["got"] = "error"
        res["error"] = str(e)
    finally:
        s.close()
    out(res)


IP_MTU_DISCOVER, IP_PMTUDISC_DO, IP_MTU = 10, 2, 14


def cmd_pmtu(a):
    """A UDP datagram too large for the underlay once tunnelled, with DF: the answer must be ICMP
    "fragmentation needed", which the kernel reports on the connected socket as EMSGSIZE and records
    as the path MTU; a datagram that fits that MTU must then be answered."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
    s.settimeout(2.0)
    s.connect((a.host, a.port))
    res = {"size": a.size, "sport": s.getsockname()[1], "icmp": False, "answered_big": False}
    end = time.monotonic() + a.seconds
    for _ in range(3):
        if time.monotonic() > end:
            break
        try:
            s.send(b"big " + b"x" * (a.size - 4))
            s.recv(65535)
            res["answered_big"] = True
            break
        except OSError as e:
            if e.errno == 90:  # EMSGSIZE: the ICMP error arrived (or the route already knows the MTU)
                res["icmp"] = True
                break
        except socket.timeout:
            continue
    res["path_mtu"] = s.getsockopt(socket.IPPROTO_IP, IP_MTU)
    small = res["path_mtu"] - 28
    res["small_size"] = small
    res["answered_small"] = False
    for _ in range(3):
        if time.monotonic() > end:
            break
        try:
            s.send(b"small " + b"x" * (small - 6))
            r = json.loads(s.recv(65535))
            res["answered_small"] = r.get("len") == small
            res["backend"] = r.get("backend")
            break
        except (socket.timeout, OSError, ValueError) as e:
            res["small_error"] = str(e)
    s.close()
    out(res)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name, **defaults):
        c = sub.add_parser(name)
        c.add_argument("--seconds", type=float, default=defaults.get("seconds", 60))
        return c

    c = add("http")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, default=80)
    c.add_argument("--path", default="/")
    c.add_argument("--count", type=int, default=1000)
    c.add_argument("--sources")
    c.add_argument("--parallel", type=int, default=16)
    c.add_argument("--timeout", type=float, default=5.0)
    c.add_argument("--gap", type=float, default=0, help="pause of each worker between requests (demo pace)")
    c = add("udp")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, default=53)
    c.add_argument("--count", type=int, default=1000)
    c.add_argument("--sources")
    c.add_argument("--parallel", type=int, default=16)
    c = add("download", seconds=120)
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, default=80)
    c.add_argument("--mb", type=int, default=200)
    c.add_argument("--source")
    c = add("post", seconds=30)
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, default=80)
    c.add_argument("--kb", type=int, default=256)
    c.add_argument("--source")
    c = add("long")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, default=80)
    c.add_argument("--conns", type=int, default=64)
    c.add_argument("--hold", type=float, default=20)
    c.add_argument("--chunk", type=int, default=4096)
    c.add_argument("--gap", type=float, default=0.05)
    c.add_argument("--sources")
    c = add("watch")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, default=80)
    c.add_argument("--rate", type=float, default=10)
    c = add("synflood", seconds=30)
    c.add_argument("--dst", required=True)
    c.add_argument("--dport", type=int, default=80)
    c.add_argument("--src-net", default="198.18.200.0/21")
    c.add_argument("--count", type=int, default=300000)
    c.add_argument("--rate", type=float, default=0, help="packets a second (0: as fast as it goes)")
    c.add_argument("--seed", type=int, default=1)
    c = add("outbound")
    c.add_argument("--server", required=True)
    c.add_argument("--port", type=int, default=9000)
    c.add_argument("--count", type=int, default=1000)
    c = add("idle", seconds=600)
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, default=7)
    c.add_argument("--idle", type=float, required=True)
    c.add_argument("--slack", type=float, default=15)
    c = add("pmtu", seconds=20)
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, default=53)
    c.add_argument("--size", type=int, default=1472)
    a = p.parse_args()
    globals()["cmd_" + a.cmd](a)


if __name__ == "__main__":
    main()
