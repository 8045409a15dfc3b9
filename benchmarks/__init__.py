"""Speed and size measurements of ckptlab, run on demand and never part of the test suite.

``python -m benchmarks`` runs every ``bench_*.py`` module of this package; ``python -m
benchmarks store`` runs ``bench_store.py`` only. Each module exposes ``main(argv) -> dict``,
prints a table of measured values against the baseline a user would use today, and returns
the results as JSON-able data (see :mod:`benchmarks.common`).
"""
