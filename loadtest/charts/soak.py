#!/usr/bin/env python3
"""Draws loadtest/soak.sh's samples (DIR/soak.csv) as DIR/soak.png, or says how flat they are.

    python3 loadtest/charts/soak.py [DIR]                 soak.png (needs matplotlib)
    python3 loadtest/charts/soak.py --flat SECONDS [DIR]  markdown table on stdout: each series
                                                          after SECONDS of warm-up (no matplotlib)

DIR defaults to this script's directory. The figure has four panels over the run's minutes:
proxy RSS; open fds and threads; cache entries (routes, credential checks); tasks alive on the
proxy's runtimes with open connections and WebSockets. Its footer is DIR/soak_run.txt.
"""

import csv
import os
import sys

SERIES = (
    ("rss_kib", "RSS (MiB)", 1 / 1024),
    ("open_fds", "open fds", 1),
    ("threads", "threads", 1),
    ("cache_routes", "route cache entries", 1),
    ("cache_credentials", "credential cache entries", 1),
    ("tasks_alive", "tasks alive", 1),
    ("connections", "open client connections", 1),
    ("websockets", "open WebSockets", 1),
    ("tasks_per_conn", "tasks alive − client connections", 1),
    ("fds_per_conn", "open fds − client connections", 1),
)


def derive(row):
    """What is left of tasks and fds once each client connection's own share is taken out."""
    row["tasks_per_conn"] = row["tasks_alive"] - row["connections"]
    row["fds_per_conn"] = row["open_fds"] - row["connections"]
    return row


def load(directory):
    with open(os.path.join(directory, "soak.csv"), newline="") as f:
        return [derive({k: float(v) for k, v in row.items()}) for row in csv.DictReader(f)]


def slope(xs, ys):
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return 0.0 if var == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var


def flat(directory, warmup):
    # The last sample is taken after the load stopped: not part of the steady state.
    rows = [r for r in load(directory)[:-1] if r["elapsed_s"] >= warmup]
    if not rows:
        print(f"no samples after {warmup:.0f} s of warm-up")
        return
    xs = [r["elapsed_s"] for r in rows]
    print(f"After {warmup:.0f} s of warm-up: {len(rows)} samples, {xs[0]:.0f} s to {xs[-1]:.0f} s.\n")
    print("| series | first | last | min | max | mean | slope per 10 min | slope / mean |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for key, label, scale in SERIES:
        ys = [r[key] * scale for r in rows]
        mean = sum(ys) / len(ys)
        s = slope(xs, ys) * 600
        rel = f"{100 * s / mean:+.1f} %" if mean else "-"
        digits = 1 if scale != 1 else 0
        print(f"| {label} | {ys[0]:,.{digits}f} | {ys[-1]:,.{digits}f} | {min(ys):,.{digits}f} | "
              f"{max(ys):,.{digits}f} | {mean:,.1f} | {s:+,.1f} | {rel} |")
    reqs = [r["requests"] for r in rows]
    if xs[-1] > xs[0]:
        print(f"\nRequests answered over those samples: {reqs[-1] - reqs[0]:,.0f} "
              f"({(reqs[-1] - reqs[0]) / (xs[-1] - xs[0]):,.0f}/s).")


def plot(directory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = load(directory)
    minutes = [r["elapsed_s"] / 60 for r in rows]
    footer = ""
    run_txt = os.path.join(directory, "soak_run.txt")
    if os.path.exists(run_txt):
        with open(run_txt) as f:
            footer = " ".join(line.strip() for line in f)
    panels = (
        ("Proxy RSS (MiB)", (("rss_kib", "RSS", 1 / 1024, "tab:blue"),)),
        ("Open fds and threads", (("open_fds", "open fds", 1, "tab:orange"),
                                  ("fds_per_conn", "open fds − client connections", 1, "tab:pink"),
                                  ("threads", "threads", 1, "tab:gray"))),
        ("Cache entries", (("cache_routes", "routes", 1, "tab:green"),
                           ("cache_credentials", "credential checks", 1, "tab:olive"))),
        ("Tasks alive, connections, WebSockets", (("tasks_alive", "tasks alive", 1, "tab:red"),
                                                   ("connections", "client connections", 1, "tab:purple"),
                                                   ("websockets", "WebSockets", 1, "tab:brown"),
                                                   ("tasks_per_conn", "tasks − client connections", 1,
                                                    "tab:cyan"))),
    )
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    for ax, (title, lines) in zip(axes.flat, panels):
        for key, label, scale, color in lines:
            ax.plot(minutes, [r[key] * scale for r in rows], label=label, color=color, linewidth=1.5,
                    marker="o", markersize=2.5)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("minutes since the load started")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=9, loc="lower right")
    fig.suptitle("sandgate soak: the mixed k6 scenario at a fixed rate (loadtest/soak.sh)", fontsize=13)
    if footer:
        fig.text(0.5, 0.005, footer, ha="center", va="bottom", fontsize=8, color="dimgray", wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    out = os.path.join(directory, "soak.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"soak.py: wrote {out}", file=sys.stderr)


def main(argv):
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return
    if argv and argv[0] == "--flat":
        warmup = float(argv[1])
        directory = argv[2] if len(argv) > 2 else os.path.dirname(os.path.abspath(__file__))
        flat(directory, warmup)
        return
    directory = argv[0] if argv else os.path.dirname(os.path.abspath(__file__))
    plot(directory)


if __name__ == "__main__":
    main(sys.argv[1:])
