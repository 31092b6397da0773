"""The checks of assignment ``part7_multimodal``: positions for images and video.

* The axial 2-D RoPE table of a patch grid (Heo et al., "Rotary Position Embedding for Vision Transformer",
  ECCV 2024, RoPE-Axial, in the pair order of its released code): `check_rope2d_cos_sin`.
* Which axis each rotary pair of M-RoPE follows, in Qwen2-VL's chunked layout and Qwen3-VL's interleaved one
  (Wang et al., Qwen2-VL, 2024, arXiv 2409.12191; Hugging Face's ``apply_interleaved_mrope``):
  `check_mrope_pair_axes`, and the M-RoPE cos/sin tables built on it: `check_mrope_cos_sin`.
* Qwen2-VL's temporal, height and width position ids of a text, image and video prompt, with the spatial merge,
  and the rope deltas that decoding adds (``get_rope_index``, without attention masks):
  `check_mrope_position_ids`.

The references are `solutions.rope2d` and `solutions.mrope`. Each check sits next to the catalogue of mistakes
it recognises: a mistake's ``candidate`` forms the wrong output from the reference's pieces (the pair-axis
vector, `solutions.rope_cos_sin`, the reference's own ids and the block layout of `solutions.mrope`), and its
``example`` is a wrong function written the way a student writes the bug, proved by
``tests/test_grader_mistakes.py``.
"""

from __future__ import annotations

import functools

import torch

import solutions
from solutions.mrope import _block_ids

from ..course_checks import steps
from .engine import Case, Catalogue, Mistake, check_function, generator

GRADED_REFERENCES = {
    "check_rope2d_cos_sin": ["solutions.rope2d:rope2d_cos_sin", "solutions.rope2d:rope2d_positions"],
    "check_mrope_pair_axes": ["solutions.mrope:mrope_pair_axes"],
    "check_mrope_cos_sin": ["solutions.mrope:mrope_cos_sin", "solutions.mrope:mrope_pair_axes"],
    "check_mrope_position_ids": ["solutions.mrope:mrope_position_ids", "solutions.mrope:_block_ids"],
}
"""This assignment's entries of `grader.checks.GRADED_REFERENCES`."""

AXIS_NAMES = ("t", "h", "w")
TEXT, IMAGE, VIDEO = solutions.mrope.TEXT, solutions.mrope.IMAGE, solutions.mrope.VIDEO


# ----------------------------------------------------------------------------------------------------------
# The axial 2-D table
# ----------------------------------------------------------------------------------------------------------


def _rope2d_args(case):
    dim, height, width = case.args[:3]
    return dim, height, width, (case.args[3] if len(case.args) > 3 else case.kwargs.get("base", 100.0))


def _rope2d_variant(case, *, rows_first=False, column_major=False, alternate=False, exponent_dim=None,
                    base=None):
    """The axial table with one thing changed: ``rows_first`` (the row's pairs before the column's),
    ``column_major`` (tokens numbered column by column), ``alternate`` (pairs 2j column, 2j + 1 row),
    ``exponent_dim`` (the frequencies of a 1-D head of that size), ``base`` (another base)."""
    dim, height, width, case_base = _rope2d_args(case)
    base = case_base if base is None else base
    quarter = dim // 4
    if exponent_dim is None:
        freqs = solutions.rope_inv_freq(dim // 2, base)
    else:
        freqs = solutions.rope_inv_freq(exponent_dim, base)[:quarter]
    rows, cols = solutions.rope2d_positions(height, width).T
    if column_major:  # token n sits at row n % height, column n // height
        rows, cols = solutions.rope2d_positions(width, height).T.flip(0)
    col_cos, col_sin = solutions.rope_cos_sin(freqs, cols)
    row_cos, row_sin = solutions.rope_cos_sin(freqs, rows)
    if alternate:
        return (torch.stack((col_cos, row_cos), -1).flatten(-2), torch.stack((col_sin, row_sin), -1).flatten(-2))
    if rows_first:
        return torch.cat((row_cos, col_cos), -1), torch.cat((row_sin, col_sin), -1)
    return torch.cat((col_cos, row_cos), -1), torch.cat((col_sin, row_sin), -1)


def _student_rope2d(dim, height, width, base=100.0, *, rows_first=False, column_major=False, alternate=False,
                    step=4, ignore_base=False):
    """A student's axial table: ``step`` is the exponent's step (4/dim is right), ``ignore_base`` uses 10000."""
    base = 10000.0 if ignore_base else base
    freqs = 1.0 / base ** (torch.arange(dim // 4, dtype=torch.float32) * step / dim)
    token = torch.arange(height * width)
    if column_major:
        row, col = token % height, token // height
    else:
        row, col = token // width, token % width
    col_angles = col[:, None] * freqs
    row_angles = row[:, None] * freqs
    if alternate:
        angles = torch.stack((col_angles, row_angles), dim=-1).reshape(height * width, dim // 2)
    elif rows_first:
        angles = torch.cat((row_angles, col_angles), dim=-1)
    else:
        angles = torch.cat((col_angles, row_angles), dim=-1)
    return torch.cos(angles), torch.sin(angles)


ROPE2D_MISTAKES = [
    Mistake("rows first", "Your first dim/4 pairs turn with the row and the next dim/4 with the column. This "
                          "assignment uses the pair order of RoPE-ViT's released code (Heo et al. 2024): pairs "
                          "0 .. dim/4 - 1 follow the column x, pairs dim/4 .. dim/2 - 1 the row y. (Qwen2-VL's vision "
                          "tower puts the rows first: the same model up to a permutation of q and k, but another "
                          "table.)",
            candidate=lambda ref, case: _rope2d_variant(case, rows_first=True),
            example=functools.partial(_student_rope2d, rows_first=True)),
    Mistake("column-major tokens", "Your tokens are numbered column by column (token n at row n % height, column "
                                   "n // height). The patches are flattened row-major, as an image is read: token n "
                                   "= row * width + col, so row = n // width and col = n % width.",
            candidate=lambda ref, case: _rope2d_variant(case, column_major=True),
            example=functools.partial(_student_rope2d, column_major=True)),
    Mistake("pairs alternate", "Your pairs alternate between the column and the row (pair 2j column, pair 2j + 1 "
                               "row). The axial table splits them in halves: the first dim/4 pairs follow the column, "
                               "the next dim/4 the row, each half with the frequencies base^(-4j/dim), "
                               "j = 0 .. dim/4 - 1.",
            candidate=lambda ref, case: _rope2d_variant(case, alternate=True),
            example=functools.partial(_student_rope2d, alternate=True)),
    Mistake("1-D frequencies", "Your frequencies are base^(-2j/dim), those of a 1-D head of size dim. Each axis "
                               "rotates dim/2 coordinates (dim/4 pairs), so its frequencies are those of 1-D RoPE on a "
                               "head of dim/2: base^(-4j/dim) = rope_inv_freq(dim // 2, base), j = 0 .. dim/4 - 1.",
            candidate=lambda ref, case: _rope2d_variant(case, exponent_dim=_rope2d_args(case)[0]),
            example=functools.partial(_student_rope2d, step=2)),
    Mistake("base ignored", "Your table uses base 10000 whatever `base` says: pass `base` on to the frequencies (its "
                            "default here is 100, the rope_theta of RoPE-ViT's released models: a patch grid is "
                            "short, and with 10000 most pairs would barely turn across it).",
            candidate=lambda ref, case: _rope2d_variant(case, base=10000.0),
            example=functools.partial(_student_rope2d, ignore_base=True)),
]


def check_rope2d_cos_sin(student_fn, *, cases=((8, 2, 3), (12, 3, 2, 10.0), (4, 1, 5)), hidden=False) -> None:
    """``rope2d_cos_sin(dim, height, width, base=100.0) -> (cos, sin)``, each ``[height * width, dim // 2]``
    float32; ``cases`` are (dim, height, width[, base])."""
    built = [Case(tuple(c), label=f"dim={c[0]}, grid {c[1]} x {c[2]}" + (f", base={c[3]:g}" if len(c) > 3 else ""))
             for c in cases]
    check_function(student_fn, solutions.rope2d_cos_sin, built, name="rope2d_cos_sin", rtol=1e-5, atol=1e-5,
                   mistakes=ROPE2D_MISTAKES, names=("cos", "sin"), hidden=hidden,
                   hint="Token n = row * width + col. Pair j < dim/4 turns by col * f_j, pair dim/4 + j by row * f_j, "
                        "with f = rope_inv_freq(dim // 2, base).")


# ----------------------------------------------------------------------------------------------------------
# Which axis each M-RoPE pair follows
# ----------------------------------------------------------------------------------------------------------


def _chunked(section, order) -> torch.Tensor:
    """Chunks in the axis ``order`` (a permutation of 0, 1, 2), each as long as that axis's count."""
    return torch.cat([torch.full((int(section[axis]),), axis, dtype=torch.int64) for axis in order])


def _dealt(num_pairs, section, h_start, w_start) -> torch.Tensor:
    """Qwen3-VL's interleave with the height and width pairs starting at other offsets (1 and 2 are right)."""
    axes = torch.zeros(num_pairs, dtype=torch.int64)
    axes[h_start:3 * int(section[1]):3] = 1
    axes[w_start:3 * int(section[2]):3] = 2
    return axes


def _axes_rule(rule):
    """``rule(num_pairs, section, interleaved)``: a wrong pair-axis vector, or None where it does not apply."""
    def axes(num_pairs, section, interleaved):
        return rule(int(num_pairs), [int(s) for s in section], interleaved)

    return axes


def _layout_message(case: Case) -> str:
    if case.kwargs.get("interleaved", False):
        return ("Your pairs follow Qwen2-VL's chunked layout, but interleaved=True asks for Qwen3-VL's: the pairs are "
                "dealt round-robin t, h, w, t, h, w, ...: pairs 1, 4, 7, ... below 3 * s_h follow h, pairs 2, 5, "
                "8, ... below 3 * s_w follow w, and every other pair follows t.")
    return ("Your pairs are dealt round-robin (Qwen3-VL's interleaved layout), but interleaved=False asks for "
            "Qwen2-VL's chunked layout: the first s_t pairs follow t, the next s_h pairs h, the last s_w pairs w.")


def _order_message(order) -> str:
    named = ", ".join(AXIS_NAMES[a] for a in order)
    return (f"Your chunks come in the order {named}. mrope_section = [s_t, s_h, s_w] lists the pair counts in the "
            f"order temporal, height, width, and the chunks follow that order: pairs 0 .. s_t - 1 follow t, the next "
            f"s_h pairs h, the last s_w pairs w.")


CHUNK_ORDERS = ((1, 0, 2), (2, 1, 0), (0, 2, 1))
"""The wrong chunk orders a catalogue names: h, t, w; w, h, t (reversed); t, w, h."""

AXIS_MISTAKES = [
    ("layout swapped", _layout_message,
     _axes_rule(lambda n, section, interleaved: solutions.mrope_pair_axes(n, section, not interleaved)),
     dict(swap_layout=True)),
    *[(f"chunks {','.join(AXIS_NAMES[a] for a in order)}", _order_message(order),
       _axes_rule(lambda n, section, interleaved, order=order: None if interleaved else _chunked(section, order)),
       dict(order=order)) for order in CHUNK_ORDERS],
    ("interleave off by one axis",
     "Your round-robin is off by one axis: it deals h, w, t, h, w, t, ... (height from pair 0). Qwen3-VL's starts "
     "with t: pair 0 follows t, pairs 1, 4, 7, ... (below 3 * s_h) follow h and pairs 2, 5, 8, ... (below 3 * s_w) "
     "follow w.",
     _axes_rule(lambda n, section, interleaved: _dealt(n, section, 0, 1) if interleaved else None),
     dict(starts=(0, 1))),
    ("interleave t,w,h",
     "Your round-robin deals t, w, h: width on pairs 1, 4, 7, ... and height on 2, 5, 8, .... It is t, h, w: "
     "height on 1, 4, 7, ... (below 3 * s_h), width on 2, 5, 8, ... (below 3 * s_w).",
     _axes_rule(lambda n, section, interleaved: _dealt(n, section, 2, 1) if interleaved else None),
     dict(starts=(2, 1))),
    ("round-robin to the end",
     "Your round-robin runs to the last pair (pair j follows axis j % 3). Qwen3-VL deals height only its s_h pairs "
     "(1, 4, 7, ... below 3 * s_h) and width only its s_w (2, 5, 8, ... below 3 * s_w); every pair left over at "
     "the end follows t, so that each axis gets the number of pairs mrope_section gives it.",
     _axes_rule(lambda n, section, interleaved: torch.arange(n) % 3 if interleaved else None),
     dict(to_the_end=True)),
]
"""The wrong pair-axis rules, shared by `check_mrope_pair_axes` and `check_mrope_cos_sin`: (name, message,
``axes(num_pairs, section, interleaved)``, the switches of `_student_pair_axes` that write the bug)."""


def _student_pair_axes(num_pairs, mrope_section, interleaved=False, *, order=(0, 1, 2), starts=(1, 2),
                       to_the_end=False, swap_layout=False):
    """A student's pair axes: ``order`` of the chunks, ``starts`` of the height and width pairs in the
    round-robin, ``to_the_end`` (j % 3 for every pair), ``swap_layout`` (the other layout)."""
    s_t, s_h, s_w = mrope_section
    if interleaved != swap_layout:
        if to_the_end:
            return torch.arange(num_pairs) % 3
        axes = torch.zeros(num_pairs, dtype=torch.long)
        axes[starts[0]:3 * s_h:3] = 1
        axes[starts[1]:3 * s_w:3] = 2
        return axes
    counts = {0: s_t, 1: s_h, 2: s_w}
    return torch.tensor([axis for axis in order for _ in range(counts[axis])], dtype=torch.long)


PAIR_AXES_MISTAKES = [
    Mistake(name, message,
            candidate=lambda ref, case, axes=axes: axes(*case.args, case.kwargs.get("interleaved", False)),
            example=functools.partial(_student_pair_axes, **bug))
    for name, message, axes, bug in AXIS_MISTAKES
]


def check_mrope_pair_axes(student_fn, *, interleaved: bool, cases=None, hidden=False) -> None:
    """``mrope_pair_axes(num_pairs, mrope_section, interleaved=False)``: the ``[num_pairs]`` int64 axis (0 t,
    1 h, 2 w) of each frequency pair; ``cases`` are (num_pairs, mrope_section)."""
    if cases is None:
        cases = ((8, [4, 2, 2]), (64, [24, 20, 20])) if interleaved else ((8, [2, 3, 3]), (64, [16, 24, 24]))
    layout, kwargs = ("interleaved" if interleaved else "chunked"), {"interleaved": interleaved}
    built = [Case((n, list(section)), dict(kwargs), label=f"num_pairs={n}, mrope_section={list(section)}, "
                                                          f"interleaved={interleaved}") for n, section in cases]
    check_function(student_fn, solutions.mrope_pair_axes, built, name=f"mrope_pair_axes ({layout})", rtol=0, atol=0,
                   mistakes=PAIR_AXES_MISTAKES, hidden=hidden,
                   hint=("Pairs 1, 4, 7, ... below 3 * s_h follow h (1), pairs 2, 5, 8, ... below 3 * s_w follow w "
                         "(2), the others t (0)." if interleaved else
                         "s_t zeros, then s_h ones, then s_w twos."))


# ----------------------------------------------------------------------------------------------------------
# The M-RoPE tables
# ----------------------------------------------------------------------------------------------------------


def _table(case, axes):
    """(cos, sin) whose pair j turns with the id of axis ``axes[j]``: the 1-D tables of the three ids
    (`solutions.rope_cos_sin`), pair j taken from the one of its axis."""
    inv_freq, position_ids = case.args[:2]
    cos, sin = solutions.rope_cos_sin(inv_freq, position_ids)  # [3, ..., seq, P]
    pick = axes.reshape((1,) * (cos.dim() - 1) + (-1,)).expand((1,) + tuple(cos.shape[1:]))
    return cos.gather(0, pick)[0], sin.gather(0, pick)[0]


def _table_with(rule):
    """A mistake's candidate: the table of the wrong pair axes ``rule`` gives, or None where it does not apply."""
    def candidate(ref, case):
        inv_freq, _, section = case.args[:3]
        axes = rule(len(inv_freq), section, case.kwargs.get("interleaved", False))
        return None if axes is None else _table(case, axes)

    return candidate


def _student_mrope_cos_sin(inv_freq, position_ids, mrope_section, interleaved=False, *, temporal_only=False,
                           doubled=False, **axes_bug):
    """A student's M-RoPE table on `_student_pair_axes` (with ``axes_bug``): ``temporal_only`` turns every pair
    with the temporal id, ``doubled`` returns Hugging Face's [..., dim] layout."""
    axes = _student_pair_axes(len(inv_freq), mrope_section, interleaved, **axes_bug)
    if temporal_only:
        axes = torch.zeros_like(axes)
    ids = position_ids[axes]  # [P, ..., seq]: the id each pair follows
    angles = ids.movedim(0, -1).float() * inv_freq
    if doubled:
        angles = torch.cat((angles, angles), dim=-1)
    return torch.cos(angles), torch.sin(angles)


MROPE_COS_SIN_MISTAKES = [
    Mistake(name, message, candidate=_table_with(axes), example=functools.partial(_student_mrope_cos_sin, **bug))
    for name, message, axes, bug in AXIS_MISTAKES
] + [
    Mistake("temporal id only", "Every pair of your table turns with the temporal id (position_ids[0]). In M-RoPE "
                                "each pair follows one of the three ids, the one mrope_pair_axes gives it: on text "
                                "(t = h = w) that is the same, on image and video tokens it is not.",
            candidate=_table_with(_axes_rule(lambda n, section, interleaved: torch.zeros(n, dtype=torch.int64))),
            example=functools.partial(_student_mrope_cos_sin, temporal_only=True)),
    Mistake("doubled to dim", "Your cos/sin have dim columns (the table doubled, as Hugging Face builds it before "
                              "slicing it by mrope_section * 2). Here they have one column per pair, [..., seq, "
                              "dim // 2], ready for apply_rope as it is.",
            candidate=lambda ref, case: tuple(torch.cat((t, t), -1) for t in ref(*case.args, **case.kwargs)),
            example=functools.partial(_student_mrope_cos_sin, doubled=True)),
]


def check_mrope_cos_sin(student_fn, *, interleaved: bool, cases=None, seed=0, hidden=False) -> None:
    """``mrope_cos_sin(inv_freq, position_ids, mrope_section, interleaved=False) -> (cos, sin)``, each
    ``[..., seq, dim // 2]``; ``cases`` are (dim, base, mrope_section, the shape of position_ids after its
    leading 3, the largest id + 1), the ids drawn at random so that t, h and w differ."""
    if cases is None:
        cases = (((16, 10000.0, [4, 2, 2], (1, 7), 20), (12, 10000.0, [2, 2, 2], (2, 4), 12)) if interleaved else
                 ((16, 10000.0, [2, 3, 3], (1, 7), 20), (8, 100.0, [2, 1, 1], (5,), 12)))
    layout, kwargs = ("interleaved" if interleaved else "chunked"), {"interleaved": interleaved}
    g = generator(seed)
    for dim, base, section, shape, limit in cases:
        position_ids = torch.randint(0, limit, (3, *shape), generator=g)
        case = Case((solutions.rope_inv_freq(dim, base), position_ids, list(section)), dict(kwargs),
                    label=f"inv_freq of dim {dim} (base {base:g}), position_ids {[3, *shape]}, "
                          f"mrope_section={list(section)}, interleaved={interleaved}")
        # float32 angles id * theta carry an error of about id * 6e-8: the tolerance grows with the largest id, so
        # that angles in float32 (as the reference) or in float64 both pass.
        atol = max(1e-5, 2.5e-7 * limit)
        check_function(student_fn, solutions.mrope_cos_sin, [case], name=f"mrope_cos_sin ({layout})", rtol=1e-5,
                       atol=atol, mistakes=MROPE_COS_SIN_MISTAKES, names=("cos", "sin"), hidden=hidden, quiet=True,
                       hint="Pair j turns by position_ids[a_j] * inv_freq[j], with a_j = mrope_pair_axes(...)[j]; "
                            "return (cos, sin) of those angles, [..., seq, dim // 2].")
    steps.report_pass(f"mrope_cos_sin ({layout})", len(cases), hidden)


# ----------------------------------------------------------------------------------------------------------
# Qwen2-VL's position ids
# ----------------------------------------------------------------------------------------------------------

_KINDS = {"image": IMAGE, "video": VIDEO}


def _segment_tokens(segment, merge):
    """(token type, token count) of a prompt segment: ``n`` text tokens, or ("image"|"video", t, h, w)."""
    if isinstance(segment, int):
        return TEXT, segment
    kind, t, h, w = segment
    return _KINDS[kind], t * (h // merge) * (w // merge)


def _prompt_case(rows, merge, hidden) -> Case:
    """A batch of prompts (rows of equal length) as ``mrope_position_ids``' arguments. A visible case is labelled
    with its prompt; a hidden one with its shapes only."""
    types = []
    for row in rows:
        types.append([])
        for segment in row:
            kind, count = _segment_tokens(segment, merge)
            types[-1] += [kind] * count
    grids = {kind: [list(s[1:]) for row in rows for s in row if not isinstance(s, int) and _KINDS[s[0]] == kind]
             for kind in (IMAGE, VIDEO)}
    token_types = torch.tensor(types, dtype=torch.int64)
    image, video = (torch.tensor(grids[k], dtype=torch.int64) if grids[k] else None for k in (IMAGE, VIDEO))
    if hidden:
        label = (f"token_types {list(token_types.shape)}, image_grid_thw "
                 f"{'None' if image is None else list(image.shape)}, video_grid_thw "
                 f"{'None' if video is None else list(video.shape)}, spatial_merge_size={merge}")
    else:
        def said(segment):
            return f"text {segment}" if isinstance(segment, int) else f"{segment[0]} {tuple(segment[1:])}"

        prompts = [", ".join(said(s) for s in row) for row in rows]
        label = ((f"the prompt [{prompts[0]}]" if len(rows) == 1 else
                  f"{len(rows)} rows: " + " and ".join(f"[{p}]" for p in prompts)) + f", spatial_merge_size={merge}")
    return Case((token_types, image, video), {"spatial_merge_size": merge}, label=label)


def _walked_ids(case, *, unmerged=False, after=None):
    """The ids of a walk over the prompt with one rule changed, and their deltas. Each block is laid out by
    `solutions.mrope`'s own block layout, on its merged grid, or with ``unmerged`` on its grid *before* the merge
    (rows of w patches, frames of h * w; its first tokens, as many as the block has); the text after it continues
    at ``after(s, t, h, w, count)`` (the block's first id, the grid it was laid out on, its number of tokens)."""
    token_types, image, video = case.args
    merge = case.kwargs.get("spatial_merge_size", 2)
    grids = {IMAGE: [] if image is None else image.tolist(), VIDEO: [] if video is None else video.tolist()}
    batch, seq = token_types.shape
    ids = torch.zeros(3, batch, seq, dtype=torch.int64)
    for row in range(batch):
        start, i = 0, 0
        while i < seq:
            kind = int(token_types[row, i])
            if kind == TEXT:
                ids[:, row, i] = start
                start, i = start + 1, i + 1
                continue
            t, h, w = grids[kind].pop(0)
            count = t * (h // merge) * (w // merge)
            grid = (t, h, w) if unmerged else (t, h // merge, w // merge)
            ids[:, row, i:i + count] = _block_ids(*grid)[:, :count] + start
            start = start + max(grid) if after is None else after(start, *grid, count)
            i += count
    return ids, ids.amax(dim=(0, 2)) + 1 - seq


def _student_position_ids(token_types, image_grid_thw=None, video_grid_thw=None, spatial_merge_size=2, *,
                          merge=True, after="max", swap_rows=False, delta="right"):
    """A student's Qwen2-VL ids, walking the tokens: ``merge=False`` lays a block out on its grid before the merge
    (and counts its tokens from the token types), ``after`` is where the text after a block continues ("max",
    right; "start+1", "count", "largest"), ``swap_rows`` swaps rows and columns, ``delta`` ("right", "max-seq",
    "seq-max", "column") how the deltas are formed."""
    batch, seq = token_types.shape
    grids = {1: [] if image_grid_thw is None else [g.tolist() for g in image_grid_thw],
             2: [] if video_grid_thw is None else [g.tolist() for g in video_grid_thw]}
    position_ids = torch.zeros(3, batch, seq, dtype=torch.long)
    deltas = torch.zeros(batch, dtype=torch.long)
    for b in range(batch):
        s, i = 0, 0
        while i < seq:
            kind = int(token_types[b, i])
            if kind == 0:
                position_ids[:, b, i] = s
                s += 1
                i += 1
                continue
            t, h, w = grids[kind].pop(0)
            if merge:
                h, w = h // spatial_merge_size, w // spatial_merge_size
                n = t * h * w
            else:  # the block is as long as the run of its tokens
                n = 1
                while i + n < seq and int(token_types[b, i + n]) == kind:
                    n += 1
            for k in range(n):
                frame, row, col = k // (h * w), (k // w) % h, k % w
                if swap_rows:
                    row, col = col, row
                position_ids[:, b, i + k] = torch.tensor([s + frame, s + row, s + col])
            s = {"max": s + max(t, h, w), "start+1": s + 1, "count": s + n, "largest": s + max(t, h, w) - 1}[after]
            i += n
        largest = int(position_ids[:, b].max())
        deltas[b] = {"right": largest + 1 - seq, "max-seq": largest - seq, "seq-max": seq - largest - 1,
                     "column": largest + 1 - seq}[delta]
    return position_ids, (deltas[:, None] if delta == "column" else deltas)


def _with_deltas(ref, case, change):
    position_ids, deltas = ref(*case.args, **case.kwargs)
    return position_ids, change(deltas)


POSITION_IDS_MISTAKES = [
    Mistake("merge forgotten", "Your image/video ids are laid out on the grid in patches, before the merge. "
                               "image_grid_thw and video_grid_thw count the vision encoder's patches, and each "
                               "spatial_merge_size x spatial_merge_size square of patches is one token: a block of "
                               "grid (t, h, w) is t x (h/m) x (w/m) tokens, frame by frame and row by row, so its rows "
                               "run over h/m values and its columns over w/m, and the text after it continues at "
                               "s + max(t, h/m, w/m).",
            candidate=lambda ref, case: _walked_ids(case, unmerged=True),
            example=functools.partial(_student_position_ids, merge=False)),
    Mistake("text at block start + 1", "After an image or video your text continues at the block's first id + 1, as if "
                                       "the block were one token. It continues from the block's largest id plus one: "
                                       "s + max(t, h/m, w/m), with s the block's first id.",
            candidate=lambda ref, case: _walked_ids(case, after=lambda s, t, h, w, count: s + 1),
            example=functools.partial(_student_position_ids, after="start+1")),
    Mistake("text at the token count", "After an image or video your text continues as if every token had a position "
                                       "of its own (the block's first id + its number of tokens, as 1-D positions "
                                       "would). In M-RoPE it continues from the block's largest id plus one, "
                                       "s + max(t, h/m, w/m): a block uses fewer ids than it has tokens, and the "
                                       "deltas record the difference.",
            candidate=lambda ref, case: _walked_ids(case, after=lambda s, t, h, w, count: s + count),
            example=functools.partial(_student_position_ids, after="count")),
    Mistake("text at the largest id", "After an image or video your text starts at the block's largest id, which the "
                                      "block's last token already has. It starts one later, at the largest id plus "
                                      "one: s + max(t, h/m, w/m).",
            candidate=lambda ref, case: _walked_ids(case, after=lambda s, t, h, w, count: s + max(t, h, w) - 1),
            example=functools.partial(_student_position_ids, after="largest")),
    Mistake("rows and columns swapped", "Your height and width ids are swapped in the image/video blocks. The height "
                                        "id (position_ids[1]) is s + the token's row in the merged grid and the width "
                                        "id (position_ids[2]) s + its column; the tokens run frame by frame and row "
                                        "by row (row = k // (w/m), column = k % (w/m) within a frame).",
            candidate=lambda ref, case: (lambda ids_deltas: (ids_deltas[0][[0, 2, 1]], ids_deltas[1]))(
                ref(*case.args, **case.kwargs)),
            example=functools.partial(_student_position_ids, swap_rows=True)),
    Mistake("deltas [batch, 1]", "Your deltas have shape [batch, 1], as Hugging Face's get_rope_index returns them; "
                                 "this function returns them as [batch].",
            candidate=lambda ref, case: _with_deltas(ref, case, lambda d: d[:, None]),
            example=functools.partial(_student_position_ids, delta="column")),
    Mistake("deltas off by one", "Your deltas are one too small: delta = (largest id + 1) - seq, the id the next token "
                                 "gets minus its cache position seq.",
            candidate=lambda ref, case: _with_deltas(ref, case, lambda d: d - 1),
            example=functools.partial(_student_position_ids, delta="max-seq")),
    Mistake("deltas sign", "Your deltas have the wrong sign: delta = (largest id + 1) - seq, negative when images or "
                           "videos used fewer ids than tokens; a decoded token at cache position p gets the id "
                           "p + delta.",
            candidate=lambda ref, case: _with_deltas(ref, case, lambda d: -d),
            example=functools.partial(_student_position_ids, delta="seq-max")),
]

POSITION_IDS_CASES = (
    ([[2, ("image", 1, 4, 6), 3]], 2),
    ([[1, ("video", 3, 2, 4), 2]], 2),
    ([[("image", 1, 4, 4), 5], [1, ("image", 1, 4, 6), 2]], 2),
)
"""The visible cases: a prompt with an image, one with a video, and a batch whose images are taken in turn."""


def check_mrope_position_ids(student_fn, *, cases=POSITION_IDS_CASES, hidden=False) -> None:
    """``mrope_position_ids(token_types, image_grid_thw=None, video_grid_thw=None, spatial_merge_size=2)`` returning
    ``(position_ids [3, batch, seq], deltas [batch])``, int64. ``cases`` are (rows, spatial_merge_size): each row
    a list of segments, ``n`` (n text tokens) or ``("image" | "video", t, h, w)`` (a grid in patches before the
    merge); rows have equal lengths, and the grids are listed in order of appearance, row after row."""
    built = [_prompt_case(rows, merge, hidden) for rows, merge in cases]
    check_function(student_fn, solutions.mrope_position_ids, built, name="mrope_position_ids", rtol=0, atol=0,
                   mistakes=POSITION_IDS_MISTAKES, names=("position_ids", "deltas"), hidden=hidden,
                   hint="Keep a running start s: a text token gets (s, s, s) and s += 1; a block of T x H x W merged "
                        "tokens gets (s + frame, s + row, s + col), then s += max(T, H, W). delta = max id + 1 - seq.")


CATALOGUES = [
    Catalogue(check_rope2d_cos_sin, ROPE2D_MISTAKES),
    Catalogue(check_mrope_pair_axes, [m for m in PAIR_AXES_MISTAKES if m.name.startswith(("layout", "chunks"))],
              options={"interleaved": False}),
    Catalogue(check_mrope_pair_axes, [m for m in PAIR_AXES_MISTAKES if not m.name.startswith("chunks")],
              options={"interleaved": True}),
    Catalogue(check_mrope_cos_sin,
              [m for m in MROPE_COS_SIN_MISTAKES if not m.name.startswith(("interleave", "round"))],
              options={"interleaved": False}),
    Catalogue(check_mrope_cos_sin, [m for m in MROPE_COS_SIN_MISTAKES if not m.name.startswith("chunks")],
              options={"interleaved": True}),
    Catalogue(check_mrope_position_ids, POSITION_IDS_MISTAKES),
]
"""Which check recognises each catalogue of this assignment (``tests/test_grader_mistakes.py`` runs them): the
pair-axis mistakes of each layout under the check of that layout."""
