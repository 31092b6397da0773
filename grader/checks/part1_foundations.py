"""The checks of assignment ``part1_foundations``: self-attention without positions, the permutation test, and
the sinusoidal encoding (Vaswani et al. 2017, section 3.5) with its shift matrix and dot product.

Each check sits next to the catalogue of mistakes it recognises; each mistake's ``example`` is a wrong
function written the way a student writes it (a student-style implementation below with the bug switched
on), proved by ``tests/test_grader_mistakes.py``.
"""

from __future__ import annotations

import functools
import math

import torch

import solutions

from .. import references
from ..course_checks import steps
from . import engine
from .engine import Case, Catalogue, Mistake, check_function, generator, randn
from .variants import EXPONENT_MESSAGES, exponent_mistakes, frequencies, interleave, student_frequencies

GRADED_REFERENCES = {
    "check_self_attention": ["solutions.attention:reference_attention"],
    "check_sinusoidal_encoding": ["solutions.sinusoidal:sinusoidal_encoding",
                                  "solutions.sinusoidal:sinusoidal_frequencies"],
    "check_shift_matrix": ["solutions.sinusoidal:sinusoidal_shift_matrix"],
}
"""This assignment's entries of `grader.checks.GRADED_REFERENCES`."""


# ----------------------------------------------------------------------------------------------------------
# Self-attention without positions
# ----------------------------------------------------------------------------------------------------------


def _attention_variant(case, *, scale=None, causal=False, softmax_dim=-1, transpose_weights=False):
    x, w_q, w_k, w_v = case.args
    if transpose_weights:
        q, k, v = x @ w_q, x @ w_k, x @ w_v
    else:
        q, k, v = x @ w_q.T, x @ w_k.T, x @ w_v.T
    scores = q @ k.T * (q.shape[-1] ** -0.5 if scale is None else scale)
    if causal:
        scores = scores.masked_fill(~solutions.causal_mask(x.shape[0], x.shape[0]), float("-inf"))
    return torch.softmax(scores, dim=softmax_dim) @ v


def _student_attention(x, w_q, w_k, w_v, *, scaled=True, softmax_dim=-1, causal=False, linear_layout=True):
    """A student's self-attention; the keyword switches write its mistakes."""
    if linear_layout:
        q, k, v = x @ w_q.T, x @ w_k.T, x @ w_v.T
    else:
        q, k, v = x @ w_q, x @ w_k, x @ w_v
    scores = q @ k.T
    if scaled:
        scores = scores / math.sqrt(k.shape[-1])
    if causal:
        scores = scores.masked_fill(torch.ones(len(x), len(x), dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(scores, dim=softmax_dim) @ v


SELF_ATTENTION_MISTAKES = [
    Mistake("no scale", "The scores are not scaled: divide q . k by sqrt(d_k) before the softmax (Vaswani et al. "
                        "2017, eq. 1).", candidate=lambda ref, case: _attention_variant(case, scale=1.0),
            example=functools.partial(_student_attention, scaled=False)),
    Mistake("softmax axis", "The softmax runs over the wrong axis: each query's weights over the keys must sum to 1, "
                            "so normalise along the last dimension of q @ k.T (dim=-1).",
            candidate=lambda ref, case: _attention_variant(case, softmax_dim=0),
            example=functools.partial(_student_attention, softmax_dim=0)),
    Mistake("causal", "You applied a causal mask; this is plain (bidirectional) self-attention: every token sees every "
                      "token.", candidate=lambda ref, case: _attention_variant(case, causal=True),
            example=functools.partial(_student_attention, causal=True)),
    # x @ w runs only where the weights are square (d_head = d_model); elsewhere it raises, and says so.
    Mistake("weights layout", "The weights are nn.Linear-style [d_out, d_model]: project with x @ w.T, not x @ w.",
            candidate=lambda ref, case: _attention_variant(case, transpose_weights=True),
            example=functools.partial(_student_attention, linear_layout=False),
            example_options={"shapes": [(3, 5, 5)]}),
]


def check_self_attention(student_fn, *, shapes=((5, 8, 4),), seed=0, hidden=False) -> None:
    """``self_attention(x, w_q, w_k, w_v)``: one head, no positions. ``shapes`` are (seq, d_model, d_head)."""
    g = generator(seed)
    cases = []
    for seq, d_model, d_head in shapes:
        args = (randn((seq, d_model), g), randn((d_head, d_model), g), randn((d_head, d_model), g),
                randn((d_head, d_model), g))
        cases.append(Case(args, label=f"x [{seq}, {d_model}], weights [{d_head}, {d_model}]"))
    check_function(student_fn, references.self_attention, cases, name="self_attention", rtol=1e-4, atol=1e-5,
                   mistakes=SELF_ATTENTION_MISTAKES, hidden=hidden,
                   hint="Compute softmax(q k^T / sqrt(d_k)) v with q = x W_q^T, k = x W_k^T, v = x W_v^T.")


# ----------------------------------------------------------------------------------------------------------
# The permutation test (graded against a property: no catalogue)
# ----------------------------------------------------------------------------------------------------------


def _subject_functions(g, d):
    """Functions of x [seq, d] that are and are not permutation-equivariant, with why."""
    weights = [randn((d, d), g) / math.sqrt(d) for _ in range(3)]

    def attention(x):
        return references.self_attention(x, *weights)

    w_mlp = randn((d, d), g) / math.sqrt(d)
    causal_weights = [randn((d, d), g) / math.sqrt(d) for _ in range(3)]
    return {
        "plain self-attention": (attention, True,
                                 "self-attention without positions treats the tokens as a set"),
        "a row-wise MLP, tanh(x W)": (lambda x: torch.tanh(x @ w_mlp), True, "it acts on each row separately"),
        "self-attention after adding the sinusoidal encoding": (
            lambda x: attention(x + solutions.sinusoidal_encoding(x.shape[0], x.shape[1])), False,
            "the encoding added to row p depends on p, not on the token"),
        "causal self-attention": (
            lambda x: solutions.reference_attention(*(x @ w.T for w in causal_weights), causal=True),
            False, "the causal mask depends on the positions"),
        "a cumulative sum over the sequence": (lambda x: torch.cumsum(x, dim=0), False,
                                               "the sum up to row p depends on the order"),
    }


def check_permutation_detector(student_fn, *, seq=6, dim=8, seed=0, hidden=False, identity=False) -> None:
    """``is_permutation_equivariant(f, x, perm) -> bool`` on functions that are and are not equivariant."""
    g = generator(seed)
    subjects = _subject_functions(g, dim)
    x = randn((seq, dim), g)
    if identity:
        perm = torch.arange(seq)
    else:
        perm = torch.randperm(seq, generator=g)
        while bool((perm == torch.arange(seq)).any()) and seq > 1:
            perm = torch.randperm(seq, generator=g)  # a derangement: every row moves
    cases = []
    for description, (f, _, why) in engine.draw_cases(list(subjects.items()), 2 * len(subjects)):
        note = (f"{description} with the identity permutation: nothing moves, so every function passes"
                if identity else f"{description}: {why}")
        cases.append(Case((f, x, perm), label=f"{description}, x [{seq}, {dim}]", note=note))
    answers = [(case, references.is_permutation_equivariant(case.args[0], case.args[1].clone(), case.args[2].clone()))
               for case in cases]
    steps.permutation_check(student_fn, answers, hidden=hidden)


# ----------------------------------------------------------------------------------------------------------
# The sinusoidal encoding, its shift matrix and its dot product
# ----------------------------------------------------------------------------------------------------------


def _two_args_and_base(case):
    """``(first, dim, base)`` of a call ``f(first, dim, base=10000.0)`` (the sinusoidal checks' signature)."""
    first, dim = case.args[:2]
    base = case.args[2] if len(case.args) > 2 else case.kwargs.get("base", 10000.0)
    return first, dim, base


def _sinusoidal_from_frequencies(num_positions: int, omega: torch.Tensor) -> torch.Tensor:
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * omega
    return interleave(torch.sin(angles), torch.cos(angles)).to(torch.float32)


def _student_sinusoidal(num_positions, dim, base=10000.0, *, first_position=0, cos_first=False, halves=False,
                        **exponent):
    """A student's sinusoidal encoding; the keyword switches (and those of `student_frequencies`) write its
    mistakes."""
    positions = torch.arange(first_position, first_position + num_positions, dtype=torch.float64)[:, None]
    angles = positions * student_frequencies(dim, base, **exponent)
    first, second = (torch.cos(angles), torch.sin(angles)) if cos_first else (torch.sin(angles), torch.cos(angles))
    if halves:
        return torch.cat((first, second), dim=1).float()
    out = torch.empty(num_positions, dim, dtype=torch.float64)
    out[:, 0::2], out[:, 1::2] = first, second
    return out.float()


SINUSOIDAL_MISTAKES = [
    Mistake("sin/cos swapped", "sin and cos are swapped: even columns (0, 2, 4, ...) hold sin(p * omega_i) and odd "
                               "columns hold cos(p * omega_i) (Vaswani et al. 2017, section 3.5).",
            candidate=lambda ref, case: (lambda e: e.view(e.shape[0], -1, 2).flip(-1).reshape(e.shape))(
                ref(*case.args, **case.kwargs)),
            example=functools.partial(_student_sinusoidal, cos_first=True)),
    Mistake("halves", "You put all the sines in the first half of the columns and all the cosines in the second half "
                      "(the tensor2tensor layout). This course's encoding interleaves them: column 2i is "
                      "sin(p * omega_i) "
                      "and column 2i + 1 is cos(p * omega_i).",
            candidate=lambda ref, case: (lambda e: torch.cat((e[:, 0::2], e[:, 1::2]), dim=1))(
                ref(*case.args, **case.kwargs)),
            example=functools.partial(_student_sinusoidal, halves=True)),
    Mistake("positions +1", "Positions off by one: your first row is position 1. Rows are positions 0, 1, ..., "
                            "num_positions - 1, and row 0 is (0, 1, 0, 1, ...).",
            candidate=lambda ref, case: (lambda n, d, b: ref(n + 1, d, b)[1:])(*_two_args_and_base(case)),
            example=functools.partial(_student_sinusoidal, first_position=1)),
] + exponent_mistakes(lambda kind, ref, case: (lambda n, d, b: _sinusoidal_from_frequencies(
    n, frequencies(d, b, kind)))(*_two_args_and_base(case)),
    lambda **bug: functools.partial(_student_sinusoidal, **bug))


def _student_shift_matrix(offset, dim, base=10000.0, *, transposed=False, **exponent):
    """A student's shift matrix M_k, one 2x2 block per (sin, cos) pair of columns."""
    omega = student_frequencies(dim, base, **exponent)
    matrix = torch.zeros(dim, dim, dtype=torch.float64)
    for i in range(dim // 2):
        c, s = math.cos(offset * float(omega[i])), math.sin(offset * float(omega[i]))
        matrix[2 * i: 2 * i + 2, 2 * i: 2 * i + 2] = torch.tensor([[c, s], [-s, c]], dtype=torch.float64)
    return matrix.T if transposed else matrix


SHIFT_MATRIX_MISTAKES = [
    Mistake("transposed", "Your matrix maps PE(p) to PE(p - k): it is the transpose (the inverse rotation). In "
                          "each 2x2 block the sin(k omega) above the diagonal is positive: sin(a + b) = sin a cos b "
                          "+ cos a sin b.",
            candidate=lambda ref, case: (lambda k, d, b: ref(-k, d, b))(*_two_args_and_base(case)),
            example=functools.partial(_student_shift_matrix, transposed=True)),
    # base^(-i/d) = sqrt(base)^(-2i/d), and base^(-2(i+1)/d) k = base^(-2i/d) (k base^(-2/d)): both are the
    # reference at another base or offset.
    Mistake("exponent i/d", EXPONENT_MESSAGES["i/d"],
            candidate=lambda ref, case: (lambda k, d, b: ref(k, d, math.sqrt(b)))(*_two_args_and_base(case)),
            example=functools.partial(_student_shift_matrix, step=1)),
    Mistake("exponent 2(i+1)/d", EXPONENT_MESSAGES["2(i+1)/d"],
            candidate=lambda ref, case: (lambda k, d, b: ref(k * b ** (-2.0 / d), d, b))(*_two_args_and_base(case)),
            example=functools.partial(_student_shift_matrix, start=1)),
]


def _student_dot_product(offsets, dim, base=10000.0, *, per_column=False, trig=torch.cos, **exponent):
    """A student's PE(p) . PE(p + k) = sum_i cos(k omega_i)."""
    omega = student_frequencies(dim, base, **exponent)
    if per_column:  # one term per column of the encoding instead of one per (sin, cos) pair
        omega = omega.repeat_interleave(2)
    return trig(offsets[..., None] * omega).sum(-1)


DOT_PRODUCT_MISTAKES = [
    Mistake("d terms", "Your values are twice the reference: there are d/2 frequencies, and each (sin, cos) pair "
                       "contributes one cos(k omega_i) to the sum, not two.",
            candidate=lambda ref, case: 2 * ref(*case.args, **case.kwargs),
            example=functools.partial(_student_dot_product, per_column=True)),
    Mistake("sin instead of cos", "You summed sines; sin(a)sin(b) + cos(a)cos(b) = cos(a - b), so the sum is over "
                                  "cos(k omega_i).",
            candidate=lambda ref, case: (lambda k, d, b: torch.sin(torch.as_tensor(k, dtype=torch.float64)[..., None]
                                                                   * frequencies(d, b, "2i/d")).sum(-1))(
                *_two_args_and_base(case)),
            example=functools.partial(_student_dot_product, trig=torch.sin)),
    Mistake("exponent i/d", EXPONENT_MESSAGES["i/d"],
            candidate=lambda ref, case: (lambda k, d, b: ref(k, d, math.sqrt(b)))(*_two_args_and_base(case)),
            example=functools.partial(_student_dot_product, step=1)),
]


def _sized(c) -> str:
    """``dim=8`` or ``dim=8, base=100``: the end of a sinusoidal case's label."""
    return f"dim={c[1]}" + (f", base={c[2]:g}" if len(c) > 2 else "")


def check_sinusoidal_encoding(student_fn, *, cases=((6, 8), (1, 2), (4, 6, 100.0)), hidden=False) -> None:
    """``sinusoidal_encoding(num_positions, dim, base=10000.0)``; ``cases`` are (num_positions, dim[, base])."""
    built = [Case(tuple(c), label=f"num_positions={c[0]}, {_sized(c)}") for c in cases]
    check_function(student_fn, solutions.sinusoidal_encoding, built, name="sinusoidal_encoding", rtol=1e-4, atol=1e-4,
                   mistakes=SINUSOIDAL_MISTAKES, hidden=hidden,
                   hint="Row p, column 2i is sin(p * base^(-2i/dim)) and column 2i + 1 is cos of the same angle.")


def check_shift_matrix(student_fn, *, cases=((1, 4), (3, 8), (-2, 6, 100.0)), hidden=False) -> None:
    """``sinusoidal_shift_matrix(offset, dim, base=10000.0)`` (float64); ``cases`` are (offset, dim[, base])."""
    built = [Case(tuple(c), label=f"offset={c[0]}, {_sized(c)}") for c in cases]
    check_function(student_fn, solutions.sinusoidal_shift_matrix, built, name="sinusoidal_shift_matrix", rtol=1e-6,
                   atol=1e-9, mistakes=SHIFT_MATRIX_MISTAKES, hidden=hidden,
                   hint="M_k is block-diagonal with one 2x2 block [[cos(k w_i), sin(k w_i)], [-sin(k w_i), "
                        "cos(k w_i)]] per frequency, acting on the (sin, cos) pair of columns 2i, 2i + 1.")


def check_position_dot_product(student_fn, *, cases=(((0, 1, 2, 5), 8), ((3, -3), 16, 100.0)), hidden=False) -> None:
    """``position_dot_product(offsets, dim, base=10000.0)`` (float64); ``cases`` are (offsets, dim[, base])."""
    built = []
    for c in cases:
        offsets = torch.tensor(c[0], dtype=torch.float64)
        built.append(Case((offsets,) + tuple(c[1:]), label=f"{offsets.numel()} offsets, {_sized(c)}"))
    check_function(student_fn, references.position_dot_product, built, name="position_dot_product", rtol=1e-6,
                   atol=1e-9, mistakes=DOT_PRODUCT_MISTAKES, hidden=hidden,
                   hint="PE(p) . PE(p + k) = sum over the d/2 frequencies of cos(k * omega_i).")


CATALOGUES = [
    Catalogue(check_self_attention, SELF_ATTENTION_MISTAKES),
    Catalogue(check_sinusoidal_encoding, SINUSOIDAL_MISTAKES),
    Catalogue(check_shift_matrix, SHIFT_MATRIX_MISTAKES),
    Catalogue(check_position_dot_product, DOT_PRODUCT_MISTAKES),
]
"""Which check recognises each catalogue of this assignment (``tests/test_grader_mistakes.py`` runs them)."""
