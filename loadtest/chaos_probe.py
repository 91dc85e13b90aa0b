#!/usr/bin/env python3
"""The probes loadtest/chaos.sh runs beside k6: every INTERVAL seconds, on a new connection each
(so a balancer spreads them over the replicas),

  miss    GET /hello on a sandbox no request has named before (MISS_PREFIX<n>): a route cache
          miss on every replica, answered only when the registry backend answers;
  marker  GET /hello on MARK_PREFIX<n>, warmed on every replica (WARM) before the run: a cached
          sandbox whose activity mark, if the request is answered, must reach the sink.

Each line of OUT: kind,start_ms,end_ms,sandbox,status (status 0: no answer). Runs until
DURATION seconds have passed or the file STOP exists.

    chaos_probe.py --target HOST:PORT --token T --out FILE --duration S [--interval 0.25]
                   [--warm HOST:PORT ...] [--markers N]
"""

import argparse
import http.client
import os
import sys
import time


def now_ms():
    return int(time.time() * 1000)


def get(addr, host, token, timeout=5.0):
    host_part, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host_part, int(port), timeout=timeout)
    try:
        conn.request("GET", "/hello", headers={"Host": host, "X-Daytona-Preview-Token": token,
                                               "Connection": "close"})
        res = conn.getresponse()
        res.read()
        return res.status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        conn.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--domain", default="preview.localhost")
    p.add_argument("--port", default="3000")
    p.add_argument("--out", required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--interval", type=float, default=0.25)
    p.add_argument("--warm", action="append", default=[])
    p.add_argument("--markers", type=int, default=1000)
    p.add_argument("--miss-prefix", default="sbx-miss-")
    p.add_argument("--mark-prefix", default="sbx-mark-")
    p.add_argument("--stop", default="")
    a = p.parse_args()

    def host(sandbox):
        return f"{a.port}-{sandbox}.{a.domain}"

    for addr in a.warm:
        bad = [i for i in range(a.markers) if get(addr, host(f"{a.mark_prefix}{i}"), a.token) != 200]
        if bad:
            sys.exit(f"chaos_probe.py: warming {addr}: {len(bad)} markers not answered 200")
    print("chaos_probe.py: warm", flush=True)

    n = 0
    end = time.monotonic() + a.duration
    with open(a.out, "w", buffering=1) as out:
        while time.monotonic() < end and not (a.stop and os.path.exists(a.stop)):
            tick = time.monotonic()
            for kind, prefix in (("miss", a.miss_prefix), ("marker", a.mark_prefix)):
                if kind == "marker" and n >= a.markers:
                    continue
                sandbox = f"{prefix}{n}"
                start = now_ms()
                status = get(a.target, host(sandbox), a.token)
                out.write(f"{kind},{start},{now_ms()},{sandbox},{status}\n")
            n += 1
            time.sleep(max(0.0, a.interval - (time.monotonic() - tick)))


if __name__ == "__main__":
    main()
