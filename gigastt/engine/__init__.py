"""Speech to text: audio decoding, log-mel features, the ONNX model and greedy RNN-T decoding.

Knows nothing about HTTP; the server reaches it only through ``engine.executor``.
"""
