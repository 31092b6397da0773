"""Tests for solutions/transformer_xl.py (Dai et al. 2019, section 3.3 and Appendix B). float64, seeded."""

from __future__ import annotations

import math

import pytest
import torch

from solutions.attention import causal_mask
from solutions.sinusoidal import sinusoidal_encoding
from solutions.transformer_xl import (
    TransformerXLRelativeAttention,
    naive_relative_position_scores,
    relative_position_scores,
    relative_shift,
    transformer_xl_position_encoding,
    transformer_xl_score_terms,
)

DT = torch.float64
# (q_len, k_len): no memory (equal), with memory (k_len > q_len), and one-query decode.
SIZES = [(1, 1), (4, 4), (7, 7), (3, 8), (5, 6), (1, 9), (6, 13)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _module(d_model=12, n_heads=3, seed=0) -> TransformerXLRelativeAttention:
    torch.manual_seed(seed)
    module = TransformerXLRelativeAttention(d_model, n_heads).to(DT)
    with torch.no_grad():  # u, v start near 0; make (c) and (d) large enough that a wrong one is visible
        module.u.normal_()
        module.v.normal_()
    return module


def test_position_encoding_is_descending_and_concatenated():
    # Transformer-XL's R = Vaswani's table with the rows reversed and the (sin, cos) columns de-interleaved.
    k_len, dim = 11, 8
    ours = transformer_xl_position_encoding(k_len, dim)
    vaswani = sinusoidal_encoding(k_len, dim)
    permutation = torch.cat([torch.arange(0, dim, 2), torch.arange(1, dim, 2)])
    torch.testing.assert_close(ours, vaswani.flip(0)[:, permutation])
    # last row is distance 0: sin = 0, cos = 1
    torch.testing.assert_close(ours[-1], torch.cat([torch.zeros(dim // 2), torch.ones(dim // 2)]))
    assert transformer_xl_position_encoding(3, 4, dtype=DT).dtype == DT


@pytest.mark.parametrize("q_len,k_len", SIZES)
def test_relative_shift_indexing(q_len, k_len):
    # On the causal region, out[i, j] = x[i, j + q_len - 1 - i] (row i slides left by q_len - 1 - i).
    x = torch.randn(2, 3, q_len, k_len, dtype=DT, generator=_gen(1))
    out = relative_shift(x)
    assert out.shape == x.shape
    valid = causal_mask(q_len, k_len)
    for i in range(q_len):
        for j in range(k_len):
            if valid[i, j]:
                assert out[..., i, j].equal(x[..., i, j + q_len - 1 - i])


@pytest.mark.parametrize("q_len,k_len", SIZES)
def test_shifted_position_scores_match_naive_gather(q_len, k_len):
    batch, heads, d_head = 2, 3, 5
    g = _gen(q_len * 100 + k_len)
    q = torch.randn(batch, heads, q_len, d_head, dtype=DT, generator=g)
    r = torch.randn(heads, k_len, d_head, dtype=DT, generator=g)  # descending distance: row m = k_len - 1 - m
    v = torch.randn(heads, d_head, dtype=DT, generator=g)
    valid = causal_mask(q_len, k_len)
    fast = relative_position_scores(q, r, v)
    naive = naive_relative_position_scores(q, r.flip(1), v)
    torch.testing.assert_close(fast[..., valid], naive[..., valid])
    assert naive[..., ~valid].eq(0).all()


@pytest.mark.parametrize("seq,mem_len", [(5, 0), (4, 3), (1, 6), (6, 2)])
def test_module_shift_path_equals_naive_path(seq, mem_len):
    module = _module()
    g = _gen(seq * 10 + mem_len)
    hidden = torch.randn(2, seq, 12, dtype=DT, generator=g)
    mems = torch.randn(2, mem_len, 12, dtype=DT, generator=g) if mem_len else None
    torch.testing.assert_close(module(hidden, mems), module(hidden, mems, naive=True))
    out = module(hidden, mems)
    assert out.shape == hidden.shape


@pytest.mark.parametrize("mem_len", [0, 3])
def test_four_terms_sum_to_module_scores(mem_len):
    module = _module(seed=2)
    g = _gen(3)
    hidden = torch.randn(2, 5, 12, dtype=DT, generator=g)
    mems = torch.randn(2, mem_len, 12, dtype=DT, generator=g) if mem_len else None
    a, b, c, d = module.score_terms(hidden, mems)
    scores = module.attention_scores(hidden, mems)
    valid = causal_mask(5, 5 + mem_len)
    assert a.shape == b.shape == c.shape == d.shape == scores.shape == (2, 3, 5, 5 + mem_len)
    torch.testing.assert_close((a + b + c + d)[..., valid], scores[..., valid])
    assert torch.isneginf(scores[..., ~valid]).all()
    for term in (a, b, c, d):  # every term contributes: dropping any one would break the sum
        assert term[..., valid].abs().max() > 1e-3


def test_four_terms_match_explicit_per_pair_formula():
    # Section 3.3 written out for each (i, j) with the module's weight matrices, no head tensors, no shift.
    module = _module(d_model=8, n_heads=2, seed=4)
    seq, mem_len, dh = 3, 2, 4
    g = _gen(5)
    hidden = torch.randn(1, seq, 8, dtype=DT, generator=g)
    mems = torch.randn(1, mem_len, 8, dtype=DT, generator=g)
    context = torch.cat([mems, hidden], dim=1)[0]
    k_len = mem_len + seq
    table = transformer_xl_position_encoding(k_len, 8, dtype=DT)
    r_of = {delta: table[k_len - 1 - delta] for delta in range(k_len)}  # R_delta: row m is distance k_len-1-m
    terms = module.score_terms(hidden, mems)
    for h in range(2):
        rows = slice(h * dh, (h + 1) * dh)
        wq, wke, wkr = module.w_q.weight[rows], module.w_k_e.weight[rows], module.w_k_r.weight[rows]
        for i in range(seq):
            for j in range(mem_len + i + 1):  # causal: key j <= query position mem_len + i
                e_i, e_j, r_ij = hidden[0, i], context[j], r_of[mem_len + i - j]
                expected = (
                    (wq @ e_i) @ (wke @ e_j),
                    (wq @ e_i) @ (wkr @ r_ij),
                    module.u[h] @ (wke @ e_j),
                    module.v[h] @ (wkr @ r_ij),
                )
                for term, value in zip(terms, expected):
                    torch.testing.assert_close(term[0, h, i, j], value / math.sqrt(dh))


def test_position_terms_depend_only_on_distance():
    module = _module(seed=6)
    g = _gen(7)
    hidden = torch.randn(2, 6, 12, dtype=DT, generator=g)
    mems = torch.randn(2, 2, 12, dtype=DT, generator=g)
    valid = causal_mask(6, 8)

    def diagonal_spread(term):  # largest spread of the term along any diagonal i - j = const, valid entries only
        spread = torch.zeros((), dtype=DT)
        for offset in range(-7, 6):
            diag = torch.diagonal(term, offset=offset, dim1=-2, dim2=-1)
            keep = torch.diagonal(valid, offset=offset)
            if keep.sum() > 1:
                values = diag[..., keep]
                spread = torch.maximum(spread, (values.amax(-1) - values.amin(-1)).max())
        return spread

    _, b, _, d = module.score_terms(hidden, mems)
    # (d) = v^T W_k,R R_{i-j}: a function of i - j alone (and the head), whatever the input.
    assert diagonal_spread(d) < 1e-12
    assert d.sub(d[:1]).abs().max() < 1e-12
    # (b) = q_i^T W_k,R R_{i-j}: key side is positional only, but q_i is content, so (b) varies along a
    # diagonal in general and becomes diagonal-constant only when every query row carries the same content.
    assert diagonal_spread(b) > 1e-3
    same_tokens = hidden[:, :1].expand_as(hidden)
    _, b_same, _, _ = module.score_terms(same_tokens, mems)
    assert diagonal_spread(b_same) < 1e-12


def test_scores_are_translation_invariant():
    # No absolute position enters A^rel: prepending tokens leaves the scores among the later tokens unchanged.
    module = _module(seed=8)
    g = _gen(9)
    tail = torch.randn(2, 5, 12, dtype=DT, generator=g)
    prefix = torch.randn(2, 4, 12, dtype=DT, generator=g)
    short = module.attention_scores(tail)
    long = module.attention_scores(torch.cat([prefix, tail], dim=1))
    torch.testing.assert_close(long[..., 4:, 4:], short)


@pytest.mark.parametrize("seq,mem_len", [(4, 3), (1, 5), (5, 1)])
def test_memory_equals_processing_the_concatenation(seq, mem_len):
    # One layer, memory = the previous segment's input to this layer: attending from the segment with mems
    # equals running [mem; segment] under the causal mask and keeping the last seq rows (the memory rows of
    # that run see only memory). In a multi-layer stack the same holds layer by layer only when each layer's
    # memory is what that layer produced for the previous segment.
    module = _module(seed=10)
    g = _gen(11)
    mems = torch.randn(2, mem_len, 12, dtype=DT, generator=g)
    segment = torch.randn(2, seq, 12, dtype=DT, generator=g)
    with_memory = module(segment, mems)
    concatenated = module(torch.cat([mems, segment], dim=1))
    torch.testing.assert_close(with_memory, concatenated[:, -seq:])
    # ... and the memory really is attended to: dropping it changes the output.
    assert not torch.allclose(with_memory, module(segment))


def test_memory_receives_no_gradient():
    module = _module(seed=12)
    g = _gen(13)
    mems = torch.randn(1, 3, 12, dtype=DT, generator=g, requires_grad=True)
    segment = torch.randn(1, 4, 12, dtype=DT, generator=g, requires_grad=True)
    module(segment, mems).square().sum().backward()
    assert mems.grad is None  # stop-gradient (section 3.2)
    assert segment.grad is not None and segment.grad.abs().max() > 0
    assert module.u.grad.abs().max() > 0 and module.v.grad.abs().max() > 0 and module.w_k_r.weight.grad.abs().max() > 0


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="d_model"):
        TransformerXLRelativeAttention(11, 1)  # odd d_model: R needs (sin, cos) pairs
    with pytest.raises(ValueError, match="n_heads"):
        TransformerXLRelativeAttention(12, 5)
    with pytest.raises(ValueError, match="dim"):
        transformer_xl_position_encoding(4, 7)
    with pytest.raises(ValueError, match="k_len"):
        transformer_xl_position_encoding(0, 8)
    module = _module()
    with pytest.raises(ValueError, match="hidden"):
        module(torch.randn(2, 4, 10, dtype=DT))
    with pytest.raises(ValueError, match="hidden"):
        module(torch.randn(4, 12, dtype=DT))
    with pytest.raises(ValueError, match="mems"):
        module(torch.randn(2, 4, 12, dtype=DT), torch.randn(2, 3, 10, dtype=DT))  # wrong width
    with pytest.raises(ValueError, match="mems"):
        module(torch.randn(2, 4, 12, dtype=DT), torch.randn(3, 3, 12, dtype=DT))  # wrong batch
    with pytest.raises(ValueError, match="q_len <= k_len"):
        relative_shift(torch.randn(5, 4))
    with pytest.raises(ValueError, match="relative_shift"):
        relative_shift(torch.randn(5))
    q = torch.randn(1, 2, 3, 4, dtype=DT)
    with pytest.raises(ValueError, match="r must be"):
        relative_position_scores(q, torch.randn(3, 5, 4, dtype=DT), torch.randn(2, 4, dtype=DT))
    with pytest.raises(ValueError, match="v must be"):
        naive_relative_position_scores(q, torch.randn(2, 5, 4, dtype=DT), torch.randn(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="k must be"):
        transformer_xl_score_terms(
            q, torch.randn(1, 2, 6, 4, dtype=DT), torch.randn(2, 5, 4, dtype=DT),
            torch.randn(2, 4, dtype=DT), torch.randn(2, 4, dtype=DT),
        )
