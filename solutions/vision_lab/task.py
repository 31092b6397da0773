"""The synthetic image task: where does mark B lie relative to mark A?

An "image" is a ``[height, width]`` grid of patch tokens, each one symbol of a small vocabulary; the tiny
ViT embeds the symbols directly, in place of ViT's linear projection of pixel patches (Dosovitskiy et al.
2021, "An Image is Worth 16x16 Words", section 3.1). Symbols ``0 .. textures - 1`` are background texture,
drawn uniformly at random for every patch; symbol ``MARK_A = textures`` and ``MARK_B = textures + 1`` each
appear exactly once. The label is the quadrant of B seen from A (rows grow downwards)::

    label = 2 * (row_B > row_A) + (col_B > col_A)      0 up-left, 1 up-right, 2 down-left, 3 down-right

The two marks never share a row or a column, so every label is defined. It depends on the *relative*
offset (delta row, delta col) only: moving both marks by the same amount keeps it. And no model without
position information can do better than chance (25 %), because the bag of symbols an image holds (one A,
one B, and random texture) has the same distribution for every label.

Two placements of the marks, for two meanings of "a larger image":

``local``   the offset is drawn uniformly from ``{-max_offset .. -1, 1 .. max_offset}`` on each axis (3 by
            default), and then A uniformly among the cells that keep B on the grid. The same offsets occur
            at every grid size: a larger grid shows *more* of a scene at the same scale, objects keep their
            size in patches, and only the absolute positions and the number of tokens are new.
``global``  A and B are anywhere on the grid (two distinct rows and two distinct columns, uniformly). On a
            larger grid the offsets grow with it, up to ``grid - 1``: the geometry of a picture shown at a
            higher resolution (though here the marks stay one patch in size).

Every sample is drawn from an explicit ``torch.Generator``, so a seed fixes a data set.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

PLACEMENTS = ("local", "global")
LABEL_NAMES = ("up-left", "up-right", "down-left", "down-right")


@dataclass(frozen=True)
class TaskConfig:
    """The task: ``textures`` background symbols, the placement of the marks, and the local offset bound."""

    placement: str = "local"
    textures: int = 4
    max_offset: int = 3

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {self.placement!r}; choose one of {', '.join(PLACEMENTS)}")
        if self.textures < 1 or self.max_offset < 1:
            raise ValueError(f"textures and max_offset must be positive; got {self.textures}, {self.max_offset}")

    @property
    def mark_a(self) -> int:
        return self.textures

    @property
    def mark_b(self) -> int:
        return self.textures + 1

    @property
    def vocab_size(self) -> int:
        return self.textures + 2

    def min_grid(self) -> int:
        """The smallest grid on which every offset of the placement fits: ``max_offset + 1`` (local) or 2."""
        return self.max_offset + 1 if self.placement == "local" else 2

    def to_dict(self) -> dict:
        return asdict(self)


def quadrant_label(mark_a: torch.Tensor, mark_b: torch.Tensor) -> torch.Tensor:
    """``2 * (row_B > row_A) + (col_B > col_A)``: ``[...]`` int64 from ``(row, col)`` positions ``[..., 2]``.

    Undefined (and rejected) when the marks share a row or a column.
    """
    delta = mark_b - mark_a  # [..., 2] (delta row, delta col)
    if (delta == 0).any():
        raise ValueError("the two marks must be in different rows and different columns")
    return 2 * (delta[..., 0] > 0).long() + (delta[..., 1] > 0).long()


def _nonzero_offsets(count: int, max_offset: int, generator: torch.Generator) -> torch.Tensor:
    """``[count]`` int64, uniform on ``{-max_offset .. -1, 1 .. max_offset}``."""
    magnitude = torch.randint(1, max_offset + 1, (count,), generator=generator)
    sign = torch.randint(0, 2, (count,), generator=generator) * 2 - 1
    return magnitude * sign


def sample_marks(config: TaskConfig, grid: int, count: int, generator: torch.Generator):
    """``(mark_a, mark_b)``, each ``[count, 2]`` int64 (row, col) on a ``grid x grid`` image."""
    if grid < config.min_grid():
        raise ValueError(f"a {config.placement} task needs a grid of at least {config.min_grid()}; got {grid}")
    if config.placement == "local":
        offset = torch.stack([_nonzero_offsets(count, config.max_offset, generator) for _ in range(2)], dim=-1)
        # A is uniform among the cells that keep A + offset on the grid: rows from max(0, -d) to
        # grid - 1 - max(0, d), which leaves grid - |d| choices on each axis.
        room = grid - offset.abs()  # [count, 2]
        low = (-offset).clamp(min=0)
        mark_a = low + (torch.rand(count, 2, generator=generator) * room).long()
        return mark_a, mark_a + offset
    # global: two distinct rows and two distinct columns, in random order.
    first = torch.randint(0, grid, (count, 2), generator=generator)
    second = (first + torch.randint(1, grid, (count, 2), generator=generator)) % grid  # never equal to first
    return first, second


def render(config: TaskConfig, grid: int, mark_a: torch.Tensor, mark_b: torch.Tensor,
           generator: torch.Generator) -> torch.Tensor:
    """``[count, grid, grid]`` int64 images: random texture, with A and B written at their cells."""
    count = mark_a.shape[0]
    images = torch.randint(0, config.textures, (count, grid, grid), generator=generator)
    index = torch.arange(count)
    images[index, mark_a[:, 0], mark_a[:, 1]] = config.mark_a
    images[index, mark_b[:, 0], mark_b[:, 1]] = config.mark_b
    return images


def make_batch(config: TaskConfig, grid: int, count: int, generator: torch.Generator):
    """``(images [count, grid, grid], labels [count])``, both int64: one draw of the task."""
    mark_a, mark_b = sample_marks(config, grid, count, generator)
    images = render(config, grid, mark_a, mark_b, generator)
    return images, quadrant_label(mark_a, mark_b)


def find_marks(config: TaskConfig, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `render` for the marks: ``(mark_a, mark_b)`` ``[count, 2]`` read back from images."""
    width = images.shape[-1]
    flat = images.flatten(1)  # [count, grid * grid], row-major
    a, b = (flat == config.mark_a).long().argmax(1), (flat == config.mark_b).long().argmax(1)
    return torch.stack((a // width, a % width), -1), torch.stack((b // width, b % width), -1)
