"""Multi-head Latent Attention (MLA) with decoupled RoPE.

DeepSeek-AI, "DeepSeek-V2: A Strong, Economical, and Efficient Mixture-of-Experts Language Model", 2024
(arXiv 2405.04434), section 2.1. MLA caches one small latent per token instead of per-head keys and values:

    c^KV_t = W^DKV h_t                 (eq. 9)   the only content the cache keeps, d_c numbers
    k^C_t  = W^UK c^KV_t               (eq. 10)  per-head keys, rebuilt from the latent
    v^C_t  = W^UV c^KV_t               (eq. 11)  per-head values, rebuilt from the latent
    c^Q_t  = W^DQ h_t,  q^C_t = W^UQ c^Q_t                      (eqs. 12-13)
    q^R_t  = RoPE(W^QR c^Q_t),  k^R_t = RoPE(W^KR h_t)          (eqs. 14-15)  decoupled rotary part
    q_t,i  = [q^C_t,i; q^R_t,i],  k_t,i = [k^C_t,i; k^R_t]      (eqs. 16-17)  k^R is shared by all heads
    o_t,i  = sum_j softmax_j(q_t,i . k_j,i / sqrt(d_h + d^R_h)) v^C_j,i ;  u_t = W^O [o_t,1; ...]  (18-19)

Because q^C . k^C = (W^UK^T q^C) . c^KV, W^UK can be folded into the query and W^UV into the output, so
decoding never rebuilds per-head keys or values ("absorbed" mode). RoPE sits between q and k and depends on
both positions, so it would block that fold (`rope_absorbed_score_matrix`); hence the separate, shared,
small rotary key k^R, cached next to c^KV: (d_c + d^R_h) numbers per token per layer (section 2.1.4).

Where the released code (DeepSeek-V3 ``inference/model.py``, Hugging Face ``modeling_deepseek``) differs
from eqs. 9-19, this module follows the code, so that a checkpoint's weights could be loaded as they are:

* an RMSNorm follows c^Q and c^KV (paper section 3.1.2 mentions it in prose; eqs. 9-19 leave it out). The
  cached latent is the normalised one; k^R is *not* normalised.
* W^DKV and W^KR are one matrix (``kv_a_proj_with_mqa``) and W^UQ and W^QR another (``q_b_proj``), each
  head's output laid out as [nope | rope]; W^UK and W^UV are one (``kv_b_proj``), per head [k^C | v^C].
* the query compression is optional (``q_lora_rank=None``, DeepSeek-V2-Lite): then q_t = W^Q h_t.
* "absorption" is re-association at run time (apply W^UK to q^C, W^UV before W^O), not merged weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .attention import causal_mask, reference_attention
from .rope import apply_rope, rope_cos_sin, rope_inv_freq

MODES = ("naive", "absorbed")


@dataclass
class MLAConfig:
    """Sizes of one MLA layer, in the notation of DeepSeek-V2 section 2.1 (Hugging Face config names).

    ``kv_lora_rank`` is d_c (eq. 9), ``q_lora_rank`` is d'_c (eq. 12; ``None`` = no query compression),
    ``qk_nope_head_dim`` is d_h, ``qk_rope_head_dim`` is d^R_h (eqs. 14-15), ``v_head_dim`` the value width.
    ``softmax_scale`` defaults to 1/sqrt(d_h + d^R_h) (eq. 18); a YaRN-extended model passes its own (the
    released code multiplies it by mscale^2). ``inv_freq`` replaces the plain RoPE frequencies, and
    ``rope_attention_factor`` multiplies cos/sin, so that a rope-scaling method can be plugged in.
    DeepSeek's checkpoints rotate interleaved pairs (V3's complex multiply; Hugging Face de-interleaves q^R
    and k^R before its half-split rotation, which gives the same scores): load them with
    ``rope_interleaved=True``.
    """

    hidden_size: int
    num_heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None
    rope_base: float = 10000.0
    rope_interleaved: bool = False
    rope_attention_factor: float = 1.0
    softmax_scale: float | None = None
    inv_freq: torch.Tensor | None = field(default=None, repr=False, compare=False)
    norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("hidden_size", "num_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                     "v_head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim must be even (RoPE rotates pairs); got {self.qk_rope_head_dim}")
        q_rank = self.q_lora_rank
        if q_rank is not None and (not isinstance(q_rank, int) or isinstance(q_rank, bool) or q_rank <= 0):
            raise ValueError(f"q_lora_rank must be a positive integer or None (no query compression); "
                             f"got {q_rank!r}")
        if not float(self.rope_base) > 1.0:
            raise ValueError(f"rope_base must be greater than 1; got {self.rope_base!r}")
        if self.softmax_scale is not None and not float(self.softmax_scale) > 0.0:
            raise ValueError(f"softmax_scale must be positive or None; got {self.softmax_scale!r}")
        if not self.norm_eps > 0.0:
            raise ValueError(f"norm_eps must be positive; got {self.norm_eps!r}")
        expected = (self.qk_rope_head_dim // 2,)
        if self.inv_freq is not None and tuple(self.inv_freq.shape) != expected:
            raise ValueError(f"inv_freq must have shape {expected} (qk_rope_head_dim // 2); "
                             f"got {tuple(self.inv_freq.shape)}")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def scale(self) -> float:
        return self.qk_head_dim ** -0.5 if self.softmax_scale is None else float(self.softmax_scale)


@dataclass
class MLACache:
    """The MLA KV cache of one layer (DeepSeek-V2 section 2.1.4): nothing per head.

    ``latent`` is c^KV after its RMSNorm, ``[batch, length, kv_lora_rank]``; ``rope_key`` is the already
    rotated k^R, ``[batch, length, qk_rope_head_dim]``. Rotating before caching is what lets the cache
    forget positions. Both attention modes read and write the same two tensors. Grown by concatenation
    for clarity; serving code preallocates.
    """

    latent: torch.Tensor | None = None
    rope_key: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.latent is None else self.latent.shape[1]

    def numel(self) -> int:
        return 0 if self.latent is None else self.latent.numel() + self.rope_key.numel()

    def append(self, latent: torch.Tensor, rope_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the new tokens' entries and return the whole cache (old tokens first)."""
        if self.latent is not None:
            if latent.shape[0] != self.latent.shape[0] or latent.shape[2:] != self.latent.shape[2:] \
                    or rope_key.shape[2:] != self.rope_key.shape[2:]:
                raise ValueError(f"cache holds latent {tuple(self.latent.shape)} and rope_key "
                                 f"{tuple(self.rope_key.shape)}; cannot append {tuple(latent.shape)} and "
                                 f"{tuple(rope_key.shape)} (batch and widths must match)")
            latent = torch.cat((self.latent, latent), dim=1)
            rope_key = torch.cat((self.rope_key, rope_key), dim=1)
        self.latent, self.rope_key = latent, rope_key
        return latent, rope_key


class MultiHeadLatentAttention(nn.Module):
    """One MLA layer, DeepSeek-V2 eqs. 9-19, with a naive and an absorbed attention path.

    Parameter names follow Hugging Face ``DeepseekV2Attention`` (paper matrices in brackets):
    ``q_a_proj`` [W^DQ], ``q_a_layernorm``, ``q_b_proj`` [W^UQ; W^QR] or ``q_proj`` [W^Q] when
    ``q_lora_rank`` is None, ``kv_a_proj_with_mqa`` [W^DKV; W^KR], ``kv_a_layernorm``, ``kv_b_proj``
    [W^UK; W^UV], ``o_proj`` [W^O]. No biases, as in the released models.
    """

    def __init__(self, config: MLAConfig):
        super().__init__()
        self.config = c = config
        n_h = c.num_heads
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(c.hidden_size, n_h * c.qk_head_dim, bias=False)
        else:
            self.q_a_proj = nn.Linear(c.hidden_size, c.q_lora_rank, bias=False)
            self.q_a_layernorm = nn.RMSNorm(c.q_lora_rank, eps=c.norm_eps)
            self.q_b_proj = nn.Linear(c.q_lora_rank, n_h * c.qk_head_dim, bias=False)
        # The "with_mqa" output is c^KV followed by k^R: one key head shared by all heads, as in MQA.
        self.kv_a_proj_with_mqa = nn.Linear(c.hidden_size, c.kv_lora_rank + c.qk_rope_head_dim, bias=False)
        self.kv_a_layernorm = nn.RMSNorm(c.kv_lora_rank, eps=c.norm_eps)
        self.kv_b_proj = nn.Linear(c.kv_lora_rank, n_h * (c.qk_nope_head_dim + c.v_head_dim), bias=False)
        self.o_proj = nn.Linear(n_h * c.v_head_dim, c.hidden_size, bias=False)
        inv_freq = rope_inv_freq(c.qk_rope_head_dim, c.rope_base) if c.inv_freq is None else c.inv_freq
        self.register_buffer("inv_freq", inv_freq.detach().clone(), persistent=False)

    def _positions(self, batch: int, seq: int, past: int, start_pos, positions) -> torch.Tensor:
        if start_pos is not None and positions is not None:
            raise ValueError("pass start_pos or positions, not both")
        if positions is None:
            # Default: the new tokens continue the cache, so their positions are its length onwards.
            start = past if start_pos is None else int(start_pos)
            positions = torch.arange(start, start + seq, device=self.inv_freq.device)
        if positions.shape not in ((seq,), (batch, seq)):
            raise ValueError(f"positions must be [seq] or [batch, seq] = [{batch}, {seq}]; "
                             f"got {tuple(positions.shape)}")
        return positions.expand(batch, seq)

    def forward(
        self,
        hidden_states: torch.Tensor,
        *,
        cache: MLACache | None = None,
        start_pos: int | None = None,
        positions: torch.Tensor | None = None,
        mode: str = "absorbed",
    ) -> torch.Tensor:
        """Causal MLA over ``hidden_states`` ``[batch, seq, hidden]``; returns ``[batch, seq, hidden]``.

        * ``cache``: an `MLACache`; the new tokens' c^KV and k^R are appended to it and the queries attend to
          everything in it, aligned to its end (prefill, one-token decode and chunked decode alike).
        * RoPE positions: ``positions`` (``[seq]`` or ``[batch, seq]``), else ``start_pos + arange(seq)``,
          else the cache length onwards. They only move RoPE; the mask follows the cache order.
        * ``mode="naive"`` rebuilds per-head k and v (eqs. 10-11, 16-18); ``mode="absorbed"`` scores the
          queries against the latent itself. Same numbers, same cache.
        """
        c = self.config
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        if hidden_states.dim() != 3 or hidden_states.shape[-1] != c.hidden_size:
            raise ValueError(f"hidden_states must be [batch, seq, hidden_size={c.hidden_size}]; "
                             f"got {tuple(hidden_states.shape)}")
        batch, seq, _ = hidden_states.shape
        past = 0 if cache is None else len(cache)
        cos, sin = rope_cos_sin(self.inv_freq, self._positions(batch, seq, past, start_pos, positions),
                                c.rope_attention_factor)  # [batch, seq, d_R / 2]

        if c.q_lora_rank is None:
            q = self.q_proj(hidden_states)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))  # eqs. 12-14
        q = q.view(batch, seq, c.num_heads, c.qk_head_dim).transpose(1, 2)  # [b, h, s, d_h + d_R]
        q_nope, q_rope = q.split([c.qk_nope_head_dim, c.qk_rope_head_dim], dim=-1)
        q_rope = apply_rope(q_rope, cos[:, None], sin[:, None], c.rope_interleaved)

        latent, rope_key = self.kv_a_proj_with_mqa(hidden_states).split([c.kv_lora_rank, c.qk_rope_head_dim], -1)
        latent = self.kv_a_layernorm(latent)  # eq. 9 (+ the released code's norm)
        rope_key = apply_rope(rope_key, cos, sin, c.rope_interleaved)  # eq. 15, one key for all heads
        if cache is not None:
            latent, rope_key = cache.append(latent, rope_key)
        keys = latent.shape[1]

        if mode == "naive":
            # Re-expands the *whole* cache into per-head keys and values at every step: the cost (and the
            # memory traffic) that the absorbed path avoids. The released naive path caches k and v instead.
            kv = self.kv_b_proj(latent).view(batch, keys, c.num_heads, -1).transpose(1, 2)  # eqs. 10-11
            k_nope, v = kv.split([c.qk_nope_head_dim, c.v_head_dim], dim=-1)
            k_rope = rope_key[:, None].expand(batch, c.num_heads, keys, c.qk_rope_head_dim)
            k = torch.cat((k_nope, k_rope), dim=-1)  # eq. 17
            out = reference_attention(torch.cat((q_nope, q_rope), -1), k, v, causal=True, sm_scale=c.scale)
        else:
            w_kv_b = self.kv_b_proj.weight.view(c.num_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
            w_uk, w_uv = w_kv_b.split([c.qk_nope_head_dim, c.v_head_dim], dim=1)  # [h, d_h, d_c], [h, d_v, d_c]
            # q^C . (W^UK c) = (W^UK^T q^C) . c: a d_c-wide query per head meets the cached latent directly.
            q_latent = torch.einsum("bhsd,hdc->bhsc", q_nope, w_uk)
            scores = (torch.einsum("bhsc,btc->bhst", q_latent, latent)
                      + torch.einsum("bhsr,btr->bhst", q_rope, rope_key)) * c.scale
            scores = scores.masked_fill(~causal_mask(seq, keys, device=scores.device), float("-inf"))
            # Softmax in at least fp32, as the released code does: bf16 logits would round the weights.
            probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
            context = torch.einsum("bhst,btc->bhsc", probs.to(latent.dtype), latent)  # still in latent space
            out = torch.einsum("bhsc,hdc->bhsd", context, w_uv)  # W^UV, applied after the weighted sum
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, c.num_heads * c.v_head_dim))  # eq. 19


def rope_absorbed_score_matrix(
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    query_position: int,
    key_position: int,
    inv_freq: torch.Tensor,
    interleaved: bool = False,
) -> torch.Tensor:
    """The matrix M with ``score = x^T M y`` when ``q = R(m) W_q x`` and ``k = R(n) W_k y`` (section 2.1.3).

    ``w_q`` is ``[d, d_x]`` and ``w_k`` is ``[d, d_y]`` (``nn.Linear`` layout); M = W_q^T R(m)^T R(n) W_k is
    ``[d_x, d_y]``. Without RoPE, M = W_q^T W_k is one fixed matrix: that is how MLA absorbs W^UK into the
    query. With RoPE, M = W_q^T R(n - m) W_k changes with the offset n - m, so no single matrix can be
    precomputed, and the keys would have to be rebuilt for every decoded token: the reason DeepSeek-V2
    moves RoPE to the separate q^R, k^R dimensions.
    """
    if w_q.dim() != 2 or w_k.dim() != 2 or w_q.shape[0] != w_k.shape[0]:
        raise ValueError(f"w_q and w_k must be [d, d_x] and [d, d_y] with the same d; "
                         f"got {tuple(w_q.shape)} and {tuple(w_k.shape)}")
    cos_m, sin_m = rope_cos_sin(inv_freq, torch.tensor([query_position]))
    cos_n, sin_n = rope_cos_sin(inv_freq, torch.tensor([key_position]))
    # Row j of W^T is column j of W, i.e. what input j contributes to q; rotating it rotates q.
    rotated_q = apply_rope(w_q.T, cos_m, sin_m, interleaved)  # (R(m) W_q)^T
    rotated_k = apply_rope(w_k.T, cos_n, sin_n, interleaved)  # (R(n) W_k)^T
    return rotated_q @ rotated_k.T


def kv_cache_elements_per_token(
    kind: str,
    *,
    num_heads: int | None = None,
    head_dim: int | None = None,
    num_kv_heads: int | None = None,
    kv_lora_rank: int | None = None,
    qk_rope_head_dim: int | None = None,
) -> int:
    """Cached numbers per token per layer (DeepSeek-V2 section 2.1.4, Table 1).

    MHA 2 n_h d_h; GQA 2 n_g d_h (``num_kv_heads`` = n_g); MQA 2 d_h; MLA d_c + d^R_h. At DeepSeek-V2's
    sizes (n_h = d_h = 128, d_c = 512, d^R_h = 64) MHA caches 32768 and MLA 576, as much as GQA with 2.25
    groups. Multiply by bytes per element and layers for the cache size.
    """
    needed = {"mha": ("num_heads", "head_dim"), "gqa": ("num_kv_heads", "head_dim"), "mqa": ("head_dim",),
              "mla": ("kv_lora_rank", "qk_rope_head_dim")}
    if kind not in needed:
        raise ValueError(f"kind must be one of {tuple(needed)}; got {kind!r}")
    given = dict(num_heads=num_heads, head_dim=head_dim, num_kv_heads=num_kv_heads, kv_lora_rank=kv_lora_rank,
                 qk_rope_head_dim=qk_rope_head_dim)
    for name in needed[kind]:
        value = given[name]
        if value is None:
            raise ValueError(f"kind={kind!r} needs {name}")
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer; got {value!r}")
    if kind == "mha":
        return 2 * num_heads * head_dim
    if kind == "gqa":
        if num_heads is not None and num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads ({num_kv_heads}) must divide num_heads ({num_heads})")
        return 2 * num_kv_heads * head_dim
    if kind == "mqa":
        return 2 * head_dim
    return kv_lora_rank + qk_rope_head_dim
