"""Helpers of benchmarks/bench_latency.py: where the cursor goes (positions), what the editor plugin
sends (editor), what the user does (typist), raw llama-cpp-python (raw) and the scores (metrics)."""
