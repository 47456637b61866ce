#!/usr/bin/env python3
"""Draws how the flood bench's drain scales (BENCHMARKS.md, issue 16) from its --json files.

Usage: scripts/plot-scaling.py DIR OUT.png
DIR holds the JSON files of `cargo bench --bench flood -- drain ... --repeat N --json FILE`,
named <series>-<value>.json with series `busy` (connectors), `inflight` (maxInFlight) or
`payload` (bytes per event). For each point and system the median over the rounds is used.
Also prints the table (markdown) that BENCHMARKS.md quotes. Needs matplotlib.
"""
import json
import os
import re
import statistics
import sys

SERIES = [
    ("busy", "connectors draining at once"),
    ("inflight", "requests in flight (maxInFlight)"),
    ("payload", "bytes per event"),
]
SYSTEMS = ["naive", "hms-sync"]


def load(folder):
    points = {}
    for name in sorted(os.listdir(folder)):
        m = re.fullmatch(r"(busy|inflight|payload)-(\d+)\.json", name)
        if not m:
            continue
        with open(os.path.join(folder, name)) as f:
            results = json.load(f)
        for r in results:
            if r.get("system") not in SYSTEMS or r.get("scenario") != "drain":
                continue
            key = (m.group(1), int(m.group(2)), r["system"])
            points.setdefault(key, []).append(r)
    return points


def median(rs, field):
    vals = [r[field] for r in rs if r.get(field) is not None]
    return statistics.median(vals) if vals else float("nan")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    points = load(sys.argv[1])
    print("| series | value | naive events/s | hms-sync events/s | x naive | naive µs/evt | hms-sync µs/evt | x naive | hms-sync peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for series, _ in SERIES:
        for v in sorted({k[1] for k in points if k[0] == series}):
            n = points.get((series, v, "naive"), [])
            h = points.get((series, v, "hms-sync"), [])
            ne, he = median(n, "events_per_s"), median(h, "events_per_s")
            nc, hc = median(n, "cpu_us_per_event"), median(h, "cpu_us_per_event")
            rss = median(h, "peak_rss_mb")
            print(f"| {series} | {v} | {ne:,.0f} | {he:,.0f} | {he / ne:.2f} | {nc:.1f} | {hc:.1f} | {hc / nc:.2f} | {rss:.0f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for col, (series, label) in enumerate(SERIES):
        values = sorted({k[1] for k in points if k[0] == series})
        for system, style in zip(SYSTEMS, ["o--", "s-"]):
            rate = [median(points.get((series, v, system), []), "events_per_s") for v in values]
            cpu = [median(points.get((series, v, system), []), "cpu_us_per_event") for v in values]
            axes[0][col].plot(values, rate, style, label=system)
            axes[1][col].plot(values, cpu, style, label=system)
        for row in (0, 1):
            ax = axes[row][col]
            ax.set_xscale("log", base=2 if series != "payload" else 16)
            ax.set_xticks(values)
            ax.set_xticklabels([str(v) for v in values])
            ax.grid(True, alpha=0.3)
            ax.set_ylim(bottom=0)
        axes[1][col].set_xlabel(label)
    axes[0][0].set_ylabel("events/s (median of rounds)")
    axes[1][0].set_ylabel("CPU µs per event (the system alone)")
    axes[0][0].legend()
    fig.suptitle("flood bench drain: hms-sync (every guarantee on) against the naive loop")
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=110)
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
