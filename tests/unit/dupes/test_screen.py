"""A pair that only pixels can join (the crop-aware hash rejected it) is asked one question: is it a
*strong* copy? Its check stops as soon as the answer is no, and that short answer never stands in
for a full verdict. Real thumbnails cut from a bundled sample photo."""
from __future__ import annotations

from PIL import Image, ImageOps

from conftest import SAMPLES
from nearsort.dupes.pixels import STRONG_SCREEN, PixelVerifier, _Picture, compare_pictures


def _thumb(im: Image.Image, path) -> _Picture:
    im = im.copy()
    im.thumbnail((256, 256), Image.Resampling.BICUBIC)
    im.save(path, quality=85)
    return _Picture(path)


def test_screened_pairs_keep_strong_copies_and_stop_early_on_the_rest(tmp_path):
    photo = Image.open(SAMPLES / "darknet__horses.jpg").convert("RGB")
    w, h = photo.size
    a = _thumb(photo, tmp_path / "a.jpg")
    # a copy with a black frame (it moves every hash; the trim removes it): a strong copy on pixels alone
    copy = _thumb(ImageOps.expand(photo, border=w // 12, fill=(0, 0, 0)), tmp_path / "copy.jpg")
    v = compare_pictures(a, copy, STRONG_SCREEN)
    assert v.strong and "screened" not in v.metrics
    assert compare_pictures(a, copy) == v  # the same verdict as when fully asked
    # the left and right two thirds of the photo: one scene, overlapping, different pictures
    left = _thumb(photo.crop((0, 0, 2 * w // 3, h)), tmp_path / "left.jpg")
    right = _thumb(photo.crop((w // 3, 0, w, h)), tmp_path / "right.jpg")
    v = compare_pictures(left, right, STRONG_SCREEN)
    assert not v.strong and v.kind == "different" and "screened" in v.metrics


def test_a_screened_answer_never_answers_a_full_question(tmp_path):
    photo = Image.open(SAMPLES / "darknet__horses.jpg").convert("RGB")
    w, h = photo.size
    _thumb(photo.crop((0, 0, 9 * w // 10, h)), tmp_path / "a.jpg")
    _thumb(photo.crop((w // 10, 0, w, h)), tmp_path / "b.jpg")
    pv = PixelVerifier(tmp_path, {1: "a.jpg", 2: "b.jpg"})
    screened = pv.compare(1, 2, STRONG_SCREEN)
    assert not screened.strong and "screened" in screened.metrics
    full = pv.compare(1, 2)
    assert "screened" not in full.metrics and pv.compared == 2
    assert pv.compare(1, 2, STRONG_SCREEN) is full  # a full verdict answers the screened question too


def test_a_crop_between_the_coarse_scales_passes_the_coarse_screen(tmp_path, monkeypatch):
    """The coarse scales are 8 % apart: a centre crop half-way between two of them (86 %) is found
    only on the fine scales, and still a strong copy; two different parts of one photo stop on the
    coarse scales (COARSE_SCREEN) without paying for the fine ones."""
    from nearsort.dupes import pixels

    photo = Image.open(SAMPLES / "darknet__horses.jpg").convert("RGB")
    w, h = photo.size
    a = _thumb(photo, tmp_path / "a.jpg")
    cw, ch = round(w * 0.86), round(h * 0.86)
    crop = _thumb(photo.crop(((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2)), tmp_path / "crop.jpg")
    v = compare_pictures(a, crop, STRONG_SCREEN)
    assert v.strong and abs(v.scale - 0.86) <= 0.02, v
    top = _thumb(photo.crop((0, 0, w, h // 2)), tmp_path / "top.jpg")
    bottom = _thumb(photo.crop((0, h // 2, w, h)), tmp_path / "bottom.jpg")
    calls = []
    aligned = pixels._aligned_diffs

    def counting(pairs, lim):
        calls.append(len(pairs))
        return aligned(pairs, lim)

    monkeypatch.setattr(pixels, "_aligned_diffs", counting)
    v = compare_pictures(top, bottom, STRONG_SCREEN)
    assert v.kind == "different" and v.metrics["screened"] > pixels.COARSE_SCREEN, v
    assert len(calls) == 1  # the coarse scales only
