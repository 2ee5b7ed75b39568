"""What each CUDA kernel asks of an sm_90 SM (registers, spills, shared memory, occupancy), as a
report section.

    python -m bench.resources [--out FILE] [PATH ...]

Runs `python -m minigrad.kernels --resources [PATH ...]` (NVRTC compiles each kernel as CuPy builds
it for sm_90, no GPU needed) and writes its table as markdown to FILE (else prints it), with a line
saying whether any kernel spills and which attention kernels (tensor-core and float32) run below 25%
occupancy.
bench/gpu_check.sh puts it in its report. Exit status: the command's, or 1 on a spill or an
attention kernel below 25%.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from .common import main_guard, write_atomic

REPO = Path(__file__).resolve().parents[1]
ATTENTION_SOURCES = ("flash_attention.cu", "attention.cu")
PROBES = ("flash_dropout_bits",)  # the tests' probe of the hash, not an attention kernel


def verdict(table: str) -> tuple[str, bool]:
    """(one line on spills and the attention kernels' occupancy, whether both are as required)."""
    lines = table.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("source ")), None)
    if start is None:
        return "no table in the output", False
    rows = [line.split() for line in lines[start + 1:] if line.strip()]
    spills = [r[2] + " (" + r[1] + ")" for r in rows if int(r[5]) > 0]
    low = [r[2] + " (" + r[1] + ")" for r in rows if r[0] in ATTENTION_SOURCES and r[2] not in PROBES
           and (r[3] == "-" or float(r[7].strip("<=%")) < 25)]  # no block size: no occupancy to promise
    text = (f"{len(rows)} kernel builds; spills: {', '.join(spills) or 'none'}; attention kernels "
            f"below 25% occupancy: {', '.join(low) or 'none'}.")
    return text, not spills and not low


@main_guard
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.resources", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="CUDA sources (default: the package's)")
    p.add_argument("--out", help="markdown file (default: print only)")
    args = p.parse_args(argv)
    cmd = [sys.executable, "-m", "minigrad.kernels", "--resources", *args.paths]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    line, ok = verdict(r.stdout) if r.returncode == 0 else (f"exit status {r.returncode}: {r.stderr.strip()[-500:]}", False)
    shown = ["python", "-m", "minigrad.kernels", "--resources", *args.paths]
    text = "\n".join(["# Kernel resources on sm_90", "", f"`{shlex.join(shown)}`", "", line, "", "```",
                      r.stdout.rstrip(), "```", ""])
    if args.out:
        write_atomic(args.out, text)
    print(text)
    return r.returncode or (0 if ok else 1)


if __name__ == "__main__":
    sys.exit(main())
