"""Sample conversion: interleaved PCM/float bytes and decoder blocks to float32 mono, channel
mixing, the non-finite check, and the PCM16 frames of WebSocket sessions."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from gigastt.engine.audio.core import F32, NonFiniteSampleError


def byte_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1 or view.format != "B":
        view = view.cast("B")  # requires C-contiguity, which numpy's frombuffer needs anyway
    return view


def interleaved_to_mono(
    buf: memoryview, offset: int, size: int, *, bits: int, is_float: bool, channels: int,
    rate: int, first_frame: int = 0,
) -> F32:
    """Interleaved little-endian samples at ``buf[offset:offset+size]`` → float32 mono.

    Integer PCM of 8 (unsigned), 16, 24 or 32 bits, or IEEE float of 32 or 64 bits; ``rate``
    and ``first_frame`` (the block's place in the file) only place a non-finite sample in the
    error message.
    """
    count = size // (bits // 8)
    if is_float:
        src = np.frombuffer(buf, dtype="<f4" if bits == 32 else "<f8", count=count, offset=offset)
        # A float64 beyond float32 range becomes ±Inf here and is rejected with the rest.
        with np.errstate(over="ignore"):
            interleaved = src.astype(np.float32)
        finite = np.isfinite(interleaved)
        if not finite.all():
            # No count: decoding stops at the first block that holds one (D30).
            first = first_frame + int(np.argmin(finite)) // channels
            raise NonFiniteSampleError(
                f"float WAV has non-finite samples (NaN or ±Inf); the first is at frame {first}"
                f" ({first / rate:.3f} s)"
            )
        return mix_down(interleaved, channels, 1.0, 0.0)
    if bits == 8:
        src8 = np.frombuffer(buf, dtype=np.uint8, count=count, offset=offset)
        return mix_down(src8, channels, 1.0 / 128.0, -1.0)
    if bits == 16:
        src16 = np.frombuffer(buf, dtype="<i2", count=count, offset=offset)
        return mix_down(src16, channels, 2.0**-15, 0.0)
    if bits == 24:
        # Read each 3-byte sample as the top three bytes of an int32 that starts one byte
        # earlier (a 3-byte-strided view; the caller guarantees that byte exists: in a WAV it
        # belongs to the data chunk header), then clear the borrowed low byte. The int32's sign
        # bit does the sign extension and 2^-31 scales it, exactly sample / 2^23. Faster than
        # widening a (n, 3) uint8 view.
        shifted = np.ndarray((count,), dtype="<i4", buffer=buf, offset=offset - 1, strides=(3,))
        return mix_down(shifted & np.int32(-256), channels, 2.0**-31, 0.0)
    src32 = np.frombuffer(buf, dtype="<i4", count=count, offset=offset)
    return mix_down(src32, channels, 2.0**-31, 0.0)


def mix_down(interleaved: npt.NDArray[Any], channels: int, scale: float, offset: float) -> F32:
    """Mean of channels, then ``x * scale + offset``, in float32.

    Scales are powers of two, so mono PCM conversion is exact (PCM16 → x / 32768 bit for bit).
    """
    if channels == 1:
        out = interleaved.astype(np.float32)  # always a fresh, writable array
    else:
        frames = interleaved.reshape(-1, channels)
        out = frames[:, 0].astype(np.float32)
        # A per-channel loop of whole-array adds beats numpy's reduction over a short inner axis.
        for c in range(1, channels):
            out += frames[:, c]
        out /= np.float32(channels)
    if scale != 1.0:
        out *= np.float32(scale)
    if offset != 0.0:
        out += np.float32(offset)
    return out


def finite_mean(frames: F32, rate: int, label: str, first_frame: int = 0) -> F32:
    """Mean of a (frames, channels) float32 block, rejecting NaN/Inf.

    ``first_frame`` is the block's position in the stream, for the error message.
    """
    finite = np.isfinite(frames)
    if not finite.all():
        first = first_frame + int(np.argmin(finite.all(axis=1)))
        raise NonFiniteSampleError(
            f"{label} audio has non-finite samples (NaN or ±Inf); the first is at frame {first} "
            f"({first / rate:.3f} s)"
        )
    return mix_down(np.ascontiguousarray(frames).reshape(-1), frames.shape[1], 1.0, 0.0)


def pcm16_to_float(data: bytes | bytearray | memoryview) -> F32:
    """Little-endian PCM16 → float32 / 32768 (WebSocket frames).

    Raises:
        ValueError: odd byte count; the caller carries a split sample to its next frame.
    """
    view = byte_view(data)
    if len(view) % 2:
        raise ValueError(f"PCM16 data must have an even number of bytes, got {len(view)}")
    out = np.frombuffer(view, dtype="<i2").astype(np.float32)
    out *= np.float32(2.0**-15)
    return out
