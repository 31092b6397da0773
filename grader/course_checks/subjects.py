"""What the visible checks hand to a student's function besides tensors, and the few judgements of a student's
output that are a property rather than one stored value.

A student kit holds no code of the course's reference functions, so the functions and models that a visible
check passes to the student's code are stand-ins that answer the same questions:

* `Table`: a function known only by its outputs on the inputs the check gives (the permutation detector's
  subject functions: attention, an MLP, a cumulative sum). Called on anything else it says so.
* `Rotation`: a rotation of ``[..., dim]`` vectors by ``exp(p A)`` for a fixed skew-symmetric ``A``, at any
  dimension. It has RoPE's relative property without being RoPE (neither its pairing nor its frequencies), so
  the student's test of that property can be run against it, and against its broken variants.
* `StandInLM`: a tiny causal byte-level model with random weights, whose next-byte predictions depend on the
  whole context; its ``learned`` variant, like any learned position table, raises ``ValueError`` past its rows.

The grading side uses the same stand-ins for the visible checks, so that a visible check says the same words in
the kit as in the grader; the hidden checks use the course's own functions and models.

Every stand-in is data: `to_state` gives its state (tensors and numbers) and `from_state` rebuilds it, which is
how a kit stores them (`course_checks.steps`).
"""

from __future__ import annotations

import math

import torch

# ----------------------------------------------------------------------------------------------------------
# Stand-ins
# ----------------------------------------------------------------------------------------------------------


class Table:
    """A function given by its outputs on a few inputs: ``Table([(x, f(x)), ...])(x)`` is ``f(x)``."""

    kind = "table"

    def __init__(self, pairs, description: str = "this function"):
        self.pairs = [(x.detach().clone(), y.detach().clone()) for x, y in pairs]
        self.description = description

    @classmethod
    def of(cls, fn, inputs, description: str = "this function") -> "Table":
        return cls([(x, fn(x.clone())) for x in inputs], description)

    def __call__(self, x):
        if isinstance(x, torch.Tensor):
            for known, value in self.pairs:
                if x.shape == known.shape and x.dtype == known.dtype and torch.equal(x.detach().cpu(), known):
                    return value.clone()
        shapes = " and ".join(f"a {known.dtype} tensor of shape {list(known.shape)}" for known, _ in self.pairs)
        raise ValueError(f"the student kit knows {self.description} only by its outputs on the check's own inputs "
                         f"({shapes}: x and x[perm]); call it on exactly those")

    def to_state(self) -> dict:
        return {"pairs": [list(pair) for pair in self.pairs], "description": self.description}

    @classmethod
    def from_state(cls, state: dict) -> "Table":
        return cls([tuple(pair) for pair in state["pairs"]], state["description"])


class Rotation:
    """``rotate(x, position)``: ``x @ exp(position * A)^T`` for a skew-symmetric ``A`` drawn (per dimension) from
    ``seed``, in float64, returned in ``x``'s dtype. ``<rotate(q, m), rotate(k, n)>`` depends on ``n - m``
    only, as RoPE's does (``exp(mA)^T exp(nA) = exp((n - m)A)``).

    ``variant`` breaks it on purpose: ``"quadratic"`` turns by ``position**2`` (rotations, but not relative),
    ``"growing"`` scales the result by ``1 + 0.1 * position`` (no longer a rotation)."""

    kind = "rotation"
    VARIANTS = ("relative", "quadratic", "growing")

    def __init__(self, seed: int = 0, variant: str = "relative"):
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown rotation variant {variant!r}")
        self.seed, self.variant = int(seed), variant
        self._generators: dict[int, torch.Tensor] = {}

    def generator_matrix(self, dim: int) -> torch.Tensor:
        if dim not in self._generators:
            g = torch.Generator().manual_seed(self.seed * 1009 + dim)
            b = torch.randn(dim, dim, generator=g, dtype=torch.float64)
            self._generators[dim] = (b - b.T) / math.sqrt(2 * dim)
        return self._generators[dim]

    def __call__(self, x, position):
        if not isinstance(x, torch.Tensor) or x.dim() == 0 or x.shape[-1] % 2:
            raise ValueError("rotate(x, position) needs a tensor x whose last dimension is even")
        p = float(position)
        turn = p * p if self.variant == "quadratic" else p
        matrix = torch.linalg.matrix_exp(turn * self.generator_matrix(x.shape[-1]))
        out = x.detach().to(torch.float64) @ matrix.T
        if self.variant == "growing":
            out = out * (1.0 + 0.1 * p)
        return out.to(x.dtype)

    def to_state(self) -> dict:
        return {"seed": self.seed, "variant": self.variant}

    @classmethod
    def from_state(cls, state: dict) -> "Rotation":
        return cls(state["seed"], state["variant"])


class StandInLM(torch.nn.Module):
    """A tiny causal byte-level language model: ``model(ids [batch, seq]) -> logits [batch, seq, 256]``.

    Each position reads its own byte and a decaying average of the bytes before it, so that every byte of the
    context changes the predictions. ``positions`` (``[rows, d]``, the ``learned`` variant) is added to the
    inputs like a learned position table, and, like one, it raises ``ValueError`` for more than ``rows``
    positions."""

    kind = "stand_in_lm"

    def __init__(self, embed: torch.Tensor, mix: torch.Tensor, out: torch.Tensor, decay: float,
                 positions: torch.Tensor | None = None):
        super().__init__()
        self.embed, self.mix, self.out = embed.clone(), mix.clone(), out.clone()
        self.decay = float(decay)
        self.positions = None if positions is None else positions.clone()

    @classmethod
    def random(cls, seed: int, *, d: int = 16, learned_rows: int | None = None) -> "StandInLM":
        g = torch.Generator().manual_seed(int(seed))
        embed = torch.randn(256, d, generator=g) * 1.5
        mix = torch.randn(d, d, generator=g) / math.sqrt(d)
        out = torch.randn(d, 256, generator=g) * (2.0 / math.sqrt(d))
        positions = None if learned_rows is None else torch.randn(learned_rows, d, generator=g)
        return cls(embed, mix, out, 0.7, positions)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2:
            raise ValueError(f"the model reads a batch of byte ids [batch, seq]; got shape {list(ids.shape)}")
        seq = ids.shape[1]
        if self.positions is not None and seq > self.positions.shape[0]:
            raise ValueError(f"a learned position table has {self.positions.shape[0]} rows; asked for {seq} "
                             f"positions")
        h = self.embed[ids]  # [batch, seq, d]
        if self.positions is not None:
            h = h + self.positions[:seq]
        steps = torch.arange(seq)
        weights = torch.where(steps[:, None] >= steps[None, :],
                              self.decay ** (steps[:, None] - steps[None, :]).clamp(min=0).float(),
                              torch.zeros(()))
        context = (weights / weights.sum(-1, keepdim=True)) @ h  # [batch, seq, d]
        return torch.tanh((h + context) @ self.mix) @ self.out  # [batch, seq, 256]

    def to_state(self) -> dict:
        return {"embed": self.embed, "mix": self.mix, "out": self.out, "decay": self.decay,
                "positions": self.positions}

    @classmethod
    def from_state(cls, state: dict) -> "StandInLM":
        return cls(state["embed"], state["mix"], state["out"], state["decay"], state["positions"])


STAND_INS = {cls.kind: cls for cls in (Table, Rotation, StandInLM)}
"""Every stand-in, by the name a kit stores it under."""

# ----------------------------------------------------------------------------------------------------------
# Mistakes recognised by a property of the output
# ----------------------------------------------------------------------------------------------------------


def large_negative_instead_of_inf(actual, expected, case) -> bool:
    """A causal bias whose masked entries are a large finite negative number (-1e9) instead of -inf."""
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return False
    masked = torch.isinf(expected)
    a = actual.detach().to(torch.float64)
    return bool(masked.any() and torch.isfinite(a[masked]).all() and (a[masked] <= -1e4).all()
                and torch.allclose(a[~masked], expected[~masked].double(), rtol=1e-5, atol=1e-6))


def low_precision(actual, expected, case) -> bool:
    """An output computed in bfloat16 or float16: close to the expected one, and every value exact in one of
    those types."""
    if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
        return False
    a = actual.detach().float()
    near = torch.allclose(a, expected.float(), rtol=2e-2, atol=0)
    return bool(near and (torch.equal(a.bfloat16().float(), a) or torch.equal(a.half().float(), a)))


PREDICATES = {fn.__name__: fn for fn in (large_negative_instead_of_inf, low_precision)}
"""The property mistakes, by the name a kit stores them under."""

# ----------------------------------------------------------------------------------------------------------
# Explaining a wrong output in words
# ----------------------------------------------------------------------------------------------------------


def passkey_layout(actual, expected, case, *, statement: str, question: str, filler: str) -> str | None:
    """What a student's ``passkey_sequence(length, depth, key, filler_offset) -> (sequence, key_start)`` gets
    wrong, in words, or None if its output has another form (the generic comparison then says what differs)."""
    if not isinstance(actual, tuple) or len(actual) != 2 or not isinstance(actual[0], (bytes, bytearray)):
        return None
    sequence, key_start = bytes(actual[0]), actual[1]
    length, depth, key, offset = case.args
    statement = statement.format(key=key)
    filler_length = length + 1 - len(statement) - len(question) - len(key)
    if len(sequence) == length:
        return (f"your sequence has {length} bytes; it needs length + 1 = {length + 1}. The model *reads* the "
                f"first `length` bytes and is scored on its predictions of the last {len(key)}, which are the "
                f"key after the question: the answer is part of the sequence.")
    if len(sequence) != length + 1:
        return f"your sequence has {len(sequence)} bytes; it needs length + 1 = {length + 1}."
    text = sequence.decode("ascii", errors="replace")
    if not text.endswith(question + key):
        return (f"your sequence should end with the question and its answer, {question + key!r}: the model "
                f"reads up to {question!r} and is scored on the key's digits after it.")
    if text.count(statement) != 1:
        return (f"the key statement {statement!r} should appear exactly once (it appears "
                f"{text.count(statement)} times).")
    start, wanted = text.index(statement), round(depth * filler_length)
    if start != wanted:
        near = round(depth * (length + 1 - len(statement)))
        why = (" It looks as if depth was taken as a fraction of the whole sequence; it is a fraction of "
               "the filler alone." if start == near else "")
        return (f"the key statement starts at byte {start}, but at depth {depth:g} it belongs at byte "
                f"round(depth * filler_length) = {wanted}, with filler_length = length + 1 - "
                f"len(statement) - len(question) - len(key) = {filler_length}.{why}")
    if sequence != expected[0]:
        return (f"the statement and the question are in the right places but the filler differs. It is FILLER "
                f"repeated, starting at its character filler_offset % len(FILLER) = {offset % len(filler)}, and "
                f"cut to the bytes that the statement, the question and the key leave.")
    if key_start != expected[1]:
        return (f"the sequence is right but key_start is {key_start!r}. It is the index in the sequence of the "
                f"key's first digit in the statement (not of the statement's first byte, and not of the answer "
                f"at the end).")
    return None


EXPLAINERS = {fn.__name__: fn for fn in (passkey_layout,)}
"""The explanations in words, by the name a kit stores them under."""
