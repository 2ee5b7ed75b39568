"""The training loop every task shares: AdamW with warmup and a schedule, clipping, gradient
accumulation, periodic evaluation, metrics.jsonl, checkpoints, exact resume, Ctrl-C safety,
float16 mixed precision (minigrad.amp), and no host-device sync between log steps.

A task supplies the model, the loaders and three small functions (how to get a loss from a
batch, what to evaluate, what to print as a sample; evaluation.py has the usual ones) and a
TrainConfig (config.py); `Trainer.run` does the rest.

Data parallel (under `mpiexec -n N`, see minigrad.distributed): a task that opts in
(`data_parallel=True`) hands the Trainer loaders of GLOBAL batches (N x --batch-size rows); rank r
trains on its rows (`rank_rows`), gradients are summed over ranks in one all-reduce of the
optimizer's flat gradient buffer, and rank 0 alone writes the run folder and shows progress.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

import minigrad as mg
import minigrad.distributed as dist
from minigrad.amp import LossScaler, MixedPrecision
from minigrad.optim import AdamW, CosineWithWarmup, clip_grad_norm_

from ..common.errors import TaskError
from ..common.guard import pause_point
from ..common.jsonfiles import append_jsonl, rewrite_jsonl
from ..common.progress import progress_bar
from ..runs.checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint, remove_stale_temporaries,
                               save_checkpoint)
from ..runs.folder import append_history
from .config import BIG_MODEL, BIG_SAVE_EVERY, TrainConfig
from .evaluation import Periodic, read_metrics
from .parallel import check_ranks_agree, local_batch


class NonFiniteLoss(TaskError):
    """The loss became inf or NaN; training stops and keeps the last good checkpoint."""


def adamw_for(model, config: TrainConfig) -> AdamW:
    """AdamW over the trainable parameters, with weight decay on matrices only (as GPT-2 and most
    LLM recipes): not on biases and LayerNorm."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)


class Trainer:
    """Fits `model` with AdamW on `train_loader` (a tasks.data.loaders.EpochLoader: BatchLoader, ShardLoader, with
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
        self.optimizer = adamw_for(model, config)
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
            check_ranks_agree(config, train_loader, self.total_steps, model)
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
        if (self.run_dir / "run.json").is_file():
            append_history(self.run_dir, {"weights_only": ckpt.name,
                                          "why": "optimizer.safetensors missing; AdamW's moments restarted from zero"})

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
        self.start_step = self.step  # after any resume: what this session adds starts here
        self.stopped_by = None
        self._saved_on_signal = False
        last_eval: dict[str, Any] = {}
        with self._stop_on_signals():
            self._bar = progress_bar(total=self.total_steps, initial=self.step, dynamic_ncols=True, desc="train",
                                     disable=not (self.cfg.progress and self.main))
            self.model.train()
            self._clock = (time.perf_counter(), self.tokens_seen)
            try:
                while self.step < self.total_steps:
                    record = self._step()
                    last_eval = last_eval if record is None else record
            finally:
                self._bar.close()
        return last_eval

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT (Ctrl-C) and SIGTERM (kill, a scheduler; mpiexec passes it on to every rank):
        finish the current step, then save and stop. A second signal stops at once: a checkpoint
        being written is discarded whole (save_checkpoint), a torn metrics line is dropped on resume."""
        def on_signal(signum, frame):
            if self.stopped_by is not None:
                raise KeyboardInterrupt
            self.stopped_by = signum

        old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in old_handlers.items():
                signal.signal(sig, handler)

    def _step(self) -> dict[str, Any] | None:
        """One update, then what is due after it: the periodic extras, an evaluation (returned),
        a checkpoint, and the stop a signal asked for."""
        cfg, s = self.cfg, self.step + 1
        done = s >= self.total_steps
        evaluate, save = s % cfg.eval_every == 0 or done, s % self.save_every == 0 or done
        # the loss comes to the host only at log steps, and before any checkpoint, so that a
        # non-finite loss is caught before it could be saved
        self._update(fetch_loss=s % cfg.log_every == 0 or evaluate or save)
        self._bar.update(1)
        for extra in self.periodic:  # rank 0 alone (e.g. HellaSwag); the others wait for it
            if self.main and (self.step % extra.every == 0 or done):
                self._run_periodic(extra)
        record = self._evaluate_now() if evaluate else None
        if save:
            self.save()
        if evaluate or save:  # the next tokens/s leaves evaluation and saving out
            self._clock = (time.perf_counter(), self.tokens_seen)
        if self._stop:  # every rank agreed on it in _update's all-reduce
            self._stop_now(saved=save)
        return record

    def _evaluate_now(self) -> dict[str, Any]:
        t_last, tok_last = self._clock
        record = self._evaluate((self.tokens_seen - tok_last) / max(time.perf_counter() - t_last, 1e-9))
        if not math.isfinite(record.get("train_loss", 0.0)):  # weights not worth saving
            raise NonFiniteLoss(
                f"the training loss evaluated at step {self.step} is {record['train_loss']}; "
                f"stopped, not saved. The last good checkpoint is "
                f"{latest_checkpoint(self.run_dir) or '(none yet)'}; try a lower --lr or --grad-clip")
        return record

    def _stop_now(self, saved: bool) -> None:
        """Log the pending loss, save (unless this step just did), say how to resume, stop."""
        pending = self._fetch_loss(self.step)
        if pending is not None:
            self._log_step(pending)
        path = latest_checkpoint(self.run_dir) if saved else self.save()
        self._saved_on_signal = True
        if self.main:
            why = signal.Signals(self.stopped_by).name if self.stopped_by else "another rank's signal"
            tqdm.write(f"interrupted: saved {path} on {why}; continue with --out {self.run_dir} --resume")
        raise KeyboardInterrupt

    def _update(self, fetch_loss: bool = True) -> None:
        """One optimizer step over grad_accum (global) micro-batches. With fetch_loss, the losses
        summed on the device since the last fetch come to the host, are checked and logged
        before the update (so a non-finite loss stops the run with the weights untouched).
        On several ranks the loss is fetched every step, with the stop flag in one all-reduce."""
        if self.amp is not None:
            self.amp.half()
        for _ in range(self.cfg.grad_accum):
            self._micro_step()
        # float16: the float32 weights back, the gradients unscaled and checked for overflow
        finite = self.amp is None or self.amp.restore()
        if self.world > 1:
            finite, fetch_loss = self._reduce_over_ranks(finite), True
        else:
            self._stop = self.stopped_by is not None
        loss = self._fetch_loss(self.step + 1) if fetch_loss else None
        if finite:
            if self.cfg.grad_clip > 0:
                clip_grad_norm_(self.optimizer.params, self.cfg.grad_clip)
            self.optimizer.step()  # float16: skipped when a gradient overflowed (counted in metrics)
        self.optimizer.zero_grad()
        self.step += 1
        self.scheduler.step()
        if loss is not None:
            self._log_step(loss)

    def _micro_step(self) -> None:
        """Forward and backward of one (global) micro-batch's rows of this rank."""
        batch = self.loader.next_batch()
        self.tokens_seen += self.tokens_in(batch)  # the global batch's
        self._loss_count += 1
        part, rows = local_batch(batch)
        # the global loss is the row-weighted mean of the ranks' means: weight this rank's by
        # rows_r / rows, times W because the all-reduced gradient is divided by W below
        share = 1.0 if rows is None else len(part[0]) / rows
        if share == 0:
            return  # a short last batch left this rank no rows
        loss = self.loss_fn(self.model, part)
        # no float(): adding up on the device costs no host-device sync
        weighted = loss.data if share == 1.0 else loss.data * share
        self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
        accum = self.cfg.grad_accum
        if self.amp is not None:  # float16: a scaled loss, so that small gradients do not underflow
            loss = loss * (self.amp.scaler.scale * share * self.world / accum)
        elif self.world > 1:
            loss = loss * (share * self.world / accum)
        elif accum > 1:
            loss = loss / accum
        loss.backward()
        pause_point("step")

    def _reduce_over_ranks(self, finite: bool) -> bool:
        """One small all-reduce for the loss, the stop flag (all ranks stop at the same step) and
        overflow, then one for every gradient at once: the optimizer's flat buffer. Returns
        whether every rank's gradients are finite."""
        local = 0.0 if self._loss_sum is None else float(self._loss_sum)
        total, stop, overflow = dist.all_reduce_sum([local, float(self.stopped_by is not None), float(not finite)])
        self._loss_sum, self._stop, finite = total, stop > 0, overflow == 0
        if finite:
            flat = self.optimizer.flat
            flat.fill_missing_grads()
            flat.gather_grads()
            dist.all_reduce_(flat.grad)
            flat.grad *= flat.grad.dtype.type(1.0 / self.world)
        return finite

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
