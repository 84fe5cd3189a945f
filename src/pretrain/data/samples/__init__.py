"""Small, deterministic inputs of every source format, built from what any Python installation has.

The tests, the benchmarks and ``recipes/examples/`` use them: one module per format family, each
with ``write_*`` functions that build a file or folder and return its path. No network, no hub.
"""
