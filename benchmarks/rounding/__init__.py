"""Float32 rounding of PROFIT's displacement: ``python -m benchmarks.rounding``."""
