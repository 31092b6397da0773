"""Checks for the course's assignments: compare a student's function with the reference in `solutions`, and say
what is wrong in words a student can act on.

Every test cell of an assignment calls one ``check_*`` function, imported from here
(``from grader.checks import check_apply_rope``). The library is organised by assignment:

* `grader.checks.engine`: the one engine (`Case`, `Mistake`, `Catalogue`, `CheckFailed`, calling a student's
  function under a time limit, `compare`, `diagnose`, `check_function`, `check_raises`);
* `grader.checks.variants`: right and wrong versions of formulas that several assignments' catalogues share
  (the frequencies' exponents, ALiBi's geometric slopes, a RoPE rotation with switchable mistakes);
* one module per assignment, named after it (``part1_foundations`` ... ``part7_multimodal``), holding its cases,
  its catalogues of mistakes (each `Mistake` with an example wrong function, proved by
  ``tests/test_grader_mistakes.py``), its checks, its `GRADED_REFERENCES` and its `CATALOGUES`.

This package re-exports the public names of all of them, and gathers `GRADED_REFERENCES`. `digest_paths` lists
the files whose change must trigger a re-grade of an assignment.
"""

import ast
import importlib
import inspect
import pathlib
import sys
import types

from .. import references
from . import (engine, part1_foundations, part2_relative, part3_rope, part4_mla, part5_extrapolation, part6_lab,
               part7_multimodal, variants)
from .engine import (DEFAULT_TIME_LIMIT, CallTimeout, Case, Catalogue, CheckFailed, Difference, Mistake,
                     call_quietly, call_student, call_with_time_limit, check_function, check_raises, compare)
from .part1_foundations import (DOT_PRODUCT_MISTAKES, SELF_ATTENTION_MISTAKES, SHIFT_MATRIX_MISTAKES,
                                SINUSOIDAL_MISTAKES, check_permutation_detector, check_position_dot_product,
                                check_self_attention, check_shift_matrix, check_sinusoidal_encoding)
from .part2_relative import (ALIBI_BIAS_MISTAKES, ALIBI_SLOPES_MISTAKES, DEBERTA_BUCKET_MISTAKES,
                             RELATIVE_POSITION_MISTAKES, T5_MISTAKES, check_alibi_bias, check_alibi_slopes,
                             check_deberta_log_bucket, check_relative_positions, check_relative_shift,
                             check_t5_bucket)
from .part3_rope import (APPLY_ROPE_MISTAKES, COS_SIN_MISTAKES, INV_FREQ_MISTAKES, KERNEL_MISTAKES, PERMUTE_MISTAKES,
                         ROPE_DIRECTION_MESSAGE, ROPE_SWAPPED_MESSAGE, check_apply_rope, check_permute_to_half_split,
                         check_relative_property_test, check_rope_cos_sin, check_rope_inv_freq, check_rope_kernel)
from .part4_mla import (DECOUPLED_SCORE_MISTAKES, KV_CACHE_MISTAKES, MLA_SCORE_MISTAKES, ROPE_ABSORBED_MISTAKES,
                        check_absorbed_equals_naive, check_absorbed_latent_scores, check_decoupled_rope_scores,
                        check_kv_cache_elements, check_naive_latent_scores, check_rope_absorbed_matrix)
from .part5_extrapolation import (BY_PARTS_MISTAKES, DYNAMIC_NTK_MISTAKES, LINEAR_SCALING_MISTAKES, NTK_ALIBI_MISTAKES,
                                  NTK_AWARE_MISTAKES, ROPE_SCALING_MISTAKES, YARN_COS_SIN_MISTAKES,
                                  YARN_FACTOR_MISTAKES, YARN_LOGITS_MISTAKES, YARN_MISSING_MESSAGE, YARN_ONCE_MESSAGE,
                                  YARN_SCALING_MISTAKES, check_dynamic_ntk_scaling, check_linear_scaling,
                                  check_ntk_alibi_slopes, check_ntk_aware_scaling, check_ntk_by_parts_scaling,
                                  check_rope_scaling, check_yarn_attention_factor, check_yarn_cos_sin,
                                  check_yarn_logits, check_yarn_scaling)
from .part6_lab import (FILLER, KEY_DIGITS, NLL_MISTAKES, PASSKEY_DIGITS_MISTAKES, QUESTION, STATEMENT,
                        check_last_window_nll, check_passkey_digits_correct, check_passkey_sequence,
                        check_perplexity_by_length, lab_model)
from .part7_multimodal import (MROPE_COS_SIN_MISTAKES, PAIR_AXES_MISTAKES, POSITION_IDS_MISTAKES, ROPE2D_MISTAKES,
                               check_mrope_cos_sin, check_mrope_pair_axes, check_mrope_position_ids,
                               check_rope2d_cos_sin)
from .variants import ALIBI_GEOMETRIC_MESSAGE, EXPONENT_MESSAGES

STUDENT_PACKAGE = "course_checks"
"""What the notebooks import their checks from: a student kit's `grader.course_checks`, which replays the visible
checks from recorded data."""


def serve_as_student_package() -> None:
    """Make ``import course_checks`` give this package, in the course's trusted processes (the grading harness,
    the tests): there the notebooks' checks are the grader's, hidden cases included."""
    sys.modules[STUDENT_PACKAGE] = sys.modules[__name__]


ASSIGNMENTS: dict[str, types.ModuleType] = {
    module.__name__.rsplit(".", 1)[-1]: module
    for module in (part1_foundations, part2_relative, part3_rope, part4_mla, part5_extrapolation, part6_lab,
                   part7_multimodal)
}
"""Each assignment's check module, by the assignment's name (``grader/source/<name>/<name>.ipynb``)."""


def _gather_graded_references() -> dict[str, list[str]]:
    gathered: dict[str, list[str]] = {}
    for module in ASSIGNMENTS.values():
        clash = gathered.keys() & module.GRADED_REFERENCES.keys()
        if clash:
            raise RuntimeError(f"{module.__name__} declares GRADED_REFERENCES of checks declared elsewhere: {clash}")
        gathered.update(module.GRADED_REFERENCES)
    return gathered


GRADED_REFERENCES = _gather_graded_references()
"""For each check, the `solutions` code (``module:qualname``) a student's function is compared with, or that
holds the answer a student writes: the published book must not display its source, and the student versions
must not contain it (``tests/test_grader_leaks.py``). Each assignment module declares its own entries. Checks
without an entry compare with a property (the permutation detector, the student-written test) or a closed form
in `grader.references`."""


# ----------------------------------------------------------------------------------------------------------
# What a grade depends on
# ----------------------------------------------------------------------------------------------------------

_SOLUTIONS_ROOT = pathlib.Path(importlib.import_module("solutions").__file__).resolve().parent
_REFERENCES_FILE = pathlib.Path(references.__file__).resolve()
_COURSE_CHECKS_ROOT = pathlib.Path(__file__).resolve().parent.parent / "course_checks"


def _file_of(obj) -> pathlib.Path | None:
    """The source file that defines ``obj`` (a module, function or class), or None."""
    if isinstance(obj, types.ModuleType):
        name = getattr(obj, "__file__", None)
    elif inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj):
        name = getattr(sys.modules.get(obj.__module__), "__file__", None)
    else:
        return None
    return pathlib.Path(name).resolve() if name else None


def _used(source: str, namespace: dict) -> dict[pathlib.Path, set]:
    """What the dotted names of ``source`` (``solutions.apply_rope``, ``_lab_passkey.FILLER``,
    ``references.yarn_logits``) refer to in ``namespace``: for each name its last part that is a module, a
    function or a class, gathered by the file that defines it."""
    found: dict[pathlib.Path, set] = {}
    for node in ast.walk(ast.parse(source)):
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name) or node.id not in namespace:
            continue
        obj = namespace[node.id]
        last = obj if _file_of(obj) else None
        for part in reversed(parts):
            obj = getattr(obj, part, None)
            if _file_of(obj):
                last = obj
        if last is not None:
            found.setdefault(_file_of(last), set()).add(last)
    return found


def _module_of(path: pathlib.Path) -> types.ModuleType:
    """The imported module whose file is ``path``."""
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) and pathlib.Path(module.__file__).resolve() == path:
            return module
    raise LookupError(f"{path} is not an imported module")


def _solutions_used(path: pathlib.Path) -> set[pathlib.Path]:
    """The `solutions` files that the module at ``path`` uses, including through the `grader.references` functions
    it calls."""
    module = _module_of(path)
    used = _used(path.read_text(), vars(module))
    files = set(used)
    for function in used.get(_REFERENCES_FILE, ()):
        if inspect.isfunction(function):
            files |= set(_used(inspect.getsource(function), vars(references)))
    return {p for p in files if p.is_relative_to(_SOLUTIONS_ROOT)}


def _solutions_closure(seeds: set[pathlib.Path]) -> set[pathlib.Path]:
    """``seeds`` and every `solutions` file that their code uses, transitively. A package's ``__init__`` is kept
    but not followed: it re-exports the whole package, which would make every file a dependency."""
    done, todo = set(), set(seeds)
    while todo:
        path = todo.pop()
        done.add(path)
        if path.name != "__init__.py":
            todo |= _solutions_used(path) - done
    return done


def _check_modules(path: pathlib.Path) -> set[pathlib.Path]:
    """The check module at ``path`` and the check modules it imports (``from .engine import ...``), transitively."""
    found, todo = set(), {path}
    while todo:
        path = todo.pop()
        found.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [alias.name for alias in node.names]
                todo |= {path.parent / f"{name}.py" for name in names} - found
    return found


def digest_paths(assignment: str) -> list[pathlib.Path]:
    """The files whose change must trigger a re-grade of ``assignment``, sorted: this package's ``__init__``
    (what the notebooks import), the assignment's check module and the check modules it uses (the engine, the
    shared variants), `grader.references`, and the `solutions` files that compute its references: the modules
    of its `GRADED_REFERENCES` entries and the `solutions` code its check modules use (directly, or through the
    `grader.references` functions they call), followed through `solutions`' own modules; and the shared half of
    the engine, `grader.course_checks`."""
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"unknown assignment {assignment!r}; the assignments are {sorted(ASSIGNMENTS)}")
    checks = _check_modules(pathlib.Path(ASSIGNMENTS[assignment].__file__).resolve())
    seeds = {pathlib.Path(importlib.import_module(entry.split(":")[0]).__file__).resolve()
             for entries in ASSIGNMENTS[assignment].GRADED_REFERENCES.values() for entry in entries}
    for path in checks:
        seeds |= _solutions_used(path)
    shared = set(_COURSE_CHECKS_ROOT.glob("*.py"))  # the steps and comparisons the checks run (and kits carry)
    paths = {pathlib.Path(__file__).resolve(), _REFERENCES_FILE} | checks | shared | _solutions_closure(seeds)
    return sorted(p for p in paths if p.is_file())


__all__ = sorted(name for name, value in globals().items()
                 if not name.startswith("_") and not isinstance(value, types.ModuleType))
