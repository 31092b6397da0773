"""Flash attention with a positional bias computed inside the kernel (ALiBi) or gathered per offset (T5).

The kernel is the FlashAttention-2 forward pass (Dao et al., "FlashAttention: Fast and Memory-Efficient Exact
Attention with IO-Awareness", NeurIPS 2022; Dao, "FlashAttention-2: Faster Attention with Better Parallelism
and Work Partitioning", 2023): one program owns a block of queries, loops over blocks of keys, and keeps a
running maximum and a running sum of exponentials (the online softmax of Milakov & Gimelshein, "Online
normalizer calculation for softmax", 2018) so that the ``q_len x k_len`` score matrix never exists in memory.

The point of this chapter's kernel is the bias. A materialised ``[heads, L, L]`` bias costs ``4 * heads * L^2``
bytes (2 GB for 32 heads at 4k) and as much memory traffic as the attention itself. Here it never exists:

* ALiBi (Press, Smith, Lewis, "Train Short, Test Long", ICLR 2022): ``-slope_h * (i - j)`` is one multiply per
  score, computed from the query and key indices already in registers. ``alibi_slopes`` is ``[heads]``.
* T5 (Raffel et al., JMLR 2020, section 2.1): the bias depends only on the head and the offset ``j - i``, so the
  kernel gathers it from a ``[heads, q_len + k_len - 1]`` vector: O(L) memory, 4 MiB at 16k tokens and 32 heads.
  `t5_bias_by_offset` builds that vector from a `solutions.t5.T5RelativeBias` (or its table) with the
  reference `t5_relative_position_bucket`. Why this form rather than bucketing inside the kernel: the
  bucket of an offset is ``floor(log(d / e) / log(D / e) * n)``, and at offsets where that product is an exact
  integer (16, 32 and 64 for T5's defaults) the last bit of ``log`` decides the bucket; a GPU ``log`` and
  torch's differ in that bit, so in-kernel bucketing would disagree with the reference at those offsets. The
  offset vector is exact by construction, costs O(heads * L) to build, and works for any bias that is a
  function of (head, j - i) (Kerple, FIRE tables, a learned Shaw et al. clip table, ALiBi itself).

Forward pass in Triton; the backward pass (for ``requires_grad`` inputs) recomputes the torch reference and
differentiates it (correct, but it materialises ``L x L``: training-scale backward is the FlashAttention-2
backward kernel, not written here). Torch oracle: `attention_reference`, built on
`solutions.attention.reference_attention` and `solutions.alibi.alibi_bias`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..alibi import alibi_bias
from ..attention import reference_attention
from ..t5 import T5RelativeBias, relative_positions, t5_relative_position_bucket
from . import dispatch
from ._common import LOG2E, SUPPORTED_DTYPES, cdiv, check_float_tensor, check_shared_dtype_and_device, describe, \
    is_positive_number, next_power_of_2
from .devices import GPU, SHARED_MEMORY_PER_BLOCK, gpu_of

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton wheel for this platform: the dispatcher runs `attention_reference`
    from ._no_triton import tl, triton

TOLERANCES = {
    # fp32: exact-precision dots ("ieee"); only the summation order differs from the reference.
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    # fp16/bf16: the probabilities are rounded to the input dtype before the P @ V product (as in every
    # FlashAttention), and the output is stored in it; the reference is computed in fp32 from the same inputs.
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}
"""Agreement of `attention` with `attention_reference` per dtype (``torch.testing.assert_close`` keywords)."""

_LOG2E = tl.constexpr(LOG2E)  # a kernel may read a module-level value only as a constexpr

BIAS_KINDS = ("none", "alibi", "per_offset")
"""The kernel's ``BIAS`` switch, by name: no bias, ALiBi from the slopes, a gathered per-offset vector (T5)."""


@triton.jit
def _flash_attention_kernel(
    Q, K, V, OUT, SLOPES, REL_BIAS,
    num_heads, q_len, k_len, sm_scale_log2,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_rel_h,
    HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, BIAS: tl.constexpr,  # BIAS: 0 none, 1 ALiBi from slopes, 2 per-offset vector
    DOT_PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr,
):
    start_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // num_heads).to(tl.int64)
    h = (bh % num_heads).to(tl.int64)

    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_ok = offs_d < HEAD_DIM  # head_dim need not be a power of two (e.g. 80, 96): pad and mask
    # Queries are aligned to the *end* of the keys (a decode step or a chunk after a cache), as in
    # solutions.attention.causal_mask: query row m sits at key position m + (k_len - q_len).
    q_pos = offs_m + (k_len - q_len)

    q_ptrs = Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    # DOT_DTYPE is the input dtype when compiled (the casts are no-ops); fp32 for bf16 under the interpreter,
    # whose tl.dot multiplies bf16 bit patterns as integers (triton-lang/triton#11584). bf16 x bf16 products
    # are exact in fp32, so the interpreted result still matches what the tensor cores compute.
    q = tl.load(q_ptrs, mask=(offs_m < q_len)[:, None] & d_ok[None, :], other=0.0).to(DOT_DTYPE)
    k_base = K + b * stride_kb + h * stride_kh + offs_d[:, None] * stride_kd  # K^T tile: [d, n]
    v_base = V + b * stride_vb + h * stride_vh + offs_d[None, :] * stride_vd

    if BIAS == 1:
        # ALiBi, pre-multiplied by log2(e) like the scores, so the bias costs one FMA per score.
        slope_log2 = tl.load(SLOPES + h).to(tl.float32) * _LOG2E

    # Running statistics of the online softmax, in fp32 whatever the input dtype: m_i is the row max seen so
    # far, l_i the sum of exp2(score - m_i), acc the unnormalised output. fp16 would overflow l_i at a few
    # thousand keys and bf16 would lose the small terms of the sum.
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)

    # Causal: key blocks wholly in the future of this query block are skipped, not masked: the loop stops at
    # the last key the block's last query can see. That halves the work of a square causal attention.
    if CAUSAL:
        hi = tl.minimum((start_m + 1) * BLOCK_M + (k_len - q_len), k_len)
    else:
        hi = k_len
    for start_n in range(0, hi, BLOCK_N):
        k_pos = start_n + offs_n
        k_ok = k_pos < k_len
        k = tl.load(k_base + k_pos[None, :] * stride_kn, mask=d_ok[:, None] & k_ok[None, :], other=0.0)
        k = k.to(DOT_DTYPE)
        # sm_scale * log2(e) folded into one multiply: the softmax is then computed with exp2, which is the
        # native instruction (ex2.approx) on NVIDIA GPUs; exp would be exp2 plus a multiply per score.
        qk = tl.dot(q, k, input_precision=DOT_PRECISION) * sm_scale_log2
        rel = k_pos[None, :] - q_pos[:, None]  # j - i: negative for keys in the past
        if BIAS == 1:
            if CAUSAL:
                qk += slope_log2 * rel.to(tl.float32)  # -slope * (i - j); future keys are masked below
            else:
                qk -= slope_log2 * tl.abs(rel).to(tl.float32)  # symmetric ALiBi for encoders
        elif BIAS == 2:
            # Offsets j - i run from -(k_len - 1) (first key, last query) to q_len - 1 (last key, first
            # query): entry j - i + k_len - 1 of the head's row. A gather from ~L floats that stay in cache.
            rel_idx = rel + (k_len - 1)
            bias = tl.load(REL_BIAS + h * stride_rel_h + rel_idx,
                           mask=(offs_m < q_len)[:, None] & k_ok[None, :], other=0.0)
            qk += bias.to(tl.float32) * _LOG2E
        valid = k_ok[None, :]
        if CAUSAL:
            valid = valid & (rel <= 0)
        qk = tl.where(valid, qk, float("-inf"))

        # Online softmax update (FlashAttention-2, Algorithm 1): rescale the old sum and accumulator by
        # exp2(m_old - m_new) and add this block. Every row sees key 0 in its first block (causal queries are
        # aligned to the end of the keys), so m_new is finite from the first block on and no NaN can appear.
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + k_pos[:, None] * stride_vn, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
        # P is rounded to V's dtype so the second product runs on the tensor cores at full rate (fp16/bf16);
        # the accumulation stays fp32.
        p = p.to(V.dtype.element_ty).to(DOT_DTYPE)
        acc = acc * alpha[:, None] + tl.dot(p, v.to(DOT_DTYPE), input_precision=DOT_PRECISION)
        m_i = m_new

    # FlashAttention-2's other change from v1: divide by the softmax sum once at the end, not every block.
    acc = acc / l_i[:, None]
    o_ptrs = OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od
    tl.store(o_ptrs, acc.to(OUT.dtype.element_ty), mask=(offs_m < q_len)[:, None] & d_ok[None, :])


@dataclass(frozen=True)
class AttentionConfig:
    """How `attention` launches its kernel: ``HEAD_DIM_PAD``, ``BLOCK_M`` x ``BLOCK_N`` tiles, warps, stages."""

    head_dim_pad: int
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def attention_launch_config(head_dim: int, dtype: torch.dtype, target: GPU | str, *,
                            bias: str = "none") -> AttentionConfig:
    """The launch configuration `attention` uses for ``head_dim``, ``dtype`` and ``bias`` on ``target``.

    ``target`` is a `solutions.kernels.devices.GPU` (for a CUDA tensor, `attention` passes
    ``devices.gpu_of(q.device)``) or ``"interpreter"``; ``bias`` is one of `BIAS_KINDS`. A pure function: it
    needs no GPU, so ``tests/test_kernels_compile.py`` compiles exactly these configurations for sm_80 and
    sm_90 and checks their shared memory against the per-block limit and their registers for spills.

    The head dimension is padded to a power of two, at least 16 (``tl.dot`` needs K >= 16). Then, per dtype:

    * fp16/bf16 (tensor cores): the FlashAttention-2 Triton tutorial's tiles, a 128-query block (each K/V tile
      read from memory serves 128 queries) and 64 keys per step, with 3 pipeline stages (the next tiles load
      while this one computes) and 8 warps (with 4 warps, 64 dims spilled registers on sm_80).
      The per-offset (T5) bias stages a gathered fp32 ``[BLOCK_M, BLOCK_N]`` tile too: at 128 padded dims
      that is the largest 16-bit configuration, 163,840 bytes on sm_80, within its 166,912. At 256 padded
      dims (192, 256) a block of 64 queries, 32 keys and 2 stages keeps the accumulator in registers.
    * fp32 (exact "ieee" products on the ordinary cores, not the tensor cores): the products are computed
      in registers, so the tiles are smaller: 64 x 32 on 8 warps with 2 stages, and 32 x 32 at 256 padded
      dims or with the per-offset bias at 128. The 16-bit tiles spilled registers in fp32 (kilobytes per
      thread) and at 128 padded dims needed 229,888 bytes of shared memory, more than an A100's 166,912.
    * A GPU with less shared memory per block than an A100 (99 KB on sm_86 and sm_89) gets 2 stages.

    Fixed configurations with their reasons, rather than ``triton.autotune``: every one of them is compiled by
    the test, and their speed is measured by ``python -m solutions.kernels.benchmark`` on a GPU.
    The interpreter runs each program instance as a Python loop iteration: 16 x 16 tiles mask little work at
    small shapes without making the per-instance overhead dominate.
    """
    if bias not in BIAS_KINDS:
        raise ValueError(f"bias must be one of {BIAS_KINDS}; got {bias!r}")
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}; got {dtype}")
    head_dim_pad = max(16, next_power_of_2(head_dim))
    if target == dispatch.INTERPRETER:
        return AttentionConfig(head_dim_pad, 16, 16, 4, 1)
    if not isinstance(target, GPU):
        raise ValueError(f"target must be a solutions.kernels.devices.GPU or 'interpreter'; got {target!r}")
    if dtype == torch.float32:
        wide = head_dim_pad > 128 or (head_dim_pad == 128 and bias == "per_offset")
        block_m, block_n, warps, stages = (32, 32, 8, 2) if wide else (64, 32, 8, 2)
    elif head_dim_pad <= 128:
        block_m, block_n, warps, stages = (128, 64, 8, 3)
    else:
        block_m, block_n, warps, stages = (64, 32, 8, 2)
    if target.shared_memory_per_block < SHARED_MEMORY_PER_BLOCK[(8, 0)]:
        stages = min(stages, 2)
    return AttentionConfig(head_dim_pad, block_m, block_n, warps, stages)


def t5_bias_by_offset(t5: T5RelativeBias | torch.Tensor, q_len: int, k_len: int | None = None, *,
                      bidirectional: bool = True, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """The ``[heads, q_len + k_len - 1]`` per-offset bias that `attention`'s ``relative_bias`` takes.

    Entry ``[h, (j - i) + k_len - 1]`` is the T5 bias (Raffel et al. 2020, section 2.1) of head h for key j and
    query i (queries aligned to the end of the keys), for every offset ``j - i`` from ``-(k_len - 1)`` to
    ``q_len - 1``. ``t5`` is a `solutions.t5.T5RelativeBias` (its bucket settings are used) or its
    ``[num_buckets, heads]`` table (then pass the settings). Buckets come from the reference
    `t5_relative_position_bucket`, so the kernel sees exactly the reference's bias.
    """
    k_len = q_len if k_len is None else k_len
    if isinstance(t5, T5RelativeBias):
        table = t5.bias_table.weight
        bidirectional, num_buckets, max_distance = t5.bidirectional, t5.num_buckets, t5.max_distance
    else:
        table = t5
    if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[0] != num_buckets:
        raise ValueError(f"the T5 table must be [num_buckets={num_buckets}, heads]; got "
                         f"{tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__}")
    if q_len < 1 or k_len < q_len:
        raise ValueError(f"need 1 <= q_len <= k_len (queries aligned to the end of the keys); got {q_len}, {k_len}")
    offsets = torch.arange(-(k_len - 1), q_len, device=table.device)
    buckets = t5_relative_position_bucket(offsets, bidirectional, num_buckets, max_distance)
    return table[buckets].T.contiguous()


def _bias_matrix(relative_bias: torch.Tensor, q_len: int, k_len: int) -> torch.Tensor:
    """The oracle's ``[heads, q_len, k_len]`` view of a per-offset vector (only the reference builds it)."""
    index = relative_positions(q_len, k_len, device=relative_bias.device) + (k_len - 1)
    return relative_bias[:, index]


def _check(q, k, v, causal, alibi_slopes, relative_bias, sm_scale):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float_tensor(name, t, 4, "[batch, heads, seq, head_dim]")
    check_shared_dtype_and_device({"q": q, "k": k, "v": v})
    batch, heads, q_len, head_dim = q.shape
    if k.shape[:2] != (batch, heads) or v.shape[:2] != (batch, heads):
        raise ValueError(f"q, k, v must share [batch, heads] (no grouped-query heads here); got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[3] != head_dim:
        raise ValueError(f"head_dim mismatch: q has {head_dim} and k has {k.shape[3]}")
    if v.shape != k.shape:
        raise ValueError(f"v must have k's shape {tuple(k.shape)} (same keys, same head_dim); got {tuple(v.shape)}")
    k_len = k.shape[2]
    if alibi_slopes is not None and relative_bias is not None:
        raise ValueError("pass alibi_slopes or relative_bias, not both (add the two biases into one per-offset "
                         "vector if you really want both)")
    positional = causal or alibi_slopes is not None or relative_bias is not None
    if positional and q_len > k_len:
        raise ValueError(f"causal or position-biased attention aligns the queries to the end of the keys, so it "
                         f"needs q_len <= k_len; got q_len {q_len} > k_len {k_len}")
    if alibi_slopes is not None:
        if not isinstance(alibi_slopes, torch.Tensor) or alibi_slopes.shape != (heads,) \
                or not alibi_slopes.dtype.is_floating_point:
            raise ValueError(f"alibi_slopes must be a float [heads] = [{heads}] tensor; got {describe(alibi_slopes)}")
        if alibi_slopes.device != q.device:
            raise ValueError(f"alibi_slopes is on {alibi_slopes.device} but q is on {q.device}")
    if relative_bias is not None:
        expected = (heads, q_len + k_len - 1)
        if not isinstance(relative_bias, torch.Tensor) or tuple(relative_bias.shape) != expected \
                or not relative_bias.dtype.is_floating_point:
            raise ValueError(f"relative_bias must be a float per-offset tensor [heads, q_len + k_len - 1] = "
                             f"{list(expected)} (build it with t5_bias_by_offset); got {describe(relative_bias)}")
        if relative_bias.device != q.device:
            raise ValueError(f"relative_bias is on {relative_bias.device} but q is on {q.device}")
    if sm_scale is not None and not is_positive_number(sm_scale):
        raise ValueError(f"sm_scale must be a positive finite number or None (1/sqrt(head_dim)); got {sm_scale!r}")


def attention_reference(q, k, v, *, causal: bool = True, alibi_slopes=None, relative_bias=None, sm_scale=None):
    """The torch oracle for `attention`: `solutions.attention.reference_attention` with the bias materialised.

    Computed in fp32 (the inputs are upcast) and returned in ``q``'s dtype. Same arguments as `attention`.
    """
    _check(q, k, v, causal, alibi_slopes, relative_bias, sm_scale)
    q_len, k_len = q.shape[2], k.shape[2]
    bias = None
    if alibi_slopes is not None:
        bias = alibi_bias(alibi_slopes.float(), q_len, k_len, causal=causal)  # includes the causal -inf
    elif relative_bias is not None:
        bias = _bias_matrix(relative_bias.float(), q_len, k_len)
    out = reference_attention(q.float(), k.float(), v.float(), bias=bias, causal=causal, sm_scale=sm_scale)
    return out.to(q.dtype)


def _bias_kind(alibi_slopes, relative_bias) -> str:
    return "alibi" if alibi_slopes is not None else "per_offset" if relative_bias is not None else "none"


def _plan_launches(q, k, v, out, causal, alibi_slopes, relative_bias, sm_scale, config: AttentionConfig,
                   backend: str) -> list[dispatch.Launch]:
    """The one launch of the kernel that computes ``out`` (see `dispatch.Launch`); no data is read."""
    batch, heads, q_len, head_dim = q.shape
    k_len = k.shape[2]
    slopes = alibi_slopes.float().contiguous() if alibi_slopes is not None else q  # unused pointer otherwise
    rel = relative_bias.float().contiguous() if relative_bias is not None else q
    grid = (cdiv(q_len, config.block_m), batch * heads)
    args = (q, k, v, out, slopes, rel,
            heads, q_len, k_len, sm_scale * LOG2E,
            *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            rel.stride(0) if relative_bias is not None else 0)
    kwargs = dict(
        HEAD_DIM=head_dim, HEAD_DIM_PAD=config.head_dim_pad, BLOCK_M=config.block_m, BLOCK_N=config.block_n,
        CAUSAL=bool(causal), BIAS=BIAS_KINDS.index(_bias_kind(alibi_slopes, relative_bias)),
        # fp32 inputs: exact products ("ieee"), not TF32's 10-bit mantissa, so fp32 means fp32.
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        DOT_DTYPE=dispatch.dot_dtype(q.dtype, backend),
        num_warps=config.num_warps, num_stages=config.num_stages,
        # Fused multiply-adds, Triton 3.x's default, stated so that the compiled code does not change with it.
        enable_fp_fusion=True,
    )
    return [dispatch.Launch(_flash_attention_kernel, grid, args, kwargs)]


def _launch(q, k, v, causal, alibi_slopes, relative_bias, sm_scale, run):
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    target = dispatch.INTERPRETER if run.backend == dispatch.INTERPRETER else gpu_of(q.device)
    config = attention_launch_config(q.shape[3], q.dtype, target, bias=_bias_kind(alibi_slopes, relative_bias))
    dispatch.run_launches(_plan_launches(q, k, v, out, causal, alibi_slopes, relative_bias, sm_scale, config,
                                         run.backend), run)
    return out


class _AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, alibi_slopes, relative_bias, sm_scale, run):
        ctx.save_for_backward(q, k, v, alibi_slopes, relative_bias)
        ctx.causal, ctx.sm_scale = causal, sm_scale
        return _launch(q, k, v, causal, alibi_slopes, relative_bias, sm_scale, run)

    @staticmethod
    def backward(ctx, grad_out):
        # Recompute with the torch reference and differentiate it: exact, but O(L^2) memory (see module doc).
        q, k, v, slopes, rel = ctx.saved_tensors
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(t.requires_grad) if t is not None else None
                      for t in (q, k, v, slopes, rel)]
            out = attention_reference(inputs[0], inputs[1], inputs[2], causal=ctx.causal, alibi_slopes=inputs[3],
                                      relative_bias=inputs[4], sm_scale=ctx.sm_scale)
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad_out)) if wanted else iter(())
        result = [next(grads) if t is not None and t.requires_grad else None for t in inputs]
        return (*result[:3], None, result[3], result[4], None, None)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
              alibi_slopes: torch.Tensor | None = None, relative_bias: torch.Tensor | None = None,
              sm_scale: float | None = None, backend: str = "auto") -> torch.Tensor:
    """``softmax(sm_scale * q k^T + bias) v`` by a FlashAttention-2 style Triton kernel (forward).

    * ``q``: ``[batch, heads, q_len, head_dim]``; ``k``, ``v``: ``[batch, heads, k_len, head_dim]``; one float
      dtype (fp32/fp16/bf16), any strides. The result has ``q``'s shape and dtype; the softmax runs in fp32.
    * ``causal``: query i sits at key position ``k_len - q_len + i`` (queries aligned to the end of the keys,
      as in `solutions.attention.causal_mask`), so ``k_len > q_len`` is a decode step or a chunk after a cache.
      Causal or biased attention needs ``q_len <= k_len``.
    * ``alibi_slopes``: ``[heads]`` (`solutions.alibi.alibi_slopes`); the bias ``-slope * (i - j)`` is computed
      in the kernel (symmetric ``-slope * |i - j|`` when ``causal=False``), as `solutions.alibi.alibi_bias`.
    * ``relative_bias``: a ``[heads, q_len + k_len - 1]`` per-offset bias (`t5_bias_by_offset` builds it from
      a T5 table); entry ``[h, j - i + k_len - 1]`` is added to the score of query i and key j. Not both.
    * ``sm_scale``: defaults to ``1 / sqrt(head_dim)``.
    * ``backend``: see `solutions.kernels.dispatch`; `solutions.kernels.last_run` says which path ran.

    Forward pass only in Triton; gradients (when the inputs require them) come from the torch reference,
    recomputed in the backward. Agreement with `attention_reference`: `TOLERANCES`.
    """
    _check(q, k, v, causal, alibi_slopes, relative_bias, sm_scale)
    batch, heads, q_len, head_dim = q.shape
    sm_scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale)
    run = dispatch.select_backend("attention", q.device, batch * heads * q_len * k.shape[2], backend)
    if run.backend == dispatch.TORCH_FALLBACK:
        return attention_reference(q, k, v, causal=causal, alibi_slopes=alibi_slopes,
                                   relative_bias=relative_bias, sm_scale=sm_scale)
    if q.numel() == 0 or k.shape[2] == 0:
        return attention_reference(q, k, v, causal=causal, alibi_slopes=alibi_slopes,
                                   relative_bias=relative_bias, sm_scale=sm_scale)
    return _AttentionFunction.apply(q, k, v, bool(causal), alibi_slopes, relative_bias, sm_scale, run)
