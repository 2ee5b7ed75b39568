"""Dropout masks from a counter-based hash of (seed, call counter, element index).

The masks must be Bernoulli(1 - p) as far as a test can see, different at every call (every
layer of every step), reproducible from the two integers, and the same bits on every backend.
Exact resume through tasks.pretrain with dropout is in test_pretrain.py."""
import numpy as np
import pytest

import minigrad as mg
import minigrad.functional as F
from minigrad import backend, standin


def _mask(xp, shape, p, seed=0, calls=0):
    backend.manual_seed(seed)
    backend._dropout_calls = calls
    keep = backend.dropout_keep(xp, shape, p)
    return keep.get() if xp is standin else keep


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_is_one_minus_p(p):
    n = 1 << 20
    kept = _mask(np, (n,), p).mean()
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) < 5 * sigma


def test_masks_differ_between_calls_and_seeds_but_repeat_from_the_same_pair():
    shape = (64, 128)
    a, b, c = _mask(np, shape, 0.5, 0, 0), _mask(np, shape, 0.5, 0, 1), _mask(np, shape, 0.5, 1, 0)
    for x, y in ((a, b), (a, c), (b, c)):
        agree = (x == y).mean()
        assert 0.47 < agree < 0.53  # independent fair coins agree half of the time
    np.testing.assert_array_equal(_mask(np, shape, 0.5, 0, 1), b)


def test_neighbours_are_independent():
    # element i and i + 1 (and i + 1024) of one mask, and the 4 pair outcomes: chi-square, 3 dof
    keep = _mask(np, (1 << 20,), 0.5)
    for lag in (1, 2, 1024):
        x, y = keep[:-lag], keep[lag:]
        counts = np.array([(x & y).sum(), (x & ~y).sum(), (~x & y).sum(), (~x & ~y).sum()])
        expected = len(x) / 4
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < 16.3  # p = 0.001 for 3 degrees of freedom


def test_same_bits_on_numpy_and_the_standin_whatever_the_chunking():
    shape = (3, 70001)  # not a multiple of the NumPy path's chunk
    np.testing.assert_array_equal(_mask(np, shape, 0.3, 5, 17), _mask(standin, shape, 0.3, 5, 17))


def test_each_dropout_call_advances_the_counter_once():
    mg.manual_seed(0)
    x = mg.ones(8, 8)
    F.dropout(x, 0.1)
    F.scaled_dot_product_attention(mg.randn(1, 1, 4, 2), mg.randn(1, 1, 4, 2), mg.randn(1, 1, 4, 2),
                                   dropout_p=0.1)
    F.dropout(x, 0.1, training=False)  # evaluation draws nothing
    assert mg.get_rng_state()["dropout_calls"] == 2


def test_dropout_scales_the_kept_and_its_gradient_matches():
    mg.manual_seed(0)
    x = mg.ones(1000, requires_grad=True)
    y = F.dropout(x, 0.25)
    y.sum().backward()
    out = y.numpy()
    assert set(np.unique(out)) <= {0.0, np.float32(1 / 0.75)}
    np.testing.assert_array_equal(x.grad, out)  # d y / d x is the same scaled mask


def test_a_stream_read_from_an_offset_is_the_same_stream():
    # hash_uniform_bits(start=s) is elements s.. of the stream (the attention kernels draw from
    # anywhere in it); across the NumPy path's chunk boundaries too
    whole = backend.hash_uniform_bits(np, 200000, 3, 9)
    for start in (1, 65530, 131071):
        np.testing.assert_array_equal(backend.hash_uniform_bits(np, 1000, 3, 9, start), whole[start:start + 1000])
