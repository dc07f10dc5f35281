"""A decoder that kills its worker process (a native crash: SIGSEGV; the OOM killer: SIGKILL) never
hangs resize: the run finishes, every good file is kept, the file the worker died on (and only it)
is an error with the reason, and the next resize tries it again. Real signals, real subprocesses.

The crash is made by the test-only hook ``NEARSORT_TEST_CRASH="SIGNUM:NAME"`` (nearsort.ingest.resize.CRASH_HOOK):
a worker given a file named NAME kills itself with SIGNUM, where a crashing decoder would; with
``"hang:NAME"`` it loops forever instead, as a decoder stuck in a loop would (resize's --timeout)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import PY, make_photo
from nearsort import Catalog
from nearsort.store import queries

TIMEOUT = 180  # seconds: a run that hangs fails instead of blocking the suite


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "nearsort.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, env=env)


def _errors(out: Path) -> dict[str, str]:
    r = cli("errors", out, "--json")
    assert r.returncode == 0, r.stderr
    return {os.path.basename(e["path"]): e["error"] for e in json.loads(r.stdout)}


@pytest.mark.parametrize("signum, says", [(signal.SIGSEGV, "crashed (signal 11, SIGSEGV)"),
                                          (signal.SIGKILL, "was killed (signal 9, SIGKILL")])
def test_resize_finishes_when_a_decoder_kills_its_worker(tmp_path, signum, says):
    src = tmp_path / "src"
    good = [make_photo(src / f"p{i:02d}.jpg", seed=i, size=(400, 300)).name for i in range(10)]
    make_photo(src / "p05-crash.jpg", seed=99, size=(400, 300))  # in the middle of the run
    out = tmp_path / "thumbs"
    env = dict(os.environ, NEARSORT_TEST_CRASH=f"{int(signum)}:p05-crash.jpg")
    r = cli("resize", src, "--out", out, "-j", "2", env=env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr and not r.stderr.strip(), r.stderr
    assert "10 processed" in r.stdout and "1 errors" in r.stdout, r.stdout
    named = [ln for ln in r.stdout.splitlines() if "p05-crash.jpg" in ln]
    assert len(named) == 1 and says in named[0] and "tries it again" in named[0], r.stdout
    with Catalog.open(out, write=False) as cat:
        ok = {os.path.basename(os.fsdecode(bytes(p))) for (p,) in
              cat.execute("SELECT path FROM sources WHERE status='ok'")}
        for (rel,) in cat.execute("SELECT relpath FROM thumbs"):
            assert (out / rel).is_file()
    assert ok == set(good)  # no innocent file was blamed for the crash
    errors = _errors(out)
    assert list(errors) == ["p05-crash.jpg"] and says in errors["p05-crash.jpg"]
    listed = cli("errors", out)  # what the user reads
    assert listed.returncode == 0 and [ln.split("\t")[0] for ln in listed.stdout.splitlines()] == [
        str(src / "p05-crash.jpg")] and says in listed.stdout, listed
    # the next resize tries it again (errors always are): still crashing, still one error, nothing redone
    s = json.loads(cli("resize", src, "--out", out, "-j", "2", "--json", env=env).stdout)
    assert (s["status"], s["unchanged"], s["processed"], s["errors"]) == ("done", 10, 0, 1)
    # once the decoder copes with it (here: no more crash), it gets its thumbnail
    s = json.loads(cli("resize", src, "--out", out, "--json").stdout)
    assert (s["unchanged"], s["processed"], s["errors"]) == (10, 1, 0)
    assert _errors(out) == {}


def test_resize_goes_on_when_a_decoder_hangs(tmp_path):
    """A decoder stuck in a loop (not crashing) on one file: after --timeout seconds its worker is
    killed and replaced, the file is an error naming the hang and the way out, every other file
    (those queued behind it on that worker too) gets its thumbnail, and the next resize tries it again."""
    src = tmp_path / "src"
    good = [make_photo(src / f"p{i:02d}.jpg", seed=i, size=(400, 300)).name for i in range(10)]
    make_photo(src / "p03-hang.jpg", seed=98, size=(400, 300))  # early: files are queued behind it
    out = tmp_path / "thumbs"
    env = dict(os.environ, NEARSORT_TEST_CRASH="hang:p03-hang.jpg")
    r = cli("resize", src, "--out", out, "-j", "2", "--timeout", "3", env=env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stdout + r.stderr and not r.stderr.strip(), r.stderr
    assert "10 processed" in r.stdout and "1 errors" in r.stdout, r.stdout
    named = [ln for ln in r.stdout.splitlines() if "p03-hang.jpg" in ln]
    assert len(named) == 1 and "the decoder hung on this file for 3 s: skipped" in named[0], r.stdout
    assert "tries it again" in named[0] and "--timeout" in named[0], r.stdout
    with Catalog.open(out, write=False) as cat:
        ok = {os.path.basename(os.fsdecode(bytes(p))) for (p,) in
              cat.execute("SELECT path FROM sources WHERE status='ok'")}
    assert ok == set(good)
    assert list(_errors(out)) == ["p03-hang.jpg"]
    # retried by the next resize; once the decoder copes (no more hang), it gets its thumbnail
    s = json.loads(cli("resize", src, "--out", out, "--timeout", "3", "--json", env=env).stdout)
    assert (s["unchanged"], s["processed"], s["errors"]) == (10, 0, 1)
    s = json.loads(cli("resize", src, "--out", out, "--json").stdout)
    assert (s["unchanged"], s["processed"], s["errors"]) == (10, 1, 0)
    assert _errors(out) == {}


CRASHY = '''
import os, signal, time

def work(task):
    """'always' kills its worker every time, 'once' only the first time (as the OOM killer might)."""
    name, mode, folder = task
    if mode == "always" or (mode == "once" and not os.path.exists(os.path.join(folder, name))):
        open(os.path.join(folder, name), "w").close()
        os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(0.002)
    return name.upper()
'''


def test_only_a_task_that_kills_its_worker_twice_is_blamed(tmp_path):
    """Many crashes among many tasks, with a thread running (as resize's scanner thread runs while
    workers are replaced) in a script without a ``__main__`` guard (a replacement must not re-run
    it): every task is answered exactly once, the innocent ones queued behind a crash normally,
    the ones that crash once on their retry, and only the ones that crash every time as Died."""
    (tmp_path / "crashy.py").write_text(CRASHY)
    (tmp_path / "marks").mkdir()
    script = textwrap.dedent(f"""
        import json, threading, time
        from crashy import work
        from nearsort.workers import Died, Workers
        modes = {{f"t{{i:03d}}": "always" if i % 9 == 4 else "once" if i % 9 == 7 else "fine" for i in range(90)}}
        answers = {{}}
        with Workers(2, work) as pool:
            threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
            todo = [(name, mode, {str(tmp_path / "marks")!r}) for name, mode in modes.items()]
            while todo or pool.busy():
                while todo and pool.room():
                    pool.submit(todo.pop(0))
                for task, answer in pool.results(0.5):
                    assert task[0] not in answers, task
                    answers[task[0]] = repr(answer) if isinstance(answer, Died) else answer
        print(json.dumps(answers))
        """)
    (tmp_path / "run_tasks.py").write_text(script)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([PY, str(tmp_path / "run_tasks.py")], capture_output=True, text=True, timeout=TIMEOUT,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    answers = json.loads(r.stdout)
    assert len(answers) == 90
    for i in range(90):
        name = f"t{i:03d}"
        assert answers[name] == ("Died(exitcode=-11, reason='')" if i % 9 == 4 else name.upper()), (name, answers[name])


def _children(pid: int) -> list[tuple[int, bytes]]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    kids.append((int(d), Path(f"/proc/{d}/cmdline").read_bytes()))
            except OSError:
                continue
    return kids


def _worker_pids(pid: int) -> list[int]:
    """The decoder workers of ``pid``: its children that run its own command line (forked), and
    the children of its forkserver (replacements started while a thread ran)."""
    try:
        mine = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    out = []
    for kid, cmd in _children(pid):
        if cmd == mine:
            out.append(kid)
        elif b"multiprocessing.forkserver" in cmd:
            out += [k for k, _ in _children(kid)]
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_workers_killed_at_any_moment_do_not_hang_resize(tmp_path):
    """The OOM killer's SIGKILL lands at any point of a worker's life (reading a task, decoding,
    sending its answer): the run still finishes, and every file is kept or recorded with the reason."""
    src = tmp_path / "src"
    one = make_photo(tmp_path / "one.jpg", 1, size=(1600, 1200), quality=95)
    src.mkdir()
    n = 80
    for i in range(n):
        os.link(one, src / f"p{i:03d}.jpg")
    out = tmp_path / "thumbs"
    env = dict(os.environ, NEARSORT_COMMIT_EVERY="1")
    proc = subprocess.Popen([PY, "-m", "nearsort.cli", "resize", str(src), "--out", str(out), "-j", "2", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    db = out / ".nearsort" / "catalog.sqlite"
    killed = 0
    deadline = time.monotonic() + 120
    while proc.poll() is None and killed < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                if c.execute("SELECT count(*) FROM sources").fetchone()[0] < 2 + 5 * killed:
                    continue
        except sqlite3.Error:
            continue
        for w in _worker_pids(proc.pid)[:1]:
            try:
                os.kill(w, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    so, se = proc.communicate(timeout=TIMEOUT)
    assert killed, "resize ended before a worker could be killed"
    assert proc.returncode == 0 and "Traceback" not in se, se
    s = json.loads(so)
    assert s["status"] == "done" and s["processed"] + s["errors"] == n
    with Catalog.open(out, write=False) as cat:
        assert queries.counts(cat)["sources_ok"] == s["processed"] > 0
        reasons = [e for (e,) in cat.execute("SELECT error FROM sources WHERE status='error'")]
    assert all("was killed (signal 9, SIGKILL" in e for e in reasons), reasons
