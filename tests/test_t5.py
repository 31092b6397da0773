"""T5 relative-position buckets at hand-checked values, and the bias module."""

import math

import pytest
import torch

from solutions import T5RelativeBias, t5_relative_position_bucket
from solutions.t5 import relative_positions


def bucket(relative_position, **kwargs):
    return int(t5_relative_position_bucket(torch.tensor([relative_position]), **kwargs)[0])


# Hand-checked with T5's defaults (32 buckets, max_distance 128). Bidirectional: 16 buckets per direction,
# 8 exact (offsets 0..7) and 8 logarithmic over 8..128; keys after the query (positive) add 16.
# Log bucket of distance n: 8 + floor(ln(n / 8) / ln(16) * 8); e.g. n = 12: 8 + floor(1.46) = 9.
@pytest.mark.parametrize(
    "relative_position, expected",
    [
        (0, 0), (-1, 1), (-7, 7), (-8, 8), (-11, 8), (-12, 9), (-16, 10), (-32, 12), (-64, 14),
        (-90, 14), (-91, 15), (-127, 15), (-128, 15), (-5000, 15),
        (1, 17), (7, 23), (8, 24), (16, 26), (128, 31), (5000, 31),
    ],
)
def test_bidirectional_buckets_at_hand_checked_values(relative_position, expected):
    assert bucket(relative_position) == expected


# Causal: 32 buckets for the past only, 16 exact (0..15) and 16 log over 16..128; the future maps to 0.
@pytest.mark.parametrize(
    "relative_position, expected",
    [(0, 0), (5, 0), (1000, 0), (-1, 1), (-15, 15), (-16, 16), (-32, 21), (-64, 26), (-127, 31), (-128, 31), (-10**6, 31)],
)
def test_causal_buckets_at_hand_checked_values(relative_position, expected):
    assert bucket(relative_position, bidirectional=False) == expected


def test_log_bucket_formula_on_every_distance():
    distances = torch.arange(8, 200)
    buckets = t5_relative_position_bucket(-distances)
    expected = [min(8 + int(math.log(n / 8) / math.log(16) * 8), 15) for n in distances.tolist()]
    assert buckets.tolist() == expected


def test_buckets_are_monotone_and_cover_every_index():
    offsets = torch.arange(-300, 301)
    buckets = t5_relative_position_bucket(offsets)
    # Bucket 16 (the positive side's offset 0) is never used: offset 0 counts as "not after the query".
    assert set(buckets.tolist()) == set(range(32)) - {16}
    past = t5_relative_position_bucket(-torch.arange(0, 300))
    assert bool((past.diff() >= 0).all())


def test_module_bias_depends_only_on_the_offset_and_matches_the_table():
    torch.manual_seed(0)
    module = T5RelativeBias(num_heads=4)
    bias = module(10)
    assert bias.shape == (4, 10, 10)
    buckets = t5_relative_position_bucket(relative_positions(10, 10))
    torch.testing.assert_close(bias, module.bias_table.weight[buckets].permute(2, 0, 1))
    # Toeplitz: constant along every diagonal.
    torch.testing.assert_close(bias[:, 1:, 1:], bias[:, :-1, :-1])


def test_cached_keys_get_new_biases_as_the_query_moves():
    # Why T5 breaks a simple KV cache of "key + position": the bias of key 0 changes with each new query.
    torch.manual_seed(0)
    module = T5RelativeBias(num_heads=2, bidirectional=False)
    step_biases = [module(1, key_length)[:, 0, 0] for key_length in range(1, 40)]
    assert len({tuple(b.tolist()) for b in step_biases}) > 5
    # And decoding one row at a time reproduces the full matrix.
    full = module(12)
    for n in range(12):
        torch.testing.assert_close(module(1, n + 1), full[:, n : n + 1, : n + 1])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: t5_relative_position_bucket(torch.tensor([1.5])), "integer"),
        (lambda: t5_relative_position_bucket(torch.tensor([1]), num_buckets=2), "exact"),
        (lambda: T5RelativeBias(0), "num_heads"),
        (lambda: T5RelativeBias(2)(5, 4), "cannot exceed"),
    ],
)
def test_bad_arguments_raise_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
