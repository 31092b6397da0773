"""Rotary position embedding (RoPE).

Su, Lu, Pan, Murtadha, Wen, Liu, "RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021
(arXiv 2104.09864). The paper rotates each pair of query/key coordinates by an angle proportional to the
position (eq. 13-15), with the frequencies theta_i = base^(-2(i-1)/d) of eq. 15, so that

    <R(m) q, R(n) k> = <q, R(n - m) k>        (eq. 16: the score depends only on the offset)

Two memory layouts of "a pair" exist in released models, and both are implemented here:

* half-split (GPT-NeoX, Hugging Face Llama): coordinate i is paired with i + d/2;
* interleaved (GPT-J, Meta's original Llama, RoFormer's eq. 34): coordinate 2i is paired with 2i + 1.

They are the same function of the *weights*: permuting the rows of W_q and W_k turns one into the other
(`permute_qk_weight_to_half_split`). Partial rotary (GPT-NeoX's `rotary_pct`, DeepSeek's decoupled key) is
handled by `apply_rope` whenever cos/sin cover fewer dimensions than `x` has.
"""

from __future__ import annotations

import torch

from ._checks import require_base, require_even_dim, require_positive_int


def rope_inv_freq(dim: int, base: float = 10000.0) -> torch.Tensor:
    """The RoPE frequencies theta_i = base^(-2i/dim), i = 0 .. dim/2 - 1 (RoFormer eq. 15).

    Returns a ``[dim // 2]`` float32 tensor, in radians per position. The exponent is computed in float64
    and rounded once: computing it in bf16 is the precision trap the RoPE chapter measures.
    """
    require_even_dim(dim)
    require_base(base)
    exponent = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    return (1.0 / (float(base) ** exponent)).to(torch.float32)


def rope_cos_sin(
    inv_freq: torch.Tensor,
    positions: torch.Tensor | int,
    attention_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cos/sin cache: ``cos[p, i] = attention_factor * cos(p * inv_freq[i])`` (RoFormer eq. 34).

    ``positions`` is an int ``n`` (meaning positions 0 .. n-1) or a tensor of positions of any shape; the
    result has shape ``positions.shape + (len(inv_freq),)`` and dtype float32 (float64 if ``inv_freq`` is).
    ``attention_factor`` is YaRN's temperature term (Peng et al. 2023, eq. 22): released checkpoints fold it
    into both cos and sin, which scales every rotated q.k logit by its square.
    """
    if inv_freq.dim() != 1:
        raise ValueError(f"inv_freq must be 1-D [dim // 2]; got shape {tuple(inv_freq.shape)}")
    if isinstance(positions, int):
        require_positive_int(positions, "the number of positions")
        positions = torch.arange(positions, device=inv_freq.device)
    compute_dtype = torch.promote_types(inv_freq.dtype, torch.float32)
    angles = positions.to(compute_dtype).unsqueeze(-1) * inv_freq.to(compute_dtype)
    return torch.cos(angles) * attention_factor, torch.sin(angles) * attention_factor


def _check_rope_shapes(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> int:
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have the same shape; got {tuple(cos.shape)} and {tuple(sin.shape)}")
    if x.dim() < 2 or cos.dim() < 2:
        raise ValueError(
            f"apply_rope expects x as [..., seq, dim] and cos/sin as [..., seq, rotary_dim // 2]; "
            f"got x {tuple(x.shape)} and cos {tuple(cos.shape)}"
        )
    rotary_dim = 2 * cos.shape[-1]
    if rotary_dim > x.shape[-1]:
        raise ValueError(
            f"cos/sin cover rotary_dim = 2 * {cos.shape[-1]} = {rotary_dim} dimensions, more than the "
            f"{x.shape[-1]} of x's last dimension"
        )
    try:
        torch.broadcast_shapes(x.shape[:-1], cos.shape[:-1])
    except RuntimeError:
        raise ValueError(
            f"cos/sin of shape {tuple(cos.shape)} do not broadcast against x of shape {tuple(x.shape)}: "
            f"their leading dims (..., seq) must match x's (..., seq); did you pass the cache for the wrong "
            f"number of positions, or x as [batch, seq, heads, dim] without unsqueezing cos/sin?"
        ) from None
    return rotary_dim


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate every pair of ``x`` (whose last dim is exactly ``2 * cos.shape[-1]``) by the cos/sin angles.

    For a pair (a, b) at angle phi: (a, b) -> (a cos phi - b sin phi, b cos phi + a sin phi), the 2-D
    rotation of RoFormer eq. 13. No shape checks: `apply_rope` is the public entry point.
    """
    if interleaved:
        first, second = x[..., 0::2], x[..., 1::2]
    else:
        first, second = x.chunk(2, dim=-1)
    rotated_first = first * cos - second * sin
    rotated_second = second * cos + first * sin
    if interleaved:
        return torch.stack((rotated_first, rotated_second), dim=-1).flatten(-2)
    return torch.cat((rotated_first, rotated_second), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate the last dimension of ``x`` by RoPE (RoFormer eq. 34, the efficient element-wise form).

    * ``x`` is ``[..., seq, dim]``; ``cos``/``sin`` are ``[..., seq, rotary_dim // 2]`` and broadcast
      against ``x`` (a ``[seq, rotary_dim // 2]`` cache works for ``[batch, heads, seq, dim]``).
    * ``interleaved=False`` pairs coordinate i with i + rotary_dim/2 (GPT-NeoX / Hugging Face Llama);
      ``interleaved=True`` pairs 2i with 2i + 1 (GPT-J / Meta Llama / the RoFormer paper).
    * Partial rotary: when ``rotary_dim < dim`` only the first ``rotary_dim`` coordinates rotate, and the rest
      pass through unchanged (GPT-NeoX's ``rotary_pct``).

    The arithmetic is done in at least float32 and the result is cast back to ``x.dtype``, so bf16/fp16
    inputs are not rotated with a bf16 cos/sin.
    """
    rotary_dim = _check_rope_shapes(x, cos, sin)
    compute_dtype = torch.promote_types(x.dtype, torch.float32)
    rotary, passthrough = x[..., :rotary_dim], x[..., rotary_dim:]
    rotated = rotate_pairs(rotary.to(compute_dtype), cos.to(compute_dtype), sin.to(compute_dtype), interleaved)
    return torch.cat((rotated.to(x.dtype), passthrough), dim=-1)


def interleaved_to_half_split_permutation(rotary_dim: int, head_dim: int | None = None) -> torch.Tensor:
    """Index tensor ``perm`` with ``half_split_vector = interleaved_vector[perm]``.

    The interleaved pair (2i, 2i+1) becomes the half-split pair (i, i + rotary_dim/2). Coordinates past
    ``rotary_dim`` (partial rotary) keep their place.
    """
    require_even_dim(rotary_dim, "rotary_dim")
    head_dim = rotary_dim if head_dim is None else head_dim
    if head_dim < rotary_dim:
        raise ValueError(f"head_dim ({head_dim}) must be at least rotary_dim ({rotary_dim})")
    return torch.cat(
        (torch.arange(0, rotary_dim, 2), torch.arange(1, rotary_dim, 2), torch.arange(rotary_dim, head_dim))
    )


def _permute_head_rows(weight: torch.Tensor, num_heads: int, rotary_dim: int | None, inverse: bool) -> torch.Tensor:
    require_positive_int(num_heads, "num_heads")
    if weight.dim() != 2 or weight.shape[0] % num_heads:
        raise ValueError(
            f"weight must be [num_heads * head_dim, in_features] with num_heads = {num_heads}; "
            f"got shape {tuple(weight.shape)}"
        )
    head_dim = weight.shape[0] // num_heads
    perm = interleaved_to_half_split_permutation(head_dim if rotary_dim is None else rotary_dim, head_dim)
    if inverse:
        perm = torch.argsort(perm)
    per_head = weight.reshape(num_heads, head_dim, weight.shape[1])
    return per_head[:, perm.to(weight.device), :].reshape_as(weight)


def permute_qk_weight_to_half_split(
    weight: torch.Tensor, num_heads: int, rotary_dim: int | None = None
) -> torch.Tensor:
    """Reorder the output rows of a q or k projection so that half-split RoPE computes what interleaved did.

    ``weight`` is an ``nn.Linear`` weight, ``[num_heads * head_dim, in_features]``. With
    ``W' = permute_qk_weight_to_half_split(W, H)``, ``apply_rope(x @ W'.T, interleaved=False)`` equals
    ``apply_rope(x @ W.T, interleaved=True)`` with each head's coordinates permuted, so every q.k score is
    unchanged. This is what Hugging Face's Llama conversion script does to Meta's checkpoints.
    """
    return _permute_head_rows(weight, num_heads, rotary_dim, inverse=False)


def permute_qk_weight_to_interleaved(
    weight: torch.Tensor, num_heads: int, rotary_dim: int | None = None
) -> torch.Tensor:
    """The inverse of `permute_qk_weight_to_half_split`: half-split weights to interleaved ones."""
    return _permute_head_rows(weight, num_heads, rotary_dim, inverse=True)
