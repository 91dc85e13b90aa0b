#!/usr/bin/env python3
"""Driver for loadtest/bench_wake.sh (Python 3, standard library only).

  wake_driver.py hook --delay-ms D
      A start hook ([registry.wake] url) on a free loopback port: POST /api/sandbox/<id>/start
      answers 200 after D ms (the sandbox is up), except for ids starting with "slow-",
      answered after an hour (a start that does not end while the bench runs). GET /calls answers the number of start calls so far, GET /overshoot
      how much later than D ms its answers left (p50/p99/max: the fixture's own share). Prints
      "hook listening on http://ADDR" first.

  wake_driver.py wakes --proxy ADDR --ids ID,ID,... --warm ID --delay-ms D
      One request per stopped sandbox, one after the other, each on a new connection (a new
      visitor); then as many to the running sandbox WARM. Prints the latencies (ms) and the
      wake's overhead over the hook's delay: p50, p99, max.

  wake_driver.py hold --proxy ADDR --admin ADDR --pid PID --id ID --count N [--settle S]
      Opens N idle connections (VmRSS after S seconds), then sends one GET for sandbox ID
      (whose start does not end) on each, waits until sandgate_wake_held = N, lets S seconds pass
      and reports the proxy's VmRSS: KiB per idle connection, what a held request adds to its
      connection, and both together; then closes every connection and
      reports sandgate_wake_held a second later (what clients that gave up still hold). Fails
      if any request was answered while it should be held.
      With --in-flight, the same for a running sandbox ID (direct mode, address 127.0.0.1)
      whose app (served here) reads each request and never answers: the cost of any request
      waiting on its upstream, for comparison.
"""

import argparse
import asyncio
import math
import statistics
import sys
import time


def host(sandbox):
    return f"3000-{sandbox}.preview.localhost"


async def read_response(reader):
    """Reads one HTTP/1.1 response with a Content-Length body; returns (status, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
    body = await reader.readexactly(length)
    return status, body


async def get(addr, sandbox, path="/"):
    """One GET on a new connection; returns (status, seconds)."""
    ip, port = addr.rsplit(":", 1)
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(ip, int(port))
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host(sandbox)}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    status, _ = await read_response(reader)
    took = time.perf_counter() - start
    writer.close()
    return status, took


# ---- hook ----


async def hook(args):
    calls = 0
    delay = args.delay_ms / 1000
    overshoot_ms = []  # how much later than the delay each 200 left: the fixture's own share

    async def serve(reader, writer):
        nonlocal calls
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target = lines[0].split()[:2]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length:
                    await reader.readexactly(length)
                if method == "GET" and target == "/calls":
                    status, body = 200, str(calls)
                elif method == "GET" and target == "/overshoot":
                    status, body = 200, summary("hook's own overshoot", overshoot_ms or [0])
                else:
                    calls += 1
                    sandbox = target.split("/")[3] if target.count("/") >= 4 else ""
                    if sandbox.startswith("slow-"):
                        await asyncio.sleep(3600)
                        status, body = 200, "{}"
                    else:
                        received = time.perf_counter()
                        await asyncio.sleep(delay)
                        overshoot_ms.append((time.perf_counter() - received - delay) * 1000)
                        status, body = 200, "{}"
                reason = "OK"
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\n\r\n{body}".encode()
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    ip, port = server.sockets[0].getsockname()[:2]
    print(f"hook listening on http://{ip}:{port}", flush=True)
    async with server:
        await server.serve_forever()


# ---- wakes ----


def percentile(values, p):
    """Nearest rank: the smallest value with at least p % of the values at or below it."""
    ordered = sorted(values)
    k = max(0, math.ceil(p / 100 * len(ordered)) - 1)
    return ordered[k]


def summary(name, values_ms):
    return (
        f"{name}: n={len(values_ms)} p50={statistics.median(values_ms):.2f} "
        f"p99={percentile(values_ms, 99):.2f} max={max(values_ms):.2f} ms"
    )


async def wakes(args):
    delay = args.delay_ms
    first, warm, failed = [], [], 0
    for sandbox in args.ids.split(","):
        status, took = await get(args.proxy, sandbox)
        if status != 200:
            failed += 1
            print(f"wake of {sandbox}: status {status}", file=sys.stderr)
        first.append(took * 1000)
    for _ in first:
        status, took = await get(args.proxy, args.warm)
        failed += status != 200
        warm.append(took * 1000)
    overhead = [t - delay for t in first]
    print(summary("first response", first))
    print(summary("overhead over the start delay", overhead))
    print(summary("running sandbox, same requests", warm))
    print(f"result failed={failed} below_delay={sum(1 for t in overhead if t < 0)}")
    return 1 if failed else 0


# ---- hold ----


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


async def metric(admin, name):
    ip, port = admin.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(ip, int(port))
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    for line in data.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def answered_yet(reader):
    """1 if the proxy sent something (or closed) on this connection, else 0."""
    try:
        await asyncio.wait_for(reader.read(1), timeout=0.2)
        return 1
    except asyncio.TimeoutError:
        return 0


async def sink():
    """An app that reads requests and never answers; returns (port, the heads received)."""
    heads = [0]

    async def serve(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            heads[0] += 1
            await reader.read()  # until the proxy gives up on it
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=4096)
    return server, server.sockets[0].getsockname()[1], heads


async def hold(args):
    ip, port = args.proxy.rsplit(":", 1)
    if args.in_flight:
        # The comparison: the same requests to a running sandbox (direct mode) whose app never
        # answers, i.e. what any request waiting on its upstream costs.
        server, app_port, heads = await sink()
        target_host = f"{app_port}-{args.id}.preview.localhost"
        waiting = lambda: asyncio.sleep(0, heads[0])  # noqa: E731
    else:
        target_host = host(args.id)
        waiting = lambda: metric(args.admin, "sandgate_wake_held")  # noqa: E731
    baseline = rss_kib(args.pid)
    request = f"GET / HTTP/1.1\r\nHost: {target_host}\r\n\r\n".encode()
    # First the connections alone (idle), then a request on each: what a waiting request adds
    # to an open connection.
    connections = []
    start = time.perf_counter()
    for _ in range(args.count):
        connections.append(await asyncio.open_connection(ip, int(port)))
    await asyncio.sleep(args.settle)
    idle = rss_kib(args.pid)
    for _, writer in connections:
        writer.write(request)
    await asyncio.gather(*(w.drain() for _, w in connections))
    deadline = time.monotonic() + 60
    while (waiting_now := await waiting()) < args.count:
        if time.monotonic() > deadline:
            print(f"only {waiting_now} of {args.count} waiting", file=sys.stderr)
            return 1
        await asyncio.sleep(0.1)
    opened = time.perf_counter() - start
    await asyncio.sleep(args.settle)
    with_held = rss_kib(args.pid)
    answered = sum(await asyncio.gather(*(answered_yet(r) for r, _ in connections)))
    # Clients that give up: their held requests should be let go (not wait for max_wait).
    for _, writer in connections:
        writer.close()
    await asyncio.sleep(1)
    after_close = await metric(args.admin, "sandgate_wake_held")
    n = args.count
    print(
        f"result count={n} baseline_kib={baseline} idle_kib={idle} held_kib={with_held} "
        f"kib_per_conn={(idle - baseline) / n:.2f} kib_per_held={(with_held - idle) / n:.2f} "
        f"kib_per_both={(with_held - baseline) / n:.2f} answered_early={answered} "
        f"open_s={opened:.1f} held_1s_after_close={after_close:.0f}"
    )
    return 1 if answered else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("hook")
    p.add_argument("--delay-ms", type=float, required=True)
    p = sub.add_parser("wakes")
    p.add_argument("--proxy", required=True)
    p.add_argument("--ids", required=True)
    p.add_argument("--warm", required=True)
    p.add_argument("--delay-ms", type=float, required=True)
    p = sub.add_parser("hold")
    p.add_argument("--proxy", required=True)
    p.add_argument("--admin", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--id", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--settle", type=float, default=2)
    p.add_argument("--in-flight", action="store_true")
    args = parser.parse_args()
    command = {"hook": hook, "wakes": wakes, "hold": hold}[args.command]
    sys.exit(asyncio.run(command(args)) or 0)


if __name__ == "__main__":
    main()
