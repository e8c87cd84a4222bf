"""bench.png: latency (p50 bar, p90 tick) and peak memory per engine, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import numpy as np


def write_chart(report: Dict[str, Any], path: Path) -> None:
    from resonance.errors import require

    matplotlib = require("matplotlib", "train", "the benchmark chart")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["engines"] if r.get("status") == "ok"]
    labels = [f"{r['label']} ({r['precision']})" for r in rows]
    y = np.arange(len(rows))
    fig, (lat, mem) = plt.subplots(1, 2, figsize=(12, 1.2 + 0.5 * len(rows)), sharey=True)
    lat.barh(y, [r["p50_ms"] for r in rows], color="#4878a8", label="p50")
    lat.scatter([r["p90_ms"] for r in rows], y, color="black", marker="|", s=200, label="p90", zorder=3)
    lat.set_xlabel("latency per clip (ms)")
    lat.legend(loc="lower right")
    mem.barh(y, [r["peak_rss_mb"] for r in rows], color="#a86848")
    mem.set_xlabel("peak RSS (MB)")
    lat.set_yticks(y, labels)
    lat.invert_yaxis()
    fig.suptitle(f"{report['model']}, {report['threads']} threads, {len(report['clips'])} clips", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
