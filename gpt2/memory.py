"""How much memory a GPT-2 needs, from its config and the batch alone: checked before anything is
allocated, so that a size the machine cannot hold is one clear message instead of a MemoryError
(or the kernel's OOM killer) minutes into a run.

    est = training_memory(config, batch_size=8, context=1024)
    est.total, est.largest          # bytes; "activations" -> lower the batch size or the context

The figures are what minigrad allocates, counted from its ops (tests/test_memory_estimate.py
holds them against tracemalloc's count of NumPy's allocations at small sizes):

- parameters: float32, plus a float16 copy under mixed precision;
- gradients: one float32 flat buffer over the trained parameters (minigrad.optim.FlatParameters);
- optimizer: AdamW's two moments, float32, over the trained parameters;
- activations: what the graph of one micro-batch keeps for its backward. The graph holds every
  op's output until backward has passed it. Itemized on the composite path, a block keeps 28
  floats a token per unit of width: ln_1 (output and normalised input, 2C), qkv (3C),
  attention's scaled q and contiguous k and v (3C) and its output and the heads side by side
  again (2C), c_proj (C), the residual (C), ln_2 (2C), c_fc (4C), GELU's tanh and output (8C),
  c_proj (C), the residual (C). The fused path of issue 22 (packed qkv heads, bias_residual,
  GELU with its bias) keeps more copies: 37.2 floats measured with tracemalloc on NumPy (dropout
  0 and 0.1, widths 64 and 128), so 38 are counted, dropout's masks included. The unfused
  attention keeps its probabilities, (B, H, T, T) floats a layer (and a byte mask under
  dropout); the fused CUDA attention keeps none. Around the blocks: the embeddings, their sum,
  ln_f (5C) and the logits (V a token);
- transient: what a step holds on top for a moment: the logits' gradient (V a token, as the
  forward's cross-entropy needs too), the head's weight gradient (V x C), a dozen widths a token
  (a block's gradients in flight) and, unfused, one layer's attention scores.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from .config import GPT2Config

FLOAT32, FLOAT16 = 4, 2
BLOCK_FLOATS_PER_WIDTH = 38        # floats a token keeps per unit of width in a block (see above)
BLOCK_DROPOUT_FLOATS = 0           # ... and under dropout: measured within the 38 above on the fused path
BLOCK_DROPOUT_BYTES = 0
OUTER_FLOATS_PER_WIDTH = 5         # embeddings, their sum, ln_f's output and normalised input
TRANSIENT_WIDTHS = 12              # gradients of a block's widest tensors in flight during backward
INTERPRETER = 256 * 2 ** 20        # Python, NumPy and the tokenizer, measured ~150-250 MB


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes each part needs; `total` is their sum, `largest` the part to make smaller."""
    parameters: int = 0
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    transient: int = 0
    kv_cache: int = 0
    buffers: int = 0               # a task's own: a shard being written, a loaded checkpoint, ...

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    @property
    def largest(self) -> str:
        return max((f.name for f in fields(self)), key=lambda name: getattr(self, name))

    def __add__(self, other: MemoryEstimate) -> MemoryEstimate:
        return MemoryEstimate(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def describe(self) -> str:
        """'12.3 GB (activations 10.1 GB, parameters 0.5 GB, ...)', largest parts first."""
        parts = sorted(((getattr(self, f.name), f.name.replace("_", " ")) for f in fields(self)), reverse=True)
        shown = ", ".join(f"{name} {size_text(n)}" for n, name in parts if n)
        return f"{size_text(self.total)} ({shown})"


def size_text(n: int) -> str:
    """A size in bytes as a person reads it: '40 MB', '3.62 GB', '2e+04 TB', '7.55e+04 PB'."""
    for unit, scale, start in (("PB", 1e15, 1e15), ("TB", 1e12, 1e12), ("GB", 1e9, 1e8)):
        if n >= start:
            return f"{n / scale:.3g} {unit}"
    return f"{n / 1e6:.3g} MB"


def parameter_count(config: GPT2Config) -> int:
    """The parameters of a GPT2(config): 124,439,808 for the 124M preset."""
    C, L = config.n_embd, config.n_layer
    per_block = (2 * 2 * C                               # ln_1, ln_2
                 + C * 3 * C + (3 * C if config.qkv_bias else 0) + C * C + C  # attention
                 + C * 4 * C + 4 * C + 4 * C * C + C)    # MLP
    head = 0 if config.tie_word_embeddings else config.vocab_size * C
    return config.vocab_size * C + config.n_ctx * C + L * per_block + 2 * C + head


def activation_bytes(config: GPT2Config, batch_size: int, context: int, *, layers: int | None = None,
                     vocab_logits: bool = True, dropout: bool | None = None, fused_attention: bool = False,
                     itemsize: int = FLOAT32) -> int:
    """What one micro-batch's graph keeps for backward: `layers` blocks recorded (all by default;
    fewer when the first ones are frozen), logits over the vocabulary at every position (a
    language model) or only a few numbers (a classifier's head on the last token)."""
    B, T, C, H = batch_size, context, config.n_embd, config.n_head
    L = config.n_layer if layers is None else layers
    dropout = config.dropout > 0 if dropout is None else dropout
    tokens = B * T
    per_token = BLOCK_FLOATS_PER_WIDTH * C + (BLOCK_DROPOUT_FLOATS * C if dropout else 0)
    block = tokens * (per_token * itemsize + (BLOCK_DROPOUT_BYTES * C if dropout else 0))
    if not fused_attention:
        block += B * H * T * T * (itemsize + (1 if dropout else 0))
    outer = tokens * (OUTER_FLOATS_PER_WIDTH * C + (config.vocab_size if vocab_logits else 0)) * itemsize
    return L * block + outer + tokens * 16  # + the int64 inputs and targets


def training_memory(config: GPT2Config, batch_size: int, context: int | None = None, *,
                    trained_parameters: int | None = None, layers_with_grad: int | None = None,
                    vocab_logits: bool = True, fused_attention: bool = False, mixed_precision: bool = False,
                    interpreter: bool = True) -> MemoryEstimate:
    """One training step with AdamW at micro-batch `batch_size` x `context` tokens (the model's
    own context by default). `trained_parameters` (all by default) have gradients and AdamW
    state; `layers_with_grad` blocks keep activations (the last ones trained, or all with LoRA)."""
    T = config.n_ctx if context is None else context
    n = parameter_count(config)
    trained = n if trained_parameters is None else trained_parameters
    itemsize = FLOAT16 if mixed_precision else FLOAT32
    tokens = batch_size * T
    head = config.vocab_size if vocab_logits else 0
    # one layer's attention scores in flight (and their dropped copy under dropout), unfused
    scores = 0 if fused_attention else batch_size * config.n_head * T * T * FLOAT32 * (2 if config.dropout else 1)
    return MemoryEstimate(
        parameters=n * FLOAT32 + (n * FLOAT16 if mixed_precision else 0),
        gradients=trained * FLOAT32,
        optimizer=2 * trained * FLOAT32,
        activations=activation_bytes(config, batch_size, T, layers=layers_with_grad, vocab_logits=vocab_logits,
                                     fused_attention=fused_attention, itemsize=itemsize),
        transient=(tokens * (head + TRANSIENT_WIDTHS * config.n_embd) + head * config.n_embd) * FLOAT32 + scores,
        buffers=INTERPRETER if interpreter else 0)


def kv_cache_bytes(config: GPT2Config, batch_size: int, itemsize: int = FLOAT32) -> int:
    """A KVCache of `batch_size` rows: keys and values, (B, H, n_ctx, D) each, in every layer."""
    return 2 * config.n_layer * batch_size * config.n_ctx * config.n_embd * itemsize


def inference_memory(config: GPT2Config, batch_size: int, prompt_tokens: int | None = None, *,
                     kv_cache: bool = True, cache_rows: int | None = None, vocab_logits: bool = True,
                     fused_attention: bool = False, interpreter: bool = True) -> MemoryEstimate:
    """A forward pass (no gradients) of `batch_size` rows of `prompt_tokens` (the context by
    default), which keeps nothing for backward but holds its logits (over the vocabulary, or a
    classifier's few) and a block's widest tensors at once, plus the weights and, for generating,
    a KV cache of `cache_rows` rows (batch_size by default; a server prefills one row at a time
    into a cache of all its rows)."""
    T = config.n_ctx if prompt_tokens is None else prompt_tokens
    C, H = config.n_embd, config.n_head
    tokens = batch_size * T
    attention = 0 if fused_attention else batch_size * H * T * T * FLOAT32
    logits = config.vocab_size if vocab_logits else 0
    return MemoryEstimate(
        parameters=parameter_count(config) * FLOAT32,
        kv_cache=kv_cache_bytes(config, batch_size if cache_rows is None else cache_rows) if kv_cache else 0,
        transient=tokens * (logits + 4 * C) * FLOAT32 + attention,  # logits, an MLP's width
        buffers=INTERPRETER if interpreter else 0)
