"""The paper's image-classification protocol (Sec. 4.2): ``python -m benchmarks.image``."""
