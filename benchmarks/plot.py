"""Plot the side-by-side comparison: python benchmarks/plot.py results/compare.json [OUT.png]

Left: median latency per call relative to the no-op CustomLogger, for every mode and
endpoint state. Right: throughput with 50 calls in flight: calls/s, and events/s that
reached the endpoint. Writes benchmarks/compare.png unless told otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

CONFIGS = ("none", "noop", "builtin", "ours")
LABELS = {
    "none": "no callback",
    "noop": "no-op CustomLogger",
    "builtin": "LiteLLM built-in openmeter",
    "ours": "litellm-openmeter",
}
COLOURS = {"none": "#9e9e9e", "noop": "#616161", "builtin": "#e57373", "ours": "#1e88e5"}


def main() -> None:
    source = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).with_name("compare.png")
    summary: list[dict[str, Any]] = json.loads(source.read_text())["summary"]
    groups = [
        (mode, state)
        for mode in ("sync", "async")
        for state in ("healthy", "slow_200ms", "down")
        if any(row["mode"] == mode and row["state"] == state for row in summary)
    ]
    figure, (left, right) = plt.subplots(
        1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 1.3]}
    )
    width = 0.2
    for offset, config in enumerate(CONFIGS):
        ratios = []
        for mode, state in groups:
            row = next(
                r
                for r in summary
                if r["mode"] == mode and r["state"] == state and r["config"] == config
            )
            ratios.append(row["paired_ratio_to_noop_p50"] or 0.0)
        positions = [index + (offset - 1.5) * width for index in range(len(groups))]
        left.bar(positions, ratios, width, label=LABELS[config], color=COLOURS[config])
    left.axhline(1.0, color="black", linewidth=0.8)
    left.axhline(1.02, color="#1e88e5", linewidth=0.8, linestyle="--")
    left.set_xticks(range(len(groups)), [f"{mode}\n{state}" for mode, state in groups])
    left.set_ylabel("median latency / no-op CustomLogger")
    left.set_title("Latency per mock completion (median of paired rounds)")
    left.legend(loc="upper left", fontsize=8)

    burst = [row for row in summary if row["mode"] == "burst"]
    names = [LABELS[row["config"]] for row in burst]
    calls = [row["calls_per_second"] or 0 for row in burst]
    delivered = [row["delivered_per_second"] or 0 for row in burst]
    positions = list(range(len(burst)))
    right.bar([p - 0.2 for p in positions], calls, 0.4, label="calls/s", color="#90a4ae")
    right.bar(
        [p + 0.2 for p in positions], delivered, 0.4, label="events/s delivered", color="#1e88e5"
    )
    right.set_xticks(positions, names, rotation=20, ha="right", fontsize=8)
    right.set_title("Throughput, 50 async calls in flight")
    right.set_ylim(0, max([*calls, *delivered, 1]) * 1.25)  # room for the legend above the bars
    right.legend(loc="upper right", fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
