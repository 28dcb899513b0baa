"""The workload names ``turnout bench`` runs (alone here: the CLI lists them without
importing the runner)."""

WORKLOADS = ("single_2k", "multi_20k_tools", "tool_heavy_50k", "cancel", "concurrency")
