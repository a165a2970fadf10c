"""Several fits sharing one device: aggregate fits per hour for 1, 2, 4, 8 concurrent jobs.

    python benchmarks/gpu_throughput.py --concurrency 1,2,4,8 --steps 2000          # on a GPU node
    python benchmarks/gpu_throughput.py --device cpu --concurrency 1,2 --steps 3 --set '{"hidden": 16}'

Each level starts that many processes (spawned, so CUDA initialises in each child as in a
worker's pool), each fitting the bench configuration (`fit_resnet20.BENCH`, the shipped ResNet-20)
for --steps steps; all start together behind a barrier. Prints one JSON line per level: wall
seconds of the slowest job, per-job step times, fits per hour (concurrency × 3600 / wall) and the
device's peak memory per job. The level with the most fits per hour, or the smallest one within
5 % of it, is the natural default for `NERN_JOBS_PER_GPU`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]


def _job(index: int, config: dict, checkpoint: str, barrier, results) -> None:
    import torch

    from nern import FitConfig, fit, load_state_dict

    sd = load_state_dict(checkpoint)
    cfg = FitConfig(**config)
    barrier.wait()
    t0 = time.perf_counter()
    summary = fit(sd, cfg, source_sha256=f"throughput-{index}").summary
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if cfg.device == "cuda" else None
    results.put({"job": index, "wall_s": round(wall, 2), "train_s": summary["train_seconds"],
                 "step_ms": round(1000 * summary["train_seconds"] / max(1, summary["steps"]), 2),
                 "peak_memory_mb": None if peak is None else round(peak, 1)})


def run_level(n: int, config: dict, checkpoint: str) -> dict:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=_job, args=(i, config, checkpoint, barrier, results)) for i in range(n)]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    jobs = [results.get() for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    return {"concurrency": n, "wall_s": round(wall, 2), "fits_per_hour": round(n * 3600 / wall, 2),
            "steps": config["steps"], "jobs": sorted(jobs, key=lambda j: j["job"])}


def main() -> int:
    from fit_resnet20 import BENCH, checkpoint_and_overrides

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--checkpoint", default=None, help="a preset (resnet20, resnet56) or a path")
    ap.add_argument("--set", default="{}", help="JSON overrides of the bench configuration")
    args = ap.parse_args()
    checkpoint, preset = checkpoint_and_overrides(args.checkpoint)
    config = {**BENCH, **preset, "steps": args.steps, "device": args.device, "checkpoint_every": 0,
              "threads": 1 if args.device == "cpu" else None, **json.loads(args.set)}
    for n in (int(v) for v in args.concurrency.split(",")):
        print(json.dumps({"bench": "gpu_throughput", "device": args.device, **run_level(n, config, checkpoint)}),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
