"""The checks of assignment ``part4_mla``: why RoPE breaks weight absorption, DeepSeek-V2's decoupled RoPE
(DeepSeek-AI 2024, eqs. 14-18), the naive and weight-absorbed scores over the latent KV cache, and the KV-cache
size per token of MHA, GQA, MQA and MLA (DeepSeek-V2, Table 1).

Each check sits next to the catalogue of mistakes it recognises; each mistake's ``example`` is a wrong
function written the way a student writes it, proved by ``tests/test_grader_mistakes.py``.
"""

from __future__ import annotations

import functools
import math

import torch

import solutions

from .. import references
from ..course_checks import steps
from .engine import Case, Catalogue, Mistake, check_function, generator, randn
from .variants import rotate_at

GRADED_REFERENCES = {
    "check_rope_absorbed_matrix": ["solutions.mla:rope_absorbed_score_matrix"],
    "check_decoupled_rope_scores": ["solutions.mla:MultiHeadLatentAttention.forward"],
    "check_naive_latent_scores": ["solutions.mla:MultiHeadLatentAttention.forward"],
    "check_absorbed_latent_scores": ["solutions.mla:MultiHeadLatentAttention.forward"],
    "check_kv_cache_elements": ["solutions.mla:kv_cache_elements_per_token"],
}
"""This assignment's entries of `grader.checks.GRADED_REFERENCES`."""


def _student_rope_rotate(x, positions, inv_freq, *, interleaved=False):
    """The notebook's ``rope_rotate(x, positions, inv_freq)`` as a student writes it (half-split), from which the
    examples below build."""
    angles = positions.to(torch.float32)[:, None] * inv_freq.to(torch.float32)
    cos, sin = torch.cos(angles), torch.sin(angles)
    if interleaved:
        first, second = x[..., 0::2], x[..., 1::2]
        return torch.stack((first * cos - second * sin, second * cos + first * sin), dim=-1).flatten(-2)
    first, second = x.chunk(2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


# ----------------------------------------------------------------------------------------------------------
# Why RoPE breaks absorption: M = W_q^T R(n - m) W_k
# ----------------------------------------------------------------------------------------------------------


def _student_absorbed_matrix(w_q, w_k, query_position, key_position, inv_freq, *, swap=False, rotate=True):
    if not rotate:
        return w_q.T @ w_k
    if swap:
        query_position, key_position = key_position, query_position
    rotated_q = _student_rope_rotate(w_q.T, torch.tensor([query_position]), inv_freq)
    rotated_k = _student_rope_rotate(w_k.T, torch.tensor([key_position]), inv_freq)
    return rotated_q @ rotated_k.T


ROPE_ABSORBED_MISTAKES = [
    Mistake("positions swapped", "The rotations are swapped: q is rotated by R(m) (query position) and k by R(n) (key "
                                 "position); M = W_q^T R(m)^T R(n) W_k = W_q^T R(n - m) W_k.",
            candidate=lambda ref, case: ref(case.args[0], case.args[1], case.args[3], case.args[2], case.args[4]),
            example=functools.partial(_student_absorbed_matrix, swap=True)),
    Mistake("no rotation", "You left out the rotations: with RoPE, M = W_q^T R(n - m) W_k, not W_q^T W_k.",
            candidate=lambda ref, case: case.args[0].T @ case.args[1],
            example=functools.partial(_student_absorbed_matrix, rotate=False)),
]


def check_rope_absorbed_matrix(student_fn, *, cases=((4, 3, 5, 2, 7), (8, 6, 6, 0, 0)), seed=0, hidden=False) -> None:
    """``rope_absorbed_matrix(w_q, w_k, query_position, key_position, inv_freq)`` ``[d_x, d_y]``; ``cases`` are
    (d, d_x, d_y, m, n)."""
    g = generator(seed)
    built = []
    for d, d_x, d_y, m, n in cases:
        args = (randn((d, d_x), g), randn((d, d_y), g), m, n, solutions.rope_inv_freq(d))
        built.append(Case(args, label=f"w_q [{d}, {d_x}], w_k [{d}, {d_y}], m={m}, n={n}"))
    check_function(student_fn, lambda wq, wk, m, n, f: solutions.rope_absorbed_score_matrix(wq, wk, m, n, f), built,
                   name="rope_absorbed_matrix", rtol=1e-4, atol=1e-4, mistakes=ROPE_ABSORBED_MISTAKES, hidden=hidden,
                   hint="Rotate the columns of W_q by R(m) and of W_k by R(n): M = (R(m) W_q)^T (R(n) W_k).")


# ----------------------------------------------------------------------------------------------------------
# Scores over the latent cache: naive, absorbed, and with decoupled RoPE
# ----------------------------------------------------------------------------------------------------------


def _mla_variant(reference, case, *, drop_rope=False, drop_content=False, scale=None):
    """The reference without its rotary part (q^R zeroed: argument 2), its content part (q^C zeroed: argument 1)
    or its scale (the last argument): the same positions in every scores function of this assignment."""
    args = list(case.args)
    if drop_rope:
        args[1] = torch.zeros_like(args[1])
    if drop_content:
        args[0] = torch.zeros_like(args[0])
    if scale is not None:
        args[-1] = scale
    return reference(*args)


def _student_naive_scores(q_nope, q_rope, latent, k_rope, w_uk, scale, *, content=True, rope=True, scaled=True):
    scores = torch.zeros(q_nope.shape[0], latent.shape[0])
    if content:
        scores = scores + q_nope @ (latent @ w_uk.T).T
    if rope:
        scores = scores + q_rope @ k_rope.T
    return scores * scale if scaled else scores


MLA_SCORE_MISTAKES = [
    Mistake("no rope term", "Your scores have only the content part q^C . k^C. Add the decoupled rotary part "
                            "q^R . k^R (DeepSeek-V2 eq. 16-17: q = [q^C; q^R], k = [k^C; k^R]).",
            candidate=lambda ref, case: _mla_variant(ref, case, drop_rope=True),
            example=functools.partial(_student_naive_scores, rope=False)),
    Mistake("no content term", "Your scores have only the rotary part q^R . k^R. Add the content part q^C . k^C "
                               "(k^C = W^UK c^KV).",
            candidate=lambda ref, case: _mla_variant(ref, case, drop_content=True),
            example=functools.partial(_student_naive_scores, content=False)),
    Mistake("no scale", "The scores are not multiplied by `scale` (1 / sqrt(d_h + d^R_h) in DeepSeek-V2 eq. 18): "
                        "multiply the sum of both parts by it.",
            candidate=lambda ref, case: _mla_variant(ref, case, scale=1.0),
            example=functools.partial(_student_naive_scores, scaled=False)),
]
"""The scores of `check_naive_latent_scores` and `check_absorbed_latent_scores` (the same signature)."""


def _decoupled_variant(case, *, unrotated=False, interleaved=False):
    q_nope, q_rope, k_nope, k_rope, q_pos, k_pos, inv_freq, scale = case.args
    if unrotated:
        return (q_nope @ k_nope.T + q_rope @ k_rope.T) * scale
    q_r = rotate_at(q_rope, inv_freq, q_pos, interleaved=interleaved)
    k_r = rotate_at(k_rope, inv_freq, k_pos, interleaved=interleaved)
    return (q_nope @ k_nope.T + q_r @ k_r.T) * scale


def _student_decoupled_scores(q_nope, q_rope, k_nope, k_rope, q_positions, k_positions, inv_freq, scale, *,
                              content=True, rope=True, scaled=True, rotated=True, interleaved=False):
    if rotated:
        q_rope = _student_rope_rotate(q_rope, q_positions, inv_freq, interleaved=interleaved)
        k_rope = _student_rope_rotate(k_rope, k_positions, inv_freq, interleaved=interleaved)
    scores = torch.zeros(q_nope.shape[0], k_nope.shape[0])
    if content:
        scores = scores + q_nope @ k_nope.T
    if rope:
        scores = scores + q_rope @ k_rope.T
    return scores * scale if scaled else scores


_LEFT_OUT = {"no rope term": "rope", "no content term": "content", "no scale": "scaled"}
"""The switch of the student functions that writes each mistake of `MLA_SCORE_MISTAKES`."""

DECOUPLED_SCORE_MISTAKES = [
    mistake.with_example(functools.partial(_student_decoupled_scores, **{_LEFT_OUT[mistake.name]: False}))
    for mistake in MLA_SCORE_MISTAKES
] + [
    Mistake("not rotated", "q^R and k^R are not rotated: apply RoPE to q^R at the query positions and to k^R at "
                           "the key positions before the dot product (DeepSeek-V2 eqs. 14-15).",
            candidate=lambda ref, case: _decoupled_variant(case, unrotated=True),
            example=functools.partial(_student_decoupled_scores, rotated=False)),
    Mistake("layout", "Wrong RoPE layout: you rotated interleaved pairs (2i, 2i + 1); this task uses the half-split "
                      "layout (i paired with i + d_R/2), as `apply_rope` with interleaved=False.",
            candidate=lambda ref, case: _decoupled_variant(case, interleaved=True),
            example=functools.partial(_student_decoupled_scores, interleaved=True)),
]
"""`MLA_SCORE_MISTAKES` (the same positions of q^C, q^R and the scale) with examples of this signature, and the
rotation's own mistakes."""


def _mla_latent_cases(shapes, seed):
    g = generator(seed)
    cases = []
    for q_len, k_len, d_h, d_r, d_c in shapes:
        args = (randn((q_len, d_h), g), randn((q_len, d_r), g), randn((k_len, d_c), g), randn((k_len, d_r), g),
                randn((d_h, d_c), g) / math.sqrt(d_c), 1.0 / math.sqrt(d_h + d_r))
        cases.append(Case(args, label=f"q_len={q_len}, k_len={k_len}, d_h={d_h}, d_R={d_r}, d_c={d_c}"))
    return cases


_MLA_SHAPES = ((2, 5, 4, 2, 6), (1, 3, 8, 4, 16))


def check_naive_latent_scores(student_fn, *, shapes=_MLA_SHAPES, seed=0, hidden=False) -> None:
    """``naive_latent_scores(q_nope, q_rope, latent, k_rope, w_uk, scale)`` ``[q_len, k_len]``."""
    check_function(student_fn, references.naive_latent_scores, _mla_latent_cases(shapes, seed),
                   name="naive_latent_scores", rtol=1e-4, atol=1e-5, mistakes=MLA_SCORE_MISTAKES, hidden=hidden,
                   hint="k^C = latent @ w_uk.T; scores = (q_nope @ k^C.T + q_rope @ k_rope.T) * scale.")


def check_absorbed_latent_scores(student_fn, *, shapes=_MLA_SHAPES, seed=0, hidden=False) -> None:
    """``absorbed_latent_scores(...)``: the same numbers, with W^UK absorbed into the query."""
    check_function(student_fn, references.absorbed_latent_scores, _mla_latent_cases(shapes, seed),
                   name="absorbed_latent_scores", rtol=1e-4, atol=1e-5, mistakes=MLA_SCORE_MISTAKES, hidden=hidden,
                   hint="q_latent = q_nope @ w_uk (one d_c-wide query); scores = (q_latent @ latent.T + "
                        "q_rope @ k_rope.T) * scale.")


def check_absorbed_equals_naive(naive_fn, absorbed_fn, *, shapes=_MLA_SHAPES, seed=0, hidden=False) -> None:
    """The student's two paths agree with each other, and the absorbed one never builds per-head keys."""
    steps.agreement_check(naive_fn, absorbed_fn, _mla_latent_cases(shapes, seed), hidden=hidden)


def check_decoupled_rope_scores(student_fn, *, shapes=((3, 5, 4, 4), (1, 6, 2, 8)), seed=0, hidden=False) -> None:
    """``decoupled_rope_scores(q_nope, q_rope, k_nope, k_rope, q_positions, k_positions, inv_freq, scale)``;
    ``shapes`` are (q_len, k_len, d_h, d_R); queries sit at the last positions of the keys."""
    g = generator(seed)
    cases = []
    for q_len, k_len, d_h, d_r in shapes:
        k_positions = torch.arange(k_len)
        q_positions = torch.arange(k_len - q_len, k_len)
        args = (randn((q_len, d_h), g), randn((q_len, d_r), g), randn((k_len, d_h), g), randn((k_len, d_r), g),
                q_positions, k_positions, solutions.rope_inv_freq(d_r), 1.0 / math.sqrt(d_h + d_r))
        cases.append(Case(args, label=f"q_len={q_len}, k_len={k_len}, d_h={d_h}, d_R={d_r}"))
    check_function(student_fn, references.decoupled_rope_scores, cases, name="decoupled_rope_scores", rtol=1e-4,
                   atol=1e-5, mistakes=DECOUPLED_SCORE_MISTAKES, hidden=hidden,
                   hint="Rotate q_rope at q_positions and k_rope at k_positions (half-split), then "
                        "(q_nope @ k_nope.T + q_rope_rot @ k_rope_rot.T) * scale.")


# ----------------------------------------------------------------------------------------------------------
# KV-cache size per token
# ----------------------------------------------------------------------------------------------------------


def _kv_wrong(case, rule):
    """``rule(kind, keyword arguments)``: the count computed another way, or None where it does not apply."""
    return rule(case.args[0], dict(case.kwargs))


def _student_kv_cache(kind, *, num_heads=None, head_dim=None, num_kv_heads=None, kv_lora_rank=None,
                      qk_rope_head_dim=None, keys_and_values=2, mla="shared", gqa_heads="groups"):
    """A student's count; ``mla`` is "shared" (right), "per head", "latent twice" or "no rope key"."""
    if kind == "mha":
        return keys_and_values * num_heads * head_dim
    if kind == "gqa":
        return keys_and_values * (num_kv_heads if gqa_heads == "groups" else num_heads) * head_dim
    if kind == "mqa":
        return keys_and_values * head_dim
    return {"shared": kv_lora_rank + qk_rope_head_dim, "per head": num_heads * (kv_lora_rank + qk_rope_head_dim),
            "latent twice": 2 * kv_lora_rank + qk_rope_head_dim, "no rope key": kv_lora_rank}[mla]


KV_CACHE_MISTAKES = [
    Mistake("mla per head", "You counted the MLA cache per head. MLA caches one latent c^KV (d_c numbers) and one "
                            "rotary key k^R (d^R_h numbers) per token, shared by all heads: d_c + d^R_h.",
            candidate=lambda ref, case: _kv_wrong(case, lambda kind, kw: (kw["kv_lora_rank"] + kw["qk_rope_head_dim"])
                                                  * kw["num_heads"] if kind == "mla" and kw.get("num_heads") else None),
            example=functools.partial(_student_kv_cache, mla="per head")),
    Mistake("mla keys and values", "You counted the latent twice. In MLA the same latent c^KV rebuilds both keys and "
                                   "values, so it is cached once: d_c + d^R_h.",
            candidate=lambda ref, case: _kv_wrong(case, lambda kind, kw: 2 * kw["kv_lora_rank"] + kw["qk_rope_head_dim"]
                                                  if kind == "mla" else None),
            example=functools.partial(_student_kv_cache, mla="latent twice")),
    Mistake("mla without rope key", "You left out the rotary key: MLA caches k^R (d^R_h numbers, already rotated) "
                                    "next to the latent, because RoPE cannot be absorbed. The total is d_c + d^R_h.",
            candidate=lambda ref, case: _kv_wrong(case, lambda kind, kw: kw["kv_lora_rank"] if kind == "mla" else None),
            example=functools.partial(_student_kv_cache, mla="no rope key")),
    Mistake("keys only", "You counted only the keys: a KV cache stores a key *and* a value per head (the factor 2).",
            candidate=lambda ref, case: _kv_wrong(case, lambda kind, kw: ref(kind, **kw) // 2
                                                  if kind in ("mha", "gqa", "mqa") else None),
            example=functools.partial(_student_kv_cache, keys_and_values=1)),
    Mistake("gqa with all heads", "For GQA, count the key/value heads (num_kv_heads groups), not the query heads.",
            candidate=lambda ref, case: _kv_wrong(case, lambda kind, kw: 2 * kw["num_heads"] * kw["head_dim"]
                                                  if kind == "gqa" and kw.get("num_heads") else None),
            example=functools.partial(_student_kv_cache, gqa_heads="query heads")),
]


def check_kv_cache_elements(student_fn, *, cases=None, hidden=False) -> None:
    """``kv_cache_elements_per_token(kind, *, num_heads, head_dim, num_kv_heads, kv_lora_rank, qk_rope_head_dim)``."""
    if cases is None:
        cases = [("mha", dict(num_heads=4, head_dim=8)), ("gqa", dict(num_heads=8, num_kv_heads=2, head_dim=16)),
                 ("mqa", dict(num_heads=8, head_dim=16)),
                 ("mla", dict(num_heads=8, kv_lora_rank=32, qk_rope_head_dim=8))]
    built = [Case((kind,), dict(kw), label=f"kind={kind!r}, " + ", ".join(f"{k}={v}" for k, v in kw.items()))
             for kind, kw in cases]
    check_function(student_fn, solutions.kv_cache_elements_per_token, built, name="kv_cache_elements_per_token",
                   mistakes=KV_CACHE_MISTAKES, hidden=hidden,
                   hint="MHA 2 n_h d_h, GQA 2 n_g d_h, MQA 2 d_h, MLA d_c + d^R_h (DeepSeek-V2 Table 1).")


CATALOGUES = [
    Catalogue(check_rope_absorbed_matrix, ROPE_ABSORBED_MISTAKES),
    Catalogue(check_naive_latent_scores, MLA_SCORE_MISTAKES),
    Catalogue(check_absorbed_latent_scores, MLA_SCORE_MISTAKES),
    Catalogue(check_decoupled_rope_scores, DECOUPLED_SCORE_MISTAKES),
    Catalogue(check_kv_cache_elements, KV_CACHE_MISTAKES),
]
"""Which check recognises each catalogue of this assignment (``tests/test_grader_mistakes.py`` runs them)."""
