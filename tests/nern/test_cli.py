"""End to end through the `nern` command line, in subprocesses, on the shipped ResNet20."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from nern.data import fixed_subset, load_images
from nern.evaluate import evaluate_weights
from nern.targets import create_target

# A much smaller predictor (h=64) and distillation batch (16) than the defaults: the test is of
# the command line, and this fit is well clear of chance at a fraction of the default step's cost.
# Measured 2026-11-29 on a 2-core AMD EPYC (Zen 1, AVX2 only), 2,000 test images: 30.0 % in fp32
# (the library's choice there; 88 s) and 29.7 % in bf16 (forced by hand for that one measurement;
# bf16 is the library's choice on AVX512-BF16 CPUs).
# h=128 took 153 s there for 49.6 %. Chance is 10 % (±0.7 % on 2,000 images); the bar is 15 %.
FIT_ARGS = ["--steps", "300", "--threads", "2", "--batch-size", "16", "--hidden", "64"]
EVAL_LIMIT = 2000


def nern_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "nern", *args]


def nern(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(nern_argv(*args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, resnet20_path):
    out = tmp_path_factory.mktemp("cli") / "r20.nern"
    proc = nern("fit", str(resnet20_path), "--arch", "resnet20", *FIT_ARGS, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, proc.stdout


def test_fit_writes_a_package_whose_reconstruction_beats_chance(fitted, resnet20_path, tmp_path):
    package, stdout = fitted
    assert package.is_file() and "wrote" in stdout
    proc = nern("evaluate", str(package), "--checkpoint", str(resnet20_path), "--data", "cifar10-test",
                "--limit", str(EVAL_LIMIT), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert {"original_top1", "reconstructed_top1", "agreement", "layer_errors"} <= set(report)
    assert report["original_top1"] > 85.0
    assert report["reconstructed_top1"] > 15.0, report  # chance is 10%
    assert len(report["layer_errors"]) == 19

    # Reload the reconstruction into the original architecture and score it independently.
    out = tmp_path / "rec.safetensors"
    proc = nern("reconstruct", str(package), "--checkpoint", str(resnet20_path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    model = create_target("resnet20")
    model.load_state_dict(load_file(out), strict=True)
    images, labels = fixed_subset(*load_images("cifar10-test", 32), EVAL_LIMIT)
    mine = evaluate_weights(model, None, images, labels)
    assert mine["original_top1"] == report["reconstructed_top1"]


def _bad_checkpoints(tmp_path, resnet20_sd):
    whole = tmp_path / "whole_model.pt"
    torch.save(create_target("resnet20"), whole)
    nan = tmp_path / "nan.pt"
    sd = {k: v.clone() for k, v in resnet20_sd.items()}
    sd["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(sd, nan)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    return {
        "missing file": (tmp_path / "nope.th", [], "not found"),
        "pickled whole model": (whole, [], "state_dict"),
        "NaN weights": (nan, [], "NaN"),
        "garbage": (garbage, [], "checkpoint"),
        "wrong architecture": (None, ["--arch", "resnet32"], "does not match resnet32"),
        "unknown architecture": (None, ["--arch", "vgg99"], "unknown architecture"),
        "bad setting": (None, ["--steps", "0"], "invalid steps"),
        "bad averaging": (None, ["--ema-decay", "1"], "invalid ema_decay"),
    }


def test_bad_input_is_one_line_and_leaves_no_output(tmp_path, resnet20_sd, resnet20_path):
    # The cases are independent: run them side by side (each one is mostly interpreter start-up).
    running = {}
    for label, (ckpt, extra, needle) in _bad_checkpoints(tmp_path, resnet20_sd).items():
        out = tmp_path / f"{label.replace(' ', '_')}.nern"
        steps = [] if "--steps" in extra else ["--steps", "1"]
        argv = nern_argv("fit", str(ckpt or resnet20_path), *extra, *steps, "--out", str(out))
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        running[label] = (proc, out, needle)
    for label, (proc, out, needle) in running.items():
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode != 0, label
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("nern: error:") and needle in lines[0], (label, stderr)
        assert not out.exists(), label
        assert not list(tmp_path.glob(f"{out.name}*")), label


def test_reconstruct_refuses_a_non_package_and_writes_nothing(tmp_path, resnet20_path):
    fake = tmp_path / "fake.nern"
    fake.write_bytes(io.BytesIO(b"junk").getvalue())
    out = tmp_path / "x.safetensors"
    proc = nern("reconstruct", str(fake), "--checkpoint", str(resnet20_path), "--out", str(out))
    assert proc.returncode != 0 and "not a NeRN package" in proc.stderr and not out.exists()


def test_targets_lists_the_registry():
    proc = nern("targets")
    assert proc.returncode == 0 and "resnet20 " in proc.stdout and "resnet18 " in proc.stdout
