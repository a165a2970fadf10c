"""GPUs of a worker node, found without initialising CUDA, and each pool process pinned to one.

The worker's parent process never touches CUDA: a process forked after `torch.cuda.init()`
cannot use CUDA ("Cannot re-initialize CUDA in forked subprocess"), and Celery forks its pool
after the parent starts. GPUs are counted from `CUDA_VISIBLE_DEVICES` or `nvidia-smi -L`; each
pool process sets `CUDA_VISIBLE_DEVICES` to its own GPU before torch sees CUDA, so a job's
`cuda` is that GPU. `NERN_JOBS_PER_GPU` (default 1) pool processes share one GPU:

    process index i → GPU visible[(i // jobs_per_gpu) % len(visible)]
"""

from __future__ import annotations

import os
import shutil
import subprocess


def visible_gpus() -> list[str]:
    """The node's GPUs as CUDA_VISIBLE_DEVICES entries (indices or UUIDs); [] without any."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]


def gpu_for_process(index: int, gpus: list[str], jobs_per_gpu: int) -> str | None:
    """The GPU pool process `index` runs its jobs on (None without GPUs)."""
    if not gpus:
        return None
    return gpus[(index // max(jobs_per_gpu, 1)) % len(gpus)]


def default_queues() -> str:
    """`gpu,cpu` on a node with GPUs, else `cpu` — decided without importing CUDA."""
    return "gpu,cpu" if visible_gpus() else "cpu"
