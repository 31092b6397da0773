"""Passkey retrieval at the byte level: find a number hidden at a given depth in a long filler text.

The test of Mohtashami and Jaggi (2023, "Landmark Attention"), used by the Position Interpolation paper
(Chen et al. 2023, section 3.3) and YaRN (Peng et al. 2024, section 4.3.2): a short key sentence is hidden
in a repeated, meaningless filler, and the prompt ends by asking for the key. Here everything is bytes and
the model is tiny, so the format is compact enough to fit in a 64-byte training window::

    <filler ...>KEY=48213. <... filler>KEY=48213
                ^ depth 0 .. 1 of the filler ^^^^^ the answer: the last 5 bytes

The filler is the one of the landmark-attention and PI papers. It has no digits and no capital K, E or Y,
so the key is the only number and ``KEY=`` marks it unambiguously: a tiny model can learn the lookup (an
induction head: find the earlier ``KEY=`` and copy what follows) within a CPU budget, which it did not with
a key sentence that shares words with the filler ("The key is" against "The sky is"). The lab mixes such
sequences into training (at the training length, at random depths); at evaluation the filler is lengthened
to 1x .. 16x the training length and the key is placed at fixed depths. A prediction is correct when the
model's most likely byte is the right digit at every answer position (teacher forcing, which for a correct
answer is the same as greedy decoding).
"""

from __future__ import annotations

import torch

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_DIGITS = 5
STATEMENT = "KEY={key}. "
QUESTION = "KEY="


def passkey_sequence(
    length: int, depth: float | list[float], key: str, filler_offset: int = 0
) -> tuple[bytes, int]:
    """``(sequence, key_start)``: ``length + 1`` bytes whose last ``len(key)`` bytes are the answer.

    The model reads ``sequence[:-1]`` (exactly ``length`` bytes) and is scored on its predictions of the last
    ``len(key)`` bytes. ``depth`` in [0, 1] is where the key sentence sits within the filler: 0 at the very
    start, 1 just before the question. A list of depths states the key once at each (training uses this to
    give the tiny model more copies to learn from; evaluation always states it once). ``filler_offset``
    starts the repeated filler at another character, so the key does not always follow the same words.
    ``key_start`` is the index of the first statement's first digit.
    """
    depths = sorted([depth] if isinstance(depth, (int, float)) else [float(d) for d in depth])
    if not depths or not all(0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depth must be in [0, 1] (or a non-empty list of such); got {depth}")
    if not key.isdigit():
        raise ValueError(f"the key must be decimal digits; got {key!r}")
    statement = STATEMENT.format(key=key)
    needed = len(depths) * len(statement) + len(QUESTION) + len(key)
    filler_length = length + 1 - needed
    if filler_length < 0:
        raise ValueError(
            f"a passkey sequence with {len(depths)} statement(s) of a {len(key)}-digit key needs at least "
            f"{needed - 1} positions; got length {length}"
        )
    repeats = (filler_offset % len(FILLER) + filler_length) // len(FILLER) + 1
    filler = (FILLER * repeats)[filler_offset % len(FILLER) :][:filler_length]
    cuts = [round(d * filler_length) for d in depths]
    pieces, previous = [], 0
    for cut in cuts:
        pieces += [filler[previous:cut], statement]
        previous = cut
    text = "".join(pieces) + filler[previous:] + QUESTION + key
    key_start = cuts[0] + statement.index(key)
    encoded = text.encode("ascii")
    assert len(encoded) == length + 1
    return encoded, key_start


def random_key(generator: torch.Generator, digits: int = KEY_DIGITS) -> str:
    """A random ``digits``-digit decimal key with no leading zero."""
    low = 10 ** (digits - 1)
    return str(int(torch.randint(low, 10 * low, (1,), generator=generator)))


def passkey_batch(
    length: int,
    depths: torch.Tensor | list[float],
    generator: torch.Generator,
    digits: int = KEY_DIGITS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` int64 ``[len(depths), length]``: one passkey sequence per entry of ``depths``.

    An entry is a depth, or a list of depths for a key stated several times. Keys and filler offsets are drawn
    from ``generator``. The answer is ``targets[:, -digits:]``.
    """
    rows = []
    for depth in depths:
        key = random_key(generator, digits)
        offset = int(torch.randint(len(FILLER), (1,), generator=generator))
        sequence, _ = passkey_sequence(length, depth if isinstance(depth, list) else float(depth), key, offset)
        rows.append(torch.tensor(list(sequence), dtype=torch.long))
    batch = torch.stack(rows)
    return batch[:, :-1], batch[:, 1:]


def training_passkey_batch(
    length: int, count: int, generator: torch.Generator, max_statements: int = 3, digits: int = KEY_DIGITS
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` training sequences, each stating its key 1 .. ``max_statements`` times at random depths.

    Every statement after the first is one more copy of the key for the model to learn from; the question
    at the end is answered exactly as at evaluation, where the key is stated once.
    """
    depths = []
    for _ in range(count):
        statements = int(torch.randint(1, max_statements + 1, (1,), generator=generator))
        depths.append(torch.rand(statements, generator=generator).tolist())
    return passkey_batch(length, depths, generator, digits)
