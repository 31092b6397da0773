"""The two evaluations of the lab: perplexity by length, and passkey retrieval by length and depth.

Perplexity by length follows the *last-window* protocol: for every evaluation length l the model reads the
last l bytes of a fixed validation window, and only its predictions of the final ``train_length`` bytes are
scored. Every length therefore scores exactly the same bytes; a longer context can only lower the perplexity
if the model uses it, and a model that ignores context scores the same at every length. (Press et al. 2022,
appendix B, show why this matters: with non-overlapping evaluation much of ALiBi's gain at longer lengths
comes from giving early tokens more context, not from using far tokens.)

Passkey retrieval (Mohtashami and Jaggi 2023; used by Chen et al. 2023 and Peng et al. 2024) scores whether
every digit of the hidden key is the model's most likely next byte. Both evaluations record a position past a
learned table as ``None`` with the error's message, rather than crashing.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .passkey import KEY_DIGITS, passkey_batch

Model = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def last_window_nll(model: Model, windows: torch.Tensor, length: int, scored: int, batch_size: int = 8) -> float:
    """Mean negative log-likelihood (nats per byte) of the last ``scored`` bytes, reading ``length`` bytes.

    ``windows`` is ``[count, max_length + 1]``; the model reads ``windows[:, -(length + 1):-1]`` and is
    scored against ``windows[:, -scored:]``, its predictions of the last ``scored`` bytes.
    """
    if not scored <= length < windows.shape[1]:
        raise ValueError(f"need scored <= length < window size; got {scored}, {length}, {windows.shape[1]}")
    total, count = 0.0, 0
    for chunk in windows.split(batch_size):
        inputs, targets = chunk[:, -(length + 1) : -1], chunk[:, -scored:]
        logits = model(inputs)[:, -scored:]
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    return total / count


def perplexity_by_length(
    model: Model, windows: torch.Tensor, train_length: int, lengths: list[int], batch_size: int = 8
) -> tuple[dict[int, float | None], str | None]:
    """``({length: perplexity or None}, error)``: last-window perplexity at every length.

    A ``ValueError`` from the model (a learned table asked for an unseen position) gives ``None`` for that
    length and every longer one, and its message is returned as ``error``.
    """
    results, error = {}, None
    for length in sorted(lengths):
        if error is None:
            try:
                results[length] = math.exp(last_window_nll(model, windows, length, train_length, batch_size))
            except ValueError as exc:
                error = str(exc)
        if error is not None:
            results[length] = None
    return results, error


def passkey_digits_correct(logits: torch.Tensor, targets: torch.Tensor, digits: int = KEY_DIGITS) -> torch.Tensor:
    """``[batch, digits]`` bool: whether each digit of the key is the model's most likely next byte.

    ``logits`` ``[batch, length, vocab]`` are the model's outputs on a passkey prompt and ``targets``
    ``[batch, length]`` the next bytes; the key is the last ``digits`` targets. Scoring every digit of a
    correct answer under teacher forcing is the same as decoding it greedily: each digit is predicted
    from the correct digits before it.
    """
    return logits[:, -digits:].argmax(-1) == targets[:, -digits:]


@torch.no_grad()
def passkey_accuracy(
    model: Model,
    lengths: list[int],
    depths: list[float],
    trials: int,
    seed: int = 0,
    batch_size: int = 8,
) -> tuple[dict, dict, str | None]:
    """``(exact, digits, error)``: passkey accuracy ``[length][depth]``, by whole key and by digit.

    For each length and depth, ``trials`` prompts with random keys and filler offsets are drawn from a
    generator seeded by ``(seed, length, depth index)``, so every model is asked exactly the same questions.
    ``exact`` is the share of prompts whose every key digit is the argmax; ``digits`` the share of digits.
    """
    exact, digits, error = {}, {}, None
    for length in sorted(lengths):
        exact[length], digits[length] = {}, {}
        for index, depth in enumerate(depths):
            if error is not None:
                exact[length][depth] = digits[length][depth] = None
                continue
            generator = torch.Generator().manual_seed(seed * 1_000_003 + length * 101 + index)
            inputs, targets = passkey_batch(length, [depth] * trials, generator)
            correct = []
            try:
                for chunk_in, chunk_target in zip(inputs.split(batch_size), targets.split(batch_size)):
                    correct.append(passkey_digits_correct(model(chunk_in), chunk_target))
            except ValueError as exc:
                error = str(exc)
                exact[length][depth] = digits[length][depth] = None
                continue
            correct = torch.cat(correct)
            exact[length][depth] = correct.all(dim=1).float().mean().item()
            digits[length][depth] = correct.float().mean().item()
    return exact, digits, error
