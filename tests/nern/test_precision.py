"""The library's precision choice: bf16 exactly where the hardware runs it natively and fast."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from nern.config import FitConfig
from nern.precision import (
    BF16_MIN_SPEEDUP,
    _measure,
    bf16_pays,
    bf16_probe,
    describe_cpu,
    native_bf16,
    resolve_amp,
)
from nern.train import NernRun, fit

AVX2_ONLY = {"avx2": True, "avx512_bf16": False, "amx_bf16": False, "cpu_name": "AMD EPYC (Zen 3)"}
AVX512_BF16 = {"avx2": True, "avx512_bf16": True, "amx_bf16": False, "cpu_name": "AMD EPYC (Zen 4)"}
AMX = {"avx2": True, "avx512_bf16": False, "amx_bf16": True, "cpu_name": "Intel Xeon (Sapphire Rapids)"}
# Probe rates (GFLOP/s) as measured on a Zen 5, and bf16 at half fp32's rate as on the Intel Xeon
# model 207 that reports AVX512-BF16 without AMX.
FAST_BF16 = {"fp32_gflops": 213.4, "bf16_gflops": 475.9}
SLOW_BF16 = {"fp32_gflops": 290.0, "bf16_gflops": 150.0}


def test_unset_amp_follows_the_cpu(caplog):
    with caplog.at_level(logging.WARNING, logger="nern.precision"):
        assert resolve_amp(None, "cpu", AVX2_ONLY, FAST_BF16) is False  # not native: never probed
        assert resolve_amp(None, "cpu", AVX512_BF16, FAST_BF16) is True
        assert resolve_amp(None, "cpu", AMX, FAST_BF16) is True
        assert resolve_amp(None, "cpu", AVX512_BF16, SLOW_BF16) is False
        assert resolve_amp(None, "cpu", AMX, SLOW_BF16) is False
    assert not caplog.records  # choosing never warns


def test_bf16_needs_the_margin_over_fp32():
    at = {"fp32_gflops": 100.0, "bf16_gflops": 100.0 * BF16_MIN_SPEEDUP}
    below = {"fp32_gflops": 100.0, "bf16_gflops": 100.0 * BF16_MIN_SPEEDUP - 0.1}
    assert bf16_pays("cpu", AVX512_BF16, at) is True
    assert bf16_pays("cpu", AVX512_BF16, below) is False


def test_the_probe_is_never_run_where_bf16_is_not_native(monkeypatch):
    monkeypatch.setattr("nern.precision._measure", lambda threads: pytest.fail("probed"))
    assert resolve_amp(None, "cpu", AVX2_ONLY) is False
    assert describe_cpu(AVX2_ONLY)["bf16_probe"] is None
    assert resolve_amp(None, "cuda", AVX2_ONLY) is True


def test_the_probe_measures_both_precisions_once_per_thread_count():
    first = bf16_probe()
    assert set(first) == {"fp32_gflops", "bf16_gflops"} and min(first.values()) > 0
    assert bf16_probe() == first  # cached: the same measurement, not a second one
    state = torch.random.get_rng_state()
    _measure.cache_clear()
    bf16_probe()
    assert torch.equal(torch.random.get_rng_state(), state)  # a fit's seeded stream is untouched


def test_the_probe_itself_sees_emulated_bf16_as_slow():
    """With oneDNN and ATen capped to AVX2, bf16 is emulated on every CPU: the probe, timed for real
    in such a process, must find it slower than fp32 (not merely be told so by the flags)."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    code = ("import torch; torch.set_num_threads(1); from nern.precision import bf16_pays, bf16_probe; "
            "r = bf16_probe(); print(r['bf16_gflops'] / r['fp32_gflops'], bf16_pays('cpu', {'amx_bf16': True}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True)
    ratio, pays = out.stdout.split()
    assert float(ratio) < 1.0 and pays == "False"


def test_cuda_is_native_whatever_the_host_cpu():
    assert native_bf16("cuda", AVX2_ONLY) is True
    assert resolve_amp(None, torch.device("cuda"), AVX2_ONLY) is True


def test_explicit_choice_is_honoured_and_emulation_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="nern.precision"):
        assert resolve_amp(False, "cpu", AVX512_BF16) is False
        assert not caplog.records
        assert resolve_amp(True, "cpu", AVX512_BF16) is True
        assert not caplog.records
        assert resolve_amp(True, "cpu", AVX2_ONLY) is True
    assert len(caplog.records) == 1 and "emulated" in caplog.records[0].getMessage()
    assert "6x slower" in caplog.records[0].getMessage()


def test_config_leaves_precision_unset_by_default():
    assert FitConfig().amp is None
    assert FitConfig(**{"amp": True}).amp is True  # a config only: nothing runs in bf16


def test_describe_cpu_reports_the_capability():
    info = describe_cpu(AVX2_ONLY)
    assert info["native_bf16"] is False and info["cpu_name"] == "AMD EPYC (Zen 3)"
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["bf16_chosen"] is False
    slow = describe_cpu(AVX512_BF16, SLOW_BF16)
    assert slow["native_bf16"] is True and slow["bf16_probe"] == SLOW_BF16 and slow["bf16_chosen"] is False


@pytest.mark.parametrize(("caps", "rates", "precision"),
                         [(AVX2_ONLY, FAST_BF16, "fp32"), (AVX512_BF16, FAST_BF16, "bf16"), (AMX, SLOW_BF16, "fp32")])
def test_a_fit_uses_the_choice_for_the_cpu_it_runs_on(resnet20_sd, monkeypatch, caps, rates, precision):
    """The capability and the probe's rates are injected where the library reads them; the fit
    reports what it used and the predictor's products really run in that precision."""
    monkeypatch.setattr("nern.precision.cpu_capabilities", lambda: caps)
    monkeypatch.setattr("nern.precision.bf16_probe", lambda: rates)
    cfg = FitConfig(steps=1, hidden=8, layers=2, emb_levels=2, w_kd=0, w_fmd=0, permute="none",
                    device="cpu", lr_warmup_steps=0)
    run = NernRun(resnet20_sd, cfg, None)
    assert run.amp is (precision == "bf16")
    seen = []
    handle = run.model.predictor.net[-1].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    run.train_step()
    handle.remove()
    assert seen == [torch.bfloat16 if precision == "bf16" else torch.float32]
    assert fit(resnet20_sd, cfg).summary["precision"] == precision


@pytest.mark.parametrize(("isa", "native"), [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_AMX", None)])
def test_a_onednn_isa_cap_below_bf16_means_fp32(monkeypatch, isa, native):
    """ONEDNN_MAX_CPU_ISA below AVX512_CORE_BF16 makes bf16 emulated whatever the CPU has."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict(AMX))
    monkeypatch.setattr("nern.precision.bf16_probe", lambda: FAST_BF16)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    expected = True if native is None else native
    assert native_bf16("cpu") is expected
    assert resolve_amp(None, "cpu") is expected
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert native_bf16("cpu") is True
