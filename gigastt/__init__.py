"""gigastt: a local-first Russian speech-to-text server for GigaAM v3 RNN-T.

The engine (``gigastt.engine``) turns audio into words; the server (``gigastt.server``) speaks HTTP.
"""

import os

# numpy's OpenBLAS runs each matrix call on threads of its own that then busy-wait for the next:
# our numpy work is small (resampling, features) and the parallelism is the lanes' and
# onnxruntime's, so one BLAS thread. Set before anything imports numpy; an operator's value
# wins. One live stream: 1.28 -> 0.36 of a core (docs/benchmarks.md §4c).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.1.0"

MODEL_ID = "gigaam-v3-e2e-rnnt"
MODEL_NAME = "GigaAM v3 RNN-T"
