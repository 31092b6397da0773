"""Plain scaled dot-product attention with an additive positional bias: the reference every chapter uses.

Vaswani et al., "Attention Is All You Need", 2017 (arXiv 1706.03762), eq. 1:
``softmax(Q K^T / sqrt(d_k)) V``, here with an optional additive bias (T5, ALiBi, Transformer-XL position
terms) and a causal mask. It is written for clarity, materialises the full score matrix, and is the oracle
for the fused kernels.
"""

from __future__ import annotations

import math

import torch


def causal_mask(query_length: int, key_length: int, device=None) -> torch.Tensor:
    """Boolean ``[query_length, key_length]`` mask, True where a query may attend.

    Queries are aligned to the *end* of the keys: query i sits at position ``key_length - query_length + i``.
    With ``query_length == key_length`` this is the usual lower triangle; with one query and a cache of
    ``key_length`` keys (decode) every key is visible.
    """
    if query_length > key_length:
        raise ValueError(f"causal attention needs query_length <= key_length; got {query_length} > {key_length}")
    query_positions = torch.arange(key_length - query_length, key_length, device=device)
    key_positions = torch.arange(key_length, device=device)
    return key_positions[None, :] <= query_positions[:, None]


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    causal: bool = False,
    sm_scale: float | None = None,
) -> torch.Tensor:
    """``softmax(sm_scale * q k^T + bias) v`` over the last two dims (Vaswani et al. 2017, eq. 1).

    ``q`` is ``[..., q_len, d]``, ``k`` is ``[..., k_len, d]``, ``v`` is ``[..., k_len, d_v]``; ``bias``
    broadcasts to ``[..., q_len, k_len]``. ``sm_scale`` defaults to ``1 / sqrt(d)``. With ``causal=True``
    the queries are the last ``q_len`` positions of the keys (see `causal_mask`).
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last dim; got {q.shape[-1]} and {k.shape[-1]}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of keys; got {k.shape[-2]} and {v.shape[-2]}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    if causal:
        mask = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)
