#!/usr/bin/env python3
"""Draws the CSVs of loadtest/curves.sh as PNGs, or prints their medians as markdown tables.

    python3 loadtest/charts/plot.py [DIR]           sandboxes.png, connections.png, sizes.png
    python3 loadtest/charts/plot.py --tables [DIR]  markdown tables on stdout (no matplotlib)

DIR defaults to this script's directory. Every point may have several runs (RUNS=N): the
medians are drawn and tabulated. Each figure has four panels (req/s, p99 latency, proxy CPU
per request, proxy RSS) over a log-scale x axis; its footer is DIR/run.txt (the run's
conditions). Needs matplotlib only for the PNGs (pip install matplotlib).
"""

import csv
import os
import statistics
import sys
from collections import defaultdict

# Each CSV: its x column, the columns naming a series, the x axis label and the title.
CURVES = {
    "sandboxes": {
        "x": "sandboxes",
        "series": ("target", "backend", "access"),
        "xlabel": "sandboxes in the registry and in use",
        "title": "Sandboxes in the registry and in use (64 connections, GET /hello, warm cache)",
    },
    "connections": {
        "x": "connections",
        "series": ("target",),
        "xlabel": "concurrent client connections (keep-alive)",
        "title": "Concurrent client connections (one sandbox, GET /hello)",
    },
    "sizes": {
        "x": "size_bytes",
        "series": ("target",),
        "xlabel": "response body size (bytes)",
        "title": "Response size (one sandbox, 64 connections, GET /bytes/<n>)",
    },
}
METRICS = ("rps", "p50_ms", "p99_ms", "errors", "cpu_us_per_req", "rss_peak_kib", "rss_after_kib")


def load(path, spec):
    """{series tuple: {x: {metric: median}}} and the sorted x values."""
    runs = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = tuple(row[c] for c in spec["series"])
            x = int(row[spec["x"]])
            for m in METRICS + ("startup_s",):
                v = row.get(m)
                if v not in (None, "", "-"):
                    runs[key][x][m].append(float(v))
    data = {
        key: {x: {m: statistics.median(v) for m, v in ms.items()} for x, ms in xs.items()}
        for key, xs in runs.items()
    }
    xs = sorted({x for xs in data.values() for x in xs})
    return data, xs


def label(key):
    if key[0] == "nginx" and len(key) > 1:
        return f"nginx (regex route), {key[2]}"
    return " ".join(k for k in key)


def human_bytes(n):
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


def human_count(n):
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def fmt(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"


def tables(directory):
    for name, spec in CURVES.items():
        path = os.path.join(directory, name + ".csv")
        if not os.path.exists(path):
            continue
        data, xs = load(path, spec)
        print(f"### {spec['title']}\n")
        head = ["x", "series", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "RSS MiB (peak)",
                "req/s vs nginx", "CPU/req vs nginx", "errors"]
        if name == "sizes":
            head.insert(3, "MiB/s")
        if name == "sandboxes":
            head.append("startup s")
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
        for x in xs:
            for key in sorted(data):
                p = data[key].get(x)
                if p is None:
                    continue
                # The nginx reference: same access pattern for the sandbox curve.
                ref_key = next((k for k in data if k[0] == "nginx"
                                and (len(k) == 1 or k[2] == key[2])), None)
                ref = data[ref_key].get(x) if ref_key else None
                rps_ratio = cpu_ratio = "-"
                if ref and key[0] != "nginx":
                    rps_ratio = f"{p['rps'] / ref['rps']:.2f}" if ref.get("rps") else "-"
                    if p.get("cpu_us_per_req") and ref.get("cpu_us_per_req"):
                        cpu_ratio = f"{p['cpu_us_per_req'] / ref['cpu_us_per_req']:.2f}"
                xl = human_bytes(x) if name == "sizes" else human_count(x)
                cells = [xl, label(key), fmt(p.get("rps")), fmt(p.get("p50_ms"), 2),
                         fmt(p.get("p99_ms"), 2), fmt(p.get("cpu_us_per_req"), 1),
                         fmt(p.get("rss_peak_kib", 0) / 1024, 1), rps_ratio, cpu_ratio,
                         fmt(p.get("errors"))]
                if name == "sizes":
                    cells.insert(3, fmt(p["rps"] * x / (1 << 20), 1))
                if name == "sandboxes":
                    cells.append(fmt(p.get("startup_s"), 2) if key[0] != "nginx" else "-")
                print("| " + " | ".join(cells) + " |")
        print()


def style(key):
    colors = {"sandgate static": "tab:blue", "sandgate redis": "tab:orange",
              "sandgate": "tab:blue", "nginx": "tab:green"}
    name = key[0] if key[0] == "nginx" or len(key) == 1 else f"{key[0]} {key[1]}"
    dashed = len(key) > 2 and key[2] == "zipf"
    return {
        "color": colors.get(name, "tab:gray"),
        "linestyle": "--" if dashed else "-",
        "marker": "s" if dashed else "o",
        "markersize": 5,
        "linewidth": 1.6,
    }


def plot(directory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

    footer = ""
    run_txt = os.path.join(directory, "run.txt")
    if os.path.exists(run_txt):
        with open(run_txt) as f:
            footer = " ".join(line.strip() for line in f)
    panels = (
        ("rps", "requests/s", "Throughput (req/s)", "linear"),
        ("p99_ms", "p99 latency (ms)", "p99 latency (ms, log)", "log"),
        ("cpu_us_per_req", "proxy CPU per request (µs, user + sys)", "Proxy CPU per request (µs)", "linear"),
        ("rss_peak_kib", "proxy RSS (MiB)", "Proxy RSS, peak during the point (MiB, log)", "log"),
    )
    drawn = []
    for name, spec in CURVES.items():
        path = os.path.join(directory, name + ".csv")
        if not os.path.exists(path):
            continue
        data, xs = load(path, spec)
        if not xs:
            continue
        fig, axes = plt.subplots(2, 2, figsize=(13, 9))
        for ax, (metric, ylabel, title, yscale) in zip(axes.flat, panels):
            for key in sorted(data, key=lambda k: (k[0] == "nginx", k)):
                pts = sorted((x, m[metric]) for x, m in data[key].items() if metric in m)
                if not pts:
                    continue
                ys = [y / 1024 if metric == "rss_peak_kib" else y for _, y in pts]
                ax.plot([x for x, _ in pts], ys, label=label(key), **style(key))
            if name == "sizes":
                # 0 bytes is a point too: linear below 1 KiB, logarithmic above.
                ax.set_xscale("symlog", linthresh=1024, linscale=0.5)
                ax.xaxis.set_major_locator(FixedLocator(xs))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v) if v else "0"))
            else:
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(FixedLocator(xs))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_count(int(round(v)))))
            if name == "sizes" and metric in ("rps", "cpu_us_per_req"):
                yscale = "log"  # 0 B to 1 MiB spans two orders of magnitude
                ax.set_title(title.replace(")", ", log)") if ")" in title else title + " (log)",
                             fontsize=11)
            if yscale == "log":
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
                ax.yaxis.set_minor_formatter(NullFormatter())
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))
            else:
                ax.set_ylim(bottom=0)
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 100 else f"{v:g}"))
            ax.set_xlabel(spec["xlabel"])
            ax.set_ylabel(ylabel)
            if not ax.get_title():
                ax.set_title(title, fontsize=11)
            ax.grid(True, which="major", alpha=0.3)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=3 if len(labels) > 4 else len(labels),
                   bbox_to_anchor=(0.5, 0.955), fontsize=10, frameon=False)
        fig.suptitle(f"sandgate vs nginx — {spec['title']}", fontsize=13, y=0.995)
        if footer:
            fig.text(0.5, 0.005, footer, ha="center", va="bottom", fontsize=8, color="dimgray",
                     wrap=True)
        fig.tight_layout(rect=(0, 0.035, 1, 0.93))
        out = os.path.join(directory, name + ".png")
        fig.savefig(out, dpi=100)
        plt.close(fig)
        drawn.append(out)
    for out in drawn:
        print(f"plot.py: wrote {out}", file=sys.stderr)


def main(argv):
    args = [a for a in argv if not a.startswith("-")]
    directory = args[0] if args else os.path.dirname(os.path.abspath(__file__))
    if "-h" in argv or "--help" in argv:
        print(__doc__)
    elif "--tables" in argv:
        tables(directory)
    else:
        plot(directory)


if __name__ == "__main__":
    main(sys.argv[1:])
