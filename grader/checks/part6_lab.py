"""The checks of assignment ``part6_lab``: the evaluation lab's passkey prompt and its scoring (the passkey test of
Mohtashami and Jaggi 2023, as used by the PI and YaRN papers), the last-window negative log-likelihood, and
perplexity by length for models that cannot run past their training length.

The student's evaluation functions call a model; the checks pass them small `solutions.lab.TinyDecoder`\\ s with
random weights (scaled up so that their predictions depend visibly on the context), and a learned-position
model that, like any learned table, cannot run past its training length. Each check with a catalogue sits next
to it; each mistake's ``example`` is a wrong function written the way a student writes it, proved by
``tests/test_grader_mistakes.py``. The passkey layout and the perplexity's None are diagnosed in words by their
checks directly.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from solutions.lab import evaluate as _lab_evaluate
from solutions.lab import passkey as _lab_passkey
from solutions.lab.model import ModelConfig as _LabModelConfig
from solutions.lab.model import TinyDecoder as _TinyDecoder

from ..course_checks import steps
from ..course_checks.subjects import StandInLM
from .engine import Case, Catalogue, Mistake, _clone, check_function, generator

GRADED_REFERENCES = {
    "check_passkey_sequence": ["solutions.lab.passkey:passkey_sequence"],
    "check_passkey_digits_correct": ["solutions.lab.evaluate:passkey_digits_correct"],
    "check_last_window_nll": ["solutions.lab.evaluate:last_window_nll"],
    "check_perplexity_by_length": ["solutions.lab.evaluate:perplexity_by_length"],
}
"""This assignment's entries of `grader.checks.GRADED_REFERENCES`."""

FILLER = _lab_passkey.FILLER
STATEMENT = _lab_passkey.STATEMENT
QUESTION = _lab_passkey.QUESTION
KEY_DIGITS = _lab_passkey.KEY_DIGITS


def lab_model(encoding: str = "rope", train_length: int = 16, seed: int = 0) -> torch.nn.Module:
    """A tiny `TinyDecoder` (1 layer, d = 16) whose weights are drawn from ``seed`` with unit-scale
    embeddings, so that its next-byte predictions change with every byte of context it reads."""
    config = _LabModelConfig(encoding=encoding, train_length=train_length, d_model=16, n_layers=1, n_heads=2,
                             d_ff=32, t5_num_buckets=8)
    model = _TinyDecoder(config)
    g = generator(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=g) / math.sqrt(parameter.shape[-1]))
        model.embed.weight.mul_(1.5)  # larger inputs, and (tied) sharper predictions
    return model.eval()


def _model(encoding: str, seed: int, hidden: bool) -> torch.nn.Module:
    """The model a check hands to the student's function: a `lab_model` in a hidden check; in a visible one a
    `course_checks.subjects.StandInLM` (a student kit carries it, and carries nothing of `solutions`), with a
    16-row learned table for ``"learned"``."""
    if hidden:
        return lab_model(encoding, seed=seed)
    return StandInLM.random(seed, learned_rows=16 if encoding == "learned" else None)


def _byte_windows(count: int, size: int, seed: int) -> torch.Tensor:
    """``[count, size]`` int64 random bytes drawn from a small alphabet (so that bigrams repeat)."""
    alphabet = torch.tensor(list(b"abcdefgh ()=:\n"), dtype=torch.long)
    return alphabet[torch.randint(len(alphabet), (count, size), generator=generator(seed))]


# ----------------------------------------------------------------------------------------------------------
# The passkey prompt (a layout, diagnosed in words: no catalogue)
# ----------------------------------------------------------------------------------------------------------


def check_passkey_sequence(student_fn, *, cases=((64, 0.5, "48213", 0), (48, 0.0, "10000", 7),
                                                   (48, 1.0, "99999", 0)), hidden=False) -> None:
    """``passkey_sequence(length, depth, key, filler_offset) -> (sequence, key_start)``, against
    `solutions.lab.passkey.passkey_sequence`; a wrong layout is explained in words."""
    built = [Case((length, depth, key, offset), label=f"length={length}, depth={depth:g}, filler_offset={offset}")
             for length, depth, key, offset in cases]
    # A wrong layout is said in words (`course_checks.subjects.passkey_layout`) rather than as "the bytes differ".
    check_function(student_fn, _lab_passkey.passkey_sequence, built, name="passkey_sequence",
                   names=("sequence", "key_start"), hidden=hidden, explain="passkey_layout",
                   explain_options=dict(statement=STATEMENT, question=QUESTION, filler=FILLER))


# ----------------------------------------------------------------------------------------------------------
# Scoring the passkey's digits
# ----------------------------------------------------------------------------------------------------------


def _student_digits_correct(logits, targets, digits, *, shift=0, whole_key=False):
    """A student's [batch, digits] comparison of the predictions (``shift`` = 1 reads them one position early)."""
    end = logits.shape[1] - shift
    right = logits[:, end - digits:end].argmax(-1) == targets[:, -digits:]
    return right.all(dim=1) if whole_key else right


PASSKEY_DIGITS_MISTAKES = [
    Mistake("shifted", "the prediction of target t is the model's output at position t (the output at "
                       "position t predicts the *next* byte, which is targets[t]); you compared the outputs "
                       "one position too early.",
            candidate=lambda ref, case: (lambda logits, targets, digits: logits[:, -digits - 1:-1].argmax(-1)
                                         == targets[:, -digits:])(*case.args),
            example=functools.partial(_student_digits_correct, shift=1)),
    Mistake("reduced", "return one bool per digit, [batch, digits]: whether *all* digits are right is the "
                       "caller's decision (the lab reports both).",
            candidate=lambda ref, case: ref(*case.args).all(-1),
            example=functools.partial(_student_digits_correct, whole_key=True)),
]


def check_passkey_digits_correct(student_fn, *, cases=((3, 12, 5), (1, 6, 2), (4, 9, 5)), seed=0,
                                 hidden=False) -> None:
    """``passkey_digits_correct(logits, targets, digits) -> [batch, digits]`` bool."""
    g = generator(seed)
    built = []
    for batch, length, digits in cases:
        targets = torch.randint(48, 58, (batch, length), generator=g)
        logits = torch.randn(batch, length, 256, generator=g)
        # Make the model right on about half the digits, so that both answers occur.
        right = torch.rand(batch, length, generator=g) < 0.6
        logits[right, targets[right]] += 10.0
        built.append(Case((logits, targets, digits), label=f"logits [{batch}, {length}, 256], digits={digits}"))
    check_function(student_fn, _lab_evaluate.passkey_digits_correct, built, name="passkey_digits_correct",
                   mistakes=PASSKEY_DIGITS_MISTAKES, hidden=hidden,
                   hint="Digit i is right when logits[:, -digits + i].argmax() equals targets[:, -digits + i].")


# ----------------------------------------------------------------------------------------------------------
# The last window's negative log-likelihood
# ----------------------------------------------------------------------------------------------------------


def _student_nll(model, windows, length, scored, *, score_all=False, first=False, bits=False, perplexity=False):
    """A student's mean NLL of the last ``scored`` bytes, reading ``length`` bytes of each window."""
    with torch.no_grad():
        chunk = windows[:, : length + 1] if first else windows[:, -(length + 1):]
        logits, targets = model(chunk[:, :-1]), chunk[:, 1:]
        if not score_all:
            logits, targets = logits[:, -scored:], targets[:, -scored:]
        nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).item()
    if bits:
        nll /= math.log(2)
    return math.exp(nll) if perplexity else nll


NLL_MISTAKES = [
    Mistake("all positions", "you scored every prediction of the window. Score only the last `scored` bytes: "
                             "then every length scores the same bytes, and a longer context can only help "
                             "if the model uses it.",
            candidate=lambda ref, case: (lambda model, windows, length, scored: ref(model, windows, length, length))(
                *case.args),
            example=functools.partial(_student_nll, score_all=True)),
    Mistake("first bytes", "the model should read the *last* `length` bytes of each window "
                           "(windows[:, -(length + 1):-1]), not the first: every length then ends at the "
                           "same scored bytes.",
            candidate=lambda ref, case: (lambda model, windows, length, scored: ref(
                model, windows[:, : length + 1], length, scored))(*case.args),
            example=functools.partial(_student_nll, first=True)),
    Mistake("perplexity", "you returned the perplexity, exp(NLL); return the mean negative log-likelihood "
                          "in nats per byte.", candidate=lambda ref, case: math.exp(ref(*case.args)),
            example=functools.partial(_student_nll, perplexity=True)),
    Mistake("bits", "you returned the NLL in bits; use the natural logarithm (nats per byte), as "
                    "torch.nn.functional.cross_entropy does.",
            candidate=lambda ref, case: ref(*case.args) / math.log(2),
            example=functools.partial(_student_nll, bits=True)),
]


def check_last_window_nll(student_fn, *, cases=((32, 16, 4), (16, 16, 3), (40, 8, 2)), seed=0,
                          hidden=False) -> None:
    """``last_window_nll(model, windows, length, scored) -> float``: NLL of the last ``scored`` bytes."""
    built = []
    for number, (length, scored, count) in enumerate(cases):
        windows = _byte_windows(count, 48 + 1, seed + number)
        model = _model("rope", seed + number, hidden)
        built.append(Case((model, windows, length, scored), label=f"windows [{count}, 49], length={length}, "
                                                                  f"scored={scored}"))
    check_function(student_fn, _lab_evaluate.last_window_nll, built, name="last_window_nll", rtol=1e-4,
                   atol=1e-5, mistakes=NLL_MISTAKES, hidden=hidden,
                   hint="Read inputs = windows[:, -(length + 1):-1]; score the model's last `scored` outputs "
                        "against windows[:, -scored:], with the mean cross-entropy over every scored byte.")


# ----------------------------------------------------------------------------------------------------------
# Perplexity by length (None past a learned table, diagnosed in words: no catalogue)
# ----------------------------------------------------------------------------------------------------------


def check_perplexity_by_length(student_fn, *, cases=(("rope", (16, 32, 48)), ("learned", (16, 32, 48))), seed=0,
                               hidden=False) -> None:
    """``perplexity_by_length(model, windows, train_length, lengths) -> {length: perplexity or None}``.

    The learned-position model raises ``ValueError`` past its 16 rows: the student records None there (and
    at every longer length) instead of crashing.
    """
    built = []
    for number, (encoding, lengths) in enumerate(cases, start=1):
        windows = _byte_windows(3, max(lengths) + 1, seed + number)
        model = _model(encoding, seed + number, hidden)
        args = (model, windows, 16, list(lengths))
        expected = _lab_evaluate.perplexity_by_length(*_clone(args))[0]
        built.append((Case(args, label=f"{encoding} model trained on 16 bytes, lengths {list(lengths)}"), expected,
                      encoding))
    steps.perplexity_check(student_fn, built, hidden=hidden)


CATALOGUES = [
    Catalogue(check_passkey_digits_correct, PASSKEY_DIGITS_MISTAKES),
    Catalogue(check_last_window_nll, NLL_MISTAKES),
]
"""Which check recognises each catalogue of this assignment (``tests/test_grader_mistakes.py`` runs them)."""
