"""On a CUDA machine: does the captured step (cuda_graphs) train like the eager one, step for step?

    python benchmarks/graph_parity.py [--steps 30] [--checkpoint resnet20] [--set '{"w_kd": 1e-2}']

Runs the bench configuration (`fit_resnet20.BENCH`) three times from the same seed for --steps
steps: eager, eager again, and as a CUDA graph. All three draw the same input batches (the
inputs come from a generator on the device whatever the path). The eager re-run measures the
GPU's own run-to-run noise (cuDNN's backward kernels are not bit-deterministic); the graph run
should differ from the eager one by about that much, not more. Prints one JSON line: the largest
relative loss difference per comparison, the largest parameter difference at the end, the
graphs captured, and "ok" (graph vs eager within 10x the noise floor plus 1e-4). Exit status 1
when not ok, so scripts/gpu_check.sh stops early.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

from fit_resnet20 import BENCH, checkpoint_and_overrides  # noqa: E402

from nern import FitConfig, load_state_dict  # noqa: E402
from nern.train import NernRun  # noqa: E402


def trained(sd: dict, config: FitConfig, steps: int) -> tuple[NernRun, list[dict[str, float]]]:
    run = NernRun(sd, config, source_sha256="parity")
    return run, [dict(run.train_step()) for _ in range(steps)]


def largest_difference(a: list[dict], b: list[dict]) -> float:
    return max(abs(x[k] - y[k]) / max(abs(x[k]), 1e-12) for x, y in zip(a, b) for k in x if k != "lr")


def parameter_difference(a: NernRun, b: NernRun) -> float:
    pa, pb = a.model.predictor.state_dict(), b.model.predictor.state_dict()
    return max((pa[k] - pb[k]).abs().max().item() for k in pa)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--checkpoint", default=None, help="a preset (resnet20, resnet56) or a path")
    ap.add_argument("--set", default="{}", help="JSON overrides of the bench configuration")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("graph_parity needs a CUDA device", file=sys.stderr)
        return 2
    ckpt, preset = checkpoint_and_overrides(args.checkpoint)
    sd = load_state_dict(ckpt)
    base = {**BENCH, **preset, "steps": args.steps, "device": "cuda", "threads": None, **json.loads(args.set)}
    eager, eager_losses = trained(sd, FitConfig(**base, cuda_graphs=False), args.steps)
    again, again_losses = trained(sd, FitConfig(**base, cuda_graphs=False), args.steps)
    graph, graph_losses = trained(sd, FitConfig(**base, cuda_graphs=True), args.steps)
    noise = largest_difference(eager_losses, again_losses)
    graph_diff = largest_difference(eager_losses, graph_losses)
    out = {
        "bench": "graph_parity", "checkpoint": Path(ckpt).name, "steps": args.steps,
        "gpu": torch.cuda.get_device_name(), "captures": graph._graphed.captures,
        "loss_rel_diff_eager_vs_eager": noise, "loss_rel_diff_graph_vs_eager": graph_diff,
        "param_abs_diff_eager_vs_eager": parameter_difference(eager, again),
        "param_abs_diff_graph_vs_eager": parameter_difference(eager, graph),
        "last_losses": {"eager": eager_losses[-1], "graph": graph_losses[-1]},
    }
    out["ok"] = graph_diff <= 10 * noise + 1e-4 and graph._graphed.captured
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
