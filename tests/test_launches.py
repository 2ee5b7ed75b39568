"""What one GPT-2 124M training step asks of a GPU, counted on the stand-in (bench/launches.py,
minigrad/launchcount.py): kernel launches and host syncs per step, pinned so that they cannot
creep back. A step of tasks.training's Trainer at batch 1 x 64 tokens stands for 16 x 1024: the count
depends on the operations, not on the sizes (bench.launches checks that on two sizes).

The 124M model on NumPy takes a minute or two, so this runs with `--backend standin` (as CI does)."""
from collections import Counter

import pytest

from bench.common import config_dict
from bench.launches import count_step

# (launches, host syncs) per step at pretraining's default dropout 0.1, a little above
# bench/results/launches.md's counts (float32 384, tf32 432, float16 388; issue 22's budgets were
# 450 and 600): q, k and v are read in place (no copies), every dropout mask is drawn inside a kernel
BOUNDS = {"float32": (390, 1), "tf32": (440, 1), "float16": (395, 2)}
SMALL = dict(vocab_size=500, n_ctx=64, n_embd=128, n_head=2)  # head size 64, as GPT-2's


@pytest.fixture
def standin_run(request):
    if request.config.getoption("--backend") != "standin":
        pytest.skip("the counts run on the stand-in device (--backend standin, as CI does)")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "tf32", "float16"])
def test_a_124m_training_step_stays_within_its_launch_and_sync_budget(standin_run, dtype):
    count = count_step(config_dict("124M"), dtype, 1, 64, dropout=0.1)
    launches, syncs = BOUNDS[dtype]
    assert count.launches <= launches, (count, count.by_name.most_common(20))
    assert count.syncs <= syncs, count
    assert count.by_kind["kernel"] > 200  # the fused kernels ran (a composite fallback would launch thousands)


def _layer_launches(dtype: str, dropout: float) -> Counter:
    """The launches one more transformer block adds to a training step, by kind."""
    two, three = (count_step({**SMALL, "n_layer": n}, dtype, 1, 16, dropout=dropout) for n in (2, 3))
    return Counter({k: v for k, v in (three.by_kind - two.by_kind).items() if k not in ("sync", "h2d")})


@pytest.mark.parametrize("dtype", ["float32", "tf32", "float16"])
def test_a_block_is_our_kernels_and_cublas_and_dropout_adds_nothing(standin_run, dtype):
    """Per block, a training step launches 18 of our kernels (forward: 2 LayerNorms, attention,
    GELU, 2 bias_residuals; backward: 2 x 2 for the LayerNorms, GELU, attention's 3, 4 bias
    gradients) and 12 cuBLAS calls (4 Linears, forward and 2 backward), nothing else: no copies of q, k, v, no
    zero-filled split buffers, no composite dropout (tf32: q, k, v and the bias cast to float16 in
    one pass, the output and the gradient cast back: 4 elementwise launches). With dropout 0.1 the
    step launches the same, bias_grad's sums done by dropout_bias_grad (which also applies the mask)."""
    plain, dropped = _layer_launches(dtype, 0.0), _layer_launches(dtype, 0.1)
    assert plain == dropped
    assert plain == Counter({"kernel": 18, "blas": 12,
                             **({"elementwise": 4} if dtype == "tf32" else {})}), plain
    a = count_step({**SMALL, "n_layer": 2}, dtype, 1, 16, dropout=0.0)
    b = count_step({**SMALL, "n_layer": 2}, dtype, 1, 16, dropout=0.1)
    assert (a.launches, a.syncs, a.by_kind) == (b.launches, b.syncs, b.by_kind)
    assert a.by_name - b.by_name == Counter(bias_grad=5) and b.by_name - a.by_name == Counter(dropout_bias_grad=5)
