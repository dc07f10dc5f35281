"""Union-find over 0..n-1 (duplicate groups, the pixel checks' pair order)."""
from __future__ import annotations

import numpy as np


class DSU:
    """Union-find with path halving and union by size."""

    def __init__(self, n: int):
        self.p = np.arange(n, dtype=np.int64)
        self.sz = np.ones(n, dtype=np.int64)

    def find(self, a: int) -> int:
        p = self.p
        while p[a] != a:
            p[a] = p[p[a]]
            a = p[a]
        return int(a)

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if self.sz[ra] < self.sz[rb]:
            ra, rb = rb, ra
        self.p[rb] = ra
        self.sz[ra] += self.sz[rb]
        return True

    def roots(self) -> np.ndarray:
        return np.array([self.find(i) for i in range(len(self.p))], dtype=np.int64)
