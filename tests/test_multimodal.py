"""Part 7's reference code: M-RoPE (both layouts), Qwen2-VL's 3-D position ids, 2-D RoPE, Llama 4, Gemma 3.

The M-RoPE tables and position ids are checked against second implementations written here from the released
algorithms (Hugging Face's ``apply_multimodal_rotary_pos_emb``, ``apply_interleaved_mrope`` and
``get_rope_index``), not against the package's own helpers.
"""

import math
import random

import pytest
import torch

from solutions import (
    apply_rope,
    axial_rope_freqs,
    gemma3_layer_bases,
    llama4_attention_scale,
    llama4_rope_layers,
    mixed_rope_cos_sin,
    mixed_rope_freqs,
    mrope_cos_sin,
    mrope_pair_axes,
    mrope_position_ids,
    rope2d_cos_sin,
    rope2d_positions,
    rope_cos_sin,
    rope_inv_freq,
)

GEN = torch.Generator().manual_seed(0)


def randn(*shape, dtype=torch.float64):
    return torch.randn(*shape, generator=GEN, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------
# M-RoPE tables
# ---------------------------------------------------------------------------------------------------------

QWEN2_VL = (128, [16, 24, 24], False)
QWEN3_VL = (128, [24, 20, 20], True)


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def hf_style_rotate(q, inv_freq, position_ids, section, interleaved):
    """A second implementation of the released algorithm: a doubled [..., dim] table, re-sliced per axis.

    position_ids is [3, batch, seq] and q is [batch, heads, seq, dim]. Qwen2-VL splits the doubled cos/sin by
    ``section * 2`` and takes chunk i from axis i % 3; Qwen3-VL overwrites slots 1, 4, 7, ... (below
    3 * section[1]) of the temporal frequencies with height's and 2, 5, 8, ... (below 3 * section[2]) with
    width's before doubling.
    """
    freqs = position_ids[..., None].to(inv_freq.dtype) * inv_freq  # [3, batch, seq, half]
    if interleaved:
        merged = freqs[0].clone()
        for axis in (1, 2):
            merged[..., axis : 3 * section[axis] : 3] = freqs[axis, ..., axis : 3 * section[axis] : 3]
        emb = torch.cat((merged, merged), dim=-1)
        cos, sin = emb.cos(), emb.sin()
    else:
        emb = torch.cat((freqs, freqs), dim=-1)  # [3, batch, seq, dim]
        cos_chunks = emb.cos().split(list(section) * 2, dim=-1)
        sin_chunks = emb.sin().split(list(section) * 2, dim=-1)
        cos = torch.cat([chunk[i % 3] for i, chunk in enumerate(cos_chunks)], dim=-1)
        sin = torch.cat([chunk[i % 3] for i, chunk in enumerate(sin_chunks)], dim=-1)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    return q * cos + rotate_half(q) * sin


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dim,section", [(128, [16, 24, 24]), (128, [24, 20, 20]), (16, [2, 3, 3]), (12, [6, 0, 0])])
def test_mrope_with_equal_ids_is_plain_rope(dim, section, interleaved):
    # Text tokens carry t = h = w, and M-RoPE must then be 1-D RoPE exactly (Qwen2-VL's design goal).
    inv_freq = rope_inv_freq(dim, 1_000_000.0)
    ids = torch.randint(0, 5000, (2, 11), generator=GEN)
    cos, sin = mrope_cos_sin(inv_freq, ids.expand(3, -1, -1), section, interleaved=interleaved)
    expected_cos, expected_sin = rope_cos_sin(inv_freq, ids)
    assert cos.shape == (2, 11, dim // 2)
    torch.testing.assert_close(cos, expected_cos, rtol=0, atol=0)
    torch.testing.assert_close(sin, expected_sin, rtol=0, atol=0)


@pytest.mark.parametrize(
    "dim,section,interleaved",
    [
        QWEN2_VL,
        QWEN3_VL,
        (128, [24, 20, 20], False),
        (128, [16, 24, 24], True),
        (16, [2, 3, 3], False),
        (16, [4, 2, 2], True),
        (16, [2, 3, 3], True),  # 3 * 3 > 8: the released slice is cut at dim // 2, and so must ours be
        (32, [0, 16, 0], True),
        (32, [5, 0, 11], False),
    ],
)
def test_mrope_rotates_q_and_k_like_the_released_doubled_table(dim, section, interleaved):
    inv_freq = rope_inv_freq(dim, 10000.0).double()
    batch, heads, seq = 2, 3, 9
    position_ids = torch.randint(0, 300, (3, batch, seq), generator=GEN)
    cos, sin = mrope_cos_sin(inv_freq, position_ids, section, interleaved=interleaved)
    for x in (randn(batch, heads, seq, dim), randn(batch, heads, seq, dim)):  # a query and a key
        ours = apply_rope(x, cos.unsqueeze(1), sin.unsqueeze(1))
        theirs = hf_style_rotate(x, inv_freq, position_ids, section, interleaved)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    # and in float32, the dtype released models use for the tables
    cos32, sin32 = mrope_cos_sin(inv_freq.float(), position_ids, section, interleaved=interleaved)
    x = randn(batch, heads, seq, dim, dtype=torch.float32)
    theirs = hf_style_rotate(x, inv_freq.float(), position_ids, section, interleaved)
    torch.testing.assert_close(apply_rope(x, cos32.unsqueeze(1), sin32.unsqueeze(1)), theirs, atol=1e-6, rtol=0)


def test_pair_axes_written_out_for_dim_16():
    # chunked: the first section[0] pairs follow t, the next h, then w
    assert mrope_pair_axes(8, [2, 3, 3]).tolist() == [0, 0, 1, 1, 1, 2, 2, 2]
    # interleaved: t, h, w round-robin; the temporal axis keeps the tail
    assert mrope_pair_axes(8, [4, 2, 2], interleaved=True).tolist() == [0, 1, 2, 0, 1, 2, 0, 0]
    # a section that does not fit three-way is cut at dim // 2, exactly as the released slice
    assert mrope_pair_axes(8, [2, 3, 3], interleaved=True).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]


@pytest.mark.parametrize("dim,section,interleaved", [QWEN2_VL, QWEN3_VL])
def test_released_configs_give_each_axis_its_section_and_interleave_spreads_frequencies(dim, section, interleaved):
    axes = mrope_pair_axes(dim // 2, section, interleaved)
    assert torch.bincount(axes, minlength=3).tolist() == section
    fastest = [int((axes == axis).nonzero().min()) for axis in range(3)]
    slowest = [int((axes == axis).nonzero().max()) for axis in range(3)]
    if interleaved:
        # Qwen3-VL's point: every axis has both fast (low index) and slow (high index) pairs.
        assert max(fastest) <= 2 and min(slowest) >= dim // 2 - 6
    else:
        # Qwen2-VL: time gets only the fastest pairs, width only the slowest.
        assert slowest[0] < fastest[1] and slowest[1] < fastest[2]


@pytest.mark.parametrize("interleaved", [False, True])
def test_mrope_scores_depend_only_on_the_3d_offset(interleaved):
    dim, section = 32, [4, 6, 6]
    inv_freq = rope_inv_freq(dim).double()
    q, k = randn(dim), randn(dim)
    ids = torch.randint(0, 50, (3, 2), generator=GEN)  # two tokens
    shift = torch.tensor([[7], [-3], [11]])

    def score(position_ids):
        cos, sin = mrope_cos_sin(inv_freq, position_ids, section, interleaved)
        return apply_rope(q[None], cos[0:1], sin[0:1]) @ apply_rope(k[None], cos[1:2], sin[1:2]).T

    torch.testing.assert_close(score(ids), score(ids + shift), atol=1e-9, rtol=0)
    moved_height_only = ids.clone()
    moved_height_only[1, 1] += 5
    assert not torch.allclose(score(ids), score(moved_height_only))


def test_mrope_attention_factor_scales_both_tables():
    inv_freq = rope_inv_freq(16)
    ids = torch.arange(5).expand(3, -1)
    cos, sin = mrope_cos_sin(inv_freq, ids, [2, 3, 3], attention_factor=1.5)
    plain_cos, plain_sin = mrope_cos_sin(inv_freq, ids, [2, 3, 3])
    torch.testing.assert_close(cos, 1.5 * plain_cos)
    torch.testing.assert_close(sin, 1.5 * plain_sin)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(mrope_section=[16, 24, 23]), "sum to dim // 2"),
        (dict(mrope_section=[32, 48, 48]), "instead of pairs"),
        (dict(mrope_section=[32, 32]), "3 pair counts"),
        (dict(mrope_section=[-1, 33, 32]), "non-negative"),
        (dict(mrope_section=[16.0, 24, 24]), "non-negative integers"),
        (dict(position_ids=torch.zeros(5, dtype=torch.long)), r"\[3, \.\.\., seq\]"),
        (dict(position_ids=torch.zeros(2, 1, 5, dtype=torch.long)), "temporal, height, width"),
        (dict(position_ids=torch.zeros(1, 5, dtype=torch.long)), "expand"),
        (dict(inv_freq=torch.ones(2, 32)), "1-D"),
    ],
)
def test_mrope_cos_sin_rejects_bad_input_clearly(kwargs, message):
    args = dict(inv_freq=rope_inv_freq(128), position_ids=torch.zeros(3, 1, 5, dtype=torch.long),
                mrope_section=[16, 24, 24])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        mrope_cos_sin(**args)


# ---------------------------------------------------------------------------------------------------------
# Qwen2-VL's 3-D position ids
# ---------------------------------------------------------------------------------------------------------


def test_position_ids_of_a_known_prompt_written_out_by_hand():
    # text 3 + image 1x4x4 (merge 2 -> 2x2 = 4 tokens) + text 2 + video 2x4x4 (-> 2 frames of 2x2 = 8 tokens)
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2]])
    ids, deltas = mrope_position_ids(types, torch.tensor([[1, 4, 4]]), torch.tensor([[2, 4, 4]]), spatial_merge_size=2)
    #            text     image        text  video (frame 0)  video (frame 1)
    t = [0, 1, 2, 3, 3, 3, 3, 5, 6, 7, 7, 7, 7, 8, 8, 8, 8]
    h = [0, 1, 2, 3, 3, 4, 4, 5, 6, 7, 7, 8, 8, 7, 7, 8, 8]
    w = [0, 1, 2, 3, 4, 3, 4, 5, 6, 7, 8, 7, 8, 7, 8, 7, 8]
    assert ids.dtype == torch.int64 and ids.shape == (3, 1, 17)
    assert ids[:, 0].tolist() == [t, h, w]
    # the image ends at id 4, so the text after it restarts at 5; the largest id is 8 for 17 tokens
    assert deltas.dtype == torch.int64 and deltas.tolist() == [8 + 1 - 17]


def test_text_only_gives_arange_on_all_axes_and_no_delta():
    types = torch.zeros(2, 9, dtype=torch.long)
    ids, deltas = mrope_position_ids(types)
    assert torch.equal(ids, torch.arange(9).expand(3, 2, 9))
    assert deltas.tolist() == [0, 0]


def test_a_batch_of_two_layouts_consumes_grids_in_order_across_rows():
    types = torch.tensor([
        [0, 0, 1, 1, 0, 0, 0, 0],  # text 2, image 0 (1x2x4 -> 1x1x2), text 4
        [1, 1, 1, 1, 0, 1, 1, 0],  # image 1 (1x4x4 -> 2x2), text 1, image 2 (1x2x4 -> 1x2)
    ])
    grids = torch.tensor([[1, 2, 4], [1, 4, 4], [1, 2, 4]])
    ids, deltas = mrope_position_ids(types, image_grid_thw=grids)
    assert ids[:, 0].tolist() == [
        [0, 1, 2, 2, 4, 5, 6, 7],
        [0, 1, 2, 2, 4, 5, 6, 7],
        [0, 1, 2, 3, 4, 5, 6, 7],
    ]
    assert ids[:, 1].tolist() == [
        [0, 0, 0, 0, 2, 3, 3, 5],
        [0, 0, 1, 1, 2, 3, 3, 5],
        [0, 1, 0, 1, 2, 3, 4, 5],
    ]
    assert deltas.tolist() == [0, -2]


def test_adjacent_blocks_of_one_kind_are_split_by_their_grids():
    # two images with no text between them (Qwen2-VL puts vision-start/end text tokens there, but the rule
    # must not need them): the second block starts right after the first one's largest id
    types = torch.tensor([[1] * 4 + [1] * 2])
    ids, _ = mrope_position_ids(types, torch.tensor([[1, 4, 4], [1, 2, 4]]))
    assert ids[:, 0].tolist() == [[0, 0, 0, 0, 2, 2], [0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 2, 3]]


def reference_ids(segments, merge):
    """Token-by-token second implementation of Qwen2-VL's rule, from the description in the paper/docstring."""
    ids = []
    next_id = 0
    for kind, value in segments:
        if kind == "text":
            for _ in range(value):
                ids.append((next_id, next_id, next_id))
                next_id += 1
        else:
            t, h, w = value
            rows, cols = h // merge, w // merge
            block = []
            for k in range(t * rows * cols):
                frame, rest = divmod(k, rows * cols)
                row, col = divmod(rest, cols)
                block.append((next_id + frame, next_id + row, next_id + col))
            ids.extend(block)
            next_id = max(max(triple) for triple in block) + 1
    return ids


def random_segments(rng, merge):
    segments = []
    for _ in range(rng.randint(0, 5)):
        roll = rng.random()
        if roll < 0.45:
            segments.append(("text", rng.randint(0, 6)))
        else:
            kind = "image" if roll < 0.75 else "video"
            t = 1 if kind == "image" else rng.randint(1, 3)
            segments.append((kind, (t, merge * rng.randint(1, 3), merge * rng.randint(1, 4))))
    return segments


@pytest.mark.parametrize("merge", [1, 2])
@pytest.mark.parametrize("seed", range(6))
def test_position_ids_agree_with_a_token_by_token_implementation_on_random_prompts(seed, merge):
    rng = random.Random(seed)
    rows = [random_segments(rng, merge) for _ in range(rng.randint(1, 4))]
    codes = {"text": 0, "image": 1, "video": 2}
    row_types, row_ids, images, videos = [], [], [], []
    for segments in rows:
        types = []
        for kind, value in segments:
            if kind == "text":
                types += [0] * value
            else:
                t, h, w = value
                types += [codes[kind]] * (t * (h // merge) * (w // merge))
                (images if kind == "image" else videos).append(value)
        row_types.append(types)
        row_ids.append(reference_ids(segments, merge))
    seq = max(len(types) for types in row_types) + rng.randint(0, 3)
    token_types = torch.zeros(len(rows), seq, dtype=torch.long)
    mask = torch.zeros(len(rows), seq, dtype=torch.long)
    expected = torch.ones(3, len(rows), seq, dtype=torch.long)  # padding holds 1, as the released code writes
    expected_deltas = []
    for b, (types, ids) in enumerate(zip(row_types, row_ids)):
        start = seq - len(types) if b % 2 else 0  # odd rows left-padded, even rows right-padded
        token_types[b, start : start + len(types)] = torch.tensor(types, dtype=torch.long)
        mask[b, start : start + len(types)] = 1
        if ids:
            expected[:, b, start : start + len(types)] = torch.tensor(ids).T
        expected_deltas.append((max(max(t) for t in ids) + 1 if ids else 0) - seq)
    ids, deltas = mrope_position_ids(
        token_types,
        torch.tensor(images, dtype=torch.long).reshape(-1, 3),
        torch.tensor(videos, dtype=torch.long).reshape(-1, 3),
        spatial_merge_size=merge,
        attention_mask=mask,
    )
    assert torch.equal(ids, expected)
    assert deltas.tolist() == expected_deltas


def test_padding_is_taken_out_with_the_mask_and_counted_in_the_delta():
    types = torch.tensor([[0, 1, 1, 1, 1, 0]])
    grid = torch.tensor([[1, 4, 4]])
    unpadded, unpadded_delta = mrope_position_ids(types, grid)
    padded_types = torch.cat((torch.zeros(1, 3, dtype=torch.long), types), dim=1)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1]])
    padded, padded_delta = mrope_position_ids(padded_types, grid, attention_mask=mask)
    assert torch.equal(padded[:, :, 3:], unpadded)
    assert (padded[:, :, :3] == 1).all()
    assert padded_delta.tolist() == [unpadded_delta.item() - 3]  # max + 1 - the padded length


def test_decoding_continues_at_cache_position_plus_delta():
    # What the delta is for: a text token generated at cache position p gets id p + delta on all axes.
    prompt = [0, 0, 2, 2, 2, 2, 2, 2, 2, 2, 0]
    video = torch.tensor([[2, 4, 4]])
    _, delta = mrope_position_ids(torch.tensor([prompt]), video_grid_thw=video)
    longer, _ = mrope_position_ids(torch.tensor([prompt + [0, 0, 0]]), video_grid_thw=video)
    for p in range(len(prompt), len(prompt) + 3):
        assert longer[:, 0, p].tolist() == [p + delta.item()] * 3


@pytest.mark.parametrize(
    "types,images,videos,merge,message",
    [
        ([[0, 1, 1, 1, 0]], [[1, 4, 4]], None, 2,
         r"image block 0 .*\(1, 4, 4\).* = 4 image tokens, but row 0 has only 3"),
        ([[0, 1, 1, 1, 1]], [[1, 4, 4]], None, 1, r"spatial_merge_size 1\).* = 16 image tokens"),
        ([[0, 2, 2, 2, 2]], None, [[2, 4, 4]], 2, r"video block 0 .* = 8 video tokens, but row 0 has only 4"),
        ([[1, 1, 1, 1, 0, 1]], [[1, 4, 4]], None, 2,
         "token 5: an image block starts here but image_grid_thw has only 1"),
        ([[0, 0]], [[1, 4, 4]], None, 2, "image_grid_thw has 1 grid.* only 0 image block"),
        ([[0, 3]], None, None, 2, r"found 3 at \(row, token\) \(0, 1\)"),
        ([0, 1], None, None, 2, "unsqueeze"),
        ([[1, 1]], [[1, 3, 4]], None, 2, "multiples of spatial_merge_size"),
        ([[1, 1]], [[1, 2]], None, 2, r"\[n, 3\]"),
        ([[1, 1]], [[0, 2, 2]], None, 2, "at least 1"),
        ([[0, 0]], None, None, 0, "spatial_merge_size must be a positive integer"),
    ],
)
def test_mrope_position_ids_rejects_bad_input_clearly(types, images, videos, merge, message):
    as_tensor = lambda value: None if value is None else torch.tensor(value)  # noqa: E731
    with pytest.raises(ValueError, match=message):
        mrope_position_ids(as_tensor(types), as_tensor(images), as_tensor(videos), spatial_merge_size=merge)


def test_mrope_position_ids_rejects_a_bad_mask():
    with pytest.raises(ValueError, match="shape"):
        mrope_position_ids(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="only 0"):
        mrope_position_ids(torch.zeros(1, 2, dtype=torch.long), attention_mask=torch.tensor([[1, 2]]))


def test_position_ids_feed_mrope_cos_sin():
    types = torch.tensor([[0, 0, 1, 1, 1, 1, 0]])
    ids, _ = mrope_position_ids(types, torch.tensor([[1, 4, 4]]))
    cos, sin = mrope_cos_sin(rope_inv_freq(16), ids, [2, 3, 3])
    assert cos.shape == sin.shape == (1, 7, 8)
    x = randn(1, 4, 7, 16, dtype=torch.float32)
    assert apply_rope(x, cos.unsqueeze(1), sin.unsqueeze(1)).shape == x.shape


# ---------------------------------------------------------------------------------------------------------
# 2-D RoPE
# ---------------------------------------------------------------------------------------------------------


def scores(q, k, cos, sin, interleaved=False):
    return apply_rope(q.expand(cos.shape[0], -1), cos, sin, interleaved) @ apply_rope(
        k.expand(cos.shape[0], -1), cos, sin, interleaved
    ).T


@pytest.mark.parametrize("interleaved", [False, True])
def test_axial_scores_depend_only_on_the_2d_offset(interleaved):
    dim, height, width = 16, 6, 7
    q, k = randn(dim).float(), randn(dim).float()
    cos, sin = rope2d_cos_sin(dim, height, width, base=100.0)
    s = scores(q, k, cos, sin, interleaved)
    pos = rope2d_positions(height, width).long()
    delta = pos[None, :, :] - pos[:, None, :]  # [query, key, 2]
    for offset in [(0, 0), (1, 0), (0, 1), (2, -3), (-4, 5)]:
        same = (delta[..., 0] == offset[0]) & (delta[..., 1] == offset[1])
        values = s[same]
        assert len(values) >= 4
        torch.testing.assert_close(values, values[:1].expand_as(values), atol=1e-4, rtol=0)
    # and the rows and columns really matter: offsets (1, 0) and (0, 1) differ
    one_row = s[(delta[..., 0] == 1) & (delta[..., 1] == 0)][0]
    one_col = s[(delta[..., 0] == 0) & (delta[..., 1] == 1)][0]
    assert not torch.isclose(one_row, one_col)


def test_mixed_scores_depend_only_on_the_2d_offset_at_fractional_positions():
    dim = 32
    freqs = mixed_rope_freqs(dim, num_heads=1, base=10.0, generator=torch.Generator().manual_seed(3))[0].double()
    q, k = randn(dim), randn(dim)
    p = torch.tensor([[0.3, 2.25]], dtype=torch.float64)
    p_prime = torch.tensor([[4.5, -1.75]], dtype=torch.float64)
    offset = torch.tensor([[17.125, -6.5]], dtype=torch.float64)

    def score(a, b):
        cos_a, sin_a = mixed_rope_cos_sin(freqs, a.double())
        cos_b, sin_b = mixed_rope_cos_sin(freqs, b.double())
        return apply_rope(q[None], cos_a, sin_a) @ apply_rope(k[None], cos_b, sin_b).T

    torch.testing.assert_close(score(p, p_prime), score(p + offset, p_prime + offset), atol=1e-10, rtol=0)


def test_axial_with_one_axis_fixed_is_1d_rope_on_its_pairs():
    dim, base = 24, 100.0
    quarter = dim // 4
    one_d = rope_inv_freq(dim // 2, base)
    # one row: the column pairs are 1-D RoPE over the columns, the row pairs stand still
    cos, sin = rope2d_cos_sin(dim, 1, 9, base)
    expected_cos, expected_sin = rope_cos_sin(one_d, 9)
    torch.testing.assert_close(cos[:, :quarter], expected_cos)
    torch.testing.assert_close(sin[:, :quarter], expected_sin)
    assert (cos[:, quarter:] == 1).all() and (sin[:, quarter:] == 0).all()
    # one column: the row pairs are 1-D RoPE over the rows
    cos, sin = rope2d_cos_sin(dim, 9, 1, base)
    torch.testing.assert_close(cos[:, quarter:], expected_cos)
    torch.testing.assert_close(sin[:, quarter:], expected_sin)
    assert (cos[:, :quarter] == 1).all() and (sin[:, :quarter] == 0).all()
    # inside a full grid, every token's column pairs follow its column and its row pairs its row
    cos, _ = rope2d_cos_sin(dim, 5, 7, base)
    grid = cos.reshape(5, 7, dim // 2)
    torch.testing.assert_close(grid[3, :, :quarter], expected_cos[:7])
    torch.testing.assert_close(grid[:, 4, quarter:], expected_cos[:5])


def test_mixed_with_axis_aligned_frequencies_equals_axial():
    dim, height, width = 16, 5, 6
    aligned = mixed_rope_freqs(dim, num_heads=3, base=100.0, rotate=False)
    assert torch.equal(aligned, axial_rope_freqs(dim, 100.0).expand(3, -1, -1))
    cos, sin = mixed_rope_cos_sin(axial_rope_freqs(dim, 100.0), rope2d_positions(height, width))
    expected_cos, expected_sin = rope2d_cos_sin(dim, height, width, base=100.0)
    torch.testing.assert_close(cos, expected_cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, expected_sin, atol=1e-6, rtol=0)


def test_mixed_init_has_the_papers_magnitudes_and_perpendicular_halves():
    dim, heads = 32, 4
    freqs = mixed_rope_freqs(dim, heads, base=10.0, generator=torch.Generator().manual_seed(1)).double()
    assert freqs.shape == (heads, 2, dim // 2)
    quarter = dim // 4
    magnitude = freqs.norm(dim=1)  # |(theta_row, theta_col)| per head and pair
    expected = rope_inv_freq(dim // 2, 10.0).double().repeat(2).expand(heads, -1)  # both halves: base^(-4j/dim)
    torch.testing.assert_close(magnitude, expected, atol=1e-6, rtol=1e-6)
    first, second = freqs[..., :quarter], freqs[..., quarter:]
    dot = (first * second).sum(dim=1)
    torch.testing.assert_close(dot, torch.zeros_like(dot), atol=1e-7, rtol=0)
    # second half = first half rotated by +90 degrees in (x, y) = (col, row): (x, y) -> (-y, x)
    torch.testing.assert_close(second[:, 1], -first[:, 0])  # freqs[:, 1] is the column (x) component
    torch.testing.assert_close(second[:, 0], first[:, 1])
    directions = torch.atan2(freqs[:, 0, 0], freqs[:, 1, 0])
    assert len(set(directions.round(decimals=4).tolist())) == heads  # one random direction per head
    again = mixed_rope_freqs(dim, heads, base=10.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again.double(), freqs)


def test_mixed_matches_the_released_complex_form_in_interleaved_layout():
    # rope-vit multiplies complex pairs (2j, 2j+1) by exp(i (theta_x x + theta_y y)); apply_rope(interleaved)
    dim, heads, height, width = 16, 2, 3, 4
    freqs = mixed_rope_freqs(dim, heads, generator=torch.Generator().manual_seed(2))
    positions = rope2d_positions(height, width)
    cos, sin = mixed_rope_cos_sin(freqs, positions)
    x = randn(1, heads, height * width, dim, dtype=torch.float32)
    y_col, y_row = positions[:, 1], positions[:, 0]
    angles = y_col[:, None] * freqs[:, 1:2, :] + y_row[:, None] * freqs[:, 0:1, :]  # [heads, n, P]
    rotated = torch.view_as_complex(x.reshape(1, heads, height * width, dim // 2, 2).contiguous())
    expected = torch.view_as_real(rotated * torch.polar(torch.ones_like(angles), angles)).flatten(-2)
    torch.testing.assert_close(apply_rope(x, cos, sin, interleaved=True), expected, atol=1e-6, rtol=0)


def test_mixed_frequencies_are_trainable():
    freqs = torch.nn.Parameter(mixed_rope_freqs(8, 2, generator=torch.Generator().manual_seed(0)))
    cos, sin = mixed_rope_cos_sin(freqs, rope2d_positions(3, 3))
    x = torch.ones(1, 2, 9, 8)
    apply_rope(x, cos, sin).sum().backward()
    assert freqs.grad is not None and freqs.grad.abs().sum() > 0


def test_interpolated_positions_stay_in_the_trained_range():
    positions = rope2d_positions(8, 12, train_size=(4, 6))
    assert positions[:, 0].max() < 4 and positions[:, 1].max() < 6
    torch.testing.assert_close(positions[:13], torch.tensor([[0.0, c / 2] for c in range(12)] + [[0.5, 0.0]]))
    # training size itself: interpolation is the identity
    assert torch.equal(rope2d_positions(4, 6, train_size=(4, 6)), rope2d_positions(4, 6))
    cos, sin = rope2d_cos_sin(16, 4, 6, train_size=(4, 6))
    plain_cos, plain_sin = rope2d_cos_sin(16, 4, 6)
    assert torch.equal(cos, plain_cos) and torch.equal(sin, plain_sin)
    # an interpolated larger grid reuses the trained angles: its even rows/cols are the trained grid's
    cos8, _ = rope2d_cos_sin(16, 8, 12, train_size=(4, 6))
    torch.testing.assert_close(cos8.reshape(8, 12, 8)[::2, ::2].reshape(24, 8), plain_cos)


def test_rope2d_positions_are_row_major():
    positions = rope2d_positions(2, 3)
    assert positions.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: rope2d_cos_sin(18, 2, 2), "multiple of 4"),
        (lambda: rope2d_cos_sin(16, 0, 2), "height must be a positive integer"),
        (lambda: rope2d_cos_sin(16, 2, 2, base=1.0), "base"),
        (lambda: rope2d_positions(2, 2, train_size=(2,)), "train_size"),
        (lambda: rope2d_positions(2, 2, train_size=(0, 2)), "positive"),
        (lambda: mixed_rope_cos_sin(torch.ones(3, 8), torch.zeros(4, 2)), r"\[\.\.\., 2, dim // 2\]"),
        (lambda: mixed_rope_cos_sin(torch.ones(2, 8), torch.zeros(4, 3)), r"\[n, 2\]"),
        (lambda: mixed_rope_freqs(16, num_heads=0), "num_heads"),
        (lambda: axial_rope_freqs(6), "multiple of 4"),
    ],
)
def test_2d_rope_rejects_bad_input_clearly(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------------
# Llama 4 and Gemma 3
# ---------------------------------------------------------------------------------------------------------


def test_llama4_scale_is_one_below_floor_scale_and_steps_at_multiples():
    scale = llama4_attention_scale(torch.arange(3 * 8192 + 5))
    assert scale.dtype == torch.float32 and scale.shape == (3 * 8192 + 5,)
    assert (scale[: 8192 - 1] == 1).all()
    steps = (scale[1:] != scale[:-1]).nonzero().flatten() + 1  # positions where the value changes
    assert steps.tolist() == [8192 - 1, 2 * 8192 - 1, 3 * 8192 - 1]
    for k in (1, 2, 3):
        assert scale[k * 8192 - 1].item() == pytest.approx(1 + 0.1 * math.log(k + 1), abs=1e-7)
    assert (scale[1:] >= scale[:-1]).all()


def test_llama4_scale_matches_the_closed_form():
    positions = torch.randint(0, 10_000_000, (500,), generator=GEN)
    expected = [math.log(math.floor((p + 1) / 1000) + 1) * 0.25 + 1 for p in positions.tolist()]
    got = llama4_attention_scale(positions, floor_scale=1000, attn_scale=0.25)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32))
    assert torch.equal(llama4_attention_scale(5, floor_scale=2), llama4_attention_scale(torch.arange(5), floor_scale=2))
    assert llama4_attention_scale(torch.tensor([1.0, 3.0], dtype=torch.float64), floor_scale=2).dtype == torch.float64
    assert llama4_attention_scale(torch.arange(6).reshape(2, 3)).shape == (2, 3)


def test_llama4_scale_rejects_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        llama4_attention_scale(torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match="floor_scale"):
        llama4_attention_scale(torch.arange(3), floor_scale=0)


def test_llama4_every_fourth_layer_is_nope():
    layers = llama4_rope_layers(48)
    assert [i for i, rope in enumerate(layers) if not rope] == list(range(3, 48, 4))


def test_gemma3_has_one_global_layer_in_six():
    bases = gemma3_layer_bases(26)
    assert [i for i, base in enumerate(bases) if base == 1_000_000.0] == [5, 11, 17, 23]
    assert bases.count(10_000.0) == 22
    assert gemma3_layer_bases(62).count(1_000_000.0) == 10
