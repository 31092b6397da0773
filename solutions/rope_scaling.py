"""Every way of stretching RoPE past its training length, one function per method behind a registry.

Each method maps ``(dim, base, factor, original_max_position_embeddings, seq_len, **params)`` to
``(inv_freq, attention_factor)``: the ``[dim // 2]`` float32 frequencies to build cos/sin with, and the
scalar that multiplies both cos and sin (so every rotated q.k logit scales by its square, as in the released
YaRN checkpoints). ``factor`` is the extension ratio s = L' / L >= 1; ``original_max_position_embeddings`` is
the training length L.

Where a paper and the reference code of the released models differ, the released code is the default and the
paper's variant is a named option, so that the book can plot both:

* NTK-by-parts / YaRN ramp: the paper's gamma(r) is linear in the rotation count r = L / lambda_d
  (YaRN eq. 17-18); the released code's ramp is linear in the *dimension index* between two "correction
  dims" rounded outwards (``ramp="released"`` vs ``ramp="paper"``).
* Dynamic NTK: the released rule grows the base with ``factor * l / L - (factor - 1)``; the YaRN paper
  writes ``s = max(1, l / L)`` (``length_rule="released"`` vs ``"paper"``).
* YaRN's attention factor: 0.1 ln s + 1 (YaRN eq. 22), or DeepSeek's ratio of two such terms with
  ``mscale`` / ``mscale_all_dim`` (DeepSeek-V2 section 2.1 and its released config).
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from torch import nn

from ._checks import require_base, require_even_dim, require_positive_int
from .rope import rope_cos_sin, rope_inv_freq

ScalingResult = tuple[torch.Tensor, float]


def _require_factor(factor: float) -> None:
    if not float(factor) >= 1.0:
        raise ValueError(
            f"factor must be >= 1 (it is the context extension ratio s = L'/L; a factor < 1 would shrink the "
            f"context); got {factor!r}"
        )


def default_rope(dim, base, factor, original_max_position_embeddings, seq_len=None) -> ScalingResult:
    """Plain RoPE (Su et al. 2021, eq. 15): ``theta_i = base^(-2i/dim)``, attention factor 1.

    It has no scaling, so ``factor`` must be 1.
    """
    if float(factor) != 1.0:
        raise ValueError(f"method 'default' is plain RoPE and takes no factor; got factor={factor!r}")
    return rope_inv_freq(dim, base), 1.0


def linear_scaling(dim, base, factor, original_max_position_embeddings, seq_len=None) -> ScalingResult:
    """Position Interpolation (Chen et al. 2023, eq. 4): ``f'(x, m) = f(x, m L / L')``.

    Dividing every position by s is the same as dividing every frequency by s, which is what this returns.
    Every dimension, including the fastest, is slowed down by the same factor.
    """
    return rope_inv_freq(dim, base) / float(factor), 1.0


def ntk_aware_base(dim: int, base: float, factor: float) -> float:
    """bloc97's NTK-aware base: ``base' = base * s^(dim / (dim - 2))``.

    Chosen so that the *lowest* frequency ``theta_{dim/2-1} = base^(-(dim-2)/dim)`` is divided by exactly s
    (it interpolates, like PI) while the highest, ``theta_0 = 1``, is untouched (it extrapolates). In Su's
    beta-base reading (Su 2023) the numeral base beta = base^(2/dim) is stretched by
    ``lambda = s^(2/(dim-2))``.
    """
    return float(base) * float(factor) ** (dim / (dim - 2))


def ntk_aware_scaling(dim, base, factor, original_max_position_embeddings, seq_len=None) -> ScalingResult:
    """NTK-aware scaling (bloc97 2023; Su 2023): plain RoPE with the base of `ntk_aware_base`.

    High frequencies are almost unchanged (they extrapolate), the lowest is divided by exactly ``factor``
    (it interpolates), and the dimensions in between are scaled by ``factor^(2i/(dim-2))``.
    """
    return rope_inv_freq(dim, ntk_aware_base(dim, base, factor)), 1.0


def correction_dim(num_rotations: float, dim: int, base: float, original_max_position_embeddings: int) -> float:
    """The (fractional) pair index whose wavelength fits ``num_rotations`` times into the training length.

    Solves ``L / lambda_d = num_rotations`` with ``lambda_d = 2 pi base^(2d/dim)`` (YaRN eq. 13 and 16):
    ``d = dim * ln(L / (2 pi num_rotations)) / (2 ln base)``. This is the released code's
    ``find_correction_dim``.
    """
    return dim * math.log(original_max_position_embeddings / (num_rotations * 2 * math.pi)) / (2 * math.log(base))


def ntk_by_parts_ramp(
    dim: int,
    base: float,
    original_max_position_embeddings: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    ramp: str = "released",
    truncate: bool = True,
) -> torch.Tensor:
    """gamma for each of the ``dim // 2`` frequencies: 1 keeps the frequency, 0 divides it by the factor.

    YaRN (Peng et al. 2024) eq. 17-18, with the paper's alpha = ``beta_slow`` (1) and beta = ``beta_fast``
    (32) in the released code's names:

    * ``ramp="paper"``: gamma(r) with r = L / lambda_d the number of full rotations over the training length;
      0 below alpha, 1 above beta, linear in r in between.
    * ``ramp="released"`` (the default, used by the released YaRN, Hugging Face and DeepSeek code): the two
      rotation counts are turned into pair indices with `correction_dim`, rounded outwards (floor / ceil,
      unless ``truncate=False``), and the ramp is linear in the *index* between them.
    """
    require_even_dim(dim)
    require_base(base)
    require_positive_int(original_max_position_embeddings, "original_max_position_embeddings")
    if not 0 < beta_slow < beta_fast:
        raise ValueError(f"need 0 < beta_slow < beta_fast (rotation counts); got {beta_slow} and {beta_fast}")
    if ramp == "paper":
        wavelength = 2 * math.pi / rope_inv_freq(dim, base).double()
        rotations = original_max_position_embeddings / wavelength
        return ((rotations - beta_slow) / (beta_fast - beta_slow)).clamp(0, 1).float()
    if ramp != "released":
        raise ValueError(f"ramp must be 'released' or 'paper'; got {ramp!r}")
    low = correction_dim(beta_fast, dim, base, original_max_position_embeddings)
    high = correction_dim(beta_slow, dim, base, original_max_position_embeddings)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # the released code's guard against a zero-width ramp
    # Index i has gamma 1 (extrapolate) below `low` and 0 (interpolate) above `high`.
    index = torch.arange(dim // 2, dtype=torch.float64)
    return (1.0 - ((index - low) / (high - low)).clamp(0, 1)).float()


def ntk_by_parts_inv_freq(dim, base, factor, original_max_position_embeddings, **ramp_params) -> torch.Tensor:
    """``h(theta_d) = (1 - gamma) theta_d / s + gamma theta_d``, gamma from `ntk_by_parts_ramp`.

    YaRN (Peng et al. 2024), Definition 2, the "NTK-by-parts" interpolation stated right after eq. 18.
    """
    inv_freq = rope_inv_freq(dim, base)
    keep = ntk_by_parts_ramp(dim, base, original_max_position_embeddings, **ramp_params)
    return (1 - keep) * inv_freq / float(factor) + keep * inv_freq


def ntk_by_parts_scaling(
    dim, base, factor, original_max_position_embeddings, seq_len=None, beta_fast=32.0, beta_slow=1.0,
    ramp="released", truncate=True,
) -> ScalingResult:
    """NTK-by-parts (bloc97 2023; YaRN, Peng et al. 2024, section 3.2, eq. 17-18).

    Dimensions that complete more than ``beta_fast`` rotations within the training length are left alone
    (they never see a new angle), those with fewer than ``beta_slow`` rotations are divided by ``factor``
    exactly as in PI, and a ramp blends the two in between. No attention factor.
    """
    inv_freq = ntk_by_parts_inv_freq(
        dim, base, factor, original_max_position_embeddings,
        beta_fast=beta_fast, beta_slow=beta_slow, ramp=ramp, truncate=truncate,
    )
    return inv_freq, 1.0


def dynamic_ntk_scaling(
    dim, base, factor, original_max_position_embeddings, seq_len=None, length_rule="released"
) -> ScalingResult:
    """Dynamic NTK (emozilla 2023; YaRN section 3.3): NTK-aware scaling with a factor set by the length.

    Up to the training length L it is plain RoPE. Beyond it, with ``l = seq_len`` the current length:

    * ``length_rule="released"`` (Hugging Face, the original post): ``base' = base * (s l / L - (s - 1))^(d/(d-2))``
    * ``length_rule="paper"`` (YaRN eq. 24): NTK-aware with ``s' = max(1, l / L)``; ``factor`` is unused.

    ``seq_len`` is required: it is what makes the method dynamic. When the sequence shrinks back below L the
    frequencies are plain RoPE again; `RotaryEmbedding` resets its cache accordingly.
    """
    if seq_len is None:
        raise ValueError("method 'dynamic' needs seq_len, the current sequence length")
    require_positive_int(seq_len, "seq_len")
    if seq_len <= original_max_position_embeddings:
        return rope_inv_freq(dim, base), 1.0
    length_ratio = seq_len / original_max_position_embeddings
    if length_rule == "released":
        effective_factor = float(factor) * length_ratio - (float(factor) - 1)
    elif length_rule == "paper":
        effective_factor = length_ratio
    else:
        raise ValueError(f"length_rule must be 'released' or 'paper'; got {length_rule!r}")
    return rope_inv_freq(dim, ntk_aware_base(dim, base, effective_factor)), 1.0


def yarn_attention_factor(factor: float, mscale: float = 1.0) -> float:
    """YaRN's ``sqrt(1/t) = 0.1 * mscale * ln(s) + 1`` for s > 1, else 1 (YaRN eq. 22).

    ``mscale`` is DeepSeek's coefficient (DeepSeek-V2 writes sqrt(t) = 0.0707 ln s + 1, i.e. mscale 0.707).
    The released code calls this ``yarn_get_mscale``.
    """
    if factor <= 1:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def yarn_softmax_scale(qk_head_dim: int, factor: float, mscale_all_dim: float = 0.0) -> float:
    """The softmax scale of DeepSeek's YaRN models: ``qk_head_dim^-0.5 * yarn_attention_factor(s, mscale_all_dim)^2``.

    DeepSeek-V2/V3 (released ``modeling_deepseek.py`` and ``inference/model.py``) set ``mscale`` equal to
    ``mscale_all_dim``, so the cos/sin factor of `yarn_scaling` is 1, and apply the temperature to *every*
    logit (the rope and the non-rope parts of the MLA score alike) through the softmax scale instead. With
    ``mscale_all_dim = 0`` (plain YaRN) this is the usual ``1/sqrt(d)``.
    """
    require_positive_int(qk_head_dim, "qk_head_dim")
    return qk_head_dim ** -0.5 * yarn_attention_factor(factor, mscale_all_dim) ** 2


def yarn_scaling(
    dim, base, factor, original_max_position_embeddings, seq_len=None, beta_fast=32.0, beta_slow=1.0,
    ramp="released", truncate=True, attention_factor=None, mscale=None, mscale_all_dim=None,
) -> ScalingResult:
    """YaRN (Peng et al. 2024, section 3.4): NTK-by-parts frequencies plus a temperature.

    The frequencies are `ntk_by_parts_scaling`'s. The attention factor, which multiplies cos and sin (so the
    logits scale by its square, YaRN eq. 21-22 with sqrt(1/t) folded into the rotation), is, in order:
    ``attention_factor`` if given; DeepSeek's ``yarn_attention_factor(s, mscale) /
    yarn_attention_factor(s, mscale_all_dim)`` if both ``mscale`` and ``mscale_all_dim`` are given (1 in
    DeepSeek-V2/V3, whose temperature lives in `yarn_softmax_scale`); else ``0.1 ln s + 1``.
    """
    inv_freq = ntk_by_parts_inv_freq(
        dim, base, factor, original_max_position_embeddings,
        beta_fast=beta_fast, beta_slow=beta_slow, ramp=ramp, truncate=truncate,
    )
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_attention_factor(factor, mscale) / yarn_attention_factor(factor, mscale_all_dim)
        else:
            attention_factor = yarn_attention_factor(factor)
    return inv_freq, float(attention_factor)


def llama3_scaling(
    dim, base, factor, original_max_position_embeddings, seq_len=None, low_freq_factor=1.0, high_freq_factor=4.0
) -> ScalingResult:
    """Llama 3.1's scaling (Llama Team 2024, released ``apply_scaling``): NTK-by-parts on wavelengths.

    Wavelengths shorter than ``L / high_freq_factor`` are kept, those longer than ``L / low_freq_factor``
    are divided by ``factor`` (PI), and in between the frequency is a blend linear in ``L / wavelength``,
    the rotation count: this is the YaRN *paper's* ramp with alpha = low_freq_factor and
    beta = high_freq_factor. No attention factor.
    """
    if not 0 < low_freq_factor < high_freq_factor:
        raise ValueError(f"need 0 < low_freq_factor < high_freq_factor; got {low_freq_factor}, {high_freq_factor}")
    inv_freq = rope_inv_freq(dim, base)
    rotations = original_max_position_embeddings * inv_freq / (2 * math.pi)  # = L / wavelength
    keep = ((rotations - low_freq_factor) / (high_freq_factor - low_freq_factor)).clamp(0, 1)
    return (1 - keep) * inv_freq / float(factor) + keep * inv_freq, 1.0


def longrope_scaling(
    dim, base, factor, original_max_position_embeddings, seq_len=None, long_factor=None, short_factor=None,
    attention_factor=None,
) -> ScalingResult:
    """LongRoPE (Ding et al. 2024, section 3; the released Phi-3 code): searched per-dimension divisors.

    ``theta_i' = theta_i / lambda_i`` with ``lambda = long_factor`` when ``seq_len`` exceeds the training
    length and ``short_factor`` otherwise (both ``[dim // 2]`` lists found by evolutionary search). The
    attention factor is ``sqrt(1 + ln s / ln L)`` (the released code), unless given.
    """
    if long_factor is None or short_factor is None:
        raise ValueError("method 'longrope' needs long_factor and short_factor, [dim // 2] lists of divisors")
    use_long = seq_len is not None and seq_len > original_max_position_embeddings
    divisors = torch.as_tensor(long_factor if use_long else short_factor, dtype=torch.float32)
    if divisors.shape != (dim // 2,):
        raise ValueError(f"long_factor/short_factor must have dim // 2 = {dim // 2} entries; got {tuple(divisors.shape)}")
    if not bool((divisors > 0).all()):
        raise ValueError("long_factor/short_factor entries must be positive")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original_max_position_embeddings))
    return rope_inv_freq(dim, base) / divisors, float(attention_factor)


ROPE_SCALING_METHODS: dict[str, Callable[..., ScalingResult]] = {
    "default": default_rope,
    "linear": linear_scaling,
    "ntk": ntk_aware_scaling,
    "ntk_by_parts": ntk_by_parts_scaling,
    "dynamic": dynamic_ntk_scaling,
    "yarn": yarn_scaling,
    "llama3": llama3_scaling,
    "longrope": longrope_scaling,
}


def rope_scaling(
    method: str,
    dim: int,
    base: float,
    factor: float,
    original_max_position_embeddings: int,
    seq_len: int | None = None,
    **params,
) -> ScalingResult:
    """``(inv_freq, attention_factor)`` for a RoPE scaling ``method`` (see `ROPE_SCALING_METHODS`).

    ``factor`` is s = L'/L (>= 1), ``original_max_position_embeddings`` is the training length L, and
    ``seq_len`` the current length (used by ``dynamic`` and ``longrope``). ``params`` are the method's own
    options (e.g. ``beta_fast``, ``mscale``, ``low_freq_factor``, ``long_factor``); an option the method
    does not take is an error, so a typo never silently falls back to a default.
    """
    if method not in ROPE_SCALING_METHODS:
        raise ValueError(f"unknown rope scaling method {method!r}; known: {', '.join(ROPE_SCALING_METHODS)}")
    require_even_dim(dim)
    require_base(base)
    _require_factor(factor)
    require_positive_int(original_max_position_embeddings, "original_max_position_embeddings")
    if seq_len is not None:
        require_positive_int(seq_len, "seq_len")
    function = ROPE_SCALING_METHODS[method]
    accepted = set(inspect.signature(function).parameters) - {
        "dim", "base", "factor", "original_max_position_embeddings", "seq_len",
    }
    unknown = set(params) - accepted
    if unknown:
        raise ValueError(
            f"method {method!r} does not take {', '.join(sorted(unknown))}; it takes: "
            f"{', '.join(sorted(accepted)) or 'no extra options'}"
        )
    return function(dim, base, factor, original_max_position_embeddings, seq_len, **params)


class RotaryEmbedding(nn.Module):
    """cos/sin for a rope scaling method, with the bookkeeping that length-dependent methods need.

    ``forward(positions)`` returns ``(cos, sin)`` of shape ``positions.shape + (dim // 2,)``. For the
    length-dependent methods (``dynamic``, ``longrope``) the frequencies are always those of the current
    length ``max(positions) + 1``, so they grow past the training length and return to plain RoPE when a later,
    shorter sequence fits in it again. (Hugging Face's ``dynamic_rope_update`` keeps the largest length seen
    until the sequence drops below the training length, so its output can depend on history; here it never
    does.) Beware the caching trap the Dynamic NTK chapter shows: keys already in a KV cache keep the rotation
    of the base they were computed with.
    """

    LENGTH_DEPENDENT = ("dynamic", "longrope")

    def __init__(self, dim, base=10000.0, method="default", factor=1.0, original_max_position_embeddings=2048, **params):
        super().__init__()
        self.dim, self.base, self.method, self.factor = dim, base, method, factor
        self.original_max_position_embeddings, self.params = original_max_position_embeddings, params
        self.frequencies_for_length = original_max_position_embeddings
        inv_freq, self.attention_factor = self._scaling(self.frequencies_for_length)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _scaling(self, seq_len: int) -> tuple[torch.Tensor, float]:
        return rope_scaling(
            self.method, self.dim, self.base, self.factor, self.original_max_position_embeddings, seq_len, **self.params
        )

    def forward(self, positions: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(positions, int):
            require_positive_int(positions, "the number of positions")
            positions = torch.arange(positions, device=self.inv_freq.device)
        if positions.numel():
            self.update_length(int(positions.max()) + 1)
        return rope_cos_sin(self.inv_freq, positions, self.attention_factor)

    def update_length(self, seq_len: int) -> bool:
        """Make ``inv_freq`` and ``attention_factor`` those of the current length; True when they were recomputed.

        Only the length-dependent methods react. Every length up to the training length shares the short-length
        frequencies (plain RoPE for ``dynamic``, the short factors for ``longrope``); a longer one gets those of
        ``seq_len`` itself. `solutions.rope_cache.RopeCache` applies the same rule through this method.
        """
        if self.method not in self.LENGTH_DEPENDENT:
            return False
        length = max(seq_len, self.original_max_position_embeddings)
        if length == self.frequencies_for_length:
            return False
        inv_freq, self.attention_factor = self._scaling(length)
        self.inv_freq = inv_freq.to(self.inv_freq.device)
        self.frequencies_for_length = length
        return True
