"""What one GPT-2 124M training step asks of a GPU, counted on the stand-in (bench/launches.py,
minigrad/launchcount.py): kernel launches and host syncs per step, pinned so that they cannot
creep back. A step of tasks.training's Trainer at batch 1 x 64 tokens stands for 16 x 1024: the count
depends on the operations, not on the sizes (bench.launches checks that on two sizes).

The 124M model on NumPy takes a minute or two, so this runs with `--backend standin` (as CI does)."""
import pytest

from bench.common import config_dict
from bench.launches import count_step

# (launches, host syncs) per step: the budgets of the GPU step's design (DESIGN.md)
BOUNDS = {"float32": (450, 2), "float16": (600, 2)}


@pytest.fixture
def standin_run(request):
    if request.config.getoption("--backend") != "standin":
        pytest.skip("the 124M count runs with --backend standin (as CI does)")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_124m_training_step_stays_within_its_launch_and_sync_budget(standin_run, dtype):
    count = count_step(config_dict("124M"), dtype, 1, 64)
    launches, syncs = BOUNDS[dtype]
    assert count.launches <= launches, (count, count.by_name.most_common(20))
    assert count.syncs <= syncs, count
    assert count.by_kind["kernel"] > 200  # the fused kernels ran (a composite fallback would launch thousands)
