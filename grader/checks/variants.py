"""Right and wrong versions of the formulas that the mistake catalogues of several assignments share.

* The frequencies ``base^(-2i/d)`` of the sinusoidal encoding (Vaswani et al. 2017, section 3.5; Part 1) and
  of RoPE (Su et al. 2021, RoFormer eq. 15; Part 3), with the wrong exponents students write, the messages
  that name them, and the frequencies written as a student writes them (for the mistakes' examples).
* ALiBi's geometric slopes ``2^(-8h/n)``, right only for a power-of-two head count (Press et al. 2022,
  section 3), which students use for every head count: Part 2's slopes and Part 5's NTK-ALiBi.
* A RoPE rotation at given positions with a switchable layout, swap, direction and temperature, from which
  the catalogues of Part 3 (the Triton kernel), Part 4 (DeepSeek-V2's decoupled RoPE) and Part 5 (YaRN's
  logits, Peng et al. 2023) build their wrong outputs.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

import solutions

from .engine import Case, Mistake

# ----------------------------------------------------------------------------------------------------------
# Frequencies base^(-2i/d) and their wrong exponents
# ----------------------------------------------------------------------------------------------------------


def frequencies(dim: int, base: float, kind: str) -> torch.Tensor:
    """float64 frequencies for the correct exponent (``kind="2i/d"``) and its common wrong versions."""
    i = torch.arange(dim // 2, dtype=torch.float64)
    exponent = {
        "2i/d": -2 * i / dim,
        "i/d": -i / dim,
        "+2i/d": 2 * i / dim,
        "2(i+1)/d": -2 * (i + 1) / dim,
    }[kind]
    return float(base) ** exponent


def interleave(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``[..., n]`` and ``[..., n]`` to ``[..., 2n]``: column 2i from ``first``, column 2i + 1 from ``second``."""
    return torch.stack((first, second), dim=-1).flatten(-2)


EXPONENT_MESSAGES = {
    "i/d": "Your frequencies use the exponent i/d; the formula is base^(-2i/d): each frequency serves a *pair* "
           "of coordinates, so the exponent steps by 2/d (torch.arange(0, dim, 2) / dim).",
    "+2i/d": "Your frequencies grow with i: the minus sign of the exponent is missing. The formula is "
             "theta_i = base^(-2i/d) = 1 / base^(2i/d), from 1 down to almost 1/base.",
    "2(i+1)/d": "Your frequencies are shifted by one index: the first one must be base^0 = 1 (i counts from 0).",
}

EXPONENT_BUGS = {"i/d": dict(step=1), "+2i/d": dict(sign=1), "2(i+1)/d": dict(start=1)}
"""Each wrong exponent as the switch of `student_frequencies` that writes it."""


def student_frequencies(dim: int, base: float = 10000.0, *, step: int = 2, sign: int = -1,
                        start: int = 0) -> torch.Tensor:
    """float64 ``base^(sign * step * i / dim)`` for ``dim // 2`` values of i from ``start``: the frequencies
    as a student writes them, with the exponent's step, sign and first index as switches (2, -1 and 0 are
    right). The examples of the exponent mistakes are built on it, independently of `frequencies`."""
    i = torch.arange(start, start + dim // 2, dtype=torch.float64)
    return float(base) ** (sign * step * i / dim)


def exponent_mistakes(candidate_for_kind: Callable[[str, Callable, Case], Any],
                      example_for_bug: Callable[..., Callable]) -> list[Mistake]:
    """The three wrong exponents of a check: ``candidate_for_kind(kind, reference, case)`` is the output with
    that exponent, and ``example_for_bug(**EXPONENT_BUGS[kind])`` the student's function that writes it."""
    return [Mistake(f"exponent {kind}", EXPONENT_MESSAGES[kind],
                    candidate=(lambda reference, case, kind=kind: candidate_for_kind(kind, reference, case)),
                    example=example_for_bug(**EXPONENT_BUGS[kind]))
            for kind in ("i/d", "+2i/d", "2(i+1)/d")]


# ----------------------------------------------------------------------------------------------------------
# ALiBi's slopes
# ----------------------------------------------------------------------------------------------------------


def pow2_slopes(n: int) -> torch.Tensor:
    """The geometric sequence ``2^(-8/n), 2^(-16/n), ..., 2^(-8)``: ALiBi's slopes when n is a power of two."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / n) for h in range(n)], dtype=torch.float32)


ALIBI_GEOMETRIC_MESSAGE = (
    "For a head count that is not a power of two you used the geometric sequence 2^(-8/n), 2^(-16/n), ... "
    "directly. The paper's code takes all slopes of the largest power of two p < n, then every other slope "
    "of 2p (the 1st, 3rd, 5th, ...) until n slopes are filled (Press et al. 2022, section 3).")


# ----------------------------------------------------------------------------------------------------------
# A RoPE rotation with switchable mistakes
# ----------------------------------------------------------------------------------------------------------


def rotate_at(x: torch.Tensor, inv_freq: torch.Tensor, positions: torch.Tensor, *, interleaved: bool = False,
              attention_factor: float = 1.0, swap: bool = False, sign: float = 1.0) -> torch.Tensor:
    """``x [..., seq, d]`` rotated by RoPE at ``positions [seq]`` (`solutions.apply_rope`), cos and sin both
    multiplied by ``attention_factor`` (YaRN); ``interleaved`` picks the layout, ``swap`` exchanges cos and
    sin, and ``sign=-1`` rotates the wrong way: the wrong versions that catalogues compare a student with."""
    cos, sin = solutions.rope_cos_sin(inv_freq, positions, attention_factor)
    if swap:
        cos, sin = sin, cos
    return solutions.apply_rope(x, cos, sign * sin, interleaved)
