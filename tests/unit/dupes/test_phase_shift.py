"""Phase correlation inverted only on the rows of the shifts the alignment may take
(pixels._peak_shifts) is the whole inverse FFT's answer: the same peak as irfft2's window, on even
and odd sides, and it finds a known translation of a real-looking picture."""
from __future__ import annotations

import numpy as np

from nearsort.dupes import pixels


def _smooth_noise(rng, shape, n):
    """Pictures with structure at several scales (blurred noise), not white noise."""
    x = rng.normal(size=(n,) + shape)
    f = np.fft.rfft2(x)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None, :]
    return np.fft.irfft2(f / (1.0 + 40.0 * np.hypot(ky, kx)), s=shape).astype(np.float32)


def _reference(FA, FB, shape, lim):
    r = FA * np.conj(FB)
    r /= np.abs(r) + 1e-6
    c = np.fft.irfft2(r, s=shape)
    w = 2 * lim + 1
    iy = (np.arange(w) - lim) % shape[0]
    ix = (np.arange(w) - lim) % shape[1]
    return c[:, iy][:, :, ix]


def test_peak_is_the_whole_inverse_ffts():
    rng = np.random.default_rng(3)
    for shape, lim in (((64, 64), 2), ((128, 128), 4), ((61, 63), 3)):
        a = _smooth_noise(rng, shape, 40)
        moves = rng.integers(-lim - 1, lim + 2, size=(len(a), 2))  # some beyond the window: a peak at its edge
        b = np.stack([np.roll(x, tuple(m), (0, 1)) for x, m in zip(a, moves)])
        b += 0.6 * rng.normal(size=a.shape).astype(np.float32)
        FA, FB = np.fft.rfft2(a), np.fft.rfft2(b)
        ref = _reference(FA, FB, shape, lim)
        dys, dxs = pixels._peak_shifts(FA, FB, shape, lim)
        best = ref.reshape(len(ref), -1).argmax(1)
        assert (dys == best // (2 * lim + 1) - lim).all() and (dxs == best % (2 * lim + 1) - lim).all()


def test_finds_a_known_translation():
    rng = np.random.default_rng(5)
    a = _smooth_noise(rng, (128, 128), 1)[0]
    for dy, dx in ((0, 0), (2, -3), (-4, 4), (-1, 0)):
        b = np.roll(a, (dy, dx), (0, 1)) + 0.05 * rng.normal(size=a.shape).astype(np.float32)
        # b is a moved by (dy, dx): the shift that maps b back onto a is the opposite
        assert pixels._phase_shift(a, b, 4) == (-dy, -dx)
