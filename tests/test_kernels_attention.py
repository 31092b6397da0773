"""solutions.kernels.attention: FlashAttention-2 forward with in-kernel ALiBi / per-offset T5 bias, interpreted.

Oracles: `attention_reference` (reference_attention + alibi_bias / the materialised per-offset bias) and, for
T5, `reference_attention` with the `T5RelativeBias` module's own ``[heads, q, k]`` bias, independently of
`t5_bias_by_offset`. Shapes: 3 heads, head_dim 24 (padded to 32 in the kernel), lengths 13/21/37 against
16-wide blocks, so partial blocks, padded rows and the causal block skip are all exercised.
"""

import pytest
import torch

from solutions.alibi import alibi_bias, alibi_slopes
from solutions.attention import reference_attention
from solutions.kernels import attention, attention_reference, last_run, t5_bias_by_offset
from solutions.kernels.attention_kernel import TOLERANCES
from solutions.t5 import T5RelativeBias


def qkv(batch=2, heads=3, q_len=13, k_len=21, head_dim=24, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, q_len, head_dim, generator=g)
    k = torch.randn(batch, heads, k_len, head_dim, generator=g)
    v = torch.randn(batch, heads, k_len, head_dim, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def t5_module(heads, bidirectional, seed=0):
    torch.manual_seed(seed)
    module = T5RelativeBias(heads, num_buckets=8, max_distance=20, bidirectional=bidirectional)
    with torch.no_grad():
        module.bias_table.weight.normal_(0.0, 2.0)  # large enough that a wrong bucket shows
    return module


def bias_kwargs(kind, heads, q_len, k_len, causal):
    if kind == "alibi":
        return {"alibi_slopes": alibi_slopes(heads)}
    if kind == "t5":
        return {"relative_bias": t5_bias_by_offset(t5_module(heads, not causal), q_len, k_len).detach()}
    return {}


def check(actual, expected, dtype, what):
    torch.testing.assert_close(actual.float(), expected.float(), **TOLERANCES[dtype],
                               msg=lambda m: f"{what} ({dtype}): kernel and reference disagree. {m}")


@pytest.mark.parametrize("bias", ["none", "alibi", "t5"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_fp32_matches_reference_with_more_keys_than_queries(bias, causal):
    q, k, v = qkv()
    kwargs = bias_kwargs(bias, 3, 13, 21, causal)
    out = attention(q, k, v, causal=causal, **kwargs)
    assert last_run("attention").backend == "interpreter"
    check(out, attention_reference(q, k, v, causal=causal, **kwargs), torch.float32, f"{bias}, causal={causal}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias,causal", [("alibi", True), ("t5", False)])
def test_half_precision_matches_reference(dtype, bias, causal):
    q, k, v = qkv(dtype=dtype)
    kwargs = bias_kwargs(bias, 3, 13, 21, causal)
    out = attention(q, k, v, causal=causal, **kwargs)
    assert out.dtype == dtype
    check(out, attention_reference(q, k, v, causal=causal, **kwargs), dtype, f"{bias}, causal={causal}")


@pytest.mark.parametrize("q_len,k_len", [(37, 37), (1, 37), (16, 16)], ids=["square_ragged", "decode", "one_block"])
def test_causal_alibi_square_decode_and_block_boundaries(q_len, k_len):
    q, k, v = qkv(batch=1, q_len=q_len, k_len=k_len, head_dim=16)
    slopes = alibi_slopes(3)
    out = attention(q, k, v, causal=True, alibi_slopes=slopes)
    expected = reference_attention(q, k, v, bias=alibi_bias(slopes, q_len, k_len, causal=True), causal=True)
    check(out, expected, torch.float32, f"causal ALiBi q_len={q_len} k_len={k_len}")


def test_decode_row_equals_the_last_row_of_the_full_sequence():
    # Queries are aligned to the end of the keys: one query against all keys is the full pass's last row.
    q, k, v = qkv(batch=1, q_len=21, k_len=21)
    slopes = alibi_slopes(3)
    full = attention(q, k, v, causal=True, alibi_slopes=slopes)
    last = attention(q[:, :, -1:], k, v, causal=True, alibi_slopes=slopes)
    check(last, full[:, :, -1:], torch.float32, "decode vs full")


@pytest.mark.parametrize("bidirectional", [True, False])
def test_t5_bias_by_offset_reproduces_the_module_bias(bidirectional):
    module = t5_module(3, bidirectional)
    per_offset = t5_bias_by_offset(module, 13, 21)
    assert per_offset.shape == (3, 13 + 21 - 1)
    index = torch.arange(21)[None, :] - torch.arange(21 - 13, 21)[:, None] + 20  # j - i + k_len - 1
    torch.testing.assert_close(per_offset[:, index], module(13, 21), atol=0, rtol=0)
    table = module.bias_table.weight  # the table form, with the settings spelled out
    torch.testing.assert_close(t5_bias_by_offset(table, 13, 21, bidirectional=bidirectional, num_buckets=8,
                                                 max_distance=20), per_offset, atol=0, rtol=0)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_t5_kernel_against_the_module_bias_directly(causal):
    module = t5_module(3, not causal, seed=1)
    q, k, v = qkv(seed=2)
    with torch.no_grad():
        out = attention(q, k, v, causal=causal, relative_bias=t5_bias_by_offset(module, 13, 21))
        expected = reference_attention(q, k, v, bias=module(13, 21), causal=causal)
    check(out, expected, torch.float32, "T5 vs module bias")


def test_cross_attention_without_position_allows_more_queries_than_keys():
    q, k, v = qkv(q_len=21, k_len=13)
    check(attention(q, k, v, causal=False), reference_attention(q, k, v), torch.float32, "q_len > k_len")


def test_custom_scale_and_strided_inputs():
    q, k, v = qkv(batch=1, heads=3, q_len=13, k_len=13)
    q_t = q.transpose(1, 2).contiguous().transpose(1, 2)  # [b, h, s, d] view of [b, s, h, d] storage
    assert not q_t.is_contiguous()
    out = attention(q_t, k, v, causal=True, sm_scale=0.3)
    check(out, reference_attention(q, k, v, causal=True, sm_scale=0.3), torch.float32, "sm_scale, strides")


def test_gradients_flow_through_the_reference_backward():
    q, k, v = qkv(batch=1, q_len=7, k_len=9)
    slopes = alibi_slopes(3)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    attention(*leaves, causal=True, alibi_slopes=slopes).sum().backward()
    ref_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    reference_attention(*ref_leaves, bias=alibi_bias(slopes, 7, 9), causal=True).sum().backward()
    for name, a, b in zip("qkv", leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, **TOLERANCES[torch.float32], msg=lambda m: f"d{name}: {m}")


def _bad_cases():
    q, k, v = qkv(batch=1, q_len=5, k_len=7)
    return [
        ("3-D q", lambda: attention(q[0], k, v), "4-D"),
        ("integer dtype", lambda: attention(q.long(), k.long(), v.long()), "float32, float16 or bfloat16"),
        ("mixed dtypes", lambda: attention(q.half(), k, v), "share a dtype"),
        ("head_dim mismatch", lambda: attention(q, k[..., :8], v[..., :8]), "head_dim mismatch"),
        ("v with other keys", lambda: attention(q, k, v[:, :, :6]), "v must have k's shape"),
        ("fewer key heads", lambda: attention(q, k[:, :1], v[:, :1]), "[batch, heads]"),
        ("causal with q_len > k_len", lambda: attention(k, q, q, causal=True), "q_len <= k_len"),
        ("slopes of the wrong length", lambda: attention(q, k, v, alibi_slopes=alibi_slopes(4)), "[heads] = [3]"),
        ("both biases", lambda: attention(q, k, v, alibi_slopes=alibi_slopes(3),
                                          relative_bias=torch.zeros(3, 11)), "not both"),
        ("relative bias of the wrong length", lambda: attention(q, k, v, relative_bias=torch.zeros(3, 7)),
         "q_len + k_len - 1"),
        ("a materialised L x L bias", lambda: attention(q, k, v, relative_bias=torch.zeros(3, 5, 7)),
         "q_len + k_len - 1"),
        ("negative sm_scale", lambda: attention(q, k, v, sm_scale=-1.0), "sm_scale"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_arguments_raise_before_any_launch(case, no_launch):
    _, call, words = case
    with pytest.raises(ValueError) as info:
        call()
    assert words in str(info.value), f"the message should name the problem ({words!r}): {info.value}"
