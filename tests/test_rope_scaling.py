"""Properties of the eight rope_scaling methods and of RotaryEmbedding."""

import math

import pytest
import torch

from solutions import (
    ROPE_SCALING_METHODS,
    RotaryEmbedding,
    apply_rope,
    rope_cos_sin,
    rope_inv_freq,
    rope_scaling,
    yarn_attention_factor,
    yarn_softmax_scale,
)
from solutions.rope_scaling import correction_dim, ntk_aware_base, ntk_by_parts_ramp

DIM, BASE, TRAIN_LENGTH = 64, 10000.0, 512


def method_params(method, dim=DIM):
    if method == "longrope":
        return {"long_factor": [1.0] * (dim // 2), "short_factor": [1.0] * (dim // 2)}
    return {}


def test_the_registry_holds_exactly_the_eight_design_methods():
    assert set(ROPE_SCALING_METHODS) == {
        "default", "linear", "ntk", "ntk_by_parts", "dynamic", "yarn", "llama3", "longrope"
    }


@pytest.mark.parametrize("method", sorted(ROPE_SCALING_METHODS))
@pytest.mark.parametrize("seq_len", [None, 100, TRAIN_LENGTH])
def test_every_method_at_factor_one_is_plain_rope(method, seq_len):
    if method == "dynamic" and seq_len is None:
        with pytest.raises(ValueError, match="needs seq_len"):
            rope_scaling(method, DIM, BASE, 1.0, TRAIN_LENGTH, seq_len)
        return
    inv_freq, attention_factor = rope_scaling(method, DIM, BASE, 1.0, TRAIN_LENGTH, seq_len, **method_params(method))
    torch.testing.assert_close(inv_freq, rope_inv_freq(DIM, BASE), rtol=1e-6, atol=0)
    assert attention_factor == 1.0
    assert inv_freq.dtype == torch.float32 and inv_freq.shape == (DIM // 2,)


@pytest.mark.parametrize("method", sorted(set(ROPE_SCALING_METHODS) - {"default"}))
def test_every_method_changes_something_at_factor_four(method):
    params = method_params(method)
    if method == "longrope":
        params["long_factor"] = torch.linspace(1, 4, DIM // 2).tolist()
    inv_freq, attention_factor = rope_scaling(method, DIM, BASE, 4.0, TRAIN_LENGTH, 4 * TRAIN_LENGTH, **params)
    plain = rope_inv_freq(DIM, BASE)
    assert not torch.allclose(inv_freq, plain) or attention_factor != 1.0
    # No method ever speeds a frequency up: extension only slows rotations down (or keeps them).
    assert bool((inv_freq <= plain * (1 + 1e-6)).all())


@pytest.mark.parametrize("factor", [2.0, 4.0, 8.0])
def test_pi_at_stretched_positions_equals_plain_rope(factor):
    # Chen et al. 2023 eq. 4: PI at position m * L'/L sees exactly the angles plain RoPE had at m.
    inv_freq, _ = rope_scaling("linear", DIM, BASE, factor, TRAIN_LENGTH)
    positions = torch.arange(0, TRAIN_LENGTH, 7)
    cos_pi, sin_pi = rope_cos_sin(inv_freq.double(), positions.double() * factor)
    cos, sin = rope_cos_sin(rope_inv_freq(DIM, BASE).double(), positions)
    torch.testing.assert_close(cos_pi, cos, atol=1e-9, rtol=0)
    torch.testing.assert_close(sin_pi, sin, atol=1e-9, rtol=0)


@pytest.mark.parametrize("factor", [2.0, 16.0])
def test_ntk_aware_keeps_the_highest_frequency_and_divides_the_lowest_by_the_factor(factor):
    inv_freq, _ = rope_scaling("ntk", DIM, BASE, factor, TRAIN_LENGTH)
    plain = rope_inv_freq(DIM, BASE)
    assert inv_freq[0] == plain[0] == 1.0
    torch.testing.assert_close(inv_freq[-1], plain[-1] / factor, rtol=1e-5, atol=0)
    ratio = plain / inv_freq  # grows geometrically: factor^(2i/(dim-2))
    expected = factor ** (torch.arange(DIM // 2, dtype=torch.float64) * 2 / (DIM - 2))
    torch.testing.assert_close(ratio.double(), expected, rtol=1e-5, atol=0)
    assert ntk_aware_base(DIM, BASE, factor) == pytest.approx(BASE * factor ** (DIM / (DIM - 2)))


@pytest.mark.parametrize("method", ["ntk_by_parts", "yarn"])
@pytest.mark.parametrize("ramp", ["released", "paper"])
def test_ntk_by_parts_keeps_high_frequencies_and_divides_low_ones(method, ramp):
    factor = 8.0
    inv_freq, _ = rope_scaling(method, DIM, BASE, factor, TRAIN_LENGTH, ramp=ramp)
    plain = rope_inv_freq(DIM, BASE)
    rotations = TRAIN_LENGTH * plain / (2 * math.pi)  # full turns over the training length
    high, low = rotations > 32, rotations < 1
    assert high.sum() >= 3 and low.sum() >= 3
    torch.testing.assert_close(inv_freq[high], plain[high], rtol=1e-6, atol=0)
    torch.testing.assert_close(inv_freq[low], plain[low] / factor, rtol=1e-6, atol=0)
    middle = ~high & ~low
    assert bool((inv_freq[middle] < plain[middle]).all() and (inv_freq[middle] > plain[middle] / factor).all())
    assert bool((inv_freq[1:] < inv_freq[:-1]).all()), "frequencies stay strictly ordered"


def test_released_and_paper_ramps_differ_in_between():
    released = ntk_by_parts_ramp(DIM, BASE, TRAIN_LENGTH, ramp="released")
    paper = ntk_by_parts_ramp(DIM, BASE, TRAIN_LENGTH, ramp="paper")
    assert (released - paper).abs().max() > 0.1
    # The released ramp is linear in the index between the outward-rounded correction dims.
    low = math.floor(correction_dim(32, DIM, BASE, TRAIN_LENGTH))
    high = math.ceil(correction_dim(1, DIM, BASE, TRAIN_LENGTH))
    assert released[low] == 1.0 and released[high] == 0.0
    steps = released[low : high + 1].diff()
    torch.testing.assert_close(steps, torch.full_like(steps, -1.0 / (high - low)))


def test_correction_dim_is_where_the_rotation_count_is_met():
    for rotations in [1.0, 32.0]:
        d = correction_dim(rotations, DIM, BASE, TRAIN_LENGTH)
        wavelength = 2 * math.pi * BASE ** (2 * d / DIM)
        assert TRAIN_LENGTH / wavelength == pytest.approx(rotations)


@pytest.mark.parametrize("length_rule", ["released", "paper"])
def test_dynamic_ntk_is_plain_rope_up_to_the_training_length_then_grows(length_rule):
    plain = rope_inv_freq(DIM, BASE)
    for seq_len in [1, 100, TRAIN_LENGTH]:
        inv_freq, _ = rope_scaling("dynamic", DIM, BASE, 4.0, TRAIN_LENGTH, seq_len, length_rule=length_rule)
        torch.testing.assert_close(inv_freq, plain, atol=0, rtol=0)
    previous = plain
    for seq_len in [TRAIN_LENGTH + 1, 2 * TRAIN_LENGTH, 8 * TRAIN_LENGTH]:
        inv_freq, _ = rope_scaling("dynamic", DIM, BASE, 4.0, TRAIN_LENGTH, seq_len, length_rule=length_rule)
        assert inv_freq[-1] < previous[-1]
        previous = inv_freq
    # The paper rule at l = 2L is NTK-aware with s = 2; the released one with s * 2 - (s - 1) = 5.
    inv_freq, _ = rope_scaling("dynamic", DIM, BASE, 4.0, TRAIN_LENGTH, 2 * TRAIN_LENGTH, length_rule=length_rule)
    ntk_factor = 2.0 if length_rule == "paper" else 5.0
    torch.testing.assert_close(inv_freq, rope_scaling("ntk", DIM, BASE, ntk_factor, TRAIN_LENGTH)[0])


def test_rotary_embedding_dynamic_grows_and_shrinks_back():
    rotary = RotaryEmbedding(DIM, BASE, "dynamic", factor=2.0, original_max_position_embeddings=TRAIN_LENGTH)
    plain_cos, plain_sin = rope_cos_sin(rope_inv_freq(DIM, BASE), 100)
    long_cos, _ = rotary(4 * TRAIN_LENGTH)
    expected_inv_freq, _ = rope_scaling("dynamic", DIM, BASE, 2.0, TRAIN_LENGTH, 4 * TRAIN_LENGTH)
    torch.testing.assert_close(long_cos, rope_cos_sin(expected_inv_freq, 4 * TRAIN_LENGTH)[0])
    assert not torch.allclose(long_cos[:100], plain_cos)
    # A later short sequence must get plain RoPE again, not the stretched base of the long one.
    short_cos, short_sin = rotary(100)
    torch.testing.assert_close(short_cos, plain_cos, atol=0, rtol=0)
    torch.testing.assert_close(short_sin, plain_sin, atol=0, rtol=0)
    # And a medium sequence gets its own base, whatever came before.
    rotary(8 * TRAIN_LENGTH)
    medium_cos, _ = rotary(torch.arange(2 * TRAIN_LENGTH))
    fresh = RotaryEmbedding(DIM, BASE, "dynamic", factor=2.0, original_max_position_embeddings=TRAIN_LENGTH)
    torch.testing.assert_close(medium_cos, fresh(2 * TRAIN_LENGTH)[0], atol=0, rtol=0)


def test_rotary_embedding_longrope_switches_between_short_and_long_factors():
    short, long = [1.0] * (DIM // 2), torch.linspace(1, 8, DIM // 2).tolist()
    rotary = RotaryEmbedding(
        DIM, BASE, "longrope", factor=8.0, original_max_position_embeddings=TRAIN_LENGTH, long_factor=long, short_factor=short
    )
    attention = math.sqrt(1 + math.log(8.0) / math.log(TRAIN_LENGTH))
    cos_short, _ = rotary(10)
    torch.testing.assert_close(cos_short, rope_cos_sin(rope_inv_freq(DIM, BASE), 10, attention)[0])
    cos_long, _ = rotary(2 * TRAIN_LENGTH)
    expected = rope_inv_freq(DIM, BASE) / torch.tensor(long)
    torch.testing.assert_close(cos_long, rope_cos_sin(expected, 2 * TRAIN_LENGTH, attention)[0])


def test_yarn_attention_factor_and_its_effect_on_the_logits():
    assert yarn_attention_factor(1.0) == 1.0 and yarn_attention_factor(0.5) == 1.0
    assert yarn_attention_factor(16.0) == pytest.approx(0.1 * math.log(16.0) + 1)
    inv_freq, attention_factor = rope_scaling("yarn", DIM, BASE, 16.0, TRAIN_LENGTH)
    assert attention_factor == pytest.approx(0.1 * math.log(16.0) + 1)
    # The factor multiplies cos AND sin, so a rotated q.k logit scales by its square.
    generator = torch.Generator().manual_seed(1)
    q, k = torch.randn(2, 5, DIM, generator=generator, dtype=torch.float64)
    cos1, sin1 = rope_cos_sin(inv_freq.double(), 5)
    cos_t, sin_t = rope_cos_sin(inv_freq.double(), 5, attention_factor)
    scaled = (apply_rope(q, cos_t, sin_t) * apply_rope(k, cos_t, sin_t)).sum(-1)
    unscaled = (apply_rope(q, cos1, sin1) * apply_rope(k, cos1, sin1)).sum(-1)
    torch.testing.assert_close(scaled, unscaled * attention_factor**2)


def test_yarn_deepseek_mscale_moves_the_temperature_into_the_softmax_scale():
    # DeepSeek-V3's config: factor 40, mscale = mscale_all_dim = 1.0, qk_head_dim = 128 + 64.
    _, attention_factor = rope_scaling("yarn", DIM, BASE, 40.0, 4096, mscale=1.0, mscale_all_dim=1.0)
    assert attention_factor == 1.0
    _, attention_factor = rope_scaling("yarn", DIM, BASE, 40.0, 4096, mscale=1.0, mscale_all_dim=0.707)
    assert attention_factor == pytest.approx((0.1 * math.log(40) + 1) / (0.0707 * math.log(40) + 1))
    scale = yarn_softmax_scale(192, 40.0, mscale_all_dim=1.0)
    assert scale == pytest.approx(192**-0.5 * (0.1 * math.log(40) + 1) ** 2)
    assert yarn_softmax_scale(192, 40.0) == pytest.approx(192**-0.5)
    _, explicit = rope_scaling("yarn", DIM, BASE, 40.0, 4096, attention_factor=1.25)
    assert explicit == 1.25


def llama3_reference(inv_freq, factor, low_freq_factor, high_freq_factor, old_context_len):
    """A transliteration of Meta's released ``apply_scaling`` (three wavelength regimes), as the oracle."""
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    out = []
    for freq in inv_freq.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            out.append(freq)
        elif wavelen > low_freq_wavelen:
            out.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            out.append((1 - smooth) * freq / factor + smooth * freq)
    return torch.tensor(out)


def test_llama3_matches_the_released_three_regime_rule():
    # Llama 3.1: head_dim 128, theta 5e5, factor 8, low 1, high 4, original length 8192.
    inv_freq, attention_factor = rope_scaling(
        "llama3", 128, 500000.0, 8.0, 8192, low_freq_factor=1.0, high_freq_factor=4.0
    )
    expected = llama3_reference(rope_inv_freq(128, 500000.0), 8.0, 1.0, 4.0, 8192)
    torch.testing.assert_close(inv_freq, expected, rtol=1e-6, atol=0)
    assert attention_factor == 1.0
    wavelength = 2 * math.pi / rope_inv_freq(128, 500000.0)
    assert bool((inv_freq[wavelength < 2048] == rope_inv_freq(128, 500000.0)[wavelength < 2048]).all())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: rope_scaling("nope", DIM, BASE, 2.0, TRAIN_LENGTH), "unknown rope scaling method 'nope'"),
        (lambda: rope_scaling("linear", DIM, BASE, 0.5, TRAIN_LENGTH), "factor must be >= 1"),
        (lambda: rope_scaling("linear", 63, BASE, 2.0, TRAIN_LENGTH), "dim must be a positive even"),
        (lambda: rope_scaling("yarn", DIM, BASE, 2.0, TRAIN_LENGTH, beta_fats=32), "does not take beta_fats"),
        (lambda: rope_scaling("default", DIM, BASE, 2.0, TRAIN_LENGTH), "takes no factor"),
        (lambda: rope_scaling("dynamic", DIM, BASE, 2.0, TRAIN_LENGTH), "needs seq_len"),
        (lambda: rope_scaling("longrope", DIM, BASE, 2.0, TRAIN_LENGTH), "long_factor and short_factor"),
        (lambda: rope_scaling("longrope", DIM, BASE, 2.0, TRAIN_LENGTH, long_factor=[1.0], short_factor=[1.0]), "entries"),
        (lambda: rope_scaling("linear", DIM, BASE, 2.0, 0), "original_max_position_embeddings"),
        (lambda: rope_scaling("ntk_by_parts", DIM, BASE, 2.0, TRAIN_LENGTH, ramp="cubic"), "ramp"),
        (lambda: rope_scaling("ntk_by_parts", DIM, BASE, 2.0, TRAIN_LENGTH, beta_fast=1, beta_slow=32), "beta_slow"),
        (lambda: rope_scaling("llama3", DIM, BASE, 2.0, TRAIN_LENGTH, low_freq_factor=4, high_freq_factor=1), "low_freq"),
    ],
)
def test_bad_arguments_raise_value_errors_that_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()
