"""Benchmarks of minigrad and the GPT-2 model against PyTorch (`python -m bench.ops`, `bench.train`)."""
