"""Every kernel, compiled ahead of time for sm_80 (A100) and sm_90 (H100, H200) with the launch configuration
its GPU path chooses, fits the GPU: shared memory within the per-block limit, no register spilled.

`solutions.kernels.aot` compiles, on this CPU, exactly the launches a GPU call would make (the same
`*_launch_config`, the same planned arguments through Triton's own specialisation), and reads the resources
from Triton's metadata (shared memory) and from the cubin (registers, stack frame). The limit is the opt-in
shared memory per block of each compute capability (`solutions.kernels.devices`): Triton's launcher raises
every kernel's limit to it, and refuses to launch a kernel above it.

How the grid was chosen. A full product of the factors (3 dtypes x 7 head dims x 3 biases x 2 causal x
2 targets for attention alone: 252 compiles of several seconds each) would not fit a test suite, and most of its
points share everything that decides the resources. What decides them is the row of the configuration table
(dtype class: fp32 or 16-bit; the padded head dim: 32, 64, 128, 256; the per-offset bias, which has its own
tiles) and the switches that change the code (causal, bias kind, a split). So the grid is a covering set:

* attention: every head dim (32, 64, 80, 96, 128, 192, 256) at least once; every padded width of the 16-bit
  table (32, 64, 128, 256), fp16 and bf16 sharing it; fp32, whose tiles differ, at 64, 80, 128 and 256;
  every bias kind with causal and without, on different rows of the table; a decode step (one query:
  Triton specialises an argument equal to 1, so it is a different kernel).
* MLA decode: DeepSeek-V2/V3 widths (``kv_lora_rank`` 512, ``qk_rope_head_dim`` 64) with 128 heads (one GPU)
  split over a 16k cache in bf16 and fp32, with 16 heads (8-way tensor parallelism) in fp16, a large batch
  that needs no split (no merge), and the tests' small shapes (5 heads, rank 40, rope 8) with and without a
  split; each split also compiles the merge kernel.
* RoPE: both layouts, forward and backward, all three dtypes, partial rotary (Phi-2: 80 dims, 32 rotated;
  GPT-NeoX-20B: 96 dims, 24 rotated), a tensor of per-row offsets, per-token tables (M-RoPE), and 64 heads of
  256 dims (two head blocks per token).
* a GPU with 99 KB of shared memory per block (compute capability 8.6) for the three largest 16-bit
  configurations, whose smaller tables the configuration functions choose there.

Every point compiles for both targets. Run alone: ``python -m pytest tests/test_kernels_compile.py -q``.
"""

import functools

import pytest
import torch

triton = pytest.importorskip("triton")

from solutions.kernels import aot  # noqa: E402 - after the skip: aot imports Triton
from solutions.kernels import attention_kernel, dispatch, mla_decode_kernel, rope_kernel  # noqa: E402
from solutions.kernels.devices import COMPILE_TARGETS, GPU, H100_SXM, SHARED_MEMORY_PER_BLOCK  # noqa: E402

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
ATTENTION = dict(batch=2, heads=16, q_len=4096)  # a prefill of 4k tokens
LLAMA = dict(batch=2, seq=512, heads=32, head_dim=128)
DEEPSEEK = dict(kv_lora_rank=512, rope_dim=64)
SMALL_MLA = dict(batch=3, heads=5, kv_lora_rank=40, rope_dim=8, max_len=37)

CASES = {
    # attention: (head dim, dtype, causal, bias) covering every head dim, bias kind and causal switch
    "attention d32 fp16 causal none": ("attention", dict(ATTENTION, head_dim=32, dtype=F16, causal=True, bias="none")),
    "attention d64 bf16 causal alibi": ("attention", dict(ATTENTION, head_dim=64, dtype=BF16, causal=True,
                                                         bias="alibi")),
    "attention d64 fp16 full per_offset": ("attention", dict(ATTENTION, head_dim=64, dtype=F16, causal=False,
                                                            bias="per_offset")),
    "attention d64 fp32 causal none": ("attention", dict(ATTENTION, head_dim=64, dtype=F32, causal=True, bias="none")),
    "attention d80 fp32 full alibi": ("attention", dict(ATTENTION, head_dim=80, dtype=F32, causal=False,
                                                       bias="alibi")),
    "attention d96 bf16 causal per_offset": ("attention", dict(ATTENTION, head_dim=96, dtype=BF16, causal=True,
                                                              bias="per_offset")),
    "attention d128 bf16 causal alibi": ("attention", dict(ATTENTION, head_dim=128, dtype=BF16, causal=True,
                                                          bias="alibi")),
    "attention d128 fp16 full none": ("attention", dict(ATTENTION, head_dim=128, dtype=F16, causal=False,
                                                       bias="none")),
    "attention d128 fp32 causal per_offset": ("attention", dict(ATTENTION, head_dim=128, dtype=F32, causal=True,
                                                               bias="per_offset")),
    "attention d192 fp16 causal alibi": ("attention", dict(ATTENTION, head_dim=192, dtype=F16, causal=True,
                                                          bias="alibi")),
    "attention d256 bf16 full per_offset": ("attention", dict(ATTENTION, head_dim=256, dtype=BF16, causal=False,
                                                             bias="per_offset")),
    "attention d256 fp32 causal alibi": ("attention", dict(ATTENTION, head_dim=256, dtype=F32, causal=True,
                                                          bias="alibi")),
    "attention decode d128 bf16": ("attention", dict(batch=8, heads=16, q_len=1, k_len=4097, head_dim=128,
                                                     dtype=BF16, causal=True, bias="alibi")),
    # MLA decode at DeepSeek-V2/V3 widths, and small
    "mla 128 heads 16k bf16 split": ("mla_decode", dict(DEEPSEEK, batch=1, heads=128, max_len=16384, dtype=BF16)),
    "mla 128 heads 16k fp32 split": ("mla_decode", dict(DEEPSEEK, batch=1, heads=128, max_len=16384, dtype=F32)),
    "mla 16 heads fp16 split": ("mla_decode", dict(DEEPSEEK, batch=32, heads=16, max_len=4096, dtype=F16)),
    "mla 128 heads batch 128 bf16 one pass": ("mla_decode", dict(DEEPSEEK, batch=128, heads=128, max_len=4096,
                                                                 dtype=BF16)),
    "mla small fp32 one pass": ("mla_decode", dict(SMALL_MLA, dtype=F32)),
    "mla small bf16 3 splits": ("mla_decode", dict(SMALL_MLA, dtype=BF16, num_splits=3)),
    # RoPE: layouts x direction x dtype, partial rotary, offsets, per-token tables, two head blocks
    "rope bf16 half-split forward": ("rope", dict(LLAMA, dtype=BF16)),
    "rope fp16 interleaved backward offsets": ("rope", dict(LLAMA, dtype=F16, interleaved=True, backward=True,
                                                            offsets=True, max_pos=4096)),
    "rope fp32 half-split backward partial": ("rope", dict(batch=2, seq=512, heads=32, head_dim=80, rotary_dim=32,
                                                           dtype=F32, backward=True)),
    "rope bf16 interleaved forward partial": ("rope", dict(batch=2, seq=512, heads=64, head_dim=96, rotary_dim=24,
                                                           dtype=BF16, interleaved=True)),
    "rope bf16 per-token tables": ("rope", dict(batch=2, seq=512, heads=28, head_dim=128, dtype=BF16,
                                                per_token=True)),
    "rope fp32 interleaved forward 64x256": ("rope", dict(batch=1, seq=256, heads=64, head_dim=256, dtype=F32,
                                                          interleaved=True)),
}

# A compute capability 8.6 part (A40, A10, RTX 3090): 99 KB per block, and the configurations' smaller tables.
SM86 = GPU("compute capability 8.6", (8, 6), 84, SHARED_MEMORY_PER_BLOCK[(8, 6)])
SMALL_SHARED_CASES = ("attention d96 bf16 causal per_offset", "attention d256 bf16 full per_offset",
                      "mla 128 heads 16k bf16 split")

POINTS = [(name, gpu) for name in CASES for gpu in COMPILE_TARGETS] + [(name, SM86) for name in SMALL_SHARED_CASES]


@functools.lru_cache(maxsize=None)
def compiled(name: str, gpu: GPU):
    kernel, shape = CASES[name]
    return aot.compile_kernel(kernel, gpu, **shape)


@pytest.mark.parametrize("name,gpu", POINTS, ids=[f"{name} {gpu.arch}" for name, gpu in POINTS])
def test_compiles_and_fits(name, gpu):
    results = compiled(name, gpu)
    assert results, f"{name}: no launch was planned"
    for result in results:
        what = f"{name} on {gpu.name} ({gpu.arch}), {result.kernel} with {result.constants}"
        assert result.fits, (f"{what}: {result.shared_memory} bytes of shared memory per block, over the "
                             f"{result.shared_memory_limit}-byte limit; Triton would refuse to launch it")
        assert result.num_warps * 32 * (result.registers or 0) <= 65536, f"{what}: more registers than an SM has"
        assert not result.spills, (f"{what}: {result.spill_bytes} bytes per thread spilled to local memory "
                                   f"({result.registers} registers)")
        assert result.arch == gpu.arch


def test_the_split_cache_compiles_the_merge_too():
    kernels = [result.kernel for result in compiled("mla 128 heads 16k bf16 split", H100_SXM)]
    assert kernels == ["_mla_decode_kernel", "_mla_merge_kernel"]
    assert [r.kernel for r in compiled("mla 128 heads batch 128 bf16 one pass", H100_SXM)] == ["_mla_decode_kernel"]


def test_the_compiled_constants_are_the_configuration():
    """What was compiled is what the configuration function says (block sizes, warps, stages)."""
    (result,) = compiled("attention d128 bf16 causal alibi", H100_SXM)
    config = attention_kernel.attention_launch_config(128, BF16, H100_SXM, bias="alibi")
    assert (result.constants["BLOCK_M"], result.constants["BLOCK_N"], result.num_warps, result.num_stages) == \
        (config.block_m, config.block_n, config.num_warps, config.num_stages)
    assert result.grid == (4096 // config.block_m, 2 * 16)


# ------------------------------------------- the GPU path plans what the compile test compiles (no compile)


def _capture_gpu_launches(monkeypatch, call):
    """Run a kernel module's ``_launch`` as the compiled path would, on CPU tensors, capturing its launches."""
    captured = []
    for module in (attention_kernel, mla_decode_kernel, rope_kernel):
        monkeypatch.setattr(module, "gpu_of", lambda device: H100_SXM)
    monkeypatch.setattr(dispatch, "run_launches", lambda launches, run: captured.extend(launches))
    call(dispatch.KernelRun("test", dispatch.TRITON, "cuda", 0, "compiled path, planned on the CPU"))
    return captured


def _same_launch(gpu_launch, aot_launch):
    assert gpu_launch.kernel is aot_launch.kernel and gpu_launch.grid == aot_launch.grid
    assert gpu_launch.kwargs == aot_launch.kwargs
    spec = [(type(a), tuple(a.shape), a.dtype, a.stride()) if isinstance(a, torch.Tensor) else a
            for a in gpu_launch.args]
    aot_spec = [(type(a), tuple(a.shape), a.dtype, a.stride()) if isinstance(a, torch.Tensor) else a
                for a in aot_launch.args]
    assert spec == aot_spec


def test_the_gpu_path_of_attention_plans_the_compiled_launch(monkeypatch):
    q = torch.randn(2, 4, 64, 96, dtype=BF16)
    slopes = torch.rand(4)
    launches = _capture_gpu_launches(monkeypatch, lambda run: attention_kernel._launch(
        q, q, q, True, slopes, None, 96 ** -0.5, run))
    planned = aot.attention_launches(H100_SXM, batch=2, heads=4, q_len=64, head_dim=96, dtype=BF16, causal=True,
                                     bias="alibi")
    assert len(launches) == len(planned) == 1
    _same_launch(launches[0], planned[0])


def test_the_gpu_path_of_mla_decode_plans_the_compiled_launches(monkeypatch):
    shapes = dict(batch=1, heads=128, kv_lora_rank=512, rope_dim=64, max_len=4096, dtype=BF16)
    ql, qr = torch.randn(1, 128, 512, dtype=BF16), torch.randn(1, 128, 64, dtype=BF16)
    lat, rk = torch.randn(1, 4096, 512, dtype=BF16), torch.randn(1, 4096, 64, dtype=BF16)
    launches = _capture_gpu_launches(monkeypatch, lambda run: mla_decode_kernel._launch(
        ql, qr, lat, rk, torch.tensor([4096]), 0.1, None, run))
    planned = aot.mla_decode_launches(H100_SXM, **shapes)
    assert len(launches) == len(planned) == 2  # one sequence: split over the SMs, then merged
    for got, want in zip(launches, planned):
        _same_launch(got, want)


def test_the_gpu_path_of_rope_plans_the_compiled_launch(monkeypatch):
    x = torch.randn(2, 16, 32, 80, dtype=F32)
    cos, sin = torch.rand(16, 16), torch.rand(16, 16)
    launches = _capture_gpu_launches(monkeypatch, lambda run: rope_kernel._launch(
        x, cos, sin, None, 0, False, True, run))
    planned = aot.rope_launches(H100_SXM, batch=2, seq=16, heads=32, head_dim=80, rotary_dim=32, dtype=F32,
                                backward=True)
    _same_launch(launches[0], planned[0])


def test_launch_configurations_need_no_gpu():
    """The configuration functions are pure: named GPUs in, configurations out, with or without CUDA."""
    for gpu in COMPILE_TARGETS:
        assert attention_kernel.attention_launch_config(256, F32, gpu).block_m == 32
        config = mla_decode_kernel.mla_decode_launch_config(1, 128, 512, 64, 16384, BF16, gpu)
        assert config.num_splits > 1 and config.num_splits * config.tokens_per_split >= 16384
        assert rope_kernel.rope_launch_config(32, 128, 128, gpu).block_h == 32
    with pytest.raises(ValueError, match="target"):
        attention_kernel.attention_launch_config(64, BF16, "cuda")
    with pytest.raises(ValueError, match="bias"):
        attention_kernel.attention_launch_config(64, BF16, H100_SXM, bias="t5")


def test_compiling_after_interpreted_launches(monkeypatch, tmp_path):
    """An interpreted launch leaves ``triton.language`` as it found it, so a later compilation works.

    (Triton 3.9's interpreter patches the language for device-function calls and does not restore it; the
    dispatcher journals and restores every patched attribute.)"""
    from solutions.alibi import alibi_slopes
    from solutions.kernels import attention, mla_decode, rope
    from solutions.rope import rope_cos_sin, rope_inv_freq

    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 2, 20, 24, generator=g)
    attention(q, q, q, alibi_slopes=alibi_slopes(2), backend="interpreter")
    mla_decode(torch.randn(2, 3, 16, generator=g), torch.randn(2, 3, 4, generator=g),
               torch.randn(2, 6, 16, generator=g), torch.randn(2, 6, 4, generator=g), torch.tensor([2, 6]),
               sm_scale=0.3, num_splits=2, backend="interpreter")
    rope(torch.randn(1, 3, 2, 8, generator=g), *rope_cos_sin(rope_inv_freq(8), 8), backend="interpreter")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # a real compilation, not a cache hit
    (result,) = aot.compile_kernel("attention", H100_SXM, batch=1, heads=2, q_len=48, head_dim=40, dtype=F16,
                                   causal=False, bias="none")
    assert result.fits
