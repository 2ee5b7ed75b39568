"""Decoding speed: greedy tokens/s with and without the KV cache, minigrad against PyTorch.

    python -m bench.generate [--size 124M|tiny] [--prompt-tokens 10] [--new-tokens 100]
                             [--backend numpy|cupy] [--out bench/results/generate_numpy.md]

Random weights (a fixed seed), so no download is needed: speed does not depend on the values.
PyTorch runs Hugging Face's GPT2LMHeadModel with the very same weights, in eager mode on the CPU
with one thread per core, through the same greedy loop; it is skipped when torch or transformers
is missing. The tokens both produce are compared as a sanity check.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import minigrad as mg
from gpt2 import GPT2, GPT2Config
from gpt2.generate import generate
from files.atomic import atomic_write
from tasks.common.args import add_backend_arg


SIZES = {"tiny": dict(n_layer=2, n_head=4, n_embd=128)}   # plus gpt2.config.PRESETS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from gpt2.config import PRESETS

    p = argparse.ArgumentParser(prog="python -m bench.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="124M", choices=[*PRESETS, *SIZES], help="default: %(default)s")
    p.add_argument("--prompt-tokens", type=int, default=10, help="default: %(default)s")
    p.add_argument("--new-tokens", type=int, default=100, help="default: %(default)s")
    add_backend_arg(p)
    p.add_argument("--no-torch", action="store_true", help="time minigrad only")
    p.add_argument("--out", default=None,
                   help="markdown file (default: bench/results/generate_<backend>.md; other sizes "
                        "than 124M add _<size>)")
    args = p.parse_args(argv)
    if args.prompt_tokens < 1 or args.new_tokens < 1:
        p.error("--prompt-tokens and --new-tokens must be >= 1")
    return args


def make_config(size: str) -> GPT2Config:
    return GPT2Config(**SIZES[size]) if size in SIZES else GPT2Config.preset(size)


def time_minigrad(model: GPT2, prompt: np.ndarray, n: int, use_cache: bool) -> tuple[float, np.ndarray]:
    generate(model, prompt, 2, use_cache=use_cache)            # warm-up: first-touch allocations
    t0 = time.perf_counter()
    out = generate(model, prompt, n, use_cache=use_cache)
    return time.perf_counter() - t0, out[0, prompt.shape[1]:]


def torch_model(model: GPT2):
    """transformers' GPT2LMHeadModel holding a copy of `model`'s weights (same names, same layout)."""
    import torch
    import transformers

    c = model.config
    hf_config = transformers.GPT2Config(vocab_size=c.vocab_size, n_positions=c.n_ctx, n_embd=c.n_embd,
                                        n_layer=c.n_layer, n_head=c.n_head, layer_norm_epsilon=c.layer_norm_eps,
                                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    hf = transformers.GPT2LMHeadModel(hf_config)
    state = {f"transformer.{k}": torch.from_numpy(np.ascontiguousarray(mg.backend.to_device(v, "cpu")))
             for k, v in model.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    # lm_head.weight is tied to wte; older versions also list causal-mask buffers as missing
    missing = [k for k in missing if k != "lm_head.weight" and not k.endswith((".attn.bias", ".masked_bias"))]
    if missing or unexpected:
        raise RuntimeError(f"weights do not map onto GPT2LMHeadModel: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def time_torch(hf, prompt: np.ndarray, n: int, use_cache: bool) -> tuple[float, np.ndarray]:
    import inspect

    import torch

    # transformers renamed past_key_values to cache (argument and output) in its 5.x series
    key = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"

    def run(steps: int) -> torch.Tensor:
        seq = torch.from_numpy(prompt)
        past = None
        with torch.inference_mode():
            for _ in range(steps):
                if use_cache:
                    out = hf(input_ids=seq if past is None else seq[:, -1:], use_cache=True, **{key: past})
                    past = getattr(out, key)
                else:
                    out = hf(input_ids=seq, use_cache=False)
                seq = torch.cat([seq, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        return seq

    run(2)
    t0 = time.perf_counter()
    seq = run(n)
    return time.perf_counter() - t0, seq[0, prompt.shape[1]:].numpy()


def machine_info(device: str) -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
             f"- CPU: {cpu}, {os.cpu_count()} logical cores",
             f"- Python {platform.python_version()}, NumPy {np.__version__}"]
    if hasattr(os, "getloadavg"):
        # other work on the machine slows BLAS threads down a lot: say how busy it was
        lines.append("- load average at the end (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    try:
        import torch
        import transformers
        lines.append(f"- torch {torch.__version__} ({torch.get_num_threads()} threads), "
                     f"transformers {transformers.__version__}")
    except ImportError:
        lines.append("- torch: not installed")
    if device == "cuda":
        cp = mg.backend.cupy()
        props = cp.cuda.runtime.getDeviceProperties(0)
        lines.append(f"- GPU: {props['name'].decode()}, CuPy {cp.__version__}")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mg.backend.tune_allocator()  # as tasks.generate does (tasks.common.guard.main_guard)
    device = {"cupy": "cuda", "standin": "standin"}.get(args.backend, "cpu")
    try:
        mg.backend.xp_for(device)
    except mg.BackendError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mg.manual_seed(0)
    cfg = make_config(args.size)
    if args.prompt_tokens + args.new_tokens > cfg.n_ctx:
        print(f"error: prompt + new tokens must fit the context of {cfg.n_ctx}", file=sys.stderr)
        return 2
    model = GPT2(cfg).to(device).eval()
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(1, args.prompt_tokens))
    n = args.new_tokens
    print(f"GPT-2 {args.size} ({model.num_parameters():,} parameters), prompt {args.prompt_tokens} "
          f"tokens, {n} new tokens, greedy", file=sys.stderr)

    rows = []   # (implementation, device, cache, seconds, tokens)
    for cache in (True, False):
        secs, toks = time_minigrad(model, prompt, n, cache)
        rows.append(("minigrad", device, cache, secs, toks))
        print(f"  minigrad  cache={cache!s:5}  {n / secs:7.1f} tok/s", file=sys.stderr)

    torch_note = None
    if args.no_torch:
        torch_note = "PyTorch: skipped (--no-torch)."
    else:
        try:
            import torch
            import transformers  # noqa: F401
        except ImportError as e:
            torch_note = f"PyTorch: skipped ({e.name} is not installed)."
        else:
            torch.set_num_threads(os.cpu_count() or 1)
            hf = torch_model(model)
            for cache in (True, False):
                secs, toks = time_torch(hf, prompt, n, cache)
                rows.append(("PyTorch eager (transformers)", "cpu", cache, secs, toks))
                print(f"  PyTorch   cache={cache!s:5}  {n / secs:7.1f} tok/s", file=sys.stderr)

    report = render(args, cfg, model.num_parameters(), rows, torch_note, machine_info(device))
    print(report)
    out = Path(args.out or f"bench/results/generate_{args.backend}"
                           f"{'' if args.size == '124M' else '_' + args.size}.md")
    atomic_write(out, lambda tmp: Path(tmp).write_text(report))
    print(f"written to {out}", file=sys.stderr)
    return 0


def render(args, cfg: GPT2Config, n_params: int, rows, torch_note, info: list[str]) -> str:
    n = args.new_tokens
    ref = rows[0][4]   # minigrad with cache: the tokens the others are compared with
    speed = {(impl.split()[0], cache): n / secs for impl, _, cache, secs, _ in rows}
    lines = [f"# Greedy decoding speed: GPT-2 {args.size}",
             "",
             f"{n_params:,} parameters (random weights, seed 0), batch 1, prompt {args.prompt_tokens} "
             f"tokens, {n} new tokens; time includes the prompt's prefill.",
             "",
             "| implementation | device | KV cache | seconds | tokens/s | same tokens as minigrad+cache |",
             "| --- | --- | --- | ---: | ---: | --- |"]
    for impl, dev, cache, secs, toks in rows:
        same = int(np.argmin(np.append(toks == ref, False)))   # length of the agreeing prefix
        lines.append(f"| {impl} | {dev} | {'yes' if cache else 'no'} | {secs:.2f} | {n / secs:.1f} | "
                     f"{same}/{n} |")
    lines.append("")
    for cache in (True, False):
        if ("PyTorch", cache) in speed:
            ratio = speed[("minigrad", cache)] / speed[("PyTorch", cache)]
            lines.append(f"- minigrad / PyTorch tokens/s, {'with' if cache else 'without'} cache: {ratio:.2f}x")
    for impl in ("minigrad", "PyTorch"):
        if (impl, True) in speed:
            lines.append(f"- KV cache speed-up, {impl}: {speed[(impl, True)] / speed[(impl, False)]:.1f}x")
    if torch_note:
        lines.append(f"- {torch_note}")
    lines += ["", "Machine:", *info, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
