"""A frame whose contrast is set by a dark trunk and a bright sky, its leaves faint (tree.avi's
thumbnails): the motion check used to find too few textured blocks and answer "still" for any
pair. With the thumbnails' lower texture floor (frames.MOTION_TEXTURE_LOW) leaves that moved make
two different shots -- for dupes and for resize's shared names -- while a JPEG re-encode of the same
frame stays a copy."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from nearsort import frames
from nearsort.dupes.pixels import _Picture, compare_pictures

H, W = 192, 256


def _faint_scene() -> np.ndarray:
    rng = np.random.default_rng(1)
    noise = np.fft.fft2(rng.normal(size=(H, W)))
    ky, kx = np.fft.fftfreq(H)[:, None], np.fft.fftfreq(W)[None, :]
    leaves = np.real(np.fft.ifft2(noise * np.exp(-(ky ** 2 + kx ** 2) / (2 * 0.08 ** 2))))
    scene = 150 + leaves / leaves.std() * 20
    scene[:, :36] = 15          # a dark trunk
    scene[:50, 150:] = 252      # a bright sky
    return scene


def _jpeg(a: np.ndarray, q: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).convert("RGB").save(buf, "JPEG", quality=q)
    return buf.getvalue()


def _open(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def _pair():
    scene = _faint_scene()
    moved = scene.copy()
    moved[90:150, 70:140] = np.roll(scene, 3, axis=1)[90:150, 70:140]  # a clump of leaves moved 3 px
    return _jpeg(scene), _jpeg(moved), _jpeg(scene, 40)


def test_the_default_floor_is_blind_on_such_a_frame():
    a, b, _ = (_open(x) for x in _pair())
    za = frames._square(a, frames.MOTION_SIDE)
    flow = frames._block_flow(frames._smooth(za), frames._smooth(za), frames.MOTION_BLOCK)
    assert (flow["vals"][1:-1, 1:-1, 0] > frames.MOTION_TEXTURE).sum() < 6
    # without the lower floor: no blocks to measure, so "nothing moved"
    assert frames.local_motion(frames._square(a, 128), frames._square(b, 128)) == 0.0


def test_leaves_that_moved_are_another_shot_a_reencode_a_copy():
    scene, moved, q40 = _pair()
    a, b, c = _open(scene), _open(moved), _open(q40)
    assert frames.frame_motion(a, b) > frames.MAX_MOTION
    assert frames.frame_motion(a, c) <= frames.MAX_MOTION
    assert compare_pictures(_Picture(a), _Picture(b)).kind == "shot"
    assert compare_pictures(_Picture(a), _Picture(c)).kind == "copy"
    # resize's and rebuild's name rule: two frames never share a thumbnail, a re-encode does
    assert not frames.same_pixels(scene, moved)
    assert frames.same_pixels(scene, q40)
