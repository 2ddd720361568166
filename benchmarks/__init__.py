"""benchmarks: one script per area; each runs a baseline beside headrace and prints a JSON line."""
