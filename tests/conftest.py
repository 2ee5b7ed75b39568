"""Shared fixtures: the `backend` fixture runs a test on NumPy and, where a GPU is present, on CuPy.

`pytest --backend cupy` runs backend-parametrised tests on CuPy only (it fails loudly if no GPU).
`pytest --backend standin` runs them on the strict CuPy stand-in (minigrad/standin.py), and the
task tests' subprocesses with `--backend standin`: what CI does to check the CuPy code paths.
"""
import json
import os
from collections import Counter
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import settings

import minigrad as mg
from minigrad.tensor import set_debug

# CI (HYPOTHESIS_PROFILE=ci in .ci/run) draws the same examples on every run, so a red CI can be
# rerun and read; a developer's run explores new examples each time, and a failure it finds is kept
# as an @example.
settings.register_profile("ci", derandomize=True)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])

# the engine's debug mode checks every op's backward (shapes, dtypes, no array the graph keeps):
# on for every test in this process. Switched on here rather than by MINIGRAD_DEBUG=1 in the
# environment, which every task subprocess would inherit and pay for on each step.
set_debug(True)


def pytest_addoption(parser):
    parser.addoption("--backend", action="store", default="all", choices=("all", "numpy", "cupy", "standin"),
                     help="which minigrad backend(s) the `backend` fixture runs on")


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        choice = metafunc.config.getoption("--backend")
        devices = {"all": ["cpu", "cuda"], "numpy": ["cpu"], "cupy": ["cuda"], "standin": ["standin"]}[choice]
        metafunc.parametrize("backend", devices, indirect=True)


@pytest.fixture
def backend(request):
    """The device name ("cpu" or "cuda") a test should build its tensors on."""
    device = request.param
    if device == "cuda" and not mg.gpu_available():
        if request.config.getoption("--backend") == "cupy":
            pytest.fail("--backend cupy asked for, but CuPy or a GPU is not available")
        pytest.skip("CuPy backend: no CuPy or no GPU on this machine")
    mg.manual_seed(0)
    return device


@pytest.fixture(scope="session")
def needs_tokenizer():
    """Skip, naming the missing files, where GPT-2's tokenizer cannot be loaded (offline, empty cache)."""
    from gpt2.tokenizer import TokenizerUnavailableError, get_tokenizer
    try:
        return get_tokenizer()
    except TokenizerUnavailableError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def tok(needs_tokenizer):
    """GPT-2's tokenizer (tests skip, naming the missing files, where it cannot be loaded)."""
    return needs_tokenizer


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, read_only=False) -> a folder on a small tmpfs of its own (a full or read-only
    disk, for real); skips where mounting is not allowed (not root). Unmounted afterwards."""
    import shutil
    import subprocess
    mounted = []

    def mount(size: str, read_only: bool = False):
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root")
        mnt = tmp_path / f"tmpfs{len(mounted)}"
        mnt.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)]).returncode != 0:
            pytest.skip("cannot mount a tmpfs here")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)])


@pytest.fixture
def numpy_pass_only(request):
    """For test modules whose work runs on NumPy whatever --backend says (no `backend` or
    `task_backend` fixture): the stand-in pass, CI's second, would repeat them to the bit."""
    if request.config.getoption("--backend") == "standin":
        pytest.skip("runs on NumPy whatever --backend says: the NumPy pass runs it, the stand-in adds nothing")


@pytest.fixture
def task_backend(request) -> str:
    """The --backend a task test passes to its command: numpy, or the one pytest was given."""
    choice = request.config.getoption("--backend")
    return "numpy" if choice == "all" else choice


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty data cache of the test's own, with downloads allowed (they go to local servers)."""
    d = tmp_path / "cache"
    monkeypatch.setenv("MINIGRAD_DATA_DIR", str(d))
    monkeypatch.delenv("MINIGRAD_OFFLINE", raising=False)
    return d


@pytest.fixture
def served(tmp_path):
    """(folder, URL): a local HTTP server on 127.0.0.1 over tmp_path/served, for download tests."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest's output clean
            pass

    root = tmp_path / "served"
    root.mkdir()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def sharp_tiny_gpt2(folder, n_ctx: int):
    """A 1-layer, 16-wide GPT-2 with GPT-2's vocabulary, its matrices scaled up 8x so that its
    next-token distributions are far from uniform; saved as a weights folder. (model, folder)."""
    import numpy as np
    from gpt2 import GPT2, GPT2Config
    from gpt2.weights import save_pretrained
    mg.manual_seed(0)
    model = GPT2(GPT2Config(n_ctx=n_ctx, n_embd=16, n_layer=1, n_head=2))
    for p in model.parameters():
        if p.data.ndim == 2:
            p.data *= np.float32(8.0)
    save_pretrained(model, folder)
    return model.eval(), folder


@pytest.fixture(autouse=True)
def _seed():
    mg.manual_seed(0)


# lines for the end of the run: tests/test_docs.py says there how many blocks of the docs ran
DOCS_SUMMARY = pytest.StashKey[list]()

# what a skip's reason says it lacks, tried in this order
SKIP_KINDS = (("CI's own steps", ("ci runs it",)),
              ("the same on every backend, run by the NumPy pass", ("numpy pass",)),
              ("a GPU", ("gpu", "cupy", "cuda")),
              ("a package or program that is not installed",
               ("not installed", "no module named", "could not import", "install", "chromium", "playwright",
                "graphviz", "mpiexec", "mpi4py", "torch", "transformers", "lm_eval", "lm-eval")),
              ("a file the data cache does not hold (offline: nothing is downloaded)",
               ("cache", "missing", "download", "weights", "offline", "not available", "no such file")))


def skip_kind(reason: str) -> str:
    low = reason.lower()
    return next((kind for kind, words in SKIP_KINDS if any(w in low for w in words)), "other reasons")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say once, at the end, what the skips mean: a first `pytest -q` offline skips many tests,
    each for a missing file, GPU or package, and that is normal."""
    for line in config.stash.get(DOCS_SUMMARY, []):
        terminalreporter.write_line(line)
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if isinstance(r.longrepr, tuple)]
    if not skipped:
        return
    kinds = Counter(skip_kind(r.longrepr[2]) for r in skipped)
    terminalreporter.write_line(
        f"{len(skipped)} tests skipped, each naming what it needs ("
        + "; ".join(f"{kind}: {n}" for kind, n in kinds.most_common()) + ")"
        + ". That is normal offline and without a GPU; `pytest -rs` lists every reason.")


def pytest_report_header(config):
    return [f"minigrad data cache: {os.environ.get('MINIGRAD_DATA_DIR', '<repo>/data')}",
            f"TIKTOKEN_CACHE_DIR: {os.environ.get('TIKTOKEN_CACHE_DIR', '<unset>')}"]


class _OllamaJudge(BaseHTTPRequestHandler):
    """An Ollama /api/chat that gives every response 80."""

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"message": {"role": "assistant", "content": "80"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def judge_url():
    """The URL of a judge server (_OllamaJudge) on this machine, for the module's tests."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _OllamaJudge)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
