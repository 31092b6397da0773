"""The checks of assignment ``part2_relative``: relative positions, T5's log buckets (Raffel et al. 2020), DeBERTa-v2's
log buckets (He et al. 2021; the released ``make_log_bucket_position``), ALiBi's slopes and causal bias (Press et al.
2022) and Transformer-XL's relative shift (Dai et al. 2019).

Each check sits next to the catalogue of mistakes it recognises; each mistake's ``example`` is a wrong
function written the way a student writes it, proved by ``tests/test_grader_mistakes.py``.
"""

from __future__ import annotations

import functools
import math

import torch

import solutions
from solutions.t5 import relative_positions as _relative_positions

from ..course_checks import subjects

from .engine import Case, Catalogue, Mistake, check_function, generator, randn
from .variants import ALIBI_GEOMETRIC_MESSAGE, pow2_slopes

GRADED_REFERENCES = {
    "check_relative_positions": ["solutions.t5:relative_positions"],
    "check_t5_bucket": ["solutions.t5:t5_relative_position_bucket"],
    "check_deberta_log_bucket": ["solutions.deberta:deberta_log_bucket_position"],
    "check_alibi_slopes": ["solutions.alibi:alibi_slopes", "solutions.alibi:_power_of_two_slopes"],
    "check_alibi_bias": ["solutions.alibi:alibi_bias"],
    "check_relative_shift": ["solutions.transformer_xl:relative_shift"],
}
"""This assignment's entries of `grader.checks.GRADED_REFERENCES`."""


# ----------------------------------------------------------------------------------------------------------
# Relative positions
# ----------------------------------------------------------------------------------------------------------


def _student_relative_positions(query_length, key_length, *, sign=1, queries_at_end=True):
    """A student's [q, k] matrix of key_pos - query_pos."""
    start = key_length - query_length if queries_at_end else 0
    query = torch.arange(start, start + query_length)[:, None]
    key = torch.arange(key_length)[None, :]
    return sign * (key - query)


RELATIVE_POSITION_MISTAKES = [
    Mistake("sign", "The sign is flipped: entry (i, j) is key_pos - query_pos (negative for keys in the past).",
            candidate=lambda ref, case: -ref(*case.args, **case.kwargs),
            example=functools.partial(_student_relative_positions, sign=-1)),
    Mistake("start aligned", "Your queries start at position 0. Queries are the *last* query_length positions of the "
                             "keys (query i sits at key_length - query_length + i), as in decoding with a KV cache.",
            candidate=lambda ref, case: ref(case.args[1], case.args[1])[: case.args[0]],
            example=functools.partial(_student_relative_positions, queries_at_end=False)),
]


def check_relative_positions(student_fn, *, cases=((4, 4), (2, 5), (1, 3)), hidden=False) -> None:
    """``relative_positions(query_length, key_length)``: the int64 ``[q, k]`` matrix key_pos - query_pos."""
    built = [Case(tuple(c), label=f"query_length={c[0]}, key_length={c[1]}") for c in cases]
    check_function(student_fn, _relative_positions, built, name="relative_positions",
                   mistakes=RELATIVE_POSITION_MISTAKES, hidden=hidden,
                   hint="Entry (i, j) is j - (key_length - query_length + i).")


# ----------------------------------------------------------------------------------------------------------
# T5's buckets
# ----------------------------------------------------------------------------------------------------------


def _t5_kwargs(case, **change):
    kwargs = dict(case.kwargs)
    kwargs.update(change)
    return kwargs


def _student_t5_bucket(relative_position, bidirectional=True, num_buckets=32, max_distance=128, *, sign=1,
                       always_bidirectional=False, count_both_ends=False):
    """A student's T5 bucket, as Mesh TensorFlow's ``_relative_position_bucket``."""
    n = sign * relative_position
    if count_both_ends:  # the distance from the query to the key counting both: |d| + 1
        n = n + torch.sign(n)
    bucket = torch.zeros_like(n)
    if bidirectional or always_bidirectional:
        num_buckets //= 2
        bucket = bucket + (n > 0).long() * num_buckets
        n = n.abs()
    else:
        n = (-n).clamp(min=0)
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(n < max_exact, n, large)


def _t5_flag_message(case) -> str:
    asked = case.kwargs.get("bidirectional", True)
    return ("Your buckets are the " + ("causal" if asked else "bidirectional") + " ones; bidirectional="
            + str(asked) + " asks for the "
            + ("bidirectional ones: half of the buckets per direction, keys after the query in the upper half."
               if asked else "causal ones: all buckets for the past, every future offset in bucket 0."))


T5_MISTAKES = [
    Mistake("sign", "The offset has the wrong sign: relative_position = key_pos - query_pos, so keys *after* the query "
                    "have positive offsets (upper half of the buckets when bidirectional; bucket 0 when causal).",
            candidate=lambda ref, case: ref(-case.args[0], *case.args[1:], **case.kwargs),
            example=functools.partial(_student_t5_bucket, sign=-1)),
    Mistake("bidirectional flag", _t5_flag_message,
            candidate=lambda ref, case: ref(case.args[0], **_t5_kwargs(
                case, bidirectional=not case.kwargs.get("bidirectional", True))),
            example=functools.partial(_student_t5_bucket, always_bidirectional=True),
            example_options={"bidirectional": False}),
    Mistake("off by one", "Your buckets are those of the offset shifted by one: use the distance |key - query| "
                          "(or max(query - key, 0) when causal) as it is.",
            candidate=lambda ref, case: ref(case.args[0] + torch.sign(case.args[0]), *case.args[1:], **case.kwargs),
            example=functools.partial(_student_t5_bucket, count_both_ends=True)),
]


def check_t5_bucket(student_fn, *, bidirectional: bool, offsets=None, num_buckets=32, max_distance=128, seed=0,
                    hidden=False) -> None:
    """``t5_relative_position_bucket(relative_position, bidirectional, num_buckets, max_distance)``."""
    if offsets is None:
        offsets = torch.arange(-200, 201)
    elif not isinstance(offsets, torch.Tensor):
        offsets = torch.tensor(offsets)
    g = generator(seed)
    random = torch.randint(-4 * max_distance, 4 * max_distance + 1, (3, 7), generator=g)
    kwargs = dict(bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance)
    cases = [Case((offsets.long(),), dict(kwargs), label=f"{offsets.numel()} offsets from {int(offsets.min())} to "
                                                         f"{int(offsets.max())}, num_buckets={num_buckets}, "
                                                         f"max_distance={max_distance}, bidirectional={bidirectional}"),
             Case((random,), dict(kwargs), label=f"random offsets of shape [3, 7], bidirectional={bidirectional}")]
    check_function(student_fn, solutions.t5_relative_position_bucket, cases, name="t5_relative_position_bucket",
                   mistakes=T5_MISTAKES, hidden=hidden,
                   hint="Exact buckets for distances below max_exact = buckets_per_direction // 2, then "
                        "max_exact + floor(log(d / max_exact) / log(max_distance / max_exact) * (buckets_per_direction "
                        "- max_exact)), clamped to the last bucket of the direction.")


# ----------------------------------------------------------------------------------------------------------
# DeBERTa-v2's log buckets
# ----------------------------------------------------------------------------------------------------------


def _log_bucket_variant(relative_pos, bucket_size, max_position, *, rounding=torch.ceil, top_offset=None,
                        log_steps=None):
    """The released log-bucket rule with one part changed: the rounding, the offset that reaches the top bucket
    (released: max_position - 1) or the number of log steps (released: bucket_size // 2 - 1). Offsets up to
    bucket_size // 2 stay exact, as in the released rule."""
    mid = bucket_size // 2
    top_offset = max_position - 1 if top_offset is None else top_offset
    log_steps = mid - 1 if log_steps is None else log_steps
    distance = relative_pos.abs()
    ratio = torch.log(distance.clamp(min=mid).double() / mid) / math.log(top_offset / mid)
    log_bucket = mid + rounding(ratio * log_steps).long()
    return torch.where(distance <= mid, relative_pos, torch.sign(relative_pos) * log_bucket)


def _student_deberta_bucket(relative_pos, bucket_size, max_position, *, keep_sign=True, rounding="ceil",
                            top_offset="max_position - 1", log_steps="mid - 1", clamp_first=False):
    """A student's DeBERTa-v2 bucket, offset by offset in Python floats."""
    mid = bucket_size // 2
    top = max_position - 1 if top_offset == "max_position - 1" else max_position
    steps = mid - 1 if log_steps == "mid - 1" else mid
    round_up = math.ceil if rounding == "ceil" else math.floor
    out = []
    for r in relative_pos.flatten().tolist():
        if clamp_first:
            r = max(-(max_position - 1), min(max_position - 1, r))
        if abs(r) <= mid:
            bucket = abs(r)
        else:
            bucket = mid + round_up(math.log(abs(r) / mid) / math.log(top / mid) * steps)
        out.append(bucket if (r >= 0 or not keep_sign) else -bucket)
    return torch.tensor(out, dtype=torch.long).reshape(relative_pos.shape)


def _case_geometry(case):
    return case.args[1], case.args[2]


DEBERTA_BUCKET_MISTAKES = [
    Mistake("sign lost", "Your buckets lost the sign of the offset: the function is odd, f(-r) = -f(r). Keys after "
                         "the query (r = query_pos - key_pos < 0) get negative buckets, so that c2p and p2c can tell "
                         "left from right.",
            candidate=lambda ref, case: ref(*case.args).abs(),
            example=functools.partial(_student_deberta_bucket, keep_sign=False)),
    Mistake("floor", "Your log buckets are rounded down. The released rule rounds *up* (ceil): |r| just above "
                     "bucket_size // 2 already moves to bucket bucket_size // 2 + 1.",
            candidate=lambda ref, case: _log_bucket_variant(case.args[0], *_case_geometry(case), rounding=torch.floor),
            example=functools.partial(_student_deberta_bucket, rounding="floor")),
    Mistake("top offset", "Your log range ends at max_position; the released rule divides by "
                          "ln((max_position - 1) / mid), so that the largest offset of a max_position-long input, "
                          "max_position - 1, is the one that lands on the last bucket, 2 * mid - 1.",
            candidate=lambda ref, case: _log_bucket_variant(case.args[0], *_case_geometry(case),
                                                            top_offset=case.args[2]),
            example=functools.partial(_student_deberta_bucket, top_offset="max_position")),
    Mistake("log steps", "Your log range takes mid steps; it takes mid - 1 (mid = bucket_size // 2): the exact "
                         "offsets 0 .. mid and the log buckets mid + 1 .. 2 * mid - 1 fill the bucket_size buckets "
                         "of each side, and max_position - 1 lands on 2 * mid - 1, not 2 * mid.",
            candidate=lambda ref, case: _log_bucket_variant(case.args[0], *_case_geometry(case),
                                                            log_steps=case.args[1] // 2),
            example=functools.partial(_student_deberta_bucket, log_steps="mid")),
    Mistake("clamped", "You clamped the offsets to +-(max_position - 1) first, as microsoft/DeBERTa's 2023 rewrite "
                       "does. The contract here is the 2021 release's and Hugging Face's: no clamp, offsets past "
                       "max_position keep growing logarithmically (the attention's index clamp saturates them "
                       "later).",
            candidate=lambda ref, case: ref(case.args[0].clamp(-(case.args[2] - 1), case.args[2] - 1),
                                            *case.args[1:]),
            example=functools.partial(_student_deberta_bucket, clamp_first=True)),
]


def check_deberta_log_bucket(student_fn, *, bucket_size=32, max_position=128, offsets=None, seed=0,
                             hidden=False) -> None:
    """``deberta_log_bucket_position(relative_pos, bucket_size, max_position)``: int64, the shape of the offsets."""
    if offsets is None:
        offsets = torch.arange(-3 * max_position, 3 * max_position + 1)
    elif not isinstance(offsets, torch.Tensor):
        offsets = torch.tensor(offsets)
    g = generator(seed)
    random = torch.randint(-4 * max_position, 4 * max_position + 1, (3, 7), generator=g)
    geometry = f"bucket_size={bucket_size}, max_position={max_position}"
    cases = [Case((offsets.long(), bucket_size, max_position),
                  label=f"{offsets.numel()} offsets from {int(offsets.min())} to {int(offsets.max())}, {geometry}"),
             Case((random, bucket_size, max_position), label=f"random offsets of shape [3, 7], {geometry}")]
    check_function(student_fn, solutions.deberta_log_bucket_position, cases, name="deberta_log_bucket_position",
                   mistakes=DEBERTA_BUCKET_MISTAKES, hidden=hidden,
                   hint="With mid = bucket_size // 2: r itself where |r| <= mid, otherwise sign(r) * (mid + "
                        "ceil(ln(|r| / mid) / ln((max_position - 1) / mid) * (mid - 1))), with no clamp.")


# ----------------------------------------------------------------------------------------------------------
# ALiBi's slopes and bias
# ----------------------------------------------------------------------------------------------------------


def _student_alibi_slopes(num_heads, *, rule="paper", first_exponent=1, reverse=False):
    """A student's ALiBi slopes: ``rule`` is the paper's ("paper"), the geometric sequence for any n
    ("geometric") or the first n of the next power of two ("next power")."""
    def geometric(n):
        return [2.0 ** (-8.0 * (h + first_exponent) / n) for h in range(n)]

    if rule == "geometric":
        slopes = geometric(num_heads)
    elif rule == "next power":
        slopes = geometric(2 ** math.ceil(math.log2(num_heads)))[:num_heads]
    else:
        power = 2 ** math.floor(math.log2(num_heads))
        slopes = geometric(power) + geometric(2 * power)[0::2][: num_heads - power]
    return torch.tensor(slopes[::-1] if reverse else slopes)


ALIBI_SLOPES_MISTAKES = [
    Mistake("geometric for any n", ALIBI_GEOMETRIC_MESSAGE, candidate=lambda ref, case: pow2_slopes(case.args[0]),
            example=functools.partial(_student_alibi_slopes, rule="geometric"),
            example_options={"head_counts": (12,)}),
    Mistake("first n of 2p", "You took the first n slopes of the next power of two; the paper's code keeps all "
                             "slopes of the largest power of two p < n and appends every other slope of 2p.",
            candidate=lambda ref, case: pow2_slopes(2 ** math.ceil(math.log2(case.args[0])))[: case.args[0]],
            example=functools.partial(_student_alibi_slopes, rule="next power"),
            example_options={"head_counts": (12,)}),
    Mistake("starts at 1", "Your slopes start at 1 (= 2^0). The first slope is 2^(-8/n), the ratio of the sequence "
                           "itself: m_h = 2^(-8h/n) for h = 1 .. n.",
            candidate=lambda ref, case: torch.cat((torch.ones(1), ref(*case.args)[:-1])) if case.args[0] > 0 and
            (case.args[0] & (case.args[0] - 1)) == 0 else None,
            example=functools.partial(_student_alibi_slopes, first_exponent=0)),
    Mistake("reversed", "Your slopes are in reverse order: head 1 has the largest slope, 2^(-8/n), and they decrease.",
            candidate=lambda ref, case: ref(*case.args).flip(0),
            example=functools.partial(_student_alibi_slopes, reverse=True)),
]


def _alibi_args(case):
    slopes, query_length = case.args[:2]
    key_length = case.args[2] if len(case.args) > 2 else case.kwargs.get("key_length")
    return slopes, query_length, (query_length if key_length is None else key_length)


def _alibi_distance(case):
    _, q, k = _alibi_args(case)
    return -_relative_positions(q, k)  # i - j


def _student_alibi_bias(slopes, query_length, key_length=None, *, sign=-1, distance="signed", mask="inf",
                        mask_diagonal=False, queries_at_end=True):
    """A student's causal ALiBi bias [heads, q, k]; ``mask`` is "inf", "zero", "big" (-1e9) or None."""
    key_length = query_length if key_length is None else key_length
    start = key_length - query_length if queries_at_end else 0
    i = torch.arange(start, start + query_length)[:, None]
    j = torch.arange(key_length)[None, :]
    d = (i - j).float()
    bias = sign * slopes[:, None, None] * (d.abs() if distance == "absolute" else d)
    future = j >= i if mask_diagonal else j > i
    if mask is None:
        return bias
    return bias.masked_fill(future, {"inf": float("-inf"), "zero": 0.0, "big": -1e9}[mask])


ALIBI_BIAS_MISTAKES = [
    Mistake("sign", "The bias has the wrong sign: ALiBi *subtracts* m_h * (i - j), so the bias is 0 on the diagonal "
                    "and more negative the farther back the key is (Press et al. 2022, section 3).",
            candidate=lambda ref, case: (lambda b: torch.where(torch.isfinite(b), -b, b))(
                ref(*case.args, **case.kwargs)),
            example=functools.partial(_student_alibi_bias, sign=1)),
    Mistake("future not masked (linear)",
            "The future half is not masked: for keys after the query (j > i) your bias is -m (i - j) > 0, which "
            "*rewards* looking ahead. In a causal bias those entries must be -inf.",
            candidate=lambda ref, case: (lambda s, q, k: torch.where(_alibi_distance(case) < 0,
                                                                     -solutions.alibi_bias(s, q, k, causal=False),
                                                                     solutions.alibi_bias(s, q, k, causal=False)))(
                *_alibi_args(case)),
            example=functools.partial(_student_alibi_bias, mask=None)),
    Mistake("future not masked (symmetric)",
            "The future half is not masked: you used the symmetric -m |i - j| everywhere (the bidirectional variant). "
            "In the causal bias, keys after the query (j > i) must be -inf.",
            candidate=lambda ref, case: solutions.alibi_bias(*_alibi_args(case), causal=False),
            example=functools.partial(_student_alibi_bias, distance="absolute", mask=None)),
    Mistake("future set to 0", "The future half is set to 0 instead of -inf: a zero bias lets the query attend to "
                               "later keys. Fill j > i with float('-inf').",
            candidate=lambda ref, case: (lambda b: torch.where(torch.isinf(b), torch.zeros_like(b), b))(
                ref(*case.args, **case.kwargs)),
            example=functools.partial(_student_alibi_bias, mask="zero")),
    Mistake("large finite mask", "Future keys hold a large negative number instead of -inf. It works in a softmax, but "
                                 "the causal bias of this course uses float('-inf') exactly.",
            matches=subjects.large_negative_instead_of_inf, example=functools.partial(_student_alibi_bias, mask="big")),
    Mistake("diagonal masked", "You masked the diagonal too: a query may attend to itself (j = i, bias 0); only keys "
                               "after the query (j > i) are -inf.",
            candidate=lambda ref, case: (lambda b: torch.where(_alibi_distance(case) == 0,
                                                               torch.full_like(b, float("-inf")), b))(
                ref(*case.args, **case.kwargs)),
            example=functools.partial(_student_alibi_bias, mask_diagonal=True)),
    Mistake("start aligned", "Your queries start at position 0. With fewer queries than keys, the queries are the "
                             "*last* query_length positions (query i sits at key_length - query_length + i), as "
                             "when decoding with a KV cache.",
            candidate=lambda ref, case: (lambda s, q, k: ref(s, k, k)[:, :q] if q < k else None)(*_alibi_args(case)),
            example=functools.partial(_student_alibi_bias, queries_at_end=False)),
]


def check_alibi_slopes(student_fn, *, head_counts=(8, 4, 1), hidden=False) -> None:
    """``alibi_slopes(num_heads)``: float32 ``[num_heads]``."""
    cases = [Case((n,), label=f"num_heads={n}") for n in head_counts]
    check_function(student_fn, solutions.alibi_slopes, cases, name="alibi_slopes", rtol=1e-6, atol=1e-7,
                   mistakes=ALIBI_SLOPES_MISTAKES, hidden=hidden,
                   hint="For a power of two n the slopes are 2^(-8/n), 2^(-16/n), ..., 2^(-8).")


def check_alibi_bias(student_fn, *, cases=((4, 5, 5), (2, 3, 6), (1, 1, 4)), hidden=False) -> None:
    """``alibi_bias(slopes, query_length, key_length)``: the causal ``[heads, q, k]`` bias with -inf above."""
    built = []
    for num_heads, q, k in cases:
        slopes = solutions.alibi_slopes(num_heads)
        built.append(Case((slopes, q, k), label=f"{num_heads} heads, query_length={q}, key_length={k}"))
    check_function(student_fn, lambda s, q, k: solutions.alibi_bias(s, q, k, causal=True), built, name="alibi_bias",
                   rtol=1e-6, atol=1e-6, mistakes=ALIBI_BIAS_MISTAKES, hidden=hidden,
                   hint="Entry (h, i, j) is -m_h * (i - j) for keys at or before the query, -inf after it.")


# ----------------------------------------------------------------------------------------------------------
# Transformer-XL's relative shift (compared on the causal region: no catalogue)
# ----------------------------------------------------------------------------------------------------------


def check_relative_shift(student_fn, *, shapes=((4, 4), (3, 5), (2, 2, 6)), seed=0, hidden=False) -> None:
    """``relative_shift(x)`` of Transformer-XL, compared on the causal region only (the rest is garbage)."""
    g = generator(seed)
    cases = [Case((randn(shape, g),), label=f"x {list(shape)}") for shape in shapes]

    def causal_region(case):
        q, k = case.args[0].shape[-2:]
        return solutions.causal_mask(q, k)

    check_function(student_fn, solutions.relative_shift, cases, name="relative_shift", rtol=0, atol=0,
                   mask_fn=causal_region, hidden=hidden,
                   hint="Output (i, j) must be x[..., i, j + q_len - 1 - i] wherever j <= k_len - q_len + i: pad a "
                        "zero column on the left, view as [k_len + 1, q_len], drop the first row, view back.")


CATALOGUES = [
    Catalogue(check_relative_positions, RELATIVE_POSITION_MISTAKES),
    Catalogue(check_t5_bucket, T5_MISTAKES, {"bidirectional": True}),
    Catalogue(check_deberta_log_bucket, DEBERTA_BUCKET_MISTAKES),
    Catalogue(check_alibi_slopes, ALIBI_SLOPES_MISTAKES),
    Catalogue(check_alibi_bias, ALIBI_BIAS_MISTAKES),
]
"""Which check recognises each catalogue of this assignment (``tests/test_grader_mistakes.py`` runs them)."""
