"""Triton kernels for the course: fused RoPE, flash attention with an in-kernel positional bias, MLA decode.

Each idea is one file, in the style of the Triton tutorials (Tillet et al., "Triton: an intermediate language
and compiler for tiled neural network computations", MAPL 2019): the ``@triton.jit`` kernel, its launcher, and
the pure-torch oracle it is tested against, built on the reference package `solutions`:

========================  ============================================  =============================================
file                      kernel                                        oracle
========================  ============================================  =============================================
``rope_kernel.py``        `rope` (forward and backward; RoFormer)       `rope_reference` (`solutions.apply_rope`)
``attention_kernel.py``   `attention` (FlashAttention-2, ALiBi/T5)      `attention_reference` (`reference_attention`)
``mla_decode_kernel.py``  `mla_decode` (DeepSeek-V2 absorbed decode)    `mla_decode_reference` (`reference_attention`)
``dispatch.py``           the dispatcher: compiled/interpreter/torch    `describe_backend`, `last_run`
``devices.py``            named GPUs (A100, H100, H200): datasheets     `solutions.kernels.devices.gpu_of`
``aot.py``                ahead-of-time compilation, resources used     Triton's metadata and the cubin
``roofline.py``           bytes, FLOPs and predicted time of a call     the datasheet bandwidth and peak
``benchmark.py``          ``python -m solutions.kernels.benchmark``     against named baselines, in the same run
========================  ============================================  =============================================

Each kernel's GPU launch configuration is a pure function of the shapes, the dtype and a `devices.GPU`
(`rope_launch_config`, `attention_launch_config`, `mla_decode_launch_config`), so that ``aot`` compiles, on a
machine without a GPU, exactly what a GPU call launches (``tests/test_kernels_compile.py``).

The files are named ``*_kernel.py`` so that no submodule shares a name with the function it exports: with a
``rope.py``, any ``import solutions.kernels.rope`` would rebind ``solutions.kernels.rope`` to the module.

On CUDA tensors the kernels are compiled; on CPU tensors the same source runs under the Triton interpreter;
above a size (``dispatch.INTERPRETER_MAX_WORK``), or where Triton is missing, the torch oracle runs instead.
`last_run` says which, and the grid of each launch (a `KernelRun`). Each kernel module's ``TOLERANCES`` states
its agreement per dtype.

The names are imported lazily: ``import solutions.kernels`` does not import Triton; the first use does.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "rope": "rope_kernel",
    "rope_reference": "rope_kernel",
    "attention": "attention_kernel",
    "attention_reference": "attention_kernel",
    "t5_bias_by_offset": "attention_kernel",
    "mla_decode": "mla_decode_kernel",
    "mla_decode_reference": "mla_decode_kernel",
    "rope_launch_config": "rope_kernel",
    "attention_launch_config": "attention_kernel",
    "mla_decode_launch_config": "mla_decode_kernel",
    "record": "dispatch",
    "KernelRun": "dispatch",
    "last_run": "dispatch",
    "describe_backend": "dispatch",
    "select_backend": "dispatch",
    "BACKENDS": "dispatch",
    "INTERPRETER_MAX_WORK": "dispatch",
    "TRITON_AVAILABLE": "dispatch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
