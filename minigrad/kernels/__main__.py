"""`python -m minigrad.kernels [PATH ...]`: compile every CUDA source with NVRTC, no GPU needed.

With no PATH, the package's own sources; a PATH may be a `.cu` file or a folder of them. Each
source is compiled to PTX for compute capability 9.0 (`-arch=compute_90`), and every
`extern "C" __global__` function it defines must appear in the PTX. One line per kernel, then
`N kernels compiled`; exit status 1 (with NVRTC's log) on any compilation error, 2 when NVRTC
itself is missing. With `--resources`: each kernel's registers, spills, shared memory and the
occupancy they allow on sm_90 instead (resources.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._loader import NVRTC_OPTIONS, kernel_names, sources

ARCH = "-arch=compute_90"


class NvrtcMissing(RuntimeError):
    pass


def _nvrtc():
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
        _nvrtc()
        return None
    except NvrtcMissing as e:
        return str(e)


def compile_ptx(text: str, name: str) -> str:
    """PTX for one source; raises RuntimeError with NVRTC's log on a compilation error."""
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(text, name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [ARCH, *NVRTC_OPTIONS])
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"{e}\n{nvrtc.getProgramLog(prog)}".rstrip()) from None
        ptx = nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


def _collect(paths: list[str]) -> list[Path]:
    if not paths:
        return sources()
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(p.glob("*.cu"))
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigrad.kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", help=".cu files or folders (default: minigrad/kernels/*.cu)")
    ap.add_argument("--resources", action="store_true",
                    help="print registers, spills, shared memory and occupancy per kernel on sm_90")
    args = ap.parse_args(argv)
    try:
        files = _collect(args.paths)
        nvrtc = _nvrtc()
    except (FileNotFoundError, NvrtcMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not files:
        print("error: no .cu sources found", file=sys.stderr)
        return 2
    if args.resources:
        from . import resources
        return resources.main(files, ".".join(map(str, nvrtc.getVersion())))
    print(f"NVRTC {'.'.join(map(str, nvrtc.getVersion()))}, {ARCH}")
    n_ok, failed = 0, []
    for f in files:
        text = f.read_text()
        names = kernel_names(text)
        try:
            ptx = compile_ptx(text, f.name)
        except RuntimeError as e:
            print(f"FAIL {f.name}\n{e}", file=sys.stderr, flush=True)
            failed.append(f.name)
            continue
        if not names:
            print(f"FAIL {f.name}: defines no extern \"C\" __global__ function", file=sys.stderr)
            failed.append(f.name)
            continue
        for name in names:
            if f".entry {name}(" not in ptx and f".entry {name} (" not in ptx:
                print(f"FAIL {f.name}: {name} is missing from the PTX", file=sys.stderr)
                failed.append(f"{f.name}:{name}")
                continue
            print(f"ok   {f.name:24s} {name}", flush=True)
            n_ok += 1
    print(f"{n_ok} kernels compiled", flush=True)
    if failed:
        print(f"error: {len(failed)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
