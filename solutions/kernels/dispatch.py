"""The one dispatcher: compiled Triton on CUDA, the Triton interpreter on the CPU, the torch reference otherwise.

Triton (Tillet, Kung, Cox, "Triton: an intermediate language and compiler for tiled neural network
computations", MAPL 2019) compiles a ``@triton.jit`` function for the GPU. It also ships an *interpreter*
that runs the same source on the host, one program instance after another, with numpy standing in for the
GPU's registers. That is what lets the book run and test the real kernel source on a laptop CPU.

How the same kernel runs both ways in one process
-------------------------------------------------
In Triton 3.x the switch ``TRITON_INTERPRET=1`` is read when ``@triton.jit`` *decorates* a function: the
decorator then returns an ``InterpretedFunction`` instead of a ``JITFunction``. Setting the variable after
import does nothing, and setting it before import would make every kernel interpreted even when a GPU is
present. So the kernel modules are imported normally (every kernel is a ``JITFunction``), and
`interpreted` builds, once per kernel, an ``InterpretedFunction`` around the kernel's own Python function
(``kernel.fn``). Any ``@triton.jit`` helper the kernel calls is looked up by the interpreter in the
function's globals, where it is still a ``JITFunction`` (which refuses to be called outside a compiled
kernel), so `interpreted` gives the kernel a copy of its globals in which each such helper is itself
wrapped, recursively. Triton's own library functions that are written as ``@triton.jit`` functions
(``tl.zeros``, ``tl.sum``, ``tl.max``, ...; those in ``triton.language.standard`` and ``.random``) were
decorated when ``triton.language`` was imported, so for the duration of each interpreted launch (and only
then, under a lock) they are swapped for interpreted twins, exactly what ``TRITON_INTERPRET=1`` would have
made them, and restored afterwards, together with every attribute the interpreter itself patches on
``triton.language`` during the launch (`_InterpretedStdlib`). ``TRITON_INTERPRET`` itself is never set, and
the kernel modules' globals are never modified, so compiled launches in the same process are unaffected
(except a compilation started from another thread *during* an interpreted launch, which would see the
swapped library: mixing threads that way is not supported).

How the choice is made (``backend="auto"``)
-------------------------------------------
1. Triton cannot be imported (no wheel for the platform): ``"torch-fallback"``.
2. The tensors are on a CUDA device: ``"triton"`` (compiled).
3. The tensors are on the CPU and the call's *work* is at most ``INTERPRETER_MAX_WORK[kernel]``:
   ``"interpreter"``. Each kernel counts its work in elements of its natural size: RoPE the elements of ``x``,
   attention the score entries ``batch * heads * q_len * k_len``, MLA decode the cache elements it reads,
   ``batch * max_len * (kv_lora_rank + rope_dim)``.
4. Otherwise (a CPU shape too large to interpret in a few seconds, or another device): ``"torch-fallback"``.

``backend="triton" | "interpreter" | "torch"`` forces a path (``ValueError`` if it cannot run). Every call
records a `KernelRun`, which `last_run` returns: which path ran and why. Nothing is printed and no Python
warning is raised, because the book treats anything on stderr as a build error.
"""

from __future__ import annotations

import sys
import threading
import types
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch

try:
    import triton
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    TRITON_AVAILABLE = True
    TRITON_IMPORT_ERROR = ""
except ImportError as error:  # pragma: no cover - exercised only where no Triton wheel exists
    triton = None
    TRITON_AVAILABLE = False
    TRITON_IMPORT_ERROR = f"{type(error).__name__}: {error}"

BACKENDS = ("auto", "triton", "interpreter", "torch")
"""What a kernel's ``backend=`` argument accepts."""

TRITON, INTERPRETER, TORCH_FALLBACK = "triton", "interpreter", "torch-fallback"
"""The values of `KernelRun.backend`: which path actually ran."""

INTERPRETER_MAX_WORK = {"rope": 1 << 17, "attention": 1 << 16, "mla_decode": 1 << 20}
"""Per kernel, the largest *work* (module docstring) that ``backend="auto"`` sends to the interpreter.

The interpreter runs each program instance as a Python loop iteration whose block operations are numpy calls,
so its cost is (program instances) x (tiles per instance) x (~0.1 to 10 ms per tile), not the arithmetic.
Measured with Triton 3.9 on a 2-core CPU, each limit is about one second of interpreting: RoPE 2^17 elements
of x (8 heads of 64 dims: 1.3 s), attention 2^16 score entries (0.9 s causal, 1.5 s not), MLA decode 2^20
cache elements (2048 tokens of 512 + 64: 1.3 s). Above them the torch reference gives the same numbers in
milliseconds. A kernel missing from the dict uses ``DEFAULT_INTERPRETER_MAX_WORK``. Change the dict to move
the line; ``backend="interpreter"`` forces the kernel whatever the size.
"""

DEFAULT_INTERPRETER_MAX_WORK = 1 << 16


@dataclass(frozen=True)
class KernelRun:
    """What one kernel call did: ``backend`` is ``"triton"``, ``"interpreter"`` or ``"torch-fallback"``.

    ``grids`` is the grid of each kernel launch the call made, in launch order (`run_launches` fills it in),
    and is empty when the torch reference ran. It is what the launcher settled on, not what was asked for: the
    MLA decode kernel rounds its cache splits up to whole tiles, and the third axis of its first grid is the
    number of splits that ran.
    """

    kernel: str
    backend: str
    device: str
    work: int
    reason: str
    grids: tuple = ()

    def __str__(self) -> str:
        launched = f"; launch grids {', '.join(map(str, self.grids))}" if self.grids else ""
        return f"{self.kernel}: {self.backend} on {self.device} (work {self.work}): {self.reason}{launched}"


_state = threading.local()


def last_run(kernel: str | None = None) -> KernelRun | None:
    """The `KernelRun` of the most recent call in this thread (of ``kernel``, if named), or ``None``."""
    runs = getattr(_state, "runs", {})
    return runs.get(kernel if kernel is not None else "*")


def record(run: KernelRun) -> KernelRun:
    """Make ``run`` what `last_run` returns (for its kernel, and overall) in this thread; returns it.

    `select_backend` records its own decisions. A kernel records a run itself when it changes the decision
    after the fact (the MLA decode kernel sending inputs that require grad to the torch reference) or runs a
    second kernel on the same path (the RoPE backward pass).
    """
    if not hasattr(_state, "runs"):
        _state.runs = {}
    _state.runs[run.kernel] = run
    _state.runs["*"] = run
    return run


def select_backend(kernel: str, device: torch.device, work: int, backend: str = "auto") -> KernelRun:
    """Decide (and record) which path runs ``kernel`` on ``device`` for a call of the given ``work``.

    Raises ``ValueError`` for an unknown ``backend`` or a forced one that cannot run here.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    where = str(device)
    if backend == "torch":
        return record(KernelRun(kernel, TORCH_FALLBACK, where, work, "backend='torch' was requested"))
    if not TRITON_AVAILABLE:
        if backend != "auto":
            raise ValueError(f"backend={backend!r} needs Triton, which cannot be imported ({TRITON_IMPORT_ERROR})")
        return record(KernelRun(kernel, TORCH_FALLBACK, where, work,
                                 f"Triton cannot be imported ({TRITON_IMPORT_ERROR}); ran the torch reference"))
    if backend == "triton":
        if device.type != "cuda":
            raise ValueError(f"backend='triton' compiles for a CUDA device; the tensors are on {where} "
                             f"(use backend='interpreter' or 'auto' for CPU tensors)")
        return record(KernelRun(kernel, TRITON, where, work, "backend='triton' was requested"))
    if backend == "interpreter":
        return record(KernelRun(kernel, INTERPRETER, where, work, "backend='interpreter' was requested"))
    if device.type == "cuda":
        return record(KernelRun(kernel, TRITON, where, work, "CUDA tensors: compiled Triton kernel"))
    if device.type != "cpu":
        return record(KernelRun(kernel, TORCH_FALLBACK, where, work,
                                 f"no Triton backend for device type {device.type!r}; ran the torch reference"))
    limit = INTERPRETER_MAX_WORK.get(kernel, DEFAULT_INTERPRETER_MAX_WORK)
    if work > limit:
        return record(KernelRun(
            kernel, TORCH_FALLBACK, where, work,
            f"work {work} > INTERPRETER_MAX_WORK[{kernel!r}] = {limit}: too slow for the Triton interpreter; "
            f"ran the torch reference (pass backend='interpreter' to force the kernel)"))
    return record(KernelRun(kernel, INTERPRETER, where, work,
                             "CPU tensors: the same kernel source under the Triton interpreter"))


_interpreted_cache: dict = {}


def interpreted(kernel):
    """An ``InterpretedFunction`` running ``kernel``'s source (a ``JITFunction``), helpers included.

    Memoised per kernel. See the module docstring for why this, rather than ``TRITON_INTERPRET=1``.
    """
    key = kernel.fn
    if key not in _interpreted_cache:
        _interpreted_cache[key] = InterpretedFunction(_with_interpreted_helpers(kernel.fn, {}))
    return _interpreted_cache[key]


def _with_interpreted_helpers(fn, seen: dict):
    """A copy of the Python function ``fn`` whose globals map every ``@triton.jit`` helper to its interpreted
    version (recursively), so that a device-function call works inside the interpreter."""
    if fn in seen:
        return seen[fn]
    # Always a copy, even without helpers: the interpreter also adds its own names to the globals it runs in,
    # and those should not leak into the kernel's module.
    helpers = {name: value for name, value in fn.__globals__.items() if isinstance(value, JITFunction)}
    namespace = dict(fn.__globals__)
    copy = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__, copy.__annotations__ = fn.__kwdefaults__, dict(fn.__annotations__)
    copy.__module__, copy.__qualname__, copy.__doc__ = fn.__module__, fn.__qualname__, fn.__doc__
    seen[fn] = copy
    for name, helper in helpers.items():
        namespace[name] = InterpretedFunction(_with_interpreted_helpers(helper.fn, seen))
    return copy


_interpreter_lock = threading.RLock()
_stdlib_twins: dict = {}


def _import_lazy_triton_modules() -> None:
    # Triton imports some modules lazily during a launch (3.9: the argument specialiser imports
    # triton.experimental.gluon, which asserts that the library functions are JITFunctions unless
    # TRITON_INTERPRET is set). Import them before the swap, so that they see the real objects.
    try:
        import triton.experimental.gluon  # noqa: F401
    except ImportError:
        pass


_MISSING = object()


class _InterpretedStdlib:
    """Context manager: Triton's ``@jit`` library functions temporarily replaced by interpreted twins, and
    every attribute the interpreter patches on ``triton.language`` put back afterwards.

    The interpreter patches ``triton.language`` (its builtins, ``tensor`` methods, ``dtype.to_ir``) while a
    kernel runs. Its grid launcher restores what it patched, but a device-function call (an interpreted
    ``@jit`` function called from the kernel: our helpers, and the library twins) patches again, through
    ``triton.runtime.interpreter._patch_lang``, and Triton 3.9 never restores that. Left so, the patched
    builtins break every later *compilation* in the process (``'value' object has no attribute 'dtype'``).
    So for the duration of the launch each attribute the interpreter sets is journaled with its value before
    the first change, and all are restored on exit.
    """

    def __enter__(self):
        _import_lazy_triton_modules()
        _interpreter_lock.acquire()
        self._saved = []
        self._journal = {}
        try:
            from triton.runtime import interpreter as interpreter_module

            scope_class = interpreter_module._LangPatchScope
            original_set_attr = scope_class.set_attr
            journal = self._journal

            def journaled_set_attr(scope, obj, name, value):
                journal.setdefault((id(obj), name), (obj, name, vars(obj).get(name, _MISSING)
                                                     if hasattr(obj, "__dict__") else getattr(obj, name, _MISSING)))
                original_set_attr(scope, obj, name, value)

            scope_class.set_attr = journaled_set_attr
            self._saved.append((scope_class, "set_attr", original_set_attr))
            # triton.language and its submodules (standard, random, ...) and the tensor methods (x.sum()).
            owners = [module for name, module in list(sys.modules.items())
                      if module is not None and (name == "triton.language" or name.startswith("triton.language."))]
            owners.append(triton.language.tensor)
            for owner in owners:
                for name, value in list(vars(owner).items()):
                    if isinstance(value, JITFunction):
                        if value.fn not in _stdlib_twins:
                            _stdlib_twins[value.fn] = InterpretedFunction(value.fn)
                        self._saved.append((owner, name, value))
                        setattr(owner, name, _stdlib_twins[value.fn])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        try:
            for obj, name, original in reversed(list(self._journal.values())):
                if original is _MISSING:
                    if name in getattr(obj, "__dict__", {}):
                        delattr(obj, name)
                else:
                    setattr(obj, name, original)
            for owner, name, value in reversed(self._saved):
                setattr(owner, name, value)
        finally:
            self._saved, self._journal = [], {}
            _interpreter_lock.release()
        return False


class _InterpretedLauncher:
    """``interpreted(kernel)[grid](...)`` with Triton's library functions interpreted during the launch."""

    def __init__(self, kernel):
        self.fn = interpreted(kernel)

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with _InterpretedStdlib():
                return self.fn[grid](*args, **kwargs)
        return launch


def launcher(kernel, run: KernelRun):
    """The object to launch with ``[grid](...)``: the ``JITFunction`` itself, or its interpreted twin."""
    return _InterpretedLauncher(kernel) if run.backend == INTERPRETER else kernel


class Launch(NamedTuple):
    """One kernel launch as a kernel module plans it: ``kernel[grid](*args, **kwargs)``.

    The kernel modules build their launches as data (``_plan_launches``), so that the compiled path runs them
    (`run_launches`) and `solutions.kernels.aot` compiles exactly the same ones for a GPU that is not there.
    """

    kernel: object
    grid: tuple
    args: tuple
    kwargs: dict


def run_launches(launches, run: KernelRun) -> KernelRun:
    """Launch each planned `Launch` in order, compiled or interpreted as ``run`` says; then record ``run``
    with the launches' grids (`KernelRun.grids`), so that `last_run` tells what actually ran. Returns it."""
    launches = list(launches)
    for launch in launches:
        launcher(launch.kernel, run)[launch.grid](*launch.args, **launch.kwargs)
    return record(replace(run, grids=tuple(tuple(launch.grid) for launch in launches)))


def dot_dtype(dtype: torch.dtype, backend: str):
    """The ``tl`` dtype a kernel should cast ``tl.dot`` operands to on ``backend`` (`KernelRun.backend`).

    ``dtype`` itself when compiled, but fp32 instead of bf16 under the interpreter, which multiplies bf16 bit
    patterns as integers (triton-lang/triton#11584; the Triton debugging guide: the interpreter does not
    support bf16 arithmetic).
    """
    tl = triton.language
    if dtype == torch.bfloat16:
        return tl.float32 if backend == INTERPRETER else tl.bfloat16
    return {torch.float16: tl.float16, torch.float32: tl.float32}[dtype]


def describe_backend(device: torch.device | str | None = None) -> str:
    """One paragraph, for the book to print: what ``backend="auto"`` does for tensors on ``device``.

    ``device`` defaults to CUDA when available, else the CPU.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    versions = f"torch {torch.__version__}, triton {triton.__version__ if TRITON_AVAILABLE else 'not installed'}"
    if not TRITON_AVAILABLE:
        return (f"{versions}. Triton cannot be imported ({TRITON_IMPORT_ERROR}), so every kernel call runs its "
                f"pure-torch reference (backend 'torch-fallback').")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "unavailable"
        return (f"{versions}. Tensors on {device} ({name}): the Triton kernels are compiled for the GPU "
                f"(backend 'triton').")
    if device.type == "cpu":
        return (f"{versions}. No GPU is used for CPU tensors: the same Triton kernel source runs under the "
                f"Triton interpreter (backend 'interpreter') for calls up to a size (INTERPRETER_MAX_WORK: "
                f"{INTERPRETER_MAX_WORK}); larger calls run the pure-torch reference instead (backend "
                f"'torch-fallback'). Interpreter timings say nothing about GPU performance.")
    return f"{versions}. Tensors on {device}: no Triton backend; the pure-torch reference runs ('torch-fallback')."
