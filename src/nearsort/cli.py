"""Command line (typer). Thin: parse, call the library, print."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from nearsort.store.catalog import Catalog, CatalogError
# a file name, path, tag or message in a rich markup line: textsafe.markup; lines printed with
# markup=False or plain print() use term() alone
from nearsort.textsafe import markup as _name, term

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Sort huge photo libraries by visual similarity -- originals are only ever read.",
)
# emoji=False: a file named ":smile:.jpg" is printed as it is named
out = Console(soft_wrap=True, emoji=False)
err = Console(stderr=True, soft_wrap=True, emoji=False)


def fail(msg: str, code: int = 2) -> None:
    # every control character of the message is escaped (a name in it cannot drive the
    # terminal); only the line breaks of multi-line messages stay
    safe = "\n".join(term(line) for line in str(msg).split("\n"))
    err.print(f"[bold red]error:[/] {escape(safe)}", highlight=False)
    raise typer.Exit(code)


class _Progress:
    """A rich progress bar per stage on a terminal; silent otherwise (logs, CI, --json).

    Called as every stage's ``progress(stage, done, total)``: a new stage name starts a new bar."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and err.is_terminal
        self.bar = None
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=err, transient=False,
            )
            self.bar.__enter__()
        return self

    def __call__(self, stage: str, done: int, total: int | None = None) -> None:
        if self.bar is None:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(escape(term(stage)), total=None, rate="")
        task = self.tasks[stage]
        t = next(x for x in self.bar.tasks if x.id == task)
        rate = f"{done / t.elapsed:.1f}/s" if t.elapsed else ""
        self.bar.update(task, completed=done, total=total, rate=rate)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _explain(e: BaseException) -> str | None:
    """The one line an expected failure is shown as; None for a bug (its traceback is shown)."""
    import sqlite3

    from nearsort.store.catalog import CatalogDamaged, DiskFull, catalog_path, is_damage, is_disk_full

    if isinstance(e, CatalogError):
        return str(e)
    root = Catalog.last_root
    if is_disk_full(e, root):
        return str(DiskFull(e, root or "the disk"))
    if isinstance(e, sqlite3.DatabaseError) and root is not None:
        if is_damage(e):
            return str(CatalogDamaged(root, str(e), catalog_path(root)))
        if isinstance(e, sqlite3.OperationalError):  # locked for too long, I/O error, read-only disk
            return f"catalog {catalog_path(root)}: {e}"
    if isinstance(e, (FileNotFoundError, NotADirectoryError, PermissionError)):
        return str(e)
    return None


def _run(fn, *args, **kwargs):
    """Call into the library, turning expected problems into clear messages."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        msg = _explain(e)
        if msg is None:
            raise
        fail(msg)


ENGINE_HELP = "Where the per-file work runs: local (this machine) | ray (a Ray cluster; see --address)."
ADDRESS_HELP = ("Ray cluster HOST:PORT (what `ray start --head` prints); default: $RAY_ADDRESS, else the cluster "
                "started on this machine, else a Ray of its own.")


# --------------------------------------------------------------------------- resize
@app.command()
def resize(
    src: Path = typer.Argument(..., help="Photo library to read (never written to)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="THUMBS folder (local disk) for thumbnails + catalog."),
    size: int = typer.Option(256, "--size", help="Long side of the thumbnails, in pixels."),
    layout: str = typer.Option("week", "--layout", help="Folders: 'week' (YYYY/Www by capture date) or 'hash'."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Decoder processes (default: all cores; "
                                                                         "ray: at most this many tasks at once)."),
    engine: str = typer.Option("local", "--engine", help=ENGINE_HELP + " Every Ray worker must see SRC at the same path."),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    timeout: float = typer.Option(60.0, "--timeout", help="Seconds a decoder may spend on one file before it is "
                                  "stopped and the file recorded as an error (retried by the next resize; local engine)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
):
    """Make a thumbnail of every new or changed photo under SRC, named {W}x{H}_{phash}."""
    from nearsort import Interrupted, resize as do_resize

    interrupted = False
    with _Progress(not as_json) as prog:
        try:
            s = _run(do_resize, src, out_dir, size=size, layout=layout, workers=workers, timeout=timeout, progress=prog,
                     engine=engine, address=address)
        except Interrupted as e:
            s, interrupted = e.result, True
    if as_json:
        print(json.dumps(s.to_dict(), indent=2))
    else:
        out.print(
            f"{'[yellow]Interrupted[/]' if interrupted else '[green]Done[/]'}: {s.scanned} photos found, "
            f"{s.processed} processed, {s.unchanged} unchanged, {s.new_thumbnails} new thumbnails, "
            f"{s.merged} collapsed into existing ones, {s.errors} errors "
            f"({s.images_per_second} images/s)."
        )
        if s.missing:
            out.print(f"{s.missing} previously seen files are gone from SRC (kept in the catalog as 'missing').")
        if s.errors:
            for e in s.error_samples[:5]:
                out.print(f"  [red]✗[/] {_name(e['path'])}: {_name(e['error'])}", highlight=False)
            out.print(f"See all with: nearsort errors {_name(out_dir)}", highlight=False)
        if interrupted:
            out.print("Everything finished so far is saved; run the same command again to continue.")
        else:
            out.print(f"Thumbnails are in {_name(out_dir)}", highlight=False)
    if interrupted:
        raise typer.Exit(130)


# --------------------------------------------------------------------------- rebuild / errors / export / info
@app.command()
def rebuild(thumbs: Path = typer.Argument(..., help="THUMBS folder.")):
    """Recreate the catalog from the metadata carried by the thumbnails themselves."""
    from nearsort import rebuild as do_rebuild

    with _Progress() as bar:
        s = _run(do_rebuild, thumbs, progress=bar)
    out.print(f"Rebuilt the catalog from {s.imported} thumbnails: {s.sources} source files, "
              f"{s.originals} distinct originals.")
    if s.previous_catalog:
        out.print(f"The previous catalog was kept as {_name(s.previous_catalog)}", highlight=False)
    for model, n in s.vectors.items():
        out.print(f"Kept the vectors of {n} thumbnails for model {_name(model)} (featurize does not redo them).",
                  highlight=False)
    out.print("Files that could not be made into thumbnails are listed again by the next `nearsort resize`.")
    for rel, why in s.problems[:10]:
        out.print(f"  [yellow]![/] {_name(rel)}: {_name(why)}", highlight=False)


@app.command()
def errors(
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    as_json: bool = typer.Option(False, "--json"),
):
    """List source files that could not be made into thumbnails, with the reason."""
    from nearsort import list_errors

    rows = _run(list_errors, thumbs).errors
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for e in rows:
        print(f"{term(e['path'])}\t{term(e['error'])}")
    err.print(f"{len(rows)} errors")


@app.command()
def export(
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    csv_path: Optional[str] = typer.Option(None, "--csv", help="Write CSV here ('-' for stdout)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write JSON here ('-' for stdout)."),
):
    """Export one row per source file (paths, sizes, hashes, dates, quality, ranks, tags)."""
    from nearsort import export as do_export

    if not csv_path and not json_path:
        fail("give --csv FILE and/or --json FILE")
    err.print(f"{_run(do_export, thumbs, csv_path, json_path).rows} rows written")


@app.command()
def info(
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """What the catalog holds."""
    from nearsort import info as do_info

    s = _run(do_info, thumbs).to_dict()
    if as_json:
        print(json.dumps(s, indent=2, default=str))
        return
    last = s.pop("last_command"), s.pop("last_status")
    for k, v in s.items():
        out.print(f"{k:>12}: {v}")
    if last[0]:
        out.print(f"last run: {_name(last[0])} ({last[1]})")

# --------------------------------------------------------------------------- featurize / search / similar
BACKEND_HELP = "auto (ONNX Runtime on the CPU, else torch) | onnx | torch."


@app.command()
def featurize(
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    model: str = typer.Option("auto", "--model", "-m", help="auto, efficientnet-lite0, clip:ARCH/TAG (e.g. clip:ViT-B-32/laion2b_s34b_b79k), timm:NAME, tv:NAME."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local weights file (no download)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | mps."),
    batch: int = typer.Option(32, "--batch", help="Images per batch."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    engine: str = typer.Option("local", "--engine", help=ENGINE_HELP + " The model runs in Ray actors, on the "
                                                                     "cluster's GPUs if it has any."),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
):
    """Embed every thumbnail that has no vector for the model yet (resumable)."""
    from nearsort import Interrupted, featurize as do_featurize

    interrupted = False
    with _Progress(not as_json) as prog:
        try:
            s = _run(do_featurize, thumbs, model=model, weights=weights, device=device, batch=batch,
                     backend=backend, progress=prog, log=lambda msg: err.print(_name(msg), highlight=False),
                     engine=engine, address=address)
        except Interrupted as e:
            s, interrupted = e.result, True
    if as_json:
        print(json.dumps(s.to_dict(), indent=2))
    else:
        rw = " [yellow](random weights — speed test only)[/]" if s.random_weights else ""
        out.print(
            f"{'[yellow]Interrupted[/]' if interrupted else '[green]Done[/]'}: model {_name(s.model)}{rw} on {_name(s.device or 'no device (nothing to embed)')}{' via ' + s.backend if s.backend else ''}: "
            f"{s.embedded} thumbnails embedded, {s.already} already had a vector, {s.errors} unreadable "
            f"({s.images_per_second} images/s)."
        )
        for e in s.error_samples[:5]:
            out.print(f"  [red]✗[/] {_name(e['path'])}: {_name(e['error'])}", highlight=False)
        if s.relocated:
            out.print(f"{s.relocated} thumbnails were found in the folders they were moved to (catalog updated).")
        if s.missing:
            out.print(f"{s.missing} thumbnails have no file below THUMBS (deleted?): "
                      "`nearsort resize SRC --out THUMBS` remakes them.")
        if interrupted:
            out.print("Everything finished so far is saved; run the same command again to continue.")
    if interrupted:
        raise typer.Exit(130)


def _print_hits(r, as_json: bool) -> None:
    if as_json:  # ASCII: non-UTF-8 names (lone surrogates) and control characters come out escaped
        print(json.dumps(r.to_dict(), indent=2, ensure_ascii=True))
        return
    if r.random_weights:
        err.print(f"[yellow]note:[/] {_name(r.model)} has random weights (speed test only); results are meaningless")
    if getattr(r, "fallback", False):
        cls = ", ".join(f"{c['name']} ({c['weight']:.2f})" for c in (r.classes or [])[:5])
        err.print(f"[yellow]note:[/] {_name(r.model)} has no text tower: ImageNet label search"
                  + (f" over {_name(cls)}" if cls else ""), highlight=False)
    if getattr(r, "message", None):
        err.print(_name(r.message), highlight=False)
    for i, h in enumerate(r.results, 1):
        src = _name(h["sources"][0]) if h["sources"] else "-"
        more = f" (+{len(h['sources']) - 1} copies)" if len(h["sources"]) > 1 else ""
        out.print(f"{i:3d}  {h['score']:.3f}  {_name(h['relpath'])}  {src}{more}", highlight=False, soft_wrap=True)
    if not r.results:
        err.print("no results")


@app.command()
def search(
    text: str = typer.Argument(..., help="What to look for, e.g. \"dog on a beach\"."),
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    k: int = typer.Option(20, "-k", help="Number of results."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Featurized model to use (default: CLIP if any, else newest)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | mps."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Find thumbnails by text (CLIP), or by ImageNet labels with a CNN model."""
    from nearsort import search as do_search

    _print_hits(_run(do_search, thumbs, text, k=k, model=model, device=device), as_json)


@app.command()
def similar(
    image: str = typer.Argument(..., help="A thumbnail (path, relpath or name), a source photo, or any image file."),
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    k: int = typer.Option(20, "-k", help="Number of results."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Featurized model to use (default: newest)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | mps."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
):
    """Find the thumbnails most similar to IMAGE (images outside the library are embedded on the fly)."""
    from nearsort import similar as do_similar

    _print_hits(_run(do_similar, thumbs, image, k=k, model=model, device=device), as_json)


# --------------------------------------------------------------------------- dupes / quality / report
@app.command()
def dupes(
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    threshold: float = typer.Option(0.5, "--threshold", "-t",
                                    help="Embedding cosine for near-duplicate candidates (each is confirmed on the thumbnails)."),
    phash_distance: int = typer.Option(8, "--phash-distance", help="Perceptual-hash bits that may differ (0-32)."),
    crop_distance: int = typer.Option(12, "--crop-distance", help="Crop-aware hash bits that may differ for near duplicates."),
    model: Optional[str] = typer.Option(None, "--model", help="Embeddings to use (default: the latest featurized)."),
    keep: str = typer.Option("resolution,metadata,size,oldest", "--keep",
                             help="Keeper policy, a comma list of resolution, metadata, size, oldest, newest, path."),
    move_to: Optional[Path] = typer.Option(None, "--move-to",
                                           help="Move the non-keepers here (mirroring their paths); `nearsort undo` restores."),
    dry_run: bool = typer.Option(False, "--dry-run", help="With --move-to: show what would move, move nothing."),
    limit: Optional[int] = typer.Option(50, "--limit", help="Groups to print (0: all); --json prints all."),
    as_json: bool = typer.Option(False, "--json", help="Print groups, keepers and mirror images as JSON."),
):
    """Find duplicate photos (exact, perceptual, near); pick a keeper in each group; optionally quarantine the rest."""
    from nearsort import DupesConfig, find_duplicates, quarantine
    from nearsort.dupes.group import format_text, write_json
    from nearsort.dupes.quarantine import format_quarantine

    if dry_run and move_to is None:
        fail("--dry-run goes with --move-to")
    cfg = DupesConfig(threshold=threshold, phash_distance=phash_distance, crop_distance=crop_distance,
                      model=model, keep=keep)
    log = None if as_json else (lambda m: err.print(term(m), markup=False, highlight=False))
    with _Progress(not as_json) as prog:
        if move_to is None:
            res = _run(find_duplicates, thumbs, cfg, progress=prog, log=log)
        else:
            res = _run(quarantine, thumbs, move_to, config=cfg, dry_run=dry_run, progress=prog, log=log)
    if as_json:
        write_json(res, sys.stdout)
        return
    out.print(format_text(res, limit=limit or None), markup=False, highlight=False, soft_wrap=True)
    if res.quarantine is not None:
        out.print("")
        for line in format_quarantine(res.quarantine, thumbs):
            out.print(line, markup=False, highlight=False)


@app.command()
def quality(
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    dark: bool = typer.Option(False, "--dark", help="List dark photos."),
    bright: bool = typer.Option(False, "--bright", help="List overexposed photos."),
    blurry: bool = typer.Option(False, "--blurry", help="List blurry photos."),
    dark_below: Optional[float] = typer.Option(None, "--dark-below", help="Brightness threshold (0-255)."),
    bright_above: Optional[float] = typer.Option(None, "--bright-above", help="Brightness threshold (0-255)."),
    blur_below: Optional[float] = typer.Option(None, "--blur-below", help="Sharpness (Laplacian variance) threshold."),
    limit: Optional[int] = typer.Option(None, "--limit", help="At most this many per list."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Dark, overexposed and blurry photos (worst first) and unreadable files. Default: all lists."""
    from nearsort import Thresholds, assess_quality
    from nearsort.quality import KINDS, format_text, write_json

    kinds = [k for k, on in zip(KINDS, (dark, bright, blurry)) if on] or list(KINDS)
    res = _run(assess_quality, thumbs, kinds, Thresholds(dark_below, bright_above, blur_below), limit)
    if as_json:
        write_json(res, sys.stdout)
    else:
        out.print(format_text(res), markup=False, highlight=False, soft_wrap=True)


@app.command()
def report(
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    out_file: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
    inline: Optional[bool] = typer.Option(None, "--inline/--no-inline",
                                          help="Embed thumbnails in the page (default: only for small libraries)."),
):
    """Write one self-contained HTML page: summary, duplicate groups, similarity chain, quality, broken files."""
    from nearsort import write_report
    from nearsort.dupes.group import human_bytes

    with _Progress() as prog:
        s = _run(write_report, thumbs, out_file, inline=inline, progress=prog)
    out.print(f"Wrote {term(s.path)} ({human_bytes(s.bytes)}): {s.groups} duplicate groups, "
              f"{human_bytes(s.reclaimable)} reclaimable, {s.errors} unreadable files.",
              markup=False, highlight=False)


@app.command()
def review(
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    port: int = typer.Option(0, "--port", "-p", min=0, max=65535, help="Port to listen on (0: a free one)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    move_to: Optional[str] = typer.Option(None, "--move-to", help="Quarantine folder the Apply page proposes."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Only print the URL; do not open a browser."),
):
    """Decide the duplicate groups in a local web app (keyboard-driven), browse the chain, search, apply."""
    from nearsort.review import serve
    from nearsort.review.app import is_loopback

    if not is_loopback(host):
        err.print(f"[bold yellow]warning:[/] --host {escape(term(host))} is not a loopback address: anyone who "
                  "can reach this machine and learns the URL (with its token) can decide and move your "
                  "photos, and the traffic is not encrypted.", highlight=False)

    def ready(url: str) -> None:
        print(f"nearsort review: {url}", flush=True)
        print("(Ctrl-C stops the server)", file=sys.stderr, flush=True)

    _run(serve, thumbs, host=host, port=port, open_browser=not no_browser, move_to=move_to, ready=ready,
         log=lambda m: print(term(m), file=sys.stderr, flush=True))


# --------------------------------------------------------------------------- analyze / run
def _print_analyze(s) -> None:
    out.print(f"[green]Ordered[/] {s.thumbnails} thumbnails by {_name(s.ordering)} in {s.seconds} s.")
    if s.chain_length is not None:
        ratio = f" (ratio {s.mst_ratio:.3f}; 1.0 is the best any chain can do)" if s.mst_ratio else ""
        out.print(f"  chain length {s.chain_length:.3f}, minimum-spanning-tree bound "
                  f"{s.mst_weight if s.mst_weight is not None else 'n/a'}{ratio}; "
                  f"{s.long_jumps} long jumps")
    if s.without_vector:
        out.print(f"  {s.without_vector} thumbnails have no vector yet (placed at the end): run featurize")


@app.command()
def analyze(
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    by: str = typer.Option("similarity", "--by", help="similarity | date | size | phash | name"),
    model: Optional[str] = typer.Option(None, "--model", help="Embedding model (default: the latest featurized)."),
    fast: bool = typer.Option(False, "--fast", help="Approximate kNN graph even for small libraries."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
):
    """Order all thumbnails into one chain (nearest neighbour first) and store the ranks."""
    from nearsort import analyze as do_analyze

    with _Progress(not as_json) as prog:
        s = _run(do_analyze, thumbs, by=by, model=model, fast=fast, progress=prog)
    if as_json:
        print(json.dumps(s.to_dict(), indent=2))
    else:
        _print_analyze(s)
        out.print(f"Apply it with: nearsort refresh {_name(thumbs)} --dry-run   (then without --dry-run)")


@app.command()
def run(
    src: Path = typer.Argument(..., help="Photo library to read (never written to)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="THUMBS folder."),
    model: str = typer.Option("auto", "--model", help="Embedding model (auto: CLIP if its weights are here, "
                                                      "else efficientnet-lite0)."),
    fast: bool = typer.Option(False, "--fast", help="Approximate neighbours in analyze."),
    apply: bool = typer.Option(False, "--apply", help="Really rename (default: show the refresh plan only)."),
    layout: str = typer.Option("week", "--layout", help="Thumbnail folders for new thumbnails: week | hash."),
    per_page: int = typer.Option(500, "--per-page"),
    dupes: bool = typer.Option(True, "--dupes/--no-dupes", help="Look for duplicates (nothing is moved)."),
    quality: bool = typer.Option(True, "--quality/--no-quality", help="Look for dark, bright and blurry photos."),
    backend: str = typer.Option("auto", "--backend", help=BACKEND_HELP),
    engine: str = typer.Option("local", "--engine", help=ENGINE_HELP + " (resize and featurize)"),
    address: Optional[str] = typer.Option(None, "--address", help=ADDRESS_HELP),
):
    """resize → featurize → analyze → dupes + quality → refresh, in one go (refresh is a dry run unless --apply)."""
    from nearsort import Interrupted, run as do_run
    from nearsort.dupes.group import human_bytes

    interrupted = False
    with _Progress(True) as prog:
        try:
            r = _run(do_run, src, out_dir, model=model, fast=fast, apply=apply, layout=layout, per_page=per_page,
                     dupes=dupes, quality=quality, backend=backend, progress=prog, engine=engine, address=address)
        except Interrupted as e:
            r, interrupted = e.result, True
    s, f = r.resize, r.featurize
    if s is not None:
        out.print(f"resize: {s.processed} processed, {s.unchanged} unchanged, {s.errors} errors")
    if f is not None:
        out.print(f"featurize: model {_name(f.model)}, {f.embedded} new vectors")
    if interrupted:
        stage = "resize" if f is None else "featurize"
        out.print(f"[yellow]Interrupted[/] during {stage}; everything finished is kept: run again to continue.")
        raise typer.Exit(130)
    _print_analyze(r.analyze)
    if r.dupes is not None:
        d = r.dupes.summary
        out.print(f"dupes: {d['groups']} duplicate groups, {d['duplicates']} files could go "
                  f"({human_bytes(d['reclaimable_bytes'])}); see them with: nearsort dupes {_name(out_dir)}")
    if r.quality is not None:
        n = {k: len(v) for k, v in r.quality.lists.items()}
        out.print(f"quality: {n.get('dark', 0)} dark, {n.get('bright', 0)} overexposed, {n.get('blurry', 0)} blurry, "
                  f"{len(r.quality.errors)} unreadable; see them with: nearsort quality {_name(out_dir)}")
    x = r.refresh
    if apply:
        out.print(f"refresh: {x.moved} thumbnails renamed into {x.pages or 0} page folders. "
                  f"Undo with: nearsort undo {_name(out_dir)}")
        out.print(f"[bold]Look in {_name(out_dir)}[/] -- open the p0001/ folder in your file browser, "
                  "sorted by name: similar photos sit side by side.")
    else:
        out.print(f"refresh (dry run): {len(x.plan)} thumbnails would be renamed; nothing changed. "
                  f"Re-run with --apply, or: nearsort refresh {_name(out_dir)}")


# --------------------------------------------------------------------------- refresh / undo / tags
@app.command()
def refresh(
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the full plan (old → new); change nothing."),
    reset: bool = typer.Option(False, "--reset", help="Strip the rank prefixes; back to the week folders."),
    layout: Optional[str] = typer.Option(
        None, "--layout",
        help="'pages' (default: p0001/, p0002/ ... cut at the biggest jumps) or 'flat' (rename in place). "
             "With --reset: 'week' (default), 'hash' or 'flat' (only strip prefixes)."),
    per_page: int = typer.Option(500, "--per-page", help="At most this many thumbnails per page folder."),
    by: Optional[str] = typer.Option(None, "--by", help="Ordering to apply (default: the last `analyze`)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
):
    """Rename thumbnails {rank}_{name}.jpg in chain order, so any file browser shows look-alikes side by side."""
    from nearsort import refresh_names

    with _Progress(not as_json and not dry_run) as prog:
        s = _run(refresh_names, thumbs, dry_run=dry_run, reset=reset, layout=layout, per_page=per_page,
                 ordering=by, progress=prog)
    if as_json:
        print(json.dumps(s.to_dict(), indent=2, default=str))
        return
    if dry_run:
        for old, new in s.plan:
            print(f"{term(old)} → {term(new)}")
        if s.pending_ops:
            err.print(f"an interrupted operation ({s.pending_ops}) will be finished first")
        err.print(f"dry run: {len(s.plan)} of {s.thumbnails} thumbnails would move"
                  + (f" ({_name(s.ordering)})" if s.ordering else "") + "; nothing was changed.")
        return
    for r in s.recovered:
        out.print(f"Finished the interrupted {r['kind']} #{r['op_id']} first.")
    what = "reset to plain names" if reset else f"renamed in {_name(s.ordering)} order"
    if s.op_id is None:
        out.print(f"[green]Already done[/]: all {s.thumbnails} thumbnails are {what}.")
    else:
        pages = f" into {s.pages} page folders" if s.pages and s.layout == "pages" else ""
        out.print(f"[green]Done[/]: {s.moved} of {s.thumbnails} thumbnails {what}{pages}.")
    if s.tags_added:
        out.print(f"{s.tags_added} folder tags recorded (list them: nearsort tags {_name(thumbs)}).")
    if s.unranked:
        out.print(f"{s.unranked} thumbnails are newer than the last analyze: placed at the end "
                  "(run `nearsort analyze` to place them).")
    if s.missing:
        out.print(f"{s.missing} catalog thumbnails have no file (deleted?); `nearsort resize` remakes them.")
    for x in s.skipped[:10]:
        out.print(f"  [yellow]![/] {_name(x['src'])}: {_name(x['why'])}", highlight=False)
    if s.op_id is not None:
        out.print(f"Undo with: nearsort undo {_name(thumbs)}")


@app.command()
def undo(
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable summary."),
):
    """Revert the last refresh (or reset / quarantine) exactly; run it again to revert the one before."""
    from nearsort import undo as do_undo

    with _Progress(not as_json) as prog:
        s = _run(do_undo, thumbs, progress=prog)
    if as_json:
        print(json.dumps(s.to_dict(), indent=2, default=str))
        return
    for r in s.recovered:
        if not (s.finished_interrupted and r["op_id"] == s.op_id):
            out.print(f"Finished the interrupted {r['kind']} #{r['op_id']} first.")
    if s.undone is None:
        out.print("Nothing to undo.")
        return
    if s.finished_interrupted:  # a killed undo, retried: finished, nothing more reverted
        out.print(f"[green]Finished the interrupted undo[/]: {s.undone_kind} #{s.undone} is undone "
                  f"({s.moved} files moved back); run undo again to revert the operation before it.")
    else:
        out.print(f"[green]Undone[/]: {s.undone_kind} #{s.undone} ({s.moved} files moved back).")
    if s.left:
        out.print(f"{len(s.left)} files were moved or deleted since then and were left where they are.")
    for x in s.skipped[:10]:
        out.print(f"  [yellow]![/] {_name(x['src'])}: {_name(x['why'])}", highlight=False)


@app.command()
def tags(
    thumbs: Path = typer.Argument(..., help="THUMBS folder."),
    as_json: bool = typer.Option(False, "--json", help="Print {tag: count} as JSON."),
):
    """Tags taken from your own folder names (move thumbnails into THUMBS/cats/ -> tag 'cats')."""
    from nearsort import list_tags

    t = _run(list_tags, thumbs).tags
    if as_json:
        print(json.dumps(t, indent=2, ensure_ascii=True))
        return
    for tag, n in sorted(t.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"{n:>8}  {term(tag)}")
    err.print(f"{len(t)} tags")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:  # raised outside _run (e.g. reading a damaged catalog inside a `with`)
        msg = _explain(e)
        if msg is None:
            raise
        try:
            fail(msg)
        except typer.Exit as x:
            sys.exit(x.exit_code)


if __name__ == "__main__":
    main()
