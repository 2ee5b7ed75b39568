"""The optimizer's flat buffer: parameters and gradients as views of two contiguous arrays."""
from __future__ import annotations

import numpy as np
import pytest

import minigrad as mg
import minigrad.nn as nn
import minigrad.optim as optim


def _net() -> nn.Module:
    mg.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3))


def test_parameters_and_gradients_are_views_of_the_flat_arrays():
    net = _net()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    opt = optim.AdamW(net.parameters())
    flat = opt.flat
    assert len(flat) == sum(p.size for p in net.parameters())
    for (name, p), lo, hi in zip(net.named_parameters(), flat.offsets, flat.offsets[1:]):
        assert p.data.base is flat.data and p.data.flags.c_contiguous
        np.testing.assert_array_equal(p.data, before[name])  # values kept, names kept
        np.testing.assert_array_equal(flat.data[lo:hi], before[name].ravel())
    x = mg.tensor(np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32))
    net(x).sum().backward()
    for p, lo, hi in zip(net.parameters(), flat.offsets, flat.offsets[1:]):
        assert p.grad.base is flat.grad  # backward filled the view
        np.testing.assert_array_equal(flat.grad[lo:hi], p.grad.ravel())
    # a second backward accumulates into the same views
    g1 = flat.grad.copy()
    net(x).sum().backward()
    np.testing.assert_allclose(flat.grad, 2 * g1, rtol=1e-6)


def test_flat_update_equals_per_parameter_reference():
    """The flat one-pass AdamW, with two groups and clipping, equals the same update applied to
    each parameter on its own (the pre-flat-buffer code path, written out in float64)."""
    net = _net()
    params = list(net.parameters())
    ref = [p.numpy().astype(np.float64) for p in params]
    m = [np.zeros_like(r) for r in ref]
    v = [np.zeros_like(r) for r in ref]
    decay = [p for p in params if p.ndim >= 2]
    opt = optim.AdamW([{"params": decay, "weight_decay": 0.1},
                       {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], lr=1e-2)
    rng = np.random.default_rng(1)
    for t in range(1, 4):
        x = mg.tensor(rng.standard_normal((4, 5)).astype(np.float32))
        (net(x) ** 2).sum().backward()
        grads = [p.grad.astype(np.float64) for p in params]
        norm = np.sqrt(sum((g ** 2).sum() for g in grads))
        got = optim.clip_grad_norm_(params, 0.5)
        np.testing.assert_allclose(got, norm, rtol=1e-5)
        grads = [g * 0.5 / (norm + 1e-6) for g in grads]
        opt.step()
        opt.zero_grad()
        for i, p in enumerate(params):
            wd = 0.1 if p.ndim >= 2 else 0.0
            ref[i] *= 1 - 1e-2 * wd
            m[i] = 0.9 * m[i] + 0.1 * grads[i]
            v[i] = 0.999 * v[i] + 0.001 * grads[i] ** 2
            ref[i] -= 1e-2 / (1 - 0.9 ** t) * m[i] / (np.sqrt(v[i]) / np.sqrt(1 - 0.999 ** t) + 1e-8)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.numpy(), r, rtol=1e-4, atol=1e-6)


def test_parameter_without_gradient_is_not_updated_and_state_round_trips():
    net = _net()
    opt = optim.AdamW(net.parameters(), lr=1e-2)
    params = list(net.parameters())
    frozen_before = params[2].numpy().copy()  # LayerNorm weight: give it no gradient
    for p in params:
        p.grad = np.ones(p.shape, np.float32)  # gradients set by hand are copied into the views
    params[2].grad = None
    opt.step()
    np.testing.assert_array_equal(params[2].numpy(), frozen_before)
    assert params[0].grad.base is opt.flat.grad
    state = opt.state_dict()
    assert sorted(state["arrays"])[:2] == ["0.exp_avg", "0.exp_avg_sq"]  # names as before
    other_net = _net()
    other = optim.AdamW(other_net.parameters(), lr=1e-2)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.flat_state("exp_avg"), opt.flat_state("exp_avg"))
    assert other.state[id(list(other_net.parameters())[0])]["exp_avg"].base is other.flat_state("exp_avg")


def test_frozen_parameters_stay_out_and_moving_the_model_after_is_an_error():
    net = _net()
    net[0].requires_grad_(False)
    opt = optim.AdamW([p for p in net.parameters() if p.requires_grad])
    assert len(opt.flat) == sum(p.size for p in net.parameters() if p.requires_grad)
    assert net[0].weight.data.base is not opt.flat.data
    net.astype(np.float32)  # replaces every array
    for p in net.parameters():
        p.grad = np.zeros(p.shape, np.float32)
    with pytest.raises(RuntimeError, match="build the optimizer after"):
        opt.step()


def test_tied_weight_gets_both_gradients_written_into_its_flat_slot():
    """An embedding table read twice (lookup, and a transposed linear as GPT-2's tied head): the
    linear writes its gradient straight into the flat slot, the lookup's is added there."""
    import minigrad.functional as F

    def grads(flat: bool):
        mg.manual_seed(3)
        emb = nn.Embedding(11, 4)
        lin = nn.Linear(4, 4)
        params = [emb.weight, lin.weight, lin.bias]
        opt = optim.AdamW(params) if flat else None
        idx = np.array([[1, 2, 2, 5]])
        h = lin(emb(idx))
        F.linear(h, emb.weight, transposed=True).sum().backward()
        if flat:
            assert all(p.grad.base is opt.flat.grad for p in params)
        return [p.grad.copy() for p in params]

    for a, b in zip(grads(True), grads(False)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
