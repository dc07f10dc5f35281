"""The layout: data flows one way through the packages, and no module imports itself in a circle.

Every ``import`` of a nearsort module anywhere in src/nearsort (also inside functions) is read with
``ast``. A module may import the modules of its own package and of the layers before its own;
imports between two packages of one layer are only those named in ``PEERS`` (with the reason).
A new top-level module or package must be given its place in ``LAYERS``.
"""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# Earliest first. A module may import its own package and every layer before its own.
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"errors", "fsio", "frames", "stage", "textsafe", "workers"}),  # usable by all; import no nearsort module
    ("engine", {"engine"}),      # where per-file work runs: here (workers) or on a Ray cluster; imports only base
    ("vectors", {"vectors"}),    # float16 vector stores + FAISS on disk; know nothing of the catalog
    ("store", {"store"}),        # the catalog (schema, lock, SQL), the thumbnail file format, THUMBS <-> catalog
    ("ingest", {"ingest"}),      # SRC -> thumbnails + catalog (scan, decode, thumbs, resize)
    ("embed", {"embed"}),        # models, embedder, featurize (writes vectors), search
    ("order", {"order"}),        # chain order, pages, analyze
    ("journal", {"journal"}),    # planned, journaled, recoverable moves; knows no kinds
    ("stages", {"refresh", "dupes", "quality", "report", "export", "review"}),
    ("api", {"nearsort", "pipeline"}),  # nearsort/__init__.py (the public API), pipeline.run
    ("cli", {"cli"}),            # parses, calls the API, prints
]

# Imports between two packages of the same layer, and why.
PEERS = {
    ("refresh", "dupes"): "undo reverts quarantines: refresh imports dupes.quarantine, which registers its journal kind",
    ("report", "dupes"): "the report shows the duplicate groups",
    ("report", "quality"): "the report shows the quality lists",
    ("review", "dupes"): "review decides the groups dupes found and stored, and applies them with its quarantine",
    ("review", "quality"): "the review app lists the quality outliers",
    ("review", "refresh"): "the review app's undo button is refresh.undo",
    ("nearsort", "pipeline"): "the public API exports pipeline.run",
}


def _modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of the nearsort package."""
    out = {}
    for f in sorted((SRC / "nearsort").rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The nearsort modules ``name`` imports (``from pkg import mod`` counts as an import of mod)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "nearsort")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            if base.split(".")[0] != "nearsort":
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.add(sub if sub in known else base)
    out.discard(name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {m: {i for i in _imports(m, p, known) if i in known} for m, p in mods.items()}


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "nearsort"


def _rank() -> dict[str, int]:
    return {g: i for i, (_, groups) in enumerate(LAYERS) for g in groups}


def test_every_module_has_its_place_in_the_layers():
    rank = _rank()
    missing = sorted({_group(m) for m in _graph()} - set(rank))
    assert not missing, f"give {missing} a layer in LAYERS (tests/unit/test_layout.py)"


def test_no_import_cycles():
    graph = _graph()
    cycles, state, stack = [], {}, []

    def visit(m: str) -> None:  # depth-first; a back edge closes a cycle
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_follow_the_pipeline():
    rank = _rank()
    wrong = []
    for m, deps in sorted(_graph().items()):
        a = _group(m)
        for d in sorted(deps):
            b = _group(d)
            if a == b or rank.get(b, -1) < rank.get(a, -1) or (a, b) in PEERS:
                continue
            wrong.append(f"{m} imports {d} ({LAYERS[rank[a]][0]} -> {LAYERS[rank[b]][0]})")
    assert not wrong, "imports against the pipeline direction:\n" + "\n".join(wrong)


def test_base_modules_import_no_nearsort_module():
    graph = _graph()
    base = LAYERS[0][1]
    wrong = [f"{m} imports {sorted(graph[m])}" for m in sorted(graph) if _group(m) in base and graph[m]]
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_imports_inside_functions_and_from_package_imports():
    """The reader itself: a lazy import in a function body and ``from nearsort.dupes import quarantine``
    are both edges (else a cycle hidden in a function would pass)."""
    graph = _graph()
    assert "nearsort.dupes.quarantine" in graph["nearsort.refresh"]   # from nearsort.dupes import quarantine
    assert "nearsort.embed.models" in graph["nearsort.embed.featurize"]  # imported inside functions
