#!/usr/bin/env python3
"""The cost curve of the whole pipeline: every command, run as a user runs it, at growing library sizes.

    nice .venv/bin/python bench/scale.py --sizes 1000,10000            # real files (minutes)
    nice .venv/bin/python bench/scale.py --sizes 100000                # ~1 h on 2 cores (featurize dominates)
    nice .venv/bin/python bench/scale.py --catalog-only 1000000        # fabricated catalog, 10^6 rows
    nice .venv/bin/python bench/scale.py --table                       # the saved results, one table

**Real files** (``--sizes``): N originals are generated once, deterministically, from the bench photos
(``--originals``, default ../shared/bench/originals) into WORK/nN/src: distinct pictures first
(non-overlapping 400x300 tiles of every photo, then 2x2 collages of random crops at several scales, each
panel from a random photo with its own gain), then ~12 % labelled copies of earlier pictures (a re-encode
at q 55, a 0.6x resize, a grey copy, a byte-identical copy): WORK/nN/src/labels.csv. Then every command
runs in its own subprocess, in pipeline order, on WORK/nN/thumbs: resize, featurize, analyze, refresh,
undo, dupes, quality, report, export, search.

**Catalog-level** (``--catalog-only N``): catalog rows, tiny thumbnail files (64x48 JPEGs under week
folders, 50 000 distinct pictures) and D-dimensional vectors (``--dim``, 1280 = efficientnet-lite0) are fabricated directly through
the real store functions (``queries.add_thumb`` / ``add_original`` / ``record_source_ok``,
``VectorIndex.append`` / ``add_embeddings`` / ``save``): clustered vectors, 10 % of the pictures in
near-duplicate groups of 2..4 (``--dup-share``; vectors a hair apart, phashes 1..3 bits apart, the same
tiny picture re-encoded), 5 % thumbnails with a second original, 4 % byte-identical second sources. Then analyze,
dupes, refresh (real renames of every thumbnail), undo, quality, report and export run as commands.

Each row: wall seconds, CPU seconds (user + sys of the command and every process it waited for),
peak RSS (the largest single process of the command, from GNU time), and the per-file cost (CPU / N,
ms). ``--table`` prints every saved size side by side with the growth of the per-file CPU cost from
one size to the next (the number the issue asks to keep <= 1.3x): CPU, not wall, because on a shared
2-core machine the wall time mostly measures the other jobs. Results:
WORK/results-N.json (WORK: ``--work``, default /tmp/scale-work); each command's output: WORK/nN/logs/.

``--engine local|ray`` (with ``--address``) is passed to resize and featurize as ``--engine`` /
``--address`` when it is not ``local`` (the distributed engine of issue 12); ``--engine ray`` without
``--address`` starts a local Ray head of ``--ray-cpus`` CPUs for the run (nearsort.engine.local_head).
The CPU column of a Ray run counts the CLI's own processes only: the work runs in the cluster's.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

W, H = 400, 300            # generated originals: 400x300 (a quarter of them portrait)
TILE_BASE = 1600           # originals are decoded to this long side, tiled 4x3 (landscape) / 3x4
COLLAGE_BASE = 800         # ... and to this one for the collages' crops (200x150 panels)
VARIANT_SHARE = 0.12
CLI = "import sys; from nearsort.cli import main; sys.argv[0] = 'nearsort'; main()"


# ----------------------------------------------------------------------------- generating originals
@lru_cache(maxsize=256)
def _base(path: str, side: int = TILE_BASE):
    """The photo decoded once per worker at this long side (TILE_BASE for tiles, COLLAGE_BASE for
    the collages' crops, all of which stay cached: ~180 MB)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("RGB", (side, side))
        im = ImageOps.exif_transpose(im).convert("RGB")
    s = side / max(im.size)
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BILINEAR)


def _tiles(originals: list[str]) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Non-overlapping tiles: every photo cut into a 4x3 (or 3x4) grid at TILE_BASE."""
    out = []
    for p in originals:
        for r in range(3):
            for c in range(4):
                out.append((p, (c, r, 4, 3)))
    return out


def _picture(i: int, originals: list[str], tiles: list, seed: int):
    """Distinct picture i: a tile while there are tiles, then a 2x2 collage of random crops."""
    from PIL import Image

    rng = random.Random(seed * 1_000_003 + i)
    portrait = rng.random() < 0.25
    w, h = (H, W) if portrait else (W, H)
    if i < len(tiles):
        p, (c, r, nc, nr) = tiles[i]
        b = _base(p)
        if b.height > b.width:
            nc, nr, c, r = nr, nc, r, c
        tw, th = b.width // nc, b.height // nr
        return b.crop((c * tw, r * th, (c + 1) * tw, (r + 1) * th)).resize((w, h), Image.BILINEAR)
    out = Image.new("RGB", (w, h))
    pw, ph = w // 2, h // 2
    for k in range(4):
        b = _base(originals[rng.randrange(len(originals))], COLLAGE_BASE)
        f = rng.choice((0.25, 0.35, 0.45, 0.6))  # crops at several scales
        cw, ch = max(8, int(b.width * f)), max(8, int(b.width * f * ph / pw))
        ch = min(ch, b.height)
        x, y = rng.randrange(0, b.width - cw + 1), rng.randrange(0, b.height - ch + 1)
        panel = b.crop((x, y, x + cw, y + ch)).resize((pw, ph), Image.BILINEAR)
        gain = np.array([rng.uniform(0.7, 1.3) for _ in range(3)], np.float32)
        a = np.clip(np.asarray(panel, np.float32) * gain, 0, 255).astype(np.uint8)
        if rng.random() < 0.5:
            a = a[:, ::-1]
        out.paste(Image.fromarray(np.ascontiguousarray(a)), ((k % 2) * pw, (k // 2) * ph))
    return out


def _plan(n: int, seed: int) -> list[tuple[int, str, int]]:
    """(file index, relation, picture index) for N files: distinct pictures, then labelled variants."""
    rng = random.Random(seed)
    n_var = int(n * VARIANT_SHARE)
    n_dist = n - n_var
    plan = [(i, "original", i) for i in range(n_dist)]
    for j in range(n_var):
        plan.append((n_dist + j, rng.choice(("reencode", "resize", "grey", "exact")), rng.randrange(n_dist)))
    rng.shuffle(plan)  # variants are not all at the end of the scan
    return plan


def _gen_chunk(job) -> int:
    from PIL import Image, ImageOps

    src, originals, tiles, seed, items = job
    for slot, (_i, rel, pic) in items:
        d = src / f"d{slot // 1000:04d}"
        d.mkdir(exist_ok=True)
        path = d / f"img{slot:07d}.jpg"
        if path.exists():
            continue
        im = _picture(pic, originals, tiles, seed)
        buf = io.BytesIO()
        if rel == "original" or rel == "exact":
            im.save(buf, "JPEG", quality=90)
        elif rel == "reencode":
            im.save(buf, "JPEG", quality=55)
        elif rel == "resize":
            im.resize((im.width * 3 // 5, im.height * 3 // 5), Image.BILINEAR).save(buf, "JPEG", quality=90)
        else:
            ImageOps.grayscale(im).save(buf, "JPEG", quality=90)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, path)
    return len(items)


def generate(src: Path, n: int, originals_dir: Path, seed: int, workers: int) -> None:
    """N originals in SRC (1000 per folder) + labels.csv; resumable, deterministic."""
    done = src / "labels.csv"
    if done.exists():
        return
    originals = sorted(str(p) for p in originals_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not originals:
        sys.exit(f"no JPEG originals in {originals_dir}")
    tiles = _tiles(originals)
    plan = _plan(n, seed)
    src.mkdir(parents=True, exist_ok=True)
    # chunks grouped by picture source so that each worker's decode cache is hit
    items = sorted(enumerate(plan), key=lambda x: x[1][2])
    t0 = time.monotonic()
    jobs = [(src, originals, tiles, seed, items[k:k + 200]) for k in range(0, len(items), 200)]
    with ProcessPoolExecutor(workers) as ex:
        made = 0
        for m in ex.map(_gen_chunk, jobs):
            made += m
            print(f"\rgenerating {made}/{n} ({time.monotonic() - t0:.0f} s)", end="", file=sys.stderr)
    print(file=sys.stderr)
    first: dict[int, int] = {}
    for slot, (_i, rel, pic) in enumerate(plan):
        if rel == "original":
            first[pic] = slot
    tmp = done.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["file", "relation", "picture", "copy_of"])
        for slot, (_i, rel, pic) in enumerate(plan):
            of = "" if rel == "original" else f"d{first[pic] // 1000:04d}/img{first[pic]:07d}.jpg"
            wr.writerow([f"d{slot // 1000:04d}/img{slot:07d}.jpg", rel, pic, of])
    os.replace(tmp, done)


# ----------------------------------------------------------------------------- fabricating a catalog
POOL = 50_000  # distinct tiny pictures: thumbnail i shows picture i % POOL (a near-duplicate group its own copy)


def _tiny_pool(n: int, seed: int) -> list[bytes]:
    """n distinct 64x48 smooth pictures (8x6 random colours, upsampled) as JPEG bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed + 7)
    small = rng.integers(0, 256, (n, 6, 8, 3), dtype=np.uint8)
    out = []
    for k in range(n):
        buf = io.BytesIO()
        Image.fromarray(small[k]).resize((64, 48), Image.BILINEAR).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def _noisy_copy(data: bytes, rng: np.random.Generator) -> bytes:
    """The picture with a little noise, re-encoded (a copy with other bytes)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.int16)
    a = np.clip(a + rng.integers(-2, 3, a.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def fabricate(root: Path, n: int, dim: int, seed: int, dup_share: float = 0.10) -> dict:
    """N thumbnails (with their files), originals, sources and vectors, through the store's own
    functions. Returns what was made."""
    from nearsort.store import queries
    from nearsort.store.catalog import Catalog, state_dir
    from nearsort.vectors.index import VectorIndex

    rng = np.random.default_rng(seed)
    prng = random.Random(seed)
    model = f"bench:synthetic-{dim}"
    n_clusters = max(1, n // 150)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    t0 = time.monotonic()
    made = {"thumbs": 0, "originals": 0, "sources": 0, "bytes_on_disk": 0}
    chunk = 20_000
    with Catalog.open(root, create=True) as cat:
        with cat.tx():
            run_id = queries.start_run(cat, "bench-fabricate")
            model_id = queries.add_model(cat, model, dim, {"kind": "bench", "name": model})
        vi = VectorIndex.open(state_dir(root), model, dim, valid_rows=0)
        pool = _tiny_pool(min(n, POOL), seed)
        group_left, group_base, group_vec, group_hash = 0, b"", None, 0
        sid = 0
        names: set[str] = set()
        folders: set[Path] = set()
        for start in range(0, n, chunk):
            tids: list[int] = []
            vecs: list[np.ndarray] = []
            files: list[tuple[Path, bytes]] = []
            with cat.tx():
                for i in range(start, min(n, start + chunk)):
                    # ---- the picture: a new one, or the next member of a near-duplicate group
                    if group_left > 0:
                        group_left -= 1
                        data = _noisy_copy(group_base, rng)
                        v = group_vec + rng.standard_normal(dim).astype(np.float32) * (0.02 / np.sqrt(dim))
                        ph = group_hash
                        for b in prng.sample(range(64), prng.randint(1, 3)):
                            ph ^= 1 << b
                    else:
                        data = group_base = pool[i % len(pool)]
                        c = centres[rng.integers(n_clusters)]
                        v = c + rng.standard_normal(dim).astype(np.float32) * (0.8 / np.sqrt(dim))
                        ph = prng.getrandbits(64)
                        if prng.random() < dup_share / 2.5:
                            group_left, group_vec, group_hash = prng.randint(1, 3), v, ph
                    w, h = prng.choice(((4000, 3000), (6000, 4000), (3024, 4032), (1920, 1080)))
                    while f"{w}x{h}_{ph:016x}" in names:  # a name is one picture
                        ph ^= 1 << prng.randrange(64)
                    name = f"{w}x{h}_{ph:016x}"
                    names.add(name)
                    year, week = 2005 + i % 19, 1 + (i // 7) % 52
                    rel = f"{year}/W{week:02d}/{name}.jpg"
                    files.append((root / rel, data))
                    tid = queries.add_thumb(cat, name, rel, 64, 48, prng.uniform(5, 250), prng.uniform(5, 90),
                                            prng.uniform(2, 5000))
                    for k in range(2 if i % 20 == 0 else 1):  # 5 %: a second original of the same picture
                        oid = queries.add_original(
                            cat, f"{made['originals']:064x}", tid, w, h, "JPEG", prng.randint(1 << 20, 8 << 20),
                            f"{ph:016x}", f"{year}-0{1 + k}-{1 + week % 28:02d}T10:00:00" if i % 3 else None,
                            "Bench", "Cam", None, None, "{}")
                        made["originals"] += 1
                        for _ in range(2 if made["originals"] % 25 == 0 else 1):  # 4 %: byte-identical copies
                            sid += 1
                            queries.record_source_ok(
                                cat, os.fsencode(f"/photos/{year}/event {i // 40}/IMG_{sid:07d}.JPG"), oid,
                                prng.randint(1 << 20, 8 << 20), 1_500_000_000_000_000_000 + sid, run_id)
                            made["sources"] += 1
                    tids.append(tid)
                    vecs.append(v)
                # thumbnails and vectors are written before the transaction that references them commits
                for p, data in files:
                    if p.parent not in folders:
                        p.parent.mkdir(parents=True, exist_ok=True)
                        folders.add(p.parent)
                    p.write_bytes(data)
                    made["bytes_on_disk"] += len(data)
                rows = vi.append(np.stack(vecs))
                queries.add_embeddings(cat, model_id, zip(tids, (int(r) for r in rows)))
            made["thumbs"] += len(tids)
            print(f"\rfabricating {made['thumbs']}/{n} ({time.monotonic() - t0:.0f} s)", end="", file=sys.stderr)
        print(file=sys.stderr)
        t1 = time.monotonic()
        params = vi.save()
        vi.close()
        with cat.tx():
            queries.set_model_info(cat, model_id, {"kind": "bench", "name": model, "index": params})
            queries.finish_run(cat, run_id, "done")
        made["index_s"] = round(time.monotonic() - t1, 1)
    made["fabricate_s"] = round(time.monotonic() - t0, 1)
    return made


# ----------------------------------------------------------------------------- running the commands
TIME = "/usr/bin/time"


def run_cmd(name: str, args: list[str], logs: Path, env: dict) -> dict:
    """One command in a subprocess: wall, CPU (it + its waited-for children), peak RSS (MB).

    Peak RSS and CPU come from GNU time (``%M``: the command's own high-water mark, or its largest
    waited-for child's): measured from this process with ``os.wait4`` they would start at this
    process' own size (Linux keeps a forked child's high-water mark across ``exec``)."""
    logs.mkdir(parents=True, exist_ok=True)
    tfile = logs / f"{name}.time"
    use_time = os.access(TIME, os.X_OK)
    cmd = [sys.executable, "-c", CLI, *args]
    if use_time:
        cmd = [TIME, "-f", "%M %U %S", "-o", str(tfile), *cmd]
    with open(logs / f"{name}.out", "wb") as out, open(logs / f"{name}.err", "wb") as err:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
    rc = os.waitstatus_to_exitcode(status)
    if use_time:
        last = tfile.read_text().strip().splitlines()[-1].split()
        rss_kb, cpu = int(last[0]), float(last[1]) + float(last[2])
    else:
        rss_kb, cpu = ru.ru_maxrss, ru.ru_utime + ru.ru_stime
    r = {"stage": name, "rc": rc, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
         "peak_rss_mb": round(rss_kb / 1024, 1)}
    print(f"  {name:<10} rc {r['rc']}  {r['wall_s']:8.1f} s  cpu {r['cpu_s']:8.1f} s  {r['peak_rss_mb']:7.0f} MB",
          file=sys.stderr, flush=True)
    return r


def stages(thumbs: Path, src: Path | None, work: Path, engine: str, address: str | None) -> list[tuple[str, list[str]]]:
    t = str(thumbs)
    eng = [] if engine == "local" else ["--engine", engine, *(["--address", address] if address else [])]
    out: list[tuple[str, list[str]]] = []
    if src is not None:
        out += [("resize", ["resize", str(src), "--out", t, "--json", *eng]),
                ("featurize", ["featurize", t, "--json", *eng])]
    out += [("analyze", ["analyze", t, "--json"]),
            ("refresh", ["refresh", t, "--json"]),
            ("undo", ["undo", t, "--json"]),
            ("dupes", ["dupes", t, "--json"]),
            ("quality", ["quality", t, "--json"]),
            ("report", ["report", t, "--out", str(work / "report.html")]),
            ("export", ["export", t, "--csv", str(work / "export.csv")])]
    if src is not None:
        out.append(("search", ["search", "dog on a beach", t, "--json"]))
    return out


def measure(n: int, work: Path, *, catalog_only: bool, args) -> dict:
    d = work / (f"c{n}" if catalog_only else f"n{n}")
    thumbs = d / "thumbs"
    if thumbs.exists() and not (args.keep or args.only):  # --only works on what is there
        shutil.rmtree(thumbs)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    info: dict = {"n": n, "mode": "catalog" if catalog_only else "files", "engine": args.engine,
                  "date": time.strftime("%Y-%m-%d %H:%M"), "commit": _commit(), "cores": os.cpu_count(),
                  "load_before": os.getloadavg()[0]}
    print(f"== {n} {'catalog rows' if catalog_only else 'files'} in {d}", file=sys.stderr)
    if catalog_only:
        if not (args.keep or args.only) or not (thumbs / ".nearsort").exists():
            info["fabricated"] = fabricate(thumbs, n, args.dim, args.seed, args.dup_share)
            info["dup_share"] = args.dup_share
        src = None
    else:
        src = d / "src"
        t0 = time.monotonic()
        generate(src, n, Path(args.originals), args.seed, args.workers)
        info["generate_s"] = round(time.monotonic() - t0, 1)
        info["src_bytes"] = sum(f.stat().st_size for f in src.rglob("*.jpg"))
    rows = []
    for name, cmd in stages(thumbs, src, d, args.engine, args.address):
        if args.only and name not in args.only.split(","):
            continue
        if name == "analyze" and (thumbs / ".nearsort").exists():
            _forget_orders(thumbs)
        r = run_cmd(name, cmd, d / "logs", env)
        r["per_file_ms"] = round(1000 * r["wall_s"] / n, 3)
        r["cpu_per_file_ms"] = round(1000 * r["cpu_s"] / n, 3)
        rows.append(r)
    out = work / (f"results-c{n}.json" if catalog_only else f"results-{n}.json")
    if args.engine != "local":
        out = out.with_name(out.stem + f"-{args.engine}.json")
    if args.only and out.exists():  # the other stages' figures stay; these are replaced
        old = json.loads(out.read_text())
        mine = {r["stage"] for r in rows}
        info["earlier"] = {k: old[k] for k in ("date", "commit", "load_before", "load_after") if k in old}
        for k in ("generate_s", "src_bytes", "fabricated", "dup_share"):
            if k in old and k not in info:
                info[k] = old[k]
        order = [name for name, _ in stages(thumbs, src, d, args.engine, args.address)]
        rows = sorted([r for r in old["stages"] if r["stage"] not in mine] + rows, key=lambda r: order.index(r["stage"]))
    info["stages"] = rows
    info["thumbs_bytes"] = _du(thumbs)
    info["load_after"] = os.getloadavg()[0]
    out.write_text(json.dumps(info, indent=1))
    return info


def _forget_orders(thumbs: Path) -> None:
    """Make the next ``analyze`` compute its order (it keeps a stored one whose input has not
    changed, which would measure nothing on a THUMBS already analyzed)."""
    from nearsort.store import queries
    from nearsort.store.catalog import Catalog

    with Catalog.open(thumbs) as cat, cat.tx():
        for name in queries.ordering_names(cat):
            queries.set_meta(cat, f"analyzed:{name}", "null")


def _du(p: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(p):
        for f in files:
            try:
                total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512
            except OSError:
                pass
    return total


def _commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return "?"


def table(work: Path) -> str:
    """Every saved result, one block per mode: seconds, peak RSS, per-file ms and its growth."""
    res = [json.loads(p.read_text()) for p in sorted(work.glob("results-*.json"))]
    lines = []
    for mode in ("files", "catalog"):
        rs = sorted((r for r in res if r["mode"] == mode), key=lambda r: (r.get("engine", "local"), r["n"]))
        if not rs:
            continue
        names: list[str] = []
        for r in rs:
            names += [s["stage"] for s in r["stages"] if s["stage"] not in names]
        head = "| stage | " + " | ".join(f"{r['n']:,} {'rows' if mode == 'catalog' else 'files'}"
                                         + ("" if r.get("engine", "local") == "local" else f" ({r['engine']})")
                                         for r in rs) + " | CPU per file, growth |"
        lines += [head, "|---" * (len(rs) + 2) + "|"]
        for name in names:
            cells, per = [], []
            for r in rs:
                s = next((s for s in r["stages"] if s["stage"] == name), None)
                if s is None:
                    cells.append("—")
                    per.append(None)
                    continue
                bad = "" if s["rc"] == 0 else f" **rc {s['rc']}**"
                cells.append(f"{s['wall_s']:.1f} s ({s['cpu_s']:.1f} s CPU), {s['peak_rss_mb']:.0f} MB, "
                             f"{s['cpu_per_file_ms']:.2f} ms CPU/file{bad}")
                per.append((r["n"], s["cpu_per_file_ms"]))
            grow = []
            for a, b in zip(per, per[1:]):
                if a and b and a[1] > 0:
                    grow.append(f"{b[1] / a[1]:.2f}x")
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {' / '.join(grow) or '—'} |")
        lines.append("")
        for r in rs:
            extra = {k: r[k] for k in ("generate_s", "src_bytes", "thumbs_bytes", "fabricated", "load_before",
                                       "load_after", "commit", "date") if k in r}
            lines.append(f"{r['n']:,} ({mode}): {json.dumps(extra)}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="", help="comma list of real-file library sizes, e.g. 1000,10000")
    ap.add_argument("--catalog-only", type=int, default=0, metavar="N", help="fabricated catalog of N rows")
    ap.add_argument("--dim", type=int, default=1280, help="vector size for --catalog-only (1280: efficientnet-lite0)")
    ap.add_argument("--dup-share", type=float, default=0.10,
                    help="--catalog-only: share of the pictures in near-duplicate groups (each pair is a pixel check)")
    ap.add_argument("--work", default="/tmp/scale-work")
    ap.add_argument("--originals", default=str(ROOT.parent / "shared" / "bench" / "originals"),
                    help="photos the originals are cut from (default ../shared/bench/originals)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes generating originals")
    ap.add_argument("--engine", default="local", help="local | ray: passed to resize and featurize")
    ap.add_argument("--address", default=None, help="with --engine ray: the cluster address (none: a local head)")
    ap.add_argument("--ray-cpus", type=int, default=2, help="--engine ray without --address: the local head's CPUs")
    ap.add_argument("--only", default="", help="comma list of stages to run (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep an existing THUMBS (default: start afresh, unless --only)")
    ap.add_argument("--table", action="store_true", help="print the table of every saved result and exit")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    if not a.table:
        with contextlib.ExitStack() as stack:
            if a.engine == "ray" and not a.address:  # a local cluster for this run
                sys.path.insert(0, str(ROOT / "src"))
                from nearsort.engine import local_head

                a.address, ray_env = stack.enter_context(local_head(a.ray_cpus))
                os.environ.update({k: ray_env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
                print(f"a local Ray head of {a.ray_cpus} CPUs at {a.address}", file=sys.stderr)
            for n in [int(x) for x in a.sizes.split(",") if x.strip()]:
                measure(n, work, catalog_only=False, args=a)
            if a.catalog_only:
                measure(a.catalog_only, work, catalog_only=True, args=a)
    print(table(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
