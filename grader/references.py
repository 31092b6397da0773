"""Reference functions for assignment tasks that have no single package-level counterpart in `solutions`.

Each is a few lines composed from `solutions` (never a second implementation of a formula that `solutions`
already has), so that the grader and the book cannot drift apart. The checking library compares students'
functions with these.
"""

from __future__ import annotations

import torch

import solutions
from solutions.sinusoidal import sinusoidal_frequencies


def self_attention(x: torch.Tensor, w_q: torch.Tensor, w_k: torch.Tensor, w_v: torch.Tensor) -> torch.Tensor:
    """Single-head self-attention without any position information (Vaswani et al. 2017, eq. 1).

    ``x`` is ``[seq, d_model]``; the weights are ``nn.Linear``-style ``[d_out, d_model]``; returns ``[seq, d_v]``.
    """
    return solutions.reference_attention(x @ w_q.T, x @ w_k.T, x @ w_v.T)


def is_permutation_equivariant(f, x: torch.Tensor, perm: torch.Tensor, atol: float = 1e-5) -> bool:
    """Whether ``f(x[perm]) == f(x)[perm]`` up to ``atol``: the property the Part 1 chapter shows."""
    return bool(torch.allclose(f(x[perm]), f(x)[perm], atol=atol, rtol=0.0))


def position_dot_product(offsets: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """``PE(p) . PE(p + k)`` for each offset k, float64, with the same shape as ``offsets``.

    By the angle-difference identity it is ``sum_i cos(k omega_i)``, independent of p (the sinusoidal chapter):
    computed from `solutions.sinusoidal.sinusoidal_frequencies`, the frequencies of the encoding itself.
    """
    offsets = torch.as_tensor(offsets, dtype=torch.float64)
    return torch.cos(offsets[..., None] * sinusoidal_frequencies(dim, base)).sum(-1)


def decoupled_rope_scores(q_nope, q_rope, k_nope, k_rope, q_positions, k_positions, inv_freq, scale):
    """One MLA head's scores with decoupled RoPE (DeepSeek-V2 eqs. 14-18), ``[q_len, k_len]``.

    ``q_nope`` ``[q_len, d_h]`` and ``k_nope`` ``[k_len, d_h]`` are the content parts, not rotated;
    ``q_rope`` ``[q_len, d_R]`` and ``k_rope`` ``[k_len, d_R]`` are the raw rotary parts, rotated here
    (half-split layout) at their positions. ``scale`` multiplies the sum of both dot products.
    """
    cos_q, sin_q = solutions.rope_cos_sin(inv_freq, q_positions)
    cos_k, sin_k = solutions.rope_cos_sin(inv_freq, k_positions)
    q_r = solutions.apply_rope(q_rope, cos_q, sin_q)
    k_r = solutions.apply_rope(k_rope, cos_k, sin_k)
    return (q_nope @ k_nope.T + q_r @ k_r.T) * scale


def naive_latent_scores(q_nope, q_rope, latent, k_rope, w_uk, scale):
    """One head's MLA scores, keys rebuilt from the latent cache (DeepSeek-V2 eqs. 10, 16-17).

    ``q_nope`` ``[q_len, d_h]``, ``q_rope`` ``[q_len, d_R]`` (already rotated), ``latent`` ``[k_len, d_c]``,
    ``k_rope`` ``[k_len, d_R]`` (already rotated, shared by all heads), ``w_uk`` ``[d_h, d_c]``.
    """
    k_nope = latent @ w_uk.T
    return (q_nope @ k_nope.T + q_rope @ k_rope.T) * scale


def absorbed_latent_scores(q_nope, q_rope, latent, k_rope, w_uk, scale):
    """The same scores as `naive_latent_scores` with W^UK absorbed into the query (DeepSeek-V2 section 2.1.2)."""
    q_latent = q_nope @ w_uk
    return (q_latent @ latent.T + q_rope @ k_rope.T) * scale


def rope_rotate_at(x: torch.Tensor, position: int, base: float = 10000.0, interleaved: bool = False) -> torch.Tensor:
    """Rotate ``x`` ``[..., dim]`` by RoPE at one integer ``position`` (angles in float64)."""
    dim = x.shape[-1]
    inv_freq = solutions.rope_inv_freq(dim, base).double()
    cos, sin = solutions.rope_cos_sin(inv_freq, torch.tensor([int(position)]))
    out = solutions.apply_rope(x.double().reshape(1, dim) if x.dim() == 1 else x.double(), cos, sin, interleaved)
    return out.reshape(x.shape).to(x.dtype)


def yarn_cos_sin(dim, base, factor, original_max_position_embeddings, positions):
    """YaRN's cos/sin: NTK-by-parts frequencies, both multiplied by the attention factor (released code)."""
    inv_freq, attention_factor = solutions.rope_scaling("yarn", dim, base, factor, original_max_position_embeddings)
    return solutions.rope_cos_sin(inv_freq, positions, attention_factor)


def yarn_logits(q, k, q_positions, k_positions, base, factor, original_max_position_embeddings):
    """``q_m . k_n`` after YaRN-scaled RoPE (``[q_len, k_len]``): scaled by the attention factor squared."""
    dim = q.shape[-1]
    cos_q, sin_q = yarn_cos_sin(dim, base, factor, original_max_position_embeddings, q_positions)
    cos_k, sin_k = yarn_cos_sin(dim, base, factor, original_max_position_embeddings, k_positions)
    return solutions.apply_rope(q, cos_q, sin_q) @ solutions.apply_rope(k, cos_k, sin_k).T
