"""PNG plots of a run's metrics.jsonl (matplotlib, no display needed)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # write files; never try to open a window
import matplotlib.pyplot as plt  # noqa: E402

from files.atomic import atomic_write  # noqa: E402


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
                seen_key: str = "tokens_seen", seen_label: str = "tokens seen",
                steps: Sequence[dict] = (), step_key: str = "loss") -> Path | None:
    """`keys` (e.g. train_loss, val_loss) against epochs, with `seen_key` on a second x axis.

    `steps` (records with "epoch", `seen_key` and `step_key`: the training loss of every logged
    step) are drawn under them as a thin line, so a run evaluated twice still shows its whole fall."""
    evals = [e for e in evals if any(k in e for k in keys)]
    if not evals:
        return None
    steps = [s for s in steps if step_key in s and "epoch" in s]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if steps:
        ax.plot([s["epoch"] for s in steps], [s[step_key] for s in steps], color="lightgray",
                linewidth=1, label="train loss (each step)" if step_key == "loss" else step_key)
    for k in keys:
        pts = [(e["epoch"], e[k]) for e in evals if k in e]
        if pts:
            label = k.replace("_", " ") + (" (evaluations)" if steps else "")
            ax.plot(*zip(*pts), label=label, linestyle="-" if "train" in k else "-.",
                    marker="o" if len(pts) < 30 else None, markersize=3)  # a lone point stays visible
    ax.set_xlabel("epochs")
    ax.set_ylabel(ylabel)
    ax.legend()
    top = ax.twiny()  # the same points, labelled by how much data they had seen
    top.set_xlabel(seen_label)
    points = [*evals, *steps]
    ax.set_xlim(*_span([p["epoch"] for p in points]))
    top.set_xlim(*_span([p[seen_key] for p in points]))  # seen grows with epochs: the axes line up
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


def plot_subject_accuracy(per_subject: dict[str, tuple[int, int]], path: str | os.PathLike,
                          title: str = "", chance: float = 0.25) -> Path:
    """One horizontal bar per subject (accuracy = correct / total), best at the top, with the
    chance level and the overall accuracy as vertical lines."""
    items = sorted(per_subject.items(), key=lambda kv: kv[1][0] / kv[1][1])
    names = [s for s, _ in items]
    accs = [c / n for _, (c, n) in items]
    overall = sum(c for c, _ in per_subject.values()) / sum(n for _, n in per_subject.values())
    fig, ax = plt.subplots(figsize=(7, 1.5 + 0.22 * len(items)))
    ax.barh(range(len(items)), accs, color="tab:blue")
    ax.set_yticks(range(len(items)), names, fontsize=8)
    ax.axvline(chance, color="gray", linestyle=":", label=f"chance ({chance:.0%})")
    ax.axvline(overall, color="tab:red", linestyle="--", label=f"overall ({overall:.1%})")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(items) - 0.4)
    ax.set_xlabel("accuracy")
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def bar_panels_figure(labels: Sequence[str], series: dict[str, Sequence[float]], ylabel: str,
                      title: str = "", note: str = ""):
    """One panel of bars per series (e.g. a token's probability at each temperature), stacked and
    sharing the labels, each with its own y scale: a flat series (T = 5: every bar near 1e-4) is as
    readable as a peaked one, which grouped bars on one scale would flatten to nothing. The tallest
    bar of each panel is labelled with its value; `note` goes under the figure (a caption)."""
    n = max(len(series), 1)
    fig, axes = plt.subplots(n, 1, sharex=True, squeeze=False,
                             figsize=(max(6.0, 0.55 * len(labels) + 2), 1.2 + 1.6 * n))
    for ax, (name, values), color in zip(axes[:, 0], series.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        values = [float(v) for v in values]
        ax.bar(range(len(values)), values, width=0.7, color=color)
        top = max(values, default=0.0) or 1.0
        ax.set_ylim(0, top * 1.25)  # each panel to its own tallest bar
        ax.text(0.99, 0.95, f"{name} (tallest {top:.3g})", transform=ax.transAxes, ha="right", va="top")
        ax.set_ylabel(ylabel, fontsize=8)
    last = axes[-1, 0]
    last.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=9)
    if title:
        axes[0, 0].set_title(title)
    fig.tight_layout()
    if note:
        fig.text(0.01, 0.0, note, fontsize=8, ha="left", va="top", wrap=True)
    return fig


def plot_bar_panels(labels: Sequence[str], series: dict[str, Sequence[float]], path: str | os.PathLike,
                    ylabel: str, title: str = "", note: str = "") -> Path:
    """bar_panels_figure, written to `path` (PNG)."""
    return _save(bar_panels_figure(labels, series, ylabel, title, note), path)


def plot_loss_and_accuracy(evals: Sequence[dict], loss_keys: Sequence[str], accs: Sequence[dict],
                           acc_keys: Sequence[str], path: str | os.PathLike, acc_label: str,
                           chance: float | None = None) -> Path | None:
    """Two panels against tokens seen: the losses on the left, accuracies (e.g. HellaSwag acc and
    acc_norm, measured every N steps) on the right."""
    evals = [e for e in evals if any(k in e for k in loss_keys)]
    accs = [a for a in accs if any(k in a for k in acc_keys)]
    if not accs:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    for k in loss_keys:
        pts = [(e["tokens_seen"], e[k]) for e in evals if k in e]
        if pts:
            left.plot(*zip(*pts), label=k.replace("_", " "), marker="o" if len(pts) < 30 else None,
                      markersize=3)
    left.set_xlabel("tokens seen")
    left.set_ylabel("loss")
    if evals:
        left.legend()
    for k in acc_keys:
        pts = [(a["tokens_seen"], a[k]) for a in accs if k in a]
        if pts:
            right.plot(*zip(*pts), label=k.replace("_", " "), marker="o", markersize=3)
    if chance is not None:
        right.axhline(chance, color="gray", linestyle=":", label=f"chance ({chance:.0%})")
    right.set_xlabel("tokens seen")
    right.set_ylabel(acc_label)
    right.legend()
    fig.tight_layout()
    return _save(fig, path)
