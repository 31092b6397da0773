"""The sinusoidal encoding, its relative linear map, the learned table, and reference attention."""

import math

import pytest
import torch

from solutions import (
    LearnedPositionalEmbedding,
    causal_mask,
    reference_attention,
    sinusoidal_encoding,
    sinusoidal_shift_matrix,
)


def test_sinusoidal_matches_the_paper_formula():
    pe = sinusoidal_encoding(50, 16)
    assert pe.shape == (50, 16) and pe.dtype == torch.float32
    for pos in [0, 1, 17, 49]:
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_every_frequency_pair_has_unit_norm():
    pe = sinusoidal_encoding(100, 32).double()
    pair_norms = pe[:, 0::2] ** 2 + pe[:, 1::2] ** 2
    torch.testing.assert_close(pair_norms, torch.ones_like(pair_norms), atol=1e-6, rtol=0)


@pytest.mark.parametrize("offset", [1, 5, 100, -3])
def test_shift_matrix_maps_pe_p_to_pe_p_plus_k_for_every_p(offset):
    dim = 32
    pe = sinusoidal_encoding(300, dim).double()
    shift = sinusoidal_shift_matrix(offset, dim)
    start, stop = max(0, -offset), 300 - max(0, offset)
    torch.testing.assert_close(pe[start:stop] @ shift.T, pe[start + offset : stop + offset], atol=1e-5, rtol=0)
    # M_k is orthogonal (a rotation per pair).
    torch.testing.assert_close(shift @ shift.T, torch.eye(dim, dtype=torch.float64))


def test_dot_product_depends_only_on_the_offset():
    pe = sinusoidal_encoding(400, 64).double()
    gram = pe @ pe.T
    for offset in [1, 10, 50]:
        diagonal = torch.diagonal(gram, offset)
        torch.testing.assert_close(diagonal, diagonal[0].expand_as(diagonal), atol=1e-4, rtol=0)
    assert gram[0, 1] > gram[0, 50]


def test_learned_embedding_returns_rows_and_refuses_positions_past_its_table():
    torch.manual_seed(0)
    table = LearnedPositionalEmbedding(16, 8)
    assert sum(p.numel() for p in table.parameters()) == 16 * 8
    torch.testing.assert_close(table(4), table.table[:4])
    torch.testing.assert_close(table(torch.tensor([[15, 0]])), table.table[[15, 0]][None])
    with pytest.raises(ValueError, match="cannot extrapolate"):
        table(17)
    with pytest.raises(ValueError, match="cannot extrapolate"):
        table(torch.tensor([3, 16]))
    with pytest.raises(ValueError, match="integers"):
        table(torch.tensor([1.0]))


def test_learned_embedding_starts_at_gpt2s_released_std_unless_told_otherwise():
    # openai/gpt-2 src/model.py draws wpe with stddev 0.01 (0.02 is the token table wte).
    torch.manual_seed(0)
    assert abs(LearnedPositionalEmbedding(1024, 768).table.std().item() - 0.01) < 1e-4
    assert abs(LearnedPositionalEmbedding(1024, 768, init_std=0.02).table.std().item() - 0.02) < 2e-4


def test_reference_attention_matches_torch_sdpa():
    generator = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 3, 9, 16, generator=generator, dtype=torch.float64)
    bias = torch.randn(3, 9, 9, generator=generator, dtype=torch.float64)
    for causal in [False, True]:
        mask = bias.masked_fill(~causal_mask(9, 9), float("-inf")) if causal else bias
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        torch.testing.assert_close(reference_attention(q, k, v, bias=bias, causal=causal), expected)


def test_causal_mask_aligns_queries_to_the_end_of_the_keys():
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True, True, True, True]]
    with pytest.raises(ValueError, match="query_length <= key_length"):
        causal_mask(5, 4)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: sinusoidal_encoding(10, 7), "even"),
        (lambda: sinusoidal_encoding(0, 8), "num_positions"),
        (lambda: LearnedPositionalEmbedding(0, 8), "max_positions"),
        (lambda: LearnedPositionalEmbedding(4, 8, init_std=0.0), "init_std"),
        (lambda: reference_attention(torch.zeros(2, 4), torch.zeros(2, 5), torch.zeros(2, 5)), "last dim"),
        (lambda: reference_attention(torch.zeros(2, 4), torch.zeros(3, 4), torch.zeros(2, 4)), "number of keys"),
    ],
)
def test_bad_arguments_raise_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
