"""T5's relative position bias: a learned scalar per (head, distance bucket), added to every logit.

Raffel et al., "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer", JMLR 2020
(arXiv 1910.10683), section 2.1: "each 'embedding' is simply a scalar that is added to the corresponding
logit", with 32 buckets whose sizes grow logarithmically up to an offset of 128, beyond which every offset
shares the last bucket. The bucket rule follows the released Mesh TensorFlow / Hugging Face code
(`_relative_position_bucket`), which the paper describes only in words.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ._checks import require_positive_int


def t5_relative_position_bucket(
    relative_position: torch.Tensor,
    bidirectional: bool = True,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> torch.Tensor:
    """Map ``relative_position = key_pos - query_pos`` to a bucket index in ``[0, num_buckets)``.

    Raffel et al. 2020, section 2.1. Half of the buckets (of each direction, when ``bidirectional``) hold
    the exact offsets 0 .. max_exact - 1 with ``max_exact = buckets_per_direction // 2``; the other half
    cover max_exact .. max_distance logarithmically; every larger offset falls into the last bucket.
    Bidirectional: keys *after* the query (positive offsets) use the upper half of the buckets.
    Causal (``bidirectional=False``): positive offsets (future keys) all map to bucket 0, like offset 0.
    """
    if relative_position.dtype.is_floating_point:
        raise ValueError(f"relative_position must be an integer tensor; got dtype {relative_position.dtype}")
    require_positive_int(num_buckets, "num_buckets")
    require_positive_int(max_distance, "max_distance")
    buckets_per_direction = num_buckets // 2 if bidirectional else num_buckets
    max_exact = buckets_per_direction // 2
    if max_exact < 1 or max_distance <= max_exact:
        raise ValueError(
            f"need at least one exact and one log bucket per direction and max_distance > exact range; got "
            f"num_buckets={num_buckets}, bidirectional={bidirectional}, max_distance={max_distance}"
        )
    relative_position = relative_position.long()
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        bucket = bucket + (relative_position > 0).long() * buckets_per_direction
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    # Log-spaced buckets: distance max_exact maps to max_exact, max_distance to buckets_per_direction.
    # The clamp(min=1) only avoids log(0) in entries that the torch.where below discards.
    log_ratio = torch.log(distance.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
    log_bucket = max_exact + (log_ratio * (buckets_per_direction - max_exact)).long()
    log_bucket = log_bucket.clamp(max=buckets_per_direction - 1)
    return bucket + torch.where(distance < max_exact, distance, log_bucket)


def relative_positions(query_length: int, key_length: int, device=None) -> torch.Tensor:
    """``[query_length, key_length]`` matrix of ``key_pos - query_pos``, queries aligned to the end of keys.

    Query i sits at position ``key_length - query_length + i`` so that decoding with a cache of past keys
    gets the same offsets as the full sequence would.
    """
    if query_length > key_length:
        raise ValueError(f"query_length ({query_length}) cannot exceed key_length ({key_length})")
    query_positions = torch.arange(key_length - query_length, key_length, device=device)
    key_positions = torch.arange(key_length, device=device)
    return key_positions[None, :] - query_positions[:, None]


class T5RelativeBias(nn.Module):
    """Learned ``[num_buckets, num_heads]`` table; ``forward`` returns the ``[heads, q_len, k_len]`` bias.

    Raffel et al. 2020, section 2.1. In T5 one table is shared by all layers of a stack. Because the bias of
    a cached key depends on its distance to the *current* query, it must be recomputed at every decode step
    (it cannot be folded into the cached key, unlike RoPE): the chapter on T5 measures that cost.
    """

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        require_positive_int(num_heads, "num_heads")
        self.num_buckets, self.max_distance, self.bidirectional = num_buckets, max_distance, bidirectional
        self.bias_table = nn.Embedding(num_buckets, num_heads)
        # Validate the bucket geometry once, at construction, rather than on the first forward.
        t5_relative_position_bucket(torch.zeros(1, dtype=torch.long), bidirectional, num_buckets, max_distance)

    def forward(self, query_length: int, key_length: int | None = None) -> torch.Tensor:
        key_length = query_length if key_length is None else key_length
        offsets = relative_positions(query_length, key_length, device=self.bias_table.weight.device)
        buckets = t5_relative_position_bucket(offsets, self.bidirectional, self.num_buckets, self.max_distance)
        return self.bias_table(buckets).permute(2, 0, 1)
