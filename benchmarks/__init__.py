"""Metrics and benchmarks. ``benchmarks.metrics`` is the project's only definition of the RIS metrics (numpy only);
the mask rule they score (logits → mask) is ``runtimes.masks``, the robot's own post-processing."""
