"""One flag generator for FitConfig: `nern fit` and `nern jobs submit` accept the same flags."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from nern.cli import build_parser, config_from_args
from nern.cli_options import add_model_flags, flag_name, model_values
from nern.config import FitConfig

ROOT = Path(__file__).resolve().parents[2]


def _flags(parser: argparse.ArgumentParser, command: list[str]) -> set[str]:
    sub = parser
    for word in command:
        action = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction))
        sub = action.choices[word]
    return {s for a in sub._actions for s in a.option_strings}


def test_every_fit_setting_is_a_flag_of_both_commands():
    parser = build_parser()
    fields = {flag_name(f) for f in FitConfig.model_fields}
    assert fields <= _flags(parser, ["fit"])
    assert fields <= _flags(parser, ["jobs", "submit"])
    assert {"--optimizer", flag_name("amp"), "--no-amp", "--betas", "--augment", "--no-augment"} <= _flags(parser, ["fit"])


def test_flags_parse_to_the_config_and_only_given_flags_count():
    args = build_parser().parse_args(["fit", "ckpt.th", "--out", "x.nern", "--optimizer", "ranger", "--steps", "7",
                                      "--no-amp", "--betas", "0.5,0.999", "--permute", "none"])
    cfg = config_from_args(args)
    assert (cfg.optimizer, cfg.steps, cfg.amp, cfg.betas, cfg.permute) == ("ranger", 7, False, (0.5, 0.999), "none")
    untouched = config_from_args(build_parser().parse_args(["fit", "c", "--out", "o"]))
    assert untouched == FitConfig()


def test_dest_prefix_keeps_models_apart():
    p = argparse.ArgumentParser()
    add_model_flags(p, FitConfig, exclude=("steps",), dest_prefix="x.")
    args = p.parse_args(["--lr", "0.01"])
    assert model_values(args, FitConfig, dest_prefix="x.") == {"lr": 0.01}
    with pytest.raises(SystemExit):
        p.parse_args(["--steps", "3"])


@pytest.mark.parametrize("argv", [["fit", "c", "--out", "o", "--steps", "many"],
                                  ["fit", "c", "--out", "o", "--optimizer", "sgd"],
                                  ["nonsense"]])
def test_usage_errors_are_one_line_with_status_2(argv):
    proc = subprocess.run([sys.executable, "-m", "nern", *argv], capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("nern: error:"), proc.stderr


def test_the_library_names_nothing_of_the_service():
    for path in (ROOT / "nern").rglob("*.py"):
        text = path.read_text()
        assert "import api" not in text and "from api" not in text, path
        assert "from worker" not in text and "import worker" not in text, path


def test_service_commands_come_from_the_entry_point():
    proc = subprocess.run([sys.executable, "-m", "nern", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0
    for command in ("serve", "worker", "keys", "jobs", "demo", "fit", "importance"):
        assert command in proc.stdout


def test_building_the_command_line_loads_neither_torch_nor_torchvision():
    """`nern jobs ...` (a client of the service) starts without torch; `nern fit` and the other
    library commands import it when they run. torchvision only with a torchvision network."""
    code = ("import sys; from nern.cli import build_parser; build_parser(); import nern, nern.config; "
            "assert 'torch' not in sys.modules, 'torch'; import nern.targets; "
            "assert 'torchvision' not in sys.modules, 'torchvision'; nern.create_target('resnet18'); "
            "assert 'torchvision' in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
