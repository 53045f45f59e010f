"""Leaves importing only errors: atomic writes, calibration maths, hardware, limits, progress, redaction."""
