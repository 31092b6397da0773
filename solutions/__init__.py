"""Reference implementations for the course "Positional Encoding in Transformers, from sinusoids to YaRN".

Every chapter of the book imports from here, and every exercise is graded against it. The package-level
names below are a stable API (see DESIGN.md); the submodules hold one idea each.
"""

from .sinusoidal import sinusoidal_encoding, sinusoidal_shift_matrix
from .rope import apply_rope, rope_cos_sin, rope_inv_freq

__all__ = [
    "sinusoidal_encoding",
    "sinusoidal_shift_matrix",
    "apply_rope",
    "rope_cos_sin",
    "rope_inv_freq",
]
