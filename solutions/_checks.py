"""Argument checks shared by the package: every bad input becomes a ValueError that names the problem.

The one exception is an argument that is not a tensor at all where a tensor is required: a TypeError.
"""

from __future__ import annotations

import torch


def require_even_dim(dim: int, what: str = "dim") -> None:
    """RoPE and the sinusoidal encoding pair dimensions up, so the size must be a positive even integer."""
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0 or dim % 2:
        raise ValueError(f"{what} must be a positive even integer (dimensions are used in pairs); got {dim!r}")


def require_positive_int(value: int, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{what} must be a positive integer; got {value!r}")


def require_base(base: float) -> None:
    if not float(base) > 1.0:
        raise ValueError(f"base must be greater than 1 (wavelengths grow as base^(2i/d)); got {base!r}")


def require_same_shape(a: torch.Tensor, b: torch.Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape; got {tuple(a.shape)} and {tuple(b.shape)}")


def require_integer_tensor(tensor: torch.Tensor, what: str, hint: str = "") -> None:
    """Offsets and positions index tables, so they must be integers: any integer dtype, not float, complex or bool.

    ``hint`` is appended to the message (e.g. why float positions are inexact).
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor; got {type(tensor).__name__}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise ValueError(f"{what} must be an integer tensor; got dtype {tensor.dtype}{hint}")
