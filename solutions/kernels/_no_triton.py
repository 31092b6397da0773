"""Stand-ins for ``triton`` and ``triton.language`` where no Triton wheel exists (macOS, Windows).

The kernel modules import Triton at the top, as the Triton tutorials do. Where that import fails they import
these instead, so that the module still loads: ``@triton.jit`` then leaves the function as it is (it is never
called), and the ``tl.constexpr`` annotations and constants evaluate. The dispatcher sees
``TRITON_AVAILABLE = False`` and runs the torch reference, recording why.
"""

from __future__ import annotations

import types


class _Constexpr:
    """``tl.constexpr``: an annotation, and a wrapper of module-level constants that kernels read."""

    def __init__(self, value=None):
        self.value = value


def _jit(fn=None, **_kwargs):
    if fn is None:
        return lambda f: f
    return fn


triton = types.SimpleNamespace(jit=_jit, __version__=None)
tl = types.SimpleNamespace(constexpr=_Constexpr)
