"""The crop-aware signature's DCT hash is imagehash's phash, bit for bit."""
import imagehash
import numpy as np
from PIL import Image

from nearsort.dupes.group import _phash32, crop_signature


def _bits(v: int) -> np.ndarray:
    return np.array([(v >> k) & 1 for k in range(64)], bool)


def test_phash32_is_imagehash_phash():
    rng = np.random.default_rng(3)
    images = [(rng.random((32, 32)) * 255).astype(np.uint8) for _ in range(50)]
    images += [np.round(rng.random((32, 32)) * 2).astype(np.uint8) * 100 for _ in range(20)]  # ties at the median
    for a in images:
        im = Image.fromarray(a, "L")
        assert np.array_equal(_bits(_phash32(np.asarray(im, np.float64))), imagehash.phash(im).hash.flatten())


def test_signature_of_a_letterboxed_copy_matches_its_picture(tmp_path):
    rng = np.random.default_rng(4)
    pic = Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)).resize((256, 192), Image.BICUBIC)
    boxed = Image.new("RGB", (256, 256), (0, 0, 0))
    boxed.paste(pic, (0, 32))
    pic.save(tmp_path / "pic.jpg", quality=95)
    boxed.save(tmp_path / "boxed.jpg", quality=95)
    a, b = crop_signature(tmp_path / "pic.jpg"), crop_signature(tmp_path / "boxed.jpg")
    assert a.dtype == np.uint64 and a.shape == (9,)
    assert a[-1] == 1_000_000  # nothing trimmed: the whole frame is picture
    assert abs(int(b[-1]) - 750_000) < 20_000  # the bars are trimmed: 3/4 of the frame is picture
    assert bin(int(a[0]) ^ int(b[0])).count("1") <= 6  # and the full-frame hashes agree
