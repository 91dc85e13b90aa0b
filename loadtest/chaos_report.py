#!/usr/bin/env python3
"""The report of loadtest/chaos.sh: per fault, what k6 and the probes saw, from

  DIR/<run>.k6.csv     k6's samples (--out csv, K6_CSV_TIME_FORMAT=unix_milli)
  DIR/<run>.probe.csv  loadtest/chaos_probe.py: kind,start_ms,end_ms,sandbox,status
  DIR/main.marks       the Redis sink at the end: "<sandbox> <epoch ms>" per line
  DIR/cp.marks.final   the control plane's received marks: "<sandbox> <epoch ms>" per line
  EVENTS               run,<ms>,<run> / <fault>,<killed ms>,<back ms> / end,<ms>,<run> /
                       final,<what>,<status>

A fault's window runs from its kill to the next fault's kill (or the run's end). Prints markdown;
prints "TARGET MISSED: ..." on stderr for each target the figures miss. Exit 0.

    chaos_report.py --events FILE --dir DIR --settle SECONDS
"""

import argparse
import csv
import os
import sys
from collections import Counter

# A mark carries the proxy's coarse clock (it moves once a second): up to ~1 s older than the
# request that made it.
MARK_SLACK_MS = 2000
RUN_OF_FAULT = {"redis": "main", "runner": "main", "replica": "main", "cluster-node": "cluster",
                "control-plane": "cp"}
WHAT = {
    "redis": "Redis (registry + activity sink), SIGKILL",
    "runner": "demo runner (every k6 sandbox), SIGKILL",
    "replica": "sandgate replica b of 2 (behind HAProxy), SIGKILL",
    "cluster-node": "Redis Cluster primary holding the activity key (3 + 3 nodes), SIGKILL; "
                    "back = its replica promoted",
    "control-plane": "control plane (daytona backend + sink), SIGKILL",
}
RUN_LABEL = {
    "main": "main run (HAProxy, 2 replicas, Redis)",
    "cluster": "cluster run (1 replica, Redis Cluster)",
    "cp": "control-plane run (1 replica, daytona)",
}
MARKS_FILE = {"main": "main.marks", "cluster": "cluster.marks", "cp": "cp.marks.final"}


def read_events(path):
    runs, faults, finals = {}, [], []
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if parts[0] == "run":
                runs.setdefault(parts[2], {})["start"] = int(parts[1])
            elif parts[0] == "end":
                runs.setdefault(parts[2], {})["end"] = int(parts[1])
            elif parts[0] == "final":
                finals.append((parts[1], parts[2]))
            elif len(parts) == 3:
                faults.append({"name": parts[0], "killed": int(parts[1]), "back": int(parts[2])})
    return runs, faults, finals


def read_k6(path):
    """HTTP requests (end ms, ok, status, error code, name) and WebSocket failures (ms)."""
    reqs, ws_fail, ws_sessions = [], [], []
    if not os.path.exists(path):
        return reqs, ws_fail, ws_sessions
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            m = row["metric_name"]
            if m == "http_reqs":
                reqs.append((int(row["timestamp"]), row.get("expected_response") == "true",
                             row.get("status") or "0", row.get("error_code") or "", row.get("name") or ""))
            elif m == "ws_echo_failures" and float(row["metric_value"]) > 0:
                ws_fail.append(int(row["timestamp"]))
            elif m == "ws_sessions":
                ws_sessions.append(int(row["timestamp"]))
    return reqs, ws_fail, ws_sessions


def read_probe(path):
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                kind, start, end, sandbox, status = line.strip().split(",")
                rows.append((kind, int(start), int(end), sandbox, int(status)))
    return rows


def read_marks(path):
    marks = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    marks[parts[0]] = max(marks.get(parts[0], 0), int(float(parts[1])))
    return marks


def codes(failures):
    # k6 gives HTTP errors the code 1000 + status: only a code without a status says more.
    c = Counter(f"{s}" + (f" (k6 {e})" if e and s == "0" else "") for _, _, s, e, _ in failures)
    return ", ".join(f"{k} × {v}" for k, v in c.most_common()) or "-"


def secs(ms):
    return f"{ms / 1000:.2f}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--events", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--settle", type=float, required=True)
    a = p.parse_args()
    runs, faults, finals = read_events(a.events)
    data = {}
    for run in runs:
        reqs, ws_fail, ws_sessions = read_k6(os.path.join(a.dir, f"{run}.k6.csv"))
        marks = read_marks(os.path.join(a.dir, MARKS_FILE[run]))
        data[run] = (reqs, ws_fail, ws_sessions, read_probe(os.path.join(a.dir, f"{run}.probe.csv")), marks)

    print()
    print("| fault | down s | k6 requests | failed | failed: status (k6 error code) | WebSocket sessions failed / opened | "
          "misses answered during the outage | misses work again, s after return | last failure, s after return | "
          "markers answered | activity marks lost |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    misses_summary = []
    for i, fault in enumerate(faults):
        run = RUN_OF_FAULT.get(fault["name"], "main")
        if run not in data:
            continue
        reqs, ws_fail, ws_sessions, probe, marks = data[run]
        start = fault["killed"]
        later = [f["killed"] for f in faults[i + 1:] if RUN_OF_FAULT.get(f["name"], "main") == run]
        end = later[0] if later else runs[run].get("end", 1 << 62)
        back = fault["back"]
        in_window = [r for r in reqs if start <= r[0] < end]
        failures = [r for r in in_window if not r[1]]
        wsf = [t for t in ws_fail if start <= t < end]
        wss = [t for t in ws_sessions if start <= t < end]
        pw = [r for r in probe if start <= r[1] < end]
        misses_out = [r for r in pw if r[0] == "miss" and r[1] < back]
        misses_back = [r for r in pw if r[0] == "miss" and r[1] >= back]
        first_ok = next((r for r in misses_back if r[4] == 200), None)
        # The last failure after the return: k6 requests, WebSockets and probes alike (a probe
        # sent in this window that failed after the next kill belongs to that fault).
        late = [r[0] for r in failures if r[0] >= back] + [t for t in wsf if t >= back] + \
               [r[2] for r in pw if r[4] != 200 and back <= r[2] < end]
        last_fail = max(late) - back if late else None
        # A marker's mark waits up to a flush interval in the proxy: one answered just before
        # a kill belongs to that fault.
        markers = [r for r in probe if r[0] == "marker" and r[4] == 200
                   and start - MARK_SLACK_MS <= r[2] < end - MARK_SLACK_MS]
        lost = [r for r in markers if marks.get(r[3], 0) < r[1] - MARK_SLACK_MS]
        ok_out = sum(1 for r in misses_out if r[4] == 200)
        print(f"| {WHAT.get(fault['name'], fault['name'])} | {secs(back - start)} | {len(in_window)} | "
              f"{len(failures)} | {codes(failures)} | {len(wsf)} / {len(wss)} | {ok_out} of {len(misses_out)} | "
              f"{secs(first_ok[2] - back) if first_ok else 'never'} | "
              f"{secs(last_fail) if last_fail is not None else 'none'} | {len(markers)} | {len(lost)} |")
        misses_summary.append((fault, failures, first_ok, last_fail, lost, back))

    print()
    for run, (reqs, ws_fail, ws_sessions, probe, marks) in data.items():
        first_kill = min((f["killed"] for f in faults if RUN_OF_FAULT.get(f["name"], "main") == run),
                         default=runs[run].get("end", 1 << 62))
        before = [r for r in reqs if r[0] < first_kill]
        bad = [r for r in before if not r[1]]
        markers = [r for r in probe if r[0] == "marker" and r[4] == 200]
        lost = [r for r in markers if marks.get(r[3], 0) < r[1] - MARK_SLACK_MS]
        label = RUN_LABEL[run]
        print(f"- {label}: {len(reqs)} k6 requests in all, {sum(1 for r in reqs if not r[1])} failed; "
              f"before the first fault {len(before)}, {len(bad)} failed; WebSocket sessions "
              f"{len(ws_sessions)}, failed {len(ws_fail)}; markers answered {len(markers)}, marks lost "
              f"{len(lost)} over the whole run.")
    for what, status in finals:
        print(f"- after the faults: {what}: {status}")

    for fault, failures, first_ok, last_fail, lost, back in misses_summary:
        name = fault["name"]
        if name in ("redis", "cluster-node", "control-plane") and failures:
            print(f"TARGET MISSED: {name}: {len(failures)} requests for cached sandboxes failed "
                  f"during the registry outage", file=sys.stderr)
        if first_ok is None or first_ok[2] - back > 2000:
            print(f"TARGET MISSED: {name}: cache misses answered "
                  f"{'never' if first_ok is None else secs(first_ok[2] - back) + ' s'} after the return (target 2 s)",
                  file=sys.stderr)
        if last_fail is not None and last_fail > 2000:
            print(f"TARGET MISSED: {name}: a failure {secs(last_fail)} s after the return (target: recovery "
                  f"within 2 s)", file=sys.stderr)
        if lost:
            print(f"TARGET MISSED: {name}: {len(lost)} activity marks lost", file=sys.stderr)


if __name__ == "__main__":
    main()
