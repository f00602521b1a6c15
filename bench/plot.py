"""Draw a results JSON of bench/run.py as a bar chart PNG.

    python bench/plot.py docs/performance.png                      # from bench/results/latest.json
    python bench/plot.py out.png --results bench/results/<timestamp>.json

One panel per metric: the median of each server (the thin line spans
the min..max of the repetitions) and its ratio to tornado.websocket on the
bar. Scenario 6 panels also show our server's bare ``sock.send()`` floor.
Needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))

COLORS = {
    "ours": "#d62728",
    "ours-zlib": "#ff9896",
    "before": "#8c564b",
    "tornado": "#7f7f7f",
    "websockets": "#1f77b4",
    "aiohttp": "#2ca02c",
    "picows": "#9467bd",
}


def short_label(label: str) -> str:
    """Break the long library names so the tick labels do not overlap."""
    label = label.replace(", stdlib zlib", "\n(stdlib zlib)")
    return label.replace("tornado_websocket", "tornado_\nwebsocket").replace("tornado.websocket", "tornado.\nwebsocket")


def main() -> int:
    parser = argparse.ArgumentParser(description="Bar chart of a bench/run.py results JSON")
    parser.add_argument("output", help="PNG file to write, e.g. docs/performance.png")
    parser.add_argument(
        "--results", default=os.path.join(HERE, "results", "latest.json"), help="results JSON (default: latest)"
    )
    parser.add_argument("--dpi", type=int, default=110)
    args = parser.parse_args()

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is needed: pip install matplotlib", file=sys.stderr)
        return 2

    with open(args.results) as f:
        doc: dict[str, Any] = json.load(f)
    meta = doc["meta"]
    labels: dict[str, str] = doc["server_labels"]
    servers: list[str] = meta["servers"]
    summary: dict[str, Any] = doc["summary"]
    rows = [r for r in doc["rows"] if not r["floor"] and summary.get(r["id"])]
    floors = {r["id"].replace("floor_", ""): r for r in doc["rows"] if r["floor"]}
    if not rows:
        print(f"{args.results} has no results to plot", file=sys.stderr)
        return 1

    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.9 * nrows), squeeze=False)
    spare = list(axes.flat[len(rows) :])
    for ax in spare:
        ax.axis("off")

    for ax, row in zip(axes.flat, rows):
        per_server = summary[row["id"]]
        keys: list[str] = []
        names, values, lows, highs, colors = [], [], [], [], []
        for server in servers:
            entry = per_server.get(server)
            if entry is None:
                continue
            keys.append(server)
            names.append(short_label(labels.get(server, server)))
            values.append(entry["median"])
            lows.append(entry["median"] - min(entry["values"]))
            highs.append(max(entry["values"]) - entry["median"])
            colors.append(COLORS.get(server, "#333333"))
        floor_row = floors.get(row["id"])
        floor_entry = summary.get(floor_row["id"], {}).get("ours") if floor_row else None
        if floor_entry is not None:
            keys.append("floor")
            names.append("sock.send()\nfloor")
            values.append(floor_entry["median"])
            lows.append(floor_entry["median"] - min(floor_entry["values"]))
            highs.append(max(floor_entry["values"]) - floor_entry["median"])
            colors.append("#ffbb78")
        x = list(range(len(values)))
        bars = ax.bar(x, values, color=colors, yerr=[lows, highs], capsize=3, ecolor="#333333", linewidth=0)
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=7.5 if len(names) <= 5 else 6.5)
        better = "higher is better" if row["higher_is_better"] else "lower is better"
        ax.set_title(f"{' '.join(row['label'].split())}\n({better})", fontsize=9)
        ax.set_ylabel(row["unit"].replace("us", "\u00b5s"), fontsize=8)
        ax.tick_params(axis="y", labelsize=7.5)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        top = max(v + h for v, h in zip(values, highs)) if values else 1.0
        ax.set_ylim(0, top * 1.2)
        for key, bar, value, high in zip(keys, bars, values, highs):
            ratio = per_server.get(key, {}).get("ratio_vs_tornado")
            text = f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
            if ratio is not None:
                text += f"\n{ratio:.2f}x"
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height() + high),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=6.5,
            )

    machine = meta.get("machine", {})
    versions = meta.get("versions", {})
    if spare:
        notes = [
            "Method",
            f"pinning: {machine.get('pinning', '?')}",
            f"idle CPUs: PM QoS {machine.get('pm_qos', '?')}",
            f"{machine.get('nice', '')}",
            "bars: median; whiskers: min..max of the runs",
            "ratio: median / tornado.websocket's median",
            f"tornado_websocket {versions.get('tornado_websocket', '?')} "
            f"({versions.get('tornado_websocket_commit', '?')})",
        ]
        spare[0].text(0.0, 1.0, "\n".join(n for n in notes if n), va="top", fontsize=7.5, wrap=True)
    runs = f"{meta['repeat']} run" + ("s" if meta["repeat"] != 1 else "") + (", quick" if meta.get("quick") else "")
    fig.suptitle(
        f"WebSocket servers on one core, picows load generator on another (medians of {runs})",
        fontsize=11,
    )
    fig.text(
        0.5,
        0.005,
        f"{machine.get('cpu', '?')}, {machine.get('cpus', '?')} CPUs, Python {versions.get('python', '?')}; "
        + ", ".join(f"{k} {versions.get(k, '?')}" for k in ("tornado", "websockets", "aiohttp", "picows"))
        + f"; ratios are vs tornado.websocket; {meta['timestamp']}",
        ha="center",
        fontsize=7,
        color="#555555",
    )
    fig.tight_layout(rect=(0, 0.02, 1, 0.96))
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(args.output, dpi=args.dpi)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
