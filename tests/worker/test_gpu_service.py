"""A real CUDA job through the service: `nern serve --no-worker` + `nern worker --queues gpu,cpu`
(concurrency = GPUs × NERN_JOBS_PER_GPU), a `device: cuda` job and a `device: auto` job routed
to the gpu queue (NERN_AUTO_QUEUE=gpu); both must succeed on a GPU, and with several GPUs the
jobs of one worker must not all land on GPU 0. Prints JSON lines (`pytest -s`).

Runs only where CUDA is available (scripts/gpu_service_check.sh on a GPU machine); skipped
elsewhere with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
from harness import REPO, TINY_SPEC, Deployment, submit, wait_done


def _gpus() -> int:
    # Counted in a child process: this test process must not initialise CUDA before any fork.
    if shutil.which("nvidia-smi") is None:
        return 0
    r = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    return int(r.stdout.strip() or 0) if r.returncode == 0 else 0


GPUS = _gpus()
pytestmark = pytest.mark.skipif(GPUS == 0, reason="no CUDA GPU on this machine: the GPU service check "
                                "runs on a GPU node (scripts/gpu_service_check.sh)")


def test_cuda_and_auto_jobs_run_on_the_gpus(tmp_path):
    dep = Deployment(tmp_path, auto_queue="gpu", jobs_per_gpu=1)
    try:
        dep.start_api()
        key = dep.create_key("gpu")
        dep.start_worker("gpu,cpu", "gpu-worker")
        t0 = time.monotonic()
        with dep.client(key) as c:
            spec = {**TINY_SPEC, "steps": 50, "threads": 2}
            ids = [submit(c, {**spec, "device": "cuda", "name": f"cuda-{i}"}).json()["id"] for i in range(max(GPUS, 2))]
            ids.append(submit(c, {**spec, "device": "auto", "name": "auto"}).json()["id"])
            jobs = [wait_done(c, jid, timeout=600) for jid in ids]
        for j in jobs:
            print(json.dumps({"job": j["name"], "queue": j["queue"], "state": j["state"], "error": j["error"],
                              "device": (j["summary"] or {}).get("worker_device"),
                              "precision": (j["summary"] or {}).get("precision"),
                              "reconstructed_top1": (j["summary"] or {}).get("reconstructed_top1")}))
        print(json.dumps({"gpus": GPUS, "jobs": len(jobs), "seconds": round(time.monotonic() - t0, 1)}))
        assert all(j["state"] == "succeeded" for j in jobs), [(j["name"], j["error"]) for j in jobs]
        assert all(j["queue"] == "gpu" for j in jobs)
        devices = {j["summary"]["worker_device"] for j in jobs}
        assert all(d.startswith("cuda") for d in devices), devices
        if GPUS > 1:
            assert len(devices) > 1, f"every job ran on one GPU: {devices}"
    finally:
        dep.stop()
