"""NVRTC for the kernels' checks, without a GPU: compile a source to PTX or to a cubin, and ask the
installed CuPy which options its RawModule compiles with at run time (so a check builds what
really runs). Used by `python -m minigrad.kernels` (__main__.py) and its --resources (resources.py)."""
from __future__ import annotations

from ._loader import NVRTC_OPTIONS

ARCH = "-arch=compute_90"
CUBIN_ARCH = "-arch=sm_90"  # what CuPy asks NVRTC for on a compute capability 9.0 GPU


class NvrtcMissing(RuntimeError):
    pass


def load():
    try:
        from cupy_backends.cuda.libs import nvrtc
        nvrtc.getVersion()  # loads libnvrtc: fails here when the library is missing
    except Exception as e:  # ImportError, or CuPy's own errors for a missing library
        raise NvrtcMissing(f"NVRTC is not available ({type(e).__name__}: {e}); install it with "
                           "`pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12`") from None
    return nvrtc


def nvrtc_available() -> str | None:
    """None when NVRTC can compile here, else the reason it cannot."""
    try:
        load()
        return None
    except NvrtcMissing as e:
        return str(e)


def compile_nvrtc(text: str, name: str, options: list[str], cubin: bool = False) -> bytes:
    """NVRTC's PTX (or cubin) for one source; RuntimeError with NVRTC's log on an error."""
    nvrtc = load()
    prog = nvrtc.createProgram(text, name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, options)
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"{e}\n{nvrtc.getProgramLog(prog)}".rstrip()) from None
        out = nvrtc.getCUBIN(prog) if cubin else nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return out if isinstance(out, bytes) else out.encode()


def compile_ptx(text: str, name: str) -> str:
    """PTX for one source; raises RuntimeError with NVRTC's log on a compilation error."""
    return compile_nvrtc(text, name, [ARCH, *NVRTC_OPTIONS]).decode()


class _Captured(Exception):
    pass


def cupy_options(options: tuple[str, ...]) -> tuple[str, ...]:
    """The options CuPy's RawModule(code, options=options) compiles with at run time, but for the
    architecture: CuPy is asked (cupy._core.core.compile_with_cache, as RawModule calls it, stopped
    just before it compiles), then -ftz=true is added when the installed CuPy adds it
    (cupy/cuda/compiler.py's _compile_with_cache_cuda). Raises RuntimeError if CuPy cannot say."""
    import inspect

    import cupy._core.core as core
    import cupy.cuda.compiler as compiler
    from cupy.cuda import runtime

    seen: dict[str, tuple] = {}

    def capture(source, options=(), **kwargs):
        seen["options"] = tuple(options)
        raise _Captured

    saved, saved_version = compiler._compile_module_with_cache, runtime.runtimeGetVersion
    compiler._compile_module_with_cache = capture
    try:
        try:
            runtime.runtimeGetVersion()
        except Exception:  # no driver here: CuPy only wants to know the CUDA major version
            major, minor = load().getVersion()
            runtime.runtimeGetVersion = lambda: 1000 * major + 10 * minor
        try:
            core.compile_with_cache("", options, prepend_cupy_headers=False)
        except _Captured:
            pass
    except Exception as e:
        raise RuntimeError(f"cannot ask CuPy for its run-time NVRTC options ({type(e).__name__}: {e})") from None
    finally:
        compiler._compile_module_with_cache, runtime.runtimeGetVersion = saved, saved_version
    if "options" not in seen:
        raise RuntimeError("cannot ask CuPy for its run-time NVRTC options (it did not get to compile)")
    ftz = ("-ftz=true",) if "-ftz=true" in inspect.getsource(compiler._compile_with_cache_cuda) else ()
    return seen["options"] + ftz
