"""Which precision the predictor's matrix products use: the one choice the library makes.

bf16 autocast pays off only where the hardware multiplies bf16 natively: CUDA GPUs, and CPUs
whose PyTorch build reports AVX512-BF16 or AMX. Elsewhere (AVX2-only CPUs such as AMD Zen 3)
PyTorch emulates bf16 matrix products, several times slower than fp32 — so `amp=None` (the
default everywhere) picks bf16 only where it is native, and an explicit `amp=True` on such a CPU
runs as asked but logs the expected slowdown.

    resolve_amp(None, torch.device("cpu"))   # True on AVX512-BF16/AMX, False on AVX2
    describe_cpu()                           # {"cpu_capability": "AVX2", "native_bf16": False, ...}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

log = logging.getLogger(__name__)

# Measured on a 2-core AMD Zen 3 (AVX2 only): the bench step 4.10 s with bf16 vs 0.68 s in fp32.
EMULATED_BF16_SLOWDOWN = "about 6x slower than fp32"


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


def resolve_amp(amp: bool | None, device: torch.device | str,
                capabilities: Mapping[str, object] | None = None) -> bool:
    """The precision a fit uses: `amp` when set, else bf16 exactly where it is native.

    An explicit amp=True on a CPU without native bf16 is honoured, with a warning."""
    native = native_bf16(device, capabilities)
    if amp is None:
        return native
    if amp and not native:
        log.warning("amp=True on a CPU without native bf16 (no AVX512-BF16/AMX): bf16 matrix products "
                    "are emulated, %s; leave amp unset to let the library choose", EMULATED_BF16_SLOWDOWN)
    return bool(amp)


def describe_cpu(capabilities: Mapping[str, object] | None = None) -> dict:
    """The facts a benchmark prints next to its timings."""
    caps = cpu_capabilities() if capabilities is None else capabilities
    return {
        "cpu_name": caps.get("cpu_name"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": native_bf16("cpu", caps),
        "threads": torch.get_num_threads(),
    }


__all__ = ["cpu_capabilities", "describe_cpu", "native_bf16", "resolve_amp"]
