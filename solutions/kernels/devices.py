"""The GPUs the kernels are configured for and modelled on: named specifications, no CUDA call needed.

A `GPU` holds what the launch configurations read (the compute capability, the number of streaming
multiprocessors, the shared memory one block may use) and what the roofline model of
`solutions.kernels.roofline` reads (memory bandwidth and peak arithmetic rates). The named ones are the
datasheet figures; `gpu_of` builds one from the device a CUDA tensor lives on.

Sources (the dense figures are half the datasheets' "with sparsity" tensor-core figures):

* A100: NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM: 2,039 GB/s HBM2e, BF16/FP16 tensor
  624 TFLOPS with sparsity, FP32 19.5 TFLOPS) and the NVIDIA A100 Tensor Core GPU Architecture whitepaper
  (108 SMs).
* H100: NVIDIA H100 Tensor Core GPU datasheet (H100 SXM: 3.35 TB/s HBM3, BF16/FP16 tensor 1,979 TFLOPS with
  sparsity, FP32 67 TFLOPS) and the NVIDIA H100 Tensor Core GPU Architecture whitepaper (132 SMs in the SXM5
  part).
* H200: NVIDIA H200 Tensor Core GPU datasheet (H200 SXM: 4.8 TB/s HBM3e, the H100's tensor and FP32
  figures, the same 132-SM GH100 chip).
* Shared memory per block: the CUDA C++ Programming Guide, "Technical Specifications per Compute
  Capability": 163 KB (166,912 bytes) on compute capability 8.0, 227 KB (232,448 bytes) on 9.0, 99 KB
  (101,376 bytes) on 8.6 and 8.9. These are the *opt-in* limits. A kernel gets only 48 KB unless its
  launcher raises the limit with ``cuFuncSetAttribute(MAX_DYNAMIC_SHARED_SIZE_BYTES)``; Triton's launcher
  does that for every kernel that needs more than 48 KB (``triton/backends/nvidia/driver.c``), and refuses to
  launch a kernel whose shared memory exceeds the opt-in limit (``OutOfResources``). So the opt-in limit is
  the one a Triton kernel must fit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

SHARED_MEMORY_PER_BLOCK = {(8, 0): 166_912, (8, 6): 101_376, (8, 7): 166_912, (8, 9): 101_376, (9, 0): 232_448}
"""Opt-in shared memory per block, in bytes, by compute capability (CUDA C++ Programming Guide)."""


@dataclass(frozen=True)
class GPU:
    """A GPU as the launch configurations and the roofline model see it.

    ``shared_memory_per_block`` is the opt-in limit in bytes (module docstring). ``memory_bandwidth`` is in
    bytes per second; ``tensor_flops`` is the dense fp16/bf16 tensor-core peak and ``fp32_flops`` the fp32
    peak of the ordinary cores, both in floating-point operations per second. Those three are ``None`` for a
    device without datasheet figures here; the launch configurations never need them.
    """

    name: str
    capability: tuple[int, int]
    sm_count: int
    shared_memory_per_block: int
    memory_bandwidth: float | None = None
    tensor_flops: float | None = None
    fp32_flops: float | None = None

    @property
    def arch(self) -> str:
        """``"sm_80"``, ``"sm_90"``, ...: the name of the compile target."""
        return f"sm_{self.capability[0]}{self.capability[1]}"


A100_SXM = GPU("NVIDIA A100 SXM 80GB", (8, 0), 108, SHARED_MEMORY_PER_BLOCK[(8, 0)],
               memory_bandwidth=2.039e12, tensor_flops=624e12 / 2, fp32_flops=19.5e12)
H100_SXM = GPU("NVIDIA H100 SXM", (9, 0), 132, SHARED_MEMORY_PER_BLOCK[(9, 0)],
               memory_bandwidth=3.35e12, tensor_flops=1979e12 / 2, fp32_flops=67e12)
H200_SXM = GPU("NVIDIA H200 SXM", (9, 0), 132, SHARED_MEMORY_PER_BLOCK[(9, 0)],
               memory_bandwidth=4.8e12, tensor_flops=1979e12 / 2, fp32_flops=67e12)

NAMED_GPUS = (A100_SXM, H100_SXM, H200_SXM)
"""The GPUs with datasheet figures, in the order the book's tables list them."""

COMPILE_TARGETS = (A100_SXM, H100_SXM)
"""One GPU per compute capability that the ahead-of-time compile test checks (sm_80 and sm_90)."""


def _datasheet_match(name: str) -> GPU | None:
    """The named GPU whose datasheet figures apply to a device called ``name`` (CUDA's device name)."""
    upper = name.upper()
    if "PCIE" in upper or "NVL" in upper:  # other clocks, power and (for the A100 and H100) memory
        return None
    if "H200" in upper:
        return H200_SXM
    if "H100" in upper and ("SXM" in upper or "HBM3" in upper):  # CUDA calls the SXM part "H100 80GB HBM3"
        return H100_SXM
    if "A100" in upper and "SXM" in upper and "80GB" in upper:  # the 40 GB part has 1,555 GB/s
        return A100_SXM
    return None


def gpu_of(device) -> GPU:
    """The `GPU` for a CUDA ``device`` (a ``torch.device``, an index or ``"cuda:0"``), read from the driver once.

    The capability, SM count and shared memory come from ``torch.cuda.get_device_properties``; the bandwidth
    and peaks come from the datasheet of a matching named GPU, or are ``None``.
    """
    import torch

    index = torch.device(device).index if not isinstance(device, int) else device
    return _gpu_of_index(torch.cuda.current_device() if index is None else index)


@functools.lru_cache(maxsize=None)
def _gpu_of_index(index: int) -> GPU:
    import torch

    props = torch.cuda.get_device_properties(index)
    capability = (props.major, props.minor)
    shared = getattr(props, "shared_memory_per_block_optin", None) or SHARED_MEMORY_PER_BLOCK.get(capability, 49_152)
    known = _datasheet_match(props.name)
    gpu = GPU(props.name, capability, props.multi_processor_count, int(shared))
    if known is not None and known.capability == capability:
        gpu = replace(gpu, memory_bandwidth=known.memory_bandwidth, tensor_flops=known.tensor_flops,
                      fp32_flops=known.fp32_flops)
    return gpu
