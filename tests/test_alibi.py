"""ALiBi slopes for 1-64 heads, the bias matrix, and NTK-ALiBi."""

import math

import pytest
import torch

from solutions import alibi_bias, alibi_slopes, ntk_alibi_slopes, reference_attention


def paper_slopes(num_heads):
    """The ALiBi authors' recursive ``get_slopes``, transliterated as an independent oracle."""

    def power_of_two(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return power_of_two(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_two(closest) + paper_slopes(2 * closest)[0::2][: num_heads - closest]


@pytest.mark.parametrize("num_heads", range(1, 65))
def test_slopes_match_the_paper_for_1_to_64_heads(num_heads):
    slopes = alibi_slopes(num_heads)
    assert slopes.shape == (num_heads,) and slopes.dtype == torch.float32
    torch.testing.assert_close(slopes, torch.tensor(paper_slopes(num_heads), dtype=torch.float32))
    assert len(set(slopes.tolist())) == num_heads, "every head gets its own slope"
    assert bool(((slopes > 0) & (slopes < 1)).all())


def test_slopes_for_eight_heads_are_one_half_to_one_over_256():
    assert alibi_slopes(8).tolist() == [1 / 2**k for k in range(1, 9)]


def test_non_power_of_two_slopes_interleave_the_next_power_of_two():
    # 12 heads: the 8-head slopes, then 16-head slopes 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
    torch.testing.assert_close(alibi_slopes(12)[8:], torch.tensor([2**-0.5, 2**-1.5, 2**-2.5, 2**-3.5]))


def test_causal_bias_is_minus_slope_times_distance_and_masks_the_future():
    slopes = alibi_slopes(4)
    bias = alibi_bias(slopes, 5)
    assert bias.shape == (4, 5, 5)
    for h in range(4):
        for i in range(5):
            for j in range(5):
                expected = -float(slopes[h]) * (i - j) if j <= i else float("-inf")
                assert bias[h, i, j].item() == pytest.approx(expected)


def test_bidirectional_bias_is_symmetric():
    bias = alibi_bias(alibi_slopes(3), 6, causal=False)
    torch.testing.assert_close(bias, bias.transpose(-1, -2))
    assert bool((bias <= 0).all())


def test_decode_rows_equal_the_last_rows_of_the_full_bias():
    slopes = alibi_slopes(6)
    torch.testing.assert_close(alibi_bias(slopes, 2, 9), alibi_bias(slopes, 9)[:, -2:, :])


def test_alibi_attention_is_shift_invariant():
    # The bias depends only on i - j, so attention over a window does not depend on where the window starts.
    generator = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 7, 8, generator=generator, dtype=torch.float64)
    bias = alibi_bias(alibi_slopes(2).double(), 7)
    out = reference_attention(q, k, v, bias=bias)
    shifted = reference_attention(q, k, v, bias=alibi_bias(alibi_slopes(2).double(), 7, 7))
    torch.testing.assert_close(out, shifted)
    # A constant per-row offset (like BLOOM's slope * key_position) leaves the softmax unchanged.
    offset_bias = bias + torch.arange(7, dtype=torch.float64)[:, None] * alibi_slopes(2).double()[:, None, None]
    torch.testing.assert_close(reference_attention(q, k, v, bias=offset_bias), out)


@pytest.mark.parametrize("num_heads", [1, 2, 8, 12, 16])
def test_ntk_alibi_keeps_the_first_head_and_divides_the_last_by_the_factor(num_heads):
    factor = 4.0
    slopes, plain = ntk_alibi_slopes(num_heads, factor), alibi_slopes(num_heads)
    assert slopes[0] == plain[0]
    if num_heads > 1:
        torch.testing.assert_close(slopes[-1], plain[-1] / factor)
        ratios = plain.double() / slopes.double()
        torch.testing.assert_close(ratios, factor ** (torch.arange(num_heads, dtype=torch.float64) / (num_heads - 1)))
    torch.testing.assert_close(ntk_alibi_slopes(num_heads, 1.0), plain)


def test_ntk_alibi_matches_the_closed_form_for_powers_of_two():
    num_heads, factor = 8, 4.0
    h = torch.arange(1, num_heads + 1, dtype=torch.float64)
    expected = 1.0 / (2 ** (8 * h / num_heads) * factor ** ((h - 1) / (num_heads - 1)))
    torch.testing.assert_close(ntk_alibi_slopes(num_heads, factor).double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("num_heads", [2, 4, 16, 64])
def test_ntk_alibi_matches_the_repositorys_second_form(num_heads):
    # keezen/ntk_alibi README: b = a^(1/(H-1)), m_h = b / (2^(8/H) b)^h
    factor = 3.0
    b = factor ** (1 / (num_heads - 1))
    h = torch.arange(1, num_heads + 1, dtype=torch.float64)
    expected = b / (2 ** (8 / num_heads) * b) ** h
    torch.testing.assert_close(ntk_alibi_slopes(num_heads, factor).double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: alibi_slopes(0), "num_heads"),
        (lambda: ntk_alibi_slopes(8, 0.5), "factor must be >= 1"),
        (lambda: alibi_bias(torch.ones(2, 2), 4), "slopes must be 1-D"),
        (lambda: alibi_bias(alibi_slopes(2), 5, 4), "cannot exceed"),
    ],
)
def test_bad_arguments_raise_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
