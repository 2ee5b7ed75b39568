"""PNG plots of a run's metrics.jsonl (matplotlib, no display needed)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # write files; never try to open a window
import matplotlib.pyplot as plt  # noqa: E402

from minigrad.io import atomic_write  # noqa: E402


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def _span(values: Sequence[float]) -> tuple[float, float]:
    """Axis limits for the values; a single point gets 5% either side (an empty span warns)."""
    lo, hi = min(values), max(values)
    if lo == hi:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    return lo, hi


def plot_curves(evals: Sequence[dict], keys: Sequence[str], path: str | os.PathLike, ylabel: str,
                seen_key: str = "tokens_seen", seen_label: str = "tokens seen") -> Path | None:
    """`keys` (e.g. train_loss, val_loss) against epochs, with `seen_key` on a second x axis."""
    evals = [e for e in evals if any(k in e for k in keys)]
    if not evals:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [e["epoch"] for e in evals]
    for k in keys:
        pts = [(e["epoch"], e[k]) for e in evals if k in e]
        if pts:
            ax.plot(*zip(*pts), label=k.replace("_", " "), linestyle="-" if "train" in k else "-.",
                    marker="o" if len(pts) < 30 else None, markersize=3)  # a lone point stays visible
    ax.set_xlabel("epochs")
    ax.set_ylabel(ylabel)
    ax.legend()
    top = ax.twiny()  # the same points, labelled by how much data they had seen
    top.set_xlabel(seen_label)
    ax.set_xlim(*_span(epochs))
    top.set_xlim(*_span([e[seen_key] for e in evals]))  # seen grows with epochs: the axes line up
    fig.tight_layout()
    return _save(fig, path)


def plot_confusion(matrix, labels: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(matrix, cmap="Blues")
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, str(int(matrix[i][j])), ha="center", va="center")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
