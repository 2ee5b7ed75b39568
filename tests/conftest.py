"""Shared fixtures: the `backend` fixture runs a test on NumPy and, where a GPU is present, on CuPy.

`pytest --backend cupy` runs backend-parametrised tests on CuPy only (it fails loudly if no GPU).
"""
import os

import pytest

import minigrad as mg


def pytest_addoption(parser):
    parser.addoption("--backend", action="store", default="all", choices=("all", "numpy", "cupy"),
                     help="which minigrad backend(s) the `backend` fixture runs on")


def pytest_generate_tests(metafunc):
    if "backend" in metafunc.fixturenames:
        choice = metafunc.config.getoption("--backend")
        devices = {"all": ["cpu", "cuda"], "numpy": ["cpu"], "cupy": ["cuda"]}[choice]
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


@pytest.fixture(autouse=True)
def _seed():
    mg.manual_seed(0)


def pytest_report_header(config):
    return [f"minigrad data cache: {os.environ.get('MINIGRAD_DATA_DIR', '<repo>/data')}",
            f"TIKTOKEN_CACHE_DIR: {os.environ.get('TIKTOKEN_CACHE_DIR', '<unset>')}"]
