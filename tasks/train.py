"""The training loop every task shares: AdamW with warmup and a schedule, clipping, gradient
accumulation, periodic evaluation, metrics.jsonl, checkpoints, exact resume, Ctrl-C safety,
float16 mixed precision (minigrad.amp), and no host-device sync between log steps.

A task supplies the model, the loaders and three small functions (how to get a loss from a
batch, what to evaluate, what to print as a sample); `Trainer.fit` does the rest.

Data parallel (under `mpiexec -n N`, see minigrad.distributed): a task that opts in
(`data_parallel=True`) hands the Trainer loaders of GLOBAL batches (N x --batch-size rows); rank r
trains on its rows (`rank_rows`), gradients are summed over ranks in one all-reduce of the
optimizer's flat gradient buffer, and rank 0 alone writes the run folder and shows progress.
"""
from __future__ import annotations

import hashlib
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

import minigrad as mg
import minigrad.functional as F
import minigrad.distributed as dist
from minigrad.amp import LossScaler, MixedPrecision
from minigrad.optim import AdamW, CosineWithWarmup, clip_grad_norm_

from .cli import TaskError, UsageError, pause_point
from .checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint, read_json, remove_stale_temporaries,
                         save_checkpoint, write_json)
from .jsonl import append_jsonl, read_jsonl, rewrite_jsonl
from .parallel import code_fingerprint, local_batch
from .progress import progress_bar


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
    weights_only: bool = False       # resume from the weights alone when the optimizer state is missing
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args) -> TrainConfig:
        return cls(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
                   schedule=args.schedule, min_lr=args.min_lr, grad_clip=args.grad_clip,
                   grad_accum=args.grad_accum, max_steps=args.max_steps, eval_every=args.eval_every,
                   eval_batches=args.eval_batches, keep=args.keep, progress=not args.no_progress,
                   log_every=args.log_every, save_every=args.save_every, dtype=args.dtype,
                   loss_scale=args.loss_scale, loss_scale_window=args.loss_scale_window,
                   weights_only=getattr(args, "weights_only", False))

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


@dataclass
class Periodic:
    """An extra evaluation every `every` updates and after the last (e.g. HellaSwag), logged as
    {"type": name, "step", "epoch", "tokens_seen", **fn(model)}. It writes to the run folder, so
    with data parallel it belongs to rank 0 alone."""
    name: str
    every: int
    fn: Callable[[Any], dict[str, Any]]


def mean_loss(model, loader, loss_fn: Callable, max_batches: int) -> float:
    """Average of loss_fn over the first `max_batches` batches of `loader`, in eval mode.

    Under several ranks each evaluates its rows of every (global) batch and the row-weighted
    average is summed over ranks, so the number covers the same tokens whatever the world size.
    """
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    with mg.no_grad():
        for i, batch in enumerate(loader.peek() if hasattr(loader, "peek") else loader):
            if i >= max_batches:
                break
            part, rows = local_batch(batch)
            if rows is None:
                total += float(loss_fn(model, part).item())
            elif len(part[0]):
                total += float(loss_fn(model, part).item()) * len(part[0]) / rows
            n += 1
    model.train(was_training)
    total = dist.all_reduce_sum([total])[0]
    return total / n if n else float("nan")


def lm_loss(model, batch):
    """Next-token cross-entropy of a GPT-2 on a batch (x, y) of token ids (B, T); targets of -100
    (instruct's padding and masked prompts) add nothing."""
    x, y = batch  # host arrays: the model and cross_entropy check them there, then copy them in
    return F.cross_entropy(model(x), y)


def loss_evaluation(loaders: dict[str, Any], loss_fn: Callable, batches: int) -> Callable:
    """The `evaluate` of a language-model task: {NAME_loss: mean loss of `batches` batches} for
    each loader, e.g. {"train": ..., "val": ...}."""
    return lambda model: {f"{name}_loss": mean_loss(model, loader, loss_fn, batches)
                          for name, loader in loaders.items()}


def plot_losses(run_dir: str | Path) -> Path | None:
    """loss.png of a run: train and validation loss of every evaluation in metrics.jsonl."""
    from .plots import plot_curves
    return plot_curves([r for r in read_metrics(run_dir) if r["type"] == "eval"], ["train_loss", "val_loss"],
                       Path(run_dir) / "loss.png", "loss")


class Trainer:
    """Fits `model` with AdamW on `train_loader` (a tasks.loaders.EpochLoader: BatchLoader, ShardLoader, with
    len(), iteration, state_dict() and load_state_dict()).

    loss_fn(model, batch) -> scalar Tensor
    evaluate(model) -> dict of metrics (e.g. train_loss, val_loss), called every eval_every updates
    sample(model) -> str printed after each evaluation (optional)
    tokens_in(batch) -> how many tokens (or examples) a batch counts for in "seen"
    """

    def __init__(self, model, train_loader, loss_fn: Callable, evaluate: Callable, run_dir: str | Path,
                 config: TrainConfig, sample: Callable | None = None,
                 tokens_in: Callable[[Any], int] = lambda b: int(b[0].size), plot: Callable | None = None,
                 periodic: Sequence[Periodic] = (), unit: str = "tokens", data_parallel: bool = False):
        config.check()
        self.periodic = list(periodic)
        self.unit = unit  # what tokens_in counts: "tokens", or "examples" for a classifier
        self.world, self.rank, self.main = dist.world_size(), dist.rank(), dist.is_main()
        if self.world > 1 and not data_parallel:
            raise TaskError(f"this task does not train on several processes yet (started on {self.world} "
                            "ranks by an MPI launcher): run it as one process")
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
        self._stop = False  # all ranks agreed to stop after this step (a signal reached one)
        if self.world > 1:
            self._check_ranks_agree()
            dist.broadcast_parameters(self.optimizer.flat.data)  # one starting point, bit for bit
        self.tokens_seen = 0
        self.stopped_by: int | None = None  # the signal that stopped fit(), if one did
        self._saved_on_signal = False
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
                                      LossScaler(config.loss_scale, growth_interval=config.loss_scale_window),
                                      flat=self.optimizer.flat)

    def _check_ranks_agree(self) -> None:
        """Ranks must run the same code on the same data with the same settings."""
        h = hashlib.sha256()
        h.update(json.dumps({k: v for k, v in vars(self.cfg).items() if k != "progress"},
                            sort_keys=True, default=str).encode())
        h.update(repr((len(self.loader), self.total_steps, self.loader.state_dict(),
                       [(n, p.shape) for n, p in self.model.named_parameters()])).encode())
        first = next(iter(self.loader.peek())) if hasattr(self.loader, "peek") else None
        for a in first or ():
            h.update(getattr(a, "tobytes", lambda: repr(a).encode())())
        dist.check_same("the code (sha256 of minigrad, gpt2, tasks)", code_fingerprint())
        dist.check_same("the training settings and data (loader, first batch, model shapes)", h.hexdigest()[:16])

    # ------------------------------------------------------------ state
    def _state(self) -> dict[str, Any]:
        state = {"tokens_seen": self.tokens_seen, "epoch": self.step / self.steps_per_epoch,
                 "loader": self.loader.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": mg.get_rng_state()}
        if self.amp is not None:
            state["loss_scaler"] = self.amp.scaler.state_dict()
        return state

    def save(self) -> Path:
        """Rank 0 writes the checkpoint (every rank holds the same weights); the others wait for
        it, so a job that ends right after has the checkpoint on disk."""
        path = self.run_dir / "checkpoints" / f"step_{self.step:08d}"
        if self.main:
            path = save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, self._state(),
                                   keep=self.cfg.keep)
        dist.barrier()
        return path

    def resume(self) -> bool:
        """Continue from the newest checkpoint, if any; metrics after it are dropped (they will
        be produced again)."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        if self.cfg.weights_only and not (ckpt / "optimizer.safetensors").is_file():
            state = load_checkpoint(ckpt, self.model)  # the weights, checked against the manifest
            self._record_weights_only(ckpt)
        else:
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
        if self.main and self.metrics_path.exists():  # a torn last line (killed mid-write) is dropped
            rewrite_jsonl(self.metrics_path, [r for r in read_metrics(self.run_dir) if r["step"] <= self.step])
        if self.main:
            tqdm.write(f"resumed from {ckpt} (step {self.step})")
        return True

    def _record_weights_only(self, ckpt: Path) -> None:
        """--resume --weights-only without optimizer state: said, and kept in run.json's history."""
        if not self.main:
            return
        tqdm.write(f"note: {ckpt / 'optimizer.safetensors'} is missing: continuing from the weights alone "
                   "(--weights-only); AdamW's moments start again from zero, so this is not an exact continuation")
        run_json = self.run_dir / "run.json"
        if run_json.is_file():
            run = read_json(run_json)
            entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "weights_only": ckpt.name,
                     "why": "optimizer.safetensors missing; AdamW's moments restarted from zero"}
            write_json(run_json, {**run, "history": run.get("history", []) + [entry]})

    def _log(self, record: dict[str, Any]) -> None:
        if self.main:  # rank 0 alone writes the run folder
            append_jsonl(self.metrics_path, record)

    # ------------------------------------------------------------ the loop
    def run(self, resume: bool, summary: bool = True) -> dict[str, Any] | None:
        """What a task's main does: fit(), from the newest checkpoint when `resume`. Returns the
        last evaluation, or None when Ctrl-C or SIGTERM stopped the run (fit has saved it by then;
        `exit_code` is then 130 or 143, what the task's main returns)."""
        if resume and not self.resume() and self.main:
            print(f"no checkpoint in {self.run_dir}: starting from the beginning")
        try:
            # NumPy's overflow warnings say nothing the non-finite checks (loss, checkpoint) do not
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                last = self.fit()
        except KeyboardInterrupt:
            self.exit_code = 128 + (self.stopped_by or signal.SIGINT)
            if not self._saved_on_signal and self.main:
                tqdm.write(f"interrupted again: stopped at once without saving; continue from the last "
                           f"checkpoint ({latest_checkpoint(self.run_dir) or 'none yet'}) with "
                           f"--out {self.run_dir} --resume")
            return None
        if summary and last and self.main:
            print(f"done: step {self.step}, train loss {last.get('train_loss', float('nan')):.3f}, "
                  f"val loss {last.get('val_loss', float('nan')):.3f}; outputs in {self.run_dir}")
        return last

    def fit(self) -> dict[str, Any]:
        """Train until the epochs or max_steps are done. Returns the last evaluation."""
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in remove_stale_temporaries(self.run_dir):  # what a killed checkpoint write left
                tqdm.write(f"removed {stale}, a checkpoint whose writing was cut short")
        cfg = self.cfg
        self.start_step = self.step  # after any resume: what this session adds starts here
        self.stopped_by = None
        self._saved_on_signal = False

        def on_signal(signum, frame):
            if self.stopped_by is not None:
                # a second signal stops at once: a checkpoint being written is discarded whole
                # (save_checkpoint), a torn metrics line is dropped on resume
                raise KeyboardInterrupt
            self.stopped_by = signum  # finish the current step, then save and stop

        # SIGINT (Ctrl-C) and SIGTERM (kill, a scheduler; mpiexec passes it on to every rank)
        old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        last_eval: dict[str, Any] = {}
        bar = self._bar = progress_bar(total=self.total_steps, initial=self.step,
                               disable=not (cfg.progress and self.main), dynamic_ncols=True, desc="train")
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
                for extra in self.periodic:  # rank 0 alone (e.g. HellaSwag); the others wait for it
                    if self.main and (self.step % extra.every == 0 or done):
                        self._run_periodic(extra)
                if evaluate:
                    now = time.perf_counter()
                    rate = (self.tokens_seen - tok_last) / max(now - t_last, 1e-9)
                    last_eval = self._evaluate(rate)
                    if not math.isfinite(last_eval.get("train_loss", 0.0)):  # weights not worth saving
                        raise NonFiniteLoss(
                            f"the training loss evaluated at step {self.step} is {last_eval['train_loss']}; "
                            f"stopped, not saved. The last good checkpoint is "
                            f"{latest_checkpoint(self.run_dir) or '(none yet)'}; try a lower --lr or --grad-clip")
                if save:
                    self.save()
                if evaluate or save:  # the next tokens/s leaves evaluation and saving out
                    t_last, tok_last = time.perf_counter(), self.tokens_seen
                if self._stop:  # every rank agreed on it in _update's all-reduce
                    pending = self._fetch_loss(self.step)
                    if pending is not None:
                        self._log_step(pending)
                    path = self.save() if not save else latest_checkpoint(self.run_dir)
                    self._saved_on_signal = True
                    if self.main:
                        why = signal.Signals(self.stopped_by).name if self.stopped_by else "another rank's signal"
                        tqdm.write(f"interrupted: saved {path} on {why}; "
                                   f"continue with --out {self.run_dir} --resume")
                    raise KeyboardInterrupt
        finally:
            bar.close()
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)
        return last_eval

    def _update(self, fetch_loss: bool = True) -> None:
        """One optimizer step over grad_accum (global) micro-batches. With fetch_loss, the losses
        summed on the device since the last fetch come to the host, are checked and logged
        before the update (so a non-finite loss stops the run with the weights untouched).
        On several ranks the loss is fetched every step, with the stop flag in one all-reduce."""
        cfg = self.cfg
        amp = self.amp
        if amp is not None:
            amp.half()
        for _ in range(cfg.grad_accum):
            batch = self.loader.next_batch()
            self.tokens_seen += self.tokens_in(batch)  # the global batch's
            self._loss_count += 1
            part, rows = local_batch(batch)
            # the global loss is the row-weighted mean of the ranks' means: weight this rank's by
            # rows_r / rows, times W because the all-reduced gradient is divided by W below
            share = 1.0 if rows is None else len(part[0]) / rows
            if share == 0:
                continue  # a short last batch left this rank no rows
            loss = self.loss_fn(self.model, part)
            # no float(): adding up on the device costs no host-device sync
            weighted = loss.data if share == 1.0 else loss.data * share
            self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
            if amp is not None:  # float16: a scaled loss, so that small gradients do not underflow
                loss = loss * (amp.scaler.scale * share * self.world / cfg.grad_accum)
            elif self.world > 1:
                loss = loss * (share * self.world / cfg.grad_accum)
            elif cfg.grad_accum > 1:
                loss = loss / cfg.grad_accum
            loss.backward()
            pause_point("step")
        # float16: the float32 weights back, the gradients unscaled and checked for overflow
        finite = amp is None or amp.restore()
        if self.world > 1:
            # one small all-reduce for the loss and the stop flag (all ranks stop at the same
            # step), then one for every gradient at once: the optimizer's flat buffer
            local = 0.0 if self._loss_sum is None else float(self._loss_sum)
            total, stop, overflow = dist.all_reduce_sum([local, float(self.stopped_by is not None),
                                                         float(not finite)])
            self._loss_sum, self._stop, finite = total, stop > 0, overflow == 0
            fetch_loss = True
            if finite:
                flat = self.optimizer.flat
                flat.fill_missing_grads()
                flat.gather_grads()
                dist.all_reduce_(flat.grad)
                flat.grad *= flat.grad.dtype.type(1.0 / self.world)
        else:
            self._stop = self.stopped_by is not None
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

    def _evaluate(self, rate: float) -> dict[str, Any]:
        metrics = self.evaluate(self.model)  # every rank: mean_loss sums over them
        if not self.main:
            return metrics
        record = {"type": "eval", "step": self.step, "epoch": self.step / self.steps_per_epoch,
                  "tokens_seen": self.tokens_seen, "lr": self.optimizer.lr,
                  f"{self.unit}_per_s": rate, **metrics}
        for k in ("train_loss", "val_loss"):
            if k in metrics and math.isfinite(metrics[k]) and metrics[k] < 50:
                record[k.replace("loss", "ppl")] = math.exp(metrics[k])
        self._log(record)
        shown = " ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
        tqdm.write(f"step {self.step} (epoch {record['epoch']:.2f}): {shown}, {rate:.0f} {self.unit}/s")
        if self.sample is not None:
            tqdm.write(f"  sample: {self.sample(self.model)!r}")
        if self.plot is not None:
            self.plot(self.run_dir)
        return record


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a torn last line (the process died mid-write) is skipped."""
    return read_jsonl(Path(run_dir) / "metrics.jsonl")
