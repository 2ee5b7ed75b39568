"""Progress for long work: a tqdm bar on a terminal; elsewhere (a log file, a pipe, CI) plain
lines at every tenth of the way, since a bar's carriage returns turn a log into one long line."""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


class LineProgress:
    """tqdm's interface as far as the tasks use it, printing `desc: n/total (p%) postfix` lines."""

    def __init__(self, total: float | None = None, initial: float = 0, desc: str = "", disable: bool = False,
                 unit: str = "it", **_ignored):
        self.total, self.n, self.desc, self.disable, self.unit = total, initial, desc, disable, unit
        self.postfix, self._next, self._t0, self._n0 = "", self._tenth_after(initial), time.perf_counter(), initial

    def _tenth_after(self, n: float) -> float:
        if not self.total:
            return float("inf")
        step = self.total / 10
        return (int(n / step) + 1) * step

    def update(self, n: float = 1) -> None:
        self.n += n
        if not self.disable and (self.n >= self._next or self.n == self.total):
            self._next = self._tenth_after(self.n)
            rate = (self.n - self._n0) / max(time.perf_counter() - self._t0, 1e-9)
            pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
            print(f"{self.desc}: {self.n:g}/{self.total:g}{pct}, {rate:.3g} {self.unit}/s"
                  f"{', ' + self.postfix if self.postfix else ''}", file=sys.stderr, flush=True)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        pass

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(**kwargs) -> tqdm | LineProgress:
    """tqdm(**kwargs) on a terminal, LineProgress(**kwargs) when stderr is not one."""
    return tqdm(**kwargs) if sys.stderr.isatty() else LineProgress(**kwargs)
