"""Today's long-context layer designs: Llama 4's iRoPE and Gemma 3's local/global RoPE bases.

Neither stretches RoPE's frequencies the way Part 5's methods do; both change *which layers* see positions.

* **Llama 4** (Meta, "The Llama 4 herd", April 2025; no paper): "iRoPE" interleaves NoPE layers, with no
  positional encoding at all, among RoPE layers (every 4th layer in the released configs), and scales the
  queries of the NoPE layers by a slowly growing function of the position, "inference time temperature
  scaling". Hugging Face's ``models/llama4/modeling_llama4.py`` (``Llama4TextAttention.forward``, config
  fields ``attn_temperature_tuning``, ``floor_scale``, ``attn_scale``, ``no_rope_layers``) cites Nakanishi,
  "Scalable-Softmax Is Superior for Attention" (arXiv 2501.19399) for it.
* **Gemma 3** (Gemma Team, "Gemma 3 Technical Report", arXiv 2503.19786): five local sliding-window layers
  for every global layer; the local layers keep RoPE base 10k, the global ones use base 1M.
  ``models/gemma3/configuration_gemma3.py`` (``sliding_window_pattern``, ``rope_local_base_freq``,
  ``rope_theta``, ``layer_types``).
"""

from __future__ import annotations

import torch

from ._checks import require_base, require_positive_int


def llama4_attention_scale(
    positions: torch.Tensor | int,
    floor_scale: float = 8192,
    attn_scale: float = 0.1,
) -> torch.Tensor:
    """Llama 4's per-position query multiplier on its NoPE layers.

    ``scale(p) = log(floor((p + 1) / floor_scale) + 1) * attn_scale + 1``, exactly as
    ``Llama4TextAttention.forward`` in Hugging Face's ``models/llama4/modeling_llama4.py`` (with
    ``attn_temperature_tuning``; it uses ``log1p`` of the floor, the same number), where ``p`` is the token's
    absolute (cache) position, 0-based. The queries, not the logits, are multiplied, so every logit of a
    query at ``p`` scales by ``scale(p)`` and its softmax sharpens as the context grows.

    * ``scale = 1`` for ``p < floor_scale - 1`` (short prompts are untouched);
    * it steps up at ``p = k * floor_scale - 1`` for k = 1, 2, ... to ``1 + attn_scale * log(k + 1)``.

    Paper and code differ: Scalable-Softmax (Nakanishi 2025, arXiv 2501.19399) multiplies the logits by
    ``s * log(n)``, ``n`` the number of keys and ``s`` learned; Llama 4 uses a fixed, piecewise-constant
    ``1 + attn_scale * log(floor(...) + 1)`` of the query's position, equal to 1 below ``floor_scale``.

    ``positions`` is a tensor of any shape (or an int ``n``, meaning 0 .. n-1); the result has its shape,
    float32 (float64 if ``positions`` is float64). It is computed in float64: Hugging Face computes in
    float32, which is exact while ``p + 1 < 2**24``.
    """
    if isinstance(positions, int) and not isinstance(positions, bool):
        require_positive_int(positions, "the number of positions")
        positions = torch.arange(positions)
    if not isinstance(positions, torch.Tensor):
        raise ValueError(f"positions must be a tensor or an int; got {type(positions).__name__}")
    if positions.dtype == torch.bool or positions.is_complex():
        raise ValueError(f"positions must be integer or real; got dtype {positions.dtype}")
    if not float(floor_scale) > 0:
        raise ValueError(f"floor_scale must be positive; got {floor_scale!r}")
    if positions.numel() and bool((positions < 0).any()):
        raise ValueError(f"positions must be non-negative (0-based token positions); got min {positions.min().item()}")
    out_dtype = torch.float64 if positions.dtype == torch.float64 else torch.float32
    p = positions.to(torch.float64)
    scale = torch.log1p(torch.floor((p + 1.0) / float(floor_scale))) * float(attn_scale) + 1.0
    return scale.to(out_dtype)


def llama4_rope_layers(num_layers: int, no_rope_layer_interval: int = 4) -> list[bool]:
    """Which of Llama 4's layers use RoPE: ``True`` for RoPE, ``False`` for NoPE.

    Layer i (0-based) is NoPE when ``(i + 1) % no_rope_layer_interval == 0``: layers 3, 7, 11, ... for the
    released interval 4, the default of ``no_rope_layers`` in Hugging Face's
    ``models/llama4/configuration_llama4.py``. The RoPE layers also use chunked attention (chunks of
    ``attention_chunk_size`` = 8192 tokens), so only the NoPE layers see the whole context.
    """
    require_positive_int(num_layers, "num_layers")
    require_positive_int(no_rope_layer_interval, "no_rope_layer_interval")
    return [(i + 1) % no_rope_layer_interval != 0 for i in range(num_layers)]


def gemma3_layer_bases(
    num_layers: int,
    local_base: float = 10_000.0,
    global_base: float = 1_000_000.0,
    pattern: int = 6,
) -> list[float]:
    """The RoPE base of each of Gemma 3's layers: ``global_base`` on global layers, ``local_base`` elsewhere.

    Layer i (0-based) is a global (full-attention) layer when ``(i + 1) % pattern == 0`` and a local
    sliding-window layer otherwise, as ``layer_types`` is built from ``sliding_window_pattern`` (6, i.e. five
    local layers per global one) in Hugging Face's ``models/gemma3/configuration_gemma3.py``. The local layers
    use ``rope_local_base_freq`` (10k) with no scaling; the global layers use ``rope_theta`` (1M) and the
    config's ``rope_scaling`` (linear, factor 8, in the released 4B/12B/27B configs: Position Interpolation on
    the global layers only). The Gemma 3 report (arXiv 2503.19786) gives the same 5:1 ratio and bases.
    """
    require_positive_int(num_layers, "num_layers")
    require_positive_int(pattern, "pattern")
    require_base(local_base)
    require_base(global_base)
    return [float(global_base) if (i + 1) % pattern == 0 else float(local_base) for i in range(num_layers)]
