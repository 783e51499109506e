"""The paper's toy experiment (Sec. 4.1): ``python -m benchmarks.toy``."""
