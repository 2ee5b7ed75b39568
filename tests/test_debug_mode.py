"""The engine's debug mode (MINIGRAD_DEBUG=1, on for the whole suite by conftest.py) catches an op
whose backward breaks the rules Tensor.backward relies on, naming the op."""
import numpy as np
import pytest

import minigrad as mg
from minigrad.tensor import BackwardRuleError, Function, is_debug, set_debug


class WrongShape(Function):
    """Deliberately broken: its gradient drops the last axis."""

    @staticmethod
    def forward(ctx, a):
        return a * 2

    @staticmethod
    def backward(ctx, g):
        return g[..., 0]


class ReturnsSaved(Function):
    """Deliberately broken: returns the array it saved, which the graph still holds."""

    @staticmethod
    def forward(ctx, a):
        out = a * 3
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved
        out *= 0  # and then writes into the graph's activation: what the rule exists to prevent
        return out


class WrongDtype(Function):
    """Deliberately broken: a float32 input gets a float64 gradient (a silent upcast)."""

    @staticmethod
    def forward(ctx, a):
        return a.copy()

    @staticmethod
    def backward(ctx, g):
        return g.astype(np.float64)


@pytest.fixture
def debug_on():
    was = is_debug()
    set_debug(True)
    yield
    set_debug(was)


def test_the_suite_runs_in_debug_mode():
    assert is_debug(), "tests/conftest.py calls set_debug(True)"


@pytest.mark.parametrize("fn, words", [(WrongShape, "shape (3,)"), (ReturnsSaved, "sharing memory"),
                                       (WrongDtype, "dtype float64")])
def test_debug_mode_names_the_op_that_broke_a_rule(debug_on, backend, fn, words):
    x = mg.randn(3, 2, requires_grad=True, device=backend)
    y = fn.apply(x)
    with pytest.raises(BackwardRuleError, match=f"{fn.__name__}.backward returned") as err:
        y.sum().backward()
    assert words in str(err.value)


def test_without_debug_mode_a_saved_array_slips_through(backend):
    was = is_debug()
    set_debug(False)
    try:
        x = mg.randn(3, 2, requires_grad=True, device=backend)
        ReturnsSaved.apply(x).sum().backward()  # no check: the broken op goes unnoticed
    finally:
        set_debug(was)
    assert x.grad.shape == (3, 2)


def test_a_view_of_the_incoming_gradient_is_allowed(debug_on, backend):
    x = mg.randn(2, 3, requires_grad=True, device=backend)
    (x.reshape(3, 2).transpose() * 2).sum().backward()
    np.testing.assert_allclose(mg.backend.to_device(x.grad, "cpu"), np.full((2, 3), 2.0))
