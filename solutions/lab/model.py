"""A tiny byte-level decoder whose position encoding is chosen by name.

A pre-LayerNorm GPT (Radford et al. 2019; the layout of Karpathy's nanoGPT) with a 256-byte vocabulary and
tied input/output embeddings. Every position encoding comes from `solutions`, never from a copy:

==============  ==========================================================================================
``nope``        nothing: only the causal mask tells positions apart (Kazemnejad et al. 2023; Haviv et al. 2022)
``sinusoidal``  `solutions.sinusoidal_encoding` added to the token embeddings (Vaswani et al. 2017, section 3.5)
``learned``     `solutions.LearnedPositionalEmbedding` with ``train_length`` rows; it raises a ValueError past them
``t5``          one `solutions.T5RelativeBias` (causal buckets) shared by all layers (Raffel et al. 2020, section 2.1)
``alibi``       `solutions.alibi_bias` with `solutions.alibi_slopes` (Press et al. 2022)
``rope``        `solutions.apply_rope` on q and k, frequencies from `solutions.rope_scaling` (Su et al. 2021)
==============  ==========================================================================================

A context-extension method is applied at evaluation time, without retraining, by `TinyDecoder.set_extension`:
any ``rope_scaling`` method and its parameters on the RoPE model, and NTK-ALiBi (`solutions.ntk_alibi_slopes`)
on the ALiBi model. Attention runs through ``torch.nn.functional.scaled_dot_product_attention`` with the
bias as a float mask; the tests check it against `solutions.reference_attention`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..alibi import alibi_bias, alibi_slopes, ntk_alibi_slopes
from ..learned import LearnedPositionalEmbedding
from ..rope import apply_rope, rope_cos_sin
from ..rope_scaling import rope_scaling
from ..sinusoidal import sinusoidal_encoding
from ..t5 import T5RelativeBias

ENCODINGS = ("nope", "sinusoidal", "learned", "t5", "alibi", "rope")


@dataclass
class ModelConfig:
    """The shape of a `TinyDecoder`. ``t5_max_distance`` defaults to ``train_length // 2``.

    T5 uses 32 buckets up to an offset of 128 with a training length of 512; its causal buckets put every
    offset from 113 to 511 in the last bucket, which is therefore trained. Scaling the ratio to a short training length
    keeps that property: offsets from ``train_length // 2`` on share the last (trained) bucket.
    """

    encoding: str = "rope"
    train_length: int = 64
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    vocab_size: int = 256
    rope_base: float = 10000.0
    t5_num_buckets: int = 32
    t5_max_distance: int | None = None

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {self.encoding!r}; choose one of {', '.join(ENCODINGS)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.t5_max_distance is None:
            self.t5_max_distance = self.train_length // 2

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Extension:
    """A context-extension method applied at evaluation time (see `TinyDecoder.set_extension`)."""

    method: str = "default"
    factor: float = 1.0
    params: dict = field(default_factory=dict)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)

    def forward(self, x, mask=None, cos_sin=None):
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if cos_sin is not None:
            q, k = apply_rope(q, *cos_sin), apply_rope(k, *cos_sin)
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff, bias=False), nn.GELU(), nn.Linear(config.d_ff, config.d_model, bias=False)
        )

    def forward(self, x, mask=None, cos_sin=None):
        x = x + self.attn(self.ln1(x), mask, cos_sin)
        return x + self.mlp(self.ln2(x))


class TinyDecoder(nn.Module):
    """``forward(idx)`` maps ``[batch, length]`` byte ids to ``[batch, length, 256]`` next-byte logits."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        if config.encoding == "learned":
            # nanoGPT's 0.02 for every table (GPT-2's released code uses 0.01 for this one); the committed
            # results were trained with it.
            self.positions = LearnedPositionalEmbedding(config.train_length, config.d_model, init_std=0.02)
        elif config.encoding == "t5":
            self.t5_bias = T5RelativeBias(
                config.n_heads, config.t5_num_buckets, config.t5_max_distance, bidirectional=False
            )
        self.extension = Extension()
        self._init_weights()

    def _init_weights(self):
        # GPT-2 / nanoGPT: N(0, 0.02), residual output projections scaled down by sqrt(2 * n_layers).
        for name, parameter in self.named_parameters():
            if parameter.dim() == 2 and not name.startswith("positions"):
                std = 0.02 / math.sqrt(2 * self.config.n_layers) if name.endswith(("out.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(parameter, 0.0, std)

    # -- context extension -------------------------------------------------------------------------------
    def set_extension(self, method: str = "default", factor: float = 1.0, **params) -> None:
        """Choose how positions past the training length are handled, without retraining.

        * RoPE model: any `solutions.rope_scaling` method (``default`` is direct extrapolation) with its
          ``factor`` s and options; the training length is ``original_max_position_embeddings``.
        * ALiBi model: ``"ntk_alibi"`` with a ``factor`` (`solutions.ntk_alibi_slopes`), or ``"default"``.
        * Other encodings take only ``"default"``.

        The method is validated at once, so that a typo fails here and not in the middle of an evaluation.
        """
        encoding = self.config.encoding
        if encoding == "rope":
            rope_scaling(method, self.config.head_dim, self.config.rope_base, factor, self.config.train_length,
                         seq_len=self.config.train_length, **params)
        elif encoding == "alibi" and method == "ntk_alibi":
            ntk_alibi_slopes(self.config.n_heads, factor)
        elif method != "default" or factor != 1.0 or params:
            raise ValueError(f"the {encoding} model takes no extension method; got {method!r}")
        self.extension = Extension(method, float(factor), dict(params))

    def rope_cos_sin(self, length: int):
        """``(cos, sin)`` ``[length, head_dim // 2]`` for the current extension (RoPE models only)."""
        ext = self.extension
        inv_freq, attention_factor = rope_scaling(
            ext.method, self.config.head_dim, self.config.rope_base, ext.factor, self.config.train_length,
            seq_len=length, **ext.params,
        )
        return rope_cos_sin(inv_freq.to(self.embed.weight.device), length, attention_factor)

    def attention_bias(self, length: int) -> torch.Tensor | None:
        """The ``[1, heads, length, length]`` float mask (bias and causal -inf) of T5 and ALiBi, else None."""
        device = self.embed.weight.device
        if self.config.encoding == "alibi":
            slopes = (
                ntk_alibi_slopes(self.config.n_heads, self.extension.factor)
                if self.extension.method == "ntk_alibi" else alibi_slopes(self.config.n_heads)
            )
            return alibi_bias(slopes.to(device), length)[None]
        if self.config.encoding == "t5":
            bias = self.t5_bias(length)
            causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
            return bias.masked_fill(~causal, float("-inf"))[None]
        return None

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        length = idx.shape[1]
        x = self.embed(idx)
        if self.config.encoding == "sinusoidal":
            # Vaswani et al. (section 3.4) scale the embeddings by sqrt(d) before adding the encoding; dividing
            # the encoding by sqrt(d) instead keeps that ratio with GPT-2's small embedding initialisation.
            x = x + sinusoidal_encoding(length, self.config.d_model).to(x.device) / math.sqrt(self.config.d_model)
        elif self.config.encoding == "learned":
            x = x + self.positions(length)  # raises ValueError past the table
        mask = self.attention_bias(length)
        cos_sin = self.rope_cos_sin(length) if self.config.encoding == "rope" else None
        for block in self.blocks:
            x = block(x, mask, cos_sin)
        return self.ln_f(x) @ self.embed.weight.T

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
