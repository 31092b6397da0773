"""A tiny vision transformer whose 2-D position encoding is chosen by name, and that runs at any grid size.

The layout of ViT (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", section 3.1): patch tokens
flattened row-major, a learnable class token in front, pre-LayerNorm encoder blocks with full (not causal)
attention, and a linear classifier on the class token's final state. The patches here are symbols of the
synthetic task (`solutions.vision_lab.task`), so the patch embedding is an ``nn.Embedding``.

Every position encoding comes from `solutions`, never from a copy:

==========  ===============================================================================================
``nope``    nothing: attention is permutation-equivariant, so the class token sees a bag of patches
``learned`` ViT's learned table of ``train_grid x train_grid`` vectors added to the patch embeddings, held
            in a `solutions.LearnedPositionalEmbedding`; at another grid it is resized by 2-D bilinear
            interpolation, as ViT does to fine-tune or evaluate at a higher resolution (Dosovitskiy et al.
            2021, section 3.2: "we perform 2D interpolation of the pre-trained position embeddings"; their
            code aligns the corner cells)
``axial``   RoPE-Axial (Heo et al., "Rotary Position Embedding for Vision Transformer", ECCV 2024):
            `solutions.rope2d_cos_sin` with base 100 on q and k of every layer, via `solutions.apply_rope`
``mixed``   RoPE-Mixed (Heo et al. 2024): a learned frequency vector (theta_row, theta_col) per rotary
            pair, head and layer, initialised by `solutions.mixed_rope_freqs` (base 10) and turned into
            tables by `solutions.mixed_rope_cos_sin`
==========  ===============================================================================================

``forward(images, interpolate=...)`` chooses how a grid other than the training grid is handled by the
RoPE models: ``False`` gives the larger grid's integer cells (extrapolation, as the released rope-vit code
evaluates at higher resolution), ``True`` scales the positions by ``train_grid / grid`` on each axis
(`solutions.rope2d_positions` with ``train_size``, Position Interpolation in 2-D). The learned table is
always interpolated at another grid, since it has no vector for an unseen cell; ``interpolate=False`` there
raises the table's ValueError. The class token is never rotated, as in the released rope-vit code (RoPE
acts on the patch tokens only): its cos/sin row is (1, 0). Its score for the patch at p is therefore
``<q_cls, R(p) k_p>``, a function of p itself: through the class token a RoPE-ViT can read absolute
positions, which matters at a larger grid (`TinyViT.class_attention` records what it reads).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..learned import LearnedPositionalEmbedding
from ..rope import apply_rope
from ..rope2d import mixed_rope_cos_sin, mixed_rope_freqs, rope2d_cos_sin, rope2d_positions

ENCODINGS = ("nope", "learned", "axial", "mixed")


@dataclass
class VisionConfig:
    """The shape of a `TinyViT`. ``head_dim`` must be a multiple of 4 (2-D RoPE splits pairs by axis)."""

    encoding: str = "axial"
    train_grid: int = 8
    vocab_size: int = 6
    num_classes: int = 4
    d_model: int = 32
    n_layers: int = 2
    n_heads: int = 2
    d_ff: int = 64
    axial_base: float = 100.0  # the released RoPE-Axial models' rope_theta
    mixed_base: float = 10.0  # the released RoPE-Mixed models' initial magnitudes
    # How the learned table is resized: the original ViT code (vit_jax, ``scipy.ndimage.zoom(order=1)``)
    # interpolates linearly with the corner cells' centres aligned; DeiT, timm and rope-vit use
    # ``mode="bicubic", align_corners=False``.
    learned_interpolation: str = "bilinear"
    learned_align_corners: bool = True

    def __post_init__(self):
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {self.encoding!r}; choose one of {', '.join(ENCODINGS)}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 4:
            raise ValueError(f"d_model / n_heads must be a multiple of 4; got {self.d_model} / {self.n_heads}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


def with_class_token_row(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepend the identity rotation (cos 1, sin 0) for the class token: ``[..., n, P] -> [..., 1 + n, P]``."""
    shape = cos.shape[:-2] + (1, cos.shape[-1])
    return (torch.cat((cos.new_ones(shape), cos), dim=-2), torch.cat((sin.new_zeros(shape), sin), dim=-2))


class Attention(nn.Module):
    """Multi-head self-attention with optional RoPE on q and k.

    With ``record_class_attention`` set, ``class_attention`` keeps the class token's attention
    probabilities of the last call, ``[batch, heads, 1 + patches]``: a diagnostic of what the class token
    reads (the class token's row only, so that it stays cheap on large grids).
    """

    def __init__(self, config: VisionConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.record_class_attention = False
        self.class_attention: torch.Tensor | None = None
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.out = nn.Linear(config.d_model, config.d_model, bias=False)
        if config.encoding == "mixed":
            # [heads, 2, head_dim // 2]: theta_row and theta_col of every pair, learned per layer (the paper).
            self.freqs = nn.Parameter(
                mixed_rope_freqs(config.head_dim, config.n_heads, config.mixed_base, generator=generator)
            )

    def forward(self, x: torch.Tensor, cos_sin=None, positions: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, width = x.shape  # length = 1 + patches
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # q, k, v: [batch, heads, length, head_dim]
        if positions is not None:  # RoPE-Mixed: this layer's own learned frequencies
            cos_sin = with_class_token_row(*mixed_rope_cos_sin(self.freqs, positions))  # [heads, length, P]
        if cos_sin is not None:
            q, k = apply_rope(q, *cos_sin), apply_rope(k, *cos_sin)
        y = F.scaled_dot_product_attention(q, k, v)  # no mask: every patch sees every patch
        if self.record_class_attention:  # SDPA's own scale, 1 / sqrt(head_dim)
            scores = q[:, :, :1] @ k.transpose(-1, -2) / self.head_dim ** 0.5  # [batch, heads, 1, length]
            self.class_attention = scores.softmax(-1).squeeze(-2).detach()
        return self.out(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    def __init__(self, config: VisionConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.attn = Attention(config, generator)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff), nn.GELU(), nn.Linear(config.d_ff, config.d_model)
        )

    def forward(self, x, cos_sin=None, positions=None):
        x = x + self.attn(self.ln1(x), cos_sin, positions)
        return x + self.mlp(self.ln2(x))


class TinyViT(nn.Module):
    """``forward(images [batch, H, W] int64, interpolate=False)`` -> ``[batch, num_classes]`` logits."""

    def __init__(self, config: VisionConfig, seed: int = 0):
        super().__init__()
        self.config = config
        # The initialisation depends on ``seed`` alone, and the caller's global random state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)  # RoPE-Mixed's random directions
            self.embed = nn.Embedding(config.vocab_size, config.d_model)
            self.cls = nn.Parameter(torch.zeros(1, 1, config.d_model))
            if config.encoding == "learned":
                self.positions = LearnedPositionalEmbedding(config.train_grid ** 2, config.d_model)
            self.blocks = nn.ModuleList(Block(config, generator) for _ in range(config.n_layers))
            self.ln_f = nn.LayerNorm(config.d_model)
            self.head = nn.Linear(config.d_model, config.num_classes)
            for name, parameter in self.named_parameters():
                if parameter.dim() == 2 and not name.startswith("positions"):
                    nn.init.normal_(parameter, 0.0, 0.02)  # ViT/GPT-2 style; the table keeps its own N(0, 0.02)
            nn.init.normal_(self.cls, 0.0, 0.02)

    # -- position tables ---------------------------------------------------------------------------------
    def learned_table(self, height: int, width: int) -> torch.Tensor:
        """``[height * width, d_model]``: the trained table, bilinearly resized when the grid differs."""
        g = self.config.train_grid
        if (height, width) == (g, g):
            return self.positions(g * g)
        table = self.positions.table.T.reshape(1, self.config.d_model, g, g)  # [1, d, g, g] as an image
        resized = F.interpolate(table, size=(height, width), mode=self.config.learned_interpolation,
                                align_corners=self.config.learned_align_corners)  # [1, d, height, width]
        return resized.reshape(self.config.d_model, height * width).T

    def rope_positions(self, height: int, width: int, interpolate: bool) -> torch.Tensor:
        """``[height * width, 2]`` (row, col): integer cells, or scaled by train_grid / grid."""
        g = self.config.train_grid
        return rope2d_positions(height, width, train_size=(g, g) if interpolate else None)

    def axial_cos_sin(self, height: int, width: int, interpolate: bool):
        """RoPE-Axial's ``(cos, sin)``, ``[1 + height * width, head_dim // 2]``, the class token's row first."""
        g = self.config.train_grid
        cos, sin = rope2d_cos_sin(self.config.head_dim, height, width, self.config.axial_base,
                                  train_size=(g, g) if interpolate else None)
        return with_class_token_row(cos, sin)

    def forward(self, images: torch.Tensor, interpolate: bool = False) -> torch.Tensor:
        batch, height, width = images.shape
        x = self.embed(images.flatten(1))  # [batch, H * W, d], row-major like rope2d_positions
        encoding = self.config.encoding
        if encoding == "learned":
            if not interpolate and (height, width) != (self.config.train_grid,) * 2:
                self.positions(height * width)  # raises the table's ValueError: no row for an unseen cell
            x = x + self.learned_table(height, width).to(x.dtype)
        x = torch.cat((self.cls.expand(batch, -1, -1), x), dim=1)  # [batch, 1 + H * W, d]
        cos_sin = self.axial_cos_sin(height, width, interpolate) if encoding == "axial" else None
        positions = self.rope_positions(height, width, interpolate) if encoding == "mixed" else None
        for block in self.blocks:
            x = block(x, cos_sin, positions)
        return self.head(self.ln_f(x[:, 0]))  # [batch, num_classes] from the class token

    @torch.no_grad()
    def class_attention(self, images: torch.Tensor, interpolate: bool = False) -> torch.Tensor:
        """``[layers, batch, heads, 1 + H * W]``: the class token's attention probabilities in every layer.

        Token 0 is the class token itself, token ``1 + row * W + col`` the patch at (row, col).
        """
        for block in self.blocks:
            block.attn.record_class_attention = True
        try:
            self(images, interpolate=interpolate)
            return torch.stack([block.attn.class_attention for block in self.blocks])
        finally:
            for block in self.blocks:
                block.attn.record_class_attention, block.attn.class_attention = False, None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
