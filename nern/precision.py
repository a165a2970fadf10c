"""Which precision the predictor's matrix products use: the one choice the library makes.

bf16 autocast pays off only where the hardware multiplies bf16 fast: CUDA GPUs, and CPUs whose
PyTorch build reports AVX512-BF16 or AMX *and* where bf16 measures faster. Elsewhere (AVX2-only
CPUs such as AMD Zen 3) PyTorch emulates bf16 matrix products, several times slower than fp32.
Reporting the instructions is not enough: on an Intel Xeon (family 6 model 207) reporting
AVX512-BF16 without AMX, bf16 products ran at half the fp32 rate and the bench step was 11-13 %
slower in bf16. So on a CPU with native bf16, `amp=None` (the default everywhere) times one
predictor-shaped training pass in both precisions, once per process and thread count (~0.1-0.3 s),
and takes bf16 only where it is clearly faster. An explicit `amp=True` on a CPU without native
bf16 runs as asked but logs the expected slowdown.

    resolve_amp(None, torch.device("cpu"))   # True on Zen 4/5 or AMX, False on AVX2 or slow bf16
    describe_cpu()                           # {"cpu_capability": "AVX2", "native_bf16": False, ...}
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping

import torch

from .predictor import KernelPredictor

log = logging.getLogger(__name__)

# Measured on a 2-core AMD Zen 3 (AVX2 only): the bench step 4.10 s with bf16 vs 0.68 s in fp32.
EMULATED_BF16_SLOWDOWN = "about 6x slower than fp32"

# bf16 is chosen on a CPU where the probe measures it at least this much faster than fp32. Measured
# (docs/results/session_2026-11-30i.md): 2.2-2.7x on a 2-core Zen 5, whose bench step is 0.13-0.17 s
# in bf16 against 0.18 s in fp32; 0.05x with oneDNN capped to AVX2 (emulated bf16). The margin keeps
# the choice from flipping between runs where the two are close.
BF16_MIN_SPEEDUP = 1.25

# The probe: forward and backward of a predictor of the paper's shape on a batch of embeddings.
_PROBE_ROWS, _PROBE_IN, _PROBE_HIDDEN, _PROBE_LAYERS, _PROBE_REPEATS = 2048, 240, 256, 5, 3

# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA) below which its bf16 products are emulated.
_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_capabilities() -> Mapping[str, object]:
    """What this PyTorch build reports about the CPU (cpuinfo flags), with the bf16 flags off
    where the process caps oneDNN below them (`ONEDNN_MAX_CPU_ISA=AVX2`: bf16 would be emulated,
    as on an AVX2-only CPU — which is also how the test suite simulates one)."""
    caps = dict(torch.cpu.get_capabilities())
    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    if cap in _ONEDNN_ISAS_WITHOUT_BF16:
        caps.update(avx512_bf16=False, amx_bf16=False)
    return caps


def native_bf16(device: torch.device | str, capabilities: Mapping[str, object] | None = None) -> bool:
    """True where bf16 matrix products run in hardware: CUDA, or a CPU with AVX512-BF16 or AMX-BF16.

    `capabilities` replaces the CPU's own report (tests inject both kinds of CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    caps = cpu_capabilities() if capabilities is None else capabilities
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def _probe_pass(model: KernelPredictor, x: torch.Tensor, bf16: bool) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        out = model(x)
    out.float().square().mean().backward()
    return time.perf_counter() - t0


@functools.cache
def _measure(threads: int) -> tuple[float, float]:
    with torch.random.fork_rng(devices=[]), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(0)
        model = KernelPredictor(_PROBE_IN, _PROBE_HIDDEN, _PROBE_LAYERS, 3)
        x = torch.randn(_PROBE_ROWS, _PROBE_IN)
        best = {False: float("inf"), True: float("inf")}
        for rep in range(_PROBE_REPEATS + 1):
            for bf16 in (False, True):
                seconds = _probe_pass(model, x, bf16)
                if rep:  # the first pass of each only warms its kernels up
                    best[bf16] = min(best[bf16], seconds)
    macs = _PROBE_ROWS * sum(m.weight.numel() for m in model.net if isinstance(m, torch.nn.Linear))
    return 6 * macs / best[False] / 1e9, 6 * macs / best[True] / 1e9  # forward 2, backward 4 FLOPs per MAC


def bf16_probe() -> dict[str, float]:
    """GFLOP/s of the probe pass on this CPU in fp32 (the library's float32 path) and under bf16
    autocast, best of 3 after a warm-up; measured once per process and thread count."""
    fp32, bf16 = _measure(torch.get_num_threads())
    return {"fp32_gflops": round(fp32, 1), "bf16_gflops": round(bf16, 1)}


def bf16_pays(device: torch.device | str, capabilities: Mapping[str, object] | None = None,
              rates: Mapping[str, float] | None = None) -> bool:
    """True where bf16 is native and, on a CPU, measures ≥ BF16_MIN_SPEEDUP× fp32 in the probe.

    `rates` replaces the probe's measurement (tests inject fast and slow bf16)."""
    if not native_bf16(device, capabilities):
        return False
    if torch.device(device).type == "cuda":
        return True
    rates = bf16_probe() if rates is None else rates
    pays = rates["bf16_gflops"] >= BF16_MIN_SPEEDUP * rates["fp32_gflops"]
    if not pays:
        log.info("bf16 is native here but the probe measured %.0f GFLOP/s against fp32's %.0f: fp32 chosen",
                 rates["bf16_gflops"], rates["fp32_gflops"])
    return pays


def resolve_amp(amp: bool | None, device: torch.device | str,
                capabilities: Mapping[str, object] | None = None,
                rates: Mapping[str, float] | None = None) -> bool:
    """The precision a fit uses: `amp` when set, else bf16 exactly where it pays (`bf16_pays`).

    An explicit amp=True on a CPU without native bf16 is honoured, with a warning."""
    if amp is None:
        return bf16_pays(device, capabilities, rates)
    if amp and not native_bf16(device, capabilities):
        log.warning("amp=True on a CPU without native bf16 (no AVX512-BF16/AMX): bf16 matrix products "
                    "are emulated, %s; leave amp unset to let the library choose", EMULATED_BF16_SLOWDOWN)
    return bool(amp)


def describe_cpu(capabilities: Mapping[str, object] | None = None,
                 rates: Mapping[str, float] | None = None) -> dict:
    """The facts a benchmark prints next to its timings (the probe's rates where bf16 is native)."""
    caps = cpu_capabilities() if capabilities is None else capabilities
    native = native_bf16("cpu", caps)
    probe = (bf16_probe() if rates is None else dict(rates)) if native else None
    return {
        "cpu_name": caps.get("cpu_name"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native,
        "bf16_probe": probe,
        "bf16_chosen": bf16_pays("cpu", caps, probe),
        "threads": torch.get_num_threads(),
    }


__all__ = ["BF16_MIN_SPEEDUP", "bf16_pays", "bf16_probe", "cpu_capabilities", "describe_cpu", "native_bf16",
           "resolve_amp"]
