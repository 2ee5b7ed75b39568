"""Kernel launches and host syncs of one GPT-2 training step on CuPy, counted without a GPU.

    python -m bench.launches [--size 124M] [--batch-size 16] [--context 1024]
                             [--count-batch 1] [--count-context 64] [--dtype D ...]
                             [--dropout P ...] [--out FILE]

One optimizer step of tasks.training's Trainer (forward, backward, float16's unscaling, AdamW, and
the loss brought to the host as at every log step) runs on the stand-in device
(minigrad/standin.py), which tallies what CuPy would launch for each operation and every read of
device data by the host (minigrad/launchcount.py has the model). A first step runs untimed and
uncounted (one-time work: the float16 weight copy, the optimizer's tables). Each precision is
counted without dropout and with --dropout's values (default 0 and 0.1, pretraining's default):
the fused kernels draw their masks inside, so dropout should add nothing. tf32 is float32 with
TF32 switched on (backend.set_tf32 on the stand-in): cuBLAS's math mode, and the attention on the
tensor-core kernels, cast in and out.

The count depends on the sequence of operations, not on the arrays' sizes, so the step is taken
at --count-batch x --count-context tokens (the same model: its layers, widths and vocabulary) and
stands for --batch-size x --context; a second, larger count checks that the two agree.
Writes bench/results/launches.md; exit status 1 when the two counts differ.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from .common import RESULTS_DIR, BenchError, config_dict, main_guard, markdown_table, write_atomic

DTYPES = ("float32", "tf32", "float16")
TOP = 12  # operations listed per precision


class _Pairs:
    """Random next-token pairs (x, y) of `T` tokens: what a text loader serves."""

    def __init__(self, n: int, T: int, vocab: int):
        rng = np.random.default_rng(0)
        ids = rng.integers(0, vocab, (n, T + 1))
        self.rows = [(r[:-1], r[1:]) for r in ids]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def count_step(cfg: dict, dtype: str, B: int, T: int, fused: bool = True, dropout: float = 0.0):
    """The LaunchCount of one Trainer step (after one warm-up step) on the stand-in."""
    import minigrad as mg
    from gpt2 import GPT2, GPT2Config
    from minigrad import launchcount
    from tasks.data.loaders import BatchLoader
    from tasks.training.config import TrainConfig
    from tasks.training.evaluation import lm_loss
    from tasks.training.trainer import Trainer

    old = os.environ.get("MINIGRAD_FUSED")
    os.environ["MINIGRAD_FUSED"] = "1" if fused else "0"
    mg.backend.set_tf32(dtype == "tf32", "standin")
    try:
        mg.manual_seed(0)
        model = GPT2(GPT2Config(**{**cfg, "dropout": dropout})).to("standin")
        loader = BatchLoader(_Pairs(4 * B, T, cfg["vocab_size"]), B, shuffle=False)
        config = TrainConfig(progress=False, max_steps=100, dtype="float32" if dtype == "tf32" else dtype)
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(model, loader, lm_loss, lambda m: {}, run_dir, config)
            with np.errstate(over="ignore", invalid="ignore"):
                trainer._update(fetch_loss=True)
                with launchcount.counting() as count:
                    trainer._update(fetch_loss=True)
        return count
    finally:
        mg.backend.set_tf32(False, "standin")
        if old is None:
            os.environ.pop("MINIGRAD_FUSED", None)
        else:
            os.environ["MINIGRAD_FUSED"] = old


def render(args, cfg: dict, counts: dict, check: dict) -> str:
    """counts, check: {(dtype, dropout): LaunchCount}, check at twice the batch and sequence length."""
    rows = [[dt, f"{p:g}", c.launches, c.syncs, c.h2d, c.by_kind["kernel"], c.by_kind["blas"],
             c.by_kind["elementwise"], c.by_kind["reduction"], c.by_kind["memset"] + c.by_kind["sort"]]
            for (dt, p), c in counts.items()]
    agree = all(check[key].by_kind == counts[key].by_kind for key in check)
    least = {dt: min(q for d, q in counts if d == dt) for dt, _ in counts}  # each precision's first row
    same = all(c.by_kind == counts[dt, least[dt]].by_kind for (dt, _), c in counts.items())
    lines = [f"# Launches and host syncs per training step ({args.size}, B={args.batch_size}, T={args.context})", "",
             f"`{shlex.join(['python', '-m', 'bench.launches', *args.argv])}`", "",
             f"Model: {cfg['n_layer']} layers, {cfg['n_head']} heads, width {cfg['n_embd']}, vocabulary "
             f"{cfg['vocab_size']}. One step of tasks.training's Trainer (forward, backward, AdamW, "
             "the loss read by the host as at every log step; float16: the loss scaled, the gradients "
             "unscaled and checked) on the stand-in device, which counts what CuPy would launch "
             "(minigrad/launchcount.py). tf32 is float32 with TF32 switched on: cuBLAS's TensorFloat-32 "
             "math mode, and the attention on the float16 tensor-core kernels (q, k, v cast in, the "
             "output and the gradient cast out). Dropout (embeddings, attention, residuals) is drawn "
             "inside the fused kernels: "
             f"{'the same launches as without' if same else 'launches DIFFERENT from those without'}.", "",
             markdown_table(["precision", "dropout", "launches", "host syncs", "copies in (H2D)", "our kernels",
                             "cuBLAS", "elementwise", "reductions", "memset + sort"], rows), "",
             f"Counted at B={args.count_batch}, T={args.count_context}: launches do not depend on the "
             f"batch or sequence length (every kernel loops over any size), which a second count at "
             f"B={2 * args.count_batch}, T={2 * args.count_context} confirms: "
             f"**{'identical' if agree else 'DIFFERENT'}**.", ""]
    for (dt, p), c in counts.items():
        if p != least[dt]:
            continue  # the same list with dropout (the table above shows the totals agree)
        top = [[name, n] for name, n in c.by_name.most_common(TOP)]
        lines += [f"## {dt}: the most frequent launches", "", markdown_table(["operation", "launches"], top), ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.launches", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="124M", help="model size (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="the batch the counts stand for (default: %(default)s)")
    p.add_argument("--context", type=int, default=1024, help="the sequence length they stand for (default: %(default)s)")
    p.add_argument("--count-batch", type=int, default=1, help="the batch counted (default: %(default)s)")
    p.add_argument("--count-context", type=int, default=64, help="the sequence length counted (default: %(default)s)")
    p.add_argument("--dtype", action="append", choices=DTYPES, help="precisions to count (default: all)")
    p.add_argument("--dropout", action="append", type=float,
                   help="dropout probabilities to count each precision with (default: 0 and 0.1)")
    p.add_argument("--out", help="markdown file (default: bench/results/launches.md)")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_dict(args.size)
    if min(args.count_batch, args.count_context, args.batch_size, args.context) < 1:
        raise BenchError("batch sizes and contexts must be positive")
    if 2 * args.count_context > cfg["n_ctx"]:
        raise BenchError(f"--count-context {args.count_context}: twice it must fit the context of {cfg['n_ctx']}")
    dropouts = args.dropout or [0.0, 0.1]
    if not all(0.0 <= p < 1.0 for p in dropouts):
        raise BenchError("--dropout values must be in [0, 1)")
    counts, check = {}, {}
    for dt in args.dtype or DTYPES:
        for p in dropouts:
            print(f"counting {dt}, dropout {p:g} ...", file=sys.stderr)
            counts[dt, p] = count_step(cfg, dt, args.count_batch, args.count_context, dropout=p)
            check[dt, p] = count_step(cfg, dt, 2 * args.count_batch, 2 * args.count_context, dropout=p)
    text = render(args, cfg, counts, check)
    out = Path(args.out) if args.out else RESULTS_DIR / "launches.md"
    write_atomic(out, text)
    print(text)
    print(f"written to {out}", file=sys.stderr)
    return 0 if all(check[key].by_kind == counts[key].by_kind for key in check) else 1


if __name__ == "__main__":
    sys.exit(main())
