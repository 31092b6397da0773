"""The vision lab: tiny vision transformers trained on the CPU at one grid size and evaluated at larger ones.

Part 7's experiment (the 2-D counterpart of the Part 6 lab). One file per idea, in the order of a run:

* `task`: the synthetic images (symbols on a patch grid, two marks) and their label, the quadrant of mark B
  seen from mark A, which needs relative 2-D position;
* `model`: `TinyViT`, a small ViT (Dosovitskiy et al. 2021) whose position encoding is chosen by name: none,
  ViT's interpolated learned table, RoPE-Axial or RoPE-Mixed (Heo et al., ECCV 2024);
* `experiment`: training, evaluation at every grid, and the full and quick presets;
* ``python -m solutions.vision_lab [--quick] [--out PATH]``: the command line.

The position encodings come from the rest of `solutions` (`rope2d_cos_sin`, `rope2d_positions`,
`mixed_rope_freqs`, `mixed_rope_cos_sin`, `apply_rope`, `LearnedPositionalEmbedding`) and are never
re-implemented here.
"""

from .experiment import METHODS, Method, TrainConfig, VisionLabConfig, full_config, quick_config, run_experiment
from .model import ENCODINGS, TinyViT, VisionConfig
from .task import LABEL_NAMES, PLACEMENTS, TaskConfig, make_batch, quadrant_label

__all__ = [
    "METHODS", "Method", "TrainConfig", "VisionLabConfig", "full_config", "quick_config", "run_experiment",
    "ENCODINGS", "TinyViT", "VisionConfig",
    "LABEL_NAMES", "PLACEMENTS", "TaskConfig", "make_batch", "quadrant_label",
]
