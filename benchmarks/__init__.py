"""Benchmarks: scripts that print measured figures (never timed unit tests). Run one with
`python -m benchmarks.<name> --help`."""
