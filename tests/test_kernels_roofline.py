"""solutions.kernels.roofline: the bytes and FLOPs of each kernel's call, and the predicted time, as properties.

Each count is checked against something computed another way: tensor sizes from torch (``numel() *
element_size()``), the attended pairs from the package's own causal mask, the MLA cache from
`kv_cache_elements_per_token`, and the predictions from the datasheet figures in `solutions.kernels.devices`.
"""

import pytest
import torch

from solutions.attention import causal_mask
from solutions.kernels import roofline
from solutions.kernels.devices import A100_SXM, GPU, H100_SXM, H200_SXM
from solutions.mla import kv_cache_elements_per_token


def nbytes(*shape, dtype):
    return torch.empty(*shape, dtype=dtype, device="meta").numel() * torch.empty((), dtype=dtype).element_size()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_rope_bytes_are_twice_the_tensor_plus_the_table_rows(dtype):
    batch, seq, heads, head_dim = 4, 1024, 32, 128
    x_bytes = nbytes(batch, seq, heads, head_dim, dtype=dtype)
    row_bytes = 2 * nbytes(head_dim // 2, dtype=torch.float32)  # one cos row and one sin row
    shared = roofline.rope_cost(batch, seq, heads, head_dim, dtype=dtype)
    assert shared.bytes == 2 * x_bytes + seq * row_bytes  # the batch shares the position cache's rows
    per_row = roofline.rope_cost(batch, seq, heads, head_dim, dtype=dtype, per_row_offsets=True)
    per_token = roofline.rope_cost(batch, seq, heads, head_dim, dtype=dtype, per_token=True)
    assert per_row.bytes == per_token.bytes == 2 * x_bytes + batch * seq * row_bytes
    assert shared.flops == 6 * batch * seq * heads * head_dim // 2  # 6 per pair
    assert shared.intensity < 1 and not shared.tensor_cores


def test_rope_partial_rotary_moves_the_whole_tensor_but_rotates_part():
    full = roofline.rope_cost(2, 512, 32, 80, dtype=torch.bfloat16)
    partial = roofline.rope_cost(2, 512, 32, 80, rotary_dim=32, dtype=torch.bfloat16)
    x_bytes = nbytes(2, 512, 32, 80, dtype=torch.bfloat16)
    assert partial.bytes == 2 * x_bytes + 512 * 2 * nbytes(16, dtype=torch.float32)  # the copied dims move too
    assert partial.flops * 80 == full.flops * 32


@pytest.mark.parametrize("q_len,k_len", [(1, 1), (37, 37), (1, 4096), (100, 300), (4096, 4096)])
def test_attended_pairs_count_the_causal_mask(q_len, k_len):
    assert roofline.attended_pairs(q_len, k_len, causal=True) == int(causal_mask(q_len, k_len).sum())
    assert roofline.attended_pairs(q_len, k_len, causal=False) == q_len * k_len


def test_attention_flops_and_bytes():
    batch, heads, length, head_dim = 2, 16, 4096, 128
    full = roofline.attention_cost(batch, heads, length, length, head_dim, causal=False, bias="none")
    assert full.flops == 4 * batch * heads * length * length * head_dim
    causal = roofline.attention_cost(batch, heads, length, length, head_dim, causal=True, bias="none")
    assert causal.flops == 4 * batch * heads * head_dim * length * (length + 1) // 2
    assert 0.5 < causal.flops / full.flops < 0.5 + 1 / length
    qkvo = 4 * nbytes(batch, heads, length, head_dim, dtype=torch.bfloat16)
    assert full.bytes == causal.bytes == qkvo  # causal reads every key: the last query block needs them all
    alibi = roofline.attention_cost(batch, heads, length, length, head_dim, bias="alibi")
    t5 = roofline.attention_cost(batch, heads, length, length, head_dim, bias="per_offset")
    assert alibi.bytes - qkvo == nbytes(heads, dtype=torch.float32)
    assert t5.bytes - qkvo == nbytes(heads, 2 * length - 1, dtype=torch.float32)
    assert full.tensor_cores and not roofline.attention_cost(1, 1, 16, 16, 64, torch.float32).tensor_cores
    with pytest.raises(ValueError, match="bias"):
        roofline.attention_cost(1, 1, 16, 16, 64, bias="t5")


def test_mla_decode_bytes_are_the_latent_cache():
    batch, heads, tokens, rank, rope_dim = 1, 128, 16384, 512, 64  # DeepSeek-V2/V3, one sequence of 16k
    cost = roofline.mla_decode_cost(batch, heads, tokens, rank, rope_dim, torch.bfloat16)
    cache = batch * tokens * 2 * kv_cache_elements_per_token("mla", kv_lora_rank=rank, qk_rope_head_dim=rope_dim)
    assert cache / cost.bytes > 0.98  # the queries and the output are one token's worth per head
    short = roofline.mla_decode_cost(batch, heads, 1024, rank, rope_dim, torch.bfloat16)
    assert short.bytes / cost.bytes > 1024 / 16384  # with a shorter cache the per-head part weighs more
    assert cost.bytes - cache == 2 * batch * heads * (rank + rope_dim + rank)
    split = roofline.mla_decode_cost(batch, heads, tokens, rank, rope_dim, torch.bfloat16, num_splits=64)
    assert split.bytes - cost.bytes == 2 * 4 * batch * heads * 64 * (rank + 1)  # fp32 partials, written and read
    assert cost.flops == batch * heads * tokens * (2 * (rank + rope_dim) + 2 * rank)
    # 128 heads share each cached byte: about 240 FLOPs per byte, near the H100's ridge point
    assert 230 < cost.intensity < 245


def test_predictions_use_the_datasheet_figures():
    rope = roofline.rope_cost(4, 4096, 32, 128, dtype=torch.bfloat16)
    h100, h200 = roofline.predict(rope, H100_SXM), roofline.predict(rope, H200_SXM)
    assert h100.bound == "memory" and h100.seconds == rope.bytes / 3.35e12
    assert h100.seconds / h200.seconds == pytest.approx(4.8 / 3.35)
    attention = roofline.attention_cost(2, 16, 16384, 16384, 128, causal=True)
    prediction = roofline.predict(attention, H100_SXM)
    assert prediction.bound == "compute" and prediction.seconds == attention.flops / (1979e12 / 2)
    fp32 = roofline.attention_cost(2, 16, 16384, 16384, 128, dtype=torch.float32)
    assert roofline.predict(fp32, A100_SXM).compute_seconds == fp32.flops / 19.5e12
    assert 290 < H100_SXM.tensor_flops / H100_SXM.memory_bandwidth < 300  # the ridge point, bf16
    with pytest.raises(ValueError, match="datasheet"):
        roofline.predict(rope, GPU("unnamed", (9, 0), 132, 232448))


def test_mla_splits_keep_the_partials_under_a_quarter_of_the_cache():
    """The split rule of `mla_decode_launch_config`, in the roofline's terms (its docstring's numbers)."""
    from solutions.kernels.mla_decode_kernel import _shortest_split, mla_decode_launch_config

    assert _shortest_split(128, 512, 64, torch.bfloat16) == 1824
    assert _shortest_split(16, 512, 64, torch.bfloat16) == 256
    cache = roofline.mla_decode_cost(1, 128, 16384, 512, 64, torch.bfloat16)
    many = roofline.mla_decode_cost(1, 128, 16384, 512, 64, torch.bfloat16, num_splits=64)
    assert round((many.bytes - cache.bytes) / (16384 * 576 * 2), 1) == 1.8  # 64 splits: partials 1.8x the cache
    for batch, heads, tokens in [(1, 128, 16384), (8, 128, 4096), (32, 16, 4096), (1, 16, 16384)]:
        config = mla_decode_launch_config(batch, heads, 512, 64, tokens, torch.bfloat16, H100_SXM)
        cost = roofline.mla_decode_cost(batch, heads, tokens, 512, 64, torch.bfloat16, num_splits=config.num_splits)
        cache_bytes = batch * tokens * 576 * 2
        assert cache_bytes / cost.bytes > 0.75, (batch, heads, tokens, config.num_splits)


def test_gpu_of_reads_the_driver_and_matches_datasheets(monkeypatch):
    """`devices.gpu_of` without a GPU: the driver's answer is faked; the datasheet figures attach by name."""
    import types

    from solutions.kernels import devices

    def properties(name, major, minor, sms, optin=None):
        fields = dict(name=name, major=major, minor=minor, multi_processor_count=sms)
        if optin is not None:
            fields["shared_memory_per_block_optin"] = optin
        return types.SimpleNamespace(**fields)

    cases = {0: properties("NVIDIA H100 80GB HBM3", 9, 0, 132, 232448), 1: properties("NVIDIA H100 PCIe", 9, 0, 114),
             2: properties("NVIDIA A40", 8, 6, 84), 3: properties("NVIDIA H200", 9, 0, 132, 232448)}
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: cases[index])
    devices._gpu_of_index.cache_clear()
    try:
        sxm, pcie, a40, h200 = (devices.gpu_of(index) for index in range(4))
    finally:
        devices._gpu_of_index.cache_clear()
    assert (sxm.memory_bandwidth, sxm.tensor_flops, sxm.arch) == (3.35e12, 989.5e12, "sm_90")
    assert pcie.memory_bandwidth is None and pcie.shared_memory_per_block == 232448 and pcie.sm_count == 114
    assert a40.shared_memory_per_block == 101376 and a40.memory_bandwidth is None  # from the capability table
    assert h200.memory_bandwidth == 4.8e12
