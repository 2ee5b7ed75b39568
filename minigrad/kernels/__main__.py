"""`python -m minigrad.kernels [PATH ...]`: compile every CUDA source with NVRTC, no GPU needed.

With no PATH, the package's own sources; a PATH may be a `.cu` file or a folder of them. Each
source is compiled in every form the launchers ask for (float32 and float16, -DFP16=1, where the
source has both; 32- and 64-bit sort keys, -DKEY64=1, where it has both), and each form twice:

- to PTX for compute capability 9.0 (`-arch=compute_90`), the portable check;
- as CuPy builds it at run time on an H100 or H200: the options CuPy 14's RawModule hands NVRTC
  (its own include folders, asked of the installed CuPy), `-ftz=true`, and a cubin for `sm_90`
  (cupy/cuda/compiler.py: `_compile_with_cache_cuda`). A kernel that builds one way and not the
  other fails.

Every `extern "C" __global__` function a source defines must appear in both outputs. One line
per kernel and form, then `N kernels compiled`; exit status 1 (with NVRTC's log) on any
compilation error, 2 when NVRTC itself is missing. With `--resources`: each kernel's registers,
spills, shared memory and the occupancy they allow on sm_90 instead (resources.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._loader import NVRTC_OPTIONS, expand_includes, forms, kernel_names, sources
from .nvrtc import ARCH, CUBIN_ARCH, NvrtcMissing, compile_nvrtc, cupy_options
from .nvrtc import load as load_nvrtc

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


def _builds(defines: dict[str, int], cupy: tuple[str, ...] | None) -> list[tuple[str, list[str], bool]]:
    """(label, NVRTC options, cubin?) of each build of one form."""
    flags = [f"-D{k}={v}" for k, v in defines.items()]
    out = [("ptx", [ARCH, *NVRTC_OPTIONS, *flags], False)]
    if cupy is not None:
        out.append(("cubin", [*cupy_options(tuple(NVRTC_OPTIONS) + tuple(flags)), CUBIN_ARCH], True))
    return out


def check_file(f: Path, cupy: bool) -> tuple[set[str], list[str]]:
    """Compile one source in every form and build; (kernel names compiled, failures)."""
    own = f.read_text()
    text = expand_includes(own, f.parent)
    names, done, failed = kernel_names(text), set(), []
    if not names:
        print(f"FAIL {f.name}: defines no extern \"C\" __global__ function", file=sys.stderr)
        return done, [f.name]
    for defines in forms(own):  # the switches the source itself uses, not its headers
        form = ",".join(f"{k}={v}" for k, v in defines.items()) or "-"
        for label, options, cubin in _builds(defines, cupy or None):
            try:
                out = compile_nvrtc(text, f.name, options, cubin)
            except RuntimeError as e:
                print(f"FAIL {f.name} [{form}, {label}]\n{e}", file=sys.stderr, flush=True)
                failed.append(f"{f.name}[{form},{label}]")
                continue
            for name in names:
                found = name.encode() in out if cubin else (f".entry {name}(".encode() in out
                                                             or f".entry {name} (".encode() in out)
                if not found:
                    print(f"FAIL {f.name}: {name} is missing from the {label}", file=sys.stderr)
                    failed.append(f"{f.name}:{name}")
                    continue
                print(f"ok   {f.name:24s} {form:15s} {label:5s} {name}", flush=True)
                done.add(f"{f.name}:{name}")
    return done, failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigrad.kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", help=".cu files or folders (default: minigrad/kernels/*.cu)")
    ap.add_argument("--resources", action="store_true",
                    help="print registers, spills, shared memory and occupancy per kernel on sm_90")
    ap.add_argument("--ptx-only", action="store_true", help="skip the build with CuPy's run-time options")
    args = ap.parse_args(argv)
    try:
        files = _collect(args.paths)
        nvrtc = load_nvrtc()
    except (FileNotFoundError, NvrtcMissing) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not files:
        print("error: no .cu sources found", file=sys.stderr)
        return 2
    if args.resources:
        from . import resources
        return resources.main(files, ".".join(map(str, nvrtc.getVersion())))
    cupy = not args.ptx_only
    if cupy:
        try:
            shown = " ".join(o for o in cupy_options(tuple(NVRTC_OPTIONS)) if not o.startswith("-I"))
        except RuntimeError as e:
            print(f"error: {e}; --ptx-only checks the PTX alone", file=sys.stderr)
            return 2
    print(f"NVRTC {'.'.join(map(str, nvrtc.getVersion()))}: PTX {ARCH}"
          + (f"; CuPy's run-time build: {shown} {CUBIN_ARCH}, CuPy's include folders" if cupy else ""))
    compiled, failed = set(), []
    for f in files:
        done, bad = check_file(f, cupy)
        compiled |= done
        failed += bad
    print(f"{len(compiled)} kernels compiled", flush=True)
    if failed:
        print(f"error: {len(failed)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
