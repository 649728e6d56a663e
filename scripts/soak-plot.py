#!/usr/bin/env python3
"""Draws a `gancho bench --soak --json` report as an SVG: each process's resident memory
(sampled every 10 s) against time, one panel per process, with the warm-up shaded and a
line at every injected fault.

    gancho bench ... --soak 60m --faults 3m --json > soak.json
    scripts/soak-plot.py soak.json docs/soak.svg
"""

import json
import sys

WIDTH, PANEL, GAP, LEFT, TOP = 900, 110, 28, 70, 40
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
# The faults as `gancho bench --faults` names them, with a short label for the legend.
FAULT_COLOURS = {
    "worker SIGKILL, started again": ("#d62728", "worker killed"),
    "router SIGKILL, started again": ("#ff7f0e", "router killed"),
    "nats-server SIGKILL, started again on its store": ("#9467bd", "nats-server killed"),
    "receiver answers 503 for 30 s": ("#7f7f7f", "receiver down 30 s"),
}


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def main(src, dst):
    report = json.load(open(src))
    soak = report["soak"]
    procs = soak["processes"]
    warm_up = soak.get("warm_up_s", 0)
    faults = (soak.get("faults") or {}).get("faults", [])
    names = list(procs)
    samples = max(len(p["rss_mib_every_10s"]) for p in procs.values())
    span = max(samples - 1, 1) * 10
    plot_w = WIDTH - LEFT - 20
    height = TOP + len(names) * (PANEL + GAP) + 30
    x = lambda t: LEFT + plot_w * t / span
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="{LEFT}" y="18" font-size="13">Resident memory (MiB) every 10 s over '
        f"{span // 60} minutes; warm-up shaded; a line at each fault</text>",
    ]
    legend_x = LEFT
    for colour, label in FAULT_COLOURS.values():
        out.append(
            f'<line x1="{legend_x}" y1="30" x2="{legend_x + 14}" y2="30" stroke="{colour}" stroke-width="2"/>'
            f'<text x="{legend_x + 18}" y="33">{label}</text>'
        )
        legend_x += 150
    for i, name in enumerate(names):
        series = procs[name]["rss_mib_every_10s"]
        top = TOP + i * (PANEL + GAP) + 10
        lo, hi = min(series), max(series)
        if hi - lo < 1:
            hi = lo + 1
        pad = (hi - lo) * 0.1
        lo, hi = max(lo - pad, 0), hi + pad
        y = lambda v: top + PANEL - PANEL * (v - lo) / (hi - lo)
        out.append(f'<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#ccc"/>')
        out.append(
            f'<rect x="{LEFT}" y="{top}" width="{x(min(warm_up, span)) - LEFT:.1f}" height="{PANEL}" fill="#f2f2f2"/>'
        )
        for f in faults:
            fx = x(min(f["at_s"], span))
            colour = FAULT_COLOURS.get(f["fault"], ("#000", ""))[0]
            out.append(
                f'<line x1="{fx:.1f}" y1="{top}" x2="{fx:.1f}" y2="{top + PANEL}" stroke="{colour}" stroke-opacity="0.5"/>'
            )
        points = " ".join(f"{x(k * 10):.1f},{y(v):.1f}" for k, v in enumerate(series))
        colour = COLOURS[i % len(COLOURS)]
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.2"/>')
        growth = procs[name].get("rss_growth_pct")
        label = f"{name}: {series[0]:.0f} to {series[-1]:.0f} MiB"
        if growth is not None:
            label += f", growth after warm-up {growth}%"
        out.append(f'<text x="{LEFT}" y="{top - 3}">{esc(label)}</text>')
        out.append(f'<text x="{LEFT - 5}" y="{top + 8}" text-anchor="end">{hi:.0f}</text>')
        out.append(f'<text x="{LEFT - 5}" y="{top + PANEL}" text-anchor="end">{lo:.0f}</text>')
    base = TOP + len(names) * (PANEL + GAP)
    for m in range(0, span // 60 + 1, 5):
        out.append(f'<text x="{x(m * 60):.1f}" y="{base}" text-anchor="middle">{m} min</text>')
    out.append("</svg>")
    with open(dst, "w") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: soak-plot.py REPORT.json OUT.svg")
    main(sys.argv[1], sys.argv[2])
