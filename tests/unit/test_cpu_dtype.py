"""`dtype: auto` on a CPU (issue #22): bfloat16 only where the CPU computes it natively."""

from __future__ import annotations

from pathlib import Path

from serve_app.engines.cpu_dtype import cpu_flags, fastest_cpu_dtype, read_cpu_flags

AVX2_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma\n\nprocessor\t: 1\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_native_bf16_runs_in_bfloat16_and_everything_else_in_float32() -> None:
    assert fastest_cpu_dtype(cpu_flags(AVX2_EPYC))[0] == "float32"
    assert fastest_cpu_dtype(cpu_flags(SAPPHIRE_RAPIDS)) == (
        "bfloat16",
        "the CPU computes bfloat16 natively (amx_bf16, avx512_bf16)",
    )
    assert fastest_cpu_dtype(cpu_flags(GRAVITON3))[0] == "bfloat16"


def test_an_unreadable_cpuinfo_assumes_nothing_native(tmp_path: Path) -> None:
    assert read_cpu_flags(tmp_path / "missing") == frozenset()
    assert fastest_cpu_dtype(frozenset())[0] == "float32"
