"""Multimodal RoPE (M-RoPE): one rotary table for text, image and video tokens.

Wang et al., "Qwen2-VL: Enhancing Vision-Language Model's Perception of the World at Any Resolution", 2024
(arXiv 2409.12191), "Multimodal Rotary Position Embedding (M-RoPE)". Every token carries three position
ids, temporal, height and width (t, h, w). The rotary pairs of a head are split into three groups and each
group turns with one of the three ids:

* a text token has t = h = w, so M-RoPE is exactly 1-D RoPE on text;
* an image patch has one t (the same for the whole image) and its row and column as h and w;
* a video patch has the frame index as t.

The ids of a block start where the text before it stopped, and the text after a block continues from the
block's largest id plus one (`mrope_position_ids`). Because a block of n tokens uses fewer than n distinct
ids, the sequence's last id is smaller than its length; the difference is the "rope delta" that decoding adds
to the cache position.

Two layouts of the three groups are in released models (`mrope_cos_sin`):

* **chunked** (Qwen2-VL, Qwen2.5-VL): the first ``mrope_section[0]`` frequency pairs follow t, the next
  ``mrope_section[1]`` follow h and the last ``mrope_section[2]`` follow w (``[16, 24, 24]`` for a head of
  128). The temporal axis thus gets only the highest frequencies and the width only the lowest;
* **interleaved** (Qwen3-VL, ``mrope_interleaved``): pairs are dealt round-robin t, h, w, t, h, w, ...
  (``[24, 20, 20]`` for a head of 128), so each axis sees the whole frequency range. Qwen3-VL's release
  gives that as the reason (full-frequency coverage for long-video reasoning): the chunked layout gives time
  only the fast-turning pairs, and width only the slow ones.

The papers do not fix the layouts; the code does. Everything here follows Hugging Face transformers:
``models/qwen2_vl/modeling_qwen2_vl.py`` (``Qwen2VLModel.get_rope_index``, ``apply_multimodal_rotary_pos_emb``)
and ``models/qwen3_vl/modeling_qwen3_vl.py`` (``Qwen3VLTextRotaryEmbedding.apply_interleaved_mrope``).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from ._checks import require_positive_int

AXES = ("temporal", "height", "width")
TEXT, IMAGE, VIDEO = 0, 1, 2


def _as_section(mrope_section, num_pairs: int) -> list[int]:
    if hasattr(mrope_section, "tolist"):  # a tensor or a NumPy array
        mrope_section = mrope_section.tolist()
    if not isinstance(mrope_section, Sequence) or isinstance(mrope_section, str) or len(mrope_section) != 3:
        raise ValueError(
            f"mrope_section must hold 3 pair counts (temporal, height, width), e.g. [16, 24, 24] for a head "
            f"of 128; got {mrope_section!r}"
        )
    try:
        counts = [operator.index(count) for count in mrope_section if not isinstance(count, bool)]
    except TypeError:
        counts = []
    if len(counts) != 3 or min(counts) < 0:
        raise ValueError(f"mrope_section must hold non-negative integers; got {list(mrope_section)!r}")
    mrope_section = counts
    if sum(mrope_section) != num_pairs:
        raise ValueError(
            f"mrope_section {list(mrope_section)} counts frequency pairs, so it must sum to dim // 2 = "
            f"len(inv_freq) = {num_pairs}; it sums to {sum(mrope_section)}"
            + (" (did you give it in dimensions instead of pairs?)" if sum(mrope_section) == 2 * num_pairs else "")
        )
    return list(mrope_section)


def mrope_pair_axes(num_pairs: int, mrope_section, interleaved: bool = False) -> torch.Tensor:
    """Which position axis (0 temporal, 1 height, 2 width) each of the ``num_pairs`` frequency pairs follows.

    Returns a ``[num_pairs]`` int64 tensor; pair j has frequency ``inv_freq[j]`` (j = 0 turns fastest).

    * ``interleaved=False`` (Qwen2-VL): ``[0] * s_t + [1] * s_h + [2] * s_w``. Hugging Face's
      ``apply_multimodal_rotary_pos_emb`` splits the *doubled* ``[..., dim]`` cos/sin by
      ``mrope_section * 2`` and takes chunk i from axis ``i % 3``; both halves of the doubled table get the
      same assignment, so this per-pair vector is exactly what it does on the half-split layout.
    * ``interleaved=True`` (Qwen3-VL, ``apply_interleaved_mrope``): every pair starts on the temporal axis;
      pairs 1, 4, 7, ... below ``3 * s_h`` move to height and pairs 2, 5, 8, ... below ``3 * s_w`` to width.
      ``s_t`` is not read: the temporal axis keeps whatever is left. For dim 128 and ``[24, 20, 20]``:
      t on 0, 3, ..., 57 and 60-63, h on 1, 4, ..., 58, w on 2, 5, ..., 59. The counts equal
      ``mrope_section`` whenever ``3 * s_h <= dim // 2`` and ``3 * s_w <= dim // 2`` (every released
      config); past that Hugging Face's slice is cut at ``dim // 2`` and so is this one, bit for bit.
    """
    require_positive_int(num_pairs, "num_pairs")
    s_t, s_h, s_w = _as_section(mrope_section, num_pairs)
    if not interleaved:
        return torch.repeat_interleave(torch.arange(3), torch.tensor([s_t, s_h, s_w]))
    axes = torch.zeros(num_pairs, dtype=torch.int64)
    for axis, count in ((1, s_h), (2, s_w)):
        axes[axis : min(3 * count, num_pairs) : 3] = axis
    return axes


def mrope_cos_sin(
    inv_freq: torch.Tensor,
    position_ids: torch.Tensor,
    mrope_section,
    interleaved: bool = False,
    *,
    attention_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The M-RoPE cos/sin tables, ready for `apply_rope` (half-split) as they are.

    * ``inv_freq``: ``[dim // 2]``, e.g. ``rope_inv_freq(128, 1_000_000.0)``.
    * ``position_ids``: ``[3, ..., seq]``, the temporal, height and width ids of every token (from
      `mrope_position_ids`, shape ``[3, batch, seq]``); integer or fractional.
    * ``mrope_section``: frequency pairs per axis, summing to ``dim // 2``: ``[16, 24, 24]`` for Qwen2-VL's
      head of 128 (``interleaved=False``), ``[24, 20, 20]`` for Qwen3-VL's (``interleaved=True``). See
      `mrope_pair_axes` for which pair follows which axis.

    Returns ``(cos, sin)``, each ``[..., seq, dim // 2]`` with ``cos[..., n, j] = attention_factor *
    cos(position_ids[axis_j, ..., n] * inv_freq[j])``. Hugging Face builds the doubled ``[..., dim]`` table
    and then re-slices it (``apply_multimodal_rotary_pos_emb`` / ``apply_interleaved_mrope``); picking the axis
    per pair first gives the same angles, and `apply_rope` rotates q and k to the same values (the test suite
    checks both layouts against a re-implementation of Hugging Face's algorithm). ``attention_factor``
    (keyword) multiplies both tables, as Hugging Face's ``attention_scaling``. With ``t = h = w`` it is
    ``rope_cos_sin(inv_freq, t)``: M-RoPE on text is plain RoPE (as the Qwen2-VL paper says).
    """
    if not isinstance(inv_freq, torch.Tensor) or inv_freq.dim() != 1:
        shape = tuple(inv_freq.shape) if isinstance(inv_freq, torch.Tensor) else type(inv_freq).__name__
        raise ValueError(f"inv_freq must be a 1-D tensor [dim // 2]; got {shape}")
    if not isinstance(position_ids, torch.Tensor):
        raise ValueError(f"position_ids must be a tensor [3, ..., seq]; got {type(position_ids).__name__}")
    if position_ids.dim() < 2 or position_ids.shape[0] != 3:
        raise ValueError(
            f"position_ids must be [3, ..., seq] (temporal, height, width ids first); got shape "
            f"{tuple(position_ids.shape)}"
            + (" (for text only, expand 1-D ids with ids.expand(3, *ids.shape))" if position_ids.dim() >= 1 else "")
        )
    if position_ids.dtype == torch.bool or position_ids.is_complex():
        raise ValueError(f"position_ids must be integer or real; got dtype {position_ids.dtype}")
    axes = mrope_pair_axes(len(inv_freq), mrope_section, interleaved).to(position_ids.device)
    compute_dtype = torch.promote_types(inv_freq.dtype, torch.float32)
    # [3, ..., seq] -> [num_pairs, ..., seq] (the id each pair follows) -> [..., seq, num_pairs]
    per_pair = position_ids.index_select(0, axes).movedim(0, -1).to(compute_dtype)
    angles = per_pair * inv_freq.to(device=position_ids.device, dtype=compute_dtype)
    return torch.cos(angles) * attention_factor, torch.sin(angles) * attention_factor


def _as_grids(grid_thw, name: str, merge: int) -> list[tuple[int, int, int]]:
    if grid_thw is None:
        return []
    grid = torch.as_tensor(grid_thw)
    if grid.numel() == 0:
        return []
    if grid.dim() != 2 or grid.shape[1] != 3:
        raise ValueError(f"{name} must be [n, 3] (t, h, w in patches, before merging); got shape {tuple(grid.shape)}")
    if grid.dtype.is_floating_point or grid.dtype == torch.bool or grid.is_complex():
        raise ValueError(f"{name} must hold integers; got dtype {grid.dtype}")
    grids = [tuple(int(v) for v in row) for row in grid.tolist()]
    for index, (t, h, w) in enumerate(grids):
        if min(t, h, w) < 1:
            raise ValueError(f"{name}[{index}] = {(t, h, w)}: every grid size must be at least 1")
        if h % merge or w % merge:
            raise ValueError(
                f"{name}[{index}] = {(t, h, w)}: h and w are in patches *before* merging and must be multiples "
                f"of spatial_merge_size = {merge}"
            )
    return grids


def _block_ids(t: int, h: int, w: int) -> torch.Tensor:
    """``[3, t*h*w]`` ids of one vision block, frame by frame, row by row (the order of the merged tokens)."""
    frames = torch.arange(t).repeat_interleave(h * w)
    rows = torch.arange(h).repeat_interleave(w).repeat(t)
    cols = torch.arange(w).repeat(t * h)
    return torch.stack((frames, rows, cols))


def mrope_position_ids(
    token_types: torch.Tensor,
    image_grid_thw: torch.Tensor | None = None,
    video_grid_thw: torch.Tensor | None = None,
    spatial_merge_size: int = 2,
    *,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-VL's 3-D position ids (t, h, w) for a batch of text, image and video tokens.

    * ``token_types``: ``[batch, seq]`` integers, 0 text, 1 image, 2 video (an image or video *token* is one
      merged patch, i.e. what the language model sees).
    * ``image_grid_thw`` / ``video_grid_thw``: ``[n, 3]`` (t, h, w) in vision-encoder patches, *before* the
      ``spatial_merge_size x spatial_merge_size`` merge; a block therefore holds
      ``t * (h / merge) * (w / merge)`` tokens. Grids are consumed in order of appearance, row after row,
      images and videos each from their own list (as Hugging Face's ``get_rope_index``).
    * ``attention_mask`` (keyword, optional): ``[batch, seq]`` of 0/1. Masked tokens (padding, left or right)
      are taken out before numbering, so a padded row gets the same ids as the unpadded one; masked places
      are filled with 1, the value Hugging Face writes there (it is never attended to). Without a mask every
      token counts, padding included: pass the mask for padded batches.

    The rule (Qwen2-VL paper, M-RoPE; ``Qwen2VLModel.get_rope_index`` in
    ``models/qwen2_vl/modeling_qwen2_vl.py``): keep a running start ``s`` (0 at the beginning).

    * A text token gets ``(s, s, s)`` and ``s`` grows by one.
    * A block of ``T x H x W`` merged tokens (frame-major, then row-major) gets
      ``(s + frame, s + row, s + col)``, so it starts at the text position before it; after it,
      ``s = s + max(T, H, W)``, i.e. the block's largest id plus one.

    Returns ``(position_ids, deltas)``: ``position_ids`` ``[3, batch, seq]`` int64 and ``deltas`` ``[batch]``
    int64, ``deltas = max_id + 1 - seq`` per row with ``seq`` the full (padded) row length. A decoded token at
    cache position ``p`` gets id ``p + delta`` on all three axes. Hugging Face returns deltas as
    ``[batch, 1]``; a row with no unmasked token gets ``-seq`` (decoding then starts at id 0).

    Videos: this is Qwen2-VL's rule, where a video's temporal id is the index of its temporal patch
    (``t`` counts frames after the encoder's 2-frame temporal patching). Qwen2.5-VL (arXiv 2502.13923)
    instead multiplies it by ``second_per_grid_t * tokens_per_second`` to tie ids to absolute time, and
    Qwen3-VL splits each video into one-frame blocks separated by timestamp text; neither is implemented.

    Raises ``ValueError`` naming the block when a block's token count does not match its grid, when the
    grids run out before the tokens, or when grids are left over.
    """
    require_positive_int(spatial_merge_size, "spatial_merge_size")
    if not isinstance(token_types, torch.Tensor):
        token_types = torch.as_tensor(token_types)
    if token_types.dim() != 2:
        raise ValueError(
            f"token_types must be [batch, seq] (0 text, 1 image, 2 video); got shape {tuple(token_types.shape)}"
            + (" (for one prompt use token_types.unsqueeze(0))" if token_types.dim() == 1 else "")
        )
    if token_types.dtype.is_floating_point or token_types.dtype == torch.bool or token_types.is_complex():
        raise ValueError(f"token_types must hold integers 0, 1, 2; got dtype {token_types.dtype}")
    bad = ~((token_types == TEXT) | (token_types == IMAGE) | (token_types == VIDEO))
    if bad.any():
        where = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(
            f"token_types must hold only 0 (text), 1 (image) and 2 (video); found {int(token_types[where])} "
            f"at (row, token) {where}"
        )
    batch, seq = token_types.shape
    if attention_mask is None:
        keep = torch.ones(batch, seq, dtype=torch.bool)
    else:
        attention_mask = torch.as_tensor(attention_mask)
        if attention_mask.shape != token_types.shape:
            raise ValueError(
                f"attention_mask must have token_types' shape {tuple(token_types.shape)}; got "
                f"{tuple(attention_mask.shape)}"
            )
        if not ((attention_mask == 0) | (attention_mask == 1)).all():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token)")
        keep = attention_mask.to("cpu").bool()

    grids = {
        IMAGE: _as_grids(image_grid_thw, "image_grid_thw", spatial_merge_size),
        VIDEO: _as_grids(video_grid_thw, "video_grid_thw", spatial_merge_size),
    }
    names = {IMAGE: ("image", "image_grid_thw"), VIDEO: ("video", "video_grid_thw")}
    article = {IMAGE: "an", VIDEO: "a"}
    used = {IMAGE: 0, VIDEO: 0}
    position_ids = torch.ones(3, batch, seq, dtype=torch.int64)
    deltas = torch.empty(batch, dtype=torch.int64)
    types_cpu = token_types.to("cpu")

    for row in range(batch):
        kept_index = keep[row].nonzero().flatten()
        types = types_cpu[row, kept_index].tolist()
        chunks: list[torch.Tensor] = []
        start = 0  # the running start s
        i = 0
        while i < len(types):
            kind = types[i]
            if kind == TEXT:
                j = i
                while j < len(types) and types[j] == TEXT:
                    j += 1
                chunks.append(torch.arange(start, start + j - i).expand(3, -1))
                start += j - i
                i = j
                continue
            noun, grid_name = names[kind]
            number = used[kind]
            if number >= len(grids[kind]):
                raise ValueError(
                    f"row {row}, token {int(kept_index[i])}: {article[kind]} {noun} block starts here but {grid_name} "
                    f"has only {len(grids[kind])} grid(s), all used by earlier {noun} blocks"
                )
            t, h, w = grids[kind][number]
            merged_h, merged_w = h // spatial_merge_size, w // spatial_merge_size
            length = t * merged_h * merged_w
            run = 0
            while i + run < len(types) and types[i + run] == kind and run < length:
                run += 1
            if run < length:
                raise ValueError(
                    f"{noun} block {number} ({grid_name}[{number}] = {(t, h, w)}, spatial_merge_size "
                    f"{spatial_merge_size}) needs t * (h/merge) * (w/merge) = {t} * {merged_h} * {merged_w} = "
                    f"{length} {noun} tokens, but row {row} has only {run} from token {int(kept_index[i])}"
                )
            chunks.append(_block_ids(t, merged_h, merged_w) + start)
            start += max(t, merged_h, merged_w)
            used[kind] += 1
            i += length
        if chunks:
            ids = torch.cat(chunks, dim=1)
            position_ids[:, row, kept_index] = ids
            deltas[row] = int(ids.max()) + 1 - seq
        else:
            deltas[row] = -seq
    for kind in (IMAGE, VIDEO):
        if used[kind] != len(grids[kind]):
            noun, grid_name = names[kind]
            raise ValueError(
                f"{grid_name} has {len(grids[kind])} grid(s) but the token types hold only {used[kind]} "
                f"{noun} block(s)"
            )
    return position_ids.to(token_types.device), deltas.to(token_types.device)
