"""Worker processes: the one place that chooses how they start, and the pool resize decodes in.

fork where it is safe (Linux, no other Python thread running): a script that uses nearsort as a
library needs no ``if __name__ == "__main__":`` guard, and workers start without re-importing
anything. Elsewhere forkserver (POSIX) or spawn (Windows), which re-import the main module: there
the caller's script needs the guard, as for any multiprocessing code.

``Workers`` runs a function in worker processes that may die at any moment (a native decoder
crashing with SIGSEGV, the OOM killer's SIGKILL) without ever hanging the caller: each worker has
a pipe of its own, so no lock is shared that a dying process could take with it, and each does its
tasks in order, so the task a dead worker was on is known exactly. A worker that spends more than
``timeout`` seconds on one task (a decoder stuck in a loop) is killed and replaced the same way.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import wait as _wait_ready
from typing import Callable, NamedTuple


def pool_context():
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return mp.get_context("fork")
    return mp.get_context("spawn" if os.name == "nt" else "forkserver")


def worker_setup(parent: int | None = None) -> None:
    """What every worker process does first: leave Ctrl-C to the parent, one OpenMP thread, and
    die with the parent. ``parent``: the pid the parent must have (fork), else None."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    die_with_parent(parent)


def die_with_parent(parent: int | None) -> None:
    """Make this worker end when the process that started it dies, even by ``kill -9``: an orphan
    would go on decoding (or wait on a file forever). Linux: the kernel sends SIGKILL
    (PR_SET_PDEATHSIG); elsewhere a thread watches for the parent to change. ``parent``: the pid
    the parent must have (fork), to catch a parent that died before this ran."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            armed = ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) == 0  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            armed = False
    ppid = os.getppid()
    if parent is not None and ppid != parent:
        os._exit(1)
    if not armed:
        def watch():
            while os.getppid() == ppid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True, name="nearsort-parent-watch").start()


class Died(NamedTuple):
    """The result of a task whose worker process died on it every time it was tried."""

    exitcode: int  # -N: killed by signal N (Process.exitcode)
    reason: str = ""  # what else said how it died (a Ray worker: engine.RayWorkers)

    def describe(self) -> str:
        """'crashed (signal 11, SIGSEGV)', 'was killed (signal 9, SIGKILL: out of memory?)', ..."""
        if self.reason:
            return self.reason
        if self.exitcode < 0:
            n = -self.exitcode
            try:
                name = signal.Signals(n).name
            except ValueError:
                name = "unknown signal"
            if n == signal.SIGKILL:
                return f"was killed (signal {n}, {name}: out of memory?)"
            return f"crashed (signal {n}, {name})"
        return f"ended abruptly (exit code {self.exitcode})"


class Hung(NamedTuple):
    """The result of a task its worker spent more than ``seconds`` on: the worker was killed."""

    seconds: float

    def describe(self) -> str:
        return f"hung on this file for {self.seconds:g} s"


class WorkerError(RuntimeError):
    """Worker processes could not run at all (they die before doing anything)."""


def _serve(conn, fn: Callable, parent: int | None, inherited: list) -> None:
    """A worker's loop: a task from its pipe, ``fn(task)``, the answer back, in order; None ends it."""
    for c in inherited:  # fork: the parent's ends of the pipes, copied into this process
        c.close()
    worker_setup(parent)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            answer = (True, fn(task))
        except BaseException as e:  # raised again in the parent, as multiprocessing.Pool does
            answer = (False, e)
        try:
            conn.send(answer)
        except (BrokenPipeError, EOFError):
            return
        except Exception as e:  # an answer that cannot be pickled
            conn.send((False, RuntimeError(f"{type(e).__name__}: {e}")))


class _Worker:
    __slots__ = ("proc", "conn", "tasks", "done", "since", "hung")

    def __init__(self, proc, conn):
        self.proc, self.conn = proc, conn
        self.tasks: deque[list] = deque()  # [task, deaths] sent to it, oldest (the one it is on) first
        self.done = 0
        self.since = 0.0        # monotonic time it began the oldest task (at the latest)
        self.hung: list | None = None  # the task it was killed for taking too long on


class Workers:
    """``fn(task)`` in ``n`` worker processes that may die at any time without hanging anything.

    ``submit`` while ``room()``; ``results(timeout)`` returns ``(task, answer)`` pairs as they
    come, in any order. A worker that dies is replaced; the task it was on is tried once more
    (``tries`` times in all: the OOM killer may have picked it for another's sake), the tasks
    queued behind it are handed out again, and a task its worker died on every time comes back
    with a ``Died`` answer. A worker that has been on one task for more than ``timeout`` seconds
    (None: no limit) is killed and replaced, that task comes back at once with a ``Hung`` answer
    (a hang is not retried: it would cost the timeout again), the others are handed out again.
    Up to ``depth`` tasks are queued per worker, so none waits while the
    parent is busy (a commit) or not scheduled; lower ``depth`` towards the end of the work, so
    that no worker is left with a queue while the others are idle.
    An exception raised by ``fn`` is raised again by ``results``. Use as a context manager: on
    leaving, idle workers are told to stop, the rest are killed.
    """

    def __init__(self, n: int, fn: Callable, *, depth: int = 4, tries: int = 2, timeout: float | None = None):
        self.n, self.fn, self.depth, self.tries, self.timeout = max(1, n), fn, depth, tries, timeout
        self.workers: list[_Worker] = []
        self.again: deque[list] = deque()  # tasks to hand out before any new one
        self.failed_starts = 0
        self.ctx = None

    def __enter__(self) -> "Workers":
        # One start method for the whole run, chosen now (fork if no other thread runs yet): a
        # worker replacing a dead one is forked even while the caller's threads run (as
        # multiprocessing.Pool does), so a script without a __main__ guard keeps working. That
        # is safe here because the child runs nothing but _serve and fn, never the code of the
        # caller's other threads (their locks, their SQLite connections).
        self.ctx = pool_context()
        for _ in range(self.n):
            self._start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(kill=exc_type is not None)

    def _start(self) -> None:
        ctx = self.ctx
        fork = ctx.get_start_method() == "fork"
        mine, theirs = ctx.Pipe(duplex=True)
        inherited = [mine] + [w.conn for w in self.workers] if fork else []
        proc = ctx.Process(target=_serve, args=(theirs, self.fn, os.getpid() if fork else None, inherited),
                           daemon=True, name="nearsort-worker")
        proc.start()
        theirs.close()
        self.workers.append(_Worker(proc, mine))

    def room(self) -> int:
        """How many new tasks can be submitted now."""
        free = sum(max(0, self.depth - len(w.tasks)) for w in self.workers)
        return max(0, free - len(self.again))

    def busy(self) -> int:
        """Tasks submitted and not answered yet."""
        return sum(len(w.tasks) for w in self.workers) + len(self.again)

    def submit(self, task) -> None:
        self.again.append([task, 0])
        self._hand_out()

    def _hand_out(self) -> None:
        while self.again:
            w = min(self.workers, key=lambda w: len(w.tasks))
            if len(w.tasks) >= self.depth:
                return
            entry = self.again.popleft()
            try:
                w.conn.send(entry[0])
            except OSError:  # it just died (or its pipe broke): make sure, results() replaces it
                self.again.appendleft(entry)
                w.tasks.extend([None] * (self.depth - len(w.tasks)))  # full until then; blames nobody
                w.proc.kill()
                continue
            if not w.tasks:
                w.since = time.monotonic()
            w.tasks.append(entry)

    def results(self, timeout: float | None) -> list[tuple]:
        """Answers ready within ``timeout`` seconds (``[]`` if none)."""
        self._hand_out()
        by_key = {}
        for w in self.workers:
            by_key[w.conn] = w
            by_key[w.proc.sentinel] = w
        out: list[tuple] = []
        dead: list[_Worker] = []
        if self.timeout is not None:  # wake up when the first worker's time on its task runs out
            ends = [w.since + self.timeout - time.monotonic() for w in self.workers if w.tasks and w.tasks[0]]
            if ends:
                timeout = max(0.0, min(ends)) if timeout is None else max(0.0, min(timeout, *ends))
        for key in _wait_ready(list(by_key), timeout):
            w = by_key[key]
            if w not in dead and (not self._take(w, out) or key is not w.conn):
                dead.append(w)
        if self.timeout is not None:
            dead += self._stuck(out, dead)
        for w in dead:
            out += self._bury(w)
        self._hand_out()
        return out

    def _take(self, w: _Worker, out: list) -> bool:
        """Move the answers waiting in ``w``'s pipe to ``out``; False once the pipe is closed."""
        try:
            while w.conn.poll():
                ok, answer = w.conn.recv()
                entry = w.tasks.popleft()
                w.done += 1
                w.since = time.monotonic()  # it began the next one when it sent this answer, or later
                self.failed_starts = 0
                if not ok:
                    break
                out.append((entry[0], answer))
            else:
                return True
        except (EOFError, OSError):  # it died (maybe in the middle of an answer)
            return False
        raise answer  # fn raised it in the worker

    def _stuck(self, out: list, dead: list[_Worker]) -> list[_Worker]:
        """Kill the workers that have been on one task for more than ``timeout`` seconds (after
        taking any answer they sent meanwhile: only the task still unanswered is blamed)."""
        stuck = []
        now = time.monotonic()
        for w in self.workers:
            if w in dead or not w.tasks or w.tasks[0] is None or now - w.since <= self.timeout:
                continue
            if not self._take(w, out):
                dead.append(w)
                continue
            if w.tasks and w.tasks[0] is not None and now - w.since > self.timeout:
                w.hung = w.tasks[0]
                w.proc.kill()
                stuck.append(w)
        return stuck

    def _bury(self, w: _Worker) -> list[tuple]:
        """A worker died: take the answers it sent before, blame the task it was on (the oldest
        unanswered: it does them in order), hand the others out again, start a new worker."""
        w.proc.join(5)
        if w.proc.exitcode is None:  # its pipe broke but it lives on: it cannot be trusted
            w.proc.kill()
            w.proc.join()
        out: list[tuple] = []
        self._take(w, out)  # all its descriptors are closed now: every answer it sent is here
        w.conn.close()
        self.workers.remove(w)
        code = w.proc.exitcode
        tasks = [e for e in w.tasks if e is not None]
        if w.hung is not None:  # killed for taking too long: that task (if still unanswered) is blamed
            if tasks and tasks[0] is w.hung:
                out.append((tasks.pop(0)[0], Hung(self.timeout or 0.0)))
        elif tasks:
            culprit = tasks.pop(0)
            culprit[1] += 1
            if culprit[1] >= self.tries:
                out.append((culprit[0], Died(code)))
            else:
                tasks.append(culprit)  # after the innocent ones
        elif not w.done:
            self.failed_starts += 1
            if self.failed_starts > self.n + 2:
                raise WorkerError(f"worker processes keep dying as they start: the last one {Died(code).describe()}")
        self.again.extendleft(reversed(tasks))
        self._start()
        return out

    def close(self, kill: bool = False) -> None:
        """Stop the workers: idle ones are asked to end, busy ones (or all, with ``kill``) are killed."""
        for w in self.workers:
            if kill or w.tasks:
                w.proc.kill()
            else:
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        for w in self.workers:
            w.proc.join(5)
            if w.proc.exitcode is None:
                w.proc.kill()
                w.proc.join()
            w.conn.close()
        self.workers = []
