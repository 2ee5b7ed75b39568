"""The training loop every task shares: AdamW with warmup and a schedule, clipping, gradient
accumulation, periodic evaluation, metrics.jsonl, checkpoints, exact resume, Ctrl-C safety,
float16 mixed precision (minigrad.amp), and no host-device sync between log steps.

A task supplies the model, the loaders and three small functions (how to get a loss from a
batch, what to evaluate, what to print as a sample); `Trainer.fit` does the rest.
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

import minigrad as mg
from minigrad.amp import LossScaler, MixedPrecision
from minigrad.optim import AdamW, CosineWithWarmup, clip_grad_norm_

from .cli import TaskError
from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from .jsonl import append_jsonl, read_jsonl, rewrite_jsonl


DTYPES = ("float32", "tf32", "float16")
# Checkpoints of models this big (weights + AdamW's two moments: 12 bytes a parameter, 1.2 GB
# and up) are written every BIG_SAVE_EVERY steps by default rather than at each evaluation.
BIG_MODEL = 100_000_000
BIG_SAVE_EVERY = 1000


class NonFiniteLoss(TaskError):
    """The loss became inf or NaN; training stops and keeps the last good checkpoint."""


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
    dtype: str = "float32"           # or "tf32" (set up by tasks.cli), "float16" (mixed precision)
    loss_scale: float = 2.0 ** 16    # float16: the initial loss scale ...
    loss_scale_window: int = 2000    # ... doubled after this many steps without overflow
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args) -> TrainConfig:
        return cls(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
                   schedule=args.schedule, min_lr=args.min_lr, grad_clip=args.grad_clip,
                   grad_accum=args.grad_accum, max_steps=args.max_steps, eval_every=args.eval_every,
                   eval_batches=args.eval_batches, keep=args.keep, progress=not args.no_progress,
                   log_every=args.log_every, save_every=args.save_every, dtype=args.dtype,
                   loss_scale=args.loss_scale, loss_scale_window=args.loss_scale_window)

    def check(self) -> None:
        for name in ("epochs", "grad_accum", "eval_every", "eval_batches", "log_every", "loss_scale_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.save_every is not None and self.save_every < 1:
            raise ValueError(f"--save-every must be at least 1, got {self.save_every}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.loss_scale <= 0:
            raise ValueError(f"--loss-scale must be positive, got {self.loss_scale}")


@dataclass
class Periodic:
    """An extra evaluation every `every` updates and after the last (e.g. HellaSwag), logged as
    {"type": name, "step", "epoch", "tokens_seen", **fn(model)}. It writes to the run folder, so
    with data parallel it belongs to rank 0 alone."""
    name: str
    every: int
    fn: Callable[[Any], dict[str, Any]]


def mean_loss(model, loader, loss_fn: Callable, max_batches: int) -> float:
    """Average of loss_fn over the first `max_batches` batches of `loader`, in eval mode."""
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    with mg.no_grad():
        for i, batch in enumerate(loader.peek() if hasattr(loader, "peek") else loader):
            if i >= max_batches:
                break
            total += float(loss_fn(model, batch).item())
            n += 1
    model.train(was_training)
    return total / n if n else float("nan")


class Trainer:
    """Fits `model` with AdamW on `train_loader` (a tasks.data.BatchLoader-like object with
    len(), iteration, state_dict() and load_state_dict()).

    loss_fn(model, batch) -> scalar Tensor
    evaluate(model) -> dict of metrics (e.g. train_loss, val_loss), called every eval_every updates
    sample(model) -> str printed after each evaluation (optional)
    tokens_in(batch) -> how many tokens (or examples) a batch counts for in "seen"
    """

    def __init__(self, model, train_loader, loss_fn: Callable, evaluate: Callable, run_dir: str | Path,
                 config: TrainConfig, sample: Callable | None = None,
                 tokens_in: Callable[[Any], int] = lambda b: int(b[0].size), plot: Callable | None = None,
                 periodic: Sequence[Periodic] = ()):
        config.check()
        self.periodic = list(periodic)
        self.model, self.loader, self.loss_fn, self.evaluate = model, train_loader, loss_fn, evaluate
        self.run_dir, self.cfg, self.sample, self.tokens_in, self.plot = Path(run_dir), config, sample, tokens_in, plot
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        # weight decay on matrices only (as GPT-2 and most LLM recipes): not on biases, LayerNorm
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": config.weight_decay}]
        if no_decay:
            groups.append({"params": no_decay, "weight_decay": 0.0})
        self.optimizer = AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.steps_per_epoch = max(len(train_loader) // config.grad_accum, 1)
        total = self.steps_per_epoch * config.epochs
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        self.total_steps = total
        min_lr = config.lr if config.schedule == "constant" else config.min_lr
        self.scheduler = CosineWithWarmup(self.optimizer, config.warmup, total, min_lr=min_lr)
        self.step = self.start_step = 0
        self.tokens_seen = 0
        self.stopped_by: int | None = None  # the signal that stopped fit(), if one did
        self.exit_code = 0
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self._bar = None
        n_params = sum(p.size for p in model.parameters())
        self.save_every = config.save_every or (
            config.eval_every if n_params < BIG_MODEL else max(config.eval_every, BIG_SAVE_EVERY))
        # the training loss stays on the device between log steps: (sum of losses, how many)
        self._loss_sum, self._loss_count = None, 0
        self.amp = None
        if config.dtype == "float16":  # float16 forward/backward over the float32 parameters
            self.amp = MixedPrecision(model.parameters(),
                                      LossScaler(config.loss_scale, growth_interval=config.loss_scale_window))

    # ------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        state = {"tokens_seen": self.tokens_seen, "epoch": self.step / self.steps_per_epoch,
                 "loader": self.loader.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": mg.get_rng_state()}
        if self.amp is not None:
            state["loss_scaler"] = self.amp.scaler.state_dict()
        return state

    def save(self) -> Path:
        return save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, self._state(),
                               keep=self.cfg.keep)

    def resume(self) -> bool:
        """Continue from the newest checkpoint, if any; metrics after it are dropped (they will
        be produced again)."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        state = load_checkpoint(ckpt, self.model, self.optimizer)
        try:
            self.step, self.tokens_seen = state["step"], state["tokens_seen"]
            self.loader.load_state_dict(state["loader"])
            self.scheduler.load_state_dict(state["scheduler"])
            mg.set_rng_state(state["rng"])
            if self.amp is not None and "loss_scaler" in state:
                self.amp.scaler.load_state_dict(state["loss_scaler"])
        except (KeyError, TypeError) as e:
            raise CheckpointError(f"{ckpt / 'state.json'} lacks {e} or holds it in another shape; "
                                  "the checkpoint cannot be resumed") from None
        if self.metrics_path.exists():  # a torn last line (killed mid-write) is dropped with the rest
            rewrite_jsonl(self.metrics_path, [r for r in read_metrics(self.run_dir) if r["step"] <= self.step])
        tqdm.write(f"resumed from {ckpt} (step {self.step})")
        return True

    def _log(self, record: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, record)

    # ------------------------------------------------------------ the loop
    def run(self, resume: bool, summary: bool = True) -> dict[str, Any] | None:
        """What a task's main does: fit(), from the newest checkpoint when `resume`. Returns the
        last evaluation, or None when Ctrl-C or SIGTERM stopped the run (fit has saved it by then;
        `exit_code` is then 130 or 143, what the task's main returns)."""
        if resume and not self.resume():
            print(f"no checkpoint in {self.run_dir}: starting from the beginning")
        try:
            last = self.fit()
        except KeyboardInterrupt:
            self.exit_code = 128 + (self.stopped_by or signal.SIGINT)
            return None
        if summary and last:
            print(f"done: step {self.step}, train loss {last.get('train_loss', float('nan')):.3f}, "
                  f"val loss {last.get('val_loss', float('nan')):.3f}; outputs in {self.run_dir}")
        return last

    def fit(self) -> dict[str, Any]:
        """Train until the epochs or max_steps are done. Returns the last evaluation."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg
        self.start_step = self.step  # after any resume: what this session adds starts here
        self.stopped_by = None

        def on_signal(signum, frame):
            if self.stopped_by is not None:
                # a second signal stops at once: a checkpoint being written is discarded whole
                # (save_checkpoint), a torn metrics line is dropped on resume
                raise KeyboardInterrupt
            self.stopped_by = signum  # finish the current step, then save and stop

        old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        last_eval: dict[str, Any] = {}
        bar = self._bar = tqdm(total=self.total_steps, initial=self.step, disable=not cfg.progress,
                               dynamic_ncols=True, desc="train")
        self.model.train()
        t_last, tok_last = time.perf_counter(), self.tokens_seen
        try:
            while self.step < self.total_steps:
                s = self.step + 1
                done = s >= self.total_steps
                evaluate, save = s % cfg.eval_every == 0 or done, s % self.save_every == 0 or done
                # the loss comes to the host only at log steps, and before any checkpoint, so that
                # a non-finite loss is caught before it could be saved
                self._update(fetch_loss=s % cfg.log_every == 0 or evaluate or save)
                bar.update(1)
                for extra in self.periodic:
                    if self.step % extra.every == 0 or done:
                        self._run_periodic(extra)
                if evaluate:
                    now = time.perf_counter()
                    rate = (self.tokens_seen - tok_last) / max(now - t_last, 1e-9)
                    last_eval = self._evaluate(rate)
                if save:
                    self.save()
                if evaluate or save:  # the next tokens/s leaves evaluation and saving out
                    t_last, tok_last = time.perf_counter(), self.tokens_seen
                if self.stopped_by is not None:
                    pending = self._fetch_loss(self.step)
                    if pending is not None:
                        self._log_step(pending)
                    path = self.save() if not save else latest_checkpoint(self.run_dir)
                    tqdm.write(f"interrupted: saved {path} on {signal.Signals(self.stopped_by).name}; "
                               f"continue with --out {self.run_dir} --resume")
                    raise KeyboardInterrupt
        finally:
            bar.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        return last_eval

    def _update(self, fetch_loss: bool = True) -> None:
        """One optimizer step over grad_accum micro-batches. With fetch_loss, the losses summed on
        the device since the last fetch come to the host, are checked and logged before the
        update (so a non-finite loss stops the run with the weights untouched)."""
        cfg = self.cfg
        amp = self.amp
        if amp is not None:
            amp.half()
        for _ in range(cfg.grad_accum):
            batch = self.loader.next_batch()
            loss = self.loss_fn(self.model, batch)
            # no float(): adding up on the device costs no host-device sync
            self._loss_sum = loss.data if self._loss_sum is None else self._loss_sum + loss.data
            self._loss_count += 1
            if amp is not None:  # float16: a scaled loss, so that small gradients do not underflow
                loss = loss * (amp.scaler.scale / cfg.grad_accum)
            elif cfg.grad_accum > 1:
                loss = loss / cfg.grad_accum
            loss.backward()
            self.tokens_seen += self.tokens_in(batch)
        # float16: the float32 weights back, the gradients unscaled and checked for overflow
        finite = amp is None or amp.restore()
        loss = self._fetch_loss(self.step + 1) if fetch_loss else None
        if finite:
            if cfg.grad_clip > 0:
                clip_grad_norm_(self.optimizer.params, cfg.grad_clip)
            self.optimizer.step()  # float16: skipped when a gradient overflowed (counted in metrics)
        self.optimizer.zero_grad()
        self.step += 1
        self.scheduler.step()
        if loss is not None:
            self._log_step(loss)

    def _fetch_loss(self, step: int) -> float | None:
        """The mean loss since the last fetch, brought to the host (one sync); NonFiniteLoss
        when it is inf or NaN. None when nothing is pending."""
        if not self._loss_count:
            return None
        loss = float(self._loss_sum) / self._loss_count
        self._loss_sum, self._loss_count = None, 0
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"loss is {loss} at step {step}; stopped. The last good checkpoint is "
                f"{latest_checkpoint(self.run_dir) or '(none yet)'}; try a lower --lr or --grad-clip")
        return loss

    def _log_step(self, loss: float) -> None:
        record = {"type": "step", "step": self.step, "loss": loss, "lr": self.optimizer.lr,
                  "tokens_seen": self.tokens_seen}
        if self.amp is not None:
            record.update(loss_scale=self.amp.scaler.scale, skipped_steps=self.amp.scaler.skipped)
        self._log(record)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.3f}", lr=f"{self.optimizer.lr:.2e}")

    def _run_periodic(self, extra: Periodic) -> None:
        was_training = self.model.training
        metrics = extra.fn(self.model)
        self.model.train(was_training)
        self._log({"type": extra.name, "step": self.step, "epoch": self.step / self.steps_per_epoch,
                   "tokens_seen": self.tokens_seen, **metrics})
        shown = " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        tqdm.write(f"step {self.step} {extra.name}: {shown}")

    def _evaluate(self, tokens_per_s: float) -> dict[str, Any]:
        metrics = self.evaluate(self.model)
        record = {"type": "eval", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                  "tokens_seen": self.tokens_seen, "lr": self.optimizer.lr,
                  "tokens_per_s": tokens_per_s, **metrics}
        for k in ("train_loss", "val_loss"):
            if k in metrics and math.isfinite(metrics[k]) and metrics[k] < 50:
                record[k.replace("loss", "ppl")] = math.exp(metrics[k])
        self._log(record)
        shown = " ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
        tqdm.write(f"step {self.step} (epoch {record['epoch']:.2f}): {shown}, {tokens_per_s:.0f} tok/s")
        if self.sample is not None:
            tqdm.write(f"  sample: {self.sample(self.model)!r}")
        if self.plot is not None:
            self.plot(self.run_dir)
        return record


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a torn last line (the process died mid-write) is skipped."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")
