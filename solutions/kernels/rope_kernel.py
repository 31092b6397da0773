"""Fused rotary position embedding (RoPE) in Triton: forward and backward from one kernel.

RoFormer (Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding", 2021, arXiv
2104.09864, eq. 34) rotates each pair of coordinates (a, b) of a query or key at position p by the angle
``p * theta_i``::

    (a, b) -> (a cos - b sin,  b cos + a sin)

The torch oracle is `solutions.rope.apply_rope` (wrapped for this layout by `rope_reference`). This file
holds the kernel, its launcher and the autograd wrapper, in the style of the Triton tutorials (Tillet et al.,
MAPL 2019).

Why a kernel at all: RoPE does ~6 flops per pair (3 per element) and moves 2 elements (read x, write y), so it is purely
memory-bound. The eager torch version reads and writes x several times (slices, products, ``cat``) and
launches a dozen kernels; one fused pass that reads x once, reads one cos/sin row per token (shared by all
heads) and writes y once is the whole optimisation. The target is the device's copy bandwidth.

Backward: a rotation is orthogonal, so the gradient of ``y = R(theta) x`` is ``R(theta)^T dy = R(-theta) dy``:
the same kernel with ``sin`` negated (the ``BACKWARD`` flag), never a second kernel.

Two forms of cos/sin, one kernel (the ``PER_TOKEN`` flag):

* the *position cache* ``[max_pos, rotary_dim // 2]``: token ``t`` of batch row ``b`` reads row
  ``t + position_offset[b]``. This is 1-D RoPE: a token's angles are a function of one integer position.
* *one row per token* ``[batch, seq, rotary_dim // 2]``: token ``(b, t)`` reads row ``[b, t]`` as it is. Multi-axis
  RoPE needs this. Qwen2-VL's M-RoPE (Wang et al. 2024, arXiv 2409.12191) gives every token three position ids
  (temporal, height, width), and each group of frequency pairs turns with one of them, so an image token's row
  mixes ``cos(t * theta_i)``, ``cos(h * theta_j)`` and ``cos(w * theta_k)``; 2-D RoPE for vision transformers
  (Heo et al., ECCV 2024) does the same with (row, column). Such a row (of an image or video token; a text
  token's three ids are equal) is not a row of any single position cache, and no ``position_offset`` can
  address it. The caller builds the rows (``solutions.rope.apply_rope``
  accepts the same ``[..., seq, rotary_dim // 2]`` tables), and the kernel only changes where it reads them:
  from ``(b, t)`` and the table's strides instead of from the position. The math, the layouts, the partial
  rotary and the backward are shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..rope import apply_rope
from . import dispatch
from ._common import cdiv, check_float_tensor, check_integer_vector, describe, next_power_of_2
from .devices import GPU, gpu_of

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton wheel for this platform: the dispatcher runs `rope_reference`
    from ._no_triton import tl, triton

TOLERANCES = {
    # Both sides compute in fp32 and round once to the output dtype. fp32 is tight. For fp16/bf16,
    # |y - expected| <= atol + rtol * |expected| is about two units in the last place (ulp) of an output of
    # size 1 (2.0 in fp16, 2.6 in bf16) and more for smaller outputs, where atol dominates (132 and 165 ulps at
    # 2^-7): room for a compiled kernel's fused multiply-adds, whose fp32 results differ from torch's, most
    # in ulps of an output much smaller than its inputs. Under the interpreter the fp32 results are the same
    # numbers and the rounded ones at most one ulp apart (the Triton 3.9 interpreter truncates fp32 -> bf16
    # where torch rounds to nearest), the bound book/rotary/rope_kernel.ipynb checks in ulps.
    torch.float32: dict(atol=1e-6, rtol=1e-5),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=1e-2, rtol=1e-2),
}
"""Agreement of `rope` with `rope_reference` per dtype (``torch.testing.assert_close`` keywords)."""


@triton.jit
def _rope_kernel(
    X, OUT, COS, SIN, OFFSETS,
    seq_len, num_heads, position_offset,
    stride_xb, stride_xs, stride_xh, stride_xd,
    stride_ob, stride_os, stride_oh, stride_od,
    stride_cos_batch, stride_cos_row,
    HALF: tl.constexpr, HALF_PAD: tl.constexpr,
    PASS: tl.constexpr, PASS_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    INTERLEAVED: tl.constexpr, HAS_OFFSETS: tl.constexpr, BACKWARD: tl.constexpr, PER_TOKEN: tl.constexpr,
):
    # One program = one token (b, s) and a block of BLOCK_H heads. The token's cos/sin row is loaded once and
    # reused by every head of the block: that reuse is why the grid is per token, not per (token, head).
    row = tl.program_id(0)
    head_block = tl.program_id(1)
    # int64 before multiplying by strides: batch * seq * heads * dim overflows int32 past 2^31 - 1 elements.
    b = (row // seq_len).to(tl.int64)
    s = (row % seq_len).to(tl.int64)
    if PER_TOKEN:
        # cos/sin [batch, seq, HALF]: the token's own row (M-RoPE, 2-D RoPE), wherever the strides put it
        # (stride_cos_batch is 0 for a table .expand()ed over the batch).
        row_start = b * stride_cos_batch + s * stride_cos_row
    else:
        # cos/sin [max_pos, HALF]: the row of the token's position (stride_cos_batch is unused)
        if HAS_OFFSETS:
            pos = s + tl.load(OFFSETS + b).to(tl.int64)  # per-row KV-cache offset (decode, ragged batches)
        else:
            pos = s + position_offset
        row_start = pos * stride_cos_row

    pair = tl.arange(0, HALF_PAD)
    pair_ok = pair < HALF  # HALF need not be a power of two: pad the block and mask
    # Math in fp32 whatever the storage dtype: bf16 has 8 mantissa bits, and rounding cos/sin or the products
    # to it before the sum would add an error at every position (the RoPE chapter's precision section).
    # The pairs are contiguous within a row (the launcher guarantees unit stride): [HALF_PAD] each.
    cos = tl.load(COS + row_start + pair, mask=pair_ok, other=0.0).to(tl.float32)
    sin = tl.load(SIN + row_start + pair, mask=pair_ok, other=0.0).to(tl.float32)
    if BACKWARD:
        sin = -sin  # R(theta)^T = R(-theta): the gradient is the inverse rotation

    heads = head_block * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (heads < num_heads)[:, None] & pair_ok[None, :]
    if INTERLEAVED:  # GPT-J / Meta: pair (2i, 2i + 1). Both stride-2 loads hit the same cache lines.
        first, second = 2 * pair, 2 * pair + 1
    else:  # GPT-NeoX / Hugging Face: pair (i, i + rotary_dim / 2)
        first, second = pair, pair + HALF

    x_tok = X + b * stride_xb + s * stride_xs + heads[:, None].to(tl.int64) * stride_xh
    o_tok = OUT + b * stride_ob + s * stride_os + heads[:, None].to(tl.int64) * stride_oh
    x1 = tl.load(x_tok + first[None, :] * stride_xd, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_tok + second[None, :] * stride_xd, mask=mask, other=0.0).to(tl.float32)
    y1 = x1 * cos[None, :] - x2 * sin[None, :]
    y2 = x2 * cos[None, :] + x1 * sin[None, :]
    tl.store(o_tok + first[None, :] * stride_od, y1.to(OUT.dtype.element_ty), mask=mask)
    tl.store(o_tok + second[None, :] * stride_od, y2.to(OUT.dtype.element_ty), mask=mask)

    if PASS > 0:  # partial rotary: the dims past rotary_dim are copied unchanged (a constexpr branch)
        rest = tl.arange(0, PASS_PAD)
        rest_mask = (heads < num_heads)[:, None] & (rest < PASS)[None, :]
        dims = 2 * HALF + rest
        tail = tl.load(x_tok + dims[None, :] * stride_xd, mask=rest_mask, other=0.0)
        tl.store(o_tok + dims[None, :] * stride_od, tail.to(OUT.dtype.element_ty), mask=rest_mask)


@dataclass(frozen=True)
class RopeConfig:
    """How `rope` launches its kernel: ``HALF_PAD`` pairs and ``PASS_PAD`` copied dims per head, ``BLOCK_H``
    heads per program, and the warps."""

    half_pad: int
    pass_pad: int
    block_h: int
    num_warps: int


def rope_launch_config(heads: int, head_dim: int, rotary_dim: int, target: GPU | str) -> RopeConfig:
    """The launch configuration `rope` uses for ``heads`` heads of ``head_dim`` dims, the first ``rotary_dim``
    rotated, on ``target`` (a `solutions.kernels.devices.GPU` or ``"interpreter"``).

    A pure function (no GPU needed; ``tests/test_kernels_compile.py`` compiles its configurations for sm_80 and
    sm_90). One program rotates one token's block of heads, ``BLOCK_H * HALF_PAD`` pairs: up to 2048 pairs
    (4096 elements, 8 KB in bf16) keeps enough bytes in flight per program on a GPU while the grid
    (``batch * seq`` tokens) stays large, and puts all heads of a token in one program in the usual case
    (32 heads of 128 dims), so that the token's cos/sin row is loaded once. 4 warps: 128 threads share the
    block's 2048 pairs, 16 pairs each. The kernel has no loop, so there is nothing to pipeline and it uses no
    shared memory. The interpreter uses the same blocks, which the tests exercise with padded heads and pairs.
    """
    if not (0 < rotary_dim <= head_dim and rotary_dim % 2 == 0 and heads >= 1):
        raise ValueError(f"need heads >= 1 and an even 0 < rotary_dim <= head_dim; got heads {heads}, "
                         f"rotary_dim {rotary_dim}, head_dim {head_dim}")
    if target != dispatch.INTERPRETER and not isinstance(target, GPU):
        raise ValueError(f"target must be a solutions.kernels.devices.GPU or 'interpreter'; got {target!r}")
    half_pad = next_power_of_2(rotary_dim // 2)
    block_h = min(next_power_of_2(heads), max(1, 2048 // half_pad))
    return RopeConfig(half_pad, next_power_of_2(max(head_dim - rotary_dim, 1)), block_h, 4)


def _plan_launches(x: torch.Tensor, out: torch.Tensor, cos, sin, offsets, offset_int: int, interleaved: bool,
                   backward: bool, config: RopeConfig) -> list[dispatch.Launch]:
    """The one launch that rotates ``x`` into ``out`` (see `dispatch.Launch`); no data is read.

    x: [batch, seq, heads, head_dim]; cos/sin: [max_pos, half] (a position cache) or [batch, seq, half] (one
    row per token), with unit stride along the pairs and the same strides for cos and sin (`_table_operands`).
    """
    batch, seq, heads, head_dim = x.shape
    per_token = cos.dim() == 3
    half = cos.shape[-1]
    grid = (batch * seq, cdiv(heads, config.block_h))
    args = (x, out, cos, sin, offsets if offsets is not None else cos,  # the pointer is unused without offsets
            seq, heads, offset_int,
            *x.stride(), *out.stride(),
            cos.stride(0) if per_token else 0, cos.stride(-2))  # (batch, row) strides; no batch stride for a cache
    kwargs = dict(
        HALF=half, HALF_PAD=config.half_pad, PASS=head_dim - 2 * half, PASS_PAD=config.pass_pad,
        BLOCK_H=config.block_h,
        INTERLEAVED=interleaved, HAS_OFFSETS=offsets is not None, BACKWARD=backward, PER_TOKEN=per_token,
        num_warps=config.num_warps,
        enable_fp_fusion=True,  # Triton 3.x's default, stated so that the compiled code does not change with it
    )
    return [dispatch.Launch(_rope_kernel, grid, args, kwargs)]


def _launch(x: torch.Tensor, cos, sin, offsets, offset_int: int, interleaved: bool, backward: bool,
            run: dispatch.KernelRun) -> torch.Tensor:
    batch, seq, heads, head_dim = x.shape
    out = torch.empty((batch, seq, heads, head_dim), dtype=x.dtype, device=x.device)
    target = dispatch.INTERPRETER if run.backend == dispatch.INTERPRETER else gpu_of(x.device)
    config = rope_launch_config(heads, head_dim, 2 * cos.shape[-1], target)
    dispatch.run_launches(_plan_launches(x, out, cos, sin, offsets, offset_int, interleaved, backward, config), run)
    return out


class _RopeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin, offsets, offset_int, interleaved, run):
        ctx.save_for_backward(cos, sin, offsets)
        ctx.offset_int, ctx.interleaved, ctx.run = offset_int, interleaved, run
        return _launch(x, cos, sin, offsets, offset_int, interleaved, False, run)

    @staticmethod
    def backward(ctx, grad_out):
        cos, sin, offsets = ctx.saved_tensors
        fwd = ctx.run
        run = dispatch.record(dispatch.KernelRun("rope_backward", fwd.backend, fwd.device, fwd.work,
                                                 "same path as the forward; the rotation by -theta"))
        grad_x = _launch(grad_out, cos, sin, offsets, ctx.offset_int, ctx.interleaved, True, run)
        return grad_x, None, None, None, None, None, None


def _table_operands(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin as the kernel reads them: unit stride along the pairs, one set of strides for both.

    The 2-D cache is made contiguous, as it always was. A per-token table keeps its [batch, seq] strides when it
    can, so a table ``.expand()``ed over the batch (stride 0) or a slice of a larger one is read without a copy.
    """
    if cos.dim() == 2:
        return cos.contiguous(), sin.contiguous()
    if cos.shape[-1] > 1 and (cos.stride(-1) != 1 or sin.stride(-1) != 1) or cos.stride() != sin.stride():
        return cos.contiguous(), sin.contiguous()  # [batch, seq, half], row-major
    return cos, sin


def _check(x, cos, sin, position_offset):
    """Every ValueError before any launch; returns (offsets tensor or None, int offset)."""
    check_float_tensor("x", x, 4, "[batch, seq, heads, head_dim]")
    if not isinstance(cos, torch.Tensor) or not isinstance(sin, torch.Tensor) or cos.shape != sin.shape:
        raise ValueError(f"cos and sin must be tensors of the same shape; got {describe(cos)} and {describe(sin)}")
    if cos.dim() not in (2, 3):
        raise ValueError(f"cos/sin must be the 2-D cache [max_pos, rotary_dim // 2] (rows are positions; "
                         f"`rope` gathers the rows itself) or 3-D rows per token [batch, seq, rotary_dim // 2]; "
                         f"got shape {tuple(cos.shape)}")
    if not (cos.dtype.is_floating_point and sin.dtype.is_floating_point):
        raise ValueError(f"cos/sin must be floating point; got {cos.dtype} and {sin.dtype}")
    if cos.requires_grad or sin.requires_grad:
        raise ValueError("rope does not differentiate with respect to cos/sin; pass cos.detach(), sin.detach()")
    batch, seq, _, head_dim = x.shape
    half = cos.shape[-1]
    if half < 1 or 2 * half > head_dim:
        form = "[batch, seq, rotary_dim // 2]" if cos.dim() == 3 else "[max_pos, rotary_dim // 2]"
        raise ValueError(f"cos/sin cover rotary_dim = 2 * {half} = {2 * half} dims, but head_dim is {head_dim}: "
                         f"cos must be {form} with 0 < rotary_dim <= head_dim")
    if cos.device != x.device or sin.device != x.device:
        raise ValueError(f"x, cos and sin must be on one device; got {x.device}, {cos.device}, {sin.device}")
    if cos.dim() == 3:  # one row per token: no positions to offset, the rows must match x's tokens
        if tuple(cos.shape[:2]) != (batch, seq):
            raise ValueError(f"a 3-D cos/sin holds one row per token and must be [batch, seq, rotary_dim // 2] = "
                             f"[{batch}, {seq}, {half}] for x of shape {tuple(x.shape)}; got {tuple(cos.shape)} "
                             f"(a position cache is 2-D [max_pos, rotary_dim // 2]; a table shared by the batch "
                             f"can be .expand(batch, -1, -1)ed without a copy)")
        if isinstance(position_offset, bool) or not isinstance(position_offset, int) or position_offset != 0:
            raise ValueError(f"position_offset indexes the rows of a 2-D position cache; with a 3-D table of "
                             f"per-token rows it must be left at 0 (build the rows at the positions you want); "
                             f"got {position_offset!r}")
        return None, 0
    max_pos = cos.shape[0]
    if isinstance(position_offset, torch.Tensor):
        check_integer_vector("position_offset", position_offset, batch, x.device, "[batch]")
        offsets = position_offset.to(torch.int64).contiguous()
        low, high = (int(offsets.min()), int(offsets.max())) if batch else (0, 0)  # one sync, before launch
        offset_int = 0
    elif isinstance(position_offset, int) and not isinstance(position_offset, bool):
        offsets, low, high, offset_int = None, position_offset, position_offset, position_offset
    else:
        raise ValueError(f"position_offset must be an int or a [batch] integer tensor; got "
                         f"{type(position_offset).__name__}")
    if low < 0:
        raise ValueError(f"position_offset must be >= 0; got a minimum of {low}")
    if seq and seq - 1 + high >= max_pos:
        raise ValueError(f"positions up to {seq - 1 + high} (seq {seq} - 1 + offset {high}) are needed but the "
                         f"cos/sin cache has only max_pos = {max_pos} rows; build a longer cache")
    return offsets, offset_int


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False,
                   position_offset=0) -> torch.Tensor:
    """The torch oracle for `rope`: each token's cos/sin row through `solutions.rope.apply_rope`.

    Same arguments as `rope`: the rows are gathered from a 2-D position cache, or a 3-D table of per-token rows
    is used as it is. Differentiable by autograd (it is plain torch).
    """
    offsets, offset_int = _check(x, cos, sin, position_offset)
    if cos.dim() == 3:
        # [batch, seq, 1, half] broadcasts over the heads of x [batch, seq, heads, head_dim].
        return apply_rope(x, cos[:, :, None], sin[:, :, None], interleaved)
    batch, seq = x.shape[:2]
    positions = torch.arange(seq, device=x.device)[None, :] + (offsets[:, None] if offsets is not None
                                                               else offset_int)
    positions = positions.expand(batch, seq)
    # [batch, seq, 1, half] broadcasts over the heads; apply_rope rotates the last dim.
    return apply_rope(x, cos[positions][:, :, None], sin[positions][:, :, None], interleaved)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False,
         position_offset=0, backend: str = "auto") -> torch.Tensor:
    """Apply RoPE (Su et al. 2021, RoFormer eq. 34) to ``x`` with one fused Triton kernel; differentiable.

    * ``x``: ``[batch, seq, heads, head_dim]``, float32/float16/bfloat16, any strides (a slice of a fused
      QKV projection works without a copy). The result is a new contiguous tensor of ``x``'s dtype; the
      math is done in fp32.
    * ``cos``, ``sin`` (the same shape, floating point, on ``x``'s device, not requiring grad), one of:

      - the position cache ``[max_pos, rotary_dim // 2]`` of `solutions.rope.rope_cos_sin`: token ``t`` of
        row ``b`` uses cache row ``t + position_offset[b]``. Any `solutions.rope_scaling.rope_scaling` method
        works by building its cache: ``rope_cos_sin(*rope_scaling(method, ...))`` with positions ``max_pos``.
      - one row per token ``[batch, seq, rotary_dim // 2]`` (``batch`` and ``seq`` those of ``x``): token
        ``(b, t)`` uses row ``[b, t]`` as it is. This is for multi-axis RoPE, whose rows are not rows of one
        position cache: M-RoPE (Qwen2-VL), where each group of frequency pairs turns with the token's
        temporal, height or width id, and 2-D RoPE for vision transformers (row and column). Build the
        rows as for `solutions.rope.apply_rope`; ``position_offset`` must then be 0 (a table shared by the
        batch can be ``.expand(batch, -1, -1)``: the kernel reads it through its strides, without a copy;
        one ``[seq, rotary_dim // 2]`` table for every sequence, such as a ViT's 2-D table over a fixed patch
        grid, is already a position cache indexed by token and can be passed 2-D). Gathering rows from a
        cache, ``cos[positions]`` with ``positions`` ``[batch, seq]``, gives the same result as passing the
        cache with those positions.
    * ``position_offset``: an int, or a ``[batch]`` integer tensor; token ``t`` of row ``b`` uses row
      ``t + offset[b]`` of the cache (decoding with a KV cache, ragged batches). Positions past the cache
      raise ``ValueError`` before any launch (a tensor offset costs one device sync for that check). Only 0
      with per-token rows.
    * ``interleaved``: ``False`` pairs dim i with i + rotary_dim/2 (GPT-NeoX/Llama), ``True`` pairs 2i with
      2i+1 (GPT-J/Meta). ``rotary_dim < head_dim`` rotates the first ``rotary_dim`` dims and copies the rest.
    * ``backend``: see `solutions.kernels.dispatch`; `solutions.kernels.last_run` says which path ran.

    The backward pass is the same kernel rotating by ``-theta`` (no gradient flows to cos/sin). Agreement with
    `rope_reference` per dtype: `TOLERANCES`.
    """
    offsets, offset_int = _check(x, cos, sin, position_offset)
    run = dispatch.select_backend("rope", x.device, x.numel(), backend)
    if run.backend == dispatch.TORCH_FALLBACK:
        return rope_reference(x, cos, sin, interleaved=interleaved, position_offset=position_offset)
    if x.numel() == 0:
        return x.clone()
    cos, sin = _table_operands(cos, sin)  # [max_pos, half] contiguous, or [batch, seq, half] with unit pair stride
    return _RopeFunction.apply(x, cos, sin, offsets, offset_int, bool(interleaved), run)
