"""Render docs/results/recipe_experiments.jsonl as the markdown table of docs/experiments.md.

    python benchmarks/recipe_table.py [docs/results/recipe_experiments.jsonl]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/recipe_experiments.jsonl")
    print("| run | network | recipe (overrides of FitConfig()) | data | eval | steps | top-1 % | agree % "
          "| KL (nats) | rel. weight err | GFLOP/step | median s/step | top-1 at intermediate steps |")
    print("| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for line in path.read_text().splitlines():
        d = json.loads(line)
        recipe = ", ".join(f"{k}={v}" for k, v in d["recipe"].items()) or "defaults"
        curve = ", ".join(f"{p['step']}: {p['top1']}" for p in d["curve"][:-1])
        err = "—" if d.get("rel_err") is None else f"{d['rel_err']:.3f}"
        print(f"| {d['name']} | {d.get('checkpoint', 'resnet20')} | {recipe} | {d['data']} | {d['eval']} "
              f"| {d['steps']} | {d['top1']} | {d.get('agreement') or '—'} | {d.get('kl', '—')} | {err} | {d['step_gflop']} | {d.get('median_step_s') or '—'} "
              f"| {curve} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
