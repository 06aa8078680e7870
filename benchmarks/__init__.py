"""The project's benchmarks: each module is a script (``python benchmarks/<name>.py``) writing a
JSON file under ``benchmarks/results/``; ``python -m benchmarks`` runs them all and renders
``benchmarks/RESULTS.md``."""
