"""The machine a bench ran on, the command that reproduces it, and GPU peak FLOP/s."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

from .options import BenchOptions

# bf16 dense tensor-core peak per GPU, FLOP/s (NVIDIA datasheets: the "with sparsity" figures
# halved). Matched against the tokens of torch.cuda.get_device_name(); fractions of fp32 runs
# are still given against this peak (the usual MFU convention).
PEAK_BF16_FLOPS: dict[str, float] = {
    "H100": 989e12,  # SXM; the PCIe card is lower, see _PEAK_VARIANTS
    "H200": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "A10G": 125e12,
}
_PEAK_VARIANTS: dict[tuple[str, str], float] = {("H100", "PCIE"): 756e12}

# Environment that changes the numbers: shown with the command line when set.
ENV_KEYS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES")


def peak_flops(device_name: str) -> float | None:
    """bf16 dense peak FLOP/s of a GPU named like ``torch.cuda.get_device_name()``, or None."""
    tokens = set(re.split(r"[\s\-_/]+", device_name.upper()))
    for (gpu, variant), peak in _PEAK_VARIANTS.items():
        if gpu in tokens and variant in tokens:
            return peak
    for gpu, peak in PEAK_BF16_FLOPS.items():
        if gpu in tokens:
            return peak
    return None


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
        "peak_bf16_tflops": (peak_flops(name) or 0) / 1e12 if cuda else None,
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
