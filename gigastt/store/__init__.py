"""Model files on disk: where they live, how they are fetched, verified and quantized.
"""
