"""`python -m minigrad.kernels --resources`: what each kernel asks of an sm_90 SM, without a GPU.

Each source is compiled as CuPy 14 compiles a RawModule at run time (NVRTC, a cubin for sm_90,
`-ftz=true`, CuPy's include folders, the loader's options and the launcher's -D defines), with
`-Xptxas -v`, whose report gives each kernel's registers, spilled bytes and static shared memory.
From those and the block size (the kernel's `__launch_bounds__`) comes the occupancy sm_90
allows: 65,536 registers (allocated 256 a warp at a time), 228 KB of shared memory (1 KB of it
reserved per block), 2,048 threads and 32 blocks an SM. A kernel with no `__launch_bounds__` gets
the bound its registers and shared memory allow at any block size, marked `<=`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import flash_attention
from ._loader import NVRTC_OPTIONS, define, expand_includes, forms
from .nvrtc import cupy_options
from .nvrtc import load as load_nvrtc

ARCH = "sm_90"
SM90 = dict(regs=65536, reg_unit=256, smem=228 * 1024, smem_reserved=1024, smem_unit=128, threads=2048, blocks=32)
# -D defines a launcher builds a source with (one build per entry); other sources: their defaults
VARIANTS = {"attention.cu": [{"HEAD_DIM": 64}]}
_BOUNDS = re.compile(r'extern\s+"C"\s+__global__\s+void\s+__launch_bounds__\s*\(\s*([^,)]+?)\s*(?:,[^)]*)?\)\s*(\w+)\s*\(')


@dataclass
class Usage:
    source: str
    defines: dict
    kernel: str
    regs: int
    spill: int  # bytes stored plus bytes loaded
    smem: int
    threads: int | None  # from __launch_bounds__, else None

    def occupancy(self) -> tuple[float, str]:
        """(active warps / 64, the resource that limits them) on sm_90; without a block size, the
        bound the registers allow (bigger blocks spread a block's shared memory over more warps)."""
        regs_warps = SM90["regs"] // (-(-max(self.regs, 1) * 32 // SM90["reg_unit"]) * SM90["reg_unit"])
        if not self.threads:
            return min(64, regs_warps) / 64, "regs"
        warps = -(-self.threads // 32)
        limits = {"blocks": SM90["blocks"], "threads": SM90["threads"] // (32 * warps), "regs": regs_warps // warps}
        if self.smem:
            per_block = -(-(self.smem + SM90["smem_reserved"]) // SM90["smem_unit"]) * SM90["smem_unit"]
            limits["smem"] = SM90["smem"] // per_block
        limiter = min(limits, key=limits.get)
        return min(1.0, limits[limiter] * warps / 64), limiter


def variants(path: Path) -> list[tuple[dict, list[str] | None]]:
    """(defines, kernels to report or None for all) for each build of a source the launchers use."""
    if path.name == flash_attention.FILE:
        return flash_attention.variants()
    return [({**d, **form}, None) for d in VARIANTS.get(path.name, [{}]) for form in forms(path.read_text())]


def _options(defines: dict) -> list[str]:
    """CuPy's run-time options for this build (nvrtc.cupy_options, as `python -m minigrad.kernels`
    builds its cubins), a cubin for sm_90, and ptxas's report."""
    base = tuple(NVRTC_OPTIONS) + tuple(f"-D{k}={v}" for k, v in defines.items())
    try:
        options = cupy_options(base)
    except RuntimeError:  # CuPy cannot say (absent): NVRTC alone still compiles these sources
        options = base + ("-ftz=true",)
    return [*options, f"-arch={ARCH}", "-Xptxas", "-v"]


def ptxas_report(text: str, name: str, defines: dict) -> str:
    """ptxas's -v report for one build of a source; RuntimeError with NVRTC's log on an error."""
    nvrtc = load_nvrtc()
    prog = nvrtc.createProgram(text, name, [], [])
    try:
        try:
            nvrtc.compileProgram(prog, _options(defines))
        except nvrtc.NVRTCError as e:
            raise RuntimeError(f"{e}\n{nvrtc.getProgramLog(prog)}".rstrip()) from None
        log = nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return (log.decode() if isinstance(log, bytes) else log).replace("\x00", "")


def parse(report: str) -> dict[str, dict[str, int]]:
    """{kernel: {regs, spill, smem}} from a ptxas -v report (entry functions only)."""
    out: dict[str, dict[str, int]] = {}
    entry = None
    for line in report.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            entry = m.group(1)
            out[entry] = {"regs": 0, "spill": 0, "smem": 0}
        elif entry and (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            out[entry]["spill"] = int(m.group(1)) + int(m.group(2))
        elif entry and (m := re.search(r"Used (\d+) registers", line)):
            out[entry]["regs"] = int(m.group(1))
            if s := re.search(r"(\d+) bytes smem", line):
                out[entry]["smem"] = int(s.group(1))
    return out


def measure(path: Path) -> list[Usage]:
    """Every reported kernel of every build of one source."""
    text = expand_includes(path.read_text())  # with minigrad's own headers, as NVRTC gets it
    bounds = {name: _threads(text, t) for t, name in _BOUNDS.findall(text)}
    rows = []
    for defines, wanted in variants(path):
        report = parse(ptxas_report(text, path.name, defines))
        for kernel in wanted or sorted(report):
            r = report[kernel]  # KeyError: a launcher names a kernel this build lacks
            rows.append(Usage(path.name, defines, kernel, r["regs"], r["spill"], r["smem"], bounds.get(kernel)))
    return rows


def _threads(text: str, expr: str) -> int:
    """A block size as __launch_bounds__ writes it: a number, a #define, or a product of those."""
    n = 1
    for factor in expr.split("*"):
        factor = factor.strip()
        n *= int(factor) if factor.isdigit() else define(text, factor)
    return n


def table(rows: list[Usage]) -> str:
    head = f"{'source':22s} {'defines':20s} {'kernel':30s} {'threads':>7s} {'regs':>4s} {'spill':>6s} {'smem':>6s}  occupancy"
    lines = [head]
    for u in rows:
        occ, limiter = u.occupancy()
        defines = ",".join(f"{k}={v}" for k, v in u.defines.items()) or "-"
        bound = "" if u.threads else "<="
        lines.append(f"{u.source:22s} {defines:20s} {u.kernel:30s} {u.threads or '-':>7} {u.regs:4d} {u.spill:6d} "
                     f"{u.smem:6d}  {bound}{occ:.0%} ({limiter})")
    return "\n".join(lines)


def main(files: list[Path], nvrtc_version: str) -> int:
    print(f"NVRTC {nvrtc_version}, {ARCH} cubin as CuPy builds it (-ftz=true, CuPy's include folders), -Xptxas -v")
    print("per SM: 65536 registers, 228 KB shared memory (1 KB reserved a block), 2048 threads, 32 blocks; "
          "spill and smem in bytes")
    rows, failed = [], []
    for f in files:
        try:
            rows += measure(f)
        except RuntimeError as e:
            print(f"FAIL {f.name}\n{e}", flush=True)
            failed.append(f.name)
    print(table(rows), flush=True)
    if failed:
        print(f"error: {len(failed)} failed to compile: {', '.join(failed)}")
        return 1
    return 0
