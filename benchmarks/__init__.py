"""minivlm's benchmarks: attention implementations, single ops and training steps.

Each benchmark checks its implementations against a reference before it times them,
prints a table, and writes a JSON report (benchmarks/schema.json). Run them as
`minivlm bench attention|ops|train` or `python -m benchmarks.<name>`.
"""
