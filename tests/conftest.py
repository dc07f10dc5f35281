"""Shared fixtures: real images made with Pillow, the bundled samples, the optional ../shared bench."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "photos"
SHARED = REPO.parent / "shared" / "bench"
PY = sys.executable

# Ctrl-C reaches the CLI subprocesses the tests interrupt (SIGINT) even when this run was started in
# the background by a non-interactive shell, which starts it with SIGINT ignored: an ignored signal
# stays ignored across exec, a handled one is reset to the default (and Python makes it Ctrl-C).
signal.signal(signal.SIGINT, signal.default_int_handler)


def disc_object(src: Path, r: int) -> tuple[Image.Image, Image.Image]:
    """A disc of radius r cut from the middle of photo ``src``, with its soft-edged mask (an object
    to paste into a scene: a burst's subject that moves, an object added)."""
    im = Image.open(src).convert("RGB")
    obj = im.crop((im.width // 2 - r, im.height // 2 - r, im.width // 2 + r, im.height // 2 + r))
    mask = Image.new("L", obj.size, 0)
    ImageDraw.Draw(mask).ellipse((1, 1, 2 * r - 1, 2 * r - 1), fill=255)
    return obj, mask.filter(ImageFilter.GaussianBlur(1.5))


def camera_exif(model: str, when: str, subsec: str | None) -> bytes:
    """EXIF of a Canon camera's exposure (Make, Model, DateTimeOriginal, SubSecTimeOriginal when given)."""
    ex = Image.Exif()
    ex[0x010F], ex[0x0110] = "Canon", model
    ifd = ex.get_ifd(0x8769)
    ifd[0x9003] = when
    if subsec is not None:
        ifd[0x9291] = subsec
    return ex.tobytes()


def make_photo(path: Path, seed: int, size=(640, 480), fmt=None, exif=None, **save) -> Path:
    """A distinct, photo-like image (smooth gradients + blobs + a little noise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        a, b, p = rng.uniform(-1, 1, 3)
        img[..., c] = 128 + 60 * np.sin(a * xx / w * 6 + b * yy / h * 6 + p * 6)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.25) * min(w, h)
        col = rng.uniform(0, 255, 3)
        m = ((xx - cx) ** 2 + (yy - cy) ** 2) < r * r
        img[m] = 0.3 * img[m] + 0.7 * col
    img += rng.normal(0, 4, img.shape)
    im = Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exif is not None:
        save["exif"] = exif
    im.save(path, fmt, **save)
    return path


def tree_snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """{relpath: (size, mtime_ns, first bytes)} of every file below root (for 'never touched' checks)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, p.read_bytes())
    return out


@pytest.fixture
def samples_copy(tmp_path) -> Path:
    dst = tmp_path / "library"
    shutil.copytree(SAMPLES, dst)
    return dst


@pytest.fixture
def shared_bench() -> Path:
    if not (SHARED / "originals").is_dir():
        pytest.skip("../shared/bench is not present (only in the project's CI workspace)")
    return SHARED


@pytest.fixture(scope="session", autouse=True)
def nearsort_cache(tmp_path_factory) -> Path:
    """nearsort's per-user cache (ONNX graphs, what ``auto`` found) in a folder of this test session,
    for every test and every CLI subprocess it starts; not the user's ~/.cache."""
    old = os.environ.get("NEARSORT_CACHE_DIR")
    path = tmp_path_factory.mktemp("nearsort-cache")
    os.environ["NEARSORT_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("NEARSORT_CACHE_DIR", None)
    else:
        os.environ["NEARSORT_CACHE_DIR"] = old


# The dupes / quality / report tests' library (tests/library.py), resized and featurized once.
@pytest.fixture(scope="session")
def featurized(tmp_path_factory):
    """A real library with near duplicates: resize + featurize (efficientnet-lite0, CPU) once."""
    from library import make_library
    from nearsort.embed.featurize import featurize
    from nearsort.ingest.resize import resize

    base = tmp_path_factory.mktemp("dupes-lib")
    paths = make_library(base / "src")
    thumbs = base / "thumbs"
    resize(base / "src", thumbs, workers=2)
    featurize(thumbs, model="efficientnet-lite0", device="cpu", log=lambda m: None)
    return base, paths, thumbs


# The browser tests (report, review): Debian's chromium.
def _find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


@pytest.fixture(scope="session")
def chromium():
    """Debian's chromium; installed with apt-get when missing (root + apt only), else skipped."""
    exe = _find_chromium()
    if exe:
        return exe
    why = "chromium is not installed"
    if os.environ.get("NEARSORT_NO_APT"):
        pytest.skip(f"{why} and NEARSORT_NO_APT is set (install it: apt-get install -y chromium)")
    if not shutil.which("apt-get"):
        pytest.skip(f"{why} and there is no apt-get here (install chromium to run the browser tests)")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        pytest.skip(f"{why}; run `sudo apt-get install -y chromium` (or `make chromium`) to enable this test")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log = []
    for cmd in (["apt-get", "install", "-y", "-q", "chromium"],
                ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        try:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.append(f"{' '.join(cmd)}: {e}")
            continue
        log.append(f"{' '.join(cmd)}: rc {r.returncode} {r.stderr.strip()[-300:]}")
        exe = _find_chromium()
        if exe:
            return exe
    pytest.skip(f"{why} and could not be installed: {' | '.join(log)}")
