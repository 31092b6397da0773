"""solutions.kernels.rope, the fused Triton RoPE (RoFormer, Su et al. 2021), under the Triton interpreter.

The oracle is `rope_reference`, i.e. `solutions.rope.apply_rope` on the gathered cos/sin rows; tolerances per
dtype are the kernel module's own `TOLERANCES`. Shapes are tiny and deliberately not powers of two (3 heads,
head_dim 12, rotary_dim 8 or 12) so that every mask in the kernel matters.

The second half tests the per-token form, cos/sin ``[batch, seq, rotary_dim // 2]`` (one row per token, for
M-RoPE and 2-D RoPE): against the same oracle, and against the cache path when the rows are gathered from a
cache, which is the property that ties the two forms together.
"""

import pytest
import torch

from solutions.kernels import last_run, rope, rope_reference
from solutions.kernels.rope_kernel import TOLERANCES, _table_operands
from solutions.rope import rope_cos_sin, rope_inv_freq
from solutions.rope_scaling import rope_scaling

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def make(batch=2, seq=5, heads=3, head_dim=12, rotary_dim=12, max_pos=24, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, heads, head_dim, generator=g).to(dtype)
    cos, sin = rope_cos_sin(rope_inv_freq(rotary_dim), max_pos)
    return x, cos, sin


def check(actual, expected, dtype, what):
    torch.testing.assert_close(actual.float(), expected.float(), **TOLERANCES[dtype],
                               msg=lambda m: f"{what} ({dtype}): kernel and apply_rope disagree. {m}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("interleaved", [False, True], ids=["half_split", "interleaved"])
@pytest.mark.parametrize("rotary_dim", [12, 8], ids=["full", "partial"])
def test_forward_matches_apply_rope(dtype, interleaved, rotary_dim):
    x, cos, sin = make(rotary_dim=rotary_dim, dtype=dtype)
    y = rope(x, cos, sin, interleaved=interleaved, position_offset=3)
    assert last_run("rope").backend == "interpreter"
    assert y.dtype == dtype and y.shape == x.shape
    check(y, rope_reference(x, cos, sin, interleaved=interleaved, position_offset=3), dtype, "forward")
    # partial rotary: the tail is copied bit for bit
    assert torch.equal(y[..., rotary_dim:], x[..., rotary_dim:])


@pytest.mark.parametrize("interleaved", [False, True], ids=["half_split", "interleaved"])
def test_per_row_tensor_offsets(interleaved):
    x, cos, sin = make(batch=3, seq=4, max_pos=16)
    offsets = torch.tensor([0, 11, 5])  # last row ends exactly at the cache's last row
    y = rope(x, cos, sin, interleaved=interleaved, position_offset=offsets)
    check(y, rope_reference(x, cos, sin, interleaved=interleaved, position_offset=offsets), torch.float32, "offsets")
    # row b is exactly the int-offset call for that row alone
    for b, offset in enumerate(offsets.tolist()):
        single = rope(x[b:b + 1], cos, sin, interleaved=interleaved, position_offset=offset)
        torch.testing.assert_close(y[b:b + 1], single, atol=0, rtol=0)


def test_decode_step_with_offset_matches_the_full_sequence():
    # Rotating token t alone at offset t gives the same as rotating the whole sequence (KV-cache decode).
    x, cos, sin = make(batch=1, seq=6)
    full = rope(x, cos, sin)
    for t in range(6):
        torch.testing.assert_close(rope(x[:, t:t + 1], cos, sin, position_offset=t), full[:, t:t + 1],
                                   atol=0, rtol=0)


@pytest.mark.parametrize("interleaved", [False, True], ids=["half_split", "interleaved"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_matches_autograd_through_apply_rope(interleaved, dtype):
    x, cos, sin = make(rotary_dim=8, dtype=dtype)
    offsets = torch.tensor([2, 9])
    x_kernel = x.clone().requires_grad_()
    x_ref = x.clone().requires_grad_()
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    rope(x_kernel, cos, sin, interleaved=interleaved, position_offset=offsets).backward(grad_out)
    assert last_run().kernel == "rope_backward" and last_run().backend == "interpreter"
    rope_reference(x_ref, cos, sin, interleaved=interleaved, position_offset=offsets).backward(grad_out)
    check(x_kernel.grad, x_ref.grad, dtype, "gradient")
    assert torch.equal(x_kernel.grad[..., 8:], grad_out[..., 8:]), "the pass-through dims' gradient is the identity"


def test_backward_is_the_inverse_rotation():
    # R(theta)^T R(theta) = I: feeding the output back as the gradient recovers the input.
    x, cos, sin = make()
    x_kernel = x.clone().requires_grad_()
    y = rope(x_kernel, cos, sin, position_offset=4)
    y.backward(y.detach())
    torch.testing.assert_close(x_kernel.grad, x, **TOLERANCES[torch.float32])


def test_strided_input_from_a_fused_projection():
    # q as a slice of a fused [batch, seq, heads, 3 * head_dim] QKV tensor: no copy needed.
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 5, 3, 36, generator=g)
    q = qkv[..., 12:24]
    assert not q.is_contiguous()
    _, cos, sin = make()
    check(rope(q, cos, sin), rope_reference(q.contiguous(), cos, sin), torch.float32, "strided input")


@pytest.mark.parametrize("method", ["yarn", "llama3"])
def test_any_rope_scaling_method_through_its_cache(method):
    inv_freq, attention_factor = rope_scaling(method, 12, 10000.0, 4.0, 16)
    cos, sin = rope_cos_sin(inv_freq, 64, attention_factor)
    x, _, _ = make()
    y = rope(x, cos, sin, position_offset=40)
    check(y, rope_reference(x, cos, sin, position_offset=40), torch.float32, f"rope_scaling {method}")


def test_torch_backend_is_the_reference():
    x, cos, sin = make()
    y = rope(x, cos, sin, position_offset=2, backend="torch")
    assert last_run("rope").backend == "torch-fallback"
    torch.testing.assert_close(y, rope_reference(x, cos, sin, position_offset=2), atol=0, rtol=0)


def _bad_cases():
    x, cos, sin = make(max_pos=10)
    return [
        ("3-D x", lambda: rope(x[0], cos, sin), "4-D"),
        ("integer x", lambda: rope(x.long(), cos, sin), "float32, float16 or bfloat16"),
        ("float64 x", lambda: rope(x.double(), cos, sin), "float32, float16 or bfloat16"),
        ("cos wider than head_dim / 2", lambda: rope(x[..., :10], cos, sin), "rotary_dim"),
        ("cos and sin differ", lambda: rope(x, cos, sin[:, :4]), "same shape"),
        ("cos per batch (3-D)", lambda: rope(x, cos[None], sin[None]), "2-D"),
        ("offset of the wrong shape", lambda: rope(x, cos, sin, position_offset=torch.tensor([1, 2, 3])), "[batch]"),
        ("float offset tensor", lambda: rope(x, cos, sin, position_offset=torch.tensor([1.0, 2.0])), "integer"),
        ("float offset", lambda: rope(x, cos, sin, position_offset=1.5), "int"),
        ("negative offset", lambda: rope(x, cos, sin, position_offset=-1), ">= 0"),
        ("positions past the cache (int)", lambda: rope(x, cos, sin, position_offset=6), "max_pos = 10"),
        ("positions past the cache (tensor)",
         lambda: rope(x, cos, sin, position_offset=torch.tensor([0, 6])), "max_pos = 10"),
        ("cos requiring grad", lambda: rope(x, cos.clone().requires_grad_(), sin), "detach"),
        ("cos on another device", lambda: rope(x, cos.to("meta"), sin.to("meta")), "one device"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_arguments_raise_before_any_launch(case, no_launch):
    _, call, words = case
    with pytest.raises(ValueError) as info:
        call()
    assert words in str(info.value), f"the message should name the problem ({words!r}): {info.value}"


def test_positions_exactly_filling_the_cache_are_accepted():
    x, cos, sin = make(seq=5, max_pos=10)
    rope(x, cos, sin, position_offset=5)  # positions 5..9: the last row of the cache


# ------------------------------------------------------------------ one cos/sin row per token [batch, seq, half]

LAYOUTS = pytest.mark.parametrize("interleaved", [False, True], ids=["half_split", "interleaved"])


def token_rows(batch=2, seq=5, rotary_dim=12, seed=0):
    """Per-token rows at random real positions, so that no row is a row of an integer position cache."""
    positions = torch.rand(batch, seq, generator=torch.Generator().manual_seed(seed)) * 40  # [batch, seq]
    return rope_cos_sin(rope_inv_freq(rotary_dim), positions)  # each [batch, seq, rotary_dim // 2]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@LAYOUTS
@pytest.mark.parametrize("rotary_dim", [12, 8], ids=["full", "partial"])
def test_per_token_rows_match_apply_rope(dtype, interleaved, rotary_dim):
    x, _, _ = make(dtype=dtype)
    cos, sin = token_rows(rotary_dim=rotary_dim)
    y = rope(x, cos, sin, interleaved=interleaved)
    assert last_run("rope").backend == "interpreter"
    assert y.dtype == dtype and y.shape == x.shape
    check(y, rope_reference(x, cos, sin, interleaved=interleaved), dtype, "per-token forward")
    assert torch.equal(y[..., rotary_dim:], x[..., rotary_dim:])


@LAYOUTS
@pytest.mark.parametrize("rotary_dim", [12, 8], ids=["full", "partial"])
def test_rows_gathered_from_the_cache_give_the_cache_path(interleaved, rotary_dim):
    # cos[t + offset[b]] as a per-token table is the cache path with that offset, forward and backward, to the bit.
    x, cos, sin = make(batch=3, seq=4, rotary_dim=rotary_dim, max_pos=16)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    for offset in (torch.tensor([0, 12, 5]), 7):
        positions = torch.arange(4)[None, :] + (offset[:, None] if isinstance(offset, torch.Tensor) else offset)
        positions = positions.expand(3, 4)  # [batch, seq]
        x_rows, x_cache = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_rows = rope(x_rows, cos[positions], sin[positions], interleaved=interleaved)
        y_cache = rope(x_cache, cos, sin, interleaved=interleaved, position_offset=offset)
        torch.testing.assert_close(y_rows, y_cache, atol=0, rtol=0)
        y_rows.backward(grad_out)
        y_cache.backward(grad_out)
        torch.testing.assert_close(x_rows.grad, x_cache.grad, atol=0, rtol=0)


@LAYOUTS
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_per_token_backward_matches_autograd_through_apply_rope(interleaved, dtype):
    x, _, _ = make(dtype=dtype)
    cos, sin = token_rows(rotary_dim=8, seed=2)
    x_kernel, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    rope(x_kernel, cos, sin, interleaved=interleaved).backward(grad_out)
    assert last_run().kernel == "rope_backward" and last_run().backend == "interpreter"
    rope_reference(x_ref, cos, sin, interleaved=interleaved).backward(grad_out)
    check(x_kernel.grad, x_ref.grad, dtype, "per-token gradient")
    assert torch.equal(x_kernel.grad[..., 8:], grad_out[..., 8:]), "the pass-through dims' gradient is the identity"


def test_per_token_backward_is_the_inverse_rotation():
    x, _, _ = make()
    cos, sin = token_rows(seed=3)
    x_kernel = x.clone().requires_grad_()
    y = rope(x_kernel, cos, sin, interleaved=True)
    y.backward(y.detach())
    torch.testing.assert_close(x_kernel.grad, x, **TOLERANCES[torch.float32])


def test_per_token_strided_input_and_tables():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 5, 3, 36, generator=g)[..., 12:24]  # q of a fused QKV projection: not contiguous
    assert not q.is_contiguous()
    cos, sin = token_rows()  # [2, 5, 6]
    expected = rope_reference(q.contiguous(), cos, sin)
    check(rope(q, cos, sin), expected, torch.float32, "strided x, per-token rows")

    # One table for the whole batch, expanded (batch stride 0): read through its strides, not copied.
    shared_cos, shared_sin = cos[:1].expand(2, -1, -1), sin[:1].expand(2, -1, -1)
    operands = _table_operands(shared_cos, shared_sin)
    assert operands[0].stride(0) == 0 and operands[0].data_ptr() == shared_cos.data_ptr()
    check(rope(q, shared_cos, shared_sin), rope_reference(q.contiguous(), cos[:1].repeat(2, 1, 1),
                                                            sin[:1].repeat(2, 1, 1)), torch.float32, "expanded rows")

    # Rows that are a slice of wider rows (row stride 12, unit pair stride) and rows whose pairs are strided
    # (stride 2, so the launcher copies them): both as the contiguous table.
    wide_cos, wide_sin = torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)  # [2, 5, 12]
    check(rope(q, wide_cos[..., :6], wide_sin[..., :6]), expected, torch.float32, "sliced rows")
    spread_cos = torch.stack((cos, torch.zeros_like(cos)), -1).flatten(-2)[..., ::2]  # pair stride 2
    spread_sin = torch.stack((sin, torch.zeros_like(sin)), -1).flatten(-2)[..., ::2]
    assert spread_cos.stride(-1) == 2
    check(rope(q, spread_cos, spread_sin), expected, torch.float32, "rows with strided pairs")
    # cos and sin with different strides
    check(rope(q, cos, wide_sin[..., :6]), expected, torch.float32, "cos and sin with different strides")


def test_each_batch_row_uses_its_own_table():
    x, _, _ = make(batch=3, seq=4)
    cos, sin = token_rows(batch=3, seq=4, seed=5)
    y = rope(x, cos, sin)
    for b in range(3):
        torch.testing.assert_close(y[b:b + 1], rope(x[b:b + 1], cos[b:b + 1], sin[b:b + 1]), atol=0, rtol=0)
    # The tables do differ: row 0's table on every row gives another result.
    y_row0 = rope(x, cos[:1].expand(3, -1, -1), sin[:1].expand(3, -1, -1))
    assert torch.equal(y[0], y_row0[0]) and not torch.allclose(y[1:], y_row0[1:], atol=1e-3)


def mrope_like_rows(positions_thw, sections, rotary_dim):
    """M-RoPE-style rows, built inline: pair group g of every row follows position axis g (t, h, w).

    ``positions_thw`` is ``[3, batch, seq]``; returns ``(cos, sin)`` each ``[batch, seq, rotary_dim // 2]`` and
    the per-axis tables they were cut from (each ``[batch, seq, rotary_dim // 2]``).
    """
    inv_freq = rope_inv_freq(rotary_dim)
    axis_tables = [rope_cos_sin(inv_freq, positions) for positions in positions_thw]  # 3 x (cos, sin)
    bounds = torch.tensor([0, *sections]).cumsum(0).tolist()  # pair index where each group starts and ends
    cos = torch.cat([axis_tables[g][0][..., bounds[g]:bounds[g + 1]] for g in range(3)], -1)
    sin = torch.cat([axis_tables[g][1][..., bounds[g]:bounds[g + 1]] for g in range(3)], -1)
    return cos, sin, axis_tables, bounds


@LAYOUTS
def test_mrope_like_rows(interleaved):
    # Row 0: 3 text tokens, a 2x2 image at temporal position 3, then text continuing from max + 1 = 5.
    # Row 1: the 2x2 image first, then text from 2. Qwen2-VL's rule, written out by hand.
    t = torch.tensor([[0, 1, 2, 3, 3, 3, 3, 5, 6], [0, 0, 0, 0, 2, 3, 4, 5, 6]])
    h = torch.tensor([[0, 1, 2, 3, 3, 4, 4, 5, 6], [0, 0, 1, 1, 2, 3, 4, 5, 6]])
    w = torch.tensor([[0, 1, 2, 3, 4, 3, 4, 5, 6], [0, 1, 0, 1, 2, 3, 4, 5, 6]])
    rotary_dim, sections = 12, (2, 1, 3)  # pairs per axis, summing to rotary_dim // 2
    cos, sin, axis_tables, bounds = mrope_like_rows(torch.stack((t, h, w)), sections, rotary_dim)
    x, cache_cos, cache_sin = make(batch=2, seq=9, rotary_dim=rotary_dim)

    x_kernel, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = rope(x_kernel, cos, sin, interleaved=interleaved)
    check(y, rope_reference(x, cos, sin, interleaved=interleaved), torch.float32, "M-RoPE-like rows")
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    y.backward(grad_out)
    rope_reference(x_ref, cos, sin, interleaved=interleaved).backward(grad_out)
    check(x_kernel.grad, x_ref.grad, torch.float32, "M-RoPE-like gradient")

    # Each pair group turns exactly as it would under its own axis' positions alone.
    half = rotary_dim // 2
    for g in range(3):
        pairs = torch.arange(bounds[g], bounds[g + 1])
        dims = torch.cat((2 * pairs, 2 * pairs + 1)) if interleaved else torch.cat((pairs, pairs + half))
        y_axis = rope(x, *axis_tables[g], interleaved=interleaved)
        torch.testing.assert_close(y.detach()[..., dims], y_axis[..., dims], atol=0, rtol=0)

    # Text tokens (t = h = w) rotate as 1-D RoPE at their position; image tokens do not.
    text = (t == h) & (h == w)  # [batch, seq]
    y_1d = rope(x, cache_cos[t], cache_sin[t], interleaved=interleaved)
    torch.testing.assert_close(y.detach()[text], y_1d[text], atol=0, rtol=0)
    assert not torch.allclose(y.detach()[~text], y_1d[~text], atol=1e-3)


def test_per_token_torch_backend_is_the_reference():
    x, _, _ = make()
    cos, sin = token_rows()
    y = rope(x, cos, sin, interleaved=True, backend="torch")
    assert last_run("rope").backend == "torch-fallback"
    torch.testing.assert_close(y, rope_reference(x, cos, sin, interleaved=True), atol=0, rtol=0)


def _bad_per_token_cases():
    x, _, _ = make()  # [2, 5, 3, 12]
    cos, sin = token_rows()  # [2, 5, 6]
    return [
        ("table batch differs from x's", (x, cos[:1], sin[:1]), {}, "[batch, seq, rotary_dim // 2] = [2, 5, 6]"),
        ("table seq differs from x's", (x, cos[:, :4], sin[:, :4]), {}, "[batch, seq, rotary_dim // 2]"),
        ("table longer than x (a cache is 2-D)", (x[:, :3], cos, sin), {}, "2-D"),
        ("rows wider than head_dim / 2", (x[..., :10], cos, sin), {}, "rotary_dim"),
        ("rows of zero pairs", (x, cos[..., :0], sin[..., :0]), {}, "rotary_dim"),
        ("int position_offset", (x, cos, sin), dict(position_offset=2), "position_offset"),
        ("tensor position_offset", (x, cos, sin), dict(position_offset=torch.tensor([0, 0])), "position_offset"),
        ("bool position_offset", (x, cos, sin), dict(position_offset=False), "position_offset"),
        ("cos per token, sin a cache", (x, cos, sin[0]), {}, "same shape"),
        ("4-D table", (x, cos[None], sin[None]), {}, "3-D rows per token"),
        ("integer table", (x, cos.long(), sin.long()), {}, "floating point"),
        ("table requiring grad", (x, cos, sin.clone().requires_grad_()), {}, "detach"),
        ("table on another device", (x, cos.to("meta"), sin.to("meta")), {}, "one device"),
        ("float64 x", (x.double(), cos, sin), {}, "float32, float16 or bfloat16"),
    ]


@pytest.mark.parametrize("case", _bad_per_token_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("function", [rope, rope_reference], ids=["rope", "rope_reference"])
def test_bad_per_token_arguments_raise_before_any_launch(case, function, no_launch):
    _, args, kwargs, words = case
    with pytest.raises(ValueError) as info:
        function(*args, **kwargs)
    assert words in str(info.value), f"the message should name the problem ({words!r}): {info.value}"
