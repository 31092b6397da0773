"""The sinusoidal absolute position encoding.

Vaswani et al., "Attention Is All You Need", 2017 (arXiv 1706.03762), section 3.5:

    PE(pos, 2i)     = sin(pos / base^(2i / d))
    PE(pos, 2i + 1) = cos(pos / base^(2i / d))          with base = 10000.

The paper chose it because "for any fixed offset k, PE(pos + k) can be represented as a linear function of
PE(pos)": `sinusoidal_shift_matrix` builds that linear map.
"""

from __future__ import annotations

import torch

from ._checks import require_base, require_even_dim, require_positive_int


def sinusoidal_frequencies(dim: int, base: float = 10000.0) -> torch.Tensor:
    """``omega_i = base^(-2i/dim)`` for i = 0 .. dim/2 - 1, float64 (Vaswani et al. 2017, section 3.5)."""
    require_even_dim(dim)
    require_base(base)
    return float(base) ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def sinusoidal_encoding(num_positions: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """``[num_positions, dim]`` float32: even columns ``sin(p * omega_i)``, odd columns ``cos(p * omega_i)``.

    Vaswani et al. 2017, section 3.5 (the two equations for PE(pos, 2i) and PE(pos, 2i+1)). The angles are
    formed in float64 so that large positions keep their phase, then rounded once to float32.
    """
    require_positive_int(num_positions, "num_positions")
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * sinusoidal_frequencies(dim, base)
    encoding = torch.empty(num_positions, dim, dtype=torch.float64)
    encoding[:, 0::2] = torch.sin(angles)
    encoding[:, 1::2] = torch.cos(angles)
    return encoding.to(torch.float32)


def sinusoidal_shift_matrix(offset: float, dim: int, base: float = 10000.0) -> torch.Tensor:
    """The ``[dim, dim]`` float64 matrix ``M_k`` with ``PE(p + k) = M_k PE(p)`` for every position p.

    Vaswani et al. 2017, section 3.5: from sin(a + b) = sin a cos b + cos a sin b and
    cos(a + b) = cos a cos b - sin a sin b, each (sin, cos) pair at frequency omega_i is mapped by the block
    ``[[cos(k omega_i), sin(k omega_i)], [-sin(k omega_i), cos(k omega_i)]]``. The map depends on k only,
    not on p: that is the "relative" property of the encoding itself.
    """
    angles = offset * sinusoidal_frequencies(dim, base)
    matrix = torch.zeros(dim, dim, dtype=torch.float64)
    even = torch.arange(0, dim, 2)
    matrix[even, even] = torch.cos(angles)
    matrix[even, even + 1] = torch.sin(angles)
    matrix[even + 1, even] = -torch.sin(angles)
    matrix[even + 1, even + 1] = torch.cos(angles)
    return matrix
