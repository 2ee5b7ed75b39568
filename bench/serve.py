"""Load test of tasks.serve on 127.0.0.1, as guidellm sweeps it: 1, 2, 4, 8 and 16 concurrent
streams, each level's generated tokens/s, time to first token, time between tokens and latency,
which continuous batching should turn into more tokens per second as streams are added.

    python -m bench.serve [--requests 200] [--clients 1,2,4,8,16] [--max-tokens 32]
                          [--n-layer 4 --n-head 8 --n-embd 256 | --init 124M]
                          [--out bench/results/serve.md]

The server runs in a subprocess (`python -m tasks.serve`, random weights by default, so no
download is needed: speed does not depend on the values) and the clients are threads of this
process, each sending streamed /v1/completions requests one after the other. Every request
samples (temperature 1, its own seed) exactly --max-tokens tokens (`ignore_eos`, as guidellm's
synthetic requests do). A request that fails, or returns anything but 200 and `data: [DONE]`, is
counted as an error. Each level also reports the machine's load average, the share of the CPUs
other processes took, and where the server's scheduler spent its time (its /health counters).
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

from bench.common import (RESULTS_DIR, BenchError, machine_info, machine_info_markdown, main_guard,
                          markdown_table, write_atomic)
from tasks.common.args import add_backend_arg

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Every effort moves you"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200, help="requests per level (default: %(default)s)")
    p.add_argument("--clients", default="1,2,4,8,16", help="concurrent streams, one level each (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per request (default: %(default)s)")
    p.add_argument("--init", default="random", help="the server's --init (default: %(default)s)")
    p.add_argument("--n-layer", type=int, default=4, help="for --init random (default: %(default)s)")
    p.add_argument("--n-head", type=int, default=8, help="for --init random (default: %(default)s)")
    p.add_argument("--n-embd", type=int, default=256, help="for --init random (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=16, help="the server's --max-batch (default: %(default)s)")
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
    """Latency, time to first token, mean time between tokens and tokens of one streamed
    completion (or its error)."""
    t0 = time.perf_counter()
    first = last = None
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
            if event["choices"] and event["choices"][0]["text"]:
                last = time.perf_counter() - t0
                first = last if first is None else first
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    except (OSError, http.client.HTTPException, ValueError) as e:
        return {"error": f"{type(e).__name__}: {e}"}
    finally:
        conn.close()
    if not done:
        return {"error": "the stream ended without [DONE]"}
    latency = time.perf_counter() - t0
    first = latency if first is None else first
    itl = (last - first) / (tokens - 1) if tokens > 1 and last is not None else float("nan")
    return {"latency": latency, "ttft": first, "itl": itl, "tokens": tokens}


def health(server: Server) -> dict:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def process_cpu(pid: int) -> float | None:
    """CPU seconds a process (all its threads) used so far, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def busy_cpu() -> float | None:
    """CPU seconds all processes used so far (/proc/stat: everything but idle and iowait)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def level(server: Server, clients: int, requests: int, max_tokens: int, timeout: float) -> dict:
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
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            r = one_request(server.host, server.port, body, timeout)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    before, load0 = health(server), os.getloadavg()[0]
    cpu0 = (busy_cpu(), process_cpu(server.proc.pid), time.process_time())
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu1 = (busy_cpu(), process_cpu(server.proc.pid), time.process_time())
    after, load1 = health(server), os.getloadavg()[0]
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]

    def pct(values: list[float], q: int) -> float:
        values = [v for v in values if v == v] or [float("nan")]
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]

    foreign = None
    if None not in cpu0 and None not in cpu1:
        ours = (cpu1[1] - cpu0[1]) + (cpu1[2] - cpu0[2])
        foreign = max(0.0, (cpu1[0] - cpu0[0]) - ours) / (wall * (os.cpu_count() or 1))
    steps = after["steps"] - before["steps"]
    spent = {k: after["seconds"][k] - before["seconds"][k] for k in after["seconds"]}
    tokens = sum(r["tokens"] for r in ok)
    return {"clients": clients, "requests": len(results), "errors": len(errors), "first_error": errors[:1],
            "wall_s": wall, "tokens": tokens, "tok_s": tokens / wall,
            "lat_p50": pct([r["latency"] for r in ok], 50), "lat_p95": pct([r["latency"] for r in ok], 95),
            "ttft_p50": pct([r["ttft"] for r in ok], 50), "ttft_p95": pct([r["ttft"] for r in ok], 95),
            "itl_p50": pct([r["itl"] for r in ok], 50), "load": (load0, load1), "foreign": foreign,
            "mean_batch": (after["tokens"] - before["tokens"]) / max(steps, 1),
            "forward_ms": 1e3 * spent["forward"] / max(steps, 1), "sample_ms": 1e3 * spent["sample"] / max(steps, 1),
            "busy": sum(spent.values()) / wall,
            "server_cpu_ms": None if None in (cpu0[1], cpu1[1]) else 1e3 * (cpu1[1] - cpu0[1]) / max(tokens, 1),
            "bench_cpu_ms": 1e3 * (cpu1[2] - cpu0[2]) / max(tokens, 1)}


# ---------------------------------------------------------------- main
CLIENT_SIDE = ["streams", "requests", "errors", "generated tok/s", "vs 1 stream", "p50 TTFT (s)", "p95 TTFT (s)",
               "p50 time between tokens (ms)", "p50 latency (s)", "p95 latency (s)"]
SERVER_SIDE = ["streams", "mean batch", "forward / step (ms)", "sampling / step (ms)", "scheduler busy",
               "server CPU / token (ms)", "benchmark CPU / token (ms)", "load avg (1 min)", "other processes' CPU"]


def client_row(r: dict, base: float) -> list:
    return [r["clients"], r["requests"], r["errors"], f"{r['tok_s']:.1f}", f"{r['tok_s'] / base:.2f}x",
            f"{r['ttft_p50']:.3f}", f"{r['ttft_p95']:.3f}", f"{1e3 * r['itl_p50']:.1f}", f"{r['lat_p50']:.3f}",
            f"{r['lat_p95']:.3f}"]


def server_row(r: dict) -> list:
    def maybe(x, fmt):
        return "?" if x is None else fmt.format(x)
    return [r["clients"], f"{r['mean_batch']:.1f}", f"{r['forward_ms']:.1f}", f"{r['sample_ms']:.1f}",
            f"{100 * r['busy']:.0f}%", maybe(r["server_cpu_ms"], "{:.2f}"), f"{r['bench_cpu_ms']:.2f}",
            f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}", maybe(r["foreign"] and 100 * r["foreign"], "{:.0f}%")]


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine_info(args.backend, with_torch=False)
    server = Server(args)
    try:
        print(server.banner, file=sys.stderr)
        one_request(server.host, server.port, {"prompt": PROMPT, "max_tokens": 4, "stream": True}, args.timeout)
        rows = []
        for c in args.clients:
            print(f"{c} stream(s), {args.requests} requests ...", file=sys.stderr, flush=True)
            rows.append(level(server, c, args.requests, args.max_tokens, args.timeout))
            r = rows[-1]
            print(f"  {r['tok_s']:.1f} tok/s, p50 TTFT {r['ttft_p50']:.3f} s, p50 latency {r['lat_p50']:.3f} s, "
                  f"load {r['load'][1]:.1f}, errors {r['errors']} {r['first_error']}", file=sys.stderr)
    finally:
        server.close()

    model = (f"random weights, {args.n_layer} layers, {args.n_head} heads, {args.n_embd} wide"
             if args.init == "random" else f"--init {args.init}")
    clients = markdown_table(CLIENT_SIDE, [client_row(r, rows[0]["tok_s"]) for r in rows])
    servers = markdown_table(SERVER_SIDE, [server_row(r) for r in rows])
    loads = [r["load"][0] for r in rows] + [r["load"][1] for r in rows]
    text = "\n".join([
        "# tasks.serve under load (bench/serve.py)", "",
        f"`python -m bench.serve {' '.join(argv if argv is not None else sys.argv[1:])}`".replace("  ", " "), "",
        f"Model: {model}, backend {args.backend}; server `--max-batch {args.max_batch}`, BLAS threads: "
        f"{args.blas_threads or 'library default'}. Each request: streamed /v1/completions, prompt "
        f"{PROMPT!r}, exactly {args.max_tokens} sampled tokens (temperature 1, its own seed, ignore_eos). "
        "Each level: its streams are threads of the benchmark, each sending its requests one after the "
        "other; tok/s is the generated tokens of all requests over the level's wall time, TTFT the time to "
        "the first streamed text, time between tokens the mean gap after it.", "",
        clients, "",
        "What each level cost: the mean batch, forward and sampling time per decode step and how busy the "
        "scheduler's thread was (from the server's /health), the CPU time of the server process and of "
        "the benchmark's own clients per generated token, the load average, and the share of all CPUs' "
        "time other processes used during the level (above a few percent, the figures above are slower "
        "than an idle machine's).", "",
        servers, "",
        f"Load average (1 min) over the run: {min(loads):.1f} to {max(loads):.1f} on {os.cpu_count()} CPUs.",
        "", machine_info_markdown(info), "",
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
