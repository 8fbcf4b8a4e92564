"""Bytes to requests: the asyncio HTTP/WebSocket server and its admission policies.

Knows nothing about ONNX; it reaches the model only through ``gigastt.engine.executor``.
"""
