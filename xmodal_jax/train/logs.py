"""Logging of a run: metrics.jsonl + TensorBoard, the progress line and the curves plot."""

from __future__ import annotations

import json
import os
from typing import Any

import jax

# --- logging --------------------------------------------------------------------------------------


class MetricLogger:
    """Writes metrics to stdout, ``metrics.jsonl`` and TensorBoard events (process 0 only)."""

    def __init__(self, workdir: str):
        self.main = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if self.main:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, values: dict[str, float], **tags: Any) -> None:
        """Appends one record ``{"step", **tags, **values}``."""
        if not self.main:
            return
        rec = {"step": int(step), **tags, **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        for k, v in values.items():
            self.tb.add_scalar(f"{tags.get('split', 'train')}/{k}", float(v), int(step))
        self.tb.flush()

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer."""
        if self.tb is not None:
            self.tb.close()


def _progress(name: str, done: int, total: int, rate: float, values: dict) -> str:
    width = 20
    filled = int(width * done / max(total, 1))
    eta = (total - done) / rate if rate > 0 else float("nan")
    stats = " ".join(f"{k} {v:.4g}" for k, v in values.items())
    return (
        f"[{name}] {done:>5}/{total} |{'█' * filled}{'·' * (width - filled)}| "
        f"{rate:5.2f} steps/s ETA {eta:5.0f}s {stats}"
    )


def plot_curves(workdir: str) -> str | None:
    """Saves ``curves.png`` (train loss and validation metric vs step) from ``metrics.jsonl``."""
    path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0 or not os.path.exists(path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in open(path)]
    train = [r for r in recs if r.get("split") == "train" and "loss" in r]
    val = [r for r in recs if r.get("split") == "val"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for stage in dict.fromkeys(r["stage"] for r in train):
        pts = [(r["step"], r["loss"]) for r in train if r["stage"] == stage]
        a.plot([p[0] for p in pts], [p[1] for p in pts], label=stage)
    a.set_xlabel("step"), a.set_ylabel("train loss"), a.legend()
    if val:
        b.plot([r["step"] for r in val], [r["metric"] for r in val], "o-")
    b.set_xlabel("step"), b.set_ylabel("validation metric (lower is better)")
    fig.tight_layout()
    out = os.path.join(workdir, "curves.png")
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
