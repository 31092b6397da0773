"""The run-time-growing RoPE cos/sin cache: growth, exactness, per-dtype tables, and re-rotating cached keys."""

import math

import pytest
import torch

from solutions import RopeCache, apply_rope, reference_attention, rerotate_keys, rope_cos_sin, rope_scaling


def exact_cos_sin(inv_freq, positions):
    # The angles from Python floats and integers, independently of rope_cos_sin.
    rows = [[math.cos(p * float(f)) for f in inv_freq] for p in positions]
    cols = [[math.sin(p * float(f)) for f in inv_freq] for p in positions]
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(cols, dtype=torch.float64)


def test_tables_are_exact_and_cast_once_at_the_end():
    cache = RopeCache(dim=8, original_max_position_embeddings=16)
    positions = torch.tensor([0, 1, 5, 70000, 123457])
    expected_cos, expected_sin = exact_cos_sin(cache.inv_freq, positions.tolist())
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        cos, sin = cache.cos_sin(positions, dtype=dtype)
        assert cos.dtype == sin.dtype == dtype
        if dtype in (torch.float16, torch.bfloat16):
            # a correctly rounded cast of the exact value, bit for bit
            assert torch.equal(cos, expected_cos.to(dtype)), dtype
            assert torch.equal(sin, expected_sin.to(dtype)), dtype
        else:
            # within one float32 ulp of [0.5, 1) (float32 angles are off by ~1e-2 rad at 123457)
            assert (cos.double() - expected_cos).abs().max() <= 2**-24, dtype
            assert (sin.double() - expected_sin).abs().max() <= 2**-24, dtype


def test_growth_is_geometric():
    cache = RopeCache(dim=8, original_max_position_embeddings=16)
    for step in range(1000):  # one decode step at a time
        cache.cos_sin(torch.tensor([step]))
    # capacities 16, 32, ..., 1024: one build per capacity
    assert cache.capacity == 1024
    assert cache.builds == 7
    assert cache.builds <= math.ceil(math.log2(1000 / 16)) + 1


def test_a_jump_past_double_grows_to_the_request():
    cache = RopeCache(dim=8, original_max_position_embeddings=16)
    cache.cos_sin(torch.tensor([999]))
    assert cache.capacity == 1000


def test_one_table_per_dtype_and_device_built_once():
    cache = RopeCache(dim=8, original_max_position_embeddings=64)
    for _ in range(5):
        cache.cos_sin(10, dtype=torch.float16)
        cache.cos_sin(10, dtype=torch.float32)
    assert cache.builds == 2
    half, _ = cache.cos_sin(10, dtype=torch.float16)
    full, _ = cache.cos_sin(10, dtype=torch.float32)
    assert half.dtype == torch.float16 and full.dtype == torch.float32


def test_yarn_tables_match_the_formula():
    dim, base, s, train = 16, 500000.0, 4.0, 32
    cache = RopeCache(dim=dim, base=base, method="yarn", factor=s, original_max_position_embeddings=train)
    cos, sin = cache.cos_sin(torch.arange(100), dtype=torch.float64)
    # YaRN's attention factor sqrt(1/t) = 0.1 ln s + 1 (Peng et al. 2024, eq. 22), folded into cos: at position 0
    # cos = 1, so the table holds the factor itself.
    attention_factor = 0.1 * math.log(s) + 1.0
    assert math.isclose(cos[0, 0].item(), attention_factor, rel_tol=1e-12)
    # The released ramp's ends in dimension index solve L / lambda_d = beta with lambda_d = 2 pi base^(2d/dim)
    # (YaRN eq. 13 and 16), for beta_fast = 32 and beta_slow = 1: pairs below `low` keep theta_i, pairs from
    # `high` on are divided by s. Here low = 0 and high = 1, so pair 0 keeps theta_0 = 1 and the rest are divided.
    def correction_dim(rotations):
        return dim * math.log(train / (rotations * 2 * math.pi)) / (2 * math.log(base))
    low, high = max(math.floor(correction_dim(32.0)), 0), math.ceil(correction_dim(1.0))
    assert (low, high) == (0, 1)
    formula = [base ** (-2 * i / dim) / (1.0 if i < high else s) for i in range(dim // 2)]
    torch.testing.assert_close(cache.inv_freq.double(), torch.tensor(formula, dtype=torch.float64), rtol=1e-7, atol=0)
    expected_cos, expected_sin = exact_cos_sin(formula, range(100))
    # float32 frequencies against float64 ones: angles up to 99 * 4.8e-2 apart by ~2e-7 at most
    torch.testing.assert_close(cos, attention_factor * expected_cos, rtol=0, atol=1e-6)
    torch.testing.assert_close(sin, attention_factor * expected_sin, rtol=0, atol=1e-6)
    # and exact on the cache's own float32 frequencies, with the angle formed in Python floats
    own_cos, own_sin = exact_cos_sin(cache.inv_freq, range(100))
    torch.testing.assert_close(cos, attention_factor * own_cos, rtol=0, atol=1e-15)
    torch.testing.assert_close(sin, attention_factor * own_sin, rtol=0, atol=1e-15)
    assert not cache.update_length(10_000)  # a static method never changes its frequencies


def test_dynamic_frequencies_change_past_the_training_length_only():
    dim, base, s, train = 16, 10000.0, 2.0, 32
    cache = RopeCache(dim=dim, base=base, method="dynamic", factor=s, original_max_position_embeddings=train)
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    plain = cache.inv_freq.clone()
    torch.testing.assert_close(plain.double(), base ** -exponents, rtol=1e-7, atol=0)
    cache.cos_sin(torch.arange(train))
    assert cache.frequency_version == 0 and torch.equal(cache.inv_freq, plain)
    cache.cos_sin(torch.tensor([train]))  # length 33
    assert cache.frequency_version == 1
    # Dynamic NTK as the released code writes it: base' = base * (s * l / L - (s - 1)) ^ (d / (d - 2)).
    new_base = base * (s * (train + 1) / train - (s - 1)) ** (dim / (dim - 2))
    torch.testing.assert_close(cache.inv_freq.double(), new_base ** -exponents, rtol=1e-6, atol=0)
    assert (cache.inv_freq[1:] < plain[1:]).all()  # a larger base: slower pairs


def test_rerotated_cache_matches_full_recomputation_under_dynamic_ntk():
    gen = torch.Generator().manual_seed(0)
    dim, train, total = 16, 8, 24
    q = torch.randn(total, dim, generator=gen, dtype=torch.float64)
    k = torch.randn(total, dim, generator=gen, dtype=torch.float64)
    v = torch.randn(total, dim, generator=gen, dtype=torch.float64)
    cache = RopeCache(dim=dim, method="dynamic", factor=2.0, original_max_position_embeddings=train)
    cached_keys, stale_keys = None, None
    fresh, stale = [], []
    for step in range(total):
        old_inv_freq, old_factor = cache.inv_freq, cache.attention_factor
        cos, sin = cache.cos_sin(torch.tensor([step]), dtype=torch.float64)
        if cached_keys is not None and not torch.equal(old_inv_freq, cache.inv_freq):
            cached_keys = rerotate_keys(cached_keys, torch.arange(step), old_inv_freq, cache.inv_freq,
                                        old_factor, cache.attention_factor)
        new_key = apply_rope(k[step:step + 1], cos, sin)
        cached_keys = new_key if cached_keys is None else torch.cat([cached_keys, new_key])
        stale_keys = new_key if stale_keys is None else torch.cat([stale_keys, new_key])
        query = apply_rope(q[step:step + 1], cos, sin)
        fresh.append(reference_attention(query, cached_keys, v[:step + 1]))
        stale.append(reference_attention(query, stale_keys, v[:step + 1]))
    # the reference: every position rotated with the frequencies of the final length
    inv_freq, _ = rope_scaling("dynamic", dim, 10000.0, 2.0, train, seq_len=total)
    cos, sin = rope_cos_sin(inv_freq.double(), total)
    last = reference_attention(apply_rope(q[-1:], cos[-1:], sin[-1:]), apply_rope(k, cos, sin), v)
    assert torch.allclose(fresh[-1], last, atol=1e-12)
    assert not torch.allclose(stale[-1], last, atol=1e-3)  # keys left with their old bases disagree


def test_rerotate_keys_is_exact_for_attention_factors():
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(2, 5, 8, generator=gen, dtype=torch.float64)
    positions = torch.tensor([3, 70, 900, 4000, 65000])
    old, old_factor = rope_scaling("default", 8, 10000.0, 1.0, 64)
    new, new_factor = rope_scaling("yarn", 8, 10000.0, 8.0, 64)
    old_cos, old_sin = rope_cos_sin(old.double(), positions, old_factor)
    new_cos, new_sin = rope_cos_sin(new.double(), positions, new_factor)
    moved = rerotate_keys(apply_rope(keys, old_cos, old_sin), positions, old, new, old_factor, new_factor)
    assert torch.allclose(moved, apply_rope(keys, new_cos, new_sin), atol=1e-9)
    assert not torch.allclose(apply_rope(keys, old_cos, old_sin), apply_rope(keys, new_cos, new_sin), atol=1e-3)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda c: c.cos_sin(torch.tensor([1.0, 2.0])), "integer tensor"),
        (lambda c: c.cos_sin(torch.tensor([-1, 2])), "non-negative"),
        (lambda c: c.cos_sin(4, dtype=torch.int32), "floating-point"),
        (lambda c: c.cos_sin([1, 2]), "int or an integer tensor"),
        (lambda c: c.update_length(0), "seq_len"),
        (lambda c: c.cos_sin(torch.tensor([100]), seq_len=5), "shorter than the largest requested position"),
        (lambda c: c.cos_sin(torch.tensor([True, False])), "integer tensor; got dtype torch.bool"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call(RopeCache(dim=8, original_max_position_embeddings=16))


def test_bad_construction_is_named():
    with pytest.raises(ValueError, match="even"):
        RopeCache(dim=7)
    with pytest.raises(ValueError, match="initial_capacity"):
        RopeCache(dim=8, initial_capacity=0)
    # the training length is named, not the capacity that defaults to it
    with pytest.raises(ValueError, match="original_max_position_embeddings must be a positive integer; got 0"):
        RopeCache(dim=8, original_max_position_embeddings=0)
    with pytest.raises(ValueError, match="does not take beta_fats"):
        RopeCache(dim=8, method="yarn", factor=2.0, beta_fats=32)
    with pytest.raises(ValueError, match="same length"):
        rerotate_keys(torch.zeros(2, 8), torch.arange(2), torch.ones(4), torch.ones(3))
    with pytest.raises(TypeError, match="positions must be a torch.Tensor"):
        rerotate_keys(torch.zeros(2, 8), [0, 1], torch.ones(4), torch.ones(4))
    with pytest.raises(ValueError, match="positions must be an integer tensor.*share one angle"):
        rerotate_keys(torch.zeros(2, 8), torch.arange(2.0), torch.ones(4), torch.ones(4))


def test_tables_are_keyed_by_device():
    cache = RopeCache(dim=8, original_max_position_embeddings=16)
    on_cpu, _ = cache.cos_sin(torch.arange(4))
    elsewhere, _ = cache.cos_sin(torch.arange(4), device="meta")  # a second device, no data needed
    assert on_cpu.device.type == "cpu" and elsewhere.device.type == "meta"
    assert cache.builds == 2
    cache.cos_sin(torch.arange(4), device="meta")
    assert cache.builds == 2  # served from the meta table, not rebuilt
    assert cache.table_keys == [(torch.float32, torch.device("cpu")), (torch.float32, torch.device("meta"))]


def test_one_device_named_two_ways_shares_one_table():
    cache = RopeCache(dim=8, original_max_position_embeddings=16)
    cache.cos_sin(torch.arange(4), device="cpu")
    cache.cos_sin(torch.arange(4), device="cpu:0")  # torch.device("cpu:0") != torch.device("cpu")
    assert cache.builds == 1 and len(cache.table_keys) == 1


def test_dynamic_frequencies_follow_the_current_length_back_down():
    # As RotaryEmbedding: the frequencies are those of the current length, not of the longest one seen.
    cache = RopeCache(dim=16, method="dynamic", factor=2.0, original_max_position_embeddings=32)
    plain = cache.inv_freq.clone()
    seen = {}
    for length in (8, 40, 20, 100):
        cache.cos_sin(torch.arange(length))
        seen[length] = cache.inv_freq.clone()
    assert torch.equal(seen[8], plain) and torch.equal(seen[20], plain)
    assert not torch.equal(seen[40], plain) and not torch.equal(seen[100], seen[40])
    assert cache.frequency_version == 3  # to 40, back to plain at 20, to 100
