"""The dtype that runs fastest on the CPU an engine lands on (issue #22): what `dtype: auto` means on a CPU.

bfloat16 is fast only where the CPU computes it natively: AVX512-BF16 or AMX (Intel Sapphire Rapids and
later, AMD Zen 4 and later) or ARM's BF16 extension. Elsewhere PyTorch emulates bfloat16 matrix products:
on a 2-core AVX2 EPYC, SmolLM2-135M prefilled 3,392 tokens in 88.6 s in bfloat16 and 23.0 s in float32,
and decoded at the same speed (docs/benchmarks.md). vLLM's own `auto` takes the model's dtype (bfloat16
for most models) on every CPU, so on a CPU `auto` is decided here: bfloat16 with native support, float32
without. A config that names a dtype gets that dtype.

Pure: the CPU's flags come from /proc/cpuinfo.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512 and AMX; ARM's `Features`

CpuDtype = Literal["bfloat16", "float32"]


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The instruction-set flags of /proc/cpuinfo's text (x86 `flags`, ARM `Features`), of its first CPU."""
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def read_cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        return cpu_flags(path.read_text())
    except OSError:  # not Linux: nothing known, so nothing assumed native
        return frozenset()


def fastest_cpu_dtype(flags: frozenset[str]) -> tuple[CpuDtype, str]:
    """The dtype to run in, and why (for the log)."""
    native = sorted(NATIVE_BF16_FLAGS & flags)
    if native:
        return "bfloat16", f"the CPU computes bfloat16 natively ({', '.join(native)})"
    return (
        "float32",
        "the CPU has no native bfloat16 (no AVX512-BF16, AMX or ARM BF16): it would be emulated, ~4x slower to prefill",
    )
