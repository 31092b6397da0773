"""What the three kernel modules share: constants, the dtypes they accept, argument checks, integer helpers.

The helpers here are plain Python and torch, never Triton, so that the argument checks and the launch
configurations (`solutions.kernels.rope_kernel.rope_launch_config` and its siblings) work on a machine without
Triton or without a GPU.
"""

from __future__ import annotations

import math

import torch

LOG2E = 1.4426950408889634
"""log2(e): the kernels compute exp(x) as exp2(x * LOG2E), because exp2 is the GPU's native instruction."""

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
"""The storage dtypes every kernel accepts; the arithmetic is float32 whatever the storage."""

_DTYPE_NAMES = "float32, float16 or bfloat16"


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): a Triton block length must be a power of two."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """Ceiling division of non-negative integers: the number of blocks of b that cover a."""
    return -(-int(a) // int(b))


def describe(value) -> str:
    """A tensor's shape, or the type of anything else, for error messages."""
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__


def check_float_tensor(name: str, value, ndim: int, form: str) -> None:
    """``value`` must be an ``ndim``-D tensor of a supported dtype; ``form`` names its dimensions."""
    if not isinstance(value, torch.Tensor) or value.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D tensor {form}; got {describe(value)}")
    if value.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} must be {_DTYPE_NAMES}; got {value.dtype}")


def check_shared_dtype_and_device(named: dict) -> None:
    """All tensors of ``named`` (name -> tensor) have one dtype and live on one device."""
    names = ", ".join(named)
    dtypes = [t.dtype for t in named.values()]
    if len(set(dtypes)) != 1:
        raise ValueError(f"{names} must share a dtype; got {', '.join(str(d) for d in dtypes)}")
    devices = [t.device for t in named.values()]
    if len(set(devices)) != 1:
        raise ValueError(f"{names} must be on one device; got {', '.join(str(d) for d in devices)}")


def is_integer_tensor(value) -> bool:
    """A tensor of an integer dtype (not bool, float or complex)."""
    return (isinstance(value, torch.Tensor) and not value.dtype.is_floating_point and not value.is_complex()
            and value.dtype != torch.bool)


def check_integer_vector(name: str, value, length: int, device: torch.device, meaning: str) -> None:
    """``value`` must be an integer tensor of shape ``[length]`` on ``device``; ``meaning`` names the length."""
    if not is_integer_tensor(value) or value.shape != (length,):
        raise ValueError(f"{name} must be an integer {meaning} = [{length}] tensor; got "
                         f"{getattr(value, 'shape', value)} {getattr(value, 'dtype', '')}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but the other tensors are on {device}")


def is_positive_number(value) -> bool:
    """A finite number > 0 (bool is not a number here)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)
