"""Leaf helpers that import only errors: atomic writes, calibration maths, hardware, limits, progress,
redaction."""
