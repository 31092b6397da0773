"""One decode step of weight-absorbed Multi-head Latent Attention (MLA) over the latent KV cache, in Triton.

DeepSeek-AI, "DeepSeek-V2", 2024 (arXiv 2405.04434), section 2.1: the cache holds, per token, the normalised
latent ``c^KV`` (``kv_lora_rank`` = d_c numbers) and the shared rotary key ``k^R`` (``qk_rope_head_dim``),
and nothing per head. With W^UK absorbed into the query (`solutions.mla.MultiHeadLatentAttention`,
``mode="absorbed"``), head i of the new token scores cached token t as::

    s_i,t = sm_scale * (q_latent_i . c^KV_t + q^R_i . k^R_t),   q_latent_i = W^UK_i^T q^C_i  (width d_c)

and its output, still in latent space, is ``o_i = sum_t softmax_t(s_i,t) c^KV_t`` (the caller applies W^UV
and W^O). So decoding is multi-query attention with one (d_c + d^R)-wide key per token that is also the value:
every head reads the *same* cache. A decode step is bound by reading the cache from memory, and the kernel's
one job is to read each cache tile once for as many heads as possible:

* one program handles a block of ``BLOCK_H`` heads of one sequence: each ``[BLOCK_T, d_c]`` tile of ``c^KV``
  is loaded once and used by all of them, twice (for the scores and for the weighted sum);
* the head blocks of one sequence are adjacent in the launch order (grid axis 0), so when the heads do not fit
  one block the other blocks find the tile in L2;
* split-K over the cache length ("flash-decoding"): with a batch of a few sequences there are too few
  (sequence, head block) programs to keep the GPU busy, so the cache is cut into ``num_splits`` chunks, each
  program returns a partial output and its log-sum-exp, and a second small kernel merges them (the
  online-softmax merge of Milakov & Gimelshein 2018, as in FlashAttention, Dao et al. 2022);
* per-row ``cache_lengths``: sequences of a batch have different lengths (a ragged batch in a padded cache).

The torch oracle, `mla_decode_reference`, is `solutions.attention.reference_attention` over the concatenated
``[c^KV ; k^R]`` keys with ``c^KV`` as the values. Triton: Tillet et al., MAPL 2019.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import reference_attention
from . import dispatch
from ._common import LOG2E, SUPPORTED_DTYPES, cdiv, check_float_tensor, check_integer_vector, \
    check_shared_dtype_and_device, is_positive_number, next_power_of_2
from .devices import GPU, SHARED_MEMORY_PER_BLOCK, gpu_of

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton wheel for this platform: the dispatcher runs `mla_decode_reference`
    from ._no_triton import tl, triton

TOLERANCES = {
    # fp32: exact products; only the order of the sums differs (and, with splits, the merge).
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    # fp16/bf16: the probabilities are rounded to the cache dtype before the weighted sum, and the output is
    # stored in it; the reference is fp32 from the same inputs.
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}
"""Agreement of `mla_decode` with `mla_decode_reference` per dtype (``torch.testing.assert_close`` keywords)."""

@triton.jit
def _mla_decode_kernel(
    Q_LAT, Q_ROPE, C_KV, K_ROPE, LENGTHS, OUT, LSE,
    num_heads, tokens_per_split, sm_scale_log2,
    stride_qb, stride_qh, stride_qc,
    stride_qrb, stride_qrh, stride_qrr,
    stride_cb, stride_ct, stride_cc,
    stride_kb, stride_kt, stride_kr,
    stride_ob, stride_oh, stride_os, stride_oc,
    stride_lb, stride_lh, stride_ls,
    RANK: tl.constexpr, RANK_PAD: tl.constexpr, ROPE: tl.constexpr, ROPE_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr, SPLIT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    head_block = tl.program_id(0)  # fastest-varying: the head blocks of one sequence run side by side
    b = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    length = tl.load(LENGTHS + b).to(tl.int32)
    start = split * tokens_per_split
    end = tl.minimum(start + tokens_per_split, length)  # a split past the row's length does no work

    heads = head_block * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = heads < num_heads
    cols = tl.arange(0, RANK_PAD)
    c_ok = cols < RANK
    rdim = tl.arange(0, ROPE_PAD)
    r_ok = rdim < ROPE

    q_lat = tl.load(Q_LAT + b * stride_qb + heads[:, None] * stride_qh + cols[None, :] * stride_qc,
                    mask=h_ok[:, None] & c_ok[None, :], other=0.0).to(DOT_DTYPE)
    q_rope = tl.load(Q_ROPE + b * stride_qrb + heads[:, None] * stride_qrh + rdim[None, :] * stride_qrr,
                     mask=h_ok[:, None] & r_ok[None, :], other=0.0).to(DOT_DTYPE)

    # Online-softmax statistics and the latent-space accumulator, fp32 (see the attention kernel for why).
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, RANK_PAD], dtype=tl.float32)

    for t0 in range(start, end, BLOCK_T):
        tok = t0 + tl.arange(0, BLOCK_T)
        t_ok = tok < end
        # The one read of this tile from memory, shared by BLOCK_H heads: the content part is used as the
        # key (scores) and again as the value (weighted sum).
        c_kv = tl.load(C_KV + b * stride_cb + tok[:, None].to(tl.int64) * stride_ct + cols[None, :] * stride_cc,
                       mask=t_ok[:, None] & c_ok[None, :], other=0.0)
        k_r = tl.load(K_ROPE + b * stride_kb + tok[:, None].to(tl.int64) * stride_kt + rdim[None, :] * stride_kr,
                      mask=t_ok[:, None] & r_ok[None, :], other=0.0).to(DOT_DTYPE)
        c_dot = c_kv.to(DOT_DTYPE)
        scores = (tl.dot(q_lat, tl.trans(c_dot), input_precision=DOT_PRECISION)
                  + tl.dot(q_rope, tl.trans(k_r), input_precision=DOT_PRECISION))  # [BLOCK_H, BLOCK_T], fp32
        scores = tl.where(t_ok[None, :], scores * sm_scale_log2, float("-inf"))  # exp2 domain
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        p = tl.math.exp2(scores - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        p = p.to(C_KV.dtype.element_ty).to(DOT_DTYPE)  # tensor-core operand dtype; accumulation stays fp32
        acc = acc * alpha[:, None] + tl.dot(p, c_dot, input_precision=DOT_PRECISION)
        m_i = m_new

    # An empty split (start >= length) has l_i = 0: it writes zeros and a log-sum-exp of -inf, which the
    # merge weighs by exp2(-inf) = 0.
    empty = l_i == 0.0
    out = acc / tl.where(empty, 1.0, l_i)[:, None]
    o_ptrs = OUT + b * stride_ob + heads[:, None] * stride_oh + split * stride_os + cols[None, :] * stride_oc
    tl.store(o_ptrs, out.to(OUT.dtype.element_ty), mask=h_ok[:, None] & c_ok[None, :])
    if SPLIT:
        lse = tl.where(empty, float("-inf"), m_i + tl.math.log2(tl.where(empty, 1.0, l_i)))  # log2 domain
        tl.store(LSE + b * stride_lb + heads * stride_lh + split * stride_ls, lse, mask=h_ok)


@triton.jit
def _mla_merge_kernel(
    PART, LSE, OUT,
    num_splits,
    stride_pb, stride_ph, stride_ps, stride_pc,
    stride_lb, stride_lh, stride_ls,
    stride_ob, stride_oh, stride_oc,
    RANK: tl.constexpr, RANK_PAD: tl.constexpr, SPLITS_PAD: tl.constexpr,
):
    # out = sum_s w_s o_s / sum_s w_s with w_s = 2^(lse_s - max lse): each split's softmax renormalised to the
    # whole row. Split 0 always holds token 0 (lengths >= 1), so the max is finite.
    h = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    s = tl.arange(0, SPLITS_PAD)
    lse_row = LSE + b * stride_lb + h * stride_lh
    lse_max = tl.max(tl.load(lse_row + s * stride_ls, mask=s < num_splits, other=float("-inf")), 0)
    cols = tl.arange(0, RANK_PAD)
    c_ok = cols < RANK
    # One split's row at a time: holding all [splits, rank] partial outputs at once would spill registers.
    acc = tl.zeros([RANK_PAD], dtype=tl.float32)
    total = tl.zeros([1], dtype=tl.float32)
    for split in range(0, num_splits):
        w = tl.math.exp2(tl.load(lse_row + split * stride_ls) - lse_max)
        part = tl.load(PART + b * stride_pb + h * stride_ph + split * stride_ps + cols * stride_pc, mask=c_ok,
                       other=0.0)
        acc += w * part
        total += w
    tl.store(OUT + b * stride_ob + h * stride_oh + cols * stride_oc, (acc / total).to(OUT.dtype.element_ty),
             mask=c_ok)


def _check(q_latent, q_rope, latent_cache, rope_cache, cache_lengths, sm_scale, num_splits=None):
    named = {"q_latent": q_latent, "q_rope": q_rope, "latent_cache": latent_cache, "rope_cache": rope_cache}
    forms = ("[batch, heads, kv_lora_rank]", "[batch, heads, rope_dim]", "[batch, max_len, kv_lora_rank]",
             "[batch, max_len, rope_dim]")
    for (name, t), form in zip(named.items(), forms):
        check_float_tensor(name, t, 3, form)
    check_shared_dtype_and_device(named)
    batch, heads, rank = q_latent.shape
    max_len = latent_cache.shape[1]
    if q_rope.shape[:2] != (batch, heads):
        raise ValueError(f"q_rope must be [batch, heads, rope_dim] = [{batch}, {heads}, ...]; "
                         f"got {tuple(q_rope.shape)}")
    if latent_cache.shape[0] != batch or latent_cache.shape[2] != rank:
        raise ValueError(f"latent_cache must be [batch={batch}, max_len, kv_lora_rank={rank}] (kv_lora_rank from "
                         f"q_latent); got {tuple(latent_cache.shape)}")
    if rope_cache.shape != (batch, max_len, q_rope.shape[2]):
        raise ValueError(f"rope_cache must be [batch, max_len, rope_dim] = {[batch, max_len, q_rope.shape[2]]} "
                         f"(max_len from latent_cache, rope_dim from q_rope); got {tuple(rope_cache.shape)}")
    check_integer_vector("cache_lengths", cache_lengths, batch, q_latent.device, "[batch]")
    if batch:
        low, high = int(cache_lengths.min()), int(cache_lengths.max())  # one sync, before any launch
        if low < 1 or high > max_len:
            raise ValueError(f"cache_lengths must lie in [1, max_len = {max_len}] (a decode step attends to at "
                             f"least its own token); got min {low}, max {high}")
    if not is_positive_number(sm_scale):
        raise ValueError(f"sm_scale must be a positive number (MLA's is 1/sqrt(qk_nope_head_dim + "
                         f"qk_rope_head_dim), times YaRN's mscale^2 if any); got {sm_scale!r}")
    if num_splits is not None and (not isinstance(num_splits, int) or isinstance(num_splits, bool)
                                   or num_splits < 1):
        raise ValueError(f"num_splits must be a positive int or None (automatic); got {num_splits!r}")


def mla_decode_reference(q_latent, q_rope, latent_cache, rope_cache, cache_lengths, *, sm_scale: float):
    """The torch oracle for `mla_decode`: `solutions.attention.reference_attention` in fp32.

    Query ``[q_latent ; q_rope]`` per head, one shared key ``[c^KV ; k^R]`` per token, value ``c^KV``, keys at
    or past ``cache_lengths[b]`` masked out. Returns ``[batch, heads, kv_lora_rank]`` in the inputs' dtype.
    """
    _check(q_latent, q_rope, latent_cache, rope_cache, cache_lengths, sm_scale)
    query = torch.cat((q_latent, q_rope), -1).float()[:, :, None, :]  # [b, h, 1, d_c + d_R]
    key = torch.cat((latent_cache, rope_cache), -1).float()[:, None]  # [b, 1, T, d_c + d_R], all heads
    value = latent_cache.float()[:, None]  # [b, 1, T, d_c]
    positions = torch.arange(latent_cache.shape[1], device=latent_cache.device)
    bias = torch.zeros(positions.shape, device=latent_cache.device).masked_fill(
        positions[None, :] >= cache_lengths[:, None], float("-inf"))[:, None, None, :]  # [b, 1, 1, T]
    out = reference_attention(query, key, value, bias=bias, sm_scale=float(sm_scale))
    return out[:, :, 0].to(q_latent.dtype)


@dataclass(frozen=True)
class MLADecodeConfig:
    """How `mla_decode` launches: padded widths, ``BLOCK_H`` heads x ``BLOCK_T`` tokens per step, the split of
    the cache into ``num_splits`` chunks of ``tokens_per_split`` tokens (whole tiles), warps and stages."""

    rank_pad: int
    rope_pad: int
    block_h: int
    block_t: int
    num_splits: int
    tokens_per_split: int
    num_warps: int
    num_stages: int


def mla_decode_launch_config(batch: int, heads: int, kv_lora_rank: int, rope_dim: int, max_len: int,
                             dtype: torch.dtype, target: GPU | str, num_splits: int | None = None) -> MLADecodeConfig:
    """The launch configuration `mla_decode` uses for these sizes on ``target`` (a
    `solutions.kernels.devices.GPU`, or ``"interpreter"``). ``num_splits=None`` picks the split from the GPU.

    A pure function (no GPU needed; ``tests/test_kernels_compile.py`` compiles its configurations for sm_80 and
    sm_90 and checks shared memory and spills):

    * ``BLOCK_H``: 16 to 32 heads per program (``tl.dot`` needs 16 rows). 32 heads x 512 latent dims of fp32
      accumulator are 64 registers per thread at 8 warps, the most that leaves room for the tile.
    * ``BLOCK_T``: 32 tokens per step. The ``[BLOCK_T, d_c]`` latent tile is staged in shared memory for the
      three products, 3 stages deep: 112,640 bytes at DeepSeek-V2's widths in bf16. In fp32 (exact "ieee"
      products) that tile is twice as large, 225,408 bytes at 3 stages, more than an A100's 166,912, so fp32
      takes 16 tokens per step and 2 stages. Latent widths above 512 take 16 tokens per step. A GPU with less
      shared memory per block than an A100 (99 KB on sm_86 and sm_89) gets 2 stages and 16 tokens per step.
    * splits ("flash-decoding"): enough programs for about two per streaming multiprocessor, but no split
      shorter than `_shortest_split` tokens: 256, or more where the split's fp32 partial outputs (one
      ``kv_lora_rank`` row per head, written and read back by the merge) would exceed a quarter of the cache
      bytes it reads. With 128 heads that bound is 1,824 tokens in bf16: the roofline model
      (`solutions.kernels.roofline.mla_decode_cost`) shows that 64 splits of one 16k-token sequence would move
      1.8 times more bytes of partials than of cache. Each split is rounded up to whole tiles, so fewer splits
      than asked may run: ``num_splits`` here is what runs.

    The interpreter puts all heads in one block and splits only when asked (fewer, bigger program instances).
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}; got {dtype}")
    if min(batch, heads, kv_lora_rank, rope_dim, max_len) < 1:
        raise ValueError(f"every size must be >= 1; got batch {batch}, heads {heads}, kv_lora_rank "
                         f"{kv_lora_rank}, rope_dim {rope_dim}, max_len {max_len}")
    rank_pad = max(16, next_power_of_2(kv_lora_rank))
    rope_pad = max(16, next_power_of_2(rope_dim))
    if target == dispatch.INTERPRETER:
        block_h, block_t, warps, stages = next_power_of_2(heads), 16, 4, 1
        splits = 1 if num_splits is None else num_splits
    elif isinstance(target, GPU):
        block_h = max(16, min(32, next_power_of_2(heads)))
        small_shared = target.shared_memory_per_block < SHARED_MEMORY_PER_BLOCK[(8, 0)]
        narrow = dtype == torch.float32 or rank_pad > 512 or small_shared
        block_t, stages = (16, 2) if narrow else (32, 3)
        warps = 8
        if num_splits is None:
            programs = batch * cdiv(heads, block_h)
            splits = max(1, min(cdiv(2 * target.sm_count, programs), max_len // _shortest_split(heads, kv_lora_rank,
                                                                                             rope_dim, dtype)))
        else:
            splits = num_splits
    else:
        raise ValueError(f"target must be a solutions.kernels.devices.GPU or 'interpreter'; got {target!r}")
    tokens_per_split = cdiv(cdiv(max_len, splits), block_t) * block_t  # whole tiles per split
    return MLADecodeConfig(rank_pad, rope_pad, block_h, block_t, cdiv(max_len, tokens_per_split),
                           tokens_per_split, warps, stages)


def _shortest_split(heads: int, kv_lora_rank: int, rope_dim: int, dtype: torch.dtype) -> int:
    """The fewest cached tokens a split may hold: 256, and enough that the split's fp32 partial outputs,
    written and read back (``2 * heads * (kv_lora_rank + 1) * 4`` bytes), stay within a quarter of the cache
    bytes it reads (``(kv_lora_rank + rope_dim) * element size`` per token)."""
    element = 4 if dtype == torch.float32 else 2
    partial_bytes = 2 * heads * (kv_lora_rank + 1) * 4
    return max(256, cdiv(4 * partial_bytes, (kv_lora_rank + rope_dim) * element))


def _plan_launches(q_latent, q_rope, latent_cache, rope_cache, lengths, out, sm_scale, config: MLADecodeConfig,
                   backend: str) -> list[dispatch.Launch]:
    """The decode launch and, with more than one split, the merge launch (see `dispatch.Launch`).

    Allocates the split outputs (fp32, on the inputs' device) but reads no data.
    """
    batch, heads, rank = q_latent.shape
    rope_dim = q_rope.shape[2]
    splits = config.num_splits
    if splits > 1:
        partial = torch.empty((batch, heads, splits, rank), dtype=torch.float32, device=q_latent.device)
        lse = torch.empty((batch, heads, splits), dtype=torch.float32, device=q_latent.device)
        o_strides, l_strides = partial.stride(), lse.stride()
    else:  # one split: the kernel writes the normalised output directly, no merge
        partial, lse = out, out
        o_strides, l_strides = (*out.stride()[:2], 0, out.stride(2)), (0, 0, 0)
    decode = dispatch.Launch(
        _mla_decode_kernel, (cdiv(heads, config.block_h), batch, splits),
        (q_latent, q_rope, latent_cache, rope_cache, lengths, partial, lse,
         heads, config.tokens_per_split, sm_scale * LOG2E,
         *q_latent.stride(), *q_rope.stride(), *latent_cache.stride(), *rope_cache.stride(),
         *o_strides, *l_strides),
        dict(RANK=rank, RANK_PAD=config.rank_pad, ROPE=rope_dim, ROPE_PAD=config.rope_pad,
             BLOCK_H=config.block_h, BLOCK_T=config.block_t, SPLIT=splits > 1,
             # fp32 inputs: exact products ("ieee"), not TF32's 10-bit mantissa, so fp32 means fp32.
             DOT_PRECISION="ieee" if q_latent.dtype == torch.float32 else "tf32",
             DOT_DTYPE=dispatch.dot_dtype(q_latent.dtype, backend),
             num_warps=config.num_warps, num_stages=config.num_stages, enable_fp_fusion=True))
    if splits == 1:
        return [decode]
    merge = dispatch.Launch(
        _mla_merge_kernel, (heads, batch),
        (partial, lse, out, splits, *partial.stride(), *lse.stride(), *out.stride()),
        dict(RANK=rank, RANK_PAD=config.rank_pad, SPLITS_PAD=next_power_of_2(splits), num_warps=4,
             enable_fp_fusion=True))
    return [decode, merge]


def _launch(q_latent, q_rope, latent_cache, rope_cache, cache_lengths, sm_scale, num_splits, run):
    batch, heads, rank = q_latent.shape
    target = dispatch.INTERPRETER if run.backend == dispatch.INTERPRETER else gpu_of(q_latent.device)
    config = mla_decode_launch_config(batch, heads, rank, q_rope.shape[2], latent_cache.shape[1], q_latent.dtype,
                                      target, num_splits)
    out = torch.empty((batch, heads, rank), dtype=q_latent.dtype, device=q_latent.device)
    lengths = cache_lengths.to(torch.int32).contiguous()
    dispatch.run_launches(_plan_launches(q_latent, q_rope, latent_cache, rope_cache, lengths, out, sm_scale, config,
                                         run.backend), run)
    return out


def mla_decode(q_latent: torch.Tensor, q_rope: torch.Tensor, latent_cache: torch.Tensor, rope_cache: torch.Tensor,
               cache_lengths: torch.Tensor, *, sm_scale: float, num_splits: int | None = None,
               backend: str = "auto") -> torch.Tensor:
    """One weight-absorbed MLA decode step (DeepSeek-V2, arXiv 2405.04434, section 2.1) by a Triton kernel.

    * ``q_latent``: ``[batch, heads, kv_lora_rank]``, the new token's ``q^C`` with W^UK absorbed
      (``einsum("bhd,hdc->bhc", q_nope, w_uk)`` as in `solutions.mla.MultiHeadLatentAttention`).
    * ``q_rope``: ``[batch, heads, qk_rope_head_dim]``, the new token's rotated ``q^R``.
    * ``latent_cache``: ``[batch, max_len, kv_lora_rank]``, the normalised ``c^KV`` (`solutions.mla.MLACache`
      ``.latent``); ``rope_cache``: ``[batch, max_len, qk_rope_head_dim]``, the rotated shared ``k^R``. The
      new token's own entries must already be appended (it attends to itself).
    * ``cache_lengths``: integer ``[batch]``, ``1 <= cache_lengths[b] <= max_len``; row b attends to its first
      ``cache_lengths[b]`` entries (ragged batch in a padded cache; entries past it are never read).
    * ``sm_scale``: required, because it is not a function of these widths: MLA uses
      ``1 / sqrt(qk_nope_head_dim + qk_rope_head_dim)`` (times YaRN's mscale^2), `MLAConfig.scale`.
    * ``num_splits``: split-K over the cache length; ``None`` picks it from the GPU's size (1 when interpreted).
    * ``backend``: see `solutions.kernels.dispatch`; `solutions.kernels.last_run` says which path ran.

    Returns the latent-space output ``[batch, heads, kv_lora_rank]`` in the inputs' dtype; the caller applies
    W^UV and W^O. All four tensors share one float dtype. Forward only (decoding needs no gradient): inputs
    that require grad (with grad mode on) run the differentiable torch reference instead, recorded as such.
    Agreement with `mla_decode_reference` per dtype: `TOLERANCES`.
    """
    _check(q_latent, q_rope, latent_cache, rope_cache, cache_lengths, sm_scale, num_splits)
    batch, heads, _ = q_latent.shape
    work = batch * latent_cache.shape[1] * (latent_cache.shape[2] + rope_cache.shape[2])  # cache elements read
    run = dispatch.select_backend("mla_decode", q_latent.device, work, backend)
    if run.backend != dispatch.TORCH_FALLBACK and torch.is_grad_enabled() and any(
            t.requires_grad for t in (q_latent, q_rope, latent_cache, rope_cache)):
        run = dispatch.record(dispatch.KernelRun(
            "mla_decode", dispatch.TORCH_FALLBACK, run.device, run.work,
            "inputs require grad and the kernel is forward-only; ran the differentiable torch reference"))
    if run.backend == dispatch.TORCH_FALLBACK or batch == 0 or heads == 0:
        return mla_decode_reference(q_latent, q_rope, latent_cache, rope_cache, cache_lengths,
                                    sm_scale=sm_scale)
    with torch.no_grad():
        return _launch(q_latent, q_rope, latent_cache, rope_cache, cache_lengths, float(sm_scale), num_splits, run)
