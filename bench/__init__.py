"""Benchmarks of ollama-governor: ``python -m bench`` (see bench/__main__.py).

Benchmarks are not tests: nothing here asserts on time. ``tests/test_bench_smoke.py`` only runs
``python -m bench all --smoke`` to keep the code working.
"""
