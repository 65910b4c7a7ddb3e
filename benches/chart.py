#!/usr/bin/env python3
"""Draws the ratio-to-kernel chart of a compare.py run as an SVG (no plotting library needed).

python3 benches/chart.py [target/bench-compare.json] [docs/bench-ratios.svg]
One group of bars per timed workload, one bar per FUSE implementation: its median time divided
by kernel overlayfs's median in the same run (1.0 = as fast as the kernel; log scale).
"""

import json
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLORS = {"fuse-overlayfs-c": "#999999", "fuse-overlayfs-rs": "#e69f00", "nestfs": "#0072b2",
          "nestfs-before": "#56b4e9"}


def ratios(results):
    out = {}
    for workload, r in results.items():
        s = r["samples"]
        if r["unit"] != "s" or None in s.get("kernel", [None]):
            continue
        k = statistics.median(s["kernel"])
        out[workload] = {n: statistics.median(v) / k for n, v in s.items()
                         if n != "kernel" and None not in v}
    return out


def svg(data, title):
    names = sorted({n for row in data.values() for n in row}, key=lambda n: list(COLORS).index(n)
                   if n in COLORS else 99)
    bar, gap, left, top, width = 12, 10, 170, 50, 520
    lo, hi = 0.1, max(2.0, max(v for row in data.values() for v in row.values()) * 1.2)
    x = lambda v: left + width * (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))  # noqa: E731
    height = top + len(data) * (len(names) * bar + gap) + 60
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 160}" height="{height}" '
           'font-family="sans-serif" font-size="11">',
           f'<text x="10" y="20" font-size="14">{title}</text>']
    for tick in [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50]:
        if lo <= tick <= hi:
            out.append(f'<line x1="{x(tick):.1f}" y1="{top - 5}" x2="{x(tick):.1f}" y2="{height - 50}" '
                       f'stroke="{"#000" if tick == 1 else "#ddd"}"/>')
            out.append(f'<text x="{x(tick):.1f}" y="{height - 35}" text-anchor="middle">{tick}x</text>')
    y = top
    for workload, row in data.items():
        out.append(f'<text x="{left - 8}" y="{y + len(names) * bar / 2 + 4}" text-anchor="end">{workload}</text>')
        for n in names:
            if n in row:
                v = row[n]
                out.append(f'<rect x="{x(lo)}" y="{y}" width="{x(v) - x(lo):.1f}" height="{bar - 2}" '
                           f'fill="{COLORS.get(n, "#cc79a7")}"/>')
                out.append(f'<text x="{x(v) + 3:.1f}" y="{y + bar - 3}">{v:.2f}</text>')
            y += bar
        y += gap
    for i, n in enumerate(names):
        out.append(f'<rect x="{left + width + 20}" y="{top + i * 16}" width="10" height="10" '
                   f'fill="{COLORS.get(n, "#cc79a7")}"/>')
        out.append(f'<text x="{left + width + 35}" y="{top + i * 16 + 9}">{n}</text>')
    out.append(f'<text x="{left}" y="{height - 15}">time / kernel overlayfs time, same run '
               '(log scale; lower is faster)</text>')
    out.append("</svg>")
    return "\n".join(out)


def main():
    src = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "target/bench-compare.json")
    dst = Path(sys.argv[2] if len(sys.argv) > 2 else REPO / "docs/bench-ratios.svg")
    run = json.loads(src.read_text())
    m = run.get("machine", {})
    title = f"FUSE overlays vs kernel overlayfs (kernel {m.get('kernel', '?')}, {m.get('cpus', '?')} CPUs)"
    dst.write_text(svg(ratios(run["results"]), title))
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
