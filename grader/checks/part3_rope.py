"""The checks of assignment ``part3_rope``: RoPE's frequencies, its cos/sin tables and rotation in both layouts
(Su et al. 2021, RoFormer eqs. 13-15 and 34), the weight permutation between the layouts, a test the student
writes of the relative property, and a Triton RoPE kernel run by Triton's interpreter.

Each check sits next to the catalogue of mistakes it recognises; each mistake's ``example`` is a wrong
function written the way a student writes it, proved by ``tests/test_grader_mistakes.py``.
"""

from __future__ import annotations

import functools

import torch

import solutions

from .. import references
from ..course_checks import steps, subjects
from . import engine
from .engine import Case, Catalogue, Mistake, check_function, generator, randn, report_pass
from .variants import exponent_mistakes, frequencies, interleave, rotate_at, student_frequencies

GRADED_REFERENCES = {
    "check_rope_inv_freq": ["solutions.rope:rope_inv_freq"],
    "check_rope_cos_sin": ["solutions.rope:rope_cos_sin"],
    "check_apply_rope": ["solutions.rope:apply_rope", "solutions.rope:rotate_pairs"],
    "check_permute_to_half_split": ["solutions.rope:permute_qk_weight_to_half_split",
                                    "solutions.rope:_permute_head_rows",
                                    "solutions.rope:interleaved_to_half_split_permutation"],
}
"""This assignment's entries of `grader.checks.GRADED_REFERENCES`."""

ROPE_SWAPPED_MESSAGE = (
    "cos and sin are swapped: a pair (a, b) at angle phi becomes (a cos(phi) - b sin(phi), b cos(phi) + a sin(phi)) "
    "(RoFormer eq. 13); you multiplied by sin where cos belongs.")
ROPE_DIRECTION_MESSAGE = (
    "The rotation goes the wrong way (by -phi): you computed (a cos + b sin, b cos - a sin). RoPE rotates "
    "counter-clockwise: (a cos(phi) - b sin(phi), b cos(phi) + a sin(phi)), RoFormer eq. 13.")
"""What `apply_rope` and the Triton kernel get wrong alike."""


# ----------------------------------------------------------------------------------------------------------
# Frequencies
# ----------------------------------------------------------------------------------------------------------


def _inv_freq_candidate(kind, reference, case):
    dim, base = case.args[0], (case.args[1] if len(case.args) > 1 else case.kwargs.get("base", 10000.0))
    return frequencies(dim, base, kind).to(torch.float32)


def _student_inv_freq(dim, base=10000.0, **exponent):
    return student_frequencies(dim, base, **exponent).float()


INV_FREQ_MISTAKES = exponent_mistakes(_inv_freq_candidate,
                                      lambda **bug: functools.partial(_student_inv_freq, **bug)) + [
    Mistake("one per coordinate",
            "You returned one frequency per coordinate (dim values); RoPE has one frequency per *pair*: dim // 2 "
            "values, exponents 0, 2/d, 4/d, ... (torch.arange(0, dim, 2)).",
            candidate=lambda ref, case: (float(case.args[1] if len(case.args) > 1 else case.kwargs.get("base", 10000.0))
                                         ** (-torch.arange(case.args[0], dtype=torch.float64) / case.args[0])).float(),
            example=lambda dim, base=10000.0: base ** (-torch.arange(dim, dtype=torch.float32) / dim)),
    Mistake("low precision",
            "Your frequencies are rounded to bfloat16/float16 precision (the precision trap of the RoPE chapter): "
            "compute the exponent and the power in float32 or float64, and cast to float32 at the end.",
            matches=subjects.low_precision,
            example=lambda dim, base=10000.0: (
                1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.bfloat16) / dim)).float()),
]


def check_rope_inv_freq(student_fn, *, cases=((8,), (2,), (16, 500.0)), hidden=False) -> None:
    """``rope_inv_freq(dim, base=10000.0)``: float32 ``[dim // 2]``."""
    built = [Case(tuple(c), label=f"dim={c[0]}" + (f", base={c[1]:g}" if len(c) > 1 else "")) for c in cases]
    check_function(student_fn, solutions.rope_inv_freq, built, name="rope_inv_freq", rtol=1e-5, atol=1e-7,
                   mistakes=INV_FREQ_MISTAKES, hidden=hidden,
                   hint="theta_i = base^(-2i/dim) for i = 0 .. dim/2 - 1 (RoFormer eq. 15).")


# ----------------------------------------------------------------------------------------------------------
# cos/sin tables
# ----------------------------------------------------------------------------------------------------------


def _cos_sin_shifted(reference, case, shift):
    inv_freq, positions = case.args[:2]
    return reference(inv_freq, positions + shift, *case.args[2:], **case.kwargs)


def _student_cos_sin(inv_freq, positions, *, shift=0, swap=False, sin_sign=1, repeat=False):
    """A student's (cos, sin) of positions[..., None] * inv_freq."""
    angles = (positions + shift).float()[..., None] * inv_freq
    if repeat:  # Hugging Face's cache layout: the frequencies twice
        angles = torch.cat((angles, angles), dim=-1)
    cos, sin = torch.cos(angles), torch.sin(sin_sign * angles)
    return (sin, cos) if swap else (cos, sin)


COS_SIN_MISTAKES = [
    Mistake("positions +1", "Positions off by one: your angles are those of position p + 1. The first token is at "
                            "position 0 (its cos is 1 and its sin is 0: it is not rotated).",
            candidate=lambda ref, case: _cos_sin_shifted(ref, case, 1),
            example=functools.partial(_student_cos_sin, shift=1)),
    Mistake("positions -1", "Positions off by one: your angles are those of position p - 1. Use the positions you are "
                            "given, exactly (angle = position * inv_freq).",
            candidate=lambda ref, case: _cos_sin_shifted(ref, case, -1),
            example=functools.partial(_student_cos_sin, shift=-1)),
    Mistake("cos/sin swapped", "cos and sin are swapped: return (cos, sin), in that order.",
            candidate=lambda ref, case: tuple(reversed(ref(*case.args, **case.kwargs))),
            example=functools.partial(_student_cos_sin, swap=True)),
    Mistake("direction", "sin has the wrong sign (a rotation by -angle): sin(position * inv_freq), not "
                         "sin(-position * inv_freq).",
            candidate=lambda ref, case: (lambda cs: (cs[0], -cs[1]))(ref(*case.args, **case.kwargs)),
            example=functools.partial(_student_cos_sin, sin_sign=-1)),
    Mistake("repeated to dim", "Your cos/sin have one column per coordinate (the frequencies repeated twice, as "
                               "Hugging Face's cache stores them); here they have one column per pair: "
                               "[..., dim // 2].",
            candidate=lambda ref, case: tuple(torch.cat((t, t), -1) for t in ref(*case.args, **case.kwargs)),
            example=functools.partial(_student_cos_sin, repeat=True)),
]


def check_rope_cos_sin(student_fn, *, cases=((8, (0, 1, 2, 3, 4)), (4, (7,)), (6, ((0, 1), (5, 9)))),
                       hidden=False) -> None:
    """``rope_cos_sin(inv_freq, positions) -> (cos, sin)``; ``cases`` are (dim, positions)."""
    for dim, positions in cases:
        positions = torch.tensor(positions)
        case = Case((solutions.rope_inv_freq(dim), positions),
                    label=f"inv_freq of dim {dim}, positions of shape {list(positions.shape)}")
        # float32 angles p * theta carry an error of about p * 6e-8: the tolerance grows with the position, so
        # that computing the angles in float32 (as the reference does) or in float64 both pass.
        atol = max(1e-5, 2.5e-7 * float(positions.abs().max()))
        check_function(student_fn, solutions.rope_cos_sin, [case], name="rope_cos_sin", rtol=1e-5, atol=atol,
                       mistakes=COS_SIN_MISTAKES, names=("cos", "sin"), hidden=hidden, quiet=True,
                       hint="angles = positions[..., None] * inv_freq; return (cos(angles), sin(angles)).")
    report_pass("rope_cos_sin", len(cases), hidden)


# ----------------------------------------------------------------------------------------------------------
# The rotation, in both layouts
# ----------------------------------------------------------------------------------------------------------


def _layout_message(case: Case) -> str:
    if case.kwargs.get("interleaved", False):
        return ("Wrong RoPE layout: your output is the half-split layout (GPT-NeoX/Llama: coordinate i paired with "
                "i + d/2), but interleaved=True asks for the interleaved layout (GPT-J/Meta: coordinate 2i paired "
                "with 2i + 1). Take the pairs as x[..., 0::2] and x[..., 1::2] and interleave the result back.")
    return ("Wrong RoPE layout: your output is the interleaved layout (GPT-J/Meta: coordinate 2i paired with 2i + 1), "
            "but interleaved=False asks for the half-split layout (GPT-NeoX/Llama: coordinate i paired with "
            "i + d/2). Split the rotated part into its first and second halves, not into even and odd coordinates.")


def _apply_rope_variant(reference, case, *, swap=False, negate_sin=False, flip_layout=False):
    x, cos, sin = case.args[:3]
    interleaved = case.kwargs.get("interleaved", False)
    if swap:
        cos, sin = sin, cos
    if negate_sin:
        sin = -sin
    return reference(x, cos, sin, interleaved=(not interleaved) if flip_layout else interleaved)


def _student_apply_rope(x, cos, sin, interleaved=False, *, pairing=None, direction=1, swap=False):
    """A student's RoPE; ``pairing`` ("half" or "even-odd") overrides the layout ``interleaved`` asks for."""
    pairing = pairing or ("even-odd" if interleaved else "half")
    if swap:
        cos, sin = sin, cos
    rotary_dim = 2 * cos.shape[-1]
    rotary, rest = x[..., :rotary_dim], x[..., rotary_dim:]
    if pairing == "half":
        a, b = rotary.chunk(2, dim=-1)
    else:
        a, b = rotary[..., 0::2], rotary[..., 1::2]
    new_a = a * cos - direction * b * sin
    new_b = b * cos + direction * a * sin
    if pairing == "half":
        rotated = torch.cat((new_a, new_b), dim=-1)
    else:
        rotated = torch.stack((new_a, new_b), dim=-1).flatten(-2)
    return torch.cat((rotated, rest), dim=-1)


APPLY_ROPE_MISTAKES = [
    Mistake("layout", _layout_message, candidate=lambda ref, case: _apply_rope_variant(ref, case, flip_layout=True),
            example=functools.partial(_student_apply_rope, pairing="even-odd")),
    Mistake("cos/sin swapped", ROPE_SWAPPED_MESSAGE,
            candidate=lambda ref, case: _apply_rope_variant(ref, case, swap=True),
            example=functools.partial(_student_apply_rope, swap=True)),
    Mistake("direction", ROPE_DIRECTION_MESSAGE,
            candidate=lambda ref, case: _apply_rope_variant(ref, case, negate_sin=True),
            example=functools.partial(_student_apply_rope, direction=-1)),
    Mistake("layout and direction",
            "Two mistakes at once: the wrong layout (pairs (2i, 2i+1) versus (i, i + d/2)) and a rotation in the wrong "
            "direction (by -phi). Check which coordinates you pair, then the signs of (a cos - b sin, b cos + a sin).",
            candidate=lambda ref, case: _apply_rope_variant(ref, case, negate_sin=True, flip_layout=True),
            example=functools.partial(_student_apply_rope, pairing="even-odd", direction=-1)),
]


def check_apply_rope(student_fn, *, interleaved: bool, shapes=((5, 8), (2, 3, 4, 6)), rotary_dims=None,
                     position_offset=0, seed=0, hidden=False) -> None:
    """``apply_rope(x, cos, sin, interleaved)``. ``shapes`` are x's shapes ``[..., seq, dim]``; ``rotary_dims``
    (one per shape, default the full dim) makes cos/sin cover only the first coordinates (partial rotary)."""
    g = generator(seed)
    rotary_dims = rotary_dims or [None] * len(shapes)
    cases = []
    for shape, rotary_dim in zip(shapes, rotary_dims):
        seq, dim = shape[-2], shape[-1]
        rotary_dim = rotary_dim or dim
        positions = torch.arange(position_offset, position_offset + seq)
        cos, sin = solutions.rope_cos_sin(solutions.rope_inv_freq(rotary_dim), positions)
        label = (f"x {list(shape)}, positions {position_offset}..{position_offset + seq - 1}, interleaved={interleaved}"
                 + (f", rotary_dim={rotary_dim}" if rotary_dim != dim else ""))
        cases.append(Case((randn(shape, g), cos, sin), {"interleaved": interleaved}, label=label))
    layout = "interleaved" if interleaved else "half-split"
    check_function(student_fn, solutions.apply_rope, cases, name=f"apply_rope ({layout})", rtol=1e-5, atol=1e-5,
                   mistakes=APPLY_ROPE_MISTAKES, hidden=hidden,
                   hint="Each pair (a, b) becomes (a cos - b sin, b cos + a sin); coordinates beyond 2 * cos.shape[-1] "
                        "pass through unchanged.")


# ----------------------------------------------------------------------------------------------------------
# The weight permutation between the layouts
# ----------------------------------------------------------------------------------------------------------


def _permute_variant(case, inverse=False, one_head=False):
    weight, num_heads = case.args[:2]
    rotary_dim = case.args[2] if len(case.args) > 2 else case.kwargs.get("rotary_dim")
    heads = 1 if one_head else num_heads
    if one_head and rotary_dim is not None:
        return None
    function = solutions.permute_qk_weight_to_interleaved if inverse else solutions.permute_qk_weight_to_half_split
    return function(weight, heads, rotary_dim)


def _student_permute(weight, num_heads, *, inverse=False, per_head=True):
    """A student's row permutation: within each head, rows 0, 2, 4, ... then 1, 3, 5, ..."""
    groups = num_heads if per_head else 1
    head_dim = weight.shape[0] // groups
    perm = torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))
    if inverse:
        perm = torch.argsort(perm)
    return weight.reshape(groups, head_dim, -1)[:, perm].reshape_as(weight)


PERMUTE_MISTAKES = [
    Mistake("inverse", "You applied the inverse permutation (half-split to interleaved). Row 2i of a head (the first "
                       "coordinate of interleaved pair i) must become row i, and row 2i + 1 row i + d/2.",
            candidate=lambda ref, case: _permute_variant(case, inverse=True),
            example=functools.partial(_student_permute, inverse=True)),
    Mistake("whole matrix", "You permuted all output rows as one block; the permutation acts within each head "
                            "(reshape to [num_heads, head_dim, in_features] first).",
            candidate=lambda ref, case: _permute_variant(case, one_head=True),
            example=functools.partial(_student_permute, per_head=False)),
]


def check_permute_to_half_split(student_fn, *, cases=((2, 4, 3), (1, 8, 5)), seed=0, hidden=False) -> None:
    """``permute_qk_weight_to_half_split(weight, num_heads)``; ``cases`` are (num_heads, head_dim, in_features)."""
    g = generator(seed)
    built = []
    for num_heads, head_dim, in_features in cases:
        weight = randn((num_heads * head_dim, in_features), g)
        built.append(Case((weight, num_heads), label=f"weight [{num_heads * head_dim}, {in_features}], "
                                                     f"num_heads={num_heads}"))
    check_function(student_fn, lambda w, h: solutions.permute_qk_weight_to_half_split(w, h), built,
                   name="permute_qk_weight_to_half_split", rtol=0, atol=0, mistakes=PERMUTE_MISTAKES, hidden=hidden,
                   hint="Within each head, the new rows are the old rows 0, 2, 4, ..., then 1, 3, 5, ...")


# ----------------------------------------------------------------------------------------------------------
# The Triton kernel
# ----------------------------------------------------------------------------------------------------------


def _kernel_reference(x, inv_freq, position_offset=0, *, interleaved=False, swap=False, sign=1.0, shift=0):
    positions = torch.arange(x.shape[0]) + position_offset + shift
    return rotate_at(x, inv_freq, positions, interleaved=interleaved, swap=swap, sign=sign)


@functools.lru_cache(maxsize=None)
def _student_kernel():
    """A student's Triton kernel, with its mistakes as ``tl.constexpr`` switches (defined on first use, so that
    importing the checks does not import Triton, and under the caller's ``TRITON_INTERPRET``)."""
    import triton
    import triton.language as tl

    @triton.jit
    def rope_kernel(X, OUT, INV_FREQ, stride_row, position_offset, HALF: tl.constexpr, EVEN_ODD: tl.constexpr,
                    SWAP: tl.constexpr, SIGN: tl.constexpr, SHIFT: tl.constexpr, OFFSET: tl.constexpr):
        row = tl.program_id(0)
        i = tl.arange(0, HALF)
        position = row + SHIFT
        if OFFSET:
            position = position + position_offset
        angle = position.to(tl.float32) * tl.load(INV_FREQ + i)
        cos, sin = tl.cos(angle), SIGN * tl.sin(angle)
        if SWAP:
            cos, sin = sin, cos
        if EVEN_ODD:
            first, second = row * stride_row + 2 * i, row * stride_row + 2 * i + 1
        else:
            first, second = row * stride_row + i, row * stride_row + HALF + i
        x1, x2 = tl.load(X + first), tl.load(X + second)
        tl.store(OUT + first, x1 * cos - x2 * sin)
        tl.store(OUT + second, x2 * cos + x1 * sin)

    return rope_kernel


def _student_launcher(*, even_odd=False, swap=False, sign=1.0, shift=0, offset=True):
    """The notebook's launcher ``rope_triton(x, inv_freq, position_offset)`` around `_student_kernel`."""
    def rope_triton(x, inv_freq, position_offset=0):
        x, inv_freq = x.contiguous(), inv_freq.contiguous()
        out = torch.empty_like(x)
        _student_kernel()[(x.shape[0],)](x, out, inv_freq, x.stride(0), position_offset, HALF=x.shape[1] // 2,
                                         EVEN_ODD=even_odd, SWAP=swap, SIGN=sign, SHIFT=shift, OFFSET=offset)
        return out

    return rope_triton


KERNEL_MISTAKES = [
    Mistake("layout", "Wrong RoPE layout: your kernel pairs x[row, 2i] with x[row, 2i + 1] (interleaved); this kernel "
                      "uses the half-split layout, x[row, i] with x[row, i + HALF].",
            candidate=lambda ref, case: _kernel_reference(*case.args, interleaved=True),
            example=_student_launcher(even_odd=True)),
    Mistake("cos/sin swapped", ROPE_SWAPPED_MESSAGE,
            candidate=lambda ref, case: _kernel_reference(*case.args, swap=True),
            example=_student_launcher(swap=True)),
    Mistake("direction", ROPE_DIRECTION_MESSAGE, candidate=lambda ref, case: _kernel_reference(*case.args, sign=-1.0),
            example=_student_launcher(sign=-1.0)),
    Mistake("positions +1", "Positions off by one: your angles are those of position p + 1. Row r of x is position "
                            "r + position_offset.", candidate=lambda ref, case: _kernel_reference(*case.args, shift=1),
            example=_student_launcher(shift=1)),
    Mistake("offset ignored", "The position offset is ignored: row r is at position r + position_offset (the rows "
                              "continue a sequence already in the KV cache).",
            candidate=lambda ref, case: _kernel_reference(case.args[0], case.args[1], 0) if case.args[2] else None,
            example=_student_launcher(offset=False)),
]


def check_rope_kernel(student_launcher, *, shapes=((4, 8), (1, 2), (6, 32)), position_offset=5, seed=0,
                      hidden=False) -> None:
    """A Triton RoPE kernel that computes its own angles, called as ``student_launcher(x, inv_freq,
    position_offset)`` on ``[seq, dim]`` float32 inputs (dim a power of two) and run by Triton's interpreter on
    the CPU; compared with `solutions.apply_rope` at positions ``position_offset + arange(seq)``."""
    steps.require_module("triton", "Triton is not installed in this environment (there is no Triton wheel for macOS "
                                   "or Windows), so the kernel cannot run here. Write it anyway: it is graded on the "
                                   "course machines, or run this notebook on Linux (pip install triton).")
    g = generator(seed)
    cases = []
    for seq, dim in shapes:
        cases.append(Case((randn((seq, dim), g), solutions.rope_inv_freq(dim), position_offset), {},
                          label=f"x [{seq}, {dim}], positions {position_offset}..{position_offset + seq - 1}"))
    check_function(student_launcher, _kernel_reference, cases, name="rope_kernel", rtol=1e-5, atol=1e-5,
                   mistakes=KERNEL_MISTAKES, hidden=hidden,
                   hint="Row r: angles (r + position_offset) * inv_freq; load the halves x[r, :HALF] and x[r, HALF:]; "
                        "store x1 * cos - x2 * sin and x2 * cos + x1 * sin to the same places of OUT.")


# ----------------------------------------------------------------------------------------------------------
# A test the student writes (graded against correct and broken rotations: no catalogue)
# ----------------------------------------------------------------------------------------------------------


def _correct_rotations(hidden: bool):
    """The visible check's correct rotations are stand-ins with RoPE's relative property that are not RoPE (a
    student kit carries them, and must not carry a RoPE); the hidden check's are RoPE in both layouts."""
    if not hidden:
        return {
            "a rotation exp(p A), dims paired by A, seed 1": subjects.Rotation(1),
            "a rotation exp(p A), dims paired by A, seed 2": subjects.Rotation(2),
        }
    return {
        "RoPE, half-split, base 10000": lambda x, p: references.rope_rotate_at(x, p),
        "RoPE, interleaved, base 500": lambda x, p: references.rope_rotate_at(x, p, base=500.0, interleaved=True),
    }


def _broken_rotations(hidden: bool):
    """Broken rotations by description; the visible check's two are stand-ins built on `_correct_rotations`'."""
    if not hidden:
        return {
            "angles growing with position^2": subjects.Rotation(1, "quadratic"),
            "a rotation scaled by (1 + 0.1 p)": subjects.Rotation(1, "growing"),
        }

    def quadratic(x, p):  # the angle grows with p^2: rotations, but not of a relative kind
        return references.rope_rotate_at(x, p * p)

    def additive(x, p):  # an absolute encoding added to the vector
        angles = float(p) * frequencies(x.shape[-1], 10000.0, "2i/d")
        return x + interleave(torch.sin(angles), torch.cos(angles)).to(x.dtype)

    def growing(x, p):  # a rotation whose length grows with the position
        return references.rope_rotate_at(x, p) * (1.0 + 0.1 * p)

    def cos_only(x, p):  # multiplies by cos and forgets the sin term: not a rotation
        cos, _ = solutions.rope_cos_sin(solutions.rope_inv_freq(x.shape[-1]).double(), torch.tensor([p]))
        return (x.double() * torch.cat((cos, cos), -1).reshape(x.shape[-1])).to(x.dtype)

    return {
        "angles growing with position^2": quadratic,
        "an absolute sinusoidal encoding added to the vector": additive,
        "a rotation scaled by (1 + 0.1 p)": growing,
        "cos only, no sin term": cos_only,
    }


def check_relative_property_test(student_test, *, broken=None, hidden=False) -> None:
    """Grade a test the student wrote: ``student_test(rotate)`` must pass for correct rotations with RoPE's
    relative property and raise ``AssertionError`` for each broken one. ``rotate(x, position)`` rotates a
    ``[..., dim]`` tensor at an integer position. ``broken`` selects (by description) which broken
    implementations to use.

    The visible check runs it on stand-ins (`course_checks.subjects.Rotation`: rotations ``exp(p A)`` with the
    relative property, and two broken variants of them); the hidden check on RoPE and four broken RoPEs."""
    implementations = _broken_rotations(hidden)
    if broken is not None:
        unknown = set(broken) - set(implementations)
        if unknown:
            raise ValueError(f"unknown broken implementation(s) {sorted(unknown)}; known: {sorted(implementations)}")
        implementations = {k: v for k, v in implementations.items() if k in broken}
    pool = [(True, d, r) for d, r in _correct_rotations(hidden).items()]
    pool += [(False, d, r) for d, r in implementations.items()]
    steps.property_test_check(student_test, engine.draw_cases(pool, 2 * len(pool)), len(implementations),
                              hidden=hidden)


CATALOGUES = [
    Catalogue(check_rope_inv_freq, INV_FREQ_MISTAKES),
    Catalogue(check_rope_cos_sin, COS_SIN_MISTAKES),
    Catalogue(check_apply_rope, APPLY_ROPE_MISTAKES, {"interleaved": False}),
    Catalogue(check_permute_to_half_split, PERMUTE_MISTAKES),
    Catalogue(check_rope_kernel, KERNEL_MISTAKES),
]
"""Which check recognises each catalogue of this assignment (``tests/test_grader_mistakes.py`` runs them)."""
