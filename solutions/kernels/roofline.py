"""A roofline model of each kernel: the bytes a call must move, the FLOPs it must do, and the time they predict.

Williams, Waterman, Patterson, "Roofline: an insightful visual performance model for multicore
architectures", CACM 2009: a kernel cannot run faster than its memory traffic at the memory bandwidth, nor
than its arithmetic at the peak rate, so ``predicted time = max(bytes / bandwidth, flops / peak)``. The GPU
figures are the datasheets' (`solutions.kernels.devices`). A prediction is a lower bound on the time: launch
overhead (a few microseconds), caches, occupancy and the instruction mix are not in it, and
``python -m solutions.kernels.benchmark`` prints the measured time beside it on a GPU.

What is counted, per kernel (each function's docstring gives the formula):

* bytes: the *compulsory* traffic, every byte that must cross the memory interface once. Re-reads that a
  cache can serve (the attention kernel re-reads K and V once per block of queries; the position-cache rows
  of RoPE are shared by the batch) are not counted.
* FLOPs: the multiply-adds of the products as 2 operations each, and RoPE's rotation (4 multiplications and
  2 additions per pair). Exponentials, maxima and the rescaling of the online softmax are not counted, as in
  the FLOP counts of the FlashAttention papers.
* peak: the fp16/bf16 tensor-core peak for the kernels whose products run on tensor cores in those dtypes;
  the fp32 peak of the ordinary cores for fp32 (the kernels use exact "ieee" products, not TF32) and for
  RoPE (its arithmetic is fp32 element-wise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .devices import GPU

_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


def _element_size(dtype: torch.dtype) -> int:
    if dtype not in _BYTES:
        raise ValueError(f"dtype must be float32, float16 or bfloat16; got {dtype}")
    return _BYTES[dtype]


@dataclass(frozen=True)
class Cost:
    """The compulsory memory traffic (``bytes``) and arithmetic (``flops``) of one call.

    ``tensor_cores`` says which peak bounds the arithmetic: the fp16/bf16 tensor-core peak, or the fp32 peak.
    """

    bytes: int
    flops: int
    tensor_cores: bool

    @property
    def intensity(self) -> float:
        """FLOPs per byte: above the GPU's ridge point (peak / bandwidth) a call is bound by arithmetic."""
        return self.flops / self.bytes


@dataclass(frozen=True)
class Prediction:
    """The roofline time of a `Cost` on a GPU, in seconds, and which bound sets it."""

    gpu: str
    seconds: float
    memory_seconds: float
    compute_seconds: float

    @property
    def bound(self) -> str:
        """``"memory"`` or ``"compute"``: the larger of the two times."""
        return "memory" if self.memory_seconds >= self.compute_seconds else "compute"


def predict(cost: Cost, gpu: GPU) -> Prediction:
    """``max(bytes / bandwidth, flops / peak)`` on ``gpu``; ``ValueError`` for a GPU without datasheet figures."""
    peak = gpu.tensor_flops if cost.tensor_cores else gpu.fp32_flops
    if gpu.memory_bandwidth is None or peak is None:
        raise ValueError(f"{gpu.name} has no datasheet bandwidth and peak in solutions.kernels.devices")
    memory, compute = cost.bytes / gpu.memory_bandwidth, cost.flops / peak
    return Prediction(gpu.name, max(memory, compute), memory, compute)


def rope_cost(batch: int, seq: int, heads: int, head_dim: int, rotary_dim: int | None = None,
              dtype: torch.dtype = torch.bfloat16, *, table_dtype: torch.dtype = torch.float32,
              per_token: bool = False, per_row_offsets: bool = False) -> Cost:
    """One `rope` call (forward or backward: the same traffic) on ``x [batch, seq, heads, head_dim]``.

    bytes = 2 x (x's bytes) (read x, write y; the copied dims past ``rotary_dim`` included) + the cos and sin
    rows read: ``rotary_dim / 2`` values each per row, for ``seq`` rows when the batch shares the positions of a
    position cache, or ``batch * seq`` rows with per-token tables or a tensor of per-row offsets.
    flops = 6 per rotated pair (4 multiplications, 2 additions) = 3 x ``batch * seq * heads * rotary_dim``.
    """
    rotary_dim = head_dim if rotary_dim is None else rotary_dim
    elements = batch * seq * heads * head_dim
    rows = batch * seq if (per_token or per_row_offsets) else seq
    table_bytes = 2 * rows * (rotary_dim // 2) * _element_size(table_dtype)
    return Cost(2 * elements * _element_size(dtype) + table_bytes, 3 * batch * seq * heads * rotary_dim,
                tensor_cores=False)


def attended_pairs(q_len: int, k_len: int, causal: bool) -> int:
    """The (query, key) pairs whose score is not masked, for one head.

    Causal queries are aligned to the end of the keys (query i sits at key position ``k_len - q_len + i``),
    so query i sees ``k_len - q_len + i + 1`` keys: ``q_len * (k_len - q_len) + q_len * (q_len + 1) / 2`` in
    all, ``L (L + 1) / 2`` for a square attention, a little more than half of ``L^2``.
    """
    if not causal:
        return q_len * k_len
    return q_len * (k_len - q_len) + q_len * (q_len + 1) // 2


def attention_cost(batch: int, heads: int, q_len: int, k_len: int, head_dim: int,
                   dtype: torch.dtype = torch.bfloat16, *, causal: bool = True, bias: str = "alibi") -> Cost:
    """One `attention` forward call.

    flops = 4 x head_dim x (attended pairs) per (batch, head): two products, Q K^T and P V, of 2 FLOPs per
    multiply-add, over the pairs that `attended_pairs` counts (so causal is a little over half).
    bytes = q, k, v read once and the output written once, in ``dtype``, plus the bias operand: ``heads``
    fp32 slopes for ALiBi, the ``[heads, q_len + k_len - 1]`` fp32 per-offset vector for T5.
    """
    size = _element_size(dtype)
    tensors = batch * heads * (2 * q_len + 2 * k_len) * head_dim * size
    bias_bytes = {"none": 0, "alibi": 4 * heads, "per_offset": 4 * heads * (q_len + k_len - 1)}
    if bias not in bias_bytes:
        raise ValueError(f"bias must be one of {tuple(bias_bytes)}; got {bias!r}")
    flops = 4 * head_dim * batch * heads * attended_pairs(q_len, k_len, causal)
    return Cost(tensors + bias_bytes[bias], flops, tensor_cores=dtype != torch.float32)


def mla_decode_cost(batch: int, heads: int, cache_len: int, kv_lora_rank: int, rope_dim: int,
                    dtype: torch.dtype = torch.bfloat16, *, num_splits: int = 1) -> Cost:
    """One `mla_decode` step with ``cache_len`` cached tokens per sequence.

    bytes = the cache, ``batch * cache_len * (kv_lora_rank + rope_dim)`` values read once for all heads, plus
    the queries (``batch * heads * (kv_lora_rank + rope_dim)``) and the latent output
    (``batch * heads * kv_lora_rank``), in ``dtype``; with ``num_splits > 1``, the fp32 partial outputs and
    log-sum-exps, written by the decode kernel and read back by the merge.
    flops = per (sequence, head, token): 2 (kv_lora_rank + rope_dim) for the score and 2 kv_lora_rank for the
    weighted sum.
    """
    size = _element_size(dtype)
    width = kv_lora_rank + rope_dim
    cache = batch * cache_len * width * size
    queries_and_output = batch * heads * (width + kv_lora_rank) * size
    partials = 2 * batch * heads * num_splits * (kv_lora_rank + 1) * 4 if num_splits > 1 else 0
    flops = batch * heads * cache_len * (2 * width + 2 * kv_lora_rank)
    return Cost(cache + queries_and_output + partials, flops, tensor_cores=dtype != torch.float32)
