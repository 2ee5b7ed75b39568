"""Load test of tasks.serve on 127.0.0.1: latency, time to first token and tokens/s with 1 and
with N concurrent clients, which continuous batching should turn into more tokens per second.

    python -m bench.serve [--requests 200] [--clients 1,8] [--max-tokens 32]
                          [--n-layer 4 --n-head 8 --n-embd 256 | --init 124M]
                          [--out bench/results/serve.md]

The server runs in a subprocess (`python -m tasks.serve`, random weights by default, so no
download is needed: speed does not depend on the values) and the clients are threads of this
process, each sending streamed /v1/completions requests one after the other. Every request
samples (temperature 1, its own seed) up to --max-tokens tokens. A request that fails, or
returns anything but 200 and `data: [DONE]`, is counted as an error.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import (RESULTS_DIR, BenchError, ForeignLoad, load_note, machine_info,
                          machine_info_markdown, main_guard, markdown_table, write_atomic)
from tasks.common.args import add_backend_arg

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Every effort moves you"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200, help="requests per scenario (default: %(default)s)")
    p.add_argument("--clients", default="1,8", help="concurrent clients per scenario (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per request (default: %(default)s)")
    p.add_argument("--init", default="random", help="the server's --init (default: %(default)s)")
    p.add_argument("--n-layer", type=int, default=4, help="for --init random (default: %(default)s)")
    p.add_argument("--n-head", type=int, default=8, help="for --init random (default: %(default)s)")
    p.add_argument("--n-embd", type=int, default=256, help="for --init random (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch (default: %(default)s)")
    add_backend_arg(p)
    p.add_argument("--blas-threads", type=int, default=None,
                   help="OPENBLAS/OMP/MKL_NUM_THREADS for the server (default: the library's own)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: %(default)s)")
    p.add_argument("--out", default=str(RESULTS_DIR / "serve.md"), help="markdown file (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        args.clients = [int(c) for c in args.clients.split(",")]
    except ValueError:
        p.error(f"--clients must be numbers separated by commas, got {args.clients!r}")
    if args.requests < 1 or args.max_tokens < 1 or min(args.clients) < 1:
        p.error("--requests, --max-tokens and --clients must be >= 1")
    return args


# ---------------------------------------------------------------- the server
class Server:
    def __init__(self, args: argparse.Namespace):
        cmd = [sys.executable, "-m", "tasks.serve", "--port", "0", "--init", args.init,
               "--backend", args.backend, "--max-batch", str(args.max_batch),
               "--max-queue", str(max(args.clients) + 1)]
        if args.init == "random":
            cmd += ["--n-layer", str(args.n_layer), "--n-head", str(args.n_head), "--n-embd", str(args.n_embd)]
        self.log = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if args.blas_threads is not None:
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(args.blas_threads)
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True)
        ready, _, _ = select.select([self.proc.stdout], [], [], 600)
        line = self.proc.stdout.readline() if ready else ""
        match = re.search(r"http://([\d.]+):(\d+)", line)
        if not match:
            self.close()
            self.log.seek(0)
            raise BenchError(f"tasks.serve did not start: {self.log.read()[-1500:]}")
        self.host, self.port = match.group(1), int(match.group(2))
        self.banner = line.strip()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------- one request
def one_request(host: str, port: int, body: dict, timeout: float) -> dict:
    """Latency, time to first token and tokens of one streamed completion (or its error)."""
    t0 = time.perf_counter()
    first = None
    tokens, done = 0, False
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            return {"error": f"HTTP {r.status}: {r.read()[:200]!r}"}
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            event = json.loads(line[6:])
            if "error" in event:
                return {"error": event["error"]["message"]}
            if first is None and event["choices"] and event["choices"][0]["text"]:
                first = time.perf_counter() - t0
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    except (OSError, http.client.HTTPException, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        conn.close()
    if not done:
        return {"error": "the stream ended without [DONE]"}
    latency = time.perf_counter() - t0
    return {"latency": latency, "ttft": latency if first is None else first, "tokens": tokens}


def scenario(server: Server, clients: int, requests: int, max_tokens: int, timeout: float) -> dict:
    """`requests` requests shared by `clients` threads, each sending one after the other."""
    results: list[dict] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            body = {"prompt": PROMPT, "max_tokens": max_tokens, "temperature": 1.0, "seed": i,
                    "stream": True, "stream_options": {"include_usage": True}}
            r = one_request(server.host, server.port, body, timeout)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]

    def pct(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]

    lat = [r["latency"] for r in ok] or [float("nan")]
    ttft = [r["ttft"] for r in ok] or [float("nan")]
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": clients, "requests": len(results), "errors": len(errors), "first_error": errors[:1],
            "wall_s": wall, "tokens": tokens, "tok_s": tokens / wall,
            "lat_p50": pct(lat, 50), "lat_p95": pct(lat, 95), "ttft_p50": pct(ttft, 50), "ttft_p95": pct(ttft, 95)}


# ---------------------------------------------------------------- main
@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info(args.backend, with_torch=False)
    load = ForeignLoad()
    server = Server(args)
    try:
        print(server.banner, file=sys.stderr)
        one_request(server.host, server.port, {"prompt": PROMPT, "max_tokens": 4, "stream": True}, args.timeout)
        rows = []
        for c in args.clients:
            print(f"{c} client(s), {args.requests} requests ...", file=sys.stderr, flush=True)
            rows.append(scenario(server, c, args.requests, args.max_tokens, args.timeout))
            r = rows[-1]
            print(f"  {r['tok_s']:.1f} tok/s, p50 {r['lat_p50']:.3f} s, p95 {r['lat_p95']:.3f} s, "
                  f"errors {r['errors']} {r['first_error']}", file=sys.stderr)
    finally:
        server.close()
    share = load.share()   # the server has exited: its CPU time is ours, not foreign

    base = rows[0]["tok_s"]
    model = (f"random weights, {args.n_layer} layers, {args.n_head} heads, {args.n_embd} wide"
             if args.init == "random" else f"--init {args.init}")
    table = markdown_table(
        ["clients", "requests", "errors", "p50 latency (s)", "p95 latency (s)", "p50 TTFT (s)",
         "p95 TTFT (s)", "generated tok/s", "vs first row"],
        [[r["clients"], r["requests"], r["errors"], f"{r['lat_p50']:.3f}", f"{r['lat_p95']:.3f}",
          f"{r['ttft_p50']:.3f}", f"{r['ttft_p95']:.3f}", f"{r['tok_s']:.1f}", f"{r['tok_s'] / base:.2f}x"]
         for r in rows])
    note = load_note(share)
    text = "\n".join([
        "# tasks.serve under load (bench/serve.py)", "",
        f"`python -m bench.serve {' '.join(argv if argv is not None else sys.argv[1:])}`".replace("  ", " "), "",
        f"Model: {model}, backend {args.backend}; server `--max-batch {args.max_batch}`, BLAS threads: "
        f"{args.blas_threads or 'library default'}. Each request: "
        f"streamed /v1/completions, prompt {PROMPT!r}, up to {args.max_tokens} sampled tokens "
        "(temperature 1, its own seed). Clients are threads of the benchmark, each sending its "
        "requests one after the other; latency is the whole request, TTFT the time to the first "
        "streamed text, tok/s the generated tokens of all requests over the scenario's wall time.", "",
        table, "",
        "The machine is shared with other jobs (other helpers' tests and benchmarks ran on the same "
        "cores), so absolute figures vary from run to run; the ratio between rows measured in one "
        "run is the figure to read." + (f" {note}" if note else ""), "",
        machine_info_markdown(info), "",
    ])
    out = write_atomic(args.out, text)
    print(text)
    print(f"written to {out}", file=sys.stderr)
    errors = sum(r["errors"] for r in rows)
    if errors:
        print(f"error: {errors} request(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
