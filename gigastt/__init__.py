"""gigastt: a local-first Russian speech-to-text server for GigaAM v3 RNN-T.

The engine (``gigastt.engine``) turns audio into words; the server (``gigastt.server``) speaks HTTP.
"""

__version__ = "0.1.0"

MODEL_ID = "gigaam-v3-e2e-rnnt"
MODEL_NAME = "GigaAM v3 RNN-T"
