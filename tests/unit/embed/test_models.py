"""Model registry + embedder: real efficientnet-lite0 weights, CLIP paths with random weights,
label search, preprocessing equal to the reference transforms, offline errors, batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nearsort.embed import models as M
from nearsort.embed.embedder import embed_files, embed_pil, embed_text

from conftest import SHARED, make_photo

ORIG = SHARED / "originals"


@pytest.fixture(scope="module")
def lite0():
    return M.load_model("efficientnet-lite0", device="cpu", log=lambda s: None)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A small open_clip model with seeded random weights, saved as a checkpoint file,
    plus the open_clip model itself (the reference)."""
    import open_clip

    torch.manual_seed(0)
    ref, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32", pretrained=None)
    ref.eval()
    path = tmp_path_factory.mktemp("clip") / "vit-s-32-random.pt"
    torch.save(ref.state_dict(), path)
    return ref, preprocess, path


# ------------------------------------------------------------------ efficientnet-lite0


def test_lite0_weights_map_one_to_one():
    import timm

    src = torch.load(M.lite0_weights_path(), map_location="cpu", weights_only=True)
    mapped = M.lite0_state_dict()
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert len(src) == len(mapped) == len(ref) == 296
    assert list(mapped) == list(ref)
    for sv, tv in zip(src.values(), mapped.values()):
        assert sv.shape == tv.shape and torch.equal(sv, tv)


def test_lite0_model_basics(lite0):
    assert lite0.name == "efficientnet-lite0" and lite0.kind == "cnn"
    assert lite0.dim == 1280 and lite0.has_labels and not lite0.has_text
    assert lite0.info["bn_folded"] > 0
    assert lite0.preprocess.mean == (0.5, 0.5, 0.5) and lite0.preprocess.size == 224


def test_lite0_predicts_real_photos(lite0, shared_bench):
    want = {
        "darknet__dog.jpg": range(151, 269),                      # a dog breed
        "gnome-control-center-data__cat.jpg": range(281, 286),    # a domestic cat
        "gnome-control-center-data__coffee2.jpg": [967],           # espresso
        "gnome-control-center-data__hummingbird.jpg": [94],        # hummingbird
        "gnome-control-center-data__guitar2.jpg": [546, 402],      # electric / acoustic guitar
    }
    files = [ORIG / f for f in want]
    vecs, (ids, probs) = embed_pil(lite0, files)
    assert vecs.shape == (len(files), 1280)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    for f, top1 in zip(want, ids[:, 0]):
        assert int(top1) in want[f], (f, M.class_name(int(top1)))
    assert np.all(np.diff(probs, axis=1) <= 0)


def test_lite0_equals_reference_timm_pipeline(lite0, tmp_path):
    """Our fast path (Pillow resize+crop, uint8 -> device normalisation, BN folding,
    channels_last) gives the same features as timm's own eval transform on the unfolded model."""
    import timm
    from timm.data import create_transform, resolve_data_config

    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    ref.load_state_dict(M.lite0_state_dict(), strict=True)
    ref.eval()
    cfg = resolve_data_config({}, model=ref)
    tf = create_transform(**cfg)
    imgs = [make_photo(tmp_path / f"p{i}.png", i, size=(300 + 40 * i, 220)) for i in range(3)]
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in imgs])
    with torch.inference_mode():
        feats = ref.forward_head(ref.forward_features(x), pre_logits=True)
        want = torch.nn.functional.normalize(feats, dim=-1).numpy()
    got, _ = embed_pil(lite0, imgs)
    assert np.abs(got - want).max() < 2e-3
    assert (got * want).sum(1).min() > 0.9999


def test_preprocess_matches_torchvision(tmp_path):
    from torchvision import transforms as T

    pre = M.Preprocess(size=224, resize_to=256, interpolation="bicubic")
    tv = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])
    for i, size in enumerate([(256, 171), (171, 256), (640, 480), (224, 224), (301, 257)]):
        p = make_photo(tmp_path / f"a{i}.png", i, size=size)
        got = pre(p)
        want = np.asarray(tv(Image.open(p).convert("RGB")))
        assert got.shape == (224, 224, 3) and got.dtype == np.uint8
        assert np.array_equal(got, want), size


def test_preprocess_modes(tmp_path):
    p = make_photo(tmp_path / "g.png", 1, size=(300, 200))
    Image.open(p).convert("L").save(tmp_path / "gray.png")
    Image.open(p).convert("RGBA").save(tmp_path / "rgba.png")
    pre = M.Preprocess(size=64, resize_to=64)
    for name in ("gray.png", "rgba.png"):
        assert pre(tmp_path / name).shape == (64, 64, 3)
    assert M.Preprocess(size=64, resize_to=64, mode="squash")(p).shape == (64, 64, 3)


# ------------------------------------------------------------------ embedder


def test_embed_files_batches_and_skips_unreadable(lite0, tmp_path):
    paths = [make_photo(tmp_path / f"t{i}.jpg", i, size=(256, 192)) for i in range(7)]
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths.insert(3, bad)
    paths.append(tmp_path / "does-not-exist.jpg")
    errors, prog = [], []
    out = list(embed_files(lite0, paths, batch=3, workers=2, on_error=lambda i, p, e: errors.append(i),
                           progress=lambda d, t: prog.append((d, t))))
    idx = [i for b in out for i in b.indices]
    assert idx == [0, 1, 2, 4, 5, 6, 7]
    assert sorted(errors) == [3, 8]
    assert prog[-1] == (len(paths), len(paths))
    vecs = np.concatenate([b.vectors for b in out])
    assert vecs.dtype == np.float32 and vecs.shape == (7, 1280)
    ids = np.concatenate([b.topk[0] for b in out])
    assert ids.shape == (7, 5) and ids.dtype == np.int32
    # same vectors as one in-memory batch; a plain iterator (no len) works too
    ref, _ = lite0.forward(np.stack([lite0.prepare(paths[i]) for i in idx]))
    np.testing.assert_allclose(vecs, ref, atol=1e-4)
    again = np.concatenate([b.vectors for b in embed_files(lite0, iter(paths), batch=4, on_error=lambda *a: None)])
    np.testing.assert_allclose(again, vecs, atol=1e-4)


# ------------------------------------------------------------------ CLIP (random weights here)


def test_clip_random_weights_named_and_flagged():
    m = M.load_model("clip:ViT-S-32/random", device="cpu", log=lambda s: None)
    assert m.name == "clip:ViT-S-32/random" and m.random_weights and m.has_text and not m.has_labels
    assert m.dim == 384
    t = embed_text(m, ["a cat", "a dog"])
    assert t.shape == (2, 384)


def test_clip_load_leaves_the_applications_logging_alone():
    """Loading an open_clip model hides open_clip's own records ("initialized randomly" is what
    ``random`` asks for) but never silences the application's logging while it loads, and leaves
    the root logger's level, handlers and filters as they were."""
    import logging

    from torch.nn.modules.module import register_module_module_registration_hook

    root, app = logging.getLogger(), logging.getLogger("nearsort-test-app")
    before = (root.level, list(root.handlers), list(root.filters))
    seen: list[logging.LogRecord] = []
    keep = logging.Handler(logging.DEBUG)
    keep.emit = seen.append
    during = []

    def hook(module, name, submodule):  # runs inside open_clip's model construction
        if not during:
            during.append((logging.getLogger().level, app.isEnabledFor(logging.INFO)))
            app.info("the application logs while the model loads")

    root.addHandler(keep)
    root.setLevel(logging.INFO)
    handle = register_module_module_registration_hook(hook)
    try:
        M.load_model("clip:ViT-S-32/random", device="cpu", log=lambda s: None, cache=False)
    finally:
        handle.remove()
        root.removeHandler(keep)
        root.setLevel(before[0])
    assert during == [(logging.INFO, True)]
    messages = [r.getMessage() for r in seen]
    assert "the application logs while the model loads" in messages
    assert not any("initialized randomly" in m for m in messages)
    assert (root.level, root.handlers, root.filters) == before


def test_clip_load_does_not_configure_logging(tmp_path):
    """A program that never configured logging: loading CLIP adds no handler to the root logger
    (open_clip's ``logging.info`` would call basicConfig) and the program's warnings still print."""
    import subprocess
    import sys

    code = (
        "import logging\n"
        "from nearsort.embed import models as M\n"
        "M.load_model('clip:ViT-S-32/random', device='cpu', log=lambda s: None)\n"
        "root = logging.getLogger()\n"
        "print('handlers', root.handlers, 'level', root.level, 'filters', root.filters)\n"
        "logging.getLogger('app').warning('app warning after the load')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "handlers [] level 30 filters []"  # WARNING, as Python starts it
    assert "app warning after the load" in r.stderr
    assert "initialized randomly" not in r.stderr


def test_clip_file_agrees_with_open_clip(clip_file, tmp_path):
    import open_clip

    ref, preprocess, path = clip_file
    m = M.load_model("clip:ViT-S-32", weights=path, device="cpu", log=lambda s: None)
    assert m.name.startswith("clip:ViT-S-32/file-") and m.dim == 384
    imgs = [make_photo(tmp_path / f"c{i}.jpg", 10 + i, size=(256, 180 + 20 * i)) for i in range(3)]
    got = np.concatenate([b.vectors for b in embed_files(m, imgs, batch=2)])
    with torch.inference_mode():
        x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in imgs])
        want = torch.nn.functional.normalize(ref.encode_image(x), dim=-1).numpy()
        tok = open_clip.get_tokenizer("ViT-S-32")(["a photo of a cat", "espresso"])
        twant = torch.nn.functional.normalize(ref.encode_text(tok), dim=-1).numpy()
    assert np.abs(got - want).max() < 1e-3
    np.testing.assert_allclose(embed_text(m, ["a photo of a cat", "espresso"]), twant, atol=1e-4)


def test_auto_uses_env_clip_weights(clip_file, monkeypatch):
    _, _, path = clip_file
    monkeypatch.setenv(M.ENV_CLIP_WEIGHTS, str(path))
    monkeypatch.setenv(M.ENV_CLIP_MODEL, "ViT-S-32")
    msgs = []
    m = M.load_model("auto", device="cpu", log=msgs.append)
    assert m.kind == "clip" and m.name.startswith("clip:ViT-S-32/") and m.info["auto"]
    assert any(m.name in s for s in msgs)


def test_auto_falls_back_to_lite0(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    monkeypatch.delenv(M.ENV_CLIP_WEIGHTS, raising=False)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.cache/clip
    assert M.find_local_clip() is None
    msgs = []
    m = M.load_model("auto", device="cpu", log=msgs.append)
    assert m.name == "efficientnet-lite0@160" == M.known_name("auto")  # lite0 at its auto input side
    assert m.preprocess.size == 160 and m.preprocess.resize_to == 183 and m.dim == 1280 and m.has_labels
    assert any("efficientnet-lite0@160" in s for s in msgs)


def test_lite0_input_side_is_part_of_its_name():
    assert M.parse_name("efficientnet-lite0@224") == M.parse_name("efficientnet-lite0")
    assert M.parse_name("efficientnet-lite0@160").name == "efficientnet-lite0@160"
    assert M.known_name("lite0@192") == "efficientnet-lite0@192"
    for bad in ("efficientnet-lite0@100", "efficientnet-lite0@x", "efficientnet-lite0@32"):
        with pytest.raises(M.ModelUnavailable, match="multiple of 32"):
            M.parse_name(bad)


def test_clip_cache_is_found_without_network(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    hub = tmp_path / "hub"
    repo = hub / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    snap = repo / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hub))
    monkeypatch.delenv(M.ENV_CLIP_WEIGHTS, raising=False)
    assert M.cached_clip_weights("ViT-B-32", "laion2b_s34b_b79k") == str(snap / "open_clip_model.safetensors")
    assert M.find_local_clip() == ("clip:ViT-B-32/laion2b_s34b_b79k", None)


def test_offline_download_gives_clear_error(monkeypatch):
    import open_clip.factory as F

    def offline(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(F, "download_pretrained", offline)
    monkeypatch.setattr(M, "cached_clip_weights", lambda a, t: None)
    with pytest.raises(M.ModelUnavailable) as ei:
        M.load_model("clip:ViT-B-32/laion2b_s34b_b79k", device="cpu", log=lambda s: None)
    msg = str(ei.value)
    assert "clip:ViT-B-32/laion2b_s34b_b79k" in msg and "--weights PATH" in msg and "offline" in msg


def test_timm_and_tv_from_weight_files(tmp_path, monkeypatch):
    import timm
    import torchvision

    p1 = tmp_path / "r18_timm.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), p1)
    t = M.load_model("timm:resnet18", weights=p1, device="cpu", log=lambda s: None)
    assert t.dim == 512 and t.has_labels and t.name.startswith("timm:resnet18/file-")
    p2 = tmp_path / "r18_tv.pth"
    torch.save(torchvision.models.resnet18().state_dict(), p2)
    v = M.load_model("tv:resnet18", weights=p2, device="cpu", log=lambda s: None)
    x = np.stack([v.prepare(make_photo(tmp_path / "x.png", 3))] * 2)
    vecs, (ids, probs) = v.forward(x)
    assert vecs.shape == (2, 512) and ids.shape == (2, 5)
    # the tv penultimate features really are the classifier's input
    net = torchvision.models.resnet18()
    net.load_state_dict(torch.load(p2))
    net.eval()
    with torch.inference_mode():
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
        xt = (xt - torch.tensor(v.preprocess.mean).view(1, 3, 1, 1)) / torch.tensor(v.preprocess.std).view(1, 3, 1, 1)
        net.fc = torch.nn.Identity()
        want = torch.nn.functional.normalize(net(xt), dim=-1).numpy()
    assert np.abs(vecs - want).max() < 1e-3


def test_parse_names():
    assert M.parse_name("efficientnet-lite0").family == "lite0"
    r = M.parse_name("clip:ViT-B-32/laion2b_s34b_b79k")
    assert (r.family, r.arch, r.tag) == ("clip", "ViT-B-32", "laion2b_s34b_b79k")
    assert M.parse_name("timm:convnext_tiny").name == "timm:convnext_tiny"
    assert M.parse_name("tv:resnet50").name == "tv:resnet50"
    assert M.parse_name("convnext_tiny").name == "timm:convnext_tiny"
    with pytest.raises(M.ModelUnavailable):
        M.parse_name("nope:thing")
    with pytest.raises(M.ModelUnavailable):
        M.load_model("clip:No-Such-Model", device="cpu")


# ------------------------------------------------------------------ ImageNet label search


def test_label_groups_match_class_names():
    names = [c["lemmas"][0] for c in M.imagenet_classes()]
    assert (names[151], names[268], names[269]) == ("Chihuahua", "Mexican hairless", "timber wolf")
    assert (names[281], names[285], names[286]) == ("tabby", "Egyptian cat", "cougar")
    assert names[967] == "espresso" and names[504] == "coffee mug"
    for key, spans in M.LABEL_GROUPS.items():
        for sp in spans:
            for i in (sp if isinstance(sp, tuple) else (sp,)):
                assert 0 <= i < 1000, key


def test_label_query():
    top = lambda q: [i for i, _ in M.label_query(q)]  # noqa: E731
    assert top("espresso")[0] == 967
    assert M.label_query("espresso")[0][1] == 1.0
    assert set(top("cat")[:5]) == set(range(281, 286))
    assert set(top("cats")[:5]) == set(range(281, 286))
    assert set(top("big cats")[:8]) == set(range(286, 294))
    assert top("coffee mug")[0] == 504
    assert 967 in top("coffee")[:5]
    dogs = set(top("a photo of a dog"))
    assert set(range(151, 269)) <= dogs
    assert 817 in top("sports car")[:1]
    assert M.label_query("zzzzqqq") == []
