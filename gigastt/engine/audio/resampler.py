"""The stateful Kaiser-windowed-sinc polyphase resampler (decision D19) that brings any rate in
MIN_RATE..MAX_RATE to 16 kHz, with its filter plans and their cache bounded in bytes."""

from __future__ import annotations

import math
import operator
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gigastt.engine.audio.core import F32, F64, MAX_RATE, MIN_RATE, MODEL_RATE

# Output sample n sits at input time t_n = n·M/L (L/M = out/in in lowest terms) and is
#     y[n] = Σ_k x[k] · h(t_n − k),   h(t) = s·sinc(s·t) · kaiser(t / W),
# with s = ROLLOFF · min(1, L/M) (cutoff relative to the input Nyquist) and W = ZEROS / s input
# samples. Centring the kernel on t_n makes the filter zero-phase: no delay to compensate. With
# t_n = q + r/L (q integer, phase r in [0, L)), the weights depend only on r: one table row per
# phase, computed once per ratio. Missing samples before the start and after the end are zero,
# so the whole-signal output has exactly ceil(N·L/M) samples.
#
# Rates are limited to MIN_RATE..MAX_RATE, so a plan has at most 2·ceil(ZEROS·48/ROLLOFF) + 1 =
# 3271 taps (384 kHz → 8 kHz). L can still be large (16000 for a rate coprime with 16000), and
# L rows of taps would reach 26 M entries; past _MAX_TABLE entries the table holds P + 1 rows
# for the phases 0, 1/P, …, 1 instead (P = _MAX_TABLE // taps − 1), and each output takes the
# row nearest its phase. That moves it by at most 1/(2P) input samples. A tone at the band edge
# (s·π radians per input sample, and s·taps ≈ 2·ZEROS) then errs by at most about
# 2·ZEROS·π / (2·_MAX_TABLE) = 2.4e-5 of its amplitude, 92 dB down, whatever the rates
# (measured: 100 dB down for 7 kHz from 383999 Hz).

_ROLLOFF = 0.94
_ZEROS = 32
_BETA = 14.8
# Table and block-matrix sizes (float64 entries: 32 and 8 MiB); every common rate stays far
# below (44.1 kHz: 30 k and 0.1 M entries).
_MAX_TABLE = 1 << 22
_MAX_BLOCK_MATRIX = 1 << 20
# Entries of the input matrix per matmul, so the float64 copy stays around 4 MiB.
_BATCH_ENTRIES = 1 << 19
# Table entries computed together (256 KiB of float64 per temporary).
_KERNEL_BATCH = 1 << 15
# Plans kept for reuse, in bytes: a stream of odd rates keeps at most this much alive (the
# largest plan is at most 40 MiB; the common rates' plans take under 1 MiB each).
PLAN_CACHE_BYTES = 64 << 20


def _kernel(t: F64, scale: float, half_width: float) -> F64:
    x = t / half_width
    window = np.i0(_BETA * np.sqrt(np.clip(1.0 - x * x, 0.0, None))) / np.i0(_BETA)
    window[np.abs(x) >= 1.0] = 0.0
    return scale * np.sinc(scale * t) * window


@dataclass(frozen=True, slots=True)
class _Plan:
    up: int  # L
    down: int  # M
    half: int  # J: taps reach J input samples either side of q
    scale: float
    half_width: float
    phases: int  # rows of the table: phase r uses row r·phases/L (exact when phases == L)
    table: F64  # (L, 2J+1), or (P+1, 2J+1) when phases < L: weight of x_pad[q + c]
    group: int  # G: block-mode rows hold G·L outputs and advance G·M inputs
    span: int  # inputs per block-mode row
    block: F64 | None  # (span, G·L) matrix of block mode; None selects gather mode

    @property
    def taps(self) -> int:
        return 2 * self.half + 1

    @property
    def nbytes(self) -> int:
        return self.table.nbytes + (0 if self.block is None else self.block.nbytes)

    def weights(self, phases: npt.NDArray[np.int64]) -> F64:
        """Weight rows for the given phases r (nearest table row when phases < L)."""
        if self.phases == self.up:
            return self.table[phases]
        return self.table[(2 * phases * self.phases + self.up) // (2 * self.up)]


def _phase_weights(phases: F64, half: int, scale: float, half_width: float) -> F64:
    """Rows of weights for fractional phases in [0, 1]."""
    c = np.arange(2 * half + 1, dtype=np.float64)
    out = np.empty((phases.size, c.size), dtype=np.float64)
    # A few rows at a time, so the kernel's temporaries stay in the CPU cache: the largest
    # tables build twice as fast as from whole-table arrays.
    rows = max(1, _KERNEL_BATCH // c.size)
    for r0 in range(0, phases.size, rows):
        # x_pad[q + c] is input sample q + c − J, at distance t_n − k = phase + J − c from t_n.
        t = phases[r0 : r0 + rows, None] + half - c[None, :]
        w = _kernel(t, scale, half_width)
        # Unit DC gain for every phase: otherwise the phases' slightly different sums would
        # modulate a constant signal into a tone at the phase rate.
        w /= w.sum(axis=1, keepdims=True)
        out[r0 : r0 + rows] = w
    return out


def _build_plan(up: int, down: int) -> _Plan:
    scale = _ROLLOFF * min(1.0, up / down)
    half_width = _ZEROS / scale
    half = math.ceil(half_width)
    taps = 2 * half + 1
    if up * taps <= _MAX_TABLE:
        phases = up
        table = _phase_weights(np.arange(up) / up, half, scale, half_width)
    else:
        # Row `phases` (phase 1.0) reaches the tap at c = −1 too, but there the kernel is 0:
        # t = 1 + J ≥ W.
        phases = _MAX_TABLE // taps - 1
        table = _phase_weights(np.arange(phases + 1) / phases, half, scale, half_width)
    # Block mode turns the convolution into one matmul per batch of rows. G·M ≈ 2J balances the
    # overlap between rows (input copied span/(G·M) times) against the zeros in the block matrix
    # (span/taps times the needed multiplies).
    group = max(1, math.ceil(2 * half / down))
    width = group * up
    i = np.arange(width, dtype=np.int64)
    q = i * down // up
    span = int(q[-1]) + taps
    block: F64 | None = None
    if phases == up and span * width <= _MAX_BLOCK_MATRIX:
        block = np.zeros((span, width), dtype=np.float64)
        rows = q[None, :] + np.arange(taps)[:, None]
        block[rows, np.broadcast_to(i, rows.shape)] = table[i * down % up].T
    return _Plan(up, down, half, scale, half_width, phases, table, group, span, block)


_plans: OrderedDict[tuple[int, int], _Plan] = OrderedDict()
_plans_lock = threading.Lock()  # REST decodes resample in worker threads


def _plan(up: int, down: int) -> _Plan:
    """The plan for L/M, from the cache (least recently used out first) or built."""
    key = (up, down)
    with _plans_lock:
        plan = _plans.get(key)
        if plan is not None:
            _plans.move_to_end(key)
            return plan
    plan = _build_plan(up, down)  # outside the lock: the largest take most of a second
    with _plans_lock:
        _plans[key] = plan
        total = sum(p.nbytes for p in _plans.values())
        while total > PLAN_CACHE_BYTES:
            total -= _plans.popitem(last=False)[1].nbytes
    return plan


def plan_cache_bytes() -> int:
    """Bytes held by the cached plans (at most PLAN_CACHE_BYTES)."""
    with _plans_lock:
        return sum(p.nbytes for p in _plans.values())


class Resampler:
    """Stateful band-limited polyphase resampler (Kaiser windowed sinc).

    Feed any number of chunks to :meth:`process`, then call :meth:`flush`; the concatenated
    output equals :func:`resample` of the whole signal (to float32 rounding) and has
    ``ceil(N·out_rate/in_rate)`` samples. After :meth:`flush` the object is ready for a new
    stream. Output lags input by the look-ahead a zero-phase filter needs (32 zero crossings,
    2–4 ms) plus at most one block of outputs computed together: 6 ms (24/32/48 kHz) to 43 ms
    (11.025 kHz) at common rates. Not thread-safe: one instance per stream.

    Both rates must lie in MIN_RATE..MAX_RATE: the filter's length grows with their ratio.
    """

    __slots__ = ("_base", "_buf", "_n_in", "_n_out", "_plan", "in_rate", "out_rate")

    def __init__(self, in_rate: int, out_rate: int = MODEL_RATE) -> None:
        in_rate, out_rate = operator.index(in_rate), operator.index(out_rate)
        if not (MIN_RATE <= in_rate <= MAX_RATE and MIN_RATE <= out_rate <= MAX_RATE):
            raise ValueError(
                f"sample rates must be in {MIN_RATE}..{MAX_RATE} Hz, got {in_rate} → {out_rate}"
            )
        self.in_rate = in_rate
        self.out_rate = out_rate
        g = math.gcd(in_rate, out_rate)
        self._plan = None if in_rate == out_rate else _plan(out_rate // g, in_rate // g)
        self._reset()

    def _reset(self) -> None:
        half = 0 if self._plan is None else self._plan.half
        # Inputs are kept "padded": J zeros in front stand for the silence before the start.
        self._buf: F32 = np.zeros(half, dtype=np.float32)
        self._base = 0  # padded index of _buf[0]
        self._n_in = 0
        self._n_out = 0

    def process(self, x: npt.ArrayLike) -> F32:
        """Consume a chunk (any length, 0 included); return the output that is now complete."""
        chunk = _as_signal(x)
        if self._plan is None:
            self._n_in += chunk.size
            return chunk.copy()
        if chunk.size:
            self._buf = np.concatenate((self._buf, chunk))
            self._n_in += chunk.size
        return self._emit(self._plan, self._plan.half + self._n_in)

    def flush(self) -> F32:
        """Finish the stream: emit the tail (the input is taken as zero past its end)."""
        plan = self._plan
        if plan is None:
            self._reset()
            return np.zeros(0, dtype=np.float32)
        target = -(-self._n_in * plan.up // plan.down)
        out = np.zeros(0, dtype=np.float32)
        if target > self._n_out:
            last = target - 1
            if plan.block is not None:
                width = plan.group * plan.up
                need = (last // width) * plan.group * plan.down + plan.span
            else:
                need = last * plan.down // plan.up + plan.taps
            missing = need - (self._base + self._buf.size)
            if missing > 0:
                self._buf = np.concatenate((self._buf, np.zeros(missing, dtype=np.float32)))
            wanted = target - self._n_out
            out = self._emit(plan, need)[:wanted]
        self._reset()
        return out

    def _emit(self, plan: _Plan, end: int) -> F32:
        """Compute every output whose inputs all lie before padded index ``end``."""
        if plan.block is not None:
            return self._emit_block(plan, plan.block, end)
        return self._emit_gather(plan, end)

    def _emit_block(self, plan: _Plan, block: F64, end: int) -> F32:
        stride = plan.group * plan.down
        width = plan.group * plan.up
        first = self._n_out // width
        stop = (end - plan.span) // stride + 1 if end >= plan.span else 0
        rows = stop - first
        if rows <= 0:
            return np.zeros(0, dtype=np.float32)
        out = np.empty((rows, width), dtype=np.float32)
        buf = self._buf
        start = first * stride - self._base
        batch = max(1, _BATCH_ENTRIES // plan.span)
        for r0 in range(0, rows, batch):
            r1 = min(rows, r0 + batch)
            seg = buf[start + r0 * stride : start + (r1 - 1) * stride + plan.span]
            view = np.lib.stride_tricks.as_strided(
                seg, shape=(r1 - r0, plan.span), strides=(stride * 4, 4), writeable=False
            )
            # Overlapping rows are not BLAS-compatible, so copy (to float64: the float64 sum
            # makes every output independent of how the stream was chunked, to the last bit
            # in all but rare rounding ties).
            out[r0:r1] = np.ascontiguousarray(view, dtype=np.float64) @ block
        self._n_out += rows * width
        self._drop_before(stop * stride)
        return out.reshape(-1)

    def _emit_gather(self, plan: _Plan, end: int) -> F32:
        # Output n needs x_pad[q_n .. q_n + 2J]: n < ceil((end − 2J)·L/M).
        avail = end - 2 * plan.half
        stop = -(-avail * plan.up // plan.down) if avail > 0 else 0
        count = stop - self._n_out
        if count <= 0:
            return np.zeros(0, dtype=np.float32)
        out = np.empty(count, dtype=np.float32)
        taps = np.arange(plan.taps, dtype=np.int64)
        batch = max(1, _BATCH_ENTRIES // plan.taps)
        for b0 in range(0, count, batch):
            n = np.arange(self._n_out + b0, self._n_out + min(count, b0 + batch), dtype=np.int64)
            q = n * plan.down // plan.up
            x = self._buf[(q - self._base)[:, None] + taps[None, :]].astype(np.float64)
            w = plan.weights(n * plan.down % plan.up)
            out[b0 : b0 + n.size] = np.einsum("ij,ij->i", x, w)
        self._n_out = stop
        self._drop_before(stop * plan.down // plan.up)
        return out

    def _drop_before(self, index: int) -> None:
        cut = index - self._base
        if cut > 0:
            self._buf = self._buf[cut:]
            self._base = index


def _as_signal(x: npt.ArrayLike) -> F32:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D signal, got shape {arr.shape}")
    return arr


def resample(x: npt.ArrayLike, in_rate: int, out_rate: int = MODEL_RATE) -> F32:
    """Resample a whole signal (process + flush); a float32 copy when the rates are equal."""
    signal = _as_signal(x)
    if in_rate == out_rate:
        return signal.copy()
    r = Resampler(in_rate, out_rate)
    head = r.process(signal)
    return np.concatenate((head, r.flush()))
