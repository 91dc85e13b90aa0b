#!/usr/bin/env python3
"""Holds many idle WebSockets open through a proxy: the client of loadtest/ws_scale.sh.

Standard library only (asyncio protocols, no per-connection task or stream buffers: a held
connection costs this process a couple of KiB). Opens --count WebSockets to ws://PROXY/PATH,
cycling over the --host values (Host headers) and the --source addresses (each socket is bound
with IP_BIND_ADDRESS_NO_PORT, so every (source, destination) pair has its own ephemeral port
range), at most --concurrency handshakes at a time, checks each 101 answer (status and
Sec-WebSocket-Accept), and prints

  OPENED ok=N failed=F secs=S

Then it holds them, idle. On SIGUSR1 every open connection sends one masked text message and
must get the same text back (at most --concurrency at a time):

  ECHOED ok=N failed=F secs=S

On SIGTERM it closes everything, prints CLOSED and exits: 0 when nothing failed, 1 otherwise.
--oneshot does open, echo and close in one go (a warm-up). Past --deadline seconds it prints
DEADLINE, closes everything and exits 2.
"""

import argparse
import asyncio
import base64
import hashlib
import os
import signal
import socket
import sys
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


class Ws(asyncio.Protocol):
    """One client WebSocket: the handshake, then unmasked server frames parsed from `buf`."""

    __slots__ = ("transport", "request", "accept", "buf", "state", "waiter")

    def __init__(self, host, path, waiter):
        key = base64.b64encode(os.urandom(16))
        self.accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).lower()
        self.request = (
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode()
            + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.transport = None
        self.buf = bytearray()
        self.state = "handshake"
        # Resolved with True/False by the handshake, then with the payload of each data frame.
        self.waiter = waiter

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)
        self.request = None

    def _resolve(self, value):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(value)

    def data_received(self, data):
        self.buf += data
        if self.state == "handshake":
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            del self.buf[: end + 4]
            ok = head.startswith(b"http/1.1 101") and (
                b"\r\nsec-websocket-accept: " + self.accept
            ) in head
            self.state = "open" if ok else "refused"
            self._resolve(ok)
            if not ok:
                self.transport.close()
                return
        while self.state == "open" and len(self.buf) >= 2:
            opcode, length, at = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
            if length == 126:
                if len(self.buf) < 4:
                    return
                length, at = int.from_bytes(self.buf[2:4], "big"), 4
            elif length == 127:
                if len(self.buf) < 10:
                    return
                length, at = int.from_bytes(self.buf[2:10], "big"), 10
            if len(self.buf) < at + length:
                return
            payload = bytes(self.buf[at : at + length])
            del self.buf[: at + length]
            if opcode == 8:
                self.state = "closed"
                self._resolve(None)
            elif opcode in (1, 2):
                self._resolve(payload)

    def connection_lost(self, exc):
        self.state = "lost"
        self._resolve(False)

    def send_text(self, payload):
        assert len(payload) < 126, "short messages only"
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)


async def open_one(loop, proxy, host, path, source, timeout):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if source:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        await asyncio.wait_for(loop.sock_connect(sock, proxy), timeout)
        waiter = loop.create_future()
        _, ws = await loop.create_connection(lambda: Ws(host, path, waiter), sock=sock)
    except (OSError, asyncio.TimeoutError) as e:
        sock.close()
        return None, f"connect: {e!r}"
    try:
        ok = await asyncio.wait_for(waiter, timeout)
    except asyncio.TimeoutError:
        ok = False
    ws.waiter = None
    if not ok:
        ws.transport.close()
        return None, "handshake refused or timed out"
    return ws, None


async def pool(count, concurrency, job):
    """Runs job(i) for i in 0..count, at most `concurrency` at once."""
    next_index = 0

    async def worker():
        nonlocal next_index
        while next_index < count:
            i = next_index
            next_index += 1
            await job(i)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))


async def main(args):
    loop = asyncio.get_running_loop()
    host, _, port = args.proxy.rpartition(":")
    proxy = (host, int(port))
    hosts = args.host
    sources = args.source or [None]
    conns = []
    errors = {}
    failed = 0

    def note(error):
        errors[error] = errors.get(error, 0) + 1

    def report(what, ok, bad, started):
        line = f"{what} ok={ok} failed={bad} secs={time.monotonic() - started:.2f}"
        if errors:
            top = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
            line += " errors=" + "; ".join(f"{n}x {e}" for e, n in top)
            errors.clear()
        print(line, flush=True)

    async def open_job(i):
        nonlocal failed
        ws, error = await open_one(
            loop, proxy, hosts[i % len(hosts)], args.path, sources[i % len(sources)], args.timeout
        )
        if ws is None:
            failed += 1
            note(error)
        else:
            conns.append(ws)

    started = time.monotonic()
    await pool(args.count, args.concurrency, open_job)
    report("OPENED", len(conns), failed, started)
    open_failed = failed

    async def echo_round():
        bad = 0

        async def echo_job(i):
            nonlocal bad
            ws = conns[i]
            if ws.state != "open":
                bad += 1
                note(f"connection {ws.state} before the echo")
                return
            payload = f"echo {i} {args.tag}".encode()
            ws.waiter = loop.create_future()
            ws.send_text(payload)
            try:
                got = await asyncio.wait_for(ws.waiter, args.timeout)
            except asyncio.TimeoutError:
                got = "timeout"
            ws.waiter = None
            if got != payload:
                bad += 1
                note(f"echo answered {got!r:.60}")

        started = time.monotonic()
        await pool(len(conns), args.concurrency, echo_job)
        report("ECHOED", len(conns) - bad, bad, started)
        return bad

    def close_all():
        for ws in conns:
            if ws.transport is not None:
                ws.transport.close()

    if args.oneshot:
        bad = await echo_round()
        close_all()
        print("CLOSED", flush=True)
        return 1 if open_failed or bad else 0

    stop = asyncio.Event()
    echo_requests = asyncio.Queue()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: echo_requests.put_nowait(1))

    async def echo_loop():
        nonlocal failed
        while True:
            await echo_requests.get()
            failed += await echo_round()

    echoes = asyncio.ensure_future(echo_loop())
    try:
        await asyncio.wait_for(stop.wait(), max(1.0, args.deadline - (time.monotonic() - T0)))
        status = 1 if failed else 0
    except asyncio.TimeoutError:
        print("DEADLINE", flush=True)
        status = 2
    echoes.cancel()
    close_all()
    await asyncio.sleep(0.2)
    print("CLOSED", flush=True)
    return status


T0 = time.monotonic()

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proxy", required=True, help="HOST:PORT of the proxy")
    parser.add_argument("--host", action="append", required=True, help="Host header (repeat)")
    parser.add_argument("--source", action="append", help="source address to bind (repeat)")
    parser.add_argument("--path", default="/ws")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=30.0, help="per handshake / echo")
    parser.add_argument("--deadline", type=float, default=3600.0, help="seconds, then exit 2")
    parser.add_argument("--tag", default="", help="text added to each echo message")
    parser.add_argument("--oneshot", action="store_true", help="open, echo, close, exit")
    sys.exit(asyncio.run(main(parser.parse_args())))
