#!/usr/bin/env python3
"""What dupes' crop-aware signature of a thumbnail costs, against imagehash's phash of the same file.

    nice .venv/bin/python bench/signatures.py /tmp/nearsort-bench-dupes/crops5k --n 1000 --rounds 3
    nice .venv/bin/python bench/signatures.py THUMBS --also base=<checkout>/src   # + an older nearsort

``dupes`` computes a signature (``nearsort.dupes.group.crop_signature``: 8 DCT hashes -- 4 centre
crops of the border-trimmed thumbnail and their mirror images -- plus the trimmed share) for every
thumbnail a candidate pair touches (every one on the 5 000-crop bench), in its worker processes.
The floor is one ``imagehash.phash`` of the same thumbnail (open, grey, one 32x32 resize, one DCT),
the hash most peers (imagededup PHash) compute per file. Each side runs in its own subprocess on the
same first ``--n`` thumbnails (sorted paths), one after the other, alternating, best of ``--rounds``
(process CPU seconds per thumbnail, files in the page cache after the first pass). ``--also``
times ``crop_signature`` of another source tree too, and checks that it gives the same signatures.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import glob, json, sys, time
src, kind, thumbs, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
sys.path.insert(0, src)
ps = sorted(glob.glob(thumbs + "/**/*.jpg", recursive=True))
ps = [p for p in ps if "/.nearsort/" not in p][:n]
if kind == "phash":
    import imagehash
    from PIL import Image
    def one(p):
        with Image.open(p) as im:
            return str(imagehash.phash(im))
else:
    from nearsort.dupes.group import crop_signature
    def one(p):
        return [int(v) for v in crop_signature(p)]
for p in ps[:20]:
    one(p)  # warm: imports, page cache
t = time.process_time()
out = [one(p) for p in ps]
dt = time.process_time() - t
json.dump({"n": len(ps), "ms": 1000 * dt / max(1, len(ps)), "sigs": out if kind != "phash" else None}, sys.stdout)
"""


def run(src: str, kind: str, thumbs: Path, n: int) -> dict:
    r = subprocess.run([sys.executable, "-c", _CHILD, src, kind, str(thumbs), str(n)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("thumbs", type=Path)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--also", action="append", default=[], metavar="NAME=SRC", help="another nearsort source tree")
    a = ap.parse_args(argv)
    sides = [("nearsort", str(ROOT / "src"), "sig"), ("imagehash.phash", str(ROOT / "src"), "phash")]
    sides += [(s.split("=", 1)[0], s.split("=", 1)[1], "sig") for s in a.also]
    best: dict[str, float] = {}
    sigs: dict[str, list] = {}
    n = 0
    for r in range(a.rounds):
        for name, src, kind in (sides if r % 2 == 0 else sides[::-1]):
            got = run(src, kind, a.thumbs, a.n)
            n = got["n"]
            best[name] = min(best.get(name, float("inf")), got["ms"])
            if got["sigs"] is not None:
                sigs[name] = got["sigs"]
    floor = best["imagehash.phash"]
    print(f"{n} thumbnails of {a.thumbs}, CPU ms per thumbnail, best of {a.rounds} (alternating)")
    for name, _src, kind in sides:
        same = "" if kind == "phash" or name == "nearsort" else \
            ("  same signatures" if sigs[name] == sigs["nearsort"] else "  SIGNATURES DIFFER")
        print(f"  {name:18} {best[name]:7.3f} ms  {best[name] / floor:5.2f}x imagehash.phash{same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
