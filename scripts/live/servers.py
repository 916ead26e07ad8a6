#!/usr/bin/env python3
"""Servers of the live harness, run inside namespaces as real kernel sockets (standard library only).

  servers.py backend --name B11 [--http PORT] [--float ADDR:PORT] [--udp PORT] [--echo PORT] --log FILE
      a backend: HTTP (GET / answers with the backend's name and the client address it saw,
      /health, /blob?mb=N the deterministic download, /stream?seconds=S a long transfer, POST /echo
      the body's digest), UDP request/response, a TCP echo for the idle-timeout check (each end of a
      connection is logged: how it ended, reset or not), and an HTTP listener on a floating VIP.
  servers.py inet --port PORT
      the internet server: each connection gets one line with the source address it sees, then
      stays open until the client closes it (1,000 and more at once, on one thread).
  servers.py prober --target NAME=ADDR:PORT ... --interval S --count N
      the kernel stand-in's health prober: HTTP GET /health every S seconds, N failures take a backend
      out, 2 successes bring it back; prints each change as a JSON line.
"""

import argparse
import http.server
import json
import os
import resource
import selectors
import socket
import socketserver
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def raise_nofile():
    # 1,000 concurrent connections need more descriptors than the usual soft limit of 1,024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def plain(addr):
    """An IPv4 peer of a dual-stack socket shows as ::ffff:a.b.c.d; the checks compare plain addresses."""
    return addr[7:] if addr.startswith("::ffff:") else addr


def dual_stack_socket(kind, port, host="::"):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    # A floating-IP listener binds the VIP, which sits on the loopback device.
    s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: the address may be added after the bind
    s.bind((host, port))
    return s


class Events:
    """A JSON-lines log of what the checks need to see from inside a backend."""

    def __init__(self, path):
        self.f = open(path, "a", buffering=1) if path else None
        self.lock = threading.Lock()

    def write(self, **kv):
        if self.f:
            kv["t"] = time.time()
            with self.lock:
                self.f.write(json.dumps(kv) + "\n")


def http_handler(name, events):
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "lb-live"
        protocol_version = "HTTP/1.0"

        def log_message(self, fmt, *args):  # thousands of requests: no log line each
            pass

        def send_body(self, body, ctype="application/json"):
            data = body.encode() if isinstance(body, str) else body
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Backend", name)
            self.end_headers()
            self.wfile.write(data)

        def who(self):
            local = self.connection.getsockname()
            return {"backend": name, "client": plain(self.client_address[0]), "port": self.client_address[1],
                    "local": plain(local[0]), "local_port": local[1]}

        def do_GET(self):
            url = urllib.parse.urlsplit(self.path)
            q = dict(urllib.parse.parse_qsl(url.query))
            if url.path == "/health":
                self.send_body("ok\n", "text/plain")
            elif url.path == "/blob":
                mib = min(int(q.get("mb", "200")), 1024)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(mib << 20))
                self.send_header("X-Backend", name)
                self.end_headers()
                for i in range(mib):
                    self.wfile.write(common.blob_chunk(i))
            elif url.path == "/stream":
                # A long transfer at a modest rate: 64 of them must not load the machine by themselves.
                seconds = min(float(q.get("seconds", "10")), 600)
                chunk = b"x" * min(int(q.get("chunk", "4096")), 1 << 20)
                gap = float(q.get("gap", "0.05"))
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("X-Backend", name)
                self.end_headers()
                self.wfile.write((json.dumps(self.who()) + "\n").encode())
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                    time.sleep(gap)
                self.wfile.write(b"\nEND\n")
            else:
                self.send_body(json.dumps(self.who()) + "\n")

        def do_POST(self):
            import hashlib
            n = int(self.headers.get("Content-Length", "0"))
            h = hashlib.sha256()
            left = n
            while left > 0:
                b = self.rfile.read(min(left, 65536))
                if not b:
                    break
                h.update(b)
                left -= len(b)
            r = self.who()
            r.update({"len": n - left, "sha256": h.hexdigest()})
            self.send_body(json.dumps(r) + "\n")

    return Handler


class HTTPServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 4096

    def __init__(self, host, port, handler):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._host = host
        super().__init__((host, port), handler, bind_and_activate=False)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        self.socket.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
        self.server_bind()
        self.server_activate()


def serve_udp(name, port):
    s = dual_stack_socket(socket.SOCK_DGRAM, port)
    while True:
        data, peer = s.recvfrom(65535)
        r = {"backend": name, "client": plain(peer[0]), "port": peer[1], "len": len(data),
             "req": data[:32].decode(errors="replace").split(" ")[0]}
        try:
            s.sendto(json.dumps(r).encode(), peer)
        except OSError:
            pass


def serve_echo(name, port, events):
    """TCP echo; each connection's end is logged with how it ended, so that the idle-timeout check
    sees the reset arrive at the backend."""
    ls = dual_stack_socket(socket.SOCK_STREAM, port)
    ls.listen(1024)

    def conn(c, peer):
        peer = (plain(peer[0]), peer[1])
        events.write(event="open", service="echo", backend=name, client=peer[0], port=peer[1])
        how = "eof"
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                c.sendall(b)
        except ConnectionResetError:
            how = "reset"
        except OSError as e:
            how = "error:%s" % e.errno
        events.write(event="close", service="echo", backend=name, client=peer[0], port=peer[1], how=how)
        c.close()

    while True:
        c, peer = ls.accept()
        threading.Thread(target=conn, args=(c, peer), daemon=True).start()


def cmd_backend(a):
    raise_nofile()
    events = Events(a.log)
    threads = []
    if a.http:
        srv = HTTPServer("::", a.http, http_handler(a.name, events))
        threads.append(threading.Thread(target=srv.serve_forever, daemon=True))
    for spec in a.float or []:
        host, port = spec.rsplit(":", 1)
        srv = HTTPServer(host.strip("[]"), int(port), http_handler(a.name, events))
        threads.append(threading.Thread(target=srv.serve_forever, daemon=True))
    if a.udp:
        threads.append(threading.Thread(target=serve_udp, args=(a.name, a.udp), daemon=True))
    if a.echo:
        threads.append(threading.Thread(target=serve_echo, args=(a.name, a.echo, events), daemon=True))
    for t in threads:
        t.start()
    events.write(event="start", backend=a.name)
    print("backend %s serving" % a.name, flush=True)
    while True:
        time.sleep(3600)


def cmd_inet(a):
    """One thread, a selector: each connection gets its line and is then only watched for its end."""
    raise_nofile()
    ls = dual_stack_socket(socket.SOCK_STREAM, a.port)
    ls.listen(4096)
    ls.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(ls, selectors.EVENT_READ, None)
    accepted = 0
    while True:
        for key, _ in sel.select():
            if key.data is None:
                while True:
                    try:
                        c, peer = ls.accept()
                    except BlockingIOError:
                        break
                    accepted += 1
                    line = json.dumps({"src": plain(peer[0]), "port": peer[1], "n": accepted}) + "\n"
                    try:
                        c.send(line.encode())
                    except OSError:
                        c.close()
                        continue
                    c.setblocking(False)
                    sel.register(c, selectors.EVENT_READ, "c")
            else:
                c = key.fileobj
                try:
                    b = c.recv(4096)
                except OSError:
                    b = b""
                if not b:
                    sel.unregister(c)
                    c.close()


def cmd_prober(a):
    """Probes like the MUX does (HTTP GET, answered with 200 within the interval), for the kernel
    stand-in, whose own parts have no health probes."""
    targets = []
    for t in a.target:
        name, addr = t.split("=", 1)
        host, port = addr.rsplit(":", 1)
        targets.append((name, host.strip("[]"), int(port)))
    up = {n: True for n, _, _ in targets}
    fails = {n: 0 for n, _, _ in targets}
    oks = {n: 0 for n, _, _ in targets}
    timeout = min(a.interval, 5.0)

    def probe(host, port):
        try:
            with socket.create_connection((host, port), timeout=timeout) as s:
                s.settimeout(timeout)
                s.sendall(("GET %s HTTP/1.0\r\nHost: probe\r\n\r\n" % a.path).encode())
                head = s.recv(64)
                return head.startswith(b"HTTP/1.") and head.split(b" ")[1] == b"200"
        except OSError:
            return False

    print(json.dumps({"event": "start", "up": sorted(up)}), flush=True)
    while True:
        t0 = time.monotonic()
        results = {}

        def one(n, h, p):
            results[n] = probe(h, p)

        ths = [threading.Thread(target=one, args=t) for t in targets]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        for n, ok in results.items():
            if ok:
                oks[n] += 1
                fails[n] = 0
                if not up[n] and oks[n] >= 2:
                    up[n] = True
                    print(json.dumps({"event": "up", "backend": n, "t": time.time()}), flush=True)
            else:
                fails[n] += 1
                oks[n] = 0
                if up[n] and fails[n] >= a.count:
                    up[n] = False
                    print(json.dumps({"event": "down", "backend": n, "t": time.time()}), flush=True)
        time.sleep(max(0.0, a.interval - (time.monotonic() - t0)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backend")
    b.add_argument("--name", required=True)
    b.add_argument("--http", type=int)
    b.add_argument("--float", action="append", help="ADDR:PORT of an HTTP listener on a floating VIP")
    b.add_argument("--udp", type=int)
    b.add_argument("--echo", type=int)
    b.add_argument("--log")
    i = sub.add_parser("inet")
    i.add_argument("--port", type=int, default=9000)
    r = sub.add_parser("prober")
    r.add_argument("--target", action="append", required=True)
    r.add_argument("--interval", type=float, default=5)
    r.add_argument("--count", type=int, default=2)
    r.add_argument("--path", default="/health")
    a = p.parse_args()
    {"backend": cmd_backend, "inet": cmd_inet, "prober": cmd_prober}[a.cmd](a)


if __name__ == "__main__":
    main()
