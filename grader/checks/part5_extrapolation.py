"""The checks of assignment ``part5_extrapolation``: Position Interpolation (Chen et al. 2023), NTK-aware scaling
(bloc97 2023), NTK-by-parts and YaRN with its attention factor (Peng et al. 2023), Dynamic NTK with the released
length rule, YaRN's logits, and NTK-ALiBi's slopes; plus `check_rope_scaling` for the whole registry.

Where the paper and the released code differ (YaRN's ramp, Dynamic NTK's length rule) the released code is
asked, and the paper's variant is a named mistake. Each check sits next to the catalogue of mistakes it
recognises; each mistake's ``example`` is a wrong function written the way a student writes it, proved by
``tests/test_grader_mistakes.py``.
"""

from __future__ import annotations

import functools
import math

import torch

import solutions
from solutions.rope_scaling import ntk_aware_base, ntk_by_parts_ramp

from .. import references
from .engine import Case, Catalogue, Mistake, check_function, generator, randn, report_pass
from .variants import ALIBI_GEOMETRIC_MESSAGE, pow2_slopes, rotate_at

GRADED_REFERENCES = {
    "check_rope_scaling": ["solutions.rope_scaling:rope_scaling"],
    "check_linear_scaling": ["solutions.rope_scaling:linear_scaling"],
    "check_ntk_aware_scaling": ["solutions.rope_scaling:ntk_aware_scaling", "solutions.rope_scaling:ntk_aware_base"],
    "check_ntk_by_parts_scaling": ["solutions.rope_scaling:ntk_by_parts_scaling",
                                   "solutions.rope_scaling:ntk_by_parts_inv_freq",
                                   "solutions.rope_scaling:ntk_by_parts_ramp", "solutions.rope_scaling:correction_dim"],
    "check_dynamic_ntk_scaling": ["solutions.rope_scaling:dynamic_ntk_scaling",
                                  "solutions.rope_scaling:ntk_aware_base"],
    "check_yarn_scaling": ["solutions.rope_scaling:yarn_scaling", "solutions.rope_scaling:ntk_by_parts_inv_freq",
                           "solutions.rope_scaling:ntk_by_parts_ramp", "solutions.rope_scaling:correction_dim"],
    "check_yarn_attention_factor": ["solutions.rope_scaling:yarn_attention_factor"],
    "check_ntk_alibi_slopes": ["solutions.alibi:ntk_alibi_slopes"],
    "check_yarn_cos_sin": ["solutions.rope_scaling:yarn_scaling", "solutions.rope_scaling:yarn_attention_factor"],
    "check_yarn_logits": ["solutions.rope_scaling:yarn_scaling", "solutions.rope_scaling:yarn_attention_factor"],
}
"""This assignment's entries of `grader.checks.GRADED_REFERENCES`."""

YARN_ONCE_MESSAGE = (
    "The YaRN attention factor is applied only once: your result carries sqrt of the reference's scaling. The factor "
    "0.1 ln(s) + 1 multiplies *both* cos and sin (so q and k are each scaled, and the logits by its square, "
    "YaRN eq. 22 with sqrt(1/t) folded into the rotation)."
)
YARN_MISSING_MESSAGE = (
    "The YaRN attention factor is missing: YaRN scales cos and sin by 0.1 ln(s) + 1 (YaRN eq. 22), which tempers the "
    "softmax at long lengths; without it the frequencies are just NTK-by-parts."
)


# ----------------------------------------------------------------------------------------------------------
# A method's arguments, and the frequencies of another method on the same geometry
# ----------------------------------------------------------------------------------------------------------


def _scaling_args(case):
    names = ("method", "dim", "base", "factor", "original_max_position_embeddings", "seq_len")
    values = dict(zip(names, case.args))
    values.update(case.kwargs)
    return values


def _method_inv_freq(case, method, **params):
    """The frequencies of another ``method`` (with its own ``params``) on this case's geometry."""
    a = _scaling_args(case)
    return solutions.rope_scaling(method, a["dim"], a["base"], a["factor"], a["original_max_position_embeddings"],
                                  a.get("seq_len"), **params)[0]


def _betas(case) -> dict:
    """The case's ``beta_fast``/``beta_slow``, where it sets them."""
    return {k: v for k, v in _scaling_args(case).items() if k in ("beta_fast", "beta_slow")}


def _keeping_the_factor(ref, case, inv_freq):
    """``(inv_freq, the reference's attention factor)``: a mistake in the frequencies only."""
    return inv_freq, ref(*case.args, **case.kwargs)[1]


def _registry_with(method: str, function):
    """A student's registry ``rope_scaling(method, dim, base, factor, L, seq_len=None)`` that sends ``method``
    to their own (wrong) ``function`` and the others to the reference."""
    def rope_scaling(name, dim, base, factor, original_max_position_embeddings, seq_len=None, **params):
        chosen = function if name == method else functools.partial(solutions.rope_scaling, name)
        return chosen(dim, base, factor, original_max_position_embeddings, seq_len, **params)

    return rope_scaling


# ----------------------------------------------------------------------------------------------------------
# Position Interpolation
# ----------------------------------------------------------------------------------------------------------


def _pi_variant(case, *, as_base=False):
    """PI done wrong: the base multiplied by s, or every frequency multiplied (not divided) by s."""
    a = _scaling_args(case)
    if a["method"] != "linear":
        return None
    if as_base:
        return solutions.rope_inv_freq(a["dim"], a["base"] * a["factor"]), 1.0
    return solutions.rope_inv_freq(a["dim"], a["base"]) * a["factor"], 1.0


def _student_linear(dim, base, factor, original_max_position_embeddings, seq_len=None, *, rule="divide"):
    if rule == "base":
        return solutions.rope_inv_freq(dim, base * factor), 1.0
    if rule == "multiply":
        return solutions.rope_inv_freq(dim, base) * factor, 1.0
    return solutions.rope_inv_freq(dim, base) / factor, 1.0


LINEAR_SCALING_MISTAKES = [
    Mistake("PI as base change", "Position Interpolation applied as a base change: PI divides every frequency "
                                 "(equivalently every position) by the factor, theta_i / s (Chen et al. 2023, eq. 4). "
                                 "Multiplying the base by s leaves the fastest frequency untouched: that is NTK-like "
                                 "scaling, not PI.",
            candidate=lambda ref, case: _pi_variant(case, as_base=True),
            example=functools.partial(_student_linear, rule="base")),
    Mistake("PI extrapolated", "Your PI frequencies are multiplied by the factor; PI *divides* them (positions m "
                               "become m / s, so the longest context maps into the trained range).",
            candidate=lambda ref, case: _pi_variant(case),
            example=functools.partial(_student_linear, rule="multiply")),
]


# ----------------------------------------------------------------------------------------------------------
# NTK-aware scaling
# ----------------------------------------------------------------------------------------------------------


def _ntk_with_base(case, new_base):
    """``(plain RoPE frequencies of new_base(base, s, d), 1.0)``: an NTK-aware base computed the wrong way."""
    a = _scaling_args(case)
    return solutions.rope_inv_freq(a["dim"], new_base(float(a["base"]), float(a["factor"]), a["dim"])), 1.0


def _student_ntk_aware(dim, base, factor, original_max_position_embeddings, seq_len=None, *,
                       stretch=lambda base, s, d: base * s ** (d / (d - 2))):
    return solutions.rope_inv_freq(dim, stretch(base, factor, dim)), 1.0


NTK_AWARE_MISTAKES = [
    Mistake("base times s", "You multiplied the base by s. The NTK-aware base is base * s^(d / (d - 2)): the exponent "
                            "makes the slowest pair, theta_{d/2-1} = base^(-(d-2)/d), come out divided by exactly s.",
            candidate=lambda ref, case: _ntk_with_base(case, lambda b, s, d: b * s),
            example=functools.partial(_student_ntk_aware, stretch=lambda base, s, d: base * s)),
    Mistake("exponent inverted", "Your base is base * s^((d - 2) / d); the exponent is d / (d - 2), so that "
                                 "(base')^(-(d-2)/d) = base^(-(d-2)/d) / s.",
            candidate=lambda ref, case: _ntk_with_base(case, lambda b, s, d: b * s ** ((d - 2) / d)),
            example=functools.partial(_student_ntk_aware, stretch=lambda base, s, d: base * s ** ((d - 2) / d))),
    Mistake("PI", "Every pair is divided by s: that is Position Interpolation. NTK-aware scaling changes the base "
                  "instead, so the fastest pair (theta_0 = 1) is untouched and only the slowest is divided by s.",
            candidate=lambda ref, case: (_method_inv_freq(case, "linear"), 1.0),
            example=_student_linear),
    Mistake("base divided", "Your base got smaller. A larger base means slower rotations, which is what fitting a "
                            "longer context needs: base' = base * s^(d / (d - 2)).",
            candidate=lambda ref, case: _ntk_with_base(case, lambda b, s, d: b / s ** (d / (d - 2))),
            example=functools.partial(_student_ntk_aware, stretch=lambda base, s, d: base / s ** (d / (d - 2)))),
]


# ----------------------------------------------------------------------------------------------------------
# NTK-by-parts
# ----------------------------------------------------------------------------------------------------------


def _by_parts_inv_freq(case, **ramp_options):
    """NTK-by-parts frequencies with the case's betas and another ramp (``ramp``, ``truncate``)."""
    return _method_inv_freq(case, "ntk_by_parts", **_betas(case), **ramp_options)


def _ramp_reversed(case):
    """NTK-by-parts with gamma and 1 - gamma swapped: the fast pairs divided by the factor, the slow ones kept."""
    a = _scaling_args(case)
    inv_freq = solutions.rope_inv_freq(a["dim"], a["base"])
    keep = ntk_by_parts_ramp(a["dim"], a["base"], a["original_max_position_embeddings"], **_betas(case))
    return keep * inv_freq / float(a["factor"]) + (1 - keep) * inv_freq


def _paper_ramp(dim, base, original_max_position_embeddings, beta_fast=32.0, beta_slow=1.0):
    """A student's ramp from the YaRN paper (eq. 18): linear in the number of turns within L."""
    turns = original_max_position_embeddings * solutions.rope_inv_freq(dim, base).double() / (2 * math.pi)
    return ((turns - beta_slow) / (beta_fast - beta_slow)).clamp(0, 1).float()


def _unrounded_ramp(dim, base, original_max_position_embeddings, beta_fast=32.0, beta_slow=1.0):
    """A student's released ramp without the outward rounding of the correction dimensions."""
    def index(turns):
        return dim * math.log(original_max_position_embeddings / (2 * math.pi * turns)) / (2 * math.log(base))

    low, high = max(index(beta_fast), 0), min(index(beta_slow), dim - 1)
    return 1 - ((torch.arange(dim // 2) - low) / (high - low)).clamp(0, 1).float()


def _student_by_parts(dim, base, factor, original_max_position_embeddings, seq_len=None, beta_fast=32.0,
                      beta_slow=1.0, *, ramp=ntk_by_parts_ramp, reverse=False):
    """A student's NTK-by-parts: gamma = 1 keeps a pair, 0 divides it by the factor (``reverse`` mixes them up)."""
    plain = solutions.rope_inv_freq(dim, base)
    gamma = ramp(dim, base, original_max_position_embeddings, beta_fast, beta_slow)
    if reverse:
        return gamma * plain / factor + (1 - gamma) * plain, 1.0
    return (1 - gamma) * plain / factor + gamma * plain, 1.0


BY_PARTS_MISTAKES = [
    Mistake("paper ramp", "Your ramp is the YaRN paper's, linear in the number of turns r = L / lambda_i (eq. 18). "
                          "This assignment uses the released code's ramp (YaRN, Hugging Face and DeepSeek), linear in "
                          "the pair index i between the two correction dimensions.",
            candidate=lambda ref, case: _keeping_the_factor(ref, case, _by_parts_inv_freq(case, ramp="paper")),
            example=functools.partial(_student_by_parts, ramp=_paper_ramp)),
    Mistake("ramp not rounded", "Your ramp runs between the correction dimensions as computed; the released code "
                                "first rounds them outwards: low = floor(d(beta_fast)) and high = ceil(d(beta_slow)).",
            candidate=lambda ref, case: _keeping_the_factor(ref, case, _by_parts_inv_freq(case, truncate=False)),
            example=functools.partial(_student_by_parts, ramp=_unrounded_ramp)),
    Mistake("ramp reversed", "Your ramp is the wrong way round: you divided the fast pairs (small i, many turns within "
                             "L) by the factor and kept the slow ones. gamma = 1 keeps a pair, and it is 1 below the "
                             "low correction dimension.",
            candidate=lambda ref, case: _keeping_the_factor(ref, case, _ramp_reversed(case)),
            example=functools.partial(_student_by_parts, reverse=True)),
    Mistake("PI everywhere", "Every pair is divided by the factor: that is Position Interpolation. NTK-by-parts keeps "
                             "the fast pairs (gamma = 1) and divides only the slow ones.",
            candidate=lambda ref, case: _keeping_the_factor(ref, case, _method_inv_freq(case, "linear")),
            example=functools.partial(_student_by_parts, ramp=lambda dim, *rest: torch.zeros(dim // 2))),
    Mistake("no pair divided", "Your frequencies are plain RoPE: no pair is divided by the factor. The slow pairs "
                               "(gamma = 0, i above the high correction dimension) must become theta_i / s.",
            candidate=lambda ref, case: _keeping_the_factor(ref, case, solutions.rope_inv_freq(
                _scaling_args(case)["dim"], _scaling_args(case)["base"])),
            example=functools.partial(_student_by_parts, ramp=lambda dim, *rest: torch.ones(dim // 2))),
]


# ----------------------------------------------------------------------------------------------------------
# Dynamic NTK
# ----------------------------------------------------------------------------------------------------------


def _dynamic_below_training_length(case):
    """The released Dynamic NTK formula applied below the training length too (where it is defined, s' > 0)."""
    a = _scaling_args(case)
    length, original, factor = a["seq_len"], a["original_max_position_embeddings"], float(a["factor"])
    effective = factor * length / original - (factor - 1)
    if length >= original or effective <= 0:
        return None
    return solutions.rope_inv_freq(a["dim"], ntk_aware_base(a["dim"], a["base"], effective)), 1.0


def _student_dynamic(dim, base, factor, original_max_position_embeddings, seq_len, *, rule="released",
                     plain_below=True):
    """A student's Dynamic NTK: NTK-aware scaling with a factor that follows seq_len (``rule``)."""
    if plain_below and seq_len <= original_max_position_embeddings:
        return solutions.rope_inv_freq(dim, base), 1.0
    length_factor = {"released": factor * seq_len / original_max_position_embeddings - (factor - 1),
                     "paper": max(1.0, seq_len / original_max_position_embeddings), "static": factor}[rule]
    return _student_ntk_aware(dim, base, length_factor, original_max_position_embeddings)


DYNAMIC_NTK_MISTAKES = [
    Mistake("paper length rule", "You used the YaRN paper's length rule, s' = l / L (eq. 24). This assignment follows "
                                 "the released code: s' = s * l / L - (s - 1), which reaches s' = s^2 - s + 1 at "
                                 "l = s L.",
            candidate=lambda ref, case: (_method_inv_freq(case, "dynamic", length_rule="paper"), 1.0)
            if _scaling_args(case)["seq_len"] > _scaling_args(case)["original_max_position_embeddings"] else None,
            example=functools.partial(_student_dynamic, rule="paper")),
    Mistake("static factor", "Your frequencies ignore the current length: that is static NTK-aware scaling with the "
                             "factor s. Dynamic NTK computes its factor from seq_len at every call.",
            candidate=lambda ref, case: (_method_inv_freq(case, "ntk"), 1.0),
            example=functools.partial(_student_dynamic, rule="static", plain_below=False)),
    Mistake("not plain below L", "Up to the training length (seq_len <= L) Dynamic NTK is plain RoPE: the released "
                                 "formula is only applied once the sequence is longer than L.",
            candidate=lambda ref, case: _dynamic_below_training_length(case),
            example=functools.partial(_student_dynamic, plain_below=False)),
]


# ----------------------------------------------------------------------------------------------------------
# YaRN: the attention factor, the frequencies, cos/sin and the logits
# ----------------------------------------------------------------------------------------------------------


def _yarn_factor_variant(case, rule):
    """``rule(factor, mscale)`` on the case's arguments: the attention factor computed another way."""
    factor = float(case.args[0])
    mscale = float(case.args[1]) if len(case.args) > 1 else float(case.kwargs.get("mscale", 1.0))
    return rule(factor, mscale)


def _student_attention_factor(factor, mscale=1.0, *, log=math.log, plus_one=True, guard=True, use_mscale=True,
                              power=1.0):
    """A student's sqrt(1/t) = 0.1 * mscale * ln(s) + 1, 1 for s <= 1; the switches write its mistakes."""
    if guard and factor <= 1:
        return 1.0
    value = 0.1 * (mscale if use_mscale else 1.0) * log(factor) + (1.0 if plus_one else 0.0)
    return value ** power


YARN_FACTOR_MISTAKES = [
    Mistake("log10", "You used log10; YaRN's ln is the natural logarithm (math.log).",
            candidate=lambda ref, case: _yarn_factor_variant(
                case, lambda s, m: 0.1 * m * math.log10(s) + 1.0 if s > 1 else 1.0),
            example=functools.partial(_student_attention_factor, log=math.log10)),
    Mistake("no +1", "The + 1 is missing: sqrt(1/t) = 0.1 ln(s) + 1, which is 1 (no change) at s = 1.",
            candidate=lambda ref, case: _yarn_factor_variant(
                case, lambda s, m: 0.1 * m * math.log(s) if s > 1 else 0.0),
            example=functools.partial(_student_attention_factor, plus_one=False, guard=False)),
    Mistake("squared", "You returned (0.1 ln(s) + 1)^2 = 1/t, the factor of the logits. yarn_attention_factor is its "
                       "square root, sqrt(1/t): it multiplies cos and sin (q and k), so the logits get its square.",
            candidate=lambda ref, case: ref(*case.args, **case.kwargs) ** 2,
            example=functools.partial(_student_attention_factor, power=2.0)),
    Mistake("inverted", "Your factor is below 1: it would flatten the softmax. YaRN *sharpens* it at long lengths: "
                        "sqrt(1/t) = 0.1 ln(s) + 1 >= 1.",
            candidate=lambda ref, case: 1.0 / ref(*case.args, **case.kwargs),
            example=functools.partial(_student_attention_factor, power=-1.0)),
    Mistake("no guard below 1", "For s <= 1 there is no extension and the factor is exactly 1; your formula gives less "
                                "than 1 there.",
            candidate=lambda ref, case: _yarn_factor_variant(case, lambda s, m: 0.1 * m * math.log(s) + 1.0)
            if 0 < float(case.args[0]) < 1 else None,
            example=functools.partial(_student_attention_factor, guard=False), example_options={"cases": [(0.5,)]}),
    Mistake("mscale ignored", "mscale is ignored: it multiplies the 0.1, sqrt(1/t) = 0.1 * mscale * ln(s) + 1 "
                              "(DeepSeek's coefficient).",
            candidate=lambda ref, case: ref(case.args[0]),
            example=functools.partial(_student_attention_factor, use_mscale=False),
            example_options={"cases": [(4.0, 0.707)]}),
]


def _with_factor(ref, case, power):
    """YaRN's frequencies with the attention factor raised to ``power`` (0: missing, 1/2: once, 2: squared)."""
    if _scaling_args(case)["method"] != "yarn":
        return None
    inv_freq, factor = ref(*case.args, **case.kwargs)
    return inv_freq, factor ** power


def _student_yarn(dim, base, factor, original_max_position_embeddings, seq_len=None, beta_fast=32.0, beta_slow=1.0,
                  *, by_parts=_student_by_parts, temperature=solutions.yarn_attention_factor):
    """A student's YaRN: their NTK-by-parts frequencies and their attention factor (``temperature(s)``)."""
    inv_freq, _ = by_parts(dim, base, factor, original_max_position_embeddings, beta_fast=beta_fast,
                           beta_slow=beta_slow)
    return inv_freq, temperature(factor)


_YARN_SCALING_FACTOR_MISTAKES = [
    Mistake("YaRN factor missing", YARN_MISSING_MESSAGE, candidate=lambda ref, case: _with_factor(ref, case, 0),
            example=functools.partial(_student_yarn, temperature=lambda s: 1.0)),
    Mistake("YaRN factor once", YARN_ONCE_MESSAGE, candidate=lambda ref, case: _with_factor(ref, case, 0.5),
            example=functools.partial(_student_yarn,
                                      temperature=lambda s: math.sqrt(solutions.yarn_attention_factor(s)))),
    Mistake("YaRN factor squared", "Your attention factor is the square of the reference's: the returned factor "
                                   "multiplies cos and sin, and the logits get its square automatically; do not square "
                                   "it yourself.",
            candidate=lambda ref, case: _with_factor(ref, case, 2),
            example=functools.partial(_student_yarn, temperature=lambda s: solutions.yarn_attention_factor(s) ** 2)),
]

YARN_SCALING_MISTAKES = _YARN_SCALING_FACTOR_MISTAKES + [
    mistake.with_example(functools.partial(_student_yarn, by_parts=mistake.example)) for mistake in BY_PARTS_MISTAKES
]
"""YaRN's frequencies: its attention factor's mistakes, and NTK-by-parts' mistakes (a student's YaRN built on
their wrong NTK-by-parts)."""

ROPE_SCALING_MISTAKES = [
    mistake.with_example(_registry_with("linear", mistake.example), method="linear")
    for mistake in LINEAR_SCALING_MISTAKES
] + [
    mistake.with_example(_registry_with("yarn", mistake.example), method="yarn")
    for mistake in _YARN_SCALING_FACTOR_MISTAKES
]
"""The registry's mistakes (`check_rope_scaling`): PI's and YaRN's attention factor's, with a student's registry
that dispatches to their wrong function."""


def _yarn_factor(case) -> float:
    dim, base, factor, original = case.args[:4]
    return solutions.rope_scaling("yarn", dim, base, factor, original)[1]


def _student_yarn_cos_sin(dim, base, factor, original_max_position_embeddings, positions, *, cos_scale="factor",
                          sin_scale="factor"):
    """A student's YaRN cos/sin; each of ``cos_scale``, ``sin_scale`` is "factor", "sqrt" or None (unscaled)."""
    inv_freq, attention_factor = _student_yarn(dim, base, factor, original_max_position_embeddings)
    angles = positions.float()[..., None] * inv_freq
    scales = {"factor": attention_factor, "sqrt": math.sqrt(attention_factor), None: 1.0}
    return scales[cos_scale] * torch.cos(angles), scales[sin_scale] * torch.sin(angles)


YARN_COS_SIN_MISTAKES = [
    Mistake("YaRN factor missing", YARN_MISSING_MESSAGE,
            candidate=lambda ref, case: tuple(t / _yarn_factor(case) for t in ref(*case.args)),
            example=functools.partial(_student_yarn_cos_sin, cos_scale=None, sin_scale=None)),
    Mistake("YaRN factor once", YARN_ONCE_MESSAGE,
            candidate=lambda ref, case: tuple(t / math.sqrt(_yarn_factor(case)) for t in ref(*case.args)),
            example=functools.partial(_student_yarn_cos_sin, cos_scale="sqrt", sin_scale="sqrt")),
    Mistake("YaRN factor on cos only", "The YaRN attention factor multiplies cos but not sin: scale both (it scales "
                                       "the whole rotated vector).",
            candidate=lambda ref, case: (lambda c, s: (c, s / _yarn_factor(case)))(*ref(*case.args)),
            example=functools.partial(_student_yarn_cos_sin, sin_scale=None)),
]


def _yarn_logit_factor(case) -> float:
    q = case.args[0]
    base, factor, original = case.args[4:7]
    return solutions.rope_scaling("yarn", q.shape[-1], base, factor, original)[1]


def _yarn_logits_variant(case, *, plain_frequencies=False, interleaved=False):
    """The logits with YaRN's factor on q and k but another rotation: plain RoPE frequencies, or the other layout."""
    q, k, q_positions, k_positions, base, factor, original = case.args
    dim = q.shape[-1]
    if plain_frequencies:
        inv_freq, attention_factor = solutions.rope_inv_freq(dim, base), _yarn_logit_factor(case)
    else:
        inv_freq, attention_factor = solutions.rope_scaling("yarn", dim, base, factor, original)
    return (rotate_at(q, inv_freq, q_positions, interleaved=interleaved, attention_factor=attention_factor)
            @ rotate_at(k, inv_freq, k_positions, interleaved=interleaved, attention_factor=attention_factor).T)


def _student_yarn_logits(q, k, q_positions, k_positions, base, factor, original_max_position_embeddings, *,
                         on_cos_sin=1, on_logits=0, frequencies="yarn", interleaved=False):
    """A student's YaRN logits: the attention factor (a) folded into cos and sin ``on_cos_sin`` times (0, 1 or 2:
    on q only, or on both) and (a^2) multiplied into the logits ``on_logits`` times."""
    dim = q.shape[-1]
    inv_freq, attention_factor = _student_yarn(dim, base, factor, original_max_position_embeddings)
    if frequencies == "plain":
        inv_freq = solutions.rope_inv_freq(dim, base)

    def rotate(x, positions, scale):
        angles = positions.float()[:, None] * inv_freq
        cos, sin = scale * torch.cos(angles), scale * torch.sin(angles)
        if interleaved:
            a, b = x[..., 0::2], x[..., 1::2]
            return torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-1).flatten(-2)
        a, b = x.chunk(2, dim=-1)
        return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1)

    q_scale = attention_factor if on_cos_sin >= 1 else 1.0
    k_scale = attention_factor if on_cos_sin >= 2 else 1.0
    logits = rotate(q, q_positions, q_scale) @ rotate(k, k_positions, k_scale).T
    return attention_factor ** (2 * on_logits) * logits


YARN_LOGITS_MISTAKES = [
    Mistake("YaRN factor missing", YARN_MISSING_MESSAGE,
            candidate=lambda ref, case: ref(*case.args) / _yarn_logit_factor(case) ** 2,
            example=functools.partial(_student_yarn_logits, on_cos_sin=0)),
    Mistake("YaRN factor once", YARN_ONCE_MESSAGE,
            candidate=lambda ref, case: ref(*case.args) / _yarn_logit_factor(case),
            example=functools.partial(_student_yarn_logits, on_cos_sin=1)),
    Mistake("YaRN factor twice", "The YaRN attention factor is applied twice: your logits carry its fourth power. "
                                 "Scale q and k by it (or cos and sin, which is the same), *or* the logits by its "
                                 "square, not both.",
            candidate=lambda ref, case: ref(*case.args) * _yarn_logit_factor(case) ** 2,
            example=functools.partial(_student_yarn_logits, on_cos_sin=2, on_logits=1)),
    Mistake("plain frequencies", "Your rotation uses plain RoPE frequencies (with the right attention factor): YaRN "
                                 "rotates with the NTK-by-parts frequencies, the first item `yarn_scaling` returns.",
            candidate=lambda ref, case: _yarn_logits_variant(case, plain_frequencies=True),
            example=functools.partial(_student_yarn_logits, on_cos_sin=2, frequencies="plain")),
    Mistake("layout", "Wrong RoPE layout: you rotated interleaved pairs (2i, 2i + 1); this task uses the half-split "
                      "layout (coordinate i paired with i + d/2).",
            candidate=lambda ref, case: _yarn_logits_variant(case, interleaved=True),
            example=functools.partial(_student_yarn_logits, on_cos_sin=2, interleaved=True)),
]


# ----------------------------------------------------------------------------------------------------------
# NTK-ALiBi
# ----------------------------------------------------------------------------------------------------------


def _ntk_alibi_variant(case, *, exponents=None, slopes=None, multiply=False):
    """NTK-ALiBi slopes ``m_h / factor^e_h`` with other exponents ``e``, other base slopes, or multiplied."""
    num_heads, factor = case.args[:2]
    base_slopes = (solutions.alibi_slopes(num_heads) if slopes is None else slopes).double()
    if exponents is None:
        exponents = torch.arange(num_heads, dtype=torch.float64) / max(num_heads - 1, 1)
    divisor = float(factor) ** exponents
    return (base_slopes * divisor if multiply else base_slopes / divisor).to(torch.float32)


def _slope_ranks(num_heads):
    """Each head's rank among ALiBi's slopes, steepest first, as (rank) / (H - 1): NTK-ALiBi's exponents by rank."""
    order = solutions.alibi_slopes(num_heads).argsort(descending=True)  # steepest first
    ranks = torch.empty(num_heads, dtype=torch.float64)
    ranks[order] = torch.arange(num_heads, dtype=torch.float64)
    return ranks / max(num_heads - 1, 1)


def _student_ntk_alibi(num_heads, factor, *, exponent="index", multiply=False, slopes=solutions.alibi_slopes):
    """A student's NTK-ALiBi: ``slopes(n) / factor^e_h``; ``exponent`` is "index" ((h - 1)/(H - 1), right),
    "one", "reversed", "h/H" or "rank" (by the slopes' order)."""
    base_slopes = torch.as_tensor(slopes(num_heads), dtype=torch.float64)
    h = torch.arange(num_heads, dtype=torch.float64)
    last = max(num_heads - 1, 1)
    if exponent == "rank":
        rank = torch.empty(num_heads, dtype=torch.float64)
        rank[base_slopes.argsort(descending=True)] = h
        e = rank / last
    else:
        e = {"index": h / last, "one": torch.ones(num_heads, dtype=torch.float64), "reversed": (last - h) / last,
             "h/H": (h + 1) / num_heads}[exponent]
    divisor = float(factor) ** e
    return (base_slopes * divisor if multiply else base_slopes / divisor).float()


NTK_ALIBI_MISTAKES = [
    Mistake("every head divided", "You divided every slope by the factor: that is position interpolation for ALiBi. "
                                  "NTK-ALiBi keeps the first head as trained and divides only the last by the factor, "
                                  "with factor^((h-1)/(H-1)) in between.",
            candidate=lambda ref, case: _ntk_alibi_variant(
                case, exponents=torch.ones(case.args[0], dtype=torch.float64)),
            example=functools.partial(_student_ntk_alibi, exponent="one")),
    Mistake("reversed", "The blend runs the wrong way: your first head is divided by the factor and your last is "
                        "unchanged. Head 1 (the steepest, most local) keeps its slope; head H is divided by the "
                        "factor.",
            candidate=lambda ref, case: _ntk_alibi_variant(
                case, exponents=torch.arange(case.args[0], dtype=torch.float64).flip(0) / max(case.args[0] - 1, 1)),
            example=functools.partial(_student_ntk_alibi, exponent="reversed")),
    Mistake("exponent h/H", "Your exponents are h/H for h = 1 .. H; they are (h - 1)/(H - 1), from 0 for the first "
                            "head to 1 for the last.",
            candidate=lambda ref, case: _ntk_alibi_variant(
                case, exponents=torch.arange(1, case.args[0] + 1, dtype=torch.float64) / case.args[0]),
            example=functools.partial(_student_ntk_alibi, exponent="h/H")),
    Mistake("multiplied", "Your slopes are multiplied by the factor's powers; NTK-ALiBi *divides* them, so the gentle "
                          "heads reach farther.", candidate=lambda ref, case: _ntk_alibi_variant(case, multiply=True),
            example=functools.partial(_student_ntk_alibi, multiply=True)),
    Mistake("by slope rank", "You applied the divisors in the order of the slopes (steepest first). The formula "
                             "follows the head index h, and for a head count that is not a power of two ALiBi's "
                             "slopes are not sorted by index.",
            candidate=lambda ref, case: _ntk_alibi_variant(case, exponents=_slope_ranks(case.args[0])),
            example=functools.partial(_student_ntk_alibi, exponent="rank"), example_options={"cases": [(12, 4.0)]}),
    Mistake("geometric for any n", ALIBI_GEOMETRIC_MESSAGE,
            candidate=lambda ref, case: _ntk_alibi_variant(case, slopes=pow2_slopes(case.args[0])),
            example=functools.partial(_student_ntk_alibi,
                                      slopes=lambda n: [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]),
            example_options={"cases": [(12, 4.0)]}),
]


# ----------------------------------------------------------------------------------------------------------
# The checks
# ----------------------------------------------------------------------------------------------------------


def _scaling_method_cases(method: str, cases) -> list[Case]:
    """Cases given as ``(dim, base, factor, L[, seq_len][, {option: value}])``, built in the registry's argument
    order, ``(method, dim, base, factor, L[, seq_len])``, so that `solutions.rope_scaling` is the reference and
    the mistakes read the arguments by name (`_scaling_args`)."""
    built = []
    for spec in cases:
        spec = tuple(spec)
        options = dict(spec[-1]) if spec and isinstance(spec[-1], dict) else {}
        values = spec[:-1] if spec and isinstance(spec[-1], dict) else spec
        dim, base, factor, original = values[:4]
        seq_len = values[4] if len(values) > 4 else None
        label = (f"dim={dim}, base={base:g}, factor={factor:g}, L={original}"
                 + (f", seq_len={seq_len}" if seq_len is not None else "")
                 + "".join(f", {k}={v:g}" for k, v in options.items()))
        args = (method, dim, base, factor, original) + (() if seq_len is None else (seq_len,))
        built.append(Case(args, options, label=label))
    return built


def _check_scaling_method(student_fn, method: str, cases, *, name: str, mistakes, hint: str, hidden: bool) -> None:
    """One method's own function, ``student_fn(dim, base, factor, original_max_position_embeddings[, seq_len],
    **options) -> (inv_freq, attention_factor)`` (the signature of the registry's entries), against
    ``solutions.rope_scaling(method, ...)``."""
    # The cases' first argument, the method's name, is the registry's (the reference's) alone: a method's own
    # function does not take it.
    check_function(student_fn, solutions.rope_scaling, _scaling_method_cases(method, cases), name=name,
                   rtol=1e-5, atol=1e-7, mistakes=mistakes, names=("inv_freq", "attention_factor"), hidden=hidden,
                   hint=hint, skip_args=1)


def check_linear_scaling(student_fn, *, cases=((16, 10000.0, 4.0, 64), (8, 500.0, 2.5, 128)), hidden=False) -> None:
    """``linear_scaling(dim, base, factor, original_max_position_embeddings)``: Position Interpolation."""
    _check_scaling_method(student_fn, "linear", cases, name="linear_scaling", mistakes=LINEAR_SCALING_MISTAKES,
                          hidden=hidden, hint="PI divides every frequency by the factor, theta_i / s, and has no "
                                              "attention factor (1.0) (Chen et al. 2023, eq. 4).")


def check_ntk_aware_scaling(student_fn, *, cases=((16, 10000.0, 4.0, 64), (64, 10000.0, 8.0, 4096)),
                            hidden=False) -> None:
    """``ntk_aware_scaling(dim, base, factor, original_max_position_embeddings)``."""
    _check_scaling_method(student_fn, "ntk", cases, name="ntk_aware_scaling", mistakes=NTK_AWARE_MISTAKES,
                          hidden=hidden, hint="Plain RoPE frequencies of the base base * s^(d / (d - 2)), and "
                                              "attention factor 1.0.")


def check_ntk_by_parts_scaling(student_fn, *, cases=((64, 10000.0, 8.0, 4096), (32, 10000.0, 4.0, 256)),
                               hidden=False) -> None:
    """``ntk_by_parts_scaling(dim, base, factor, original_max_position_embeddings, beta_fast=32, beta_slow=1)``
    with the released ramp (`solutions.rope_scaling.ntk_by_parts_ramp`'s default)."""
    _check_scaling_method(student_fn, "ntk_by_parts", cases, name="ntk_by_parts_scaling",
                          mistakes=BY_PARTS_MISTAKES, hidden=hidden,
                          hint="theta'_i = (1 - gamma_i) theta_i / s + gamma_i theta_i, with gamma from your "
                               "ntk_by_parts_ramp, and attention factor 1.0 (YaRN, Definition 2).")


def check_dynamic_ntk_scaling(student_fn, *, cases=((64, 10000.0, 4.0, 4096, 8192), (16, 10000.0, 2.0, 64, 48)),
                              hidden=False) -> None:
    """``dynamic_ntk_scaling(dim, base, factor, original_max_position_embeddings, seq_len)``, the released
    length rule."""
    _check_scaling_method(student_fn, "dynamic", cases, name="dynamic_ntk_scaling", mistakes=DYNAMIC_NTK_MISTAKES,
                          hidden=hidden, hint="seq_len <= L: plain RoPE. Beyond: NTK-aware scaling with the factor "
                                              "s * seq_len / L - (s - 1). Attention factor 1.0.")


def check_yarn_scaling(student_fn, *, cases=((64, 10000.0, 8.0, 4096),), hidden=False) -> None:
    """``yarn_scaling(dim, base, factor, original_max_position_embeddings, beta_fast=32, beta_slow=1)``."""
    _check_scaling_method(student_fn, "yarn", cases, name="yarn_scaling", mistakes=YARN_SCALING_MISTAKES,
                          hidden=hidden, hint="The NTK-by-parts frequencies, and the attention factor "
                                              "yarn_attention_factor(s) = 0.1 ln(s) + 1 (YaRN eq. 22).")


def check_yarn_attention_factor(student_fn, *, cases=((8.0,), (2.0,), (1.0,)), hidden=False) -> None:
    """``yarn_attention_factor(factor, mscale=1.0)``, a float; ``cases`` are (factor[, mscale])."""
    built = [Case(tuple(c), label=f"factor={c[0]:g}" + (f", mscale={c[1]:g}" if len(c) > 1 else "")) for c in cases]
    check_function(student_fn, solutions.yarn_attention_factor, built, name="yarn_attention_factor", rtol=1e-6,
                   atol=1e-9, mistakes=YARN_FACTOR_MISTAKES, hidden=hidden,
                   hint="sqrt(1/t) = 0.1 * mscale * ln(s) + 1 for s > 1, and 1 for s <= 1 (YaRN eq. 22).")


def check_ntk_alibi_slopes(student_fn, *, cases=((8, 4.0), (4, 2.0)), hidden=False) -> None:
    """``ntk_alibi_slopes(num_heads, factor)``: float32 ``[num_heads]``; ``cases`` are (num_heads, factor)."""
    built = [Case((n, float(factor)), label=f"num_heads={n}, factor={factor:g}") for n, factor in cases]
    check_function(student_fn, solutions.ntk_alibi_slopes, built, name="ntk_alibi_slopes", rtol=1e-5, atol=1e-9,
                   mistakes=NTK_ALIBI_MISTAKES, hidden=hidden,
                   hint="m'_h = m_h / factor^((h - 1) / (H - 1)) for h = 1 .. H, with m_h ALiBi's slopes; one head "
                        "keeps its slope.")


def check_rope_scaling(student_fn, method: str, *, cases=((16, 10000.0, 4.0, 64),), hidden=False) -> None:
    """``student_fn(method, dim, base, factor, original_max_position_embeddings)`` returning
    ``(inv_freq, attention_factor)``, against `solutions.rope_scaling`."""
    built = [Case((method,) + tuple(c), label=f"method={method!r}, dim={c[0]}, base={c[1]:g}, factor={c[2]:g}, "
                                              f"L={c[3]}") for c in cases]
    check_function(student_fn, solutions.rope_scaling, built, name=f"rope_scaling({method!r})", rtol=1e-5, atol=1e-7,
                   mistakes=ROPE_SCALING_MISTAKES, names=("inv_freq", "attention_factor"), hidden=hidden)


def check_yarn_cos_sin(student_fn, *, cases=((16, 10000.0, 8.0, 64, (0, 5, 100)),), hidden=False) -> None:
    """``yarn_cos_sin(dim, base, factor, original_max_position_embeddings, positions) -> (cos, sin)``."""
    built = [Case(tuple(c[:4]) + (torch.tensor(c[4]),), label=f"dim={c[0]}, factor={c[2]:g}, L={c[3]}") for c in cases]
    check_function(student_fn, references.yarn_cos_sin, built, name="yarn_cos_sin", rtol=1e-5, atol=1e-5,
                   mistakes=YARN_COS_SIN_MISTAKES, names=("cos", "sin"), hidden=hidden)


def check_yarn_logits(student_fn, *, cases=((3, 4, 16, 10000.0, 8.0, 64), (2, 150, 16, 10000.0, 4.0, 64)), seed=0,
                      hidden=False) -> None:
    """``yarn_logits(q, k, q_positions, k_positions, base, factor, original_max_position_embeddings)``; ``cases``
    are (q_len, k_len, dim, base, factor, L), with the queries at the last k_len positions."""
    g = generator(seed)
    for q_len, k_len, dim, base, factor, original in cases:
        args = (randn((q_len, dim), g), randn((k_len, dim), g), torch.arange(k_len - q_len, k_len),
                torch.arange(k_len), base, factor, original)
        case = Case(args, label=f"q [{q_len}, {dim}], k [{k_len}, {dim}], positions up to {k_len - 1}, "
                                f"factor={factor:g}, L={original}")
        # float32 angles p * theta are off by about p * 6e-8 rad, and a logit sums dim / 2 such pairs: the tolerance
        # grows with the last position, so that angles in float32 (as the reference) or in float64 both pass.
        atol = max(1e-5, 1e-7 * (k_len - 1) * math.sqrt(dim))
        check_function(student_fn, references.yarn_logits, [case], name="yarn_logits", rtol=1e-4, atol=atol,
                       mistakes=YARN_LOGITS_MISTAKES, hidden=hidden, quiet=True,
                       hint="Rotate q and k (half-split) with yarn_scaling's frequencies, cos and sin both "
                            "multiplied by its attention factor; then q_rot @ k_rot.T.")
    report_pass("yarn_logits", len(cases), hidden)


CATALOGUES = [
    Catalogue(check_linear_scaling, LINEAR_SCALING_MISTAKES),
    Catalogue(check_ntk_aware_scaling, NTK_AWARE_MISTAKES),
    Catalogue(check_ntk_by_parts_scaling, BY_PARTS_MISTAKES),
    Catalogue(check_dynamic_ntk_scaling, DYNAMIC_NTK_MISTAKES),
    Catalogue(check_yarn_scaling, YARN_SCALING_MISTAKES),
    Catalogue(check_yarn_attention_factor, YARN_FACTOR_MISTAKES),
    Catalogue(check_ntk_alibi_slopes, NTK_ALIBI_MISTAKES),
    Catalogue(check_rope_scaling, ROPE_SCALING_MISTAKES),
    Catalogue(check_yarn_cos_sin, YARN_COS_SIN_MISTAKES),
    Catalogue(check_yarn_logits, YARN_LOGITS_MISTAKES),
]
"""Which check recognises each catalogue of this assignment (``tests/test_grader_mistakes.py`` runs them)."""
