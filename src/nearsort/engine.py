"""Engines: where the per-file work of ``resize`` and ``featurize`` runs.

``local`` (the default): on this machine -- resize's worker processes (``workers.Workers``),
featurize's decode threads and one model (``embed.embedder.embed_files``).

``ray``: on a Ray cluster (``address``; None: ``$RAY_ADDRESS``, else the cluster ``ray start``
made on this machine, else a Ray started here for this process). resize decodes each original in
a Ray task (:class:`RayWorkers`, the same interface as ``workers.Workers``), so every worker must
see SRC at the same path (the NAS mounted at the same place on all machines); featurize runs the
model in Ray actors (:func:`start_actors`: one per GPU when the cluster has GPUs, else one per node
holding all its CPUs), each loading the model once, fed the thumbnails' bytes by this process
(THUMBS stays local). Workers only return results: this process stays the single catalog writer,
with the same code and the same crash-consistency as the local engine, so an interrupted Ray run
resumes like a local one. nearsort's own code is shipped to the workers with the job (Ray's
``py_modules``); its dependencies must be installed there (``pip install 'nearsort[ray]'``).

Ray is imported here only, and only when engine == "ray".
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Callable, Iterator

from nearsort.errors import BadArgument, EngineError
from nearsort.workers import Died

ENGINES = ("local", "ray")
INSTALL = "pip install 'nearsort[ray]'"
CONNECT_TIMEOUT = 10.0  # seconds to reach a cluster's address before saying it cannot be reached


def check(engine: str, address: str | None) -> str:
    """The engine's name, lower case; BadArgument for an unknown one, or an address without ray."""
    engine = (engine or "local").lower()
    if engine not in ENGINES:
        raise BadArgument(f"unknown --engine {engine!r}; use {' or '.join(ENGINES)}")
    if address and engine != "ray":
        raise BadArgument("--address is the address of a Ray cluster: give it with --engine ray")
    return engine


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _reachable(address: str) -> None:
    """A plain TCP connect to HOST:PORT first: ray.init retries an address that answers nothing for
    minutes before it gives up."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise EngineError(f"--address {address!r} is not HOST:PORT (the address `ray start --head` prints, "
                          "e.g. 192.168.1.10:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        raise EngineError(f"cannot reach the Ray cluster at {address} ({_one_line(e)}): start it there with "
                          "`ray start --head`, or check the address and the firewall") from e


def connect(address: str | None = None):
    """The ``ray`` module, connected to the cluster (once per process: a process already connected,
    e.g. by the caller's own ``ray.init``, keeps its connection). EngineError with the way out when
    Ray is not installed or the cluster cannot be reached."""
    try:
        import ray
    except ImportError as e:
        raise EngineError(f"--engine ray needs Ray, which is not installed here ({_one_line(e)}): {INSTALL}, "
                          "on this machine and on every machine of the cluster") from e
    if ray.is_initialized():
        return ray
    address = address or None
    if address and "://" not in address:
        _reachable(address)
    package = os.path.dirname(os.path.abspath(__file__))  # this nearsort, shipped to the workers with the job
    try:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False, runtime_env={"py_modules": [package]})
    except Exception as e:  # ConnectionError, version mismatch (RuntimeError), bad token ...
        where = f"at {address}" if address else "(RAY_ADDRESS, or a new one on this machine)"
        chain, c = [], e
        while c is not None:
            chain.append(str(c))
            c = c.__cause__
        if any("InvalidAuthToken" in m or "authentication token" in m.lower() for m in chain):
            why = ("it wants an authentication token (Ray's default): set RAY_AUTH_MODE=token and give this machine "
                   "the head's token (`ray get-auth-token` there) in ~/.ray/auth_token or $RAY_AUTH_TOKEN")
        else:
            why = _one_line(e)
        raise EngineError(f"cannot connect to the Ray cluster {where}: {why}") from e
    _errors_to_stderr(ray)
    return ray


def _errors_to_stderr(ray) -> None:
    """Ray's driver prints what the cluster reports (a worker that died on a file ...) on stdout, where
    ``--json`` goes: on stderr instead. (With log_to_driver off, this is all its printer prints.)"""
    module = getattr(getattr(ray, "_private", None), "worker", None)
    printer = getattr(module, "print_to_stdstream", None)
    if printer is None or getattr(printer, "nearsort", False):
        return

    def to_stderr(data, *args, **kwargs):
        return printer({**data, "is_err": True}, *args, **kwargs)

    to_stderr.nearsort = True  # type: ignore[attr-defined]
    module.print_to_stdstream = to_stderr


def get(refs):
    """``ray.get``, with the error a worker raised on purpose (a nearsort error: a model that cannot be
    loaded ...) raised here as itself, and Ray's own failures as one EngineError line."""
    import ray
    from ray.exceptions import RayError, RayTaskError

    try:
        return ray.get(refs)
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, Exception):
            raise cause from None
        raise EngineError(f"a Ray worker failed: {_one_line(e)}") from e
    except RayError as e:
        raise EngineError(f"the Ray cluster failed ({type(e).__name__}): {_one_line(e)}; everything committed "
                          "so far is kept: run the same command again to continue") from e


def gpus() -> int:
    """GPUs in the connected cluster."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def start_actors(cls: type, args: tuple, *, gpu: bool) -> list:
    """Ray actors of ``cls(*args)``: one per GPU of the cluster (``gpu``), else one per node, holding
    all of the node's CPUs (the model uses them all). An actor that dies is not restarted: the stage
    fails with one line, keeping what it committed (run it again to continue)."""
    import ray

    actor = ray.remote(cls)
    if gpu:
        n = gpus()
        if not n:
            raise EngineError("the Ray cluster has no GPU: give --device cpu (or add a machine with a GPU)")
        return [actor.options(num_gpus=1, num_cpus=1).remote(*args) for _ in range(n)]
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [(n["NodeID"], int(n.get("Resources", {}).get("CPU", 0))) for n in ray.nodes() if n.get("Alive")]
    out = [actor.options(num_cpus=cpus, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
           .remote(*args) for node, cpus in nodes if cpus >= 1]
    if not out:
        raise EngineError("the Ray cluster has no CPU to run the model on")
    return out


def stop_actors(actors: list) -> None:
    import ray

    for a in actors:
        try:
            ray.kill(a)
        except Exception:  # noqa: BLE001 - already gone
            pass


class RayWorkers:
    """``fn(task)`` as Ray tasks on the cluster -- or, given ``actors``, as ``actor.<method>(task)``
    calls spread over them -- with the interface of ``workers.Workers`` (``submit`` while ``room()``,
    ``results(timeout)`` -> ``(task, answer)`` pairs in any order, ``busy()``, ``depth``), so the
    loop that drives one drives the other.

    Up to ``depth`` tasks per CPU of the cluster (``n``: at most that many CPUs) or per actor are in
    flight. A task whose Ray worker process dies (a crashing decoder, Ray's memory monitor) is tried
    ``tries`` times in all by Ray, then answered with a ``Died`` (the local pool's answer); an
    exception ``fn`` raised is raised again by ``results``. On leaving, tasks still running are
    cancelled.
    """

    def __init__(self, fn: Callable | None = None, *, n: int | None = None, depth: int = 4, tries: int = 2,
                 address: str | None = None, actors: list | None = None, method: str = ""):
        self.fn, self.n, self.depth, self.tries, self.address = fn, n, depth, tries, address
        self.actors, self.method = actors, method
        self.pending: dict = {}  # ObjectRef -> (task, actor index or None)
        self.load: list[int] = [0] * len(actors or ())
        self.ray = None
        self._remote = None

    def __enter__(self) -> "RayWorkers":
        self.ray = ray = connect(self.address)
        if self.actors is None:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
            self.n = min(self.n, cpus) if self.n else cpus
            self._remote = ray.remote(num_cpus=1, max_retries=self.tries - 1)(self.fn)
        else:
            self.n = len(self.actors)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def room(self) -> int:
        return max(0, (self.n or 1) * self.depth - len(self.pending))

    def busy(self) -> int:
        return len(self.pending)

    def submit(self, task) -> None:
        if self.actors is None:
            self.pending[self._remote.remote(task)] = (task, None)
            return
        i = min(range(len(self.actors)), key=self.load.__getitem__)
        self.load[i] += 1
        self.pending[getattr(self.actors[i], self.method).remote(task)] = (task, i)

    def results(self, timeout: float | None) -> list[tuple]:
        if not self.pending:
            return []
        from ray.exceptions import OutOfMemoryError, WorkerCrashedError

        refs = list(self.pending)
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:  # and every other one ready by now
            ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0)
        out = []
        for ref in ready:
            task, i = self.pending.pop(ref)
            if i is not None:
                self.load[i] -= 1
            try:
                answer = get(ref)
            except EngineError as e:
                cause = e.__cause__
                if isinstance(cause, WorkerCrashedError):
                    answer = Died(0, "crashed (its Ray worker process died)")
                elif isinstance(cause, OutOfMemoryError):
                    answer = Died(0, "was killed by Ray's memory monitor (out of memory)")
                else:
                    raise
            out.append((task, answer))
        return out

    def close(self) -> None:
        for ref in self.pending:
            try:
                self.ray.cancel(ref, force=self.actors is None)
            except Exception:  # noqa: BLE001 - finished or gone meanwhile
                pass
        self.pending.clear()


@contextlib.contextmanager
def local_head(num_cpus: int = 2, env: dict | None = None, timeout: float = 180.0) -> Iterator[tuple[str, dict]]:
    """A Ray head on this machine for a test or a benchmark: ``ray start --head --block`` with
    ``num_cpus`` CPUs, a temp dir and an authentication token of its own, stopped on leaving (by its
    pid, never ``ray stop``, which stops every cluster on the machine). Yields (address, the
    environment a driver needs to reach it: ``env`` + RAY_AUTH_MODE and RAY_AUTH_TOKEN)."""
    tmp = tempfile.mkdtemp(prefix="nsray", dir="/tmp" if os.path.isdir("/tmp") else None)  # socket paths: short
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**(os.environ if env is None else env), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
    log = os.path.join(tmp, "ray-start.log")
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                                 "--num-cpus", str(num_cpus), "--port", str(port), "--include-dashboard", "false",
                                 "--disable-usage-stats", "--temp-dir", os.path.join(tmp, "ray")],
                                env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with open(log, errors="replace") as fh:
                text = fh.read()
            if "block forever" in text:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise EngineError("the local Ray head did not start: " + " ".join(text[-600:].split()))
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", dict(env)
    finally:
        proc.terminate()  # `ray start --block` stops the processes it started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its session is left
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
