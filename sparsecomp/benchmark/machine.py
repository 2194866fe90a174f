"""What a benchmark ran on, recorded with every result so numbers are never separated from their machine."""
from __future__ import annotations

import os
import platform
import sys

import torch


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else whatever platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(device: str) -> dict:
    info = {
        "device": device,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    try:
        import sparsecomp

        info["sparsecomp"] = sparsecomp.info()
    except Exception as err:  # the build may be mid-rebuild; the numbers are still worth keeping
        info["sparsecomp"] = f"unavailable: {err}"
    return info


def describe(info: dict) -> str:
    """One line for plot titles and reports, e.g. 'Intel Xeon, 2 CPU threads, torch 2.13.0+cpu'."""
    where = info.get("gpu") or info["cpu_model"]
    return f"{where}, {info['threads']} CPU threads, torch {info['torch']}"
