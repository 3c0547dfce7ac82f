"""How many threads a vLLM engine computes with on a CPU, and on which cores: its replica's share of the node.

vLLM's CPU backend binds its OpenMP threads itself (`VLLM_CPU_OMP_THREADS_BIND=auto`): every core of the
first NUMA node but one, which it leaves to its own scheduler. It does not know of other engines: every
replica on a node binds the same cores, whatever Ray reserved for it. Two replicas of the embedded model on
a 2-core machine both computed on core 0 while core 1 was left to the rest; a 16-core node running four
replicas of `num_cpus: 4` would run four sets of 15 threads on the same 15 cores.

So an engine replica computes with as many threads as the CPUs Ray reserved for it (`num_cpus`, at least
one) and lets the operating system place them (`nobind`): replicas then share the node the way Ray
accounts for it. A model served from one machine, as the embedded default, sets `num_cpus: auto`: Ray
reserves that machine's CPUs less one, and the lone engine keeps vLLM's binding (one thread per physical core
of the first NUMA node, one left to its scheduler). An operator who sets `VLLM_CPU_OMP_THREADS_BIND` (in the
application's `runtime_env`) gets vLLM's own binding, with their core lists.

Pure: the environment comes in, the variables to set come out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

BIND_VARIABLE = "VLLM_CPU_OMP_THREADS_BIND"


def cpu_thread_settings(num_cpus: float | Literal["auto"], environ: Mapping[str, str]) -> dict[str, str]:
    """The environment variables to set before vLLM starts its EngineCore on a CPU, given the replica's
    `num_cpus`: none for `auto` (a lone engine on its machine: vLLM's binding) or when the operator chose a
    binding."""
    if num_cpus == "auto" or BIND_VARIABLE in environ:
        return {}
    return {BIND_VARIABLE: "nobind", "OMP_NUM_THREADS": str(max(1, int(num_cpus)))}
