"""Generators of small GigaAM-compatible ONNX models and synthetic audio for tests and benchmarks.

Needs the ``onnx`` package (the ``test`` or ``quantize`` extra).
"""
