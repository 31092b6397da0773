"""Tests for solutions/mla.py: DeepSeek-V2 Multi-head Latent Attention (arXiv 2405.04434, section 2.1)."""

import math

import pytest
import torch

from solutions.mla import (
    MLACache,
    MLAConfig,
    MultiHeadLatentAttention,
    kv_cache_elements_per_token,
    rope_absorbed_score_matrix,
)
from solutions.rope import rope_inv_freq

SMALL = dict(hidden_size=24, num_heads=3, kv_lora_rank=10, qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5)


def make_mla(seed=0, **overrides):
    """A float64 layer whose every parameter (RMSNorm gains too) is random, so no weight hides a bug."""
    config = MLAConfig(**{**SMALL, **overrides})
    module = MultiHeadLatentAttention(config).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "layernorm" in name:
                p.copy_(1.0 + 0.5 * torch.rand(p.shape, generator=g, dtype=torch.float64))
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(p.shape[1]))
    return module


def hidden(batch, seq, seed=1, size=SMALL["hidden_size"]):
    return torch.randn(batch, seq, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def decode(module, x, chunks, mode, cache=None):
    """Feed ``x`` through ``module`` in consecutive chunks of the given sizes, sharing one cache."""
    cache = MLACache() if cache is None else cache
    outs, start = [], 0
    for size in chunks:
        outs.append(module(x[:, start:start + size], cache=cache, mode=mode))
        start += size
    assert start == x.shape[1]
    return torch.cat(outs, dim=1), cache


# ---- an independent oracle: eqs. 9-19 token by token, head by head, with explicit rotation matrices ----

def rotation_matrix(position, dim, base, interleaved):
    r = torch.zeros(dim, dim, dtype=torch.float64)
    for i in range(dim // 2):
        # rope_inv_freq rounds each frequency to float32 once (documented); the oracle does the same.
        angle = position * torch.tensor(base ** (-2.0 * i / dim), dtype=torch.float32).item()
        a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + dim // 2)
        r[a, a], r[a, b], r[b, a], r[b, b] = math.cos(angle), -math.sin(angle), math.sin(angle), math.cos(angle)
    return r


def rms_norm(x, gain, eps):
    return x / torch.sqrt((x * x).mean() + eps) * gain


def paper_mla(module, x, start=0):
    c = module.config
    n_h, d_h, d_r, d_v, d_c = c.num_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank
    scale = 1 / math.sqrt(d_h + d_r) if c.softmax_scale is None else c.softmax_scale
    w_kv_a, w_kv_b = module.kv_a_proj_with_mqa.weight, module.kv_b_proj.weight.view(n_h, d_h + d_v, d_c)
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        rot = [rotation_matrix(start + t, d_r, c.rope_base, c.rope_interleaved) for t in range(x.shape[1])]
        c_kv = [rms_norm(w_kv_a[:d_c] @ h, module.kv_a_layernorm.weight, c.norm_eps) for h in x[b]]  # eq. 9
        k_r = [rot[t] @ (w_kv_a[d_c:] @ h) for t, h in enumerate(x[b])]  # eq. 15
        for t, h in enumerate(x[b]):
            if c.q_lora_rank is None:
                q_all = module.q_proj.weight @ h
            else:
                c_q = rms_norm(module.q_a_proj.weight @ h, module.q_a_layernorm.weight, c.norm_eps)  # eq. 12
                q_all = module.q_b_proj.weight @ c_q  # eqs. 13-14
            heads = []
            for i in range(n_h):
                q_i = q_all.view(n_h, d_h + d_r)[i]
                q = torch.cat((q_i[:d_h], rot[t] @ q_i[d_h:]))  # eq. 16
                keys = torch.stack([torch.cat((w_kv_b[i, :d_h] @ c_kv[j], k_r[j])) for j in range(t + 1)])
                values = torch.stack([w_kv_b[i, d_h:] @ c_kv[j] for j in range(t + 1)])  # eqs. 10-11, 17
                heads.append(torch.softmax(keys @ q * scale, dim=0) @ values)  # eq. 18
            out[b, t] = module.o_proj.weight @ torch.cat(heads)  # eq. 19
    return out


@pytest.mark.parametrize("mode", ["naive", "absorbed"])
@pytest.mark.parametrize("overrides", [{}, dict(q_lora_rank=7, rope_interleaved=True), dict(softmax_scale=0.3)])
def test_both_modes_match_the_paper_equations(mode, overrides):
    module = make_mla(**overrides)
    x = hidden(2, 5)
    expected = paper_mla(module, x, start=3)
    torch.testing.assert_close(module(x, start_pos=3, mode=mode), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("seq", [1, 2, 7, 16])
@pytest.mark.parametrize("q_lora_rank", [None, 8])
@pytest.mark.parametrize("interleaved", [False, True])
def test_absorbed_equals_naive_in_prefill(seq, q_lora_rank, interleaved):
    module = make_mla(seed=seq, q_lora_rank=q_lora_rank, rope_interleaved=interleaved)
    x = hidden(3, seq, seed=seq + 1)
    naive, absorbed = module(x, mode="naive"), module(x, mode="absorbed")
    torch.testing.assert_close(absorbed, naive, rtol=0, atol=1e-10)
    # Causality: the prefix's outputs do not depend on later tokens.
    torch.testing.assert_close(module(x[:, : (seq + 1) // 2], mode="absorbed"), absorbed[:, : (seq + 1) // 2],
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("prefill_mode, decode_mode", [("naive", "naive"), ("absorbed", "absorbed"),
                                                       ("naive", "absorbed"), ("absorbed", "naive")])
@pytest.mark.parametrize("chunks", [[1] * 9, [4, 1, 1, 3], [2, 3, 3, 1]])
def test_cached_decode_equals_full_prefill(prefill_mode, decode_mode, chunks):
    module = make_mla(q_lora_rank=8)
    x = hidden(2, 9, seed=5)
    full = module(x, mode="naive")
    cache = MLACache()
    first = module(x[:, : chunks[0]], cache=cache, mode=prefill_mode)
    rest, cache = decode(module, x[:, chunks[0]:], chunks[1:], decode_mode, cache)
    torch.testing.assert_close(torch.cat((first, rest), dim=1), full, rtol=0, atol=1e-10)
    assert len(cache) == 9


def test_cache_holds_only_the_latent_and_the_shared_rope_key():
    config = dict(q_lora_rank=8)
    module, (batch, n) = make_mla(**config), (2, 7)
    cache = MLACache()
    module(hidden(batch, n), cache=cache, mode="naive")
    per_token = kv_cache_elements_per_token("mla", kv_lora_rank=SMALL["kv_lora_rank"],
                                            qk_rope_head_dim=SMALL["qk_rope_head_dim"])
    assert cache.latent.shape == (batch, n, SMALL["kv_lora_rank"])
    assert cache.rope_key.shape == (batch, n, SMALL["qk_rope_head_dim"])
    assert cache.numel() == cache.latent.numel() + cache.rope_key.numel() == batch * n * per_token
    head_dims = SMALL["qk_nope_head_dim"] + SMALL["qk_rope_head_dim"] + SMALL["v_head_dim"]
    per_head_kv = SMALL["num_heads"] * head_dims
    assert per_token < per_head_kv  # what naive MHA-style caching of k and v would hold
    # The cached latent is c^KV after its RMSNorm (the released code's convention), not the raw projection.
    raw = module.kv_a_proj_with_mqa(hidden(batch, n))[..., : SMALL["kv_lora_rank"]]
    torch.testing.assert_close(cache.latent, module.kv_a_layernorm(raw), rtol=0, atol=1e-12)


def test_absorbed_mode_never_rebuilds_per_head_keys_or_values():
    module = make_mla()
    x = hidden(1, 4)
    expected = module(x, mode="absorbed")

    def forbidden(*args):
        raise AssertionError("kv_b_proj was applied to the latent")

    module.kv_b_proj.forward = forbidden
    torch.testing.assert_close(module(x, mode="absorbed"), expected, rtol=0, atol=0)
    with pytest.raises(AssertionError, match="kv_b_proj"):
        module(x, mode="naive")


@pytest.mark.parametrize("mode", ["naive", "absorbed"])
@pytest.mark.parametrize("interleaved", [False, True])
def test_shifting_all_positions_leaves_the_output_unchanged(mode, interleaved):
    module = make_mla(q_lora_rank=8, rope_interleaved=interleaved)
    x = hidden(2, 6)
    reference = module(x, start_pos=0, mode=mode)
    for shift in (1, 37, 1000):
        torch.testing.assert_close(module(x, start_pos=shift, mode=mode), reference, rtol=0, atol=1e-9)
    # ...but the positions do matter: a non-uniform change moves the output.
    spread = module(x, positions=torch.arange(6) * 3, mode=mode)
    assert (spread - reference).abs().max() > 1e-4


def test_explicit_positions_per_row_match_start_pos():
    module = make_mla()
    x = hidden(2, 5)
    positions = torch.stack((torch.arange(5) + 2, torch.arange(5) + 11))
    rows = torch.cat([module(x[i:i + 1], start_pos=int(positions[i, 0])) for i in range(2)])
    torch.testing.assert_close(module(x, positions=positions), rows, rtol=0, atol=1e-12)
    torch.testing.assert_close(module(x, positions=torch.arange(5) + 2), module(x, start_pos=2), rtol=0, atol=0)


def test_inv_freq_and_softmax_scale_overrides_are_used():
    x = hidden(1, 6)
    base = make_mla()
    same = make_mla(inv_freq=rope_inv_freq(SMALL["qk_rope_head_dim"], 10000.0),
                    softmax_scale=(SMALL["qk_nope_head_dim"] + SMALL["qk_rope_head_dim"]) ** -0.5)
    torch.testing.assert_close(same(x), base(x), rtol=0, atol=0)
    slower = make_mla(inv_freq=rope_inv_freq(SMALL["qk_rope_head_dim"], 10000.0) / 8)
    assert (slower(x) - base(x)).abs().max() > 1e-4
    assert (make_mla(softmax_scale=0.05)(x) - base(x)).abs().max() > 1e-4


def test_rope_blocks_absorption_but_only_through_the_offset():
    g = torch.Generator().manual_seed(3)
    w_q, w_k, x, y = (torch.randn(shape, generator=g, dtype=torch.float64) for shape in ((8, 5), (8, 6), 5, 6))
    inv_freq = rope_inv_freq(8).double()
    for interleaved in (False, True):
        m_2_7 = rope_absorbed_score_matrix(w_q, w_k, 2, 7, inv_freq, interleaved)
        q = rotation_matrix(2, 8, 10000.0, interleaved) @ w_q @ x
        k = rotation_matrix(7, 8, 10000.0, interleaved) @ w_k @ y
        explicit = q @ k
        torch.testing.assert_close(x @ m_2_7 @ y, explicit, rtol=0, atol=1e-10)
        torch.testing.assert_close(rope_absorbed_score_matrix(w_q, w_k, 12, 17, inv_freq, interleaved), m_2_7,
                                   rtol=0, atol=1e-10)
        torch.testing.assert_close(rope_absorbed_score_matrix(w_q, w_k, 4, 4, inv_freq, interleaved), w_q.T @ w_k,
                                   rtol=0, atol=1e-12)
        # A different offset needs a different matrix: no single precomputed W_q^T W_k serves all keys.
        assert (rope_absorbed_score_matrix(w_q, w_k, 2, 8, inv_freq, interleaved) - m_2_7).abs().max() > 1e-2


def test_kv_cache_elements_at_deepseek_v2_sizes():
    mha = kv_cache_elements_per_token("mha", num_heads=128, head_dim=128)
    mla = kv_cache_elements_per_token("mla", num_heads=128, head_dim=128, kv_lora_rank=512, qk_rope_head_dim=64)
    assert (mha, mla) == (32768, 576)
    assert kv_cache_elements_per_token("mqa", head_dim=128) == 256
    assert kv_cache_elements_per_token("gqa", num_heads=128, num_kv_heads=8, head_dim=128) == 2048
    # Table 1 of the paper: MLA's cache equals GQA's with 2.25 groups (d_c = 4 d_h, d^R_h = d_h / 2).
    assert mla / kv_cache_elements_per_token("mqa", head_dim=128) == 2.25
    assert mla / mha == pytest.approx(0.017578125)


@pytest.mark.parametrize("kind, kwargs, field", [
    ("mha", dict(head_dim=64), "num_heads"), ("gqa", dict(num_heads=8, head_dim=64), "num_kv_heads"),
    ("mqa", dict(num_heads=8), "head_dim"), ("mla", dict(kv_lora_rank=512), "qk_rope_head_dim"),
    ("mla", dict(kv_lora_rank=0, qk_rope_head_dim=64), "kv_lora_rank"),
    ("gqa", dict(num_heads=8, num_kv_heads=3, head_dim=64), "num_kv_heads"), ("mhla", {}, "kind"),
])
def test_kv_cache_elements_rejects_bad_arguments(kind, kwargs, field):
    with pytest.raises(ValueError, match=field):
        kv_cache_elements_per_token(kind, **kwargs)


@pytest.mark.parametrize("field, value", [
    ("qk_rope_head_dim", 5), ("qk_rope_head_dim", 0), ("num_heads", 0), ("kv_lora_rank", -4),
    ("hidden_size", 2.5), ("v_head_dim", 0), ("qk_nope_head_dim", -1), ("q_lora_rank", 0), ("rope_base", 1.0),
    ("softmax_scale", 0.0), ("inv_freq", torch.ones(3)),
])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        MLAConfig(**{**SMALL, field: value})


def test_forward_rejects_bad_inputs():
    module = make_mla()
    with pytest.raises(ValueError, match="mode"):
        module(hidden(1, 3), mode="absorb")
    with pytest.raises(ValueError, match="hidden_size"):
        module(hidden(1, 3, size=SMALL["hidden_size"] + 1))
    with pytest.raises(ValueError, match="hidden_size"):
        module(hidden(1, 3)[0])
    with pytest.raises(ValueError, match="not both"):
        module(hidden(1, 3), start_pos=0, positions=torch.arange(3))
    with pytest.raises(ValueError, match="positions"):
        module(hidden(2, 3), positions=torch.arange(4))
    cache = MLACache()
    module(hidden(2, 3), cache=cache)
    with pytest.raises(ValueError, match="batch"):
        module(hidden(1, 1), cache=cache)
