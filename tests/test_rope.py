"""Properties of RoPE: the relative property, norm preservation, layouts, partial rotary, bad input."""

import math

import pytest
import torch

from solutions import (
    apply_rope,
    permute_qk_weight_to_half_split,
    permute_qk_weight_to_interleaved,
    rope_cos_sin,
    rope_inv_freq,
)
from solutions.rope import interleaved_to_half_split_permutation, rotate_pairs

GEN = torch.Generator().manual_seed(0)


def randn(*shape):
    return torch.randn(*shape, generator=GEN, dtype=torch.float64)


def cos_sin64(dim, positions, base=10000.0):
    return rope_cos_sin(rope_inv_freq(dim, base).double(), positions)


def test_inv_freq_matches_the_formula_and_is_float32():
    inv_freq = rope_inv_freq(8, base=10000.0)
    assert inv_freq.dtype == torch.float32
    expected = torch.tensor([1.0, 10000 ** -0.25, 10000 ** -0.5, 10000 ** -0.75])
    torch.testing.assert_close(inv_freq, expected)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dim", [2, 8, 64])
def test_scores_depend_only_on_the_offset(interleaved, dim):
    # RoFormer eq. 16: <R(m) q, R(n) k> = <q, R(n - m) k>; test many (m, n) pairs sharing each offset.
    q, k = randn(dim), randn(dim)
    positions = torch.arange(0, 3000, 37)
    cos, sin = cos_sin64(dim, positions)
    rotated_q = apply_rope(q.expand(len(positions), dim), cos, sin, interleaved)
    rotated_k = apply_rope(k.expand(len(positions), dim), cos, sin, interleaved)
    scores = rotated_q @ rotated_k.T  # scores[m, n] for positions m, n
    offsets = positions[None, :] - positions[:, None]
    for offset in [0, 37, -37, 37 * 20, -37 * 50]:
        on_diagonal = scores[offsets == offset]
        assert len(on_diagonal) > 10
        cos_offset, sin_offset = cos_sin64(dim, torch.tensor([offset]))
        expected = q @ apply_rope(k[None], cos_offset, sin_offset, interleaved)[0]
        torch.testing.assert_close(on_diagonal, expected.expand_as(on_diagonal), atol=1e-9, rtol=1e-9)


def test_scores_vary_with_the_offset():
    # The property above would also hold for an encoding that did nothing; RoPE must actually rotate.
    q = randn(16)
    cos, sin = cos_sin64(16, torch.arange(50))
    rotated = apply_rope(q.expand(50, 16), cos, sin)
    scores = rotated[0] @ rotated.T
    assert scores.std() > 0.1 * q.norm() ** 2 / 16


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_preserves_norms(interleaved):
    x = randn(3, 5, 40, 32)
    cos, sin = cos_sin64(32, 40)
    rotated = apply_rope(x, cos, sin, interleaved)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-12, rtol=1e-12)
    assert not torch.allclose(rotated[..., 1:, :], x[..., 1:, :])


def test_position_zero_is_the_identity_and_rotation_is_inverted_by_negative_angles():
    x = randn(7, 16)
    cos, sin = cos_sin64(16, torch.zeros(7, dtype=torch.long))
    torch.testing.assert_close(apply_rope(x, cos, sin), x)
    cos, sin = cos_sin64(16, torch.arange(7))
    torch.testing.assert_close(apply_rope(apply_rope(x, cos, sin), cos, -sin), x)


def test_half_split_pairs_i_with_i_plus_half_and_interleaved_pairs_neighbours():
    # One pair at angle 90 degrees: (a, b) -> (-b, a).
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    cos = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    sin = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(apply_rope(x, cos, sin, interleaved=False), torch.tensor([[-3.0, 2.0, 1.0, 4.0]], dtype=torch.float64))
    torch.testing.assert_close(apply_rope(x, cos, sin, interleaved=True), torch.tensor([[-2.0, 1.0, 3.0, 4.0]], dtype=torch.float64))


@pytest.mark.parametrize("rotary_dim", [None, 8])
def test_layouts_are_equivalent_under_the_weight_permutation(rotary_dim):
    num_heads, head_dim, hidden, seq = 3, 16, 24, 11
    rotary = head_dim if rotary_dim is None else rotary_dim
    w_q, w_k, h = randn(num_heads * head_dim, hidden), randn(num_heads * head_dim, hidden), randn(seq, hidden)
    cos, sin = cos_sin64(rotary, seq)

    def scores(w_q, w_k, interleaved):
        q = (h @ w_q.T).view(seq, num_heads, head_dim).transpose(0, 1)
        k = (h @ w_k.T).view(seq, num_heads, head_dim).transpose(0, 1)
        return apply_rope(q, cos, sin, interleaved) @ apply_rope(k, cos, sin, interleaved).transpose(-1, -2)

    interleaved_scores = scores(w_q, w_k, True)
    half_split_scores = scores(
        permute_qk_weight_to_half_split(w_q, num_heads, rotary_dim),
        permute_qk_weight_to_half_split(w_k, num_heads, rotary_dim),
        False,
    )
    torch.testing.assert_close(half_split_scores, interleaved_scores, atol=1e-10, rtol=1e-10)
    # The permutation is needed: the same weights in the other layout give different scores.
    assert not torch.allclose(scores(w_q, w_k, False), interleaved_scores)
    # The two conversions are inverses.
    round_trip = permute_qk_weight_to_interleaved(permute_qk_weight_to_half_split(w_q, num_heads, rotary_dim), num_heads, rotary_dim)
    torch.testing.assert_close(round_trip, w_q)


def test_permutation_of_the_rotated_vector():
    perm = interleaved_to_half_split_permutation(8, head_dim=10)
    assert perm.tolist() == [0, 2, 4, 6, 1, 3, 5, 7, 8, 9]
    x = randn(5, 10)
    cos, sin = cos_sin64(8, 5)
    torch.testing.assert_close(apply_rope(x[:, perm], cos, sin, False), apply_rope(x, cos, sin, True)[:, perm])


@pytest.mark.parametrize("interleaved", [False, True])
def test_partial_rotary_rotates_only_the_first_rotary_dim(interleaved):
    x = randn(2, 9, 24)
    cos, sin = cos_sin64(8, 9)
    out = apply_rope(x, cos, sin, interleaved)
    torch.testing.assert_close(out[..., 8:], x[..., 8:], atol=0, rtol=0)
    torch.testing.assert_close(out[..., :8], apply_rope(x[..., :8], cos, sin, interleaved))
    assert not torch.allclose(out[..., 1:, :8], x[..., 1:, :8])


def test_low_precision_inputs_are_rotated_in_float32_and_returned_in_their_dtype():
    x = randn(4, 64, 32).to(torch.bfloat16)
    cos, sin = rope_cos_sin(rope_inv_freq(32), 64)
    out = apply_rope(x, cos, sin)
    assert out.dtype == torch.bfloat16
    # Rotating in bf16 itself would round every product; rotating in float32 and rounding once keeps each
    # output within one bf16 rounding (2^-8 relative) of the exact float64 rotation.
    exact = apply_rope(x.double(), cos.double(), sin.double())
    torch.testing.assert_close(out.double(), exact, rtol=2**-8, atol=1e-6)
    bf16_arithmetic = rotate_pairs(x, cos.to(torch.bfloat16), sin.to(torch.bfloat16), interleaved=False)
    assert (bf16_arithmetic.double() - exact).abs().max() > (out.double() - exact).abs().max()


def test_cos_sin_shapes_and_attention_factor():
    inv_freq = rope_inv_freq(16)
    cos, sin = rope_cos_sin(inv_freq, torch.arange(12).view(3, 4), attention_factor=1.5)
    assert cos.shape == sin.shape == (3, 4, 8)
    torch.testing.assert_close(cos[0, 1, 0], torch.tensor(1.5 * math.cos(1.0)))
    torch.testing.assert_close(cos**2 + sin**2, torch.full_like(cos, 2.25))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: rope_inv_freq(7), "even"),
        (lambda: rope_inv_freq(0), "even"),
        (lambda: rope_inv_freq(8, base=1.0), "base"),
        (lambda: apply_rope(torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(4, 8)), "rotary_dim"),
        (lambda: apply_rope(torch.zeros(4, 8), torch.zeros(5, 4), torch.zeros(5, 4)), "broadcast"),
        (lambda: apply_rope(torch.zeros(4, 8), torch.zeros(4, 4), torch.zeros(4, 3)), "same shape"),
        (lambda: permute_qk_weight_to_half_split(torch.zeros(10, 4), 3), "num_heads"),
        (lambda: permute_qk_weight_to_half_split(torch.zeros(12, 4), 2, rotary_dim=8), "head_dim"),
        (lambda: permute_qk_weight_to_half_split(torch.zeros(12, 4), 0), "num_heads"),
    ],
)
def test_bad_arguments_raise_value_errors_that_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()
