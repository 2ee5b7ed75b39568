"""Resuming a run: the part of the Trainer that reads the run folder back (a mixin of
tasks.training.trainer.Trainer). `load` checks and loads, writing nothing; `begin` starts
writing, once the command has begun the run (runs.folder.begin_run)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

import minigrad as mg
from files.schema import SchemaError, check

from ..common.errors import UsageError
from ..common.jsonfiles import rewrite_jsonl
from ..runs.checkpoint import load_checkpoint, remove_stale_temporaries
from ..runs.folder import RunSpec, append_history, new_run_hint
from ..runs.schema import LOOP_STATE, check_loader_state, checkpoint_folders, read_metrics


class Resuming:
    """load() and begin() of the Trainer (which holds the attributes used here)."""

    def load(self, run: RunSpec | None = None) -> bool:
        """--resume, checked and loaded into memory; nothing is written (begin() does that): the
        newest checkpoint (its manifest, state.json, weights, optimizer state) and metrics.jsonl
        (each line one of our records, in order, the checkpoint's step among them). No checkpoint
        (a run stopped before its first): from step 0. False when the run is finished already
        and nothing extends it (said, with how to extend it): the task then ends, writing nothing."""
        found = checkpoint_folders(self.run_dir)
        ckpt = found[-1][1] if found else None
        self._loaded, self._weights_only_from = True, None
        if ckpt is not None:
            if self.cfg.weights_only and not (ckpt / "optimizer.safetensors").is_file():
                state = load_checkpoint(ckpt, self.model)  # the weights, checked against the manifest
                self._weights_only_from = ckpt
            else:
                state = load_checkpoint(ckpt, self.model, self.optimizer)
            self._restore(state, ckpt / "state.json")
            self._last_saved = self.step
        if run is not None and run.changes and self.total_steps <= self.step:
            asked = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in run.changes.items())
            raise UsageError(f"{asked}: this run is at step {self.step} already, and that ends it at step "
                             f"{self.total_steps}; give more to extend it")
        records = read_metrics(self.metrics_path, last_step=max(self.total_steps, self.step))
        if self.step and not any(r["type"] == "step" and r["step"] == self.step for r in records):
            raise SchemaError(str(self.metrics_path), "", f"has no record of step {self.step}, the step of "
                              f"{ckpt}: its records were cut short or lost; restore it, or start a new run "
                              f"from that checkpoint with --init {ckpt}")
        self._kept = [r for r in records if r["step"] <= self.step]
        self._resumed_from = ckpt
        if ckpt is not None and self.step >= self.total_steps:
            if self.main:
                print(self._finished_note("" if run is None else run.task))
            return False
        return True

    def _finished_note(self, task: str) -> str:
        """What to say of a finished run resumed as it is: its end, and how to go on."""
        by_steps = self.cfg.max_steps is not None and self.cfg.max_steps <= self.steps_per_epoch * self.cfg.epochs
        end = f"--max-steps {self.cfg.max_steps}" if by_steps else f"--epochs {self.cfg.epochs}"
        later = f"--max-steps N (N above {self.step})" if by_steps else f"--epochs N (N above {self.cfg.epochs})"
        how = (f"its {self.cfg.schedule} schedule ends there, so it cannot be extended; "
               f"{new_run_hint(task, self.run_dir)}" if self.cfg.schedule != "constant" else
               f"to train on, give it a later end: --out {self.run_dir} --resume {later}")
        return f"{self.run_dir} is finished: it reached step {self.step}, its end ({end}); nothing to do ({how})"

    def _restore(self, state: dict[str, Any], path: Path) -> None:
        """The loop's position from a checked state.json: step, data loader, schedule, RNG, loss scale."""
        check(state, LOOP_STATE, str(path))
        check_loader_state(state, self.loader.state_dict(), path, len(self.loader))
        expected = {"peak_lr": self.cfg.lr, "warmup_steps": self.cfg.warmup,
                    "min_lr": self.cfg.lr if self.cfg.schedule == "constant" else self.cfg.min_lr}
        for key, value in expected.items():
            if not math.isclose(state["scheduler"][key], value, rel_tol=1e-12, abs_tol=0.0):
                raise SchemaError(str(path), f"scheduler.{key}", f"is {state['scheduler'][key]!r}, but run.json's "
                                                                 f"arguments give {value!r}: not this run's checkpoint")
        self.step, self.tokens_seen = state["step"], state["tokens_seen"]
        self.loader.load_state_dict(state["loader"])
        self.scheduler.load_state_dict(state["scheduler"])
        try:
            mg.set_rng_state(state["rng"])
        except (ValueError, TypeError, KeyError) as e:
            raise SchemaError(str(path), "rng", f"is not a random generator's state ({e})") from None
        if self.amp is not None and "loss_scaler" in state:
            self.amp.scaler.load_state_dict(state["loss_scaler"])

    def begin(self) -> None:
        """Start writing (rank 0): remove what a killed checkpoint write left, drop the metrics
        records past the checkpoint resumed from (they will be produced again; a torn last line
        too), and record a resume from the weights alone."""
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temporaries(self.run_dir):
            tqdm.write(f"removed {stale}, a checkpoint whose writing was cut short")
        if not getattr(self, "_loaded", False):
            return
        if self.metrics_path.exists():
            rewrite_jsonl(self.metrics_path, self._kept)
        if self._weights_only_from is not None:
            self._record_weights_only(self._weights_only_from)
        if self._resumed_from is not None:
            tqdm.write(f"resumed from {self._resumed_from} (step {self.step})")
        else:
            tqdm.write(f"no checkpoint in {self.run_dir}: starting from the beginning")

    def _record_weights_only(self, ckpt: Path) -> None:
        """--resume --weights-only without optimizer state: said, and kept in run.json's history."""
        tqdm.write(f"note: {ckpt / 'optimizer.safetensors'} is missing: continuing from the weights alone "
                   "(--weights-only); AdamW's moments start again from zero, so this is not an exact continuation")
        if (self.run_dir / "run.json").is_file():
            append_history(self.run_dir, {"weights_only": ckpt.name,
                                          "why": "optimizer.safetensors missing; AdamW's moments restarted from zero"})

