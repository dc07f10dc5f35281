"""Local improvement of a chain: 2-opt and Or-opt moves with k-NN candidates.

The chain is closed into a cycle through a dummy node (distance 0 to everything), so its two
ends may move. A node queue ("don't look bits"), worst nodes first; a move is applied only if
it shortens the chain by more than ``eps``, so the result is never longer than the input.
Deterministic: no randomness, no wall-clock budget unless asked for.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable, Optional

import numpy as np

Progress = Optional[Callable[[int, int], None]]


def _f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else a.astype(np.float32)


def pair_dist(X: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Cosine distances 1 - <X[a], X[b]> (clipped at 0) of unit rows, pair by pair."""
    out = np.empty(len(a), dtype=np.float32)
    for s in range(0, len(a), chunk):
        out[s:s + chunk] = 1.0 - np.einsum("ij,ij->i", _f32(X[a[s:s + chunk]]), _f32(X[b[s:s + chunk]]))
    return np.maximum(out, 0.0)


class _Tour:
    """The chain as a cycle through a dummy node ``n`` (distance 0 to everything), so the
    two ends of the chain are free to change. Cyclic array ``C`` with positions ``pos``
    and position-indexed edge lengths ``EL[p] = d(C[p], C[p+1])``. The one primitive,
    :meth:`exchange`, is a 2-opt move that reverses the shorter of the two arcs."""

    def __init__(self, X: np.ndarray, order: np.ndarray, steps: np.ndarray):
        n = len(order)
        self.X = X
        self.n = n
        self.m = m = n + 1
        self.C = np.empty(m, dtype=np.int64)
        self.C[:n] = order
        self.C[n] = n
        self.pos = np.empty(m, dtype=np.int64)
        self.pos[self.C] = np.arange(m)
        self.EL = np.zeros(m, dtype=np.float64)
        self.EL[:n - 1] = steps[1:]
        self.reversed_elems = 0

    def dist(self, a: int, b: int) -> float:
        if a == self.n or b == self.n:
            return 0.0
        v = 1.0 - float(_f32(self.X[a]) @ _f32(self.X[b]))
        return v if v > 0.0 else 0.0

    def succ(self, a: int) -> int:
        p = int(self.pos[a]) + 1
        return int(self.C[p if p < self.m else 0])

    def pred(self, a: int) -> int:
        return int(self.C[int(self.pos[a]) - 1])

    def _reverse(self, i: int, L: int) -> None:
        """Reverse the L elements at cyclic positions i .. i+L-1 (boundary EL not set)."""
        m = self.m
        if L < 2:
            return
        self.reversed_elems += L
        C, pos, EL = self.C, self.pos, self.EL
        if i + L <= m:
            seg = C[i:i + L][::-1].copy()
            C[i:i + L] = seg
            pos[seg] = np.arange(i, i + L)
            EL[i:i + L - 1] = EL[i:i + L - 1][::-1].copy()
        else:
            idx = (i + np.arange(L)) % m
            seg = C[idx][::-1]
            C[idx] = seg
            pos[seg] = idx
            e = idx[:-1]
            EL[e] = EL[e][::-1]

    def reverse_arc(self, f: int, t: int) -> None:
        """Reverse the path going forward from node f to node t (or, equivalently for the
        cycle, its complement - whichever is shorter)."""
        m = self.m
        i = int(self.pos[f])
        j = int(self.pos[t])
        L = (j - i) % m + 1
        if 2 * L > m:
            i, L = (j + 1) % m, m - L
        if L < 1:
            return
        self._reverse(i, L)
        C = self.C
        a = (i - 1) % m
        b = (i + L - 1) % m
        self.EL[a] = self.dist(int(C[a]), int(C[(a + 1) % m]))
        self.EL[b] = self.dist(int(C[b]), int(C[(b + 1) % m]))

    def exchange(self, a: int, b: int, c: int, d: int) -> None:
        """Remove edges (a,b), (c,d); add (a,c), (b,d). Requires either succ(a)==b and
        succ(c)==d, or pred(a)==b and pred(c)==d."""
        if self.succ(a) == b:
            self.reverse_arc(b, c)
        else:
            self.reverse_arc(a, d)

    def path(self) -> np.ndarray:
        m = self.m
        s = int(self.pos[self.n]) + 1
        idx = (s + np.arange(self.n)) % m
        return self.C[idx].copy()


def _oropt(T: _Tour, s1: int, sL: int, L: int, outer_a: int, outer_o: int, b: int, w: int):
    """Move the chain segment s1..sL (L points; s1 next to ``outer_a``, sL next to
    ``outer_o``) between the adjacent nodes b and w, with s1 next to b."""
    p, nn = outer_a, outer_o
    # orient: (u, v) = edge (b, w) directed like p -> s1
    same = (T.succ(p) == s1) == (T.succ(b) == w)
    u, v = (b, w) if same else (w, b)
    # after these exchanges: p-nn, u-sL, s1-v (segment reversed w.r.t. u->v)
    if v == p:
        T.exchange(u, p, sL, nn)
    elif u == nn:
        T.exchange(p, s1, nn, v)
    else:
        T.exchange(p, s1, u, v)
        T.exchange(p, u, nn, sL)
    if L > 1 and b == u:  # want b next to s1
        T.exchange(u, sL, s1, v)


def _initial_queue(order: np.ndarray, steps: np.ndarray, Ic: np.ndarray, Dc: np.ndarray,
                   eps: float) -> np.ndarray:
    """Nodes worth examining, worst first: by decreasing excess of their longest chain edge
    over their nearest-neighbour distance (ties -> lower id). A node whose chain neighbours
    are its two nearest neighbours has no candidate move and is left out."""
    n = len(order)
    mc = Ic.shape[1]
    e_after = np.zeros(n)
    e_after[order[:-1]] = steps[1:]
    e_before = np.zeros(n)
    e_before[order[1:]] = steps[1:]
    emax_all = np.maximum(e_after, e_before)
    excess = emax_all - Dc[:, 0]
    prv = np.full(n, -1, dtype=np.int64)
    nxt = np.full(n, -1, dtype=np.int64)
    prv[order[1:]] = order[:-1]
    nxt[order[:-1]] = order[1:]
    n1_adj = (Ic[:, 0] == prv) | (Ic[:, 0] == nxt)
    settled = n1_adj & ((emax_all - Dc[:, min(1, mc - 1)]) <= eps)
    cand = np.flatnonzero((excess > eps) & ~settled)
    return cand[np.lexsort((cand, -excess[cand]))]


def _segments(T: _Tour, pa: int, around: tuple, nearest: float, max_seg: int,
              run_thr: float, max_run: int) -> list:
    """Or-opt segments with ``a`` at one end, going forward (a, succ a, ...) or backward,
    as (fwd, L, outer_a, other_end, outer_other, e_outer_a, e_outer_other): lengths
    1..max_seg, plus the whole run up to the next long edge (a cluster fragment) when the
    edge leaving ``a`` on the other side is long. ``around`` = (a_p, a_s, e_p, e_s)."""
    a_p, a_s, e_p, e_s = around
    m, C, DUM = T.m, T.C, T.n
    segs = []
    for fwd, e_out, outer_a in ((True, e_p, a_p), (False, e_s, a_s)):
        if e_out <= nearest:
            continue
        lens = list(range(1, max_seg + 1))
        if e_out > run_thr:
            if fwd:
                idx = (pa + np.arange(max_run)) % m if pa + max_run > m else slice(pa, pa + max_run)
            else:
                idx = (pa - 1 - np.arange(max_run)) % m
            hit = np.flatnonzero(T.EL[idx] > run_thr)
            if len(hit):
                Lr = int(hit[0]) + 1
                if Lr > max_seg:
                    lens.append(Lr)
        for L in lens:
            if L + 3 > m:
                break
            if fwd:
                q = pa + L - 1
                other = int(C[q % m])
                outer_o = int(C[(q + 1) % m])
                e_o = float(T.EL[q % m])
            else:
                q = pa - L + 1
                other = int(C[q % m])
                outer_o = int(C[(q - 1) % m])
                e_o = float(T.EL[(q - 1) % m])
            # the segment must not contain the dummy; outer nodes must lie outside
            dp = (int(T.pos[DUM]) - pa) % m if fwd else (pa - int(T.pos[DUM])) % m
            if dp < L or outer_a == outer_o:
                continue
            segs.append((fwd, L, outer_a, other, outer_o, e_out, e_o))
    return segs


def _best_move(T: _Tour, X: np.ndarray, a: int, pa: int, around: tuple, nb: list, segs: list,
               eps: float):
    """The best improving move at ``a`` (gain > eps) among 2-opt with each candidate b
    (either side) and moving each segment next to b: (gain, move) or (eps, None).
    Moves: ("2s", b, succ b), ("2p", b, pred b), ("or", segment index, b, w)."""
    a_p, a_s, e_p, e_s = around
    m, DUM = T.m, T.n
    # all distances needed: rows = {other ends, a_s, a_p}, cols = {succ b, pred b}
    bs = [b for b, _ in nb]
    bsucc = [T.succ(b) for b in bs]
    bpred = [T.pred(b) for b in bs]
    W = bsucc + bpred
    Eset = {a_s, a_p}
    for sg in segs:
        Eset.add(sg[3])
    Elist = sorted(Eset)
    Wr = [w if w != DUM else 0 for w in W]
    Er = [e if e != DUM else 0 for e in Elist]
    M = 1.0 - _f32(X[Er]) @ _f32(X[Wr]).T
    np.maximum(M, 0.0, out=M)
    Mi = {e: i for i, e in enumerate(Elist)}
    nbw = len(bs)
    # removal gains of segments: e_outer_a + e_outer_other - d(outer_a, outer_other)
    rem = []
    if segs:
        P1 = [sg[2] for sg in segs]
        P2 = [sg[4] for sg in segs]
        rv = 1.0 - np.einsum("ij,ij->i", _f32(X[[p if p != DUM else 0 for p in P1]]),
                             _f32(X[[p if p != DUM else 0 for p in P2]]))
        for sg, r, p1, p2 in zip(segs, rv.tolist(), P1, P2):
            dj = 0.0 if (p1 == DUM or p2 == DUM) else max(0.0, r)
            rem.append(sg[5] + sg[6] - dj)

    def md(e, wi):
        w = W[wi]
        if w == DUM or e == DUM:
            return 0.0
        return float(M[Mi[e], wi])

    best_g, best = eps, None
    for bi, (b, dab) in enumerate(nb):
        b_s = bsucc[bi]
        b_p = bpred[bi]
        pb = int(T.pos[b])
        eb_s = float(T.EL[pb])
        eb_p = float(T.EL[pb - 1])
        # 2-opt: remove (a,a_s),(b,b_s); add (a,b),(a_s,b_s)
        if dab < e_s and b != a_s and b_s != a:
            g = e_s + eb_s - dab - md(a_s, bi)
            if g > best_g:
                best_g, best = g, ("2s", b, b_s)
        # 2-opt: remove (a_p,a),(b_p,b); add (a,b),(a_p,b_p)
        if dab < e_p and b != a_p and b_p != a:
            g = e_p + eb_p - dab - md(a_p, nbw + bi)
            if g > best_g:
                best_g, best = g, ("2p", b, b_p)
        # or-opt: move segment next to b (edge (b, a)), other end next to w
        if segs:
            rb = pb - pa
            rbs = int(T.pos[b_s]) - pa
            rbp = int(T.pos[b_p]) - pa
        for si, sg in enumerate(segs):
            fwd, L = sg[0], sg[1]
            if ((rb if fwd else -rb) % m) < L:  # b inside the segment
                continue
            r = rem[si]
            if r - dab <= best_g:
                continue
            other = sg[3]
            for wi, rw, ebw in ((bi, rbs, eb_s), (nbw + bi, rbp, eb_p)):
                if ((rw if fwd else -rw) % m) < L:
                    continue
                g = r - (dab + md(other, wi) - ebw)
                if g > best_g:
                    best_g, best = g, ("or", si, b, W[wi])
    return best_g, best


def _apply(T: _Tour, move: tuple, a: int, around: tuple, segs: list, max_seg: int,
           moves: dict) -> tuple:
    """Apply ``move`` (from :func:`_best_move`) to the tour; count it in ``moves``; return the
    endpoints of the changed edges (to be examined again)."""
    a_p, a_s = around[0], around[1]
    if move[0] == "2s":
        _, b, b_s = move
        T.exchange(a, a_s, b, b_s)
        moves["2opt"] += 1
        return a, a_s, b, b_s
    if move[0] == "2p":
        _, b, b_p = move
        T.exchange(a, a_p, b, b_p)
        moves["2opt"] += 1
        return a, a_p, b, b_p
    _, si, b, w = move
    _, L, outer_a, other, outer_o = segs[si][:5]
    _oropt(T, a, other, L, outer_a, outer_o, b, w)
    moves["oropt"] += 1
    if L > max_seg:
        moves["runs"] += 1
    return a, other, outer_a, outer_o, b, w


def improve(X, order, steps, I, D, progress: Progress, seconds: Optional[float],
            run_thr: float = np.inf, max_cand: int = 8, max_seg: int = 3, max_run: int = 2000,
            eps: float = 1e-5, max_evals: Optional[int] = None):
    """2-opt and Or-opt (segments of 1..max_seg points, either orientation) with the k-NN
    lists as candidates, on the chain closed through a dummy node (so the ends may move).

    Node-queue local search ("don't look bits"): a node is examined for moves that add an
    edge from it to one of its ``max_cand`` nearest neighbours that is shorter than the
    chain edge the move removes next to it (the usual gain criterion), the best improving
    move is applied, and the endpoints of all changed edges are queued again. Nodes are
    first queued by decreasing excess of their longest chain edge over their
    nearest-neighbour distance, so a time budget spends itself on the worst places.
    Returns (order, steps, stats)."""
    n = len(order)
    t0 = time.perf_counter()
    T = _Tour(X, order, steps)
    DUM = n
    mc = int(min(max_cand, I.shape[1]))
    Ic = I[:, :mc]
    Dc = D[:, :mc].astype(np.float64)
    before = float(np.sum(steps, dtype=np.float64))

    cand = _initial_queue(order, steps, Ic, Dc, eps)
    queue = deque(cand.tolist())
    inq = bytearray(n + 1)
    for a in cand.tolist():
        inq[a] = 1
    n_initial = len(queue)
    moves = {"2opt": 0, "oropt": 0, "runs": 0}
    evaluated = 0
    gain_total = 0.0
    timed_out = False

    while queue:
        if max_evals is not None and evaluated >= max_evals:
            timed_out = True
            break
        if seconds is not None and (evaluated & 255) == 0 and time.perf_counter() - t0 > seconds:
            timed_out = True
            break
        a = queue.popleft()
        inq[a] = 0
        evaluated += 1
        if progress and (evaluated & 4095) == 0:
            progress(min(evaluated, n_initial), max(1, n_initial))
        pa = int(T.pos[a])
        a_s = int(T.C[pa + 1 if pa + 1 < T.m else 0])
        a_p = int(T.C[pa - 1])
        e_s = float(T.EL[pa])
        e_p = float(T.EL[pa - 1])
        emax = e_s if e_s > e_p else e_p
        nb = []  # candidates b: nearest neighbours closer than a's longer chain edge
        for b, dab in zip(Ic[a].tolist(), Dc[a].tolist()):
            if dab >= emax:
                break
            nb.append((b, dab))
        if not nb:
            continue
        around = (a_p, a_s, e_p, e_s)
        segs = _segments(T, pa, around, nb[0][1], max_seg, run_thr, max_run)
        gain, move = _best_move(T, X, a, pa, around, nb, segs, eps)
        if move is None:
            continue
        for v in _apply(T, move, a, around, segs, max_seg, moves):
            if v != DUM and not inq[v]:
                inq[v] = 1
                queue.append(v)
        gain_total += gain

    path = T.path()
    new_steps = np.zeros(n, dtype=np.float32)
    if n > 1:
        new_steps[1:] = pair_dist(X, path[:-1], path[1:])
    after = float(np.sum(new_steps, dtype=np.float64))
    st = {"before": before, "after": after, "moves_2opt": moves["2opt"],
          "moves_oropt": moves["oropt"], "moves_runs": moves["runs"], "evaluated": evaluated,
          "initial_queue": n_initial, "stopped_early": timed_out,
          "reversed_elements": T.reversed_elems, "gain_of_moves": gain_total,
          "seconds": time.perf_counter() - t0}
    if after > before:  # cannot happen barring float noise; keep the better one
        return order, steps, st
    return path, new_steps, st
