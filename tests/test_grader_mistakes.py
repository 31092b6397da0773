"""Every `Mistake` of every assignment's catalogues recognises its own example, and no earlier mistake shadows it.

Each `Mistake` carries an ``example``: a wrong function written the way a student writes that bug. Each
assignment module of `grader.checks` declares, in its ``CATALOGUES``, which check recognises each catalogue. For
every mistake of every catalogue, the check run on the example must fail with a message that contains the
mistake's text, and the mistake it names must be this one, not an earlier entry of the same catalogue whose
output happens to match (`CheckFailed.mistake`).
"""

import pytest

from grader import checks
from grader.checks import Case, CheckFailed, Mistake

CATALOGUES = [(name, catalogue) for name, module in checks.ASSIGNMENTS.items() for catalogue in module.CATALOGUES]

PROOFS = [pytest.param(catalogue, mistake, id=f"{name}-{catalogue.check.__name__}-{mistake.name}")
          for name, catalogue in CATALOGUES for mistake in catalogue.mistakes]


def _mistakes_in(module) -> set[int]:
    """The ids of every `Mistake` in a module-level list or tuple of the module."""
    return {id(item) for value in vars(module).values() if isinstance(value, (list, tuple))
            for item in value if isinstance(item, Mistake)}


def test_every_mistake_of_every_module_is_in_a_catalogue_with_an_example():
    for name, module in checks.ASSIGNMENTS.items():
        listed = {id(mistake) for catalogue in module.CATALOGUES for mistake in catalogue.mistakes}
        assert _mistakes_in(module) <= listed, f"{name} has a Mistake that no catalogue lists"
        for catalogue in module.CATALOGUES:
            names = [mistake.name for mistake in catalogue.mistakes]
            assert len(set(names)) == len(names), f"{catalogue.check.__name__}: two mistakes share a name"
            for mistake in catalogue.mistakes:
                assert callable(mistake.example), f"{catalogue.check.__name__}: {mistake.name!r} has no example"


@pytest.mark.parametrize("catalogue, mistake", PROOFS)
def test_each_mistake_recognises_its_example(catalogue, mistake, monkeypatch):
    if catalogue.check is checks.check_rope_kernel:
        pytest.importorskip("triton")
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when the example's kernel is defined, on its first call
    options = {**catalogue.options, **mistake.example_options}
    with pytest.raises(CheckFailed) as info:
        catalogue.check(mistake.example, **options)
    message = str(info.value)
    assert info.value.mistake == mistake.name, (
        f"the example of {mistake.name!r} was taken for {info.value.mistake!r}:\n{message}")
    assert mistake.text(Case(kwargs=options)) in message, message
