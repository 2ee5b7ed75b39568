"""bench.train's markdown report: the comparison table, the losses, where the time goes, the machine."""
from __future__ import annotations

import shlex
import numpy as np

from . import breakdown
from .common import fmt_ms, load_note, machine_info_markdown, markdown_table, peak_tflops
from .precision import LOSS_RTOL

PRECISION = {"float32": "float32", "tf32": "float32 with TF32 tensor-core matmuls (CuPy's cuBLAS compute type, "
                                           "PyTorch's allow_tf32)",
             "float16": "float16 mixed precision (minigrad.amp over the flat buffers, as tasks.training's Trainer; PyTorch: "
                        "autocast + GradScaler), float32 master weights"}


def _median(xs: list[float]) -> float:
    return float(np.median(xs))


def _pct(share: float | None) -> str:
    return "?" if share is None else f"{100 * share:.0f}%"


def _mfu_row(args, info: dict, n_params: int, tokens: int, times: tuple[float, float]) -> list[list[str]]:
    """The MFU row: --peak-tflops, else the datasheet peak of the GPU's name (common.PEAK_TFLOPS)."""
    peak, source = args.peak_tflops, "--peak-tflops"
    if peak is None:
        found = peak_tflops(info.get("gpu", ""), args.dtype)
        if found is None:
            return []
        peak, source = found[0], f"{found[1]} datasheet, dense {args.dtype}"
    mfu = [6 * n_params * tokens / t / (peak * 1e12) for t in times]
    return [[f"MFU (6 N tokens/s over {peak:g} TFLOP/s, {source})", f"{100 * mfu[0]:.1f}%", f"{100 * mfu[1]:.1f}%",
             f"{mfu[0] / mfu[1]:.2f}x"]]


def _table_rows(args, job: dict, n_params: int, mg_res: dict, th_res: dict, info: dict) -> list[list[str]]:
    tokens = job["B"] * job["T"]
    t_mg, t_th = _median(mg_res["repeat_times"]), _median(th_res["repeat_times"])
    rows = [["time per step, median (s)", f"{t_mg:.3f}", f"{t_th:.3f}", f"{t_mg / t_th:.2f}x"],
            ["tokens/s", f"{tokens / t_mg:.0f}", f"{tokens / t_th:.0f}", f"{t_th / t_mg:.2f}x"],
            ["peak RSS (MiB)", f"{mg_res['peak_rss_mib']:.0f}", f"{th_res['peak_rss_mib']:.0f}",
             f"{mg_res['peak_rss_mib'] / th_res['peak_rss_mib']:.2f}x"],
            ["CPU time taken by other processes while timed", _pct(mg_res["load"]), _pct(th_res["load"]), ""]]
    if job["device"] == "cuda":
        rows.append(["GPU memory pool, peak (MiB)", f"{mg_res['gpu_pool_mib']:.0f}", f"{th_res['gpu_pool_mib']:.0f}",
                     f"{mg_res['gpu_pool_mib'] / th_res['gpu_pool_mib']:.2f}x"])
        rows += _mfu_row(args, info, n_params, tokens, (t_mg, t_th))
    else:
        rows.append(["BLAS (threadpoolctl: library, kernel, threads)", mg_res.get("blas", "?"),
                     th_res.get("blas", "?"), ""])
    if args.dtype == "float16":
        rows.append(["steps skipped for inf/NaN gradients", str(mg_res.get("skipped", "?")),
                     str(th_res.get("skipped", "?")), ""])
    return rows


def render(args, job: dict, n_params: int, mg_res: dict, th_res: dict, info: dict[str, str]) -> tuple[str, bool]:
    B, T = job["B"], job["T"]
    gpu = job["device"] == "cuda"
    rtol = LOSS_RTOL[args.dtype]
    n = min(len(mg_res["losses"]), len(th_res["losses"]), 10)
    loss_rows, worst = [], 0.0
    for i in range(n):
        a, b = mg_res["losses"][i], th_res["losses"][i]
        rel = abs(a - b) / abs(b)
        worst = max(worst, rel)
        loss_rows.append([i + 1, f"{a:.6f}", f"{b:.6f}", f"{rel:.1e}"])
    ok = worst <= rtol
    cfg = job["cfg"]
    lines = [f"# GPT-2 training step: minigrad vs PyTorch eager ({args.backend}, {args.dtype})", "",
             f"`{shlex.join(['python', '-m', 'bench.train', *args.argv])}`", "",
             f"Model: {cfg['n_layer']} layers, {cfg['n_head']} heads, width {cfg['n_embd']}, vocabulary "
             f"{cfg['vocab_size']}, {n_params:,} parameters, dropout 0, {PRECISION[args.dtype]}. Batch {B} x {T} "
             f"tokens ({B * T} per step). AdamW lr {job['lr']:g}, weight decay {job['weight_decay']:g} on matrices "
             "only (PyTorch: fused=True). Same initial weights and batches on both sides, each framework "
             f"in its own process. {job['steps']} steps: the first is a warm-up, the time is the median "
             f"of the other {job['steps'] - 1}; peak RSS is the process's maximum resident memory "
             "(resource.getrusage), model creation included.", "",
             markdown_table(["", "minigrad", "PyTorch", "minigrad / PyTorch"],
                            _table_rows(args, job, n_params, mg_res, th_res, info)), "",
             *([f"Times per step on the GPU: CUDA events (cupy.cuda.Event, torch.cuda.Event) around forward, "
                f"backward and optimizer; minigrad's fused kernels "
                f"{'on' if mg_res.get('fused', True) else 'off (MINIGRAD_FUSED=0)'}.", ""] if gpu else []),
             f"PyTorch: {th_res.get('threads', '?')} threads. Ratio below 1 in time (above 1 in tokens/s): "
             "minigrad is faster. PyTorch's peak RSS includes its own libraries (a few hundred MiB).", ""]
    if len(mg_res["repeat_times"]) > 1:
        reps = [[i + 1, f"{a:.3f}", f"{b:.3f}", f"{a / b:.2f}x"]
                for i, (a, b) in enumerate(zip(mg_res["repeat_times"], th_res["repeat_times"]))]
        ratios = [a / b for a, b in zip(mg_res["repeat_times"], th_res["repeat_times"])]
        lines += [f"{len(reps)} repeats, the two frameworks interleaved (odd repeats minigrad first, even "
                  f"ones PyTorch first); the table above gives the median of the repeats' medians. "
                  f"Median of the per-repeat ratios: {_median(ratios):.2f}x.", "",
                  markdown_table(["repeat", "minigrad s/step", "PyTorch s/step", "ratio"], reps), ""]
    note = load_note(max(mg_res["load"] or 0.0, th_res["load"] or 0.0))
    if note:
        lines += [note, ""]
    lines += [f"## Losses of the first {n} steps", "",
              markdown_table(["step", "minigrad", "PyTorch", "relative difference"], loss_rows), "",
              f"Loss agreement (every step within {rtol:g} relative, for {args.dtype}): "
              f"**{'PASS' if ok else 'FAIL'}** (worst {worst:.1e}).", ""]
    if "breakdown" in mg_res:
        lines += _render_profile(mg_res, th_res, gpu)
    if gpu:
        lines += _render_kernels(mg_res, th_res)
    lines += ["## Machine", "", machine_info_markdown(info), ""]
    return "\n".join(lines), ok


def _render_profile(mg_res: dict, th_res: dict, gpu: bool) -> list[str]:
    mg_parts = breakdown.from_json(mg_res["breakdown"])
    th_parts = breakdown.from_json(th_res.get("breakdown", []))
    mg_cat, th_cat = breakdown.by_category(mg_parts), breakdown.by_category(th_parts)
    total_mg, total_th = sum(mg_cat.values()), sum(th_cat.values())
    cat_rows = [[c, fmt_ms(mg_cat.get(c, 0.0)), f"{100 * mg_cat.get(c, 0.0) / total_mg:.0f}%",
                 fmt_ms(th_cat[c]) if c in th_cat else "-"]
                for c in sorted(set(mg_cat) | set(th_cat), key=lambda c: -mg_cat.get(c, 0.0))]
    cat_rows.append(["total", fmt_ms(total_mg), "100%", fmt_ms(total_th) if th_cat else "-"])
    keys = sorted(set(mg_parts) | set(th_parts),
                  key=lambda k: -(mg_parts.get(k, 0.0) - th_parts.get(k, 0.0)))
    op_rows = [[op, phase, fmt_ms(mg_parts.get((op, phase), 0.0)),
                fmt_ms(th_parts[(op, phase)]) if (op, phase) in th_parts else "-",
                f"{1e3 * (mg_parts.get((op, phase), 0.0) - th_parts.get((op, phase), 0.0)):+.1f}"]
               for op, phase in keys]
    how = ("GPU time. minigrad: two CUDA events around each Function's forward and backward (no host "
           "sync between them), the phases between events too; the rest of a phase is GPU time outside "
           "the ops (AdamW is its own row; gaps where the GPU waited for Python count where they fall). "
           "PyTorch: torch.profiler's device time of the kernels under each op at its outermost level."
           if gpu else
           "minigrad: each Function's forward and backward timed by a wrapper (matmul = Linear, which "
           "is BLAS but for the bias add and sum); the rest of the forward is Python around the ops "
           "(modules, graph recording), the rest of the backward the autograd engine (topological "
           "order, gradient sums and copies). PyTorch: torch.profiler events at their outermost "
           "level, same grouping; profiling slows both a little.")
    out = [f"## Where the time goes (ms per step, averaged over {breakdown.PROFILE_STEPS} extra profiled steps)", "",
           how, "", markdown_table(["category", "minigrad ms", "share", "PyTorch ms"], cat_rows), "",
           "By op and phase, the ops where minigrad spends the most more than PyTorch first:", "",
           markdown_table(["op", "phase", "minigrad ms", "PyTorch ms", "minigrad - PyTorch ms"], op_rows, "llrrr"), ""]
    if mg_res.get("cprofile"):
        prof_rows = [[name, calls, f"{own:.1f}", f"{cum:.1f}"] for name, calls, own, cum in mg_res["cprofile"]]
        out += ["minigrad under cProfile, top functions by own time (operators such as `@` and `+=` run "
                "inside the function that uses them, so an op's BLAS time is its own time):", "",
                markdown_table(["function", "calls/step", "own ms/step", "cumulative ms/step"], prof_rows), ""]
    return out


def _render_kernels(mg_res: dict, th_res: dict) -> list[str]:
    out = ["## GPU kernels (torch.profiler's CUPTI records, ms per step)", ""]
    for who, res in (("minigrad (CuPy's kernels, cuBLAS and ours)", mg_res), ("PyTorch", th_res)):
        rows = res.get("kernels")
        if rows:
            out += [f"{who}:", "", markdown_table(["kernel", "launches/step", "ms/step"],
                                                  [[n, f"{c:g}", f"{ms:.3f}"] for n, c, ms in rows], "lrr"), ""]
        else:
            out += [f"{who}: {res.get('kernels_error', 'no kernel records')}.", ""]
    return out

