"""`difflens browse RUN --export DIR`: the browser's pages written as a static site (steering disabled).

    DIR/index.html                         the run: dictionaries with their metrics
    DIR/d/<name>/index.html                the feature table (sorted and filtered in the page)
    DIR/d/<name>/f/<latent>.html           a feature page
    DIR/d/<name>/f/<latent>.json           its data: statistics, explanation, truth (with the precise match and its
                                           specificity by activation level), examples and their token maps
    DIR/d/<name>/f/<latent>/<img>_<step>.png   overlays (lazy-loaded)
    DIR/images/<id>.png, DIR/run/<plots>, DIR/static/

Every page uses relative links, so the folder works from any file server (python -m http.server -d DIR).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from difflens.atomic import atomic_write_bytes
from difflens.interpret.latent_spec import latents_from_spec

from .pages import HERE, Links, dictionary_context, feature_context, overlay_png, render, run_context
from .run import Run
from .steering import _jsonable


def _choose(d, spec: str) -> list[int]:
    """The latents of ``d`` that --export-features names: all, N (drawn at random) or 1,5,9 (the one meaning of
    :mod:`difflens.interpret.latent_spec`, as autointerp's --features)."""
    t = d.table
    alive = np.flatnonzero(t.frequency > 0).tolist()
    return latents_from_spec(spec, alive, len(t.latent), option="--export-features")


def _write(path: Path, data: str | bytes) -> None:
    """One file of the site, whole or not at all (an export killed midway leaves no half-written page; no fsync: a
    site is rewritten by rerunning the export, not recovered)."""
    atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data, sync_dir=False, fsync=False,
                       what="exported page")


def export_site(run: str | Path | Run, out: str | Path, features: str = "all", progress: bool = False) -> Path:
    """Write the static site of ``run`` to ``out`` (created; files inside are overwritten)."""
    from difflens.progress import progress as progress_bar

    run = run if isinstance(run, Run) else Run(run)
    run.codes_cache.entries = max(run.codes_cache.entries, 4 * run.image_count() + 64)  # each image once a step
    out = Path(out)
    if out.resolve() == run.root or run.root in out.resolve().parents:
        raise ValueError(f"export into a folder outside the run, not {out}")
    out.mkdir(parents=True, exist_ok=True)
    base = Links(export=True)
    common = dict(run_name=run.root.name, export=True)
    shutil.copytree(HERE / "static", out / "static", dirs_exist_ok=True)
    ctx = run_context(run)
    for rel in ctx["plots"]:
        _write(out / "run" / rel, run.safe_file(rel).read_bytes())
    _write(out / "index.html", render("index.html", links=base, **common, **ctx))
    images: set[int] = set()
    plan = [(d, _choose(d, features)) for d in run.indexed()]
    bar = progress_bar(total=sum(len(ids) for _d, ids in plan), desc="export", unit="feature", enabled=progress)
    try:
        for d, ids in plan:
            folder = out / "d" / d.name
            links = base.at("../../")
            _write(folder / "index.html", render("dictionary.html", links=links, **common,
                                                 **dictionary_context(d, None, links, ids)))
            links = base.at("../../../")
            for latent in ids:
                fctx = feature_context(run, d, latent, links)
                fctx["steering"] = {"available": False, "reason": "static export"}
                examples = fctx["top"] + [e for b in fctx["quantiles"] for e in b["examples"]]
                maps = {}
                for e in {e["key"]: e for e in examples}.values():
                    images.add(e["image_id"])
                    values = run.activation_map(d, latent, e["image_id"], e["step"])
                    maps[e["key"]] = {"grid": list(values.shape),
                                      "values": [round(float(v), 5) for v in values.reshape(-1)]}
                    # every tile links its overlay (on a text site: the plain image, as the live app serves it)
                    _write(folder / "f" / str(latent) / f"{e['key']}.png",
                           overlay_png(run, d, latent, e["image_id"], e["step"]))
                keys = ("latent", "stats", "explanations", "truth", "precise", "histogram", "steps", "stream")
                data = {k: fctx[k] for k in keys}
                data.update(dictionary=d.name, site=d.site, maps=maps,
                            top=[{k: e[k] for k in ("image_id", "step", "score", "prompt")} for e in fctx["top"]],
                            quantiles=[{"bin": b["bin"], "lo": b["lo"], "hi": b["hi"],
                                        "examples": [{k: e[k] for k in ("image_id", "step", "score")} for e in b["examples"]]}
                                       for b in fctx["quantiles"]],
                            nearest=[{k: g[k] for k in ("dictionary", "items")} for g in fctx["nearest"] if "items" in g])
                _write(folder / "f" / f"{latent}.json", json.dumps(_jsonable(data), allow_nan=False))
                _write(folder / "f" / f"{latent}.html", render("feature.html", links=links, **common, **fctx))
                bar.update(1)
    finally:
        bar.close()
    for image_id in sorted(images):
        _write(out / "images" / f"{image_id}.png", run.image_path(image_id).read_bytes())
    return out

