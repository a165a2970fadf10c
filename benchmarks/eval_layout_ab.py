"""Time of scoring the CIFAR-10 test images in NCHW and in NHWC activations, interleaved.

    python benchmarks/eval_layout_ab.py [--checkpoint resnet20|resnet56] [--rounds 2] [--limit N]

Scores the original network and a perturbed copy of its weights (every conv2 kernel ×0.9), as a
job's evaluation does (`nern.evaluate.evaluate_weights`, the library's batch size), once with
`nern.conv_layout.enabled` off and once on, per round. Prints one JSON line: the seconds of each
round per layout, their medians' ratio, and the top-1 and agreement of both layouts (equal, or
the layouts disagree). Reads the checkpoint and test images from NERN_DATA_DIR (../shared/data).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fit_resnet20 import PRESETS  # noqa: E402  (this folder is on sys.path when run as a script)

import nern.conv_layout  # noqa: E402
from nern.checkpoint import load_state_dict  # noqa: E402
from nern.data import load_labelled, resolve_dataset  # noqa: E402
from nern.evaluate import evaluate_weights  # noqa: E402
from nern.precision import describe_cpu  # noqa: E402
from nern.targets import TargetNetwork  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", choices=sorted(PRESETS), default="resnet20")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="score a fixed random subset of N test images (nern.data.fixed_subset)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sd = load_state_dict(resolve_dataset("cifar10").parent / PRESETS[args.checkpoint][0])
    net = TargetNetwork.load(sd, None, None).module
    images, labels = load_labelled("cifar10-test", 32, args.limit)
    weights = {k: v * 0.9 for k, v in sd.items() if k.endswith("conv2.weight")}
    seconds: dict[str, list[float]] = {"nchw": [], "nhwc": []}
    scores: dict[str, dict] = {}
    committed = nern.conv_layout.enabled
    with torch.inference_mode():
        for _ in range(args.rounds):
            for layout in ("nchw", "nhwc"):
                nern.conv_layout.enabled = layout == "nhwc"
                t0 = time.perf_counter()
                scores[layout] = evaluate_weights(net, weights, images, labels)
                seconds[layout].append(round(time.perf_counter() - t0, 2))
    nern.conv_layout.enabled = committed
    ratio = statistics.median(seconds["nhwc"]) / statistics.median(seconds["nchw"])
    print(json.dumps({"checkpoint": args.checkpoint, "images": int(images.shape[0]), "seconds": seconds,
                      "nhwc_over_nchw": round(ratio, 3), "scores": scores, "same_scores":
                      scores["nchw"] == scores["nhwc"], "cpu": describe_cpu(), "threads": args.threads}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
