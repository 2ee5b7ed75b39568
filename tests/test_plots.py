"""The run plots draw what metrics.jsonl holds: loss.png shows every logged step, not only the
evaluations (a run evaluated twice used to show two points and none of its fall from ~10.8)."""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pytest

from tasks.common import plots
from tasks.training.evaluation import plot_losses, with_epochs


def write_metrics(run, steps: int, eval_every: int, steps_per_epoch: int) -> None:
    lines = []
    for s in range(1, steps + 1):
        lines.append({"type": "step", "step": s, "loss": 10.8 - 0.04 * s, "lr": 1e-3, "tokens_seen": 64 * s})
        if s % eval_every == 0:
            lines.append({"type": "eval", "step": s, "epoch": s / steps_per_epoch, "tokens_seen": 64 * s,
                          "train_loss": 10.8 - 0.04 * s, "val_loss": 11.0 - 0.03 * s})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plots would save: {file name: [(label, xs, ys) of each line]}."""
    figures = {}

    def keep(fig, path):
        ax = fig.get_axes()[0]
        figures[path.name if hasattr(path, "name") else str(path)] = [
            (line.get_label(), list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]
        plt.close(fig)
        return path
    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_loss_png_draws_every_step_under_the_evaluations(tmp_path, drawn):
    write_metrics(tmp_path, steps=100, eval_every=50, steps_per_epoch=300)
    plot_losses(tmp_path)
    lines = {label: (xs, ys) for label, xs, ys in drawn["loss.png"]}
    xs, ys = lines["train loss (each step)"]
    assert len(xs) == 100 and ys[0] == pytest.approx(10.76)          # the fall from the first step
    assert xs[0] == pytest.approx(1 / 300) and xs[-1] == pytest.approx(100 / 300)  # in epochs
    assert lines["train loss (evaluations)"][0] == pytest.approx([50 / 300, 100 / 300])
    assert lines["val loss (evaluations)"][1] == pytest.approx([9.5, 8.0])


def test_step_epochs_come_from_an_evaluation():
    evals = [{"step": 0, "epoch": 0.0}, {"step": 10, "epoch": 2.5}]
    assert [s["epoch"] for s in with_epochs([{"step": 2}, {"step": 10}], evals)] == [0.5, 2.5]
    assert with_epochs([{"step": 2}], [{"step": 0, "epoch": 0.0}]) == []   # no rate known: no steps drawn


def test_a_real_png_is_written(tmp_path):
    write_metrics(tmp_path, steps=12, eval_every=6, steps_per_epoch=4)
    path = plot_losses(tmp_path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
