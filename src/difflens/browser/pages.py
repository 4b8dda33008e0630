"""Page contexts and rendering shared by the live app and the static export.

Templates are Jinja2 with autoescaping on for every page, so any text from files (explanations, prompts, names)
renders as text. Links go through a :class:`Links` object: absolute routes in the live app, relative file paths
in an export.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from .run import SORT_KEYS, BadRequest, FeatureQuery, Run, RunDictionary, check_latent

HERE = Path(__file__).parent
N_TOP = 12  # top images on a feature page
PER_QUANTILE = 3  # images per activation-quantile bin
N_NEAREST = 8  # nearest latents in the same dictionary
N_NEAREST_OTHER = 4  # ... and in each other dictionary of the same site


@lru_cache(maxsize=1)
def environment():
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(default=True),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = fmt_number
    env.filters["pct"] = fmt_percent
    env.filters["ci"] = fmt_interval
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def _finite(value) -> float | str:
    """A float to format, or the text to show instead ("–" for missing or non-finite values)."""
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return v if math.isfinite(v) else "–"


def fmt_number(value, digits: int = 3) -> str:
    v = _finite(value)
    if isinstance(v, str):
        return v
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.{max(digits - 1, 1)}e}"
    return f"{v:.{digits}g}"


def fmt_percent(value, digits: int = 2) -> str:
    v = _finite(value)
    if isinstance(v, str):
        return v
    return f"{100 * v:.{digits}f}%" if v >= 1e-4 or v == 0 else f"{100 * v:.1e}%"


class Links:
    """URLs of the live app (``export`` False) or relative paths of a static export (``root``: the way back up
    from the current page, e.g. '../../')."""

    def __init__(self, export: bool = False, root: str = ""):
        self.export, self.root = export, root

    def at(self, root: str) -> "Links":
        return Links(self.export, root)

    def home(self) -> str:
        return self.root + "index.html" if self.export else "/"

    def dictionary(self, name: str, **params) -> str:
        if self.export:
            return f"{self.root}d/{name}/index.html"
        return f"/d/{name}" + ("?" + urlencode(params) if params else "")

    def feature(self, name: str, latent: int) -> str:
        return f"{self.root}d/{name}/f/{latent}.html" if self.export else f"/d/{name}/f/{latent}"

    def image(self, image_id: int, step: int | None = None) -> str:
        if self.export:
            return f"{self.root}images/{image_id}.png"
        return f"/image/{image_id}" + (f"?step={step}" if step is not None else "")

    def img(self, image_id: int) -> str:
        return f"{self.root}images/{image_id}.png" if self.export else f"/img/{image_id}.png"

    def overlay(self, name: str, latent: int, image_id: int, step: int) -> str:
        if self.export:
            return f"{self.root}d/{name}/f/{latent}/{image_id}_{step}.png"
        return f"/overlay/{name}/{latent}/{image_id}/{step}.png"

    def map(self, name: str, latent: int, image_id: int, step: int) -> str:
        if self.export:
            return f"{self.root}d/{name}/f/{latent}.json"
        return f"/api/map/{name}/{latent}/{image_id}/{step}"

    def static(self, file: str) -> str:
        return f"{self.root}static/{file}" if self.export else f"/static/{file}"

    def run_file(self, rel: str) -> str:
        return f"{self.root}run/{rel}" if self.export else f"/run/{rel}"


def fmt_interval(interval, digits: int = 1) -> str:
    """A share's [lo, hi] in percent points: '[15.1, 21.0]' ('' when missing)."""
    if not interval:
        return ""
    lo, hi = (_finite(v) for v in interval)
    if isinstance(lo, str) or isinstance(hi, str):
        return ""
    return f"[{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]"


# ---------------------------------------------------------------------------------------------------- truth.json
def _num(value) -> float | None:
    """A finite float, else None (missing fields, null, text, NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    v = _finite(value)
    return None if isinstance(v, str) else v


def _interval(value) -> list[float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = _num(value[0]), _num(value[1])
        if lo is not None and hi is not None:
            return [lo, hi]
    return None


def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


CONTROL_LABELS = {"random": "random", "init": "untrained"}


def truth_headline(truth: dict | None) -> dict | None:
    """truth.json's headline (the precise share, its interval and its controls: random directions, the untrained
    dictionary), or None for a report written before it. Reports with only the top-level ``precise_share`` are read
    through their summary."""
    truth = _dict(truth)
    summary = _dict(truth.get("summary"))
    mine = _dict(summary.get("dictionary"))
    head = truth.get("headline")
    if not isinstance(head, dict):
        if _num(truth.get("precise_share")) is None:
            return None
        head = {"value": truth["precise_share"], "interval": _dict(mine.get("intervals")).get("precise_share")}
        for key in CONTROL_LABELS:
            s = _dict(summary.get(key))
            if key == "random" and _num(truth.get("precise_share_random")) is not None:
                head["random"] = truth["precise_share_random"]
            elif _num(s.get("precise_share")) is not None:
                head[key] = s["precise_share"]
            head[f"{key}_interval"] = _dict(s.get("intervals")).get("precise_share")
    value = _num(head.get("value"))
    if value is None:
        return None
    controls = []
    for key, label in CONTROL_LABELS.items():
        v = _num(head.get(key))
        if v is not None:
            controls.append({"key": key, "label": label, "value": v,
                             "interval": _interval(head.get(f"{key}_interval"))})
    definition = head.get("definition") or _dict(truth.get("rules")).get("headline") or ""
    return {"value": value, "interval": _interval(head.get("interval")), "controls": controls,
            "definition": str(definition), "coarse": _num(mine.get("precise_share_coarse")),
            "ap": _num(mine.get("ap_share")), "alive": _num(mine.get("alive"))}


def truth_panel(truth: dict | None, row: dict | None) -> dict | None:
    """The precise match of one latent (its row of truth.json) for the feature page: specificity by activation
    level (one bar per band of the latent's train max), the upper range, any activation, AP, detection; None
    when the row predates the precise match."""
    if not isinstance(row, dict) or not any(k in row for k in ("precise_concept", "band_precision", "upper_precision")):
        return None
    levels = _dict(_dict(truth).get("levels"))
    edges = levels.get("bands")
    if not (isinstance(edges, list) and len(edges) >= 2 and all(_num(e) is not None for e in edges)):
        edges = None
    precision = row.get("band_precision") if isinstance(row.get("band_precision"), list) else None
    fires = row.get("band_fires") if isinstance(row.get("band_fires"), list) else None
    n = len(edges) - 1 if edges else max(len(precision or []), len(fires or []), 0) or 10
    if edges is None:
        edges = [j / n for j in range(n + 1)]
    upper = _num(levels.get("upper"))
    upper = 0.5 if upper is None else upper
    bars = []
    for j in range(n):
        p = _num(precision[j]) if precision is not None and j < len(precision) else None
        f = fires[j] if fires is not None and j < len(fires) else None
        f = int(f) if isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) else None
        empty = p is None or f == 0
        lo, hi = float(edges[j]), float(edges[j + 1])
        bars.append({"lo": lo, "hi": hi, "precision": None if empty else p, "fires": f, "empty": empty,
                     "upper": lo >= upper - 1e-9, "x": 100.0 * j / n, "w": 100.0 / n,
                     "h": 0.0 if empty else 100.0 * min(max(p, 0.0), 1.0)})
    upper_precision, lift = _num(row.get("upper_precision")), _num(row.get("upper_lift"))
    base = upper_precision / lift if upper_precision is not None and lift else None
    first_upper = next((b["x"] for b in bars if b["upper"]), None)
    detection = {k: _num(row.get(f"detection_{k}")) for k in ("token", "image")}
    return {
        "concept": row.get("precise_concept"), "precise": row.get("precise") is True,
        "has_bands": precision is not None or fires is not None, "bars": bars, "upper": upper,
        "upper_x": first_upper, "base": base if base is not None and 0 <= base <= 1 else None,
        "upper_precision": upper_precision, "upper_lift": lift, "upper_fires": row.get("upper_fires"),
        "upper_recall": _num(row.get("upper_recall")), "any_precision": _num(row.get("any_precision")),
        "coarse_concept": row.get("coarse_concept"), "precise_coarse": row.get("precise_coarse") is True,
        "ap_concept": row.get("ap_concept"), "ap": _num(row.get("ap")),
        "detection": detection if any(v is not None for v in detection.values()) else None,
        "unit": str(levels.get("unit") or "fraction of the latent's max activation on train tokens"),
        "definition": (truth_headline(truth) or {}).get("definition", ""),
    }


# ---------------------------------------------------------------------------------------------------- images
def png_bytes(image_HWC: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image_HWC, dtype=np.uint8)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def overlay_png(run: Run, d: RunDictionary, latent: int, image_id: int, step: int) -> bytes:
    """The stored image with the latent's activation painted in blue (interpret.heatmap.paint, the cards' scale)."""
    from difflens.interpret.heatmap import paint

    amap = run.activation_map(d, latent, image_id, step)
    image = run.load_image(image_id)
    if amap.ndim != 2:
        return png_bytes(image)
    return png_bytes(paint(image, amap, float(d.table.max[latent])))


def error_png(run: Run, d: RunDictionary, image_id: int, step: int) -> tuple[bytes, dict]:
    """The dictionary's per-token relative reconstruction error painted over the image (scale: the image's max)."""
    from difflens.interpret.heatmap import paint

    codes = run.image_codes(d, image_id, step)
    grid = d.index.grid
    image = run.load_image(image_id)
    err = codes["error"]
    if not grid or err.size != grid[0] * grid[1]:
        return png_bytes(image), {}
    top = float(err.max()) if err.size else 0.0
    stats = {"mean": float(err.mean()) if err.size else None, "max": top}
    return png_bytes(paint(image, err.reshape(grid), top if top > 0 else 1.0)), stats


# ---------------------------------------------------------------------------------------------------- contexts
def run_context(run: Run) -> dict:
    store = run.store
    rows = []
    for d in run.dictionaries.values():
        index = d.index
        m, interp = d.metrics, d.interpretation
        truth = d.truth or {}
        mine = _dict(_dict(truth.get("summary")).get("dictionary"))
        rows.append({
            "name": d.name, "kind": d.kind if index is None else index.dictionary_kind,
            "site": d.site, "step": d.step, "steps": index.steps if index else None,
            "latents": index.num_latents if index else d.cfg.get("num_latents"),
            "alive": int(index.alive().sum()) if index else None, "indexed": index is not None,
            "fvu": m.get("fvu_residual"), "ve": m.get("variance_explained"), "l0": m.get("l0"),
            "dead": m.get("dead_fraction"), "autointerp": interp.get("autointerp_mean"),
            "explained_share": truth.get("explained_share", interp.get("explained_share")),
            "explained_random": truth.get("explained_share_random", interp.get("explained_share_random")),
            "explained_interval": _interval(_dict(mine.get("intervals")).get("f1_share")),
            "headline": truth_headline(truth),
            "backends": sorted(d.autointerp),
        })
    meta = store.meta if store is not None else {}
    definitions = list(dict.fromkeys(r["headline"]["definition"] for r in rows
                                     if r["headline"] and r["headline"]["definition"]))
    return {"rows": rows, "plots": run.plots(), "has_headline": any(r["headline"] for r in rows),
            "headline_definitions": definitions,
            "store": {"model": meta.get("model"), "n_images": meta.get("n_images"), "resolution": meta.get("resolution"),
                      "num_steps": meta.get("num_steps")} if store is not None else None,
            "fvu_definition": run.summary.get("fvu_definition")}


def dictionary_header(d: RunDictionary) -> dict:
    index = d.index
    return {"name": d.name, "kind": index.dictionary_kind if index else d.kind, "site": d.site,
            "steps": index.steps if index else None, "latents": index.num_latents if index else None,
            "stream": index.stream if index else None, "split": index.split if index else None}


def _nan_none(x) -> float | None:
    return None if np.isnan(x) else float(x)


def _nan_int(x) -> int | None:
    return None if np.isnan(x) else int(x)


def table_rows(d: RunDictionary, ids) -> list[dict]:
    t = d.table
    return [{"latent": int(i), "frequency": float(t.frequency[i]), "max": float(t.max[i]), "mean": float(t.mean[i]),
             "score": _nan_none(t.score[i]), "explanation": t.explanation[i],
             "concept": t.concept[i], "auroc": _nan_none(t.auroc[i]), "f1": _nan_none(t.f1[i]),
             "precise_concept": t.precise_concept[i], "precise": bool(t.precise[i]),
             "upper_precision": _nan_none(t.upper_precision[i]), "prefix": _nan_int(t.prefix[i])} for i in ids]


def dictionary_context(d: RunDictionary, q: FeatureQuery | None, links: Links, exported=None) -> dict:
    ctx = {"d": dictionary_header(d), "indexed": d.index is not None, "q": q, "headline": truth_headline(d.truth),
           "has_precise": False, "prefix_sizes": None}
    if d.index is None:
        return ctx
    ctx["has_precise"] = d.has_precise
    ctx["prefix_sizes"] = d.index.prefix_sizes
    if q is None:  # export: every exported latent, sorted and filtered in the page
        t = d.table
        ids = np.flatnonzero(t.frequency > 0) if exported is None else np.asarray(sorted(set(exported)), dtype=np.int64)
        ids = ids[np.argsort(-t.frequency[ids], kind="stable")]
        ctx.update(rows=table_rows(d, ids), total=len(ids), pages=1, concepts=d.concepts())
        return ctx
    ids, total = d.query(q)
    pages = max(1, -(-total // q.per_page))
    def sort_link(key):
        order = "asc" if (q.sort == key and q.order == "desc") or (q.sort != key and key == "latent") else "desc"
        return links.dictionary(d.name, **q.params(sort=key, order=order, page=1))
    ctx.update(rows=table_rows(d, ids), total=total, pages=pages, concepts=d.concepts(),
               sort_links={k: sort_link(k) for k in SORT_KEYS},
               prev=links.dictionary(d.name, **q.params(page=q.page - 1)) if q.page > 1 else None,
               next=links.dictionary(d.name, **q.params(page=q.page + 1)) if q.page < pages else None)
    return ctx


def _histogram(d: RunDictionary, latent: int) -> dict | None:
    edges, counts = d.index.histogram(latent)
    counts = counts.numpy().astype(np.float64)
    nz = np.flatnonzero(counts > 0)
    if nz.size == 0:
        return None
    lo, hi = max(int(nz[0]) - 1, 0), min(int(nz[-1]) + 2, len(counts))
    c = counts[lo:hi]
    e = edges.numpy()[lo : hi + 1]
    top = float(c.max())
    width = 100.0 / len(c)
    bars = [{"x": k * width, "w": width, "h": 100.0 * v / top, "count": int(v), "lo": float(e[k]), "hi": float(e[k + 1])}
            for k, v in enumerate(c)]
    return {"bars": bars, "lo": float(e[0]), "hi": float(e[-1]), "top": int(top), "total": int(counts.sum())}


def _steps_chart(d: RunDictionary, latent: int) -> list[dict]:
    stats = d.index.step_stats(latent)
    top = max((s["frequency"] for s in stats.values()), default=0.0) or 1.0
    return [{"step": step, "frequency": s["frequency"], "h": 100.0 * s["frequency"] / top, "max": s["max"],
             "mean": s["mean"], "images": s["images"]} for step, s in stats.items()]


def _example(run: Run, d: RunDictionary, latent: int, e: dict, links: Links) -> dict:
    info = run.image_info(e["image_id"]) if run.store is not None else {"prompt": "", "seed": None}
    return {"image_id": int(e["image_id"]), "step": int(e["step"]), "score": float(e["score"]),
            "prompt": info["prompt"], "seed": info.get("seed"), "quantile": e.get("quantile"),
            "img": links.img(e["image_id"]), "overlay": links.overlay(d.name, latent, e["image_id"], e["step"]),
            "map": links.map(d.name, latent, e["image_id"], e["step"]), "key": f"{e['image_id']}_{e['step']}",
            "page": links.image(e["image_id"], e["step"])}


def text_tokens(run: Run, d: RunDictionary, latent: int, examples: list[dict]) -> list[dict]:
    """Text sites: each example prompt's words with the latent's activation on them (words as the embedded
    model's word-level encoder sees them; padding positions left out unless active)."""
    from difflens.interpret.cards import prompt_words

    top = float(d.table.max[latent]) or 1.0
    rows = []
    for e in examples:
        values = run.activation_map(d, latent, e["image_id"], e["step"]).reshape(-1)
        words = prompt_words(e["prompt"], len(values))
        tokens = [{"word": w, "value": float(v), "alpha": float(np.sqrt(np.clip(v / top, 0, 1)))}
                  for w, v in zip(words, values) if not (w == "·" and v <= 0)]
        rows.append({**e, "tokens": tokens})
    return rows


def prefix_panel(index, latent: int) -> dict | None:
    """A Matryoshka latent's prefix level and the latents that prefix adds (None: not Matryoshka)."""
    level = index.prefix_level(latent)
    if level is None:
        return None
    sizes = index.prefix_sizes
    return {"level": level, "levels": len(sizes), "first": sizes[level - 1] if level else 0, "end": sizes[level],
            "sizes": sizes}


def feature_context(run: Run, d: RunDictionary, latent: int, links: Links, nearest: bool = True) -> dict:
    check_latent(d, latent)
    index, table = d.index, d.table
    top = [_example(run, d, latent, e, links) for e in index.top_images(latent)[:N_TOP]]
    quantiles = []
    for b, examples in enumerate(index.quantile_sets(latent)):
        if not examples:
            continue
        pick = [examples[round(j * (len(examples) - 1) / max(PER_QUANTILE - 1, 1))] for j in range(min(PER_QUANTILE, len(examples)))]
        seen, chosen = set(), []
        for e in pick:
            if (e["image_id"], e["step"]) not in seen:
                seen.add((e["image_id"], e["step"]))
                chosen.append(_example(run, d, latent, e, links))
        quantiles.append({"bin": b, "lo": examples[0]["score"], "hi": examples[-1]["score"], "examples": chosen})
    quantiles.reverse()  # highest activations first
    truth = d.truth or {}
    gt = truth.get("_by_latent", {}).get(latent)
    near = []
    if nearest:
        try:
            others = [o for o in run.dictionaries.values()
                      if o.has_index and o.site == d.site and o.d_in == d.d_in]
            for o in [d] + [o for o in others if o is not d]:
                n = N_NEAREST if o is d else N_NEAREST_OTHER
                items = [{"latent": j, "cos": c, "link": links.feature(o.name, j),
                          "explanation": o.table.explanation[j], "concept": o.table.concept[j]}
                         for j, c in d.nearest(latent, o, n)]
                near.append({"dictionary": o.name, "kind": o.index.dictionary_kind, "same": o is d, "items": items})
        except (FileNotFoundError, ValueError, OSError) as err:
            near = [{"error": f"nearest latents unavailable: {err}"}]
    stream = index.stream
    text_rows = text_tokens(run, d, latent, top[:8]) if stream == "text" and top else []
    return {
        "d": dictionary_header(d), "latent": latent, "num_latents": index.num_latents,
        "prev": links.feature(d.name, latent - 1) if latent > 0 else None,
        "next": links.feature(d.name, latent + 1) if latent + 1 < index.num_latents else None,
        "stats": {"frequency": float(table.frequency[latent]), "max": float(table.max[latent]),
                  "mean": float(table.mean[latent]),
                  "image_frequency": float(np.mean(list(index.image_frequency(latent).values())))},
        "explanations": d.explanations(latent), "truth": gt, "truth_rules": truth.get("rules", {}),
        "precise": truth_panel(truth, gt), "prefix": prefix_panel(index, latent),
        "truth_concept_count": len(truth.get("concepts", [])) if truth else 0,
        "top": top, "quantiles": quantiles, "histogram": _histogram(d, latent), "steps": _steps_chart(d, latent),
        "nearest": near, "grid": list(index.grid) if index.grid else None, "stream": stream, "text_rows": text_rows,
    }


def image_context(run: Run, image_id: int, step: int | None, links: Links) -> dict:
    info = run.image_info(image_id)
    steps = sorted({s for d in run.indexed() for s in d.index.steps})
    if step is None:
        step = steps[len(steps) // 2] if steps else None
    dicts = [d for d in run.indexed() if step in d.index.steps and d.index.stream == "image" and d.index.grid]
    grid = list(dicts[0].index.grid) if dicts else None
    errors = []
    for d in dicts:
        errors.append({"dictionary": d.name, "kind": d.index.dictionary_kind,
                       "src": f"/errmap/{d.name}/{image_id}/{step}.png"})
    return {"image": info, "img": links.img(image_id), "step": step, "steps": steps, "grid": grid,
            "dictionaries": [d.name for d in dicts], "errors": errors,
            "step_links": {s: links.image(image_id, s) for s in steps}, "n_images": run.image_count(),
            "prev": links.image(image_id - 1, step) if image_id > 0 else None,
            "next": links.image(image_id + 1, step) if image_id + 1 < run.image_count() else None}


def token_latents(run: Run, image_id: int, step: int, token: int, links: Links, n: int = 12) -> dict:
    """Per dictionary: the latents active on one token of an image at one step, largest first."""
    run.image_info(image_id)
    out = []
    for d in run.indexed():
        if step not in d.index.steps or d.index.stream != "image":
            continue
        codes = run.image_codes(d, image_id, step)
        if not 0 <= token < codes["tokens"]:
            raise BadRequest(f"token {token} is outside this image's {codes['tokens']} tokens")
        vals, idx = codes["values"][token], codes["indices"][token]
        keep = (vals > 0) & (idx >= 0)
        order = np.argsort(-vals[keep], kind="stable")[:n]
        items = [{"latent": int(j), "value": float(v), "link": links.feature(d.name, int(j)),
                  "explanation": d.table.explanation[int(j)], "concept": d.table.concept[int(j)]}
                 for j, v in zip(idx[keep][order], vals[keep][order])]
        out.append({"dictionary": d.name, "kind": d.index.dictionary_kind, "items": items,
                    "active": int(keep.sum()), "error": float(codes["error"][token])})
    return {"image_id": image_id, "step": step, "token": token, "dictionaries": out}
