"""Bench stage: latency x accuracy x size harness, reports, regression gate."""
