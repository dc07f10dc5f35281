"""Inference backends: the registry (models.py) defines a model, a backend runs its image tower.

``torch`` (``Model.forward``), ``onnx`` (ONNX Runtime on the CPU, the image tower exported once,
cached per user, checked once against torch on real images: cosine >= MIN_COSINE) and ``auto``
(onnx on the CPU, else torch; falls back to torch with one line). Once a graph is checked, ``load``
opens it again from what names the model (registry name, weights file, this code) without torch.
docs/design.md, "Backends".
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np

from nearsort.embed.models import TOPK, Model, ModelUnavailable, Preprocess, cache_dir

BACKENDS = ("auto", "torch", "onnx")
MIN_COSINE = 0.999
CHECK_IMAGES = 8
GRAPH_VERSION = 1  # bump when the exported graph's inputs/outputs change

LogFn = Callable[[str], None]


class Backend(Protocol):
    name: str
    model: Model

    def forward(self, batch: np.ndarray, *, topk: int = TOPK): ...


class TorchBackend:
    """``Model.forward`` itself."""

    name = "torch"

    def __init__(self, model: Model):
        self.model = model

    def forward(self, batch: np.ndarray, *, topk: int = TOPK):
        return self.model.forward(batch, topk=topk)


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class OnnxBackend:
    """An ONNX Runtime session over the exported graph; same results as ``Model.forward``."""

    name = "onnx"

    def __init__(self, model: Model, graph: Path, threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or cpu_threads()
        so.inter_op_num_threads = 1
        # no busy-waiting between batches: the decode threads need those cycles
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.log_severity_level = 3
        self.model = model
        self.graph = graph
        self.session = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"])
        self._labels = len(self.session.get_outputs()) > 1

    def forward(self, batch: np.ndarray, *, topk: int = TOPK):
        outs = self.session.run(None, {"x": np.ascontiguousarray(batch, dtype=np.uint8)})
        vecs = np.asarray(outs[0], dtype=np.float32)
        if not (self._labels and topk):
            return vecs, None
        probs = np.asarray(outs[1], dtype=np.float32)
        ids = np.argsort(-probs, axis=1, kind="stable")[:, :topk]
        return vecs, (ids.astype(np.int32), np.take_along_axis(probs, ids, axis=1))


# ------------------------------------------------------------------ export + cache


def weights_hash(model: Model) -> str:
    """sha256 over the names, shapes and bytes of the tensors the image tower is exported from."""
    import hashlib

    import torch

    net = model.net.visual if model.kind == "clip" else model.net
    h = hashlib.sha256()
    for k, t in sorted({**dict(net.named_parameters()), **dict(net.named_buffers())}.items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def graph_dir(model: Model, root: Path | None = None) -> Path:
    import hashlib

    key = json.dumps({"name": model.name, "weights": weights_hash(model), "preprocess": model.preprocess.as_dict(),
                      "labels": model.has_labels, "graph": GRAPH_VERSION}, sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model.name)[:60]
    return (root or cache_dir() / "onnx") / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _graph_module(model: Model):
    import torch

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model.net
            pre = model.preprocess
            self.register_buffer("mean", torch.tensor([v * 255.0 for v in pre.mean]).view(1, 3, 1, 1))
            self.register_buffer("inv_std", torch.tensor([1.0 / (v * 255.0) for v in pre.std]).view(1, 3, 1, 1))

        def forward(self, x):  # uint8 (b, H, W, 3)
            x = (x.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std
            feats, logits = model._image_fn(self.net, x)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
            if logits is not None and model.has_labels:
                return feats, logits.float().softmax(-1)
            return (feats,)

    return Graph().eval()


def export(model: Model, out: Path) -> None:
    """Export the image tower of ``model`` to ``out/model.onnx`` (+ ``model.onnx.data``)."""
    import contextlib
    import io
    import logging
    import warnings

    import torch

    s = model.preprocess.size
    x = torch.zeros((2, s, s, 3), dtype=torch.uint8)
    exporter_log = logging.getLogger("torch.onnx")
    old = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            torch.onnx.export(_graph_module(model), (x,), str(out / "model.onnx"), input_names=["x"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=True)
    finally:
        exporter_log.setLevel(old)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def check(model: Model, backend: Backend, images: Iterable) -> dict:
    """Vectors of ``backend`` vs torch's on up to CHECK_IMAGES of ``images`` (paths or PIL images;
    unreadable ones are skipped): {"ok", "min_cosine", "images"}; ok is None when none was readable."""
    arrays = []
    for im in images:
        try:
            arrays.append(model.prepare(im))
        except Exception:  # noqa: BLE001 -- an unreadable file: the next one
            continue
        if len(arrays) >= CHECK_IMAGES:
            break
    if not arrays:
        return {"ok": None, "min_cosine": None, "images": 0}
    x = np.stack(arrays)
    cos = float(_cosines(backend.forward(x)[0], model.forward(x)[0]).min())
    return {"ok": cos >= MIN_COSINE, "min_cosine": round(cos, 7), "images": len(arrays)}


def _write_json(path: Path, data: dict) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as fh:
        json.dump(data, fh, indent=1)
    os.replace(fh.name, path)


_SESSIONS: dict[tuple, OnnxBackend] = {}


def onnx_backend(model: Model, images: Iterable = (), *, root: Path | None = None, log: LogFn | None = None,
                 threads: int | None = None) -> OnnxBackend:
    """The checked ONNX backend of ``model`` (exported and checked on ``images`` the first time).
    Raises ModelUnavailable with the reason when it cannot be used."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if model.device.type != "cpu":
        raise ModelUnavailable(f"--backend onnx runs on the CPU; {model.name} was loaded on {model.device} "
                               "(use --device cpu, or --backend torch)")
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ModelUnavailable(f"ONNX Runtime is not installed ({e}); pip install onnxruntime onnxscript") from e
    folder = graph_dir(model, root)
    key = (str(folder), threads)
    if key in _SESSIONS and _SESSIONS[key].model is model:
        return _SESSIONS[key]
    info_path = folder / "check.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    if info is None:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".tmp", dir=folder.parent))
        log(f"exporting {model.name} to ONNX once (cached in {folder.parent})...")
        try:
            export(model, tmp)
            info = {"model": model.name, "ok": None}
        except ImportError as e:  # onnx / onnxscript missing: nothing to record
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelUnavailable(f"the ONNX exporter needs {e.name or e} (pip install onnx onnxscript)") from e
        except Exception as e:  # noqa: BLE001 -- the exporter fails on this model: recorded, not retried
            for p in tmp.iterdir():
                p.unlink()
            info = {"model": model.name, "ok": False, "error": f"export failed: {type(e).__name__}: {' '.join(str(e).split())[:300]}"}
        except BaseException:  # Ctrl-C: no half-made graph is left behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _write_json(tmp / "check.json", info)
        try:
            os.replace(tmp, folder)
        except OSError:  # another process made it first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
            info = json.loads(info_path.read_text())
    if info.get("ok") is False:
        raise ModelUnavailable(info.get("error") or f"its ONNX graph disagrees with torch (min cosine "
                                                     f"{info.get('min_cosine')} < {MIN_COSINE})")
    be = OnnxBackend(model, folder / "model.onnx", threads)
    if info.get("ok") is None:
        res = check(model, be, images)
        if res["ok"] is None:
            raise ModelUnavailable("its ONNX graph is not checked yet (no readable image to check it on)")
        info.update(res)
        if not res["ok"]:
            info["error"] = (f"its ONNX graph disagrees with torch on real images (min cosine {res['min_cosine']} "
                             f"< {MIN_COSINE})")
        _write_json(info_path, info)
        if not res["ok"]:
            raise ModelUnavailable(info["error"])
        log(f"ONNX graph of {model.name} matches torch on {res['images']} images (min cosine {res['min_cosine']})")
    _SESSIONS.clear()  # one session kept: the last one used
    _SESSIONS[key] = be
    return be


def select(model: Model, backend: str = "auto", images: Iterable = (), *, log: LogFn | None = None,
           root: Path | None = None) -> Backend:
    """The backend to run ``model`` with (see module doc). ``images``: real images for the first check.
    ``auto`` falls back to torch with one line on ``log``; ``onnx`` raises ModelUnavailable instead."""
    backend = (backend or "auto").lower()
    if backend not in BACKENDS:
        raise ModelUnavailable(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    if backend == "torch" or (backend == "auto" and model.device.type != "cpu"):
        return TorchBackend(model)
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        return onnx_backend(model, images, root=root, log=log)
    except (ModelUnavailable, OSError) as e:
        if backend == "onnx":
            if isinstance(e, ModelUnavailable):
                raise
            raise ModelUnavailable(f"--backend onnx: cannot write the ONNX cache: {e}") from e
        log(f"note: {model.name} runs on torch, not ONNX Runtime: {' '.join(str(e).split())}")
        return TorchBackend(model)


# ------------------------------------------------------------------ a checked graph without torch


class _Cpu:
    """``Model.device`` of a model served from its cached graph (torch is not imported)."""

    type = "cpu"

    def __str__(self) -> str:
        return "cpu"


def _source(name: str, weights) -> str | None:
    """What names the graph of model ``name`` without loading it: the registry name, the identity of
    its weights file (path, size, mtime) and of this code; None when only loading can tell (a CLIP tag
    whose weights sit in a download cache)."""
    import hashlib

    from nearsort.embed import models

    qname = models.known_name(name, weights)
    if qname is None:
        return None
    try:
        ref = models._parse_prefixed(qname)
        lite0 = ref is not None and ref.family == "lite0"
        path = models._check_weights(weights) or (models.lite0_weights_path() if lite0 else None)
        if path is None:
            return None
        st = os.stat(path)
        code = hashlib.sha256(b"".join(Path(f).read_bytes() for f in (models.__file__, __file__))).hexdigest()
    except (ModelUnavailable, OSError):
        return None
    key = json.dumps({"name": qname, "weights": [path, st.st_size, st.st_mtime_ns], "code": code,
                      "graph": GRAPH_VERSION})
    return hashlib.sha256(key.encode()).hexdigest()[:24]


_CACHED: dict[tuple, tuple[Model, OnnxBackend]] = {}


def _source_file(key: str, root: Path | None) -> Path:
    return (root or cache_dir() / "onnx") / "sources" / f"{key}.json"


def cached(name: str, weights=None, device: str = "auto", backend: str = "auto", *, root: Path | None = None,
           log: LogFn | None = None) -> tuple[Model, OnnxBackend] | None:
    """(model, its ONNX backend) from a graph already exported and checked for this model, weights
    file and code, loading no torch; None when there is none (or ``backend``/``device`` rule it out):
    then load the model and ``select``. The model has no torch module (``net`` None, ``forward``
    unusable): it names, describes and prepares images; the backend runs it."""
    from nearsort.embed.models import auto_note, no_accelerator

    if (backend or "auto").lower() not in ("auto", "onnx") or not (
            device == "cpu" or (device in ("auto", None) and no_accelerator())):
        return None
    key = _source(name, weights)
    if key is None:
        return None
    if (key, root) in _CACHED:
        return _CACHED[(key, root)]
    try:
        src = json.loads(_source_file(key, root).read_text())
        folder = _source_file(key, root).parent.parent / src["graph"]
        if json.loads((folder / "check.json").read_text()).get("ok") is not True:
            return None
        card = src["model"]
        pre = card["preprocess"]
        pre = Preprocess(**{**pre, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])})
        model = Model(name=card["name"], kind=card["kind"], dim=int(card["dim"]), preprocess=pre, device=_Cpu(),
                      net=None, info=dict(card["info"]), num_classes=int(card["num_classes"]))
        be = OnnxBackend(model, folder / "model.onnx")
    except Exception:  # noqa: BLE001 -- no usable record (none, stale, damaged): load the model instead
        return None
    if (name or "auto").strip().lower() == "auto":
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(auto_note(model.name, model.kind == "clip"))
    _CACHED.clear()  # one kept, like _SESSIONS
    _CACHED[(key, root)] = (model, be)
    return model, be


def remember(name: str, weights, model: Model, backend: Backend, *, root: Path | None = None) -> None:
    """After ``select`` gave a checked ONNX backend for ``model`` loaded as (``name``, ``weights``):
    record it so that ``cached`` serves the next run without torch (best effort)."""
    if not isinstance(backend, OnnxBackend) or model.net is None:
        return
    key = _source(name, weights)
    if key is None:
        return
    card = {"name": model.name, "kind": model.kind, "dim": model.dim, "num_classes": model.num_classes,
            "preprocess": model.preprocess.as_dict(), "info": {k: v for k, v in model.info.items() if k != "auto"}}
    path = _source_file(key, root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_json(path, {"graph": backend.graph.parent.name, "model": card})
    except OSError:
        pass  # an unwritable cache: the next run loads the model again


def load(name: str, weights=None, device: str = "auto", backend: str = "auto", images: Iterable = (), *,
         log: LogFn | None = None, export: bool = True) -> tuple[Model, Backend]:
    """(model, backend) to embed images with: ``cached`` (no torch), else ``load_model`` + ``select``
    (+ ``remember``). ``images``: real images for a first check of a new graph. ``export=False``
    (a few query images): a model with no exported graph yet runs on torch rather than export one."""
    from nearsort.embed.models import load_model

    got = cached(name, weights, device, backend, log=log)
    if got is not None:
        return got
    model = load_model(name, weights=weights, device=device, log=log)
    if not export and backend == "auto" and not graph_dir(model).is_dir():
        return model, TorchBackend(model)
    be = select(model, backend, images, log=log)
    remember(name, weights, model, be)
    return model, be
