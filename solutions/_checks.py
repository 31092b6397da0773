"""Argument checks shared by the package: every bad input becomes a ValueError that names the problem."""

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
