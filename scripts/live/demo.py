#!/usr/bin/env python3
"""A small live demo: the namespaces of topology.py, lb-dpdk as the MUX and both host agents, and
real requests from the client namespace balanced over four real HTTP servers. It prints each of the
first requests with the backend that answered and the client address that backend saw, the MUX's
status line while traffic runs, the spread of a few hundred requests, and the program's final
reports.

    demo.py [--mode afxdp|afpacket|standin] [--requests 400]
"""

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import PY, REPO, HERE, nsjson  # noqa: E402
import topology as T  # noqa: E402
from dataplane import LbDpdk, StandIn  # noqa: E402

CLIENTS = os.path.join(HERE, "clients.py")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["afxdp", "afpacket", "standin"], default="afxdp")
    p.add_argument("--binary")
    p.add_argument("--requests", type=int, default=400)
    a = p.parse_args()
    T.require_root()
    topo = T.Topology()
    T.guard(topo)
    dp = None
    try:
        topo.up()
        if a.mode == "standin":
            dp = StandIn(topo)
        else:
            binary = a.binary or os.environ.get("LB_DPDK") or os.path.join(REPO, "target", "release", "lb-dpdk")
            dp = LbDpdk(topo, a.mode, binary)
        dp.start()
        print("\nclient %s -> VIP %s:80 (rule Http4: port 80 -> 8080 on B11, B12 behind host 1 and B21, B22 "
              "behind host 2)\n" % (T.CLIENT_V4[0], T.VIP_WEB4), flush=True)
        for i in range(8):
            r = nsjson(topo.ns("client"), [PY, CLIENTS, "http", "--host", T.VIP_WEB4, "--count", "1", "--parallel", "1",
                                           "--sources", T.CLIENT_V4[i % len(T.CLIENT_V4)], "--seconds", "10"])
            b = next(iter(r["backends"]), "no answer: %s" % r["failed"])
            print("  request %d from %-11s answered by %s" % (i + 1, T.CLIENT_V4[i % len(T.CLIENT_V4)], b), flush=True)
        stop = threading.Event()

        def status():
            # The MUX's status line (stderr of lb-dpdk), once a second while traffic runs.
            while not stop.wait(1.0):
                err = topo.procs.read("lb-mux", "err").strip().splitlines()
                if err:
                    print("  MUX: " + err[-1], flush=True)

        th = threading.Thread(target=status, daemon=True)
        if isinstance(dp, LbDpdk):
            th.start()
        print("\n%d more requests, new connection each, from %d client addresses:" % (a.requests, len(T.CLIENT_V4)),
              flush=True)
        r = nsjson(topo.ns("client"), [PY, CLIENTS, "http", "--host", T.VIP_WEB4, "--count", str(a.requests),
                                       "--parallel", "4", "--gap", "0.1", "--sources", ",".join(T.CLIENT_V4),
                                       "--seconds", "60"], timeout=90)
        time.sleep(1.5)
        stop.set()
        print("\n  answered %d of %d in %.1fs; the servers saw the clients' own addresses: %s" % (
            r["ok"], a.requests, r["seconds"], "yes" if not r["mismatches"] else "NO (%d)" % r["mismatches"]))
        for name in sorted(r["backends"]):
            n = r["backends"][name]
            print("  %-4s %5d  %s" % (name, n, "#" * int(60 * n / max(1, a.requests))))
        print(flush=True)
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        if dp is not None:
            dp.stop()
            report = dp.final_report()
            if report.strip():
                print("final reports:\n" + report)
        topo.down()


if __name__ == "__main__":
    main()
