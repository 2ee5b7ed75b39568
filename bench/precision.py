"""How each side of bench.train trains in each precision (`--dtype`):

- float32: plain float32 (on a GPU, PyTorch with TF32 off: CUDA cores, as CuPy's default);
- tf32: float32 with TensorFloat-32 matmuls (tensor cores, 10-bit mantissa inputs): CuPy's cuBLAS
  compute type (minigrad.backend.set_tf32, what tasks.common.device does for --dtype tf32), PyTorch's
  allow_tf32; a GPU mode only;
- float16: mixed precision. minigrad as tasks.training's Trainer does it: minigrad.amp over the optimizer's
  flat buffers (float16 weights and gradients, float32 masters, the loss scaled, the step skipped
  on overflow); PyTorch: torch.autocast(float16) + GradScaler.

A step is forward(model, x, y) -> loss, backward(loss), step(optimizer): the same calls for both
frameworks (bench/train.py's make_step times them).
"""
from __future__ import annotations

from typing import Any

DTYPES = ("float32", "tf32", "float16")
# the two frameworks' losses must agree this closely, relative, at every step: float32 to its
# rounding; TF32's 10-bit inputs and float16's rounding move each step's loss by ~1e-3 and the
# runs drift apart a little more each step
LOSS_RTOL = {"float32": 1e-4, "tf32": 1e-2, "float16": 3e-2}


class Plain:
    """float32 (or TF32: the same calls, the matmul mode set once)."""

    skipped = 0

    def forward(self, model, x, y):
        return model(x, y)[1]

    def backward(self, loss) -> None:
        loss.backward()

    def step(self, opt) -> None:
        opt.step()


class MinigradHalf(Plain):
    """minigrad.amp as tasks.training's Trainer uses it."""

    def __init__(self, model, opt):
        from minigrad.amp import LossScaler, MixedPrecision
        self.amp = MixedPrecision(model.parameters(), LossScaler(), flat=opt.flat)

    def forward(self, model, x, y):
        self.amp.half()
        return model(x, y)[1]

    def backward(self, loss) -> None:
        (loss * self.amp.scaler.scale).backward()

    def step(self, opt) -> None:
        if self.amp.restore():  # False: a gradient overflowed, the step is skipped (and counted)
            opt.step()

    @property
    def skipped(self) -> int:
        return self.amp.scaler.skipped


class TorchHalf(Plain):
    """torch.autocast(float16) around the forward, GradScaler around backward and step."""

    def __init__(self, torch, device: str):
        self.torch, self.device = torch, device
        self.scaler = torch.amp.GradScaler(device)
        self._skipped = 0

    def forward(self, model, x, y):
        with self.torch.autocast(self.device, dtype=self.torch.float16):
            return model(x, y)[1]

    def backward(self, loss) -> None:
        self.scaler.scale(loss).backward()

    def step(self, opt) -> None:
        scale = self.scaler.get_scale()
        self.scaler.step(opt)
        self.scaler.update()
        self._skipped += self.scaler.get_scale() < scale  # GradScaler backs off when it skips

    @property
    def skipped(self) -> int:
        return self._skipped


def minigrad_precision(dtype: str, model, opt, device: str) -> Any:
    if dtype == "tf32":
        import minigrad as mg
        mg.backend.set_tf32(True)
    return MinigradHalf(model, opt) if dtype == "float16" else Plain()


def torch_precision(dtype: str, torch, device: str) -> Any:
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
        torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    return TorchHalf(torch, device) if dtype == "float16" else Plain()
