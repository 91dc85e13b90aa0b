#!/usr/bin/env python3
"""A small Daytona-compatible control plane for loadtest/chaos.sh (the `daytona` registry
backend and activity sink): every sandbox whose id starts with `sbx-` exists, is started, is
not public, takes the preview token TOKEN and runs on RUNNER (`sbx-sink` on SINK_RUNNER, a
runner that reads request bodies). `POST /api/sandbox/{id}/last-activity` appends
"<id> <epoch ms>" to MARKS (flushed per line, so a killed control plane keeps what it took).

    control_plane.py --listen 127.0.0.1:PORT --api-key K --runner URL --runner-key K
                     --sink-runner URL --token T --marks FILE
"""

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--runner", required=True)
    p.add_argument("--runner-key", required=True)
    p.add_argument("--sink-runner", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--marks", required=True)
    a = p.parse_args()
    marks = open(a.marks, "a", buffering=1)
    marks_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, status, body=b"", content_type="text/plain"):
            if isinstance(body, (dict, list)):
                body, content_type = json.dumps(body).encode(), "application/json"
            elif isinstance(body, str):
                body = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def route(self, method):
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            path = self.path.split("?", 1)[0]
            parts = [s for s in path.split("/") if s]
            if not parts or parts[0] != "api":
                return self.answer(404, "not found")
            parts = parts[1:]
            if parts == ["config"]:
                return self.answer(200, {"oidc": {"issuer": "http://issuer.invalid",
                                                  "clientId": "proxy", "audience": "daytona"}})
            if self.headers.get("Authorization") != f"Bearer {a.api_key}":
                return self.answer(401, {"statusCode": 401, "message": "Unauthorized"})
            sandbox = next((s for s in parts if s.startswith("sbx-")), None)
            if sandbox is None:
                return self.answer(404, {"statusCode": 404, "message": "Not found"})
            runner = a.sink_runner if sandbox == "sbx-sink" else a.runner
            if method == "GET" and parts[:2] == ["runners", "by-sandbox"]:
                return self.answer(200, {"id": "bench-runner", "proxyUrl": runner, "apiUrl": runner,
                                         "apiKey": a.runner_key, "domain": None, "state": "ready"})
            if method == "GET" and len(parts) == 3 and parts[0] == "preview" and parts[2] == "public":
                return self.answer(404, {"statusCode": 404, "message": "Not found"})
            if method == "GET" and len(parts) == 4 and parts[0] == "preview" and parts[2] == "validate":
                return self.answer(200, "true") if parts[3] == a.token else self.answer(404, "")
            if method == "GET" and len(parts) == 2 and parts[0] == "sandbox":
                return self.answer(200, {"id": sandbox, "state": "started", "organizationId": "org-1",
                                         "labels": {}})
            if method == "POST" and len(parts) == 3 and parts[2] == "last-activity":
                with marks_lock:
                    marks.write(f"{sandbox} {int(time.time() * 1000)}\n")
                return self.answer(201, "")
            return self.answer(404, {"statusCode": 404, "message": "Not found"})

        def do_GET(self):
            self.route("GET")

        def do_POST(self):
            self.route("POST")

    host, port = a.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    server.allow_reuse_address = True
    print(f"control plane listening on http://{a.listen}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
