"""The shared training loop (tasks/training/trainer.py): gradient accumulation, a non-finite loss.

Ctrl-C and SIGKILL with --resume are tested end to end in test_pretrain.py."""

import numpy as np
import pytest

import minigrad as mg
from minigrad import nn
from tasks.runs.checkpoint import list_checkpoints
from tasks.data.loaders import BatchLoader
from tasks.training.config import TrainConfig
from tasks.training.trainer import NonFiniteLoss, Trainer


class Pairs:
    """A dataset of (x, y) rows for BatchLoader: regression inputs and targets."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

def mse(model, batch):
    x, y = batch
    d = model(mg.tensor(x.astype(np.float32))) - mg.tensor(y.astype(np.float32))
    return (d * d).mean()

def _trainer(tmp_path, name, data, batch_size, **cfg):
    mg.manual_seed(0)
    model = nn.Linear(3, 2)
    loader = BatchLoader(data, batch_size)
    config = TrainConfig(progress=False, eval_every=100, epochs=10, **cfg)
    return Trainer(model, loader, mse, lambda m: {}, tmp_path / name, config, tokens_in=lambda b: len(b[0])), model

def test_grad_accumulation_equals_one_batch_of_the_same_rows(tmp_path):
    """Two micro-batches of 4 must give the gradient (and so the update) of one batch of 8.
    The gradients are compared before each optimizer step: AdamW alone would hide a wrong scale."""
    rng = np.random.default_rng(0)
    data = Pairs(rng.standard_normal((8, 3)), rng.standard_normal((8, 2)))
    runs = {}
    for name, batch_size, accum in (("one", 8, 1), ("acc", 4, 2)):
        trainer, model = _trainer(tmp_path, name, data, batch_size=batch_size, max_steps=3, grad_accum=accum)
        grads, real_step = [], trainer.optimizer.step

        def step(real_step=real_step, grads=grads, model=model):
            grads.append([np.array(p.grad) for p in model.parameters()])
            real_step()

        trainer.optimizer.step = step
        trainer.fit()
        runs[name] = (trainer, model, grads)
    (one, m_one, g_one), (acc, m_acc, g_acc) = runs["one"], runs["acc"]
    assert acc.step == one.step == 3 and acc.tokens_seen == one.tokens_seen == 24
    for step_one, step_acc in zip(g_one, g_acc, strict=True):
        for a, b in zip(step_one, step_acc):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(m_one.parameters(), m_acc.parameters()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)

def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    data = Pairs(rng.standard_normal((8, 3)), rng.standard_normal((8, 2)))
    calls = {"n": 0}

    def loss_nan_on_5th(model, batch):
        calls["n"] += 1
        loss = mse(model, batch)
        return loss * float("nan") if calls["n"] == 5 else loss

    mg.manual_seed(0)
    model = nn.Linear(3, 2)
    trainer = Trainer(model, BatchLoader(data, 4), loss_nan_on_5th, lambda m: {}, tmp_path / "run",
                      TrainConfig(progress=False, eval_every=2, keep=5, epochs=10, max_steps=10))
    with pytest.raises(NonFiniteLoss, match="at step 5") as err:
        trainer.fit()
    assert "step_00000004" in str(err.value)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000002", "step_00000004"]
    assert all(np.isfinite(p.numpy()).all() for p in model.parameters())  # no NaN step was taken


def test_save_every_is_apart_from_eval_every(tmp_path):
    rng = np.random.default_rng(0)
    data = Pairs(rng.standard_normal((8, 3)), rng.standard_normal((8, 2)))
    evals = []
    mg.manual_seed(0)
    trainer = Trainer(nn.Linear(3, 2), BatchLoader(data, 4), mse, lambda m: evals.append(1) or {},
                      tmp_path / "run", TrainConfig(progress=False, eval_every=2, save_every=3, keep=9,
                                                    epochs=10, max_steps=7))
    trainer.fit()
    assert len(evals) == 4  # steps 2, 4, 6 and the last, 7
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == \
        ["step_00000003", "step_00000006", "step_00000007"]  # and always the last
