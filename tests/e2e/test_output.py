"""Output is safe: hostile file names (formulas, escape sequences, newlines, bidi, markup, non-UTF-8
bytes) on real photos, through the real CLI; and featurize finds thumbnails the user moved."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PY, REPO, SAMPLES, make_photo
from nearsort.embed import featurize as F
from nearsort.embed import search as S
from nearsort.store.catalog import Catalog
from nearsort.ingest.resize import resize
from nearsort.textsafe import csv_uncell, decode_path, encode_path, term

NEARSORT = Path(PY).parent / "nearsort"
FORMULA = ("=", "+", "-", "@", "\t", "\r")

# name (bytes, as the file system has it) -> sample photo it is a copy of
NAMES = {
    b'=HYPERLINK("x").jpg': "darknet__dog.jpg",
    b"dup\nTAIL3.jpg": "darknet__dog.jpg",                      # exact copy: a dupes group
    b"+1.jpg": "darknet__eagle.jpg",
    b"-2.jpg": "darknet__giraffe.jpg",
    b"@x.jpg": "darknet__horses.jpg",
    b"esc\x1b[31mred\nTAIL1.jpg": "opencv-doc__fruits.jpg",
    "[bold]x :smile: \u202egpj.jpg".encode(): "opencv-doc__orange.jpg",
    b"caf\xe9.jpg": "python3-sklearn__china.jpg",               # not UTF-8
    b"caf\xe9 copy\x1b]0;title\x07.jpg": "python3-sklearn__china.jpg",
    b"lit\\xe9-real\xe9\\.jpg": "npm-exif__test1.jpg",         # a literal backslash-x-e-9, and a real 0xe9
}
BROKEN = b"broken[bold]\x1b[31m\nTAIL2.jpg"
# user folders below THUMBS (their names become tags) -> the photo whose thumbnail moves there
FOLDERS = {
    '=HYPERLINK("x")': b'=HYPERLINK("x").jpg',
    "-2": b"-2.jpg",
    "@tag": b"@x.jpg",
    "tag\x1b[31m\nTAIL4": b"esc\x1b[31mred\nTAIL1.jpg",
}


def _env() -> dict:
    env = dict(os.environ)
    for k in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        env.pop(k, None)
    return env


def nearsort(*args) -> str:
    """Run the real CLI; return stdout + stderr, after checking that no byte of a name got through raw."""
    cmd = [NEARSORT] if NEARSORT.exists() else [PY, "-m", "nearsort.cli"]
    r = subprocess.run([*cmd, *args], capture_output=True, env=_env(), cwd=REPO)
    both = r.stdout + r.stderr
    assert r.returncode == 0, (args, both.decode("utf-8", "replace"))
    text = both.decode("utf-8")  # strictly valid UTF-8, even for the non-UTF-8 names
    for raw in ("\x1b", "\x07", "\u202e"):
        assert raw not in text, (args, text)
    for tail in ("TAIL1", "TAIL2", "TAIL3", "TAIL4"):
        assert f"\n{tail}" not in text and not text.startswith(tail), (args, text)
    return text


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    lib = tmp / "lib"
    lib.mkdir()
    blib = os.fsencode(lib)
    for name, sample in NAMES.items():
        shutil.copyfile(SAMPLES / sample, blib + b"/" + name)
    with open(blib + b"/" + BROKEN, "wb") as fh:
        fh.write(b"this is not a photo\n")
    out = tmp / "thumbs"
    text = nearsort("resize", lib, "--out", out, "-j", "1")
    assert "broken[bold]\\x1b[31m\\x0aTAIL2.jpg" in text  # the error sample, escaped, markup kept literal
    # the user sorts some thumbnails into folders of their own (folder names become tags)
    with Catalog.open(out, write=False) as cat:
        for folder, src in FOLDERS.items():
            rel = cat.execute(
                "SELECT t.relpath FROM sources s JOIN originals o ON o.id=s.original_id "
                "JOIN thumbs t ON t.id=o.thumb_id WHERE s.path=?", (blib + b"/" + src,)).fetchone()[0]
            (out / folder).mkdir()
            os.rename(out / rel, out / folder / Path(rel).name)
    return lib, out


def test_tags_and_errors_print_names_escaped(hostile):
    _, out = hostile
    text = nearsort("tags", out)
    assert "tag\\x1b[31m\\x0aTAIL4" in text and '=HYPERLINK("x")' in text
    text = nearsort("errors", out)
    assert "broken[bold]\\x1b[31m\\x0aTAIL2.jpg\t" in text
    nearsort("errors", out, "--json")
    nearsort("info", out)


def _read_csv(data: bytes) -> list[dict]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))  # strict UTF-8


def test_csv_export_is_utf8_formula_free_and_paths_round_trip(hostile, tmp_path):
    lib, out = hostile
    blib = os.fsencode(lib)
    nearsort("export", out, "--csv", tmp_path / "lib.csv", "--json", tmp_path / "lib.json")
    rows = _read_csv((tmp_path / "lib.csv").read_bytes())
    assert _read_csv(subprocess.run([NEARSORT, "export", out, "--csv", "-"], capture_output=True,
                                    check=True).stdout) == rows
    by_path = {}
    for r in rows:
        for col, cell in r.items():
            assert not cell.startswith(FORMULA), (col, cell)  # nothing a spreadsheet would evaluate
        path = decode_path(csv_uncell(r["source_path"]))
        by_path[os.fsencode(path)] = r
        if r["status"] == "ok":
            # the exact bytes come back: the file opens
            with open(path, "rb") as fh:
                assert fh.read() == (SAMPLES / NAMES[os.path.basename(os.fsencode(path))]).read_bytes()
    assert set(by_path) == {blib + b"/" + n for n in [*NAMES, BROKEN]}
    hyper = by_path[blib + b'/=HYPERLINK("x").jpg']
    assert hyper["tags"] == '\'=HYPERLINK("x")'
    assert hyper["thumb_path"].startswith('\'=HYPERLINK("x")/')
    assert csv_uncell(hyper["tags"]) == '=HYPERLINK("x")'
    assert (out / decode_path(csv_uncell(hyper["thumb_path"]))).is_file()
    assert by_path[blib + b"/-2.jpg"]["tags"] == "'-2"
    assert by_path[blib + b"/@x.jpg"]["tags"] == "'@tag"
    # numeric columns stay plain numbers
    for r in rows:
        if r["status"] == "ok":
            assert int(r["width"]) > 0 and float(r["brightness"]) >= 0
    # the two 0xe9 names and the literal backslash stay distinct and exact
    assert by_path[blib + b"/caf\xe9.jpg"]["source_path"].endswith("/caf\\xe9.jpg")
    assert by_path[blib + b"/lit\\xe9-real\xe9\\.jpg"]["source_path"].endswith("/lit\\\\xe9-real\\xe9\\\\.jpg")
    # JSON: strictly valid UTF-8, no lone surrogates, the same paths
    doc = json.loads((tmp_path / "lib.json").read_bytes().decode("utf-8"))
    for d in doc:
        for v in d.values():
            if isinstance(v, str):
                v.encode("utf-8")
    assert {os.fsencode(decode_path(d["source_path"])) for d in doc} == set(by_path)


def test_every_command_prints_names_escaped(hostile, tmp_path):
    lib, out = hostile
    nearsort("featurize", out, "--model", "efficientnet-lite0", "--device", "cpu")
    text = nearsort("dupes", out, "--limit", "0")
    assert "dup\\x0aTAIL3.jpg" in text and "caf\\xe9 copy\\x1b]0;title\\x07.jpg" in text
    nearsort("dupes", out, "--json")
    nearsort("dupes", out, "--move-to", tmp_path / "quarantine", "--dry-run")
    text = nearsort("search", "orange", out, "-k", "20")
    assert "[bold]x :smile: \\u202egpj.jpg" in text  # neither markup nor emoji code nor bidi override
    nearsort("search", "orange", out, "-k", "20", "--json")
    with Catalog.open(out, write=False) as cat:
        rel = cat.execute("SELECT relpath FROM thumbs WHERE relpath LIKE '-2/%'").fetchone()[0]
    text = nearsort("similar", out / rel, out, "-k", "20")
    assert "esc\\x1b[31mred\\x0aTAIL1.jpg" in text and "tag\\x1b[31m\\x0aTAIL4/" in text
    assert "caf\\xe9" in text and "[bold]x :smile: \\u202egpj.jpg" in text
    nearsort("similar", out / rel, out, "--json")
    nearsort("quality", out)
    nearsort("analyze", out)
    text = nearsort("refresh", out, "--dry-run")
    assert "tag\\x1b[31m\\x0aTAIL4/" in text
    nearsort("refresh", out)
    nearsort("undo", out)
    nearsort("report", out, "-o", tmp_path / "r.html")


def test_terminal_escaping_covers_controls_bidi_and_bytes():
    assert term("a\x00\x1b\x7f\x85\x9f\tb") == "a\\x00\\x1b\\x7f\\x85\\x9f\\x09b"
    assert term("\u202a\u202e\u2066\u2069\u200f\u2028") == "\\u202a\\u202e\\u2066\\u2069\\u200f\\u2028"
    assert term(os.fsdecode(b"caf\xe9")) == term(b"caf\xe9") == "caf\\xe9"
    assert term("café 日本 😀") == "café 日本 😀"
    for b in (b"\\", b"\\\\xe9", b"\xe9\\x", b"\xe2\x82", "é\u202e\n".encode()):
        t = encode_path(b)
        t.encode("utf-8")
        assert os.fsencode(decode_path(t)) == b


# ----------------------------------------------------------------------------- 10c: moved thumbnails
def test_featurize_finds_thumbnails_moved_into_user_folders(tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        make_photo(src / f"p{i}.jpg", 300 + i, size=(480, 360))
    out = tmp_path / "thumbs"
    resize(src, out, workers=1)
    with Catalog.open(out, write=False) as cat:
        (t_moved, rel_moved), (t_gone, rel_gone) = cat.execute(
            "SELECT id, relpath FROM thumbs ORDER BY id LIMIT 2").fetchall()
    (out / "my cats").mkdir()
    moved_to = f"my cats/{Path(rel_moved).name}"
    os.rename(out / rel_moved, out / moved_to)
    (out / rel_gone).unlink()
    s = F.featurize(out, model="efficientnet-lite0", device="cpu", log=lambda m: None)
    assert s.errors == 0 and s.error_samples == []
    assert s.embedded == 3 and s.relocated == 1 and s.missing == 1
    with Catalog.open(out, write=False) as cat:
        assert cat.execute("SELECT relpath FROM thumbs WHERE id=?", (t_moved,)).fetchone()[0] == moved_to
        assert cat.execute("SELECT count(*) FROM embeddings WHERE thumb_id=?", (t_moved,)).fetchone()[0] == 1
    # the vector stored for it is its own: a copy of the file, embedded on the fly, finds it first
    shutil.copyfile(out / moved_to, tmp_path / "probe.jpg")
    top = S.similar(out, str(tmp_path / "probe.jpg"), k=1).results[0]
    assert top["thumb_id"] == t_moved and top["score"] > 0.99
    # the deleted one is remade by resize and embedded next time
    resize(src, out, workers=1)
    s = F.featurize(out, model="efficientnet-lite0", device="cpu", log=lambda m: None)
    assert s.embedded == 1 and s.missing == 0 and s.errors == 0
