"""Generate text with GPT-2: `python -m tasks.generate --prompt "Every effort moves you"`.

The text streams to stdout as the tokens come. --init (or its older name --weights) takes an
official size (124M, 355M, 774M, 1558M), a weights file or folder, or a run folder of
tasks.pretrain. --attention-map draws one layer's head over the prompt and the generated tokens.
--temperature-plot draws, instead of generating, how temperature reshapes the distribution of
the next token: the probabilities softmax(logits / T) of the most likely tokens at each T.

    python -m tasks.generate --init 124M --max-new-tokens 50 --temperature 0.8 --top-k 40 \\
        --top-p 0.95 --seed 123 --attention-map attn.png --layer 5 --head 1
    python -m tasks.generate --init 124M --prompt "Every effort moves you" \\
        --temperature-plot temperature.png --temperatures 0.1,1,5 --top 10
"""
from __future__ import annotations

from .common.signals import quiet_start

quiet_start(__name__)  # first: Ctrl-C or SIGTERM during the imports below is one line and 130 / 143

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

from .common.args import add_backend_arg, add_init_arg, parse
from .common.device import select_device
from .common.errors import TaskError, UsageError
from .common.guard import main_guard
from .common.signals import pause_point
from .common.memory import check_inference_memory
from .common.paths import check_output_file
from .data.manifest import ensure_inputs
from .runs.models import config_of, load_language_model, resolve_init

DEFAULT_PROMPT = "Every effort moves you"
# what the pictures' token labels mean (token_labels), said on the pictures themselves
LABEL_NOTE = ("Token labels: \u00b7 is a space (most GPT-2 tokens start with one: '\u00b7the' is ' the'), "
              "\\n a newline, \\xNN a byte of a character split across tokens.")
TEMPERATURE_NOTE = ("Each panel: softmax(logits / T) of the same most likely tokens, on its own scale; "
                    "a higher T flattens the distribution.")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tasks.generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_init_arg(p, default="124M", old_names=("--weights",),
                 help="an official size (124M, 355M, 774M, 1558M), a weights file or folder, "
                      "or a run/checkpoint folder of tasks.pretrain")
    p.add_argument("--prompt", default=DEFAULT_PROMPT,
                   help="text to continue; empty starts from <|endoftext|> (default: %(default)r)")
    p.add_argument("--max-new-tokens", type=int, default=50, help="default: %(default)s")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = greedy; higher = more random (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens only")
    p.add_argument("--top-p", type=float, default=None,
                   help="sample from the smallest set of tokens whose probability reaches p")
    p.add_argument("--seed", type=int, default=123, help="sampling seed (default: %(default)s)")
    add_backend_arg(p)
    p.add_argument("--no-cache", action="store_true",
                   help="recompute the whole sequence every step instead of using the KV cache")
    p.add_argument("--ignore-eos", action="store_true", help="keep going past <|endoftext|>")
    p.add_argument("--attention-map", metavar="OUT.png", default=None,
                   help="also save a heatmap of one layer/head's attention over the final text")
    p.add_argument("--layer", type=int, default=0, help="layer of --attention-map, from 0 (default: %(default)s)")
    p.add_argument("--head", type=int, default=0, help="head of --attention-map, from 0 (default: %(default)s)")
    p.add_argument("--temperature-plot", metavar="OUT.png", default=None,
                   help="instead of generating, draw the next token's probabilities at each of "
                        "--temperatures for the --top most likely tokens")
    p.add_argument("--temperatures", default="0.1,1,5",
                   help="comma-separated temperatures for --temperature-plot (default: %(default)s)")
    p.add_argument("--top", type=int, default=10,
                   help="tokens drawn by --temperature-plot (default: %(default)s)")
    args = parse(p, argv)
    _check(p, args)
    return args


def _check(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The values argparse cannot check by itself, each refused as argparse refuses (exit 2)."""
    if args.max_new_tokens < 0:
        p.error("--max-new-tokens must be >= 0")
    if not args.temperature >= 0.0:
        p.error("--temperature must be >= 0")
    if args.top_k is not None and args.top_k < 1:
        p.error("--top-k must be >= 1")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        p.error("--top-p must be in (0, 1]")
    if args.attention_map is not None:
        fmt = Path(args.attention_map).suffix.lstrip(".").lower()
        if fmt not in ("png", "pdf", "svg", "jpg", "jpeg"):
            p.error(f"--attention-map {args.attention_map!r}: give a .png, .pdf, .svg or .jpg file name")
    if args.temperature_plot is not None and Path(args.temperature_plot).suffix.lower() != ".png":
        p.error(f"--temperature-plot {args.temperature_plot!r}: give a .png file name")
    try:
        args.temperatures = [float(t) for t in args.temperatures.split(",")]
    except ValueError:
        p.error(f"--temperatures {args.temperatures!r}: give numbers separated by commas, e.g. 0.1,1,5")
    if not all(t > 0 for t in args.temperatures):  # also refuses nan
        p.error("--temperatures must all be > 0 (temperature 0 is greedy: one token gets everything)")
    if args.top < 1:
        p.error("--top must be >= 1")


# ---------------------------------------------------------------- temperature
def next_token_logits(model, ids: list[int]) -> np.ndarray:
    """The model's logits for the token after `ids` (its last n_ctx tokens), shape (vocab,)."""
    import minigrad as mg
    ids = ids[-model.config.n_ctx:]
    with mg.no_grad():
        return model(np.asarray([ids])).numpy()[0, -1]                  # (vocab,)


def temperature_probabilities(logits: np.ndarray, temperatures: list[float], top: int
                              ) -> tuple[np.ndarray, np.ndarray]:
    """(ids of the `top` most likely tokens, most likely first; their probabilities
    softmax(logits / T) at each T, shape (len(temperatures), top)).

    Dividing by T > 0 keeps the order of the logits, so the top tokens are the same at every T;
    each softmax is over the whole vocabulary, so a row sums to less than 1 when other tokens
    keep some probability.
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)
    ids = np.argsort(-logits, kind="stable")[:top]
    probs = np.empty((len(temperatures), len(ids)))
    for i, t in enumerate(temperatures):
        z = logits / t
        z = np.exp(z - z.max())
        probs[i] = z[ids] / z.sum()
    return ids, probs


def save_temperature_plot(model, tok, prompt_ids: list[int], temperatures: list[float], top: int,
                          path: str | Path, title: str) -> tuple[np.ndarray, np.ndarray]:
    """Draw the next token's top probabilities at each temperature, one panel per T on its own
    scale (so that T = 5's near-uniform bars show); returns what temperature_probabilities gave."""
    from .common.plots import plot_bar_panels

    ids, probs = temperature_probabilities(next_token_logits(model, prompt_ids), temperatures, top)
    labels = [repr(label) for label in token_labels(tok, ids)]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing")  # emoji, CJK tokens
        plot_bar_panels(labels, {f"T = {t:g}": row for t, row in zip(temperatures, probs)},
                        path, "probability", title, note=TEMPERATURE_NOTE + " " + LABEL_NOTE)
    return ids, probs


# ---------------------------------------------------------------- output
def token_labels(tokenizer, ids) -> list[str]:
    """One readable label per token: spaces as '·', newlines as '\\n', and a token holding only
    part of a character (an emoji is often split in two) as its bytes in hex."""
    labels = []
    for i in ids:
        try:
            text = tokenizer.decode_bytes([int(i)]).decode("utf-8")
        except UnicodeDecodeError:
            text = "".join(f"\\x{b:02x}" for b in tokenizer.decode_bytes([int(i)]))
        except AttributeError:  # a tokenizer without decode_bytes
            text = tokenizer.decode([int(i)])
        labels.append(text.replace(" ", "\u00b7").replace("\n", "\\n"))
    return labels


def save_attention_map(weights: np.ndarray, labels: list[str], path: str | Path, title: str) -> Path:
    """A (T, T) attention heatmap, queries down and keys across, written atomically."""
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    from files.atomic import atomic_write

    T = len(labels)
    side = min(4.0 + 0.22 * T, 40.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    im = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=float(max(weights.max(), 1e-9)))
    # with many tokens, label every n-th so the labels stay readable
    every = max(1, T // 120)
    ticks = list(range(0, T, every))
    fontsize = 8 if T <= 40 else 6
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=fontsize)
    ax.set_xlabel("key (attended to); \u00b7 is a space, \\n a newline")
    ax.set_ylabel("query")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Glyph .* missing")  # emoji, CJK tokens
            atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=fmt))
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------- main
def print_temperature_table(model, tok, prompt_ids: list[int], args: argparse.Namespace) -> None:
    """--temperature-plot: the picture, and the same numbers as a table on stdout."""
    ids, probs = save_temperature_plot(model, tok, prompt_ids, args.temperatures, args.top, args.temperature_plot,
                                       f"{args.init}: next token after {args.prompt!r}")
    labels = token_labels(tok, ids)
    width = max(len(repr(label)) for label in labels)
    print(f"{'token':<{width}}  " + "  ".join(f"{f'T={t:g}':>8}" for t in args.temperatures))
    for j, label in enumerate(labels):
        print(f"{repr(label):<{width}}  " + "  ".join(f"{p:8.4f}" for p in probs[:, j]))
    print(f"temperature plot: {args.temperature_plot}\n{LABEL_NOTE}", file=sys.stderr)


def write_continuation(model, tok, prompt_ids: list[int], args: argparse.Namespace) -> list[int]:
    """The prompt and its continuation on stdout as the tokens come; the new ids. Ctrl-C or
    SIGTERM stops it, with the text so far printed."""
    from gpt2.generate import stream
    from gpt2.tokenizer import TextStream

    out = sys.stdout
    out.write(args.prompt)
    out.flush()
    text = TextStream(tok)
    new_ids: list[int] = []
    try:
        for step in stream(model, np.asarray([prompt_ids]), args.max_new_tokens,
                           temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                           eos_id=None if args.ignore_eos else tok.eot_id,
                           use_cache=not args.no_cache, seed=args.seed):
            token = int(step[0])
            new_ids.append(token)
            if token == tok.eot_id and not args.ignore_eos:
                break
            out.write(text.push(token))
            out.flush()
            pause_point("token")
    except KeyboardInterrupt:  # what came so far stays printed; main_guard says 130 / 143
        out.write(text.flush() + "\n")
        out.flush()
        raise
    out.write(text.flush() + "\n")
    out.flush()
    return new_ids


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = select_device(args.backend)
    from gpt2.tokenizer import TokenizerUnavailableError, get_tokenizer

    init = resolve_init(args.init, random_ok=False)  # cheap: before the tokenizer and the weights
    for flag, path in (("--attention-map", args.attention_map), ("--temperature-plot", args.temperature_plot)):
        if path is not None:
            check_output_file(Path(path), flag)  # before the model runs: its folder is made when written
    ensure_inputs(init=args.init)  # the tokenizer and the official weights: every missing file at once
    try:
        tok = get_tokenizer()
    except TokenizerUnavailableError as e:
        raise TaskError(str(e)) from None
    check_inference_memory(config_of(init), 1, 1 << 30, device, "generating with this model",
                           cache_rows=0 if args.no_cache else 1, lower="the model's size")
    model = load_language_model(init, device, purpose=", so it cannot generate text")
    cfg = model.config
    if args.attention_map is not None and not (0 <= args.layer < cfg.n_layer and 0 <= args.head < cfg.n_head):
        raise UsageError(f"--layer {args.layer} --head {args.head}: this model has layers "
                         f"0..{cfg.n_layer - 1} and heads 0..{cfg.n_head - 1}")
    prompt_ids = tok.encode(args.prompt) if args.prompt else [tok.eot_id]
    if args.temperature_plot is not None:
        print_temperature_table(model, tok, prompt_ids, args)
        return 0
    new_ids = write_continuation(model, tok, prompt_ids, args)
    if args.attention_map is not None:
        ids = (prompt_ids + new_ids)[-cfg.n_ctx:]   # what the model can see at once
        maps = model.attention_maps(np.asarray([ids]))
        weights = maps[args.layer][0, args.head]
        title = f"{args.init}: layer {args.layer}, head {args.head}"
        path = save_attention_map(weights, token_labels(tok, ids), args.attention_map, title)
        print(f"attention map: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
