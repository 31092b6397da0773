"""Benchmark the course's Triton kernels against named baselines in one run; write JSON and a plot.

    python -m solutions.kernels.benchmark --out FILE.json [--plot FILE.png] [--quick]

Every figure is measured in the same process, on the same device, in the same run as its baselines, so the
ratios are meaningful even where the absolute numbers are not comparable across machines:

* RoPE: achieved GB/s (x read + y written) as a fraction of the *copy bandwidth*, measured here by
  ``x.clone()`` of the same bytes (the physical limit of a memory-bound op); the ratio to torch eager
  (`rope_reference`, i.e. `solutions.apply_rope` with the cos/sin gather), to ``torch.compile`` of that
  reference, and to Liger-Kernel's Triton RoPE (q and k in one launch, against our two launches).
* Attention (causal ALiBi): TFLOP/s (``4 * batch * heads * L^2 * d / 2`` for causal) against
  ``scaled_dot_product_attention`` with a materialised ``[heads, L, L]`` bias and against FlexAttention
  (``torch.nn.attention.flex_attention``) with an ALiBi ``score_mod`` and a causal block mask.
* MLA decode: GB/s of cache read (``batch * len * (kv_lora_rank + rope_dim)`` elements) against the same
  copy bandwidth, against torch eager of the absorbed path (einsum, softmax, einsum) and against the naive
  path (per-head K and V rebuilt from the latent with W^UK, W^UV, then SDPA), as
  `solutions.mla.MultiHeadLatentAttention` does in its two modes.

Beside each of our kernels' times stands its roofline prediction (`solutions.kernels.roofline`: the compulsory
bytes and FLOPs of the call at the GPU's datasheet bandwidth and peak), and the fraction of it reached; a GPU
without datasheet figures in `solutions.kernels.devices` gets the counts without a predicted time.

On a GPU: ``triton.testing.do_bench`` (median, L2 flushed between runs), at the sizes the kernels serve (RoPE
at Llama sizes, attention at 1k-16k tokens and head_dim 64/128, MLA decode at DeepSeek-V2 sizes). On a CPU the kernels
run under the Triton interpreter at tiny shapes, timed by ``time.perf_counter`` (median after a warm-up):
that is a *smoke run* that keeps this script working, and its numbers say nothing about performance; the
JSON and the plot say so. A baseline that cannot run records why (``"skipped"``) instead of failing the run.
Python warnings raised by baselines (e.g. FlexAttention without compile) are recorded, not printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings

import torch

from ..alibi import alibi_bias, alibi_slopes
from ..rope import rope_cos_sin, rope_inv_freq
from . import dispatch, roofline
from .devices import gpu_of
from .attention_kernel import attention
from .mla_decode_kernel import mla_decode, mla_decode_launch_config, mla_decode_reference
from .rope_kernel import rope, rope_reference

SCHEMA_VERSION = 2  # 2: a "roofline" entry per case (bytes, flops, predicted_ms, fraction_of_roofline)

# (batch, seq, heads, head_dim): Llama-2-7B / Llama-3-8B query shapes at training and prefill sizes.
GPU_ROPE = [(1, 4096, 32, 128), (4, 4096, 32, 128), (8, 2048, 32, 128), (4, 4096, 8, 128), (4, 4096, 32, 64)]
# (batch, heads, seq, head_dim): causal ALiBi at 1k-16k tokens, d = 64 and 128 (16 heads keep the
# materialised bf16 bias of the SDPA baseline at 8 GB for 16k).
GPU_ATTENTION = [(2, 16, seq, d) for d in (64, 128) for seq in (1024, 2048, 4096, 8192, 16384)]
# (batch, heads, cache_len, kv_lora_rank, rope_dim): DeepSeek-V2/V3 (512 + 64), 128 heads (one GPU) or 16 (TP 8).
GPU_MLA = [(1, 128, 16384, 512, 64), (8, 128, 4096, 512, 64), (32, 128, 4096, 512, 64), (8, 128, 16384, 512, 64),
           (32, 16, 4096, 512, 64), (64, 16, 1024, 512, 64)]

# CPU smoke shapes: the first of each list is the --quick run (a few interpreted program instances each).
CPU_ROPE = [(1, 4, 4, 32), (2, 16, 3, 64)]
CPU_ATTENTION = [(1, 2, 16, 16), (1, 2, 64, 32)]
CPU_MLA = [(1, 4, 16, 64, 16), (2, 4, 96, 64, 16)]


# ----------------------------------------------------------------------------------------------- timing


class Timer:
    """Median milliseconds of a callable: CUDA events via triton.testing.do_bench, or perf_counter on the CPU."""

    def __init__(self, device: torch.device, quick: bool):
        self.device = device
        if device.type == "cuda":
            self.warmup_ms, self.rep_ms = (10, 30) if quick else (25, 100)
            if dispatch.TRITON_AVAILABLE:
                import triton.testing

                self._bench = triton.testing.do_bench
                self.description = (f"triton.testing.do_bench: median of CUDA-event timings, L2 cache flushed "
                                    f"between runs, warm-up {self.warmup_ms} ms, repetitions {self.rep_ms} ms")
            else:
                self._bench = _cuda_event_median
                self.description = (f"CUDA events (Triton is not installed): median after a warm-up of "
                                    f"{self.warmup_ms} ms, repetitions {self.rep_ms} ms, L2 not flushed")
        else:
            self.warmup, self.reps = (1, 1) if quick else (1, 5)
            self.description = (f"time.perf_counter: median of {self.reps} runs after {self.warmup} warm-up "
                                f"run(s) (CPU smoke run)")

    def __call__(self, fn) -> float:
        if self.device.type == "cuda":
            return float(self._bench(fn, warmup=self.warmup_ms, rep=self.rep_ms, return_mode="median"))
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e3


def _cuda_event_median(fn, warmup: int, rep: int, return_mode: str = "median") -> float:
    """Median milliseconds of ``fn`` by CUDA events, for a CUDA machine without Triton's ``do_bench``."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    once = max(start.elapsed_time(end), 1e-3)
    for _ in range(max(1, int(warmup / once))):
        fn()
    times = []
    for _ in range(max(5, int(rep / once))):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _roofline(cost: roofline.Cost, device: torch.device, results: dict, ours: str) -> dict:
    """The case's roofline entry: its counts and, on a GPU with datasheet figures, the predicted time and the
    fraction of it that our kernel reached (predicted / measured: 1.0 is the roofline)."""
    entry = {"bytes": cost.bytes, "flops": cost.flops, "peak": "tensor" if cost.tensor_cores else "fp32"}
    if device.type != "cuda":
        return {**entry, "predicted_ms": None, "note": "no GPU: no prediction to compare with"}
    gpu = gpu_of(device)
    if gpu.memory_bandwidth is None:
        return {**entry, "predicted_ms": None, "note": f"no datasheet figures for {gpu.name}"}
    prediction = roofline.predict(cost, gpu)
    entry.update(gpu=gpu.name, predicted_ms=prediction.seconds * 1e3, bound=prediction.bound)
    measured = results.get(ours, {}).get("ms")
    entry["fraction_of_roofline"] = prediction.seconds * 1e3 / measured if measured else None
    return entry


def _measure(results: dict, name: str, timer: Timer, fn, *, nbytes: float | None = None,
             flops: float | None = None, extra: dict | None = None, ours: bool = False) -> None:
    """Time ``fn`` into ``results[name]``; a baseline that raises is recorded as skipped, ours re-raises."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ms = timer(fn)
    except Exception as error:  # noqa: BLE001 - a baseline that cannot run is data, not a crash
        if ours:
            raise
        results[name] = {"skipped": f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return
    entry = {"ms": ms}
    if nbytes is not None:
        entry["gbps"] = nbytes / (ms * 1e-3) / 1e9
    if flops is not None:
        entry["tflops"] = flops / (ms * 1e-3) / 1e12
    if extra:
        entry.update(extra)
    if caught:
        entry["warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:200]}" for w in caught})
    results[name] = entry


def _ratio(results: dict, numerator: str, denominator: str, key: str = "ms"):
    """results[numerator][key] / results[denominator][key], or None when either is missing."""
    a, b = results.get(numerator, {}), results.get(denominator, {})
    if key in a and key in b and b[key]:
        return a[key] / b[key]
    return None


def _kernel_backend(device: torch.device) -> str:
    """Compiled on CUDA; on the CPU the interpreter at any size (a smoke run), or the reference without Triton."""
    return "auto" if device.type == "cuda" or not dispatch.TRITON_AVAILABLE else "interpreter"


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _compile(fn, device: torch.device, quick: bool):
    """torch.compile(fn), or the reason it is not used."""
    if quick and device.type != "cuda":
        return None, "skipped in --quick mode on the CPU (compilation takes tens of seconds)"
    if not hasattr(torch, "compile"):
        return None, "torch.compile is unavailable in this torch build"
    try:
        return torch.compile(fn, dynamic=False), None
    except Exception as error:  # noqa: BLE001
        return None, f"torch.compile failed: {type(error).__name__}: {error}"


# ------------------------------------------------------------------------------------------------- RoPE


def bench_rope(device, dtype, timer: Timer, cases, quick: bool) -> dict:
    kernel_backend = _kernel_backend(device)
    compiled, compile_reason = _compile(rope_reference, device, quick)
    try:
        from liger_kernel.transformers.rope import liger_rotary_pos_emb
        liger_reason = None if device.type == "cuda" else "Liger-Kernel's kernels are compiled Triton: CUDA only"
    except ImportError:
        liger_rotary_pos_emb, liger_reason = None, "Liger-Kernel is not installed (pip install liger-kernel)"
    out = []
    for batch, seq, heads, head_dim in cases:
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = torch.randn(batch, seq, heads, head_dim, generator=gen).to(device=device, dtype=dtype)
        k = torch.randn(batch, seq, heads, head_dim, generator=gen).to(device=device, dtype=dtype)
        cos, sin = rope_cos_sin(rope_inv_freq(head_dim).to(device), seq)
        nbytes = 2 * x.numel() * x.element_size()  # read x, write y (cos/sin rows are ~1/heads of that, cached)
        results: dict = {}
        _measure(results, "copy (x.clone())", timer, lambda: x.clone(), nbytes=nbytes)
        _measure(results, "triton rope (ours)", timer, lambda: rope(x, cos, sin, backend=kernel_backend),
                 nbytes=nbytes, ours=True)
        results["triton rope (ours)"]["backend"] = dispatch.last_run("rope").backend
        # The same rotation from one cos/sin row per token ([batch, seq, half], as M-RoPE and 2-D RoPE build
        # them): the rows add batch * seq * half * 2 reads that the cache path shares across the batch, not
        # counted in the GB/s.
        cos_rows = cos[None].expand(batch, -1, -1).contiguous()  # [batch, seq, head_dim // 2]
        sin_rows = sin[None].expand(batch, -1, -1).contiguous()
        _measure(results, "triton rope (ours), per-token cos/sin rows", timer,
                 lambda: rope(x, cos_rows, sin_rows, backend=kernel_backend), nbytes=nbytes, ours=True)
        _measure(results, "torch eager (rope_reference / apply_rope)", timer, lambda: rope_reference(x, cos, sin),
                 nbytes=nbytes)
        if compiled is not None:
            _measure(results, "torch.compile(rope_reference)", timer, lambda: compiled(x, cos, sin), nbytes=nbytes)
        else:
            results["torch.compile(rope_reference)"] = {"skipped": compile_reason}
        # Liger rotates q and k in one in-place launch on [batch, heads, seq, dim] views of [batch, seq, heads,
        # dim] storage, with full-width HF cos/sin; ours does the same bytes in two out-of-place launches.
        if liger_rotary_pos_emb is not None and liger_reason is None:
            _measure(results, "triton rope (ours), q and k", timer,
                     lambda: (rope(x, cos, sin, backend=kernel_backend), rope(k, cos, sin, backend=kernel_backend)),
                     nbytes=2 * nbytes, ours=True)
            cos_hf = torch.cat((cos, cos), -1)[None].to(dtype)
            sin_hf = torch.cat((sin, sin), -1)[None].to(dtype)
            q_l, k_l = x.clone().transpose(1, 2), k.clone().transpose(1, 2)
            _measure(results, "liger-kernel rope, q and k", timer,
                     lambda: liger_rotary_pos_emb(q_l, k_l, cos_hf, sin_hf), nbytes=2 * nbytes)
        else:
            results["liger-kernel rope, q and k"] = {"skipped": liger_reason}
            results["triton rope (ours), q and k"] = {"skipped": "only timed as Liger's counterpart"}
        y = rope(x, cos, sin, backend=kernel_backend)
        out.append({
            "shape": {"batch": batch, "seq": seq, "heads": heads, "head_dim": head_dim, "dtype": str(dtype)},
            "bytes": nbytes,
            "roofline": _roofline(roofline.rope_cost(batch, seq, heads, head_dim, dtype=dtype), device, results,
                                  "triton rope (ours)"),
            "max_abs_err_vs_reference": _max_err(y, rope_reference(x, cos, sin)),
            "results": results,
            "ratios": {
                "fraction_of_copy_bandwidth": _ratio(results, "triton rope (ours)", "copy (x.clone())", "gbps"),
                "speedup_vs_torch_eager": _ratio(results, "torch eager (rope_reference / apply_rope)",
                                                 "triton rope (ours)"),
                "speedup_vs_torch_compile": _ratio(results, "torch.compile(rope_reference)", "triton rope (ours)"),
                "speedup_vs_liger": _ratio(results, "liger-kernel rope, q and k", "triton rope (ours), q and k"),
                "per_token_rows_time_vs_cache": _ratio(results, "triton rope (ours), per-token cos/sin rows",
                                                       "triton rope (ours)"),
            },
        })
    return {"what": "RoPE forward, half-split, full rotary, positions 0..seq-1; GB/s = (x read + y written) / "
                    "time; copy bandwidth = the same bytes by x.clone()", "cases": out}


# -------------------------------------------------------------------------------------------- attention


def bench_attention(device, dtype, timer: Timer, cases, quick: bool) -> dict:
    import torch.nn.functional as F

    kernel_backend = _kernel_backend(device)
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex_reason = None
    except ImportError as error:
        flex_attention = create_block_mask = None
        flex_reason = f"FlexAttention is unavailable in torch {torch.__version__}: {error}"
    flex = None
    if flex_attention is not None:
        if device.type == "cuda":
            flex, reason = _compile(flex_attention, device, quick)
            flex_reason = reason
        elif quick:
            flex_reason = "skipped in --quick mode on the CPU (building the block mask and the first call take ~5 s)"
        else:
            flex = flex_attention  # eager on the CPU: the unfused path, smoke only
    out = []
    for batch, heads, seq, head_dim in cases:
        gen = torch.Generator(device="cpu").manual_seed(0)
        q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=gen).to(device=device, dtype=dtype)
                   for _ in range(3))
        slopes = alibi_slopes(heads).to(device)
        flops = 4 * batch * heads * seq * seq * head_dim * 0.5  # two matmuls, causal half
        results: dict = {}
        _measure(results, "triton flash attention + ALiBi (ours)", timer,
                 lambda: attention(q, k, v, causal=True, alibi_slopes=slopes, backend=kernel_backend),
                 flops=flops, ours=True)
        results["triton flash attention + ALiBi (ours)"]["backend"] = dispatch.last_run("attention").backend
        ours = attention(q, k, v, causal=True, alibi_slopes=slopes, backend=kernel_backend)
        err = None
        try:
            bias = alibi_bias(slopes, seq, seq, causal=True).to(dtype)[None]  # [1, heads, L, L], -inf above
            _measure(results, "sdpa + materialised ALiBi bias", timer,
                     lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias), flops=flops,
                     extra={"bias_bytes": bias.numel() * bias.element_size()})
            err = _max_err(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=bias))
            del bias
        except Exception as error:  # noqa: BLE001 - e.g. the bias does not fit in memory
            results["sdpa + materialised ALiBi bias"] = {"skipped": f"{type(error).__name__}: {error}"[:300]}
            bias = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if flex is not None:
            def alibi_mod(score, b, h, q_idx, kv_idx):
                return score - slopes[h] * (q_idx - kv_idx)

            def causal(b, h, q_idx, kv_idx):
                return q_idx >= kv_idx

            try:
                block_mask = create_block_mask(causal, None, None, seq, seq, device=str(device))
                _measure(results, "flex_attention + ALiBi score_mod", timer,
                         lambda: flex(q, k, v, score_mod=alibi_mod, block_mask=block_mask), flops=flops,
                         extra={"compiled": device.type == "cuda"})
            except Exception as error:  # noqa: BLE001
                results["flex_attention + ALiBi score_mod"] = {"skipped": f"{type(error).__name__}: {error}"[:300]}
        else:
            results["flex_attention + ALiBi score_mod"] = {"skipped": flex_reason}
        out.append({
            "shape": {"batch": batch, "heads": heads, "seq": seq, "head_dim": head_dim, "dtype": str(dtype),
                      "causal": True, "bias": "alibi"},
            "flops": flops,
            "roofline": _roofline(roofline.attention_cost(batch, heads, seq, seq, head_dim, dtype, causal=True,
                                                          bias="alibi"),
                                  device, results, "triton flash attention + ALiBi (ours)"),
            "max_abs_err_vs_sdpa": err,
            "results": results,
            "ratios": {
                "speedup_vs_sdpa_materialised_bias": _ratio(results, "sdpa + materialised ALiBi bias",
                                                            "triton flash attention + ALiBi (ours)"),
                "speedup_vs_flex_attention": _ratio(results, "flex_attention + ALiBi score_mod",
                                                    "triton flash attention + ALiBi (ours)"),
            },
        })
    return {"what": "causal attention with ALiBi, forward; TFLOP/s counts 4 * B * H * L^2 * d / 2", "cases": out}


# ------------------------------------------------------------------------------------------- MLA decode


def _torch_absorbed(q_latent, q_rope, latent, rope_key, sm_scale):
    # The absorbed path of solutions.mla.MultiHeadLatentAttention, for one query: einsum, fp32 softmax, einsum.
    scores = (torch.einsum("bhc,btc->bht", q_latent, latent)
              + torch.einsum("bhr,btr->bht", q_rope, rope_key)) * sm_scale
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(latent.dtype)
    return torch.einsum("bht,btc->bhc", probs, latent)


def _torch_naive(q_nope, q_rope, latent, rope_key, w_uk, w_uv, sm_scale):
    # The naive path: rebuild per-head K (nope part) and V from the latent for the whole cache, then attention.
    import torch.nn.functional as F

    k_nope = torch.einsum("btc,hdc->bhtd", latent, w_uk)
    value = torch.einsum("btc,hdc->bhtd", latent, w_uv)
    heads = q_nope.shape[1]
    key = torch.cat((k_nope, rope_key[:, None].expand(-1, heads, -1, -1)), -1)
    query = torch.cat((q_nope, q_rope), -1)[:, :, None]
    return F.scaled_dot_product_attention(query, key, value, scale=sm_scale)


def bench_mla(device, dtype, timer: Timer, cases, quick: bool) -> dict:
    kernel_backend = _kernel_backend(device)
    out = []
    for batch, heads, length, rank, rope_dim in cases:
        gen = torch.Generator(device="cpu").manual_seed(0)

        def rand(*shape):
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

        q_latent, q_rope = rand(batch, heads, rank), rand(batch, heads, rope_dim)
        latent, rope_key = rand(batch, length, rank), rand(batch, length, rope_dim)
        lengths = torch.full((batch,), length, device=device, dtype=torch.int32)
        nope_dim = v_dim = 128 if rank >= 256 else 16
        sm_scale = (nope_dim + rope_dim) ** -0.5
        nbytes = (latent.numel() + rope_key.numel()) * latent.element_size()  # the cache, read once
        results: dict = {}
        _measure(results, "copy (cache.clone())", timer, lambda: (latent.clone(), rope_key.clone()),
                 nbytes=2 * nbytes)
        _measure(results, "triton mla_decode (ours)", timer,
                 lambda: mla_decode(q_latent, q_rope, latent, rope_key, lengths, sm_scale=sm_scale,
                                    backend=kernel_backend),
                 nbytes=nbytes, ours=True)
        results["triton mla_decode (ours)"]["backend"] = dispatch.last_run("mla_decode").backend
        _measure(results, "torch absorbed (einsum, softmax, einsum)", timer,
                 lambda: _torch_absorbed(q_latent, q_rope, latent, rope_key, sm_scale), nbytes=nbytes)
        try:
            w_uk, w_uv = rand(heads, nope_dim, rank) * rank ** -0.5, rand(heads, v_dim, rank) * rank ** -0.5
            q_nope = rand(batch, heads, nope_dim)
            _measure(results, "torch naive (per-head K/V from the latent, then SDPA)", timer,
                     lambda: _torch_naive(q_nope, q_rope, latent, rope_key, w_uk, w_uv, sm_scale), nbytes=nbytes)
        except Exception as error:  # noqa: BLE001
            results["torch naive (per-head K/V from the latent, then SDPA)"] = {
                "skipped": f"{type(error).__name__}: {error}"[:300]}
        ours = mla_decode(q_latent, q_rope, latent, rope_key, lengths, sm_scale=sm_scale, backend=kernel_backend)
        last_config = mla_decode_launch_config(
            batch, heads, rank, rope_dim, length, dtype,
            gpu_of(device) if device.type == "cuda" else dispatch.INTERPRETER)
        out.append({
            "shape": {"batch": batch, "heads": heads, "cache_len": length, "kv_lora_rank": rank,
                      "rope_dim": rope_dim, "dtype": str(dtype)},
            "bytes": nbytes,
            "roofline": _roofline(roofline.mla_decode_cost(batch, heads, length, rank, rope_dim, dtype,
                                                           num_splits=last_config.num_splits),
                                  device, results, "triton mla_decode (ours)"),
            "max_abs_err_vs_reference": _max_err(
                ours, mla_decode_reference(q_latent, q_rope, latent, rope_key, lengths, sm_scale=sm_scale)),
            "results": results,
            "ratios": {
                "fraction_of_copy_bandwidth": _ratio(results, "triton mla_decode (ours)", "copy (cache.clone())",
                                                     "gbps"),
                "speedup_vs_torch_absorbed": _ratio(results, "torch absorbed (einsum, softmax, einsum)",
                                                    "triton mla_decode (ours)"),
                "speedup_vs_torch_naive": _ratio(results, "torch naive (per-head K/V from the latent, then SDPA)",
                                                 "triton mla_decode (ours)"),
            },
        })
    return {"what": "one MLA decode step, absorbed; GB/s = cache bytes read / time; copy bandwidth = "
                    "(read + write) bytes of cache.clone() / time", "cases": out}


# ------------------------------------------------------------------------------------------ run, plot


def device_info(device: torch.device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": torch.cuda.get_device_name(device),
                "capability": f"{props.major}.{props.minor}", "sm_count": props.multi_processor_count,
                "memory_gib": round(props.total_memory / 2 ** 30, 1)}
    return {"type": device.type, "name": platform.processor() or platform.machine(),
            "cpu_count": torch.get_num_threads()}


def run(quick: bool = False, device: str | None = None) -> dict:
    """Run every benchmark; returns the JSON-ready dict."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    timer = Timer(device, quick)
    smoke = device.type != "cuda"
    if smoke:
        dtype = torch.float32
        rope_cases, attn_cases, mla_cases = CPU_ROPE, CPU_ATTENTION, CPU_MLA
    else:
        dtype = torch.bfloat16
        rope_cases, attn_cases, mla_cases = GPU_ROPE, GPU_ATTENTION, GPU_MLA
    if quick:
        rope_cases, attn_cases, mla_cases = rope_cases[:1], attn_cases[:1], mla_cases[:1]
    how_cpu_ran = "under the Triton interpreter" if dispatch.TRITON_AVAILABLE else "as their torch references"
    return {
        "schema_version": SCHEMA_VERSION,
        "smoke_run": smoke,
        "note": ("GPU run: compiled Triton kernels" if not smoke else
                 f"CPU smoke run: the kernels ran {how_cpu_ran} at tiny shapes; these timings say nothing about "
                 f"performance"),
        "device": device_info(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "triton": dispatch.triton.__version__ if dispatch.TRITON_AVAILABLE else None},
        "command": " ".join(["python -m solutions.kernels.benchmark", *sys.argv[1:]]),
        "quick": quick,
        "backend": dispatch.describe_backend(device),
        "timer": timer.description,
        "rope": bench_rope(device, dtype, timer, rope_cases, quick),
        "attention": bench_attention(device, dtype, timer, attn_cases, quick),
        "mla_decode": bench_mla(device, dtype, timer, mla_cases, quick),
    }


# Per section: the metric plotted, the panel's title, how a case's shape is labelled, and the course's kernel.
SECTIONS = {
    "rope": ("gbps", "RoPE: GB/s (x read + y written)",
             lambda s: f"{s['batch']}x{s['seq']}x{s['heads']}x{s['head_dim']}", "triton rope (ours)"),
    "attention": ("tflops", "causal ALiBi attention: TFLOP/s", lambda s: f"L={s['seq']} d={s['head_dim']}",
                  "triton flash attention + ALiBi (ours)"),
    "mla_decode": ("gbps", "MLA decode: GB/s of cache read", lambda s: f"b{s['batch']} h{s['heads']} T={s['cache_len']}",
                   "triton mla_decode (ours)"),
}


def plot_section(ax, results: dict, section: str) -> None:
    """One bar per implementation and case of ``section`` on the matplotlib axes ``ax`` (log scale: the
    baselines differ by orders of magnitude, and the interpreter by more)."""
    metric, title, label, _ = SECTIONS[section]
    cases = results[section]["cases"]
    names = []
    for case in cases:
        names += [n for n, r in case["results"].items() if metric in r and n not in names]
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [case["results"].get(name, {}).get(metric, math.nan) for case in cases]
        ax.bar([j + i * width for j in range(len(cases))], values, width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cases))])
    ax.set_xticklabels([label(c["shape"]) for c in cases], rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.minorticks_off()
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6)


def summary_lines(results: dict, section: str) -> list[str]:
    """Per case of ``section``: its ratios against the named baselines and, where a GPU ran, the course's
    kernel measured against the roofline prediction."""
    ours = SECTIONS[section][3]
    lines = []
    for case in results[section]["cases"]:
        ratios = {k: round(v, 3) for k, v in case["ratios"].items() if v is not None}
        lines.append(f"{section} {case['shape']}: {ratios}")
        predicted = case["roofline"]["predicted_ms"]
        if predicted is not None:  # a GPU ran: measured against predicted
            measured = case["results"][ours]["ms"]
            lines.append(f"    measured {measured:.4f} ms, roofline {predicted:.4f} ms "
                         f"({case['roofline']['bound']}-bound on {case['roofline']['gpu']}): "
                         f"{predicted / measured:.0%} of the roofline")
    return lines


def plot(results: dict, path: str) -> None:
    """Three panels (RoPE GB/s, attention TFLOP/s, MLA decode GB/s), titled with the device and date."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    for ax, section in zip(axes, SECTIONS):
        plot_section(ax, results, section)
    device = results["device"]["name"]
    headline = f"{device}, {results['date'][:10]}, torch {results['versions']['torch']}, " \
               f"triton {results['versions']['triton']}"
    if results["smoke_run"]:
        headline = "SMOKE RUN (CPU, Triton interpreter): not a performance measurement. " + headline
    fig.suptitle(headline, fontsize=10)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.22, top=0.86, wspace=0.18)  # fixed: tight_layout is slow
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m solutions.kernels.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--plot", help="PNG file for the plot (matplotlib)")
    parser.add_argument("--quick", action="store_true", help="one shape per kernel, fewer repetitions")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    args = parser.parse_args(argv)
    # Create the output folders before measuring: a missing folder must not waste a whole GPU run.
    for path in filter(None, (args.out, args.plot)):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    results = run(quick=args.quick, device=args.device)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)
    if args.plot:
        plot(results, args.plot)
    summary = [line for section in SECTIONS for line in summary_lines(results, section)]
    print(("SMOKE RUN (CPU interpreter), not performance\n" if results["smoke_run"] else "")
          + f"{results['device']['name']}: wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
