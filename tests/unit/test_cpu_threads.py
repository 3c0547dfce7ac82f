"""On a CPU an engine computes with the CPUs Ray reserved for its replica, placed by the operating system, not
on vLLM's fixed cores (issue #22): replicas on one node no longer bind the same cores."""

from __future__ import annotations

from serve_app.engines.cpu_threads import cpu_thread_settings


def test_an_engine_computes_with_its_replicas_cpus_left_unbound() -> None:
    assert cpu_thread_settings(4.0, {}) == {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "4"}
    # A share below one CPU (or a fraction above a whole one) still computes with whole threads.
    assert cpu_thread_settings(0.5, {})["OMP_NUM_THREADS"] == "1"
    assert cpu_thread_settings(2.5, {})["OMP_NUM_THREADS"] == "2"


def test_a_lone_engine_and_a_binding_the_operator_set_are_left_to_vllm() -> None:
    assert cpu_thread_settings("auto", {}) == {}  # num_cpus: auto, a model served from one machine
    assert cpu_thread_settings(4.0, {"VLLM_CPU_OMP_THREADS_BIND": "0-3|4-7"}) == {}
