"""The library's precision choice: bf16 exactly where the hardware runs it natively."""

from __future__ import annotations

import logging

import pytest
import torch

from nern.config import FitConfig
from nern.precision import describe_cpu, native_bf16, resolve_amp
from nern.train import NernRun, fit

AVX2_ONLY = {"avx2": True, "avx512_bf16": False, "amx_bf16": False, "cpu_name": "AMD EPYC (Zen 3)"}
AVX512_BF16 = {"avx2": True, "avx512_bf16": True, "amx_bf16": False, "cpu_name": "AMD EPYC (Zen 4)"}
AMX = {"avx2": True, "avx512_bf16": False, "amx_bf16": True, "cpu_name": "Intel Xeon (Sapphire Rapids)"}


def test_unset_amp_follows_the_cpu(caplog):
    with caplog.at_level(logging.WARNING, logger="nern.precision"):
        assert resolve_amp(None, "cpu", AVX2_ONLY) is False
        assert resolve_amp(None, "cpu", AVX512_BF16) is True
        assert resolve_amp(None, "cpu", AMX) is True
    assert not caplog.records  # choosing never warns


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


@pytest.mark.parametrize(("caps", "precision"), [(AVX2_ONLY, "fp32"), (AVX512_BF16, "bf16")])
def test_a_fit_uses_the_choice_for_the_cpu_it_runs_on(resnet20_sd, monkeypatch, caps, precision):
    """The capability is injected where the library reads it; the fit reports what it used and the
    predictor's products really run in that precision."""
    monkeypatch.setattr("nern.precision.cpu_capabilities", lambda: caps)
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
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    expected = True if native is None else native
    assert native_bf16("cpu") is expected
    assert resolve_amp(None, "cpu") is expected
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert native_bf16("cpu") is True
