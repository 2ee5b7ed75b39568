"""What a training run is asked to do: TrainConfig, the settings of the training loop."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from ..common.errors import UsageError

DTYPES = ("float32", "tf32", "float16")
# Checkpoints of models this big (weights + AdamW's two moments: 12 bytes a parameter, 1.2 GB
# and up) are written every BIG_SAVE_EVERY steps by default rather than at each evaluation.
BIG_MODEL = 100_000_000
BIG_SAVE_EVERY = 1000


@dataclass
class TrainConfig:
    epochs: int = 1
    lr: float = 4e-4
    weight_decay: float = 0.1
    warmup: int = 0
    schedule: str = "constant"       # or "cosine"
    min_lr: float = 0.0
    grad_clip: float = 0.0
    grad_accum: int = 1
    max_steps: int | None = None
    eval_every: int = 5
    eval_batches: int = 5
    keep: int = 2
    progress: bool = True
    log_every: int = 1               # steps between loss fetches (each one a host-device sync)
    save_every: int | None = None    # None: see Trainer.save_every
    dtype: str = "float32"           # or "tf32" (set up by common.device), "float16" (mixed precision)
    loss_scale: float = 2.0 ** 16    # float16: the initial loss scale ...
    loss_scale_window: int = 2000    # ... doubled after this many steps without overflow
    weights_only: bool = False       # resume from the weights alone when the optimizer state is missing
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any]) -> TrainConfig:
        """The settings of a parsed command line (`vars(args)`, or run.json's args): the flags of
        common.args.add_train_args carry these fields' names; --no-progress turns progress off."""
        names = {f.name for f in fields(cls)} - {"progress", "extra"}
        return cls(**{k: flags[k] for k in names if k in flags}, progress=not flags.get("no_progress", False))

    def check(self) -> None:
        for name in ("epochs", "grad_accum", "eval_every", "eval_batches", "log_every", "loss_scale_window"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.save_every is not None and self.save_every < 1:
            raise UsageError(f"--save-every must be at least 1, got {self.save_every}")
        if self.lr <= 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if self.dtype not in DTYPES:
            raise UsageError(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.loss_scale <= 0:
            raise UsageError(f"--loss-scale must be positive, got {self.loss_scale}")
