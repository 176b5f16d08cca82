"""Speed: one throughput measurement of a config, and the benchmark's variants (overrides and
environments) with their numerics check."""
