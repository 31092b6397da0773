"""The lab assignment's checks (`part6_lab`) that say what is wrong without a catalogue, proved with wrong functions.

The passkey prompt's layout and the perplexity's None past a learned table are diagnosed in words by their
checks; the catalogues' mistakes (the passkey's digits, the last-window NLL) are proved by
``test_grader_mistakes.py``. As in ``test_grader_checks.py``, each wrong function is written the way a student
would get it wrong, and each test asserts that the check fails and that its message says what to fix. The
reference functions of `solutions.lab` must pass.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from grader import checks
from grader.checks import FILLER, QUESTION, STATEMENT, CheckFailed
from solutions.lab.evaluate import last_window_nll, passkey_digits_correct, perplexity_by_length
from solutions.lab.passkey import passkey_sequence


def failure(check, *args, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check(*args, **kwargs)
    return str(info.value)


def student_passkey(length, depth, key, filler_offset=0, *, depth_of_whole=False, forget_plus_one=False,
                    ignore_offset=False, start_of_statement=False):
    """A passkey prompt written from the assignment's text, with a switchable bug."""
    statement = STATEMENT.format(key=key)
    filler_length = length + (0 if forget_plus_one else 1) - len(statement) - len(QUESTION) - len(key)
    start = 0 if ignore_offset else filler_offset % len(FILLER)
    filler = (FILLER * (length // len(FILLER) + 3))[start:start + filler_length]
    cut = round(depth * (length + 1 - len(statement) if depth_of_whole else filler_length))
    cut = min(cut, filler_length)
    text = filler[:cut] + statement + filler[cut:] + QUESTION + key
    return text.encode("ascii"), cut + (0 if start_of_statement else len("KEY="))


def test_the_references_pass(capsys):
    checks.check_passkey_sequence(passkey_sequence)
    checks.check_passkey_sequence(passkey_sequence, hidden=True, cases=[(1024, 0.25, "31415", 1000)])
    checks.check_passkey_digits_correct(passkey_digits_correct)
    checks.check_last_window_nll(last_window_nll)
    checks.check_perplexity_by_length(lambda *args: perplexity_by_length(*args)[0])
    assert capsys.readouterr().out.count("\N{CHECK MARK}") == 5


def test_a_student_style_passkey_prompt_passes():
    checks.check_passkey_sequence(student_passkey)


@pytest.mark.parametrize("bug, words", [
    (dict(forget_plus_one=True), "needs length + 1"),
    (dict(depth_of_whole=True), "fraction of the filler alone"),
    (dict(ignore_offset=True), "the filler differs"),
    (dict(start_of_statement=True), "key_start"),
])
def test_passkey_layout_mistakes_are_named(bug, words):
    def wrong(length, depth, key, filler_offset=0):
        return student_passkey(length, depth, key, filler_offset, **bug)

    message = failure(checks.check_passkey_sequence, wrong)
    assert words in message, message


def student_nll(model, windows, length, scored):
    """A student's last-window NLL (the catalogue's mistakes are proved by ``test_grader_mistakes.py``)."""
    with torch.no_grad():
        chunk = windows[:, -(length + 1):]
        logits, targets = model(chunk[:, :-1])[:, -scored:], chunk[:, 1:][:, -scored:]
        return F.cross_entropy(logits.reshape(-1, 256), targets.reshape(-1)).item()


def test_a_student_style_last_window_nll_passes():
    checks.check_last_window_nll(student_nll)


def test_perplexity_by_length_mistakes_are_named():
    def uncaught(model, windows, train_length, lengths):
        return {length: math.exp(student_nll(model, windows, length, train_length)) for length in lengths}

    def nll_not_perplexity(model, windows, train_length, lengths):
        values = perplexity_by_length(model, windows, train_length, lengths)[0]
        return {k: None if v is None else math.log(v) for k, v in values.items()}

    def zero_instead_of_none(model, windows, train_length, lengths):
        return {k: 0.0 if v is None else v for k, v in perplexity_by_length(model, windows, train_length,
                                                                          lengths)[0].items()}

    message = failure(checks.check_perplexity_by_length, uncaught)
    assert "raised ValueError" in message and "record None" in message
    assert "the perplexity is exp(NLL)" in failure(checks.check_perplexity_by_length, nll_not_perplexity)
    assert "the value is None" in failure(checks.check_perplexity_by_length, zero_instead_of_none)


def test_hidden_lab_failures_show_no_expected_values():
    def off(model, windows, length, scored):
        return 1.1 * last_window_nll(model, windows, length, scored)

    expected = last_window_nll(checks.lab_model("rope", seed=71), checks.part6_lab._byte_windows(3, 49, 71), 48, 16)
    message = failure(checks.check_last_window_nll, off, cases=[(48, 16, 3)], seed=71, hidden=True)
    assert "hidden case 1 of 1" in message and f"{expected:.4g}"[:5] not in message
