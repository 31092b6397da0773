"""ALiBi, Attention with Linear Biases, and its NTK-style extension.

Press, Smith, Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022 (arXiv 2108.12409), section 3: no position is added to the embeddings; instead each
head h adds ``-m_h * (i - j)`` to the logit of query i and key j, with a fixed head-specific slope m_h.
"""

from __future__ import annotations

import math

import torch

from ._checks import require_positive_int
from .t5 import relative_positions


def _power_of_two_slopes(num_heads: int) -> list[float]:
    # 2^(-8/n), 2^(-16/n), ..., 2^(-8): a geometric sequence starting at its own ratio (ALiBi section 3).
    ratio = 2.0 ** (-8.0 / num_heads)
    return [ratio ** (h + 1) for h in range(num_heads)]


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """The ``[num_heads]`` float32 ALiBi slopes m_1 .. m_n (Press et al. 2022, section 3).

    For n a power of two: the geometric sequence ``2^(-8/n), 2^(-16/n), ..., 2^(-8)``. Otherwise, as in
    the authors' released code: the slopes of the largest power of two p < n, followed by the 1st, 3rd,
    5th, ... slopes of 2p (the ones the p-head list lacks, each the geometric mean of its neighbours in the
    2p-head list) until n slopes are filled.
    """
    require_positive_int(num_heads, "num_heads")
    closest_power_of_two = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = _power_of_two_slopes(closest_power_of_two)
    if closest_power_of_two < num_heads:
        extra = _power_of_two_slopes(2 * closest_power_of_two)[0::2]
        slopes += extra[: num_heads - closest_power_of_two]
    return torch.tensor(slopes, dtype=torch.float32)


def ntk_alibi_slopes(num_heads: int, factor: float) -> torch.Tensor:
    """NTK-ALiBi: ``m_h = alibi_slope_h / factor^((h-1)/(H-1))`` for heads h = 1 .. H.

    The ALiBi counterpart of NTK-aware RoPE scaling, from the keezen/ntk_alibi repository (README, August
    2023; no paper): the first head is left as trained and the last is "interpolated" by dividing its
    slope by ``factor``, with a geometric blend in between. For a power-of-two H the heads are sorted from
    steepest (most local, like RoPE's fast pairs) to gentlest (like RoPE's slow pairs), and this is
    ``m_h = 1 / (2^(8h/H) * factor^((h-1)/(H-1)))``, or with ``b = factor^(1/(H-1))``,
    ``m_h = b / (2^(8/H) * b)^h``, the README's two forms. For other head counts ALiBi's slopes are not
    sorted by index (12 heads: the steepest is head 9), and the divisor still follows the head index, as the
    formula is written. The repository's reference code instead scales only the first power-of-two heads and
    leaves the extra ones unchanged, in a branch it marks as unfinished; the chapter compares the two. With
    one head the slope is unchanged. ``factor >= 1``; factor 1 gives plain ALiBi.
    """
    require_positive_int(num_heads, "num_heads")
    _require_factor(factor)
    exponents = torch.arange(num_heads, dtype=torch.float64) / max(num_heads - 1, 1)
    return (alibi_slopes(num_heads).double() / float(factor) ** exponents).to(torch.float32)


def _require_factor(factor: float) -> None:
    if not float(factor) >= 1.0:
        raise ValueError(f"factor must be >= 1 (it is the context extension ratio L'/L); got {factor!r}")


def alibi_bias(slopes: torch.Tensor, query_length: int, key_length: int | None = None, causal: bool = True):
    """``[heads, query_length, key_length]`` additive bias ``-m_h * (i - j)`` (Press et al. 2022, eq. in §3).

    Queries are aligned to the end of the keys (query i is at position ``key_length - query_length + i``),
    so a decode step with a cache gets the same biases as the full sequence. With ``causal=True`` future keys
    get ``-inf``: the bias then includes the causal mask. ``causal=False`` gives the symmetric bidirectional
    variant ``-m_h * |i - j|`` used by encoder models (the paper itself only covers causal LMs).
    """
    if slopes.dim() != 1:
        raise ValueError(f"slopes must be 1-D [num_heads]; got shape {tuple(slopes.shape)}")
    key_length = query_length if key_length is None else key_length
    key_minus_query = relative_positions(query_length, key_length, device=slopes.device)
    distance = (-key_minus_query).to(slopes.dtype)  # i - j: positive for keys in the past
    # "+ 0.0" turns the diagonal's IEEE -0.0 into +0.0, so printed biases read 0, not -0.
    bias = -(slopes[:, None, None] * distance.abs()) + 0.0
    if causal:
        bias = bias.masked_fill(distance < 0, float("-inf"))
    return bias
