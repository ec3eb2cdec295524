"""Streaming detectors: constant memory per series, event time only."""
