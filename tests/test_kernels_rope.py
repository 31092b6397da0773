"""solutions.kernels.rope, the fused Triton RoPE (RoFormer, Su et al. 2021), under the Triton interpreter.

The oracle is `rope_reference`, i.e. `solutions.rope.apply_rope` on the gathered cos/sin rows; tolerances per
dtype are the kernel module's own `TOLERANCES`. Shapes are tiny and deliberately not powers of two (3 heads,
head_dim 12, rotary_dim 8 or 12) so that every mask in the kernel matters.
"""

import pytest
import torch

from solutions.kernels import last_run, rope, rope_reference
from solutions.kernels.rope_kernel import TOLERANCES
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
