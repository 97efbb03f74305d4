"""Benchmarks: the engine against its peers (`agentrt bench engine`), workloads, metrics."""
