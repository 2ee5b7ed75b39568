"""Launcher for unscale.cu: float16 gradients times 1 / loss scale into float32, and whether any
of them overflowed, for minigrad/amp.py."""
from __future__ import annotations

import numpy as np

from .. import backend
from ._loader import kernel

_THREADS = 256
_MAX_BLOCKS = 4096


class Unscaler:
    """unscale(g16, g32, inv_scale) as often as needed, then finite() reads the overflow flag once
    (the one host sync) for all of them since the last finite()."""

    def __init__(self) -> None:
        self._flag = None
        self._stamp = 0

    def unscale(self, g16, g32, inv_scale: float) -> None:
        """g32[...] = g16 * inv_scale (contiguous device arrays of one size, float16 and float32)."""
        if g16.dtype != np.float16 or g32.dtype != np.float32 or g16.size != g32.size \
                or not (g16.flags.c_contiguous and g32.flags.c_contiguous):
            raise ValueError("unscale needs contiguous float16 and float32 arrays of one size")
        if self._flag is None:
            self._flag = backend.array_module(g16).zeros(1, dtype=np.int32)
        n = g16.size
        kernel("unscale.cu", "unscale_grads")((max(1, min((n + _THREADS - 1) // _THREADS, _MAX_BLOCKS)),),
                                              (_THREADS,), (g16, g32, np.int64(n), np.float32(inv_scale), self._flag,
                                                            np.int32(self._stamp + 1)))

    def finite(self) -> bool:
        """Whether every gradient unscaled since the last call was finite."""
        stamp, self._stamp = self._stamp + 1, (self._stamp + 1) % (2 ** 31 - 1)
        return self._flag is None or int(self._flag[0].item()) != stamp
