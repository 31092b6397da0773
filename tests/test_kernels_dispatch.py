"""solutions.kernels' dispatcher and benchmark: which path runs, that it says so, and that nothing leaks.

* CPU tensors run the Triton source under the interpreter; calls above ``INTERPRETER_MAX_WORK`` run the torch
  reference ("torch-fallback") and record why; forced backends behave or raise ValueError.
* Interpreted launches leave Triton as they found it (its library functions, ``TRITON_INTERPRET``), raise no
  Python warning (the book treats stderr as an error), and ``import solutions.kernels`` does not import Triton.
* ``python -m solutions.kernels.benchmark --quick`` runs on the CPU and writes the promised JSON and plot.
"""

import ast
import json
import os
import pathlib
import warnings

import pytest
import torch

import solutions.kernels as kernels
from solutions.alibi import alibi_slopes
from solutions.kernels import (
    KernelRun,
    attention,
    attention_reference,
    describe_backend,
    dispatch,
    last_run,
    mla_decode,
    mla_decode_reference,
    rope,
    rope_reference,
)
from solutions.rope import rope_cos_sin, rope_inv_freq

try:
    from triton.runtime.jit import JITFunction
except ImportError:  # pragma: no cover
    JITFunction = None

ROOT = pathlib.Path(__file__).resolve().parents[1]


def small_calls():
    """One tiny call per kernel: (name, kernel call, reference call)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 2, 8, generator=g)
    cos, sin = rope_cos_sin(rope_inv_freq(8), 8)
    q = torch.randn(1, 2, 5, 16, generator=g)
    ql, qr = torch.randn(2, 3, 16, generator=g), torch.randn(2, 3, 4, generator=g)
    lat, rk = torch.randn(2, 6, 16, generator=g), torch.randn(2, 6, 4, generator=g)
    lengths = torch.tensor([2, 6])
    return [
        ("rope", lambda **kw: rope(x, cos, sin, **kw), lambda: rope_reference(x, cos, sin)),
        ("attention", lambda **kw: attention(q, q, q, alibi_slopes=alibi_slopes(2), **kw),
         lambda: attention_reference(q, q, q, alibi_slopes=alibi_slopes(2))),
        ("mla_decode", lambda **kw: mla_decode(ql, qr, lat, rk, lengths, sm_scale=0.3, **kw),
         lambda: mla_decode_reference(ql, qr, lat, rk, lengths, sm_scale=0.3)),
    ]


@pytest.mark.parametrize("index", range(3), ids=["rope", "attention", "mla_decode"])
def test_cpu_tensors_run_the_interpreter_and_say_so(index):
    name, call, reference = small_calls()[index]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Python warning in normal use
        out = call()
    run = last_run(name)
    assert isinstance(run, KernelRun) and last_run() is run
    assert (run.kernel, run.backend, run.device) == (name, "interpreter", "cpu")
    assert "interpreter" in run.reason and name in str(run)
    # the record names the launches that ran: at least one grid, each a tuple of positive ints
    assert run.grids and all(g and all(isinstance(n, int) and n >= 1 for n in g) for g in run.grids)
    assert str(run.grids[0]) in str(run)
    torch.testing.assert_close(out, reference(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("index", range(3), ids=["rope", "attention", "mla_decode"])
def test_oversized_cpu_calls_fall_back_to_torch_and_record_why(index, monkeypatch):
    name, call, reference = small_calls()[index]
    monkeypatch.setitem(dispatch.INTERPRETER_MAX_WORK, name, 10)  # every small call is now "too big"

    def forbidden(*args, **kwargs):
        raise AssertionError("the interpreter ran for an oversized shape")
    monkeypatch.setattr(dispatch, "launcher", forbidden)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = call()
    run = last_run(name)
    assert run.backend == "torch-fallback"
    assert "INTERPRETER_MAX_WORK" in run.reason and str(run.work) in run.reason
    assert run.grids == ()  # no kernel was launched
    torch.testing.assert_close(out, reference(), atol=0, rtol=0)


def test_the_default_rope_threshold_on_a_real_shape():
    limit = dispatch.INTERPRETER_MAX_WORK["rope"]
    x = torch.randn(1, limit // 64 + 1, 1, 64)  # one token more than the limit
    cos, sin = rope_cos_sin(rope_inv_freq(64), x.shape[1])
    rope(x, cos, sin)
    assert last_run("rope").backend == "torch-fallback"
    assert last_run("rope").work == x.numel() > limit


def test_forced_backends():
    name, call, reference = small_calls()[0]
    call(backend="torch")
    assert last_run(name).backend == "torch-fallback" and "requested" in last_run(name).reason
    call(backend="interpreter")
    assert last_run(name).backend == "interpreter"
    with pytest.raises(ValueError, match="CUDA"):
        call(backend="triton")  # CPU tensors cannot run compiled
    with pytest.raises(ValueError, match="backend must be one of"):
        call(backend="gpu")


def test_interpreted_launches_leave_triton_untouched():
    import triton.language as tl

    before = os.environ.get("TRITON_INTERPRET")
    for _, call, _ in small_calls():
        call()
    assert os.environ.get("TRITON_INTERPRET") == before
    for fn in (tl.zeros, tl.sum, tl.max, tl.standard.sum, tl.tensor.sum):
        assert isinstance(fn, JITFunction), f"{fn} was left swapped for its interpreted twin"
    from solutions.kernels import rope_kernel
    assert isinstance(rope_kernel._rope_kernel, JITFunction), "the kernel itself stays compilable"
    assert "interpreter_builder" not in vars(rope_kernel), "the interpreter's names leaked into the module"


try:  # a kernel that calls a @triton.jit helper, which calls another: the interpreter must see both
    import triton
    import triton.language as tl

    @triton.jit
    def _inner(x):
        return x * 3.0

    @triton.jit
    def _outer(x):
        return _inner(x) + 1.0

    @triton.jit
    def _helper_kernel(X, Y, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        x = tl.load(X + offs, mask=offs < n, other=0.0)
        tl.store(Y + offs, _outer(x) + tl.sum(x, 0) * 0.0, mask=offs < n)
except ImportError:  # pragma: no cover
    _helper_kernel = None


@pytest.mark.skipif(_helper_kernel is None, reason="needs Triton")
def test_interpreter_runs_kernels_with_nested_jit_helpers():
    x, y = torch.arange(5.0), torch.zeros(5)
    run = KernelRun("helpers", "interpreter", "cpu", 5, "test")
    dispatch.launcher(_helper_kernel, run)[(1,)](x, y, 5, BLOCK=8)
    torch.testing.assert_close(y, x * 3.0 + 1.0)
    assert isinstance(_inner, JITFunction) and isinstance(_outer, JITFunction), "the helpers stay compilable"


def test_without_triton_every_kernel_runs_the_reference(monkeypatch):
    monkeypatch.setattr(dispatch, "TRITON_AVAILABLE", False)
    monkeypatch.setattr(dispatch, "TRITON_IMPORT_ERROR", "ModuleNotFoundError: No module named 'triton'")
    for name, call, reference in small_calls():
        torch.testing.assert_close(call(), reference(), atol=0, rtol=0)
        assert last_run(name).backend == "torch-fallback" and "cannot be imported" in last_run(name).reason
    with pytest.raises(ValueError, match="needs Triton"):
        small_calls()[0][1](backend="interpreter")
    assert "torch-fallback" in describe_backend("cpu")


def test_describe_backend_names_the_path():
    text = describe_backend("cpu")
    assert "interpreter" in text and "torch-fallback" in text and str(dispatch.INTERPRETER_MAX_WORK) in text
    assert isinstance(describe_backend(), str)


def test_public_names_are_exported_and_documented():
    for name in kernels.__all__:
        obj = getattr(kernels, name)
        if callable(obj) and not isinstance(obj, type(dispatch)):
            assert len(obj.__doc__ or "") > 40, f"{name} needs a docstring"
    assert callable(kernels.rope) and callable(kernels.attention) and callable(kernels.mla_decode)


def test_importing_the_packages_does_not_import_triton():
    """Checked on the source (this process has imported Triton already, and a fresh interpreter costs a torch
    import): `solutions` does not import `solutions.kernels`, and `solutions.kernels` imports only the
    standard library at the top level; its names load on first use."""
    def top_level_imports(path):
        tree = ast.parse(path.read_text())
        found = []
        for node in tree.body:
            if isinstance(node, ast.Import):
                found += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                found.append("." * node.level + (node.module or ""))
        return found

    assert not any("kernels" in name for name in top_level_imports(ROOT / "solutions" / "__init__.py"))
    assert set(top_level_imports(ROOT / "solutions" / "kernels" / "__init__.py")) <= {"__future__", "importlib"}


def test_the_benchmark_runs_on_the_cpu_and_writes_json_and_plot(tmp_path, capsys):
    """`python -m solutions.kernels.benchmark --quick` (its `main`, in this process to spare a torch import)."""
    from solutions.kernels import benchmark

    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert benchmark.main(["--out", str(out), "--plot", str(png), "--quick"]) == 0
    printed = capsys.readouterr()
    assert printed.err == "", f"the benchmark wrote to stderr: {printed.err}"
    assert "SMOKE RUN" in printed.out
    data = json.loads(out.read_text())
    for key in ("schema_version", "smoke_run", "note", "device", "date", "versions", "command", "timer",
                "backend", "rope", "attention", "mla_decode"):
        assert key in data, key
    assert data["smoke_run"] is True and "nothing about performance" in data["note"]
    assert {"torch", "triton", "python"} <= set(data["versions"]) and data["device"]["type"] == "cpu"
    expected = {
        "rope": ("triton rope (ours)", "copy (x.clone())", "torch eager (rope_reference / apply_rope)",
                 "torch.compile(rope_reference)", "liger-kernel rope, q and k"),
        "attention": ("triton flash attention + ALiBi (ours)", "sdpa + materialised ALiBi bias",
                      "flex_attention + ALiBi score_mod"),
        "mla_decode": ("triton mla_decode (ours)", "copy (cache.clone())", "torch absorbed (einsum, softmax, einsum)",
                       "torch naive (per-head K/V from the latent, then SDPA)"),
    }
    metric = {"rope": "gbps", "attention": "tflops", "mla_decode": "gbps"}
    for section, names in expected.items():
        case = data[section]["cases"][0]
        assert set(names) <= set(case["results"]), (section, sorted(case["results"]))
        ours = case["results"][names[0]]
        assert ours["backend"] == "interpreter" and ours["ms"] > 0 and ours[metric[section]] > 0
        for name in names:  # every baseline either has a time or says why not
            assert "ms" in case["results"][name] or case["results"][name]["skipped"], (section, name)
        assert case["ratios"] and "shape" in case
    assert data["rope"]["cases"][0]["ratios"]["fraction_of_copy_bandwidth"] is not None
    assert data["rope"]["cases"][0]["max_abs_err_vs_reference"] < 1e-5
    assert data["mla_decode"]["cases"][0]["max_abs_err_vs_reference"] < 1e-4
    assert png.stat().st_size > 10_000
    for section in ("rope", "attention", "mla_decode"):  # counts always; a predicted time only where a GPU ran
        entry = data[section]["cases"][0]["roofline"]
        assert entry["bytes"] > 0 and entry["flops"] > 0 and entry["predicted_ms"] is None
    assert "roofline" not in printed.out


def test_the_benchmark_puts_measured_against_predicted_on_a_gpu(monkeypatch):
    """On a CUDA device with datasheet figures, each case records the roofline time and the fraction reached."""
    from solutions.kernels import benchmark, roofline
    from solutions.kernels.devices import H100_SXM

    monkeypatch.setattr(benchmark, "gpu_of", lambda device: H100_SXM)
    cost = roofline.rope_cost(4, 4096, 32, 128)
    entry = benchmark._roofline(cost, torch.device("cuda"), {"ours": {"ms": 0.5}}, "ours")
    assert entry["predicted_ms"] == pytest.approx(cost.bytes / 3.35e12 * 1e3)
    assert entry["bound"] == "memory" and entry["gpu"] == H100_SXM.name
    assert entry["fraction_of_roofline"] == pytest.approx(entry["predicted_ms"] / 0.5)


def test_the_benchmark_runs_without_triton(tmp_path, monkeypatch, capsys):
    """Where Triton cannot be imported the benchmark still runs: the kernels run their torch references."""
    from solutions.kernels import benchmark

    monkeypatch.setattr(dispatch, "TRITON_AVAILABLE", False)
    monkeypatch.setattr(dispatch, "TRITON_IMPORT_ERROR", "ModuleNotFoundError: No module named 'triton'")
    out = tmp_path / "bench.json"
    assert benchmark.main(["--out", str(out), "--quick"]) == 0
    data = json.loads(out.read_text())
    assert data["versions"]["triton"] is None and "torch references" in data["note"]
    assert data["rope"]["cases"][0]["results"]["triton rope (ours)"]["backend"] == "torch-fallback"
    assert capsys.readouterr().err == ""


def test_the_recorded_benchmark_is_summarised_and_plotted_per_section():
    """What the kernel chapters show of a GPU run: ratios, measured against predicted, and one bar per entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from solutions.kernels import benchmark

    case = {"shape": {"batch": 1, "seq": 8, "heads": 2, "head_dim": 4},
            "results": {"triton rope (ours)": {"ms": 0.5, "gbps": 100.0}, "copy (x.clone())": {"ms": 0.4, "gbps": 125.0},
                        "liger-kernel rope, q and k": {"skipped": "not installed"}},
            "ratios": {"fraction_of_copy_bandwidth": 0.8, "speed_vs_liger": None},
            "roofline": {"predicted_ms": 0.4, "bound": "memory", "gpu": "H100 SXM"}}
    results = {"rope": {"cases": [case, {**case, "roofline": {**case["roofline"], "predicted_ms": None}}]}}
    lines = benchmark.summary_lines(results, "rope")
    assert lines == [
        f"rope {case['shape']}: {{'fraction_of_copy_bandwidth': 0.8}}",
        "    measured 0.5000 ms, roofline 0.4000 ms (memory-bound on H100 SXM): 80% of the roofline",
        f"rope {case['shape']}: {{'fraction_of_copy_bandwidth': 0.8}}",  # no prediction: a CPU run
    ]
    fig, ax = plt.subplots()
    benchmark.plot_section(ax, results, "rope")
    assert len(ax.patches) == 4 and ax.get_yscale() == "log"  # two entries with the metric, two cases
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1x8x2x4", "1x8x2x4"]
    plt.close(fig)
