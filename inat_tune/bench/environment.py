"""The machine a bench ran on, the command that reproduces it, and GPU peak FLOP/s."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

from .options import BenchOptions

# Dense tensor-core peak per GPU, FLOP/s: only figures with a source (NVIDIA's datasheets give
# "with sparsity" figures; dense is half of them). Rules are tried in order against the tokens
# of torch.cuda.get_device_name(): every token of a rule must be present, so the NVL and PCIe
# cards are matched before the bare name (whose get_device_name, e.g. "NVIDIA H100 80GB HBM3",
# is the SXM card). A GPU matching no rule is "unknown" (no fraction): e.g. A10G (not the A10),
# GH200, L40S. Fractions of fp32 runs are still given against this peak (the MFU convention).
PEAK_TABLE: tuple[tuple[tuple[str, ...], float, str, str], ...] = (
    # (tokens, FLOP/s, dtype, source)
    (("H100", "NVL"), 835e12, "bf16", "NVIDIA H100 datasheet, H100 NVL: 1,671 TFLOPS bf16 with sparsity / 2"),
    (("H100", "PCIE"), 756e12, "bf16", "NVIDIA H100 datasheet, H100 PCIe: 1,513 TFLOPS bf16 with sparsity / 2"),
    (("H100",), 989.4e12, "bf16", "NVIDIA H100 datasheet, H100 SXM: 1,979 TFLOPS bf16 with sparsity / 2"),
    (("H200", "NVL"), 835e12, "bf16", "NVIDIA H200 datasheet, H200 NVL: 1,671 TFLOPS bf16 with sparsity / 2"),
    (("H200",), 989e12, "bf16", "NVIDIA H200 datasheet, H200 SXM: 1,979 TFLOPS bf16 with sparsity / 2"),
    (("A100",), 312e12, "bf16", "NVIDIA A100 datasheet: 312 TFLOPS bf16 dense (SXM and PCIe)"),
    (("L4",), 121e12, "bf16", "NVIDIA L4 datasheet: 242 TFLOPS bf16 with sparsity / 2"),
    (("A10",), 125e12, "bf16", "NVIDIA A10 datasheet: 125 TFLOPS bf16 dense (the A10, not the A10G)"),
    (("T4",), 65e12, "fp16", "NVIDIA T4 datasheet: 65 TFLOPS fp16 mixed precision (no bf16 on T4)"),
)
# The older name, for callers that read it: {first token of each rule without variant: peak}.
PEAK_BF16_FLOPS: dict[str, float] = {r[0][0]: r[1] for r in PEAK_TABLE if len(r[0]) == 1}

# Environment that changes the numbers: shown with the command line when set.
ENV_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def peak_info(device_name: str) -> dict[str, Any] | None:
    """The cited dense peak of a GPU named like ``torch.cuda.get_device_name()``:
    {"tflops", "dtype", "source"}, or None (unknown: no fraction is given)."""
    tokens = set(re.split(r"[\s\-_/]+", device_name.upper()))
    for need, peak, dtype, source in PEAK_TABLE:
        if all(t in tokens for t in need):
            return {"tflops": peak / 1e12, "dtype": dtype, "source": source}
    return None


def peak_flops(device_name: str) -> float | None:
    """Dense tensor-core peak FLOP/s of a GPU (see :data:`PEAK_TABLE`), or None if unknown."""
    info = peak_info(device_name)
    return info["tflops"] * 1e12 if info else None


def flop_fraction(flops_per_image: float, images_per_s: float, peak: float | None) -> float | None:
    """Achieved share of ``peak``: forward FLOPs x 3 (forward + backward, the backward pass
    costing about twice the forward; Kaplan et al. 2020, nanoGPT's estimate_mfu) x images/s."""
    if not peak:
        return None
    return 3.0 * flops_per_image * images_per_s / peak


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, or None where the OS has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, library versions and the accelerator, for every result."""
    import torchvision

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "usable_cores": usable,
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "platform": platform.platform(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "device": "cuda" if cuda else "cpu",
        "device_name": name, "cuda": torch.version.cuda if cuda else None,
        "peak_tflops": (peak_info(name) or {}).get("tflops") if cuda else None,
        "peak_source": ((peak_info(name) or {}).get("source", "unknown GPU: no cited peak")
                        if cuda else None),
        "load_average": load_average(),
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }


def busy_machine(machine: dict[str, Any]) -> bool:
    """Other programs kept more runnable threads than there are cores (1-minute load)."""
    load = machine.get("load_average")
    return bool(load) and load[0] > machine["usable_cores"] + 0.5


def command_line(options: BenchOptions) -> str:
    """The ``inat-tune bench`` command that reproduces ``options`` (with the environment
    variables of ENV_KEYS that are set in front)."""
    parts = [f"{k}={os.environ[k]}" for k in ENV_KEYS if k in os.environ]
    parts += ["inat-tune", "bench"]
    if options.search:  # its own fixed dataset and image size
        parts.append("--search")
    else:
        if options.data:
            parts += ["--data", options.data]
        parts += ["--image-size", str(options.image_size)]
    if options.quick:
        parts.append("--quick")
    if options.json_path:
        parts += ["--json", options.json_path]
    return " ".join(parts)
