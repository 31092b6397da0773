"""Learned absolute position embeddings (BERT, GPT-2).

Vaswani et al. 2017 (arXiv 1706.03762), section 3.5 and Table 3 row (E), compare "learned positional
embeddings" with the sinusoids and find them on par; BERT (Devlin et al. 2019) and GPT-2 (Radford et al.
2019) use them. A table of ``max_positions x dim`` trained vectors is added to the token embeddings. It has
no row for a position it was not trained with, so it cannot run past ``max_positions`` at all.
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import require_positive_int


class LearnedPositionalEmbedding(nn.Module):
    """``forward(positions)`` returns ``table[positions]``; positions past the table raise a ValueError.

    ``positions`` is an int n (meaning 0 .. n-1) or an integer tensor of any shape. The parameter count is
    ``max_positions * dim`` (GPT-2 small: 1024 * 768 = 786,432).

    The table starts as N(0, init_std^2). The default 0.01 is GPT-2's released code (openai/gpt-2,
    ``src/model.py``: ``wpe`` uses ``stddev=0.01``; 0.02 is its token table ``wte``, and the
    ``initializer_range`` of Hugging Face's ``GPT2Config``, which re-initialises both tables with it).
    """

    def __init__(self, max_positions: int, dim: int, init_std: float = 0.01):
        super().__init__()
        require_positive_int(max_positions, "max_positions")
        require_positive_int(dim, "dim")
        if not (isinstance(init_std, (int, float)) and init_std > 0):
            raise ValueError(f"init_std must be a positive number (a standard deviation); got {init_std!r}")
        self.max_positions = max_positions
        self.table = nn.Parameter(torch.randn(max_positions, dim) * float(init_std))

    def forward(self, positions: torch.Tensor | int) -> torch.Tensor:
        if isinstance(positions, int):
            require_positive_int(positions, "the number of positions")
            positions = torch.arange(positions, device=self.table.device)
        if positions.dtype.is_floating_point:
            raise ValueError(f"positions must be integers; got dtype {positions.dtype}")
        if positions.numel() and (positions.min() < 0 or positions.max() >= self.max_positions):
            raise ValueError(
                f"a learned position table has rows 0 .. {self.max_positions - 1} only; got positions "
                f"{int(positions.min())} .. {int(positions.max())}. A learned absolute encoding cannot "
                f"extrapolate: there is no trained vector for an unseen position."
            )
        return self.table[positions]
