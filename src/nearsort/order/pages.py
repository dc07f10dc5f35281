"""Cut a chain into pages (folders): where a new page starts.

Exact dynamic programme over cut positions; pages stay within [min, max] items (no tiny
folders), cuts go to the biggest jumps. Pure, deterministic.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["cut_points"]


def cut_points(steps, max_per_page: int = 500, *, min_per_page: Optional[int] = None,
               threshold: Optional[float] = None) -> list:
    """Where to split a chain into consecutive pages of at most ``max_per_page`` items.

    Returns the sorted chain positions where a new page starts (0 excluded), so pages
    are ``order[0:c1], order[c1:c2], ...``. Cutting before position i "uses" the jump
    ``steps[i]``. Exact dynamic programme maximising the sum over cuts of
    ``steps[i] - threshold``: it cuts at every jump larger than ``threshold`` that keeps
    pages within [min_per_page, max_per_page], and where a cut is forced by the page limit
    it takes the largest jumps available. ``threshold`` defaults to the step quantile
    1 - 2/max_per_page, but at least 3x the median step, ``min_per_page`` to
    max_per_page // 5 (no tiny folders, except when the whole chain is shorter).
    O(n * (max - min)) vectorised in blocks of ``min_per_page``.
    """
    st = np.asarray(steps, dtype=np.float64).ravel()
    n = len(st)
    M = int(max_per_page)
    if M < 1:
        raise ValueError("max_per_page must be >= 1")
    if n <= M:
        return []
    mn = max(1, M // 5) if min_per_page is None else int(min_per_page)
    mn = max(1, min(mn, (M + 1) // 2))  # keeps every n > M feasible
    if threshold is None:
        body = st[1:]
        threshold = max(float(np.quantile(body, max(0.0, 1.0 - 2.0 / M))),
                        3.0 * float(np.median(body)))
    # gain[i]: cutting before position i; the tiny penalty prefers fewer pages on ties
    gain = st - threshold - 1e-9 * (1.0 + abs(threshold))
    NEG = -np.inf
    best = np.full(n + 1, NEG)  # best[c]: best score of pages covering [0, c) with a page ending at c
    best[0] = 0.0
    par = np.full(n + 1, -1, dtype=np.int64)
    # best[c] = max_{c-M <= p <= c-mn} best[p] (+ gain[c] if c < n)
    for c0 in range(mn, n + 1, mn):
        c1 = min(n + 1, c0 + mn)
        cs = np.arange(c0, c1)
        lo = np.maximum(cs - M, 0)
        hi = cs - mn  # inclusive; < c0 so already final
        width = M - mn + 1
        # candidate p for each c: p in [lo, hi]; gather via a padded 2-D window
        P = lo[:, None] + np.arange(width)[None, :]
        valid = P <= hi[:, None]
        vals = np.where(valid, best[np.minimum(P, n)], NEG)
        # ties: prefer the latest p (fewer, larger pages)
        j = width - 1 - np.argmax(vals[:, ::-1], axis=1)
        v = vals[np.arange(len(cs)), j]
        add = np.where(cs < n, gain[np.minimum(cs, n - 1)], 0.0)
        best[cs] = v + add
        par[cs] = np.where(np.isfinite(v), P[np.arange(len(cs)), j], -1)
    if not np.isfinite(best[n]):  # cannot happen with mn <= (M+1)//2; be safe
        return list(range(M, n, M))
    cuts = []
    c = n
    while c > 0:
        p = int(par[c])
        if p < 0:
            return list(range(M, n, M))
        if p > 0:
            cuts.append(p)
        c = p
    return sorted(cuts)
