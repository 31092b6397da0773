"""solutions.kernels.mla_decode: one absorbed MLA decode step (DeepSeek-V2, arXiv 2405.04434), interpreted.

Oracles: `mla_decode_reference` (reference_attention over [c^KV ; k^R]) and, end to end, the layer
`solutions.mla.MultiHeadLatentAttention` decoding one token in ``mode="absorbed"`` (and ``"naive"``), one
sequence at a time, against one batched ragged kernel call. Shapes are not powers of two (5 heads, rank 40,
cache 37) and the cache lengths include 1 and the full cache.
"""

import math

import pytest
import torch

from solutions.kernels import last_run, mla_decode, mla_decode_reference
from solutions.kernels.mla_decode_kernel import TOLERANCES
from solutions.mla import MLACache, MLAConfig, MultiHeadLatentAttention
from solutions.rope import apply_rope, rope_cos_sin


def inputs(batch=3, heads=5, rank=40, rope_dim=8, max_len=37, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(*shape, generator=g).to(dtype) for shape in
               ((batch, heads, rank), (batch, heads, rope_dim), (batch, max_len, rank), (batch, max_len, rope_dim))]
    return tensors


LENGTHS = torch.tensor([1, 37, 20])  # a row of length 1, a full row, one in between


def check(actual, expected, dtype, what):
    torch.testing.assert_close(actual.float(), expected.float(), **TOLERANCES[dtype],
                               msg=lambda m: f"{what} ({dtype}): kernel and reference disagree. {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("num_splits", [None, 3], ids=["one_pass", "split_k"])
def test_ragged_batch_matches_reference(dtype, num_splits):
    q_latent, q_rope, latent, rope_key = inputs(dtype=dtype)
    out = mla_decode(q_latent, q_rope, latent, rope_key, LENGTHS, sm_scale=0.2, num_splits=num_splits)
    assert last_run("mla_decode").backend == "interpreter"
    assert out.shape == (3, 5, 40) and out.dtype == dtype
    check(out, mla_decode_reference(q_latent, q_rope, latent, rope_key, LENGTHS, sm_scale=0.2), dtype,
          f"num_splits={num_splits}")


def test_entries_past_a_rows_length_are_never_read():
    q_latent, q_rope, latent, rope_key = inputs()
    out = mla_decode(q_latent, q_rope, latent, rope_key, LENGTHS, sm_scale=0.2, num_splits=4)
    poisoned_latent, poisoned_rope = latent.clone(), rope_key.clone()
    for b, length in enumerate(LENGTHS.tolist()):
        poisoned_latent[b, length:] = float("nan")
        poisoned_rope[b, length:] = float("nan")
    again = mla_decode(q_latent, q_rope, poisoned_latent, poisoned_rope, LENGTHS, sm_scale=0.2, num_splits=4)
    torch.testing.assert_close(again, out, atol=0, rtol=0)
    # a row of length 1 attends to its one token: the output is that latent exactly (softmax of one score)
    torch.testing.assert_close(out[0], latent[0, 0].expand(5, 40), **TOLERANCES[torch.float32])


def test_more_splits_than_tiles_and_many_heads():
    # 9 heads (a padded head block of 16 under the interpreter). Nine splits of a 37-token cache would be 5
    # tokens each, but a split is whole tiles of 16 tokens, so 3 splits run (0-15, 16-31, 32-36) and the merge
    # runs once per (head, row). The rows of lengths 1 and 20 leave splits empty.
    q_latent, q_rope, latent, rope_key = inputs(heads=9, seed=4)
    out = mla_decode(q_latent, q_rope, latent, rope_key, LENGTHS, sm_scale=0.2, num_splits=9)
    assert last_run("mla_decode").grids == ((1, 3, 3), (9, 3))
    check(out, mla_decode_reference(q_latent, q_rope, latent, rope_key, LENGTHS, sm_scale=0.2), torch.float32,
          "9 splits asked, 3 run")


def test_a_split_empty_for_every_row():
    # Rows shorter than the padded cache (a cache allocated for 37 tokens): with 3 splits of 16 tokens, the last
    # split (tokens 32-36) holds no token of any row, so every row merges a log-sum-exp of -inf.
    q_latent, q_rope, latent, rope_key = inputs(seed=5)
    lengths = torch.tensor([1, 30, 20])
    out = mla_decode(q_latent, q_rope, latent, rope_key, lengths, sm_scale=0.2, num_splits=3)
    assert last_run("mla_decode").grids[0] == (1, 3, 3) and 2 * 16 >= int(lengths.max())
    check(out, mla_decode_reference(q_latent, q_rope, latent, rope_key, lengths, sm_scale=0.2), torch.float32,
          "a split empty for every row")


# ------------------------------------------------------------- end to end against the MLA layer


CONFIG = dict(hidden_size=32, num_heads=3, kv_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=6, v_head_dim=7,
              q_lora_rank=16)


def make_mla(seed=0, **overrides):
    module = MultiHeadLatentAttention(MLAConfig(**{**CONFIG, **overrides}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "layernorm" in name:
                p.copy_(1.0 + 0.5 * torch.rand(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
    return module


def absorbed_query(module, hidden, position):
    """The decode token's (q_latent, q_rope), as the layer's absorbed path forms them (DeepSeek-V2 eqs. 12-14
    with W^UK folded into the query)."""
    c = module.config
    cos, sin = rope_cos_sin(module.inv_freq, torch.tensor([position]), c.rope_attention_factor)
    q = module.q_b_proj(module.q_a_layernorm(module.q_a_proj(hidden)))  # [1, 1, heads * (nope + rope)]
    q = q.view(1, c.num_heads, c.qk_head_dim)
    q_nope, q_rope = q.split([c.qk_nope_head_dim, c.qk_rope_head_dim], dim=-1)
    q_rope = apply_rope(q_rope, cos, sin, c.rope_interleaved)  # [1, heads, d_R] rotated at `position`
    w_uk = module.kv_b_proj.weight.view(c.num_heads, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
    return torch.einsum("bhd,hdc->bhc", q_nope, w_uk[:, :c.qk_nope_head_dim]), q_rope


@pytest.mark.parametrize("interleaved", [False, True], ids=["half_split", "interleaved"])
def test_ragged_batched_kernel_equals_the_layers_absorbed_decode(interleaved):
    module = make_mla(rope_interleaved=interleaved)
    c = module.config
    # tokens already cached per sequence: the decode token makes lengths 1, 18, 5, so the 18-token padded cache
    # is two tiles of 16 under the interpreter, and num_splits=2 runs two splits (the second empty for rows 0, 2)
    prefixes = [0, 17, 4]
    g = torch.Generator().manual_seed(5)
    max_len = max(prefixes) + 1
    latent = torch.zeros(3, max_len, c.kv_lora_rank)
    rope_key = torch.zeros(3, max_len, c.qk_rope_head_dim)
    q_latent, q_rope, expected = [], [], {"absorbed": [], "naive": []}
    with torch.no_grad():
        for b, prefix in enumerate(prefixes):
            tokens = torch.randn(1, prefix + 1, c.hidden_size, generator=g)
            for mode in ("absorbed", "naive"):
                cache = MLACache()
                if prefix:
                    module(tokens[:, :prefix], cache=cache, mode=mode)
                expected[mode].append(module(tokens[:, prefix:], cache=cache, mode=mode))  # the decode step
            latent[b, :prefix + 1], rope_key[b, :prefix + 1] = cache.latent[0], cache.rope_key[0]
            ql, qr = absorbed_query(module, tokens[:, prefix:], prefix)
            q_latent.append(ql)
            q_rope.append(qr)
        lengths = torch.tensor([p + 1 for p in prefixes])
        out_latent = mla_decode(torch.cat(q_latent), torch.cat(q_rope), latent, rope_key, lengths,
                                sm_scale=c.scale, num_splits=2)
        assert last_run("mla_decode").backend == "interpreter"
        assert last_run("mla_decode").grids[0][2] == 2  # the splits that ran, merged by the second launch
        w_uv = module.kv_b_proj.weight.view(c.num_heads, -1, c.kv_lora_rank)[:, c.qk_nope_head_dim:]
        out = module.o_proj(torch.einsum("bhc,hdc->bhd", out_latent, w_uv).reshape(3, 1, -1))  # W^UV, W^O
    for mode in ("absorbed", "naive"):
        torch.testing.assert_close(out, torch.cat(expected[mode]), atol=2e-5, rtol=2e-5,
                                   msg=lambda m: f"kernel decode vs MultiHeadLatentAttention({mode!r}): {m}")


# ------------------------------------------------------------------------------- argument checks


def _bad_cases():
    ql, qr, lat, rk = inputs()
    return [
        ("4-D q_latent", lambda: mla_decode(ql[:, :, None], qr, lat, rk, LENGTHS, sm_scale=0.2), "3-D"),
        ("integer cache", lambda: mla_decode(ql, qr, lat.long(), rk, LENGTHS, sm_scale=0.2), "float32"),
        ("mixed dtypes", lambda: mla_decode(ql.half(), qr, lat, rk, LENGTHS, sm_scale=0.2), "share a dtype"),
        ("rank mismatch", lambda: mla_decode(ql[..., :32], qr, lat, rk, LENGTHS, sm_scale=0.2), "kv_lora_rank=32"),
        ("rope dim mismatch", lambda: mla_decode(ql, qr[..., :6], lat, rk, LENGTHS, sm_scale=0.2), "rope_dim"),
        ("rope cache length mismatch", lambda: mla_decode(ql, qr, lat, rk[:, :30], LENGTHS, sm_scale=0.2),
         "max_len"),
        ("q_rope heads mismatch", lambda: mla_decode(ql, qr[:, :4], lat, rk, LENGTHS, sm_scale=0.2), "q_rope"),
        ("lengths of the wrong shape", lambda: mla_decode(ql, qr, lat, rk, LENGTHS[:2], sm_scale=0.2), "[batch]"),
        ("float lengths", lambda: mla_decode(ql, qr, lat, rk, LENGTHS.float(), sm_scale=0.2), "integer"),
        ("a zero length", lambda: mla_decode(ql, qr, lat, rk, torch.tensor([0, 5, 5]), sm_scale=0.2), "[1, max_len"),
        ("a length past the cache", lambda: mla_decode(ql, qr, lat, rk, torch.tensor([1, 38, 5]), sm_scale=0.2),
         "[1, max_len = 37]"),
        ("zero sm_scale", lambda: mla_decode(ql, qr, lat, rk, LENGTHS, sm_scale=0.0), "sm_scale"),
        ("zero splits", lambda: mla_decode(ql, qr, lat, rk, LENGTHS, sm_scale=0.2, num_splits=0), "num_splits"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_arguments_raise_before_any_launch(case, no_launch):
    _, call, words = case
    with pytest.raises(ValueError) as info:
        call()
    assert words in str(info.value), f"the message should name the problem ({words!r}): {info.value}"


def test_sm_scale_is_required():
    ql, qr, lat, rk = inputs()
    with pytest.raises(TypeError):
        mla_decode(ql, qr, lat, rk, LENGTHS)


def test_inputs_requiring_grad_run_the_differentiable_reference():
    ql, qr, lat, rk = inputs()
    ql.requires_grad_()
    out = mla_decode(ql, qr, lat, rk, LENGTHS, sm_scale=0.2)
    run = last_run("mla_decode")
    assert run.backend == "torch-fallback" and "grad" in run.reason
    out.sum().backward()
    assert ql.grad is not None and ql.grad.shape == ql.shape
