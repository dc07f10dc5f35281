"""The closed forms in frames.py's flow field are LAPACK's answers, faster: the 2x2 structure-tensor
eigen-decomposition of every block and the robust affine fit's weighted least squares (including
the singular case, where every textured block lies on one line)."""
from __future__ import annotations

import numpy as np

from nearsort import frames


def test_eigh2_is_numpy_eigh():
    rng = np.random.default_rng(7)
    m = rng.normal(size=(4000, 2, 2))
    m = m @ m.transpose(0, 2, 1)
    m[:50, 0, 1] = m[:50, 1, 0] = 0.0            # diagonal, either order
    m[50:60] = np.eye(2) * 0.3                   # isotropic: any basis
    m[60:70] = 0.0
    m[70:80] = [[1e-9, 2e-9], [2e-9, 4e-9]]      # rank one, tiny
    vals, vecs = frames._eigh2(m[:, 0, 0], m[:, 0, 1], m[:, 1, 1])
    ref_vals, ref_vecs = np.linalg.eigh(m)
    np.testing.assert_allclose(vals, ref_vals, atol=1e-12)
    for k in (0, 1):  # each column an eigenvector of unit length, orthogonal to the other
        v = vecs[..., k]
        np.testing.assert_allclose(np.einsum("bij,bj->bi", m, v), vals[:, k:k + 1] * v, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0)
    np.testing.assert_allclose((vecs[..., 0] * vecs[..., 1]).sum(-1), 0.0, atol=1e-12)
    distinct = np.abs(ref_vals[:, 1] - ref_vals[:, 0]) > 1e-6
    dots = np.abs((vecs[..., 1] * ref_vecs[..., 1]).sum(-1))
    np.testing.assert_allclose(dots[distinct], 1.0, atol=1e-9)  # the same direction, up to its sign


def _lstsq_fit(flow, X, weight):
    X, U, w0 = X.reshape(-1, 3), flow.reshape(-1, 2), weight.reshape(-1)
    w = w0
    for _ in range(5):
        sw = np.sqrt(w)[:, None]
        coef = np.linalg.lstsq(X * sw, U * sw, rcond=None)[0]
        w = w0 / (1 + (np.linalg.norm(U - X @ coef, axis=1) / frames.MOTION_ROBUST) ** 2)
    return coef


def test_affine_fit_matches_least_squares_also_when_singular():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:30, 0:30].astype(float)
    X = np.stack([np.ones_like(xx), xx - 15, yy - 15], -1)
    true = np.array([[0.4, -0.2], [0.01, 0.002], [-0.003, 0.02]])
    flow = X @ true + rng.normal(scale=0.05, size=(30, 30, 2))
    flow[5:9, 5:9] += 2.0  # a part that moved on its own: the robust fit ignores it
    weight = rng.uniform(0.05, 0.2, size=(30, 30))
    coef = frames._affine_fit(flow, X, weight)
    np.testing.assert_allclose(coef, _lstsq_fit(flow, X, weight), atol=1e-10)
    np.testing.assert_allclose(coef, true, atol=0.02)
    one_row = np.zeros((30, 30))
    one_row[12, 3:20] = 0.1  # every textured block on one line: the normal equations are singular
    np.testing.assert_allclose(frames._affine_fit(flow, X, one_row), _lstsq_fit(flow, X, one_row), atol=1e-10)
