"""The memory a training run needs, checked before its model is built: gpt2.memory's estimate
of one step for the model and batch it is asked for, against what the machine has."""
from __future__ import annotations

import os

from gpt2 import GPT2Config
from gpt2.memory import training_memory

from ..common.memory import check_memory


def check_training_memory(config: GPT2Config, batch_size: int, context: int, device: str, *, dtype: str = "float32",
                          trained_parameters: int | None = None, layers_with_grad: int | None = None,
                          vocab_logits: bool = True, resuming: bool = False) -> None:
    """A UsageError before anything is allocated when a step of `batch_size` x `context` tokens
    of this model (with AdamW over `trained_parameters`, all by default) needs more memory than
    `device` has; `layers_with_grad` blocks keep activations (fewer when the first are frozen)."""
    fused = device == "cuda" and os.environ.get("MINIGRAD_FUSED", "1") != "0"
    estimate = training_memory(config, batch_size, context, trained_parameters=trained_parameters,
                               layers_with_grad=layers_with_grad, vocab_logits=vocab_logits,
                               fused_attention=fused, mixed_precision=dtype == "float16")
    what = (f"a training step of this run (its --batch-size {batch_size} x --context {context}, from run.json)"
            if resuming else f"a training step of --batch-size {batch_size} x --context {context}")
    check_memory(estimate, device, f"{what} on a model of {config.n_layer} layers x {config.n_embd} wide")
