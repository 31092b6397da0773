"""2-D RoPE for a grid of image patches: axial and mixed (learned directions).

Heo, Park, Han, Yun, "Rotary Position Embedding for Vision Transformer", ECCV 2024 (arXiv 2403.13298), and
its released code, github.com/naver-ai/rope-vit (``deit/models_v2_rope.py``: ``compute_axial_cis``,
``init_random_2d_freqs``, ``compute_mixed_cis``, ``init_t_xy``).

A patch at row y and column x is a 2-D position p = (y, x). Every rotary pair j turns by an angle that is
linear in p, ``angle_j(p) = theta_row[j] * y + theta_col[j] * x``, so for a query at p and a key at p'

    <R(p) q, R(p') k> = <q, R(p' - p) k>,

and the score depends only on (delta row, delta col), exactly as 1-D RoPE's depends on the offset.

* **Axial** ("RoPE-Axial"): half the pairs turn with the column, half with the row, each half with the 1-D
  frequencies ``base^(-4j/dim)``, j < dim/4 (base 100 in the released models). Layout, as in the released
  code: pairs ``0 .. dim/4 - 1`` follow the **column** x, pairs ``dim/4 .. dim/2 - 1`` follow
  the **row** y. (Qwen2-VL's vision tower puts the rows first; the two differ by a fixed permutation of the
  q/k coordinates, so they are the same model up to relabelling weights.)
* **Mixed** ("RoPE-Mixed"): each pair has a learnable frequency *vector* (theta_row, theta_col),
  per head and per layer, so a pair can turn along a diagonal. Axial is the special case where every vector
  is axis-aligned.

The paper's code stores q/k pairs interleaved (complex numbers, (2j, 2j+1)); the tables here are per pair
and work with either layout of `apply_rope`: ``interleaved=True`` reproduces the released code coordinate
for coordinate, the default half-split computes the same scores for permuted weights.

Changing the resolution is extrapolation in two dimensions. The released code evaluates larger images by
extrapolation (the larger grid's integer positions); ``train_size`` gives the interpolation alternative, the
2-D analogue of Position Interpolation (Chen et al. 2023): positions are scaled by train grid / test grid.
"""

from __future__ import annotations

import math

import torch

from ._checks import require_base, require_positive_int
from .rope import rope_cos_sin, rope_inv_freq


def _require_dim_multiple_of_4(dim: int) -> None:
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0 or dim % 4:
        raise ValueError(
            f"dim must be a positive multiple of 4 for 2-D RoPE (dim/2 pairs, split between rows and columns); "
            f"got {dim!r}"
        )


def _scales(height: int, width: int, train_size) -> tuple[float, float]:
    if train_size is None:
        return 1.0, 1.0
    try:
        train_height, train_width = (float(v) for v in train_size)
    except (TypeError, ValueError):
        raise ValueError(f"train_size must be (train_height, train_width); got {train_size!r}") from None
    if not (train_height > 0 and train_width > 0):
        raise ValueError(f"train_size must be positive; got {train_size!r}")
    return train_height / height, train_width / width


def rope2d_positions(height: int, width: int, train_size: tuple[float, float] | None = None) -> torch.Tensor:
    """The (row, col) positions of a ``[height, width]`` patch grid, flattened row-major: ``[height * width, 2]``.

    Token ``n = row * width + col`` has position ``(row, col)`` (the released rope-vit code's ``init_t_xy``:
    x = n mod width, y = n div width). With ``train_size = (train_height, train_width)`` the positions are
    interpolated, ``row * train_height / height`` and ``col * train_width / width`` (float32, fractional),
    so a larger test grid reuses the trained range of angles: Position Interpolation (Chen et al. 2023,
    arXiv 2306.15595) applied per axis.
    """
    require_positive_int(height, "height")
    require_positive_int(width, "width")
    row_scale, col_scale = _scales(height, width, train_size)
    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width) * row_scale
    cols = torch.arange(width, dtype=torch.float64).repeat(height) * col_scale
    return torch.stack((rows, cols), dim=-1).to(torch.float32)


def rope2d_cos_sin(
    dim: int,
    height: int,
    width: int,
    base: float = 100.0,
    train_size: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Axial 2-D RoPE tables for a ``[height, width]`` patch grid (Heo et al. 2024, RoPE-Axial).

    Returns ``(cos, sin)``, each ``[height * width, dim // 2]`` float32, for `apply_rope` on tokens flattened
    row-major (token ``row * width + col``). With ``q = dim // 4`` and ``f = rope_inv_freq(dim // 2, base)``
    (i.e. ``base^(-4j/dim)``, the released code's frequencies):

    * pairs ``0 .. q-1`` turn with the column: angle ``col * f[j]``;
    * pairs ``q .. 2q-1`` turn with the row: angle ``row * f[j - q]``.

    ``base`` defaults to 100, the released RoPE-Axial models' ``rope_theta`` (a patch grid is short; 10000
    would leave most pairs nearly still). ``train_size = (train_height, train_width)`` interpolates the positions
    (`rope2d_positions`); without it a larger grid extrapolates.
    """
    _require_dim_multiple_of_4(dim)
    require_base(base)
    positions = rope2d_positions(height, width, train_size).double()
    freqs = rope_inv_freq(dim // 2, base).double()
    cos_col, sin_col = rope_cos_sin(freqs, positions[:, 1])
    cos_row, sin_row = rope_cos_sin(freqs, positions[:, 0])
    cos = torch.cat((cos_col, cos_row), dim=-1).to(torch.float32)
    sin = torch.cat((sin_col, sin_row), dim=-1).to(torch.float32)
    return cos, sin


def axial_rope_freqs(dim: int, base: float = 100.0) -> torch.Tensor:
    """The axial layout as a frequency matrix for `mixed_rope_cos_sin`: ``[2, dim // 2]`` float32.

    ``freqs[0]`` is each pair's frequency along rows (theta_row), ``freqs[1]`` along columns (theta_col).
    Pairs ``0 .. dim/4 - 1`` have ``(0, f_j)`` and pairs ``dim/4 .. dim/2 - 1`` have ``(f_j, 0)`` with
    ``f = rope_inv_freq(dim // 2, base)``: the layout of `rope2d_cos_sin` (Heo et al. 2024, RoPE-Axial).
    """
    _require_dim_multiple_of_4(dim)
    require_base(base)
    quarter = dim // 4
    f = rope_inv_freq(dim // 2, base)
    freqs = torch.zeros(2, dim // 2, dtype=torch.float32)
    freqs[1, :quarter] = f
    freqs[0, quarter:] = f
    return freqs


def mixed_rope_freqs(
    dim: int,
    num_heads: int = 1,
    base: float = 10.0,
    rotate: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """RoPE-Mixed's initial frequency vectors, ``[num_heads, 2, dim // 2]`` float32 (to wrap in a Parameter).

    Heo et al. 2024 (RoPE-Mixed), as the released ``init_random_2d_freqs``: per head draw one direction
    ``phi ~ U[0, 2 pi)``; with magnitudes ``m_j = base^(-4j/dim)`` (j < dim/4; the released RoPE-Mixed models
    use base 10), pair j gets the vector ``m_j (cos phi, sin phi)`` and pair ``dim/4 + j`` the perpendicular
    ``m_j (cos(phi + pi/2), sin(phi + pi/2))``, both given as (x, y) = (column, row) components. Stored as
    ``freqs[h, 0]`` = theta_row (the y components) and ``freqs[h, 1]`` = theta_col (the x components). Call it
    once per layer: the paper learns a separate set for every layer and head.

    With ``rotate=False`` (phi = 0) the vectors are axis-aligned and the table equals `rope2d_cos_sin` with
    the same base. Here ``cos(phi + pi/2)`` is computed as ``-sin(phi)``, so phi = 0 gives exact zeros (the
    released code's ``cos(pi/2)`` leaves 6e-17). ``generator`` makes the draw reproducible.
    """
    _require_dim_multiple_of_4(dim)
    require_positive_int(num_heads, "num_heads")
    require_base(base)
    magnitude = rope_inv_freq(dim // 2, base).double()
    if rotate:
        phi = torch.rand(num_heads, 1, generator=generator, dtype=torch.float64) * (2 * math.pi)
    else:
        phi = torch.zeros(num_heads, 1, dtype=torch.float64)
    theta_col = torch.cat((magnitude * torch.cos(phi), magnitude * -torch.sin(phi)), dim=-1)
    theta_row = torch.cat((magnitude * torch.sin(phi), magnitude * torch.cos(phi)), dim=-1)
    return torch.stack((theta_row, theta_col), dim=1).to(torch.float32)


def mixed_rope_cos_sin(freqs: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D RoPE tables from per-pair frequency vectors (Heo et al. 2024, RoPE-Mixed).

    * ``freqs``: ``[..., 2, dim // 2]``: ``freqs[..., 0, j]`` = theta_row, ``freqs[..., 1, j]`` = theta_col
      (`mixed_rope_freqs`, `axial_rope_freqs`, or a learned Parameter; ``[heads, 2, dim // 2]`` for one per
      head).
    * ``positions``: ``[n, 2]`` (row, col), integer or fractional (`rope2d_positions`).

    Returns ``(cos, sin)``, each ``[..., n, dim // 2]`` with angle ``theta_row * row + theta_col * col``
    (the released ``compute_mixed_cis``). Differentiable in ``freqs``, so the frequencies can be trained.
    For per-head freqs the result is ``[heads, n, dim // 2]``, which broadcasts against ``x`` of
    ``[batch, heads, n, dim]`` in `apply_rope`.
    """
    if not isinstance(freqs, torch.Tensor) or freqs.dim() < 2 or freqs.shape[-2] != 2:
        shape = tuple(freqs.shape) if isinstance(freqs, torch.Tensor) else type(freqs).__name__
        raise ValueError(f"freqs must be [..., 2, dim // 2] (theta_row, theta_col per pair); got {shape}")
    if not isinstance(positions, torch.Tensor) or positions.dim() != 2 or positions.shape[-1] != 2:
        shape = tuple(positions.shape) if isinstance(positions, torch.Tensor) else type(positions).__name__
        raise ValueError(f"positions must be [n, 2] (row, col) per token; got {shape}")
    compute_dtype = torch.promote_types(freqs.dtype, torch.float32)
    freqs = freqs.to(compute_dtype)
    positions = positions.to(device=freqs.device, dtype=compute_dtype)
    theta_row = freqs[..., 0:1, :]  # [..., 1, P]
    theta_col = freqs[..., 1:2, :]
    angles = positions[:, 0:1] * theta_row + positions[:, 1:2] * theta_col  # [..., n, P]
    return torch.cos(angles), torch.sin(angles)
