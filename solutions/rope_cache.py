"""A cos/sin cache for RoPE that grows at run time: geometrically, exactly, per dtype and device.

RoPE (Su et al. 2021, RoFormer eq. 34) needs ``cos(p * theta_i)`` and ``sin(p * theta_i)`` for every position
``p`` it is asked about. Generation asks for one new position per step, so a model that does not know its final
length in advance must extend its table while it runs. `RopeCache` does that in the way that keeps every
table value equal to the one a from-scratch computation would give:

* **Geometric growth.** When a position past the table is requested, the capacity at least doubles, so
  generating ``n`` tokens rebuilds the table O(log n) times, not once per token.
* **Exact angles.** Positions are integers, and each angle ``p * theta_i`` is formed in float64 from the
  integer ``p`` (the float32 frequencies are widened without rounding). Only the finished cos/sin values are
  cast to the caller's dtype, whose rounding error is then bounded by half a unit in the last place of a
  number in [-1, 1], at every position. Rounding the *angle* or the position instead (fp16, bf16) gives an
  error that grows with the position (see the RoPE-in-practice chapter).
* **One table per (dtype, device).** A half-precision call on the GPU and a float32 call on the CPU each get
  their own cast copy, built once per growth; no table is silently reused in the wrong dtype, and none is
  cast again at every step.
* **Length-dependent scaling.** For Dynamic NTK (emozilla 2023) and LongRoPE (Ding et al. 2024) the
  frequencies themselves depend on the current length (`solutions.rope_scaling.rope_scaling`). When they
  change, every table is rebuilt and `frequency_version` increases. Keys already in a KV cache were rotated
  with the old frequencies; `rerotate_keys` turns them into keys rotated with the new ones, so that decoding
  with the cache gives the scores a full recomputation at the new length would give.
"""

from __future__ import annotations

import torch

from ._checks import require_integer_tensor, require_positive_int
from .rope import apply_rope, rope_cos_sin
from .rope_scaling import RotaryEmbedding

# Why integer positions matter, appended to the error for float ones.
_FLOAT_POSITIONS_HINT = (
    ". Float positions are not exact past 2^11 in float16, 2^8 in bfloat16 and 2^24 in float32, and neighbouring "
    "positions then share one angle"
)


def _require_integer_positions(positions: torch.Tensor) -> None:
    require_integer_tensor(positions, "positions", _FLOAT_POSITIONS_HINT)
    if positions.numel() and int(positions.min()) < 0:
        raise ValueError(f"positions must be non-negative; got a minimum of {int(positions.min())}")


class RopeCache:
    """cos/sin tables for RoPE, grown on demand, exact to the last bit of the requested dtype.

    Arguments are those of `solutions.rope_scaling.rope_scaling` (``method``, ``factor``,
    ``original_max_position_embeddings`` and the method's own options), plus ``initial_capacity``, the number
    of positions of the first table (default: the training length ``original_max_position_embeddings``).

    ``cos_sin(positions, dtype=..., device=...)`` returns ``(cos, sin)`` of shape
    ``positions.shape + (dim // 2,)`` for `solutions.rope.apply_rope`. The bookkeeping is public so that a
    caller (and the course's tests) can see what the cache did: ``capacity``, ``builds`` (how many tables
    have been computed), ``frequency_version`` (how many times length-dependent frequencies changed),
    ``inv_freq`` and ``attention_factor`` (the current ones, held by the ``rotary_embedding`` it wraps) and
    ``table_keys`` (the (dtype, device) pairs that hold a table).
    """

    def __init__(
        self,
        dim: int,
        base: float = 10000.0,
        method: str = "default",
        factor: float = 1.0,
        original_max_position_embeddings: int = 2048,
        initial_capacity: int | None = None,
        **params,
    ):
        # The frequencies and their length rule live in RotaryEmbedding (one source of truth); building it first
        # validates every scaling argument, the training length included, before the cache's own ones.
        self.rotary_embedding = RotaryEmbedding(dim, base, method, factor, original_max_position_embeddings, **params)
        self.dim, self.method = dim, method
        self.original_max_position_embeddings = original_max_position_embeddings
        capacity = original_max_position_embeddings if initial_capacity is None else initial_capacity
        require_positive_int(capacity, "initial_capacity")
        self.capacity = capacity
        self.frequency_version = 0
        self.builds = 0
        self._tables: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def inv_freq(self) -> torch.Tensor:
        """The current frequencies (float32), those of `RotaryEmbedding` at the current length."""
        return self.rotary_embedding.inv_freq

    @property
    def attention_factor(self) -> float:
        """The current attention factor folded into cos and sin (YaRN's; 1 for most methods)."""
        return self.rotary_embedding.attention_factor

    @property
    def table_keys(self) -> list[tuple[torch.dtype, torch.device]]:
        """The (dtype, device) pairs that currently hold a built table."""
        return list(self._tables)

    def update_length(self, seq_len: int) -> bool:
        """Set the current sequence length; return True when that changed the frequencies.

        Only the length-dependent methods (``dynamic``, ``longrope``) react: up to the training length they use
        their short-length frequencies (plain RoPE for ``dynamic``, the short factors for ``longrope``), and past
        it those of ``seq_len`` itself; the rule is `RotaryEmbedding.update_length`'s. A change empties every
        table (they are rebuilt on the next call) and increases ``frequency_version``; keys already cached by the
        caller need `rerotate_keys`.
        """
        require_positive_int(seq_len, "seq_len")
        old_inv_freq, old_attention_factor = self.inv_freq, self.attention_factor
        if not self.rotary_embedding.update_length(seq_len):
            return False
        # A new length need not mean new frequencies (LongRoPE past the training length keeps its long factors).
        changed = not torch.equal(old_inv_freq, self.inv_freq) or old_attention_factor != self.attention_factor
        if changed:
            self.frequency_version += 1
            self._tables.clear()
        return changed

    def _grow_to(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        # Doubling (or more, if one request jumps further) bounds the rebuilds by log2(final / initial).
        self.capacity = max(needed, 2 * self.capacity)
        self._tables.clear()

    def _table(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (dtype, device)
        if key not in self._tables:
            # float64 on the CPU: every backend has it (MPS has no float64), and the integer positions and
            # the widened float32 frequencies multiply without rounding the position.
            positions = torch.arange(self.capacity, dtype=torch.int64)
            cos, sin = rope_cos_sin(self.inv_freq.double(), positions, self.attention_factor)
            self._tables[key] = (cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype))
            self.builds += 1
        return self._tables[key]

    def cos_sin(
        self,
        positions: torch.Tensor | int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        seq_len: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` for integer ``positions`` (a tensor, or an int ``n`` meaning 0 .. n-1).

        ``dtype`` and ``device`` are those of the tables returned (``device`` defaults to that of
        ``positions``). ``seq_len`` is the current length for length-dependent methods; it defaults to the
        largest requested position plus one.
        """
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating-point torch.dtype; got {dtype!r}")
        if isinstance(positions, int):
            require_positive_int(positions, "the number of positions")
            positions = torch.arange(positions)
        if not isinstance(positions, torch.Tensor):
            raise ValueError(f"positions must be an int or an integer tensor; got {type(positions).__name__}")
        _require_integer_positions(positions)
        # One key per physical device: "cuda" and "cuda:0" name the same one, and torch.device does not equate them.
        device = positions.device if device is None else torch.empty(0, device=device).device
        needed = int(positions.max()) + 1 if positions.numel() else 1
        if seq_len is not None and seq_len < needed:
            raise ValueError(
                f"seq_len={seq_len} is shorter than the largest requested position + 1 = {needed}: the current "
                f"length must cover every position asked for"
            )
        self.update_length(needed if seq_len is None else seq_len)
        self._grow_to(needed)
        cos, sin = self._table(dtype, device)
        index = positions.to(device=device, dtype=torch.int64)
        return cos[index], sin[index]


def rerotate_keys(
    keys: torch.Tensor,
    positions: torch.Tensor,
    old_inv_freq: torch.Tensor,
    new_inv_freq: torch.Tensor,
    old_attention_factor: float = 1.0,
    new_attention_factor: float = 1.0,
    interleaved: bool = False,
) -> torch.Tensor:
    """Turn keys rotated with ``old_inv_freq`` into keys rotated with ``new_inv_freq``.

    Two rotations of one pair compose by adding their angles, ``R(p theta') = R(p (theta' - theta)) R(p theta)``
    (RoFormer eq. 13), so a cached key rotated at position ``p`` with the old frequencies only needs a further
    rotation by ``p (theta' - theta)``, computed here in float64 from the integer positions. The attention
    factor (YaRN's, folded into cos and sin) multiplies the key, so its ratio is applied too.

    ``keys`` is ``[..., seq, dim]`` (rotary dims first, as `apply_rope`); ``positions`` are the integer
    positions of its rows, ``[seq]`` or broadcastable to the keys' leading dims. The result has the keys'
    dtype.
    """
    if old_inv_freq.shape != new_inv_freq.shape or old_inv_freq.dim() != 1:
        raise ValueError(
            f"old_inv_freq and new_inv_freq must be 1-D of the same length; got {tuple(old_inv_freq.shape)} "
            f"and {tuple(new_inv_freq.shape)}"
        )
    _require_integer_positions(positions)
    if old_attention_factor == 0:
        raise ValueError("old_attention_factor must be non-zero: keys scaled by 0 cannot be recovered")
    delta = new_inv_freq.double() - old_inv_freq.double()
    ratio = float(new_attention_factor) / float(old_attention_factor)
    cos, sin = rope_cos_sin(delta.to(keys.device), positions.to(keys.device), ratio)
    return apply_rope(keys, cos, sin, interleaved=interleaved)
