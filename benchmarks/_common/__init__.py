"""What every evidence benchmark shares: the training loop, the pretrained
weights cache, timing, statistics and report writing."""
