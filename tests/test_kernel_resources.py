"""`python -m minigrad.kernels --resources` (every kernel compiled for sm_90 as CuPy builds it, with
ptxas's report): no kernel spills registers, and every attention kernel (the tensor-core ones in
every build their launcher uses, and attention.cu's float32 ones), with the block size it declares,
runs at >= 25% occupancy on sm_90. Runs where NVRTC can (no GPU needed)."""
import re
import subprocess
import sys

import pytest

from minigrad.kernels import attention, flash_attention
from minigrad.kernels._loader import NVRTC_OPTIONS, expand_includes, kernel_names, source_text, sources
from minigrad.kernels.nvrtc import compile_nvrtc, cupy_options, nvrtc_available
from minigrad.kernels.resources import Usage

NVRTC_MISSING = nvrtc_available()


def _rows(stdout: str) -> list[dict]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("source "))
    rows = []
    for line in lines[start + 1:]:
        source, defines, kernel, threads, regs, spill, smem, occupancy, limiter = line.split()
        rows.append(dict(source=source, defines=defines, kernel=kernel, threads=threads, regs=int(regs),
                         spill=int(spill), smem=int(smem), occupancy=float(occupancy.strip("<=%")) / 100))
    return rows


@pytest.mark.skipif(NVRTC_MISSING is not None, reason=f"NVRTC cannot run here: {NVRTC_MISSING}")
def test_no_spills_and_attention_kernels_at_a_quarter_occupancy():
    r = subprocess.run([sys.executable, "-m", "minigrad.kernels", "--resources"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = _rows(r.stdout)
    assert {n for f in sources() for n in kernel_names(f.read_text())} <= {row["kernel"] for row in rows}
    for row in rows:
        assert row["spill"] == 0, row
        assert 0 < row["regs"] <= 255, row
    flash = [row for row in rows if row["source"] == flash_attention.FILE]
    for defines, kernels in flash_attention.variants():  # every build the launcher uses, reported
        d = ",".join(f"{k}={v}" for k, v in defines.items()) or "-"
        assert set(kernels) <= {row["kernel"] for row in flash if row["defines"] == d}, d
    for row in flash:
        if row["kernel"] != "flash_dropout_bits":  # the tests' probe of the hash
            assert row["threads"] == "128" and row["occupancy"] >= 0.25, row
    float32 = [row for row in rows if row["source"] == "attention.cu"]
    assert {row["kernel"] for row in float32} == set(kernel_names(source_text("attention.cu")))
    t = attention.tiles()
    for row in float32:  # the block size the launcher uses is the one the kernel declares
        if row["kernel"] != "attention_backward_preprocess":
            assert int(row["threads"]) == t["BQ"] * t["G"] == t["BKB"] * t["G"] == t["BQD"] * t["G"], row
        assert row["occupancy"] >= 0.25, row


@pytest.mark.skipif(NVRTC_MISSING is not None, reason=f"NVRTC cannot run here: {NVRTC_MISSING}")
@pytest.mark.parametrize("kernel", ["attention_forward", "attention_backward_dkdv", "attention_backward_dq"])
def test_float32_attention_reads_shared_rows_16_bytes_at_a_time(kernel):
    """attention.cu's inner loops read a shared row as float4 runs: in the PTX of each kernel (head
    size 64, as CuPy builds it), one 16-byte shared load for every four multiply-adds at least, and
    no single-float shared loads but the backward's per-query lse and delta."""
    ptx = compile_nvrtc(expand_includes(source_text("attention.cu")), "attention.cu",
                        [*cupy_options(tuple(NVRTC_OPTIONS) + ("-DHEAD_DIM=64",)), "-arch=compute_90"]).decode()
    body = re.search(rf"\.entry {kernel}\(.*?\n}}\n", ptx, re.S).group(0)
    vector, single = len(re.findall(r"ld\.shared\.v4\.f32", body)), len(re.findall(r"ld\.shared\.f32", body))
    fmas = len(re.findall(r"fma\.rn(?:\.ftz)?\.f32", body))
    assert vector > 0 and fmas >= 4 * vector, (vector, fmas)
    assert single <= (2 if kernel == "attention_backward_dkdv" else 0), single


def test_occupancy_arithmetic_of_sm90():
    assert Usage("x", {}, "k", regs=128, spill=0, smem=27648, threads=128).occupancy() == (0.25, "regs")
    assert Usage("x", {}, "k", regs=129, spill=0, smem=0, threads=128).occupancy() == (0.1875, "regs")  # 136 a thread
    assert Usage("x", {}, "k", regs=255, spill=0, smem=0, threads=128).occupancy() == (0.125, "regs")
    assert Usage("x", {}, "k", regs=32, spill=0, smem=100 * 1024, threads=128).occupancy() == (0.125, "smem")
    assert Usage("x", {}, "k", regs=32, spill=0, smem=0, threads=1024).occupancy() == (1.0, "threads")
    assert Usage("x", {}, "k", regs=32, spill=0, smem=0, threads=32).occupancy() == (0.5, "blocks")
    assert Usage("x", {}, "k", regs=168, spill=0, smem=0, threads=None).occupancy() == (12 / 64, "regs")


def test_bench_resources_verdict_names_spills_and_slow_tensor_core_kernels():
    """bench.resources' one line for gpu_check.sh's report, read from --resources' table."""
    from bench.resources import verdict
    head = "source defines kernel threads regs spill smem occupancy limiter\n"
    good = head + ("flash_attention.cu HEAD_DIM=64 flash_forward 128 128 0 27648 25% (regs)\n"
                   "attention.cu HEAD_DIM=64 attention_forward 256 128 0 8192 25% (regs)\n"
                   "gelu.cu - gelu_forward - 20 0 0 <=100% (regs)\n")
    line, ok = verdict(good)
    assert ok and "3 kernel builds" in line and "spills: none" in line, line
    line, ok = verdict(good.replace("gelu_forward - 20 0", "gelu_forward - 20 8"))
    assert not ok and "spills: gelu_forward (-)" in line, line
    line, ok = verdict(good.replace("128 128 0 27648 25%", "128 136 0 27648 18%"))
    assert not ok and "occupancy: flash_forward (HEAD_DIM=64)" in line, line
    line, ok = verdict(good.replace("256 128 0 8192 25%", "64 168 0 24832 19%"))
    assert not ok and "occupancy: attention_forward (HEAD_DIM=64)" in line, line
    assert verdict("error: nothing compiled") == ("no table in the output", False)
