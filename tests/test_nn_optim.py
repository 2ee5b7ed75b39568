"""Modules (registration, state dicts, modes, LoRA), safetensors io, optimizers and schedules."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
import minigrad.nn as nn
import minigrad.optim as optim


class Block(nn.Module):
    def __init__(self, dim: int, device=None):
        super().__init__()
        self.fc = nn.Linear(dim, dim, device=device)
        self.ln = nn.LayerNorm(dim, device=device)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.ln(self.fc(x).relu()))


class Net(nn.Module):
    def __init__(self, device=None):
        super().__init__()
        self.emb = nn.Embedding(5, 4, device=device)
        self.blocks = nn.ModuleList([Block(4, device), Block(4, device)])
        self.head = nn.Sequential(nn.Linear(4, 4, device=device), nn.Linear(4, 5, device=device))
        self.scale = mg.ones(1, device=device)  # a plain tensor: not a parameter

    def forward(self, ids):
        h = self.emb(ids)
        for block in self.blocks:
            h = block(h)
        return self.head(h) * self.scale


IDS = np.array([[0, 1, 2], [3, 4, 0]])
TARGETS = np.array([[1, 2, 3], [4, 0, -100]])

NET_NAMES = ["emb.weight",
             "blocks.0.fc.weight", "blocks.0.fc.bias", "blocks.0.ln.weight", "blocks.0.ln.bias",
             "blocks.1.fc.weight", "blocks.1.fc.bias", "blocks.1.ln.weight", "blocks.1.ln.bias",
             "head.0.weight", "head.0.bias", "head.1.weight", "head.1.bias"]


def values(model: nn.Module) -> dict[str, np.ndarray]:
    return {n: p.numpy().copy() for n, p in model.named_parameters()}


def host(a) -> np.ndarray:
    """A raw NumPy or CuPy array (a .grad, a merged weight) on the CPU."""
    return mg.backend.to_device(a, "cpu")


# ---------------------------------------------------------------- registration and names
def test_named_parameters_nested_modulelist_sequential(backend):
    net = Net(backend)
    assert [n for n, _ in net.named_parameters()] == NET_NAMES
    assert list(net.state_dict()) == NET_NAMES
    assert net.num_parameters() == 5 * 4 + 2 * (16 + 4 + 4 + 4) + (16 + 4) + (20 + 5)
    names = [n for n, _ in net.named_modules()]
    assert names[:3] == ["", "emb", "blocks"] and "blocks.1.drop" in names and names[-1] == "head.1"
    assert [n for n, _ in net.blocks[0].named_parameters(prefix="b0")][:2] == ["b0.fc.weight", "b0.fc.bias"]


def test_reassigning_and_deleting_attributes_updates_registration():
    block = Block(3)
    block.fc.bias = None  # no longer a parameter
    assert "fc.bias" not in dict(block.named_parameters())
    block.fc.bias = nn.Parameter(np.zeros(3, dtype=np.float32))
    assert "fc.bias" in dict(block.named_parameters())
    del block.ln
    assert not any(n.startswith("ln.") for n, _ in block.named_parameters())
    block.fc.weight = mg.ones(3, 3)  # a plain tensor replaces the parameter
    assert "fc.weight" not in dict(block.named_parameters())


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


def test_tied_parameter_listed_once_and_gets_both_gradients(backend):
    m = Tied().to(backend)
    assert [n for n, _ in m.named_parameters()] == ["a.weight", "a.bias", "b.bias"]
    assert m.num_parameters() == 9 + 3 + 3
    assert len(optim.AdamW(list(m.parameters()) + [m.b.weight]).params) == 3  # de-duplicated too
    x = mg.randn(2, 3, device=backend)
    m(x).sum().backward()
    # d/dW of sum((x W + a) W + b): x^T 1 W^T from the first use plus h^T 1 from the second
    h = x.numpy() @ m.a.weight.numpy() + m.a.bias.numpy()
    ones = np.ones((2, 3), np.float32)
    expected = x.numpy().T @ (ones @ m.a.weight.numpy().T) + h.T @ ones
    np.testing.assert_allclose(host(m.a.weight.grad), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- state dicts and io
def test_state_dict_round_trip_through_safetensors(backend, tmp_path):
    mg.manual_seed(0)
    a = Net(backend).eval()
    mg.manual_seed(1)
    b = Net(backend).eval()
    assert not np.array_equal(a.emb.weight.numpy(), b.emb.weight.numpy())
    path = tmp_path / "sub" / "net.safetensors"
    mg.save(a.state_dict(), path, metadata={"step": "7"})
    assert sorted(os.listdir(path.parent)) == ["net.safetensors"]  # no temporary left behind
    loaded = mg.load(path, device=backend)
    assert sorted(loaded) == sorted(NET_NAMES)
    missing, unexpected = b.load_state_dict(loaded)
    assert missing == [] and unexpected == []
    for name, arr in values(a).items():
        np.testing.assert_array_equal(values(b)[name], arr)
    np.testing.assert_array_equal(a(IDS).numpy(), b(IDS).numpy())
    from safetensors import safe_open  # the file is plain safetensors, metadata included
    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"step": "7"} and sorted(f.keys()) == sorted(NET_NAMES)


def test_save_is_atomic(tmp_path, monkeypatch):
    import safetensors.numpy

    path = tmp_path / "m.safetensors"
    mg.save({"w": np.ones(3, np.float32)}, path)
    before = path.read_bytes()

    def failing_save_file(arrays, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        mg.save({"w": np.zeros(3, np.float32)}, path)
    assert path.read_bytes() == before  # the old file is untouched
    with pytest.raises(OSError):
        mg.save({"w": np.zeros(3, np.float32)}, tmp_path / "new.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]  # no new file, no temporary


def test_saved_files_get_the_umask_permissions_not_tempfiles_0600(tmp_path):
    old = os.umask(0o022)
    try:
        mg.save({"w": np.ones(3, np.float32)}, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o644


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        mg.load(tmp_path / "absent.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        mg.load(bad)


def test_load_state_dict_lists_every_problem():
    net = Net()
    before = values(net)
    state = {k: v.copy() for k, v in net.state_dict().items()}
    del state["head.1.bias"], state["emb.weight"]
    state["extra.weight"] = np.zeros(2, np.float32)
    state["blocks.0.fc.weight"] = np.zeros((4, 4), np.float32) + 7
    state["head.0.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(nn.StateDictError) as err:
        net.load_state_dict(state)
    msg = str(err.value)
    assert "missing keys: emb.weight, head.1.bias" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "head.0.weight: checkpoint (2, 2) vs model (4, 4)" in msg
    assert isinstance(err.value, KeyError)
    assert values(net).keys() == before.keys()
    for k in before:  # nothing was half-loaded
        np.testing.assert_array_equal(values(net)[k], before[k])

    # strict=False forgives missing and unexpected keys, never a shape mismatch
    with pytest.raises(nn.StateDictError, match=r"shape mismatches: head\.0\.weight"):
        net.load_state_dict(state, strict=False)
    state["head.0.weight"] = np.zeros((4, 4), np.float32)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert missing == ["emb.weight", "head.1.bias"] and unexpected == ["extra.weight"]
    np.testing.assert_array_equal(net.blocks[0].fc.weight.numpy(), np.full((4, 4), 7.0))
    np.testing.assert_array_equal(net.emb.weight.numpy(), before["emb.weight"])


def test_train_eval_flags(backend):
    net = Net(backend)
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    x = mg.randn(4, 4, device=backend)
    np.testing.assert_array_equal(net.blocks[0].drop(x).numpy(), x.numpy())  # eval: identity
    np.testing.assert_array_equal(net(IDS).numpy(), net(IDS).numpy())
    net.train()
    assert all(m.training for m in net.modules())
    y = net.blocks[0].drop(mg.ones(1000, device=backend)).numpy()
    assert set(np.unique(y)) == {0.0, 2.0} and 350 < (y == 0).sum() < 650


# ---------------------------------------------------------------- LoRA
def test_lora_linear(backend):
    base = nn.Linear(4, 3, device=backend)
    x = mg.randn(2, 5, 4, device=backend)
    y_base = base(x).numpy()
    lora = nn.LoRALinear(base, rank=2, alpha=4.0)
    np.testing.assert_array_equal(lora(x).numpy(), y_base)  # B starts at zero: exactly the base
    assert [n for n, p in lora.named_parameters() if p.requires_grad] == ["lora_A", "lora_B"]
    assert [n for n, _ in lora.named_parameters()] == ["weight", "bias", "lora_A", "lora_B"]

    lora(x).sum().backward()
    assert lora.weight.grad is None and lora.bias.grad is None
    assert lora.lora_A.grad is not None and lora.lora_B.grad is not None
    assert np.abs(host(lora.lora_B.grad)).sum() > 0

    # after A and B change, the merged weight computes what the adapter does
    lora.lora_A.data[...] = mg.randn(4, 2, device=backend).data
    lora.lora_B.data[...] = mg.randn(2, 3, device=backend).data
    y_lora = lora(x).numpy()
    assert not np.allclose(y_lora, y_base)
    merged = mg.Tensor(lora.merged_weight())
    y_merged = F.linear(x, merged, lora.bias).numpy()
    np.testing.assert_allclose(y_merged, y_lora, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="rank"):
        nn.LoRALinear(nn.Linear(2, 2), rank=0)


def test_apply_lora(backend):
    net = Net(backend).eval()
    y0 = net(IDS).numpy()
    n = nn.apply_lora(net, rank=2, select=lambda name, layer: name.startswith("blocks"))
    assert n == 2
    assert isinstance(net.blocks[0].fc, nn.LoRALinear) and isinstance(net.head[0], nn.Linear)
    trainable = [k for k, p in net.named_parameters() if p.requires_grad]
    assert trainable == ["blocks.0.fc.lora_A", "blocks.0.fc.lora_B", "blocks.1.fc.lora_A", "blocks.1.fc.lora_B"]
    assert set(NET_NAMES) <= set(net.state_dict())  # the base weights keep their names
    np.testing.assert_array_equal(net(IDS).numpy(), y0)

    net.train()
    F.cross_entropy(net(IDS), TARGETS).backward()
    for name, p in net.named_parameters():
        assert (p.grad is not None) == (name in trainable), name

    # a Sequential's items are swapped too, so iterating it runs the adapters
    seq = nn.Sequential(nn.Linear(3, 3, device=backend), nn.Linear(3, 2, device=backend))
    assert nn.apply_lora(seq, rank=1) == 2
    assert all(isinstance(m, nn.LoRALinear) for m in seq)
    seq[1].lora_B.data[...] = 1.0
    x = mg.randn(2, 3, device=backend)
    expected = x.numpy() @ host(seq[0].merged_weight()) + seq[0].bias.numpy()
    expected = expected @ host(seq[1].merged_weight()) + seq[1].bias.numpy()
    np.testing.assert_allclose(seq(x).numpy(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- optimizers
def _mlp(device, seed):
    mg.manual_seed(seed)
    # get_rng_state() snapshots the CPU generator only, so dropout resumes exactly on "cpu" alone
    p = 0.2 if device == "cpu" else 0.0
    return nn.Sequential(nn.Linear(4, 8, device=device), nn.Dropout(p), nn.Linear(8, 3, device=device))


def _train(model, opt, sched, steps, first_step):
    for step in range(first_step, first_step + steps):
        rng = np.random.default_rng(step)  # the batch depends only on the step
        x = mg.tensor(rng.standard_normal((6, 4)).astype(np.float32), device=model[0].weight.device)
        h = model[0](x).tanh()
        logits = model[2](model[1](h))
        loss = F.cross_entropy(logits, rng.integers(0, 3, 6))
        loss.backward()
        optim.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
        sched.step()


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_optimizer_exact_resume(backend, tmp_path, kind):
    def make(model):
        if kind == "adamw":
            opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        else:
            opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        return opt, optim.CosineWithWarmup(opt, warmup_steps=3, total_steps=12, min_lr=1e-3)

    k, n = 5, 5
    ref = _mlp(backend, 0)
    opt, sched = make(ref)
    mg.manual_seed(123)  # dropout masks
    _train(ref, opt, sched, k + n, 0)

    run = _mlp(backend, 0)
    opt, sched = make(run)
    mg.manual_seed(123)
    _train(run, opt, sched, k, 0)
    mg.save(run.state_dict(), tmp_path / "model.safetensors")
    state = opt.state_dict()
    mg.save(state["arrays"], tmp_path / "optim.safetensors")
    (tmp_path / "meta.json").write_text(json.dumps(
        {"optim": state["meta"], "sched": sched.state_dict(), "rng": mg.get_rng_state()}))

    resumed = _mlp(backend, 99)  # different initial weights: everything must come from the files
    opt2, sched2 = make(resumed)
    resumed.load_state_dict(mg.load(tmp_path / "model.safetensors", device=backend))
    meta = json.loads((tmp_path / "meta.json").read_text())
    opt2.load_state_dict({"arrays": mg.load(tmp_path / "optim.safetensors"), "meta": meta["optim"]})
    sched2.load_state_dict(meta["sched"])
    mg.set_rng_state(meta["rng"])
    assert opt2.lr == opt.lr and opt2.step_count == k
    _train(resumed, opt2, sched2, n, k)

    for name, arr in values(ref).items():
        np.testing.assert_array_equal(values(resumed)[name], arr, err_msg=name)


def test_optimizer_state_errors():
    a = nn.Linear(3, 2)
    opt = optim.AdamW(a.parameters())
    a(mg.randn(1, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    other = optim.AdamW(nn.Linear(2, 3).parameters())
    with pytest.raises(ValueError, match=r"shape \(3, 2\).*\(2, 3\)"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.AdamW([])


def test_adamw_matches_the_formula_across_chunks():
    """A parameter bigger than the optimizer's 64K-float chunk, and a strided one, follow
    PyTorch's AdamW update exactly as written (reference computed in float64)."""
    rng = np.random.default_rng(0)
    big = nn.Parameter(rng.standard_normal((300, 250)).astype(np.float32))
    strided = nn.Parameter(rng.standard_normal((5, 7)).astype(np.float32).T)
    params = [big, strided]
    ref = [p.numpy().astype(np.float64) for p in params]
    m = [np.zeros_like(r) for r in ref]
    v = [np.zeros_like(r) for r in ref]
    lr, (b1, b2), eps, wd = 1e-2, (0.9, 0.95), 1e-8, 0.1
    opt = optim.AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    for t in range(1, 4):
        for i, p in enumerate(params):
            g = rng.standard_normal(p.shape).astype(np.float32)
            p.grad = g.copy()
            ref[i] *= 1 - lr * wd
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g.astype(np.float64) ** 2
            ref[i] -= lr / (1 - b1 ** t) * m[i] / (np.sqrt(v[i]) / math.sqrt(1 - b2 ** t) + eps)
        opt.step()
    for p, r in zip(params, ref):
        assert p.dtype == np.float32
        np.testing.assert_allclose(p.numpy(), r, rtol=1e-5, atol=1e-6)


def test_cosine_with_warmup_values_and_state():
    opt = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=1.0)
    sched = optim.CosineWithWarmup(opt, warmup_steps=4, total_steps=14, min_lr=0.1, warmup_start_lr=0.0)
    assert opt.lr == 0.0
    lrs = []
    for _ in range(20):
        lrs.append(sched.step())
        assert opt.lr == lrs[-1]  # step() sets the optimizer's lr and returns it
    np.testing.assert_allclose(lrs[:4], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(lrs[8], 0.1 + 0.9 * 0.5)  # step 9: half way through the decay
    np.testing.assert_allclose(lrs[5], 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    np.testing.assert_allclose(lrs[13:], 0.1)  # held at min_lr after total_steps
    assert all(a > b for a, b in zip(lrs[3:13], lrs[4:14]))

    # a scheduler restored into a fresh optimizer continues where the saved one was
    opt = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=1.0)
    sched = optim.CosineWithWarmup(opt, warmup_steps=4, total_steps=14, min_lr=0.1)
    for _ in range(6):
        sched.step()
    opt2 = optim.SGD([nn.Parameter(np.zeros(1, np.float32))], lr=1.0)
    sched2 = optim.CosineWithWarmup(opt2, warmup_steps=4, total_steps=14, min_lr=0.1)
    assert opt2.lr == 0.0
    sched2.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    assert opt2.lr == opt.lr == pytest.approx(lrs[5])
    assert [sched2.step() for _ in range(5)] == [sched.step() for _ in range(5)]


def test_clip_grad_norm(backend):
    a = nn.Parameter(mg.zeros(2, device=backend))
    b = nn.Parameter(mg.zeros(1, device=backend))
    c = nn.Parameter(mg.zeros(3, device=backend))  # no gradient: ignored
    a.grad = mg.tensor([3.0, 4.0], device=backend).data
    b.grad = mg.tensor([12.0], device=backend).data
    norm = optim.clip_grad_norm_([a, b, c, a], max_norm=100.0)  # a listed twice: counted once
    assert norm == pytest.approx(13.0)
    np.testing.assert_array_equal(mg.Tensor(a.grad).numpy(), [3, 4])  # below max_norm: unchanged
    norm = optim.clip_grad_norm_([a, b, c], max_norm=1.0)
    assert norm == pytest.approx(13.0)  # the norm before clipping
    new = np.concatenate([mg.Tensor(a.grad).numpy(), mg.Tensor(b.grad).numpy()])
    np.testing.assert_allclose(new, np.array([3, 4, 12]) / 13.0, rtol=1e-5)
    assert np.linalg.norm(new) == pytest.approx(1.0, rel=1e-5)
    assert a.grad.dtype == np.float32 and c.grad is None
    assert optim.clip_grad_norm_([c], 1.0) == 0.0
