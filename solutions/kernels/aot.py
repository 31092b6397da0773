"""Ahead-of-time compilation of the kernels for a GPU that is not there: what a launch would cost in resources.

Triton compiles for NVIDIA targets without a GPU: ``triton.compile(ASTSource(...), target=GPUTarget("cuda",
90, 32))`` runs the whole pipeline (Triton IR, layouts, ``tl.dot`` lowering, software pipelining, PTX, and
``ptxas`` to a cubin) on the CPU. The interpreter checks a kernel's arithmetic; only this compilation checks
what the GPU compiler checks: the shape rules of ``tl.dot``, layouts, shared memory per block and register
pressure. A kernel that the interpreter runs can still fail to launch on an H100.

What is compiled is exactly what the GPU path launches. Each kernel module plans its launches as data
(`solutions.kernels.dispatch.Launch`) from its tensors and its launch configuration (a pure function of the
shapes, the dtype and the `solutions.kernels.devices.GPU`). Here the tensors are ``meta`` tensors (shapes,
strides and dtypes, no memory), the configuration is the one the named GPU gets, and each launch's arguments
go through Triton's own argument specialisation (the binder that ``JITFunction.run`` uses: pointer alignment,
integers equal to 1 or divisible by 16, constexprs), so the signature compiled here is the one a launch on
that GPU would compile.

Resource use per compiled kernel (`CompiledKernel`): shared memory from Triton's metadata (what Triton checks
against the device's limit before launching), and registers and the per-thread stack frame from the cubin's
resource table (``cuobjdump -res-usage``, the tool that ships with Triton's NVIDIA backend). A Triton kernel
has no local arrays and makes no calls, so a non-zero stack frame is registers spilled to local memory.

This module imports Triton; ``import solutions.kernels`` does not import it.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from . import attention_kernel, dispatch, mla_decode_kernel, rope_kernel
from .devices import GPU


@dataclass(frozen=True)
class CompiledKernel:
    """The resources one compiled launch needs on one GPU.

    ``shared_memory`` and ``shared_memory_limit`` are bytes per block (the limit is the GPU's opt-in maximum,
    `solutions.kernels.devices`); ``registers`` per thread and ``spill_bytes`` (the stack frame, registers
    spilled to local memory) per thread come from the cubin, or are ``None`` where ``cuobjdump`` is missing.
    ``constants`` are the launch's compile-time arguments (block sizes and switches).
    """

    kernel: str
    gpu: str
    arch: str
    grid: tuple
    num_warps: int
    num_stages: int
    constants: dict
    shared_memory: int
    shared_memory_limit: int
    registers: int | None
    spill_bytes: int | None

    @property
    def fits(self) -> bool:
        """The block's shared memory fits the GPU's per-block limit (else Triton refuses to launch it)."""
        return self.shared_memory <= self.shared_memory_limit

    @property
    def spills(self) -> bool:
        """Registers spill to local memory (slower, but it runs); ``False`` when unknown."""
        return bool(self.spill_bytes)


def _binder(kernel, backend):
    """Triton's argument specialiser for ``kernel`` (what ``JITFunction.run`` calls), built for ``backend``."""
    return create_function_from_signature(kernel.signature, kernel.params, backend)


def _resource_usage(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, stack frame bytes) per thread of the one kernel in ``cubin``, from ``cuobjdump -res-usage``."""
    try:
        tool = triton.knobs.nvidia.cuobjdump.path
    except Exception:  # noqa: BLE001 - no cuobjdump in this Triton build: resources unknown, not an error
        return None, None
    if not tool or not os.path.exists(tool):
        return None, None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(cubin)
        table = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    registers, stack = re.search(r"REG:(\d+)", table), re.search(r"STACK:(\d+)", table)
    return (int(registers.group(1)) if registers else None, int(stack.group(1)) if stack else None)


def compile_launch(launch: dispatch.Launch, gpu: GPU) -> CompiledKernel:
    """Compile one planned launch for ``gpu`` (no GPU needed) and report its resources."""
    target = GPUTarget("cuda", gpu.capability[0] * 10 + gpu.capability[1], 32)
    backend = make_backend(target)
    kernel = launch.kernel
    # As JITFunction.run does before binding (Triton 3.x): the debug and instrumentation options.
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or triton.knobs.runtime.debug
    kwargs["instrumentation_mode"] = triton.knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = triton.knobs.compilation.fpsan_homomorphic_casts
    bound, specialization, options = _binder(kernel, backend)(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                              options=options.__dict__)
    registers, stack = _resource_usage(compiled.asm["cubin"])
    names = [p.name for p in kernel.params]
    constants = {name: launch.kwargs[name] for name in names if name in launch.kwargs}
    return CompiledKernel(
        kernel=kernel.fn.__name__, gpu=gpu.name, arch=gpu.arch, grid=tuple(launch.grid),
        num_warps=compiled.metadata.num_warps, num_stages=compiled.metadata.num_stages,
        constants=constants, shared_memory=compiled.metadata.shared,
        shared_memory_limit=gpu.shared_memory_per_block, registers=registers, spill_bytes=stack)


def _meta(*shape, dtype):
    return torch.empty(*shape, dtype=dtype, device="meta")


def rope_launches(gpu: GPU, *, batch: int, seq: int, heads: int, head_dim: int, rotary_dim: int | None = None,
                  dtype: torch.dtype = torch.bfloat16, interleaved: bool = False, backward: bool = False,
                  per_token: bool = False, offsets: bool = False, max_pos: int | None = None):
    """The launches `rope` makes on ``gpu`` for a contiguous ``x [batch, seq, heads, head_dim]``.

    ``rotary_dim`` defaults to ``head_dim``; ``per_token`` passes one cos/sin row per token instead of a
    position cache of ``max_pos`` rows (default ``seq``); ``offsets`` a ``[batch]`` tensor of position offsets;
    ``backward`` the gradient's launch. The tables are fp32, as `solutions.rope.rope_cos_sin` builds them.
    """
    rotary_dim = head_dim if rotary_dim is None else rotary_dim
    x = _meta(batch, seq, heads, head_dim, dtype=dtype)
    out = torch.empty_like(x)
    table_shape = (batch, seq, rotary_dim // 2) if per_token else (max_pos or seq, rotary_dim // 2)
    cos, sin = _meta(*table_shape, dtype=torch.float32), _meta(*table_shape, dtype=torch.float32)
    offset_tensor = _meta(batch, dtype=torch.int64) if offsets and not per_token else None
    config = rope_kernel.rope_launch_config(heads, head_dim, rotary_dim, gpu)
    return rope_kernel._plan_launches(x, out, cos, sin, offset_tensor, 0, interleaved, backward, config)


def attention_launches(gpu: GPU, *, batch: int, heads: int, q_len: int, k_len: int | None = None, head_dim: int,
                       dtype: torch.dtype = torch.bfloat16, causal: bool = True, bias: str = "alibi"):
    """The launches `attention` makes on ``gpu`` for contiguous ``q [batch, heads, q_len, head_dim]`` and
    ``k, v [batch, heads, k_len, head_dim]`` with ``bias`` one of `attention_kernel.BIAS_KINDS`."""
    k_len = q_len if k_len is None else k_len
    q = _meta(batch, heads, q_len, head_dim, dtype=dtype)
    k, v = _meta(batch, heads, k_len, head_dim, dtype=dtype), _meta(batch, heads, k_len, head_dim, dtype=dtype)
    slopes = _meta(heads, dtype=torch.float32) if bias == "alibi" else None
    per_offset = _meta(heads, q_len + k_len - 1, dtype=torch.float32) if bias == "per_offset" else None
    config = attention_kernel.attention_launch_config(head_dim, dtype, gpu, bias=bias)
    return attention_kernel._plan_launches(q, k, v, torch.empty_like(q), causal, slopes, per_offset,
                                           head_dim ** -0.5, config, dispatch.TRITON)


def mla_decode_launches(gpu: GPU, *, batch: int, heads: int, kv_lora_rank: int, rope_dim: int, max_len: int,
                        dtype: torch.dtype = torch.bfloat16, num_splits: int | None = None):
    """The launches `mla_decode` makes on ``gpu`` (the decode kernel, and the merge when the cache is split)."""
    config = mla_decode_kernel.mla_decode_launch_config(batch, heads, kv_lora_rank, rope_dim, max_len, dtype, gpu,
                                                        num_splits)
    q_latent, q_rope = _meta(batch, heads, kv_lora_rank, dtype=dtype), _meta(batch, heads, rope_dim, dtype=dtype)
    latent, rope_key = _meta(batch, max_len, kv_lora_rank, dtype=dtype), _meta(batch, max_len, rope_dim, dtype=dtype)
    lengths = _meta(batch, dtype=torch.int32)
    out = _meta(batch, heads, kv_lora_rank, dtype=dtype)
    return mla_decode_kernel._plan_launches(q_latent, q_rope, latent, rope_key, lengths, out, 0.1, config,
                                            dispatch.TRITON)


_PLANNERS = {"rope": rope_launches, "attention": attention_launches, "mla_decode": mla_decode_launches}


def compile_kernel(kernel: str, gpu: GPU, **shape) -> list[CompiledKernel]:
    """Compile every launch that kernel ``kernel`` (``"rope"``, ``"attention"`` or ``"mla_decode"``) makes on
    ``gpu`` for a call described by ``shape`` (the keywords of `rope_launches`, `attention_launches` or
    `mla_decode_launches`); returns one `CompiledKernel` per launch."""
    if kernel not in _PLANNERS:
        raise ValueError(f"kernel must be one of {sorted(_PLANNERS)}; got {kernel!r}")
    return [compile_launch(launch, gpu) for launch in _PLANNERS[kernel](gpu, **shape)]


def resource_table(rows) -> str:
    """A plain-text table of ``(label, CompiledKernel)`` rows: tiles, warps, stages, shared memory against the
    limit, registers and spilled bytes per thread, for a chapter to print."""
    header = ("configuration", "target", "kernel", "tiles", "warps", "stages", "shared KiB / limit",
              "registers", "spilled")
    lines = []
    for label, result in rows:
        tiles = " ".join(f"{name[len('BLOCK_'):]}={value}" for name, value in result.constants.items()
                         if name.startswith("BLOCK_"))
        lines.append((label, result.arch, result.kernel.strip("_"), tiles, str(result.num_warps),
                      str(result.num_stages),
                      f"{result.shared_memory / 1024:.1f} / {result.shared_memory_limit / 1024:.0f}",
                      "?" if result.registers is None else str(result.registers),
                      "?" if result.spill_bytes is None else f"{result.spill_bytes} B"))
    widths = [max(len(row[i]) for row in (header, *lines)) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in (header, *lines))
