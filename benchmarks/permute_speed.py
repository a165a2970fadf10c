"""Permutation smoothing speed: seconds per model and per layer.

    python benchmarks/permute_speed.py [--kind crossfilter|infilter] [--threads 2]

Models: the shipped-data ResNet20 and ResNet56 checkpoints and a random-init torchvision
ResNet18 (all its Conv2d layers: the 7x7 stem, every 3x3 and the 1x1 downsamples). Also prints,
for one 256x256 ResNet18 layer, the smoothness of the exact greedy path next to the blocked one
used above EXACT_LIMIT kernels. No cache is used.
Reference figures on this machine (the public implementation): ResNet20 5.64 s, ResNet56 20.3 s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nern.checkpoint import load_state_dict  # noqa: E402
from nern.data import resolve_dataset  # noqa: E402
from nern.permute import greedy_path, permute_layer, smoothness  # noqa: E402
from nern.reconstruct import find_modeled_layers  # noqa: E402
from nern.targets import load_target  # noqa: E402


def time_model(name: str, model: torch.nn.Module, kind: str, verbose: bool) -> float:
    layers = find_modeled_layers(model)
    total = 0.0
    for ly in layers:
        w = model.get_parameter(ly.name).detach()
        t0 = time.perf_counter()
        perm = permute_layer(w, kind)
        dt = time.perf_counter() - t0
        total += dt
        if verbose:
            print(f"  {name:9s} {ly.name:28s} {str(list(ly.shape)):18s} {dt:7.3f}s  "
                  f"smoothness {smoothness(w):+.3f} -> {smoothness(w, perm.path()):+.3f}")
    print(f"{name}: {kind} for {len(layers)} layers in {total:.2f}s", flush=True)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="crossfilter", choices=["crossfilter", "infilter"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quiet", action="store_true", help="totals only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    greedy_path(torch.randn(3000, 9).numpy())  # compile the numba walks outside the timings

    data = resolve_dataset("cifar10").parent
    for depth, tag in ((20, "12fca82f"), (56, "4bfd9763")):
        model, _, _ = load_target(load_state_dict(data / f"resnet{depth}-{tag}.th"))
        time_model(f"resnet{depth}", model, args.kind, not args.quiet)
    torch.manual_seed(0)
    r18 = torchvision.models.resnet18(weights=None)
    time_model("resnet18", r18, args.kind, not args.quiet)

    w = r18.layer3[1].conv1.weight.detach()
    flat = w.reshape(-1, 9).numpy()
    t0 = time.perf_counter()
    exact = greedy_path(flat, exact_limit=10**9)
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    blocked = greedy_path(flat)
    t_blocked = time.perf_counter() - t0
    print(f"resnet18 layer3.1.conv1 (65,536 kernels): exact greedy {t_exact:.1f}s smoothness "
          f"{smoothness(w, exact):.3f}; blocked {t_blocked:.1f}s smoothness {smoothness(w, blocked):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
