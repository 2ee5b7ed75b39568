"""Throughput and memory of `tasks.prepare` on a synthetic corpus: `python -m bench.prepare`.

In one run, on the same generated corpus (documents separated by <|endoftext|> in one .txt):
- a plain single-threaded tiktoken loop (read the file, split it, encode_ordinary each document,
  keep the ids as uint16): the baseline;
- tiktoken's threaded `encode_ordinary_batch` with as many threads as workers (the alternative
  to worker processes that tasks.prepare could have used);
- `tasks.prepare` with 1 worker and with all workers, in subprocesses;
and the peak RSS of `tasks.prepare` (its main process and its largest worker, from getrusage)
on a small and a large corpus, to show that memory does not grow with the corpus.

    python -m bench.prepare --small-tokens 20000000 --large-tokens 200000000 --out bench/results/prepare.md
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .common import (RESULTS_DIR, BenchError, ForeignLoad, load_note, machine_info,
                     machine_info_markdown, main_guard, markdown_table, write_atomic)

SEPARATOR = "<|endoftext|>"


def _vocabulary(rng: np.random.Generator, n: int = 4000) -> np.ndarray:
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    freq = 1.0 / np.arange(1, 27) ** 0.9
    lengths = rng.integers(1, 10, n)
    words = ["".join(rng.choice(letters, k, p=freq / freq.sum())) for k in lengths]
    return np.array(words, dtype=object)


def write_corpus(path: Path, tokens: int, seed: int = 0) -> int:
    """A .txt of English-like documents (Zipf word frequencies, sentences, newlines) holding about
    `tokens` GPT-2 tokens; returns the number of documents. Written in blocks: memory stays small."""
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    rng = np.random.default_rng(seed)
    vocab = _vocabulary(rng)
    p = 1.0 / (np.arange(len(vocab)) + 2.7)
    p /= p.sum()

    def block(n_words: int) -> tuple[str, int]:
        words = vocab[rng.choice(len(vocab), n_words, p=p)]
        seps = np.full(n_words, " ", dtype=object)
        u = rng.random(n_words)
        seps[u < 0.08] = ". "
        seps[u < 0.02] = ".\n"
        seps[u < 0.004] = "." + SEPARATOR  # documents of ~250 words on average
        out = np.empty(2 * n_words, dtype=object)
        out[0::2], out[1::2] = words, seps
        return "".join(out), int((u < 0.004).sum())

    sample, _ = block(20_000)
    per_word = len(enc.encode_ordinary(sample.replace(SEPARATOR, " "))) / 20_000
    words_left = int(tokens / per_word)
    docs = 1
    with open(path, "w", encoding="utf-8") as f:
        while words_left > 0:
            n = min(words_left, 1_000_000)
            text, d = block(n)
            f.write(text)
            docs += d
            words_left -= n
    return docs


def baseline_loop(path: Path) -> tuple[int, float]:
    """(tokens, seconds): the plain single-threaded loop a user writes first."""
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    t0, cpu0 = time.perf_counter(), time.process_time()
    n = 0
    for doc in path.read_text(encoding="utf-8").split(SEPARATOR):
        if doc.strip():
            ids = enc.encode_ordinary(doc)
            ids.insert(0, 50256)
            n += len(np.array(ids, dtype=np.uint16))
    return n, time.perf_counter() - t0, time.process_time() - cpu0


def threaded_batch(path: Path, threads: int) -> tuple[int, float]:
    """(tokens, seconds) with tiktoken's own threaded batch encoder, 1000 documents a call."""
    import tiktoken

    enc = tiktoken.get_encoding("gpt2")
    t0, cpu0 = time.perf_counter(), time.process_time()
    docs = [d for d in path.read_text(encoding="utf-8").split(SEPARATOR) if d.strip()]
    n = 0
    for i in range(0, len(docs), 1000):
        for ids in enc.encode_ordinary_batch(docs[i:i + 1000], num_threads=threads):
            n += len(np.array(ids, dtype=np.uint16)) + 1
    return n, time.perf_counter() - t0, time.process_time() - cpu0


def run_prepare(corpus: Path, out: Path, workers: int, shard_tokens: int) -> dict:
    """tasks.prepare in a subprocess of its own: wall time, tokens and peak RSS (main, workers)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "bench.prepare", "--child", "--input", str(corpus), "--out", str(out),
           "--workers", str(workers), "--shard-tokens", str(shard_tokens), "--no-progress"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise BenchError(f"tasks.prepare failed: {r.stderr.strip()[-2000:]}")
    rss = json.loads(r.stdout.strip().splitlines()[-1])
    index = json.loads((out / "index.json").read_text())
    # seconds: the prepare call itself, without starting Python and importing (~1 s), as the plain
    # loop's time does not count them either
    return {"workers": workers, "seconds": rss.pop("seconds_in_prepare"), "wall": wall,
            "tokens": index["tokens"], "documents": index["documents"], **rss}


def _child(argv: list[str]) -> int:
    """Run tasks.prepare here, then print this process's peak RSS and its largest worker's (KiB)."""
    from tasks.data.encoding import gpt2_encoding
    from tasks.prepare import main as prepare_main

    gpt2_encoding()  # tiktoken's GPT-2 tables, loaded before the clock starts as for the plain loop
    t0, cpu0 = time.perf_counter(), time.process_time()
    code = prepare_main(argv)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"seconds_in_prepare": time.perf_counter() - t0,
                      "cpu_main": time.process_time() - cpu0,
                      "cpu_workers": workers.ru_utime + workers.ru_stime,
                      "rss_main_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_worker_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
    return code


@main_guard
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    p = argparse.ArgumentParser(prog="python -m bench.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small-tokens", type=int, default=20_000_000, help="default: %(default)s")
    p.add_argument("--large-tokens", type=int, default=200_000_000,
                   help="0 = skip the memory comparison (default: %(default)s)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="'all workers' (default: %(default)s)")
    p.add_argument("--shard-tokens", type=int, default=10_000_000, help="default: %(default)s")
    p.add_argument("--tmp", default=None, help="folder for the corpora and shards (default: a temporary one)")
    p.add_argument("--out", default=str(RESULTS_DIR / "prepare.md"), help="default: %(default)s")
    args = p.parse_args(argv)
    if args.small_tokens < 2 * args.shard_tokens:
        raise BenchError("--small-tokens must be at least twice --shard-tokens (a val and a train shard)")

    info = machine_info(with_torch=False)
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_", dir=args.tmp))
    try:
        load = ForeignLoad()
        small = tmp / "small.txt"
        t0 = time.perf_counter()
        write_corpus(small, args.small_tokens)
        print(f"small corpus: {small.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t0:.0f} s",
              flush=True)
        rows = []
        n, s, cpu = baseline_loop(small)
        base = n / s
        rows.append(["plain tiktoken loop, 1 thread", f"{n:,}", f"{s:.1f}", f"{base / 1e6:.2f}", "1.00",
                     f"{cpu:.1f}", "-", "-"])
        print(rows[-1], flush=True)
        n, s, cpu = threaded_batch(small, args.workers)
        rows.append([f"tiktoken encode_ordinary_batch, {args.workers} threads", f"{n:,}", f"{s:.1f}",
                     f"{n / s / 1e6:.2f}", f"{n / s / base:.2f}", f"{cpu:.1f}", "-", "-"])
        print(rows[-1], flush=True)
        runs = {}
        for w in sorted({1, args.workers}):
            r = runs[w] = run_prepare(small, tmp / f"small_w{w}", w, args.shard_tokens)
            rows.append([f"tasks.prepare --workers {w}", f"{r['tokens']:,}", f"{r['seconds']:.1f}",
                         f"{r['tokens'] / r['seconds'] / 1e6:.2f}",
                         f"{r['tokens'] / r['seconds'] / base:.2f}",
                         f"{r['cpu_main']:.1f} + {r['cpu_workers']:.1f}",
                         f"{r['rss_main_mib']:.0f} / {r['rss_worker_mib']:.0f}", f"{r['wall']:.1f}"])
            print(rows[-1], flush=True)
        same = all((tmp / "small_w1" / f.name).read_bytes() == f.read_bytes()
                   for f in (tmp / f"small_w{args.workers}").glob("*.bin"))
        share_small = load.share()

        mem_rows, share_large = [], None
        if args.large_tokens:
            load = ForeignLoad()
            shutil.rmtree(tmp / "small_w1", ignore_errors=True)
            large = tmp / "large.txt"
            write_corpus(large, args.large_tokens, seed=1)
            big = run_prepare(large, tmp / "large", args.workers, args.shard_tokens)
            share_large = load.share()
            for label, r in (("small", runs[args.workers]), ("large", big)):
                mem_rows.append([label, f"{r['tokens']:,}", f"{r['seconds']:.1f}",
                                 f"{r['tokens'] / r['seconds'] / 1e6:.2f}", f"{r['rss_main_mib']:.0f}",
                                 f"{r['rss_worker_mib']:.0f}"])
            print(mem_rows[-1], flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = ["# tasks.prepare: tokenization throughput and memory", "",
             "`python -m bench.prepare " + " ".join(argv) + "`: a synthetic English-like corpus (Zipf word "
             "frequencies, documents of ~250 words separated by `<|endoftext|>`, one .txt file), "
             "generated by the bench into a temporary folder. Shards of "
             f"{args.shard_tokens:,} tokens.", "", machine_info_markdown(info), "",
             "## Throughput (same corpus, same run)", "",
             markdown_table(["tokenizer", "tokens", "seconds", "M tokens/s", "vs plain loop",
                             "CPU s (main + workers)", "peak RSS MiB (main / worker)",
                             "wall s with start-up"], rows), "",
             "Seconds: the work alone, in the same terms for every row (the plain loop and the "
             "threads have tiktoken loaded before the clock starts; tasks.prepare's time is its "
             "main() call, pool start-up included; Python's start-up, imports and tiktoken's "
             "loading are not, but are in the last column). This machine is shared with other jobs (see the load "
             "average above and the warning below, if any): on a busy machine the workers "
             "compete for the same two cores and the speed-up shrinks. The CPU seconds depend much less on "
             "the load (contention still inflates them somewhat): they show how much work each way does "
             "in all, and how it is shared out.", "",
             f"Shards byte-identical for --workers 1 and {args.workers}: {'yes' if same else 'NO'}.", ""]
    note = load_note(share_small)
    if note:
        lines += [note, ""]
    if mem_rows:
        lines += ["## Peak memory as the corpus grows (--workers %d)" % args.workers, "",
                  markdown_table(["corpus", "tokens", "seconds", "M tokens/s", "peak RSS main MiB",
                                  "peak RSS worker MiB"], mem_rows), ""]
        note = load_note(share_large)
        if note:
            lines += [note, ""]
    path = write_atomic(args.out, "\n".join(lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
