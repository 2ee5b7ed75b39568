"""float16 mixed precision (minigrad/amp.py through tasks/training/trainer.py's Trainer), on NumPy and on
the stand-in device (where the GPU's path runs: every float16 kernel, the flat float16 weights, the
unscaling kernel and its overflow flag, with NumPy doing the kernels' work).

A tiny GPT-2 trains with float16 forward/backward over float32 weights: the loss falls, an
overflow step (forced by a huge initial loss scale) is skipped and counted, the scale backs off,
and a resume from a checkpoint continues bit for bit (the scaler's state is in it)."""
import json

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from gpt2 import GPT2, GPT2Config
from minigrad.amp import LossScaler, MixedPrecision
from tasks.runs.checkpoint import list_checkpoints
from tasks.data.loaders import BatchLoader
from tasks.training.config import TrainConfig
from tasks.training.trainer import Trainer

V, T = 64, 8


class Windows:
    """Next-token pairs over a repeating sequence: learnable in a few dozen steps."""

    def __init__(self, n: int = 32):
        rng = np.random.default_rng(0)
        base = rng.integers(0, V, size=40)
        ids = np.tile(base, 40)
        self.rows = [(ids[i:i + T], ids[i + 1:i + T + 1]) for i in range(0, n * 7, 7)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def lm_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


# float16 overflows are the point here: NumPy's warnings about them are expected
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")


DEVICES = pytest.mark.parametrize("device", ["cpu", "standin"])


def _trainer(run_dir, dtype="float16", loss_scale=2.0 ** 24, window=4, device="cpu", **cfg):
    mg.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=V, n_ctx=T, n_embd=32, n_layer=2, n_head=2, dropout=0.1)).to(device)
    config = TrainConfig(progress=False, lr=3e-3, epochs=100, dtype=dtype, loss_scale=loss_scale,
                         loss_scale_window=window, **cfg)
    return Trainer(model, BatchLoader(Windows(), 4, shuffle=True), lm_loss, lambda m: {}, run_dir, config)


def _steps(run_dir):
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["type"] == "step"]


@DEVICES
def test_float16_trains_skips_overflow_steps_and_backs_off(tmp_path, device):
    trainer = _trainer(tmp_path / "run", max_steps=24, eval_every=24, device=device)
    trainer.fit()
    steps = _steps(tmp_path / "run")
    skipped = [r["skipped_steps"] for r in steps]
    # 2**24 overflows float16 at once: the first steps are skipped, halving the scale each time
    assert skipped[0] == 1 and skipped[-1] >= 2, skipped
    assert steps[0]["loss_scale"] == 2.0 ** 23
    assert all(p.dtype == np.float32 for p in trainer.model.parameters())  # masters stay float32
    first = np.mean([r["loss"] for r in steps[:5]])
    last = np.mean([r["loss"] for r in steps[-5:]])
    assert last < first - 0.5, (first, last)  # ln(64) = 4.16 at the start
    # after the overflows, window=4 calm steps double the scale again
    scales = [r["loss_scale"] for r in steps[skipped[-1]:]]
    assert max(scales) > scales[0]


@DEVICES
def test_float16_resume_is_exact(tmp_path, device):
    ref = _trainer(tmp_path / "ref", max_steps=12, eval_every=4, device=device)
    ref.fit()
    expected = [(r["step"], r["loss"], r["loss_scale"], r["skipped_steps"]) for r in _steps(tmp_path / "ref")]

    first = _trainer(tmp_path / "run", max_steps=8, eval_every=4, device=device)
    first.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000004", "step_00000008"]
    again = _trainer(tmp_path / "run", max_steps=12, eval_every=4, device=device)
    assert again.resume()
    assert again.amp.scaler.skipped == first.amp.scaler.skipped > 0
    again.fit()
    got = [(r["step"], r["loss"], r["loss_scale"], r["skipped_steps"]) for r in _steps(tmp_path / "run")]
    assert got == expected


@DEVICES
@pytest.mark.parametrize("flat", [False, True], ids=["per-tensor", "flat"])
def test_float16_matches_float32_closely_without_overflow(device, flat):
    """One forward/backward in mixed precision is float32's up to float16 rounding, with the
    parameters cast one by one or (an optimizer's flat buffers given) as one flat float16 copy."""
    grads = {}
    for dtype in ("float32", "float16"):
        mg.manual_seed(0)
        model = GPT2(GPT2Config(vocab_size=V, n_ctx=T, n_embd=32, n_layer=2, n_head=2)).to(device)
        opt = mg.optim.AdamW(model.parameters()) if flat else None
        x, y = Windows()[0]
        mp = MixedPrecision(model.parameters(), LossScaler(1024.0), flat=opt and opt.flat) if dtype == "float16" else None
        if mp:
            mp.half()
            assert all(p.dtype == np.float16 for p in model.parameters())
        loss = lm_loss(model, (x[None], y[None]))
        (loss * (mp.scaler.scale if mp else 1.0)).backward()
        assert mp is None or mp.restore()
        grads[dtype] = {n: mg.backend.to_device(p.grad, "cpu").copy() for n, p in model.named_parameters()}
        if flat:  # the gradients are the optimizer's float32 buffer, the weights its masters
            opt.flat.check_intact()
            assert all(p.grad.base is opt.flat.grad for p in model.parameters())
    for name, g32 in grads["float32"].items():
        g16 = grads["float16"][name]
        assert g16.dtype == np.float32
        np.testing.assert_allclose(g16, g32, rtol=0.05, atol=0.02 * np.abs(g32).max() + 1e-6)


@DEVICES
def test_flat_float16_overflow_drops_every_gradient(device):
    """A float16 gradient that overflows (here: a loss scale float16 cannot hold the gradient
    under) is caught in the flat unscaling pass: restore() says so, no parameter keeps a
    gradient, the scale backs off, and the next half() lends fresh float16 weights."""
    mg.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=V, n_ctx=T, n_embd=32, n_layer=2, n_head=2)).to(device)
    opt = mg.optim.AdamW(model.parameters())
    mp = MixedPrecision(model.parameters(), LossScaler(2.0 ** 30), flat=opt.flat)
    x, y = Windows()[0]
    for scale, finite in ((2.0 ** 30, False), (1024.0, True)):
        mp.scaler.scale = scale
        mp.half()
        (lm_loss(model, (x[None], y[None])) * scale).backward()
        assert mp.restore() is finite
        assert all((p.grad is not None) is finite for p in model.parameters())
        model.zero_grad()
    assert mp.scaler.skipped == 1


def test_loss_scaler_rules():
    s = LossScaler(8.0, growth_interval=2)
    s.update(False)
    assert (s.scale, s.skipped, s.good_steps) == (4.0, 1, 0)
    s.update(True)
    s.update(True)
    assert (s.scale, s.good_steps) == (8.0, 0)
    t = LossScaler()
    t.load_state_dict(s.state_dict())
    assert t.state_dict() == s.state_dict()
    with pytest.raises(ValueError):
        LossScaler(0.0)


def test_log_every_fetches_the_loss_only_at_intervals(tmp_path):
    trainer = _trainer(tmp_path / "run", dtype="float32", max_steps=10, eval_every=5, log_every=3)
    trainer.fit()
    # every 3rd step, and the evaluation/checkpoint steps 5 and 10 (a checkpoint always checks first)
    assert [r["step"] for r in _steps(tmp_path / "run")] == [3, 5, 6, 9, 10]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_dropout_run_resumes_exactly_on_the_fused_path(tmp_path, monkeypatch, dtype):
    """Dropout 0.1 on the stand-in, where the fused kernels' launchers run and NumPy does their
    work: every mask is drawn inside a kernel (attention: attention.cu's float32, the tensor-core
    kernels' float16; the embedding and residual dropouts: bias_residual), no composite dropout
    runs; a run stopped at a checkpoint and resumed gives every loss of the run that did not stop,
    bit for bit; and those are the composite path's losses (MINIGRAD_FUSED=0) to rounding."""
    from minigrad import launchcount
    args = dict(loss_scale=1024.0, device="standin", eval_every=4)
    with launchcount.counting() as count:
        _trainer(tmp_path / "ref", dtype, max_steps=8, **args).fit()
    expected = [(r["step"], r["loss"]) for r in _steps(tmp_path / "ref")]
    attention = "flash_forward" if dtype == "float16" else "attention_forward"
    assert count.by_name[attention] and count.by_name["dropout_bias_grad"] and count.by_name["bias_residual_forward"]
    assert not count.by_name["right_shift"]  # the composite masks' hash (backend.hash_stream) never ran

    _trainer(tmp_path / "run", dtype, max_steps=4, **args).fit()
    again = _trainer(tmp_path / "run", dtype, max_steps=8, **args)
    assert again.resume()
    again.fit()
    assert [(r["step"], r["loss"]) for r in _steps(tmp_path / "run")] == expected

    monkeypatch.setenv("MINIGRAD_FUSED", "0")
    _trainer(tmp_path / "composite", dtype, max_steps=8, **args).fit()
    composite = [(r["step"], r["loss"]) for r in _steps(tmp_path / "composite")]
    np.testing.assert_allclose(np.array(composite), np.array(expected), rtol=1e-4 if dtype == "float32" else 2e-2)
