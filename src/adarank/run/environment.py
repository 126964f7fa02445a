"""What a reader needs to trust a number: package versions, the code's revision, the device."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

from adarank.run.distributed import world_size

PACKAGES = (
    "torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets",
    "scikit-learn", "scipy", "numpy",
)


def environment() -> dict:
    """Versions, code revision and device: what a reader needs to trust a number."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    if torch.cuda.is_available():
        device = {"type": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count()}
    else:
        device = {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                  # Code paths and speed differ by instruction set (bf16 units, bitsandbytes' packed kernel).
                  "capability": torch.backends.cpu.get_cpu_capability(),
                  "avx512_bf16": torch.cpu._is_avx512_bf16_supported(), "amx": torch.cpu._is_amx_tile_supported()}
    return {
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": _git_commit(),
        "device": device,
        "host": platform.node(),
        "processes": world_size(),  # DDP processes (torchrun or srun tasks)
        "slurm_job": os.environ.get("SLURM_JOB_ID"),
    }


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        commit = revision.stdout.strip() if revision.returncode == 0 else ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
            capture_output=True, text=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not commit:
        return None
    return commit + ("-dirty" if dirty else "")
