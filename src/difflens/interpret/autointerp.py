"""Visual autointerpretation: an explainer names what a latent responds to, a judge checks it on other images.

Per latent (from its feature index):
  * explainer set: its top ``explain_images`` images (optionally plus activation-quantile samples), each
    with the latent's activation painted in blue;
  * test set, disjoint from the explainer's: positives = further top images and quantile samples it was not
    shown (painted with this latent's map); negatives of two kinds, each *verified* to leave this latent
    silent (max activation 0 on the image): random images of the index's split (its map is empty, so they
    carry no paint) and top images of other latents, painted with *those* latents' maps;
  * the judge scores each test image s ∈ [0, 1]; the latent's score is the FLUX paper's
    mean(mean s on positives, mean (1 − s) on negatives), with balanced accuracy (s ≥ 0.5) and AUROC.

Backends: ``oracle`` (embedded world, offline, the default) stands for a perfect vision model of the shapes
world: its explainer reads the stored images' ground truth under the painted tokens and names the concept
that best matches them in the world's vocabulary; its judge gives the share of the painted activation that
falls on tokens of that concept. ``openai``: any OpenAI-compatible vision endpoint (see :mod:`.vlm`), with
the prompts of :mod:`.prompts`. Results say which backend produced them. A latent whose calls failed is
recorded as failed, never as a low score, and a rerun fills exactly those gaps.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from difflens.atomic import atomic_write_json
from difflens.locks import locks_output
from difflens.outputs import previous_output, same_settings
from difflens.store.run_layout import RESULTS_FILE, autointerp_folder, relative_link

from .heatmap import enlarge, paint
from .latent_spec import latents_from_spec
from .truth import auroc

ORACLE_NOTE = "oracle backend: a perfect vision model of the shapes world (reads ground truth), not a VLM"


@dataclass
class AutointerpConfig:
    """`difflens autointerp` settings."""

    backend: Literal["oracle", "openai"] = "oracle"
    """who explains and judges: oracle (embedded world, offline) or openai (any OpenAI-compatible vision endpoint)"""
    features: str = "64"
    """latents to explain: all (every alive latent), N (N alive latents drawn at random, seeded) or a list such as
    1,5,9 (=7: latent 7)"""
    explain_images: int = 5
    """top images the explainer sees"""
    explain_quantiles: int = 0
    """extra explainer images drawn from activation-quantile bins"""
    test_positives: int = 5
    """held-out positives per latent (further top images and quantile samples)"""
    negatives_random: int = 3
    """negatives: random images on which the latent is silent"""
    negatives_other: int = 3
    """negatives: top images of other latents (painted with their maps) on which this latent is silent"""
    image_size: int = 256
    """pixels per side of the images sent to a VLM"""
    seed: int = 0
    """seed of the latent sample and of the test sets"""
    dry_run: bool = False
    """openai: print the calls and estimated tokens, send nothing"""


# ---------------------------------------------------------------------------------------------- example sets
@dataclass
class Example:
    image_id: int
    step: int
    painted_by: int | None  # the latent whose map is painted on it (None: unpainted)
    positive: bool


def choose_latents(index, spec: str, seed: int = 0) -> list[int]:
    """The latents of ``index`` that a feature spec names: all, N (drawn at random) or 1,5,9 (:mod:`.latent_spec`)."""
    alive = torch.nonzero(index.alive()).squeeze(1).tolist()
    return latents_from_spec(spec, alive, index.num_latents, seed)


select_features = choose_latents  # the old name (steering's top-k selection is top_and_bottom_features)


def _silent(index, latent: int, image_id: int, step: int) -> bool:
    return float(index.activation_map(latent, image_id, step).max()) <= 0


def image_pool(index) -> list[tuple[int, int]]:
    """Every (image_id, step) of the index's split: where random negatives are drawn from."""
    readers = {s: index.store.reader(index.site, s, split=index.split) for s in index.steps}
    return [(int(i), int(s)) for s, reader in readers.items() for i in reader.image_ids()]


def example_sets(index, latent: int, cfg: AutointerpConfig, rng: np.random.Generator,
                 pool: list[tuple[int, int]] | None = None) -> tuple[list[Example], list[Example]]:
    """(explainer examples, test examples) for one latent; the two never share an (image, step). ``pool``: the
    index's :func:`image_pool` (computed here when not given; pass it when building sets for many latents)."""
    top = index.top_images(latent)
    explain = [Example(e["image_id"], e["step"], latent, True) for e in top[: cfg.explain_images]]
    seen = {(e.image_id, e.step) for e in explain}
    bins = [b for b in index.quantile_sets(latent) if b]
    for b in rng.permutation(len(bins))[: cfg.explain_quantiles] if bins else []:
        pick = [e for e in bins[b] if (e["image_id"], e["step"]) not in seen]
        if pick:
            e = pick[int(rng.integers(len(pick)))]
            explain.append(Example(e["image_id"], e["step"], latent, True))
            seen.add((e["image_id"], e["step"]))
    # positives: alternate further top images and quantile samples, never ones the explainer saw
    candidates = [e for e in top[cfg.explain_images:]]
    quantile = [e for b in bins for e in b]
    rng.shuffle(quantile)
    positives: list[Example] = []
    for e in [x for pair in zip(candidates, quantile) for x in pair] + candidates + quantile:
        if len(positives) >= cfg.test_positives:
            break
        if (e["image_id"], e["step"]) not in seen and e["score"] > 0:
            positives.append(Example(e["image_id"], e["step"], latent, True))
            seen.add((e["image_id"], e["step"]))
    negatives = _random_negatives(index, latent, cfg.negatives_random, rng, seen,
                                  image_pool(index) if pool is None else pool)
    negatives += _other_negatives(index, latent, cfg.negatives_other, rng, seen)
    return explain, positives + negatives


def _random_negatives(index, latent, n, rng, seen, pool) -> list[Example]:
    out: list[Example] = []
    for j in rng.permutation(len(pool))[: 20 * n + 20]:
        if len(out) >= n:
            break
        image_id, step = pool[j]
        if (image_id, step) not in seen and _silent(index, latent, image_id, step):
            out.append(Example(image_id, step, None, False))
            seen.add((image_id, step))
    return out


def _other_negatives(index, latent, n, rng, seen) -> list[Example]:
    out: list[Example] = []
    alive = torch.nonzero(index.alive()).squeeze(1).tolist()
    for other in rng.permutation(alive)[: 20 * n + 20]:
        if len(out) >= n:
            break
        if int(other) == latent:
            continue
        for e in index.top_images(int(other))[:3]:
            key = (e["image_id"], e["step"])
            if key not in seen and _silent(index, latent, *key):
                out.append(Example(e["image_id"], e["step"], int(other), False))
                seen.add(key)
                break
    return out


def painted_image(index, example: Example, size: int | None = None) -> np.ndarray:
    """The stored image with ``example.painted_by``'s activation in blue (unpainted when None)."""
    image = index.store.load_image(example.image_id)
    if example.painted_by is not None:
        amap = index.activation_map(example.painted_by, example.image_id, example.step)
        image = paint(image, amap, float(index.max_activation[example.painted_by]))
    if size:
        image = enlarge(image, max(1, size // image.shape[0]))
    return image


def _example_map(index, example: Example) -> np.ndarray:
    if example.painted_by is None:
        return np.zeros(int(index.image_rows(example.image_id, example.step).numel()), dtype=np.float32)
    return np.asarray(index.activation_map(example.painted_by, example.image_id, example.step),
                      dtype=np.float32).reshape(-1)


# ---------------------------------------------------------------------------------------------- scores
def detection_scores(s_pos: list[float], s_neg: list[float]) -> dict:
    """The paper's score, balanced accuracy at 0.5, and AUROC of the judge's scores."""
    pos, neg = np.asarray(s_pos, dtype=float), np.asarray(s_neg, dtype=float)
    parts = [p for p in (pos.mean() if pos.size else None, (1 - neg).mean() if neg.size else None) if p is not None]
    tpr = float((pos >= 0.5).mean()) if pos.size else float("nan")
    tnr = float((neg < 0.5).mean()) if neg.size else float("nan")
    return {"score": float(np.mean(parts)) if parts else float("nan"), "balanced_accuracy": (tpr + tnr) / 2,
            "auroc": float(auroc(np.concatenate([pos, neg]), np.arange(pos.size + neg.size) < pos.size)[0])}


# ---------------------------------------------------------------------------------------------- oracle backend
def concept_phrase(concept: str) -> str:
    """A world concept in words, as an explanation would put it."""
    kind, _, rest = concept.partition(":")
    if kind == "bg":
        return f"the {rest.replace('&', ' ')} background"
    if kind == "texture":
        return f"the {rest} background" if rest != "plain" else "a plain (untextured) background"
    if kind == "part":
        if "-" in rest:  # a part of a composite object: part:house-roof
            shape, part = rest.split("-", 1)
            return f"the {part} of {shape}s"
        return {"background": "the background", "object": "objects (any)", "edge": "the edges of objects",
                "interior": "the interiors of objects", "boundary": "the outlines of objects"}[rest]
    if kind in ("color", "shape", "size", "pattern"):
        return f"{rest} objects"
    if kind == "cell":
        return f"objects in the {rest.replace('-', ' ')} cell"
    if kind == "row":
        return f"objects in the {rest} row"
    if kind == "col":
        return f"objects in the {rest} column"
    if kind == "side":
        return f"the background just {rest} an object"
    if kind == "near":
        side, color = rest.split(":")
        return f"the background just {side} a {color} object"
    if kind == "pair":
        a, b = rest.split("&")
        return f"{a} objects that are {b.replace('-', ' ')}" if b.endswith(("row", "col")) else f"{a} {b} objects"
    if kind == "place":
        place, _, value = rest.partition("&")
        where = {"corner": "the corners", "centre": "the centre"}.get(place, f"the {place.replace('-', ' ')}")
        return f"{where} of {value + ' ' if value else ''}objects"
    return concept


class OracleBackend:
    """Explainer and judge that read the embedded world's ground truth (see the module docstring)."""

    name = "oracle"

    def __init__(self, index, labels=None):
        from .labels import token_labels

        model = str(index.store.meta.get("model", ""))
        if labels is None and not model.startswith("embedded"):
            raise ValueError(f"the oracle backend reads the shapes world; this store was captured from {model!r}. "
                             f"Use --backend openai for other models")
        self.labels = labels if labels is not None else token_labels(index.store)
        self.index = index

    def _mass(self, example: Example) -> tuple[np.ndarray, np.ndarray]:
        """(activation map (T,), labels (T, C)) of an example."""
        return _example_map(self.index, example), self.labels.image(example.image_id)

    def explain(self, latent: int, examples: list[Example]) -> dict:
        mass = np.zeros(len(self.labels.concepts))
        hit = np.zeros(len(self.labels.concepts))
        present = np.zeros(len(self.labels.concepts))
        total, notes = 0.0, []
        for e in examples:
            a, lab = self._mass(e)
            a = np.clip(a, 0, None)
            mass += a @ lab
            hit += (a > 0).astype(float) @ lab
            present += lab.sum(0)
            total += a.sum()
            share = (a @ lab) / max(a.sum(), 1e-12)
            notes.append(concept_phrase(self.labels.concepts[int(np.argmax(share))]) if a.sum() > 0 else "nothing")
        precision = mass / max(total, 1e-12)
        recall = hit / np.maximum(present, 1)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
        best = int(np.argmax(f1))
        concept = self.labels.concepts[best]
        return {"per_image": notes, "explanation": concept_phrase(concept), "concept": concept, "note": ORACLE_NOTE}

    def judge(self, explanation: dict, examples: list[Example]) -> list[float]:
        c = self.labels.concepts.index(explanation["concept"])
        scores = []
        for e in examples:
            a, lab = self._mass(e)
            a = np.clip(a, 0, None)
            scores.append(float((a @ lab[:, c]) / a.sum()) if a.sum() > 0 else 0.0)
        return scores


# ---------------------------------------------------------------------------------------------- VLM backend
def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


class VLMBackend:
    """Explainer and judge through an OpenAI-compatible vision endpoint (requests batched per phase)."""

    name = "openai"

    def __init__(self, index, vlm_config, folder: Path, image_size: int):
        from .vlm import VLMClient

        self.index, self.size = index, image_size
        self.client = VLMClient(vlm_config, cache_dir=folder / "cache", ledger_path=folder / "ledger.jsonl")

    def explain_requests(self, work: dict) -> list:
        from .prompts import EXPLAINER_SYSTEM, EXPLAINER_USER, EXPLANATION_SCHEMA
        from .vlm import VLMRequest

        return [VLMRequest(f"explain/{latent}", EXPLAINER_SYSTEM, EXPLAINER_USER.format(n=len(explain)),
                           [_png(painted_image(self.index, e, self.size)) for e in explain], EXPLANATION_SCHEMA)
                for latent, (explain, _) in work.items()]

    def judge_requests(self, latent: int, explanation: str, tests: list[Example]) -> list:
        from .prompts import JUDGE_SCHEMA, JUDGE_SYSTEM, JUDGE_USER
        from .vlm import VLMRequest

        return [VLMRequest(f"judge/{latent}/{e.image_id}@{e.step}", JUDGE_SYSTEM, JUDGE_USER.format(explanation=explanation),
                           [_png(painted_image(self.index, e, self.size))], JUDGE_SCHEMA) for e in tests]


# ---------------------------------------------------------------------------------------------- the run
def results_folder(index, cfg: AutointerpConfig | None = None, out: str | Path | None = None, *_, **__) -> Path:
    """Where :func:`run_autointerp` writes: ``out``, default <index>/autointerp/<backend>."""
    return Path(out) if out is not None else autointerp_folder(index.path, (cfg or AutointerpConfig()).backend)


SETTINGS_KEYS = ("dictionary", "site", "steps", "config")  # what results_settings reads


def results_settings(summary: dict, folder: str | Path | None = None) -> dict:
    """What makes two autointerp runs the same job (more latents may be added to a run's results). A results file
    names its dictionary relative to its ``folder``; a fresh summary, absolutely."""
    dictionary = Path(str(summary["dictionary"]))
    if folder is not None and not dictionary.is_absolute():
        dictionary = Path(os.path.normpath(Path(folder).resolve() / dictionary))
    return {"dictionary": dictionary.name, "site": summary["site"], "steps": summary["steps"],
            "config": {k: v for k, v in summary["config"].items() if k not in ("features", "dry_run")}}


@locks_output(results_folder)
def run_autointerp(index, cfg: AutointerpConfig | None = None, out: str | Path | None = None, vlm_config=None,
                   overwrite: bool = False) -> dict:
    """Explain and score the chosen latents of ``index``; results in ``out`` (default <index>/autointerp/<backend>).

    Latents already explained there are kept; results of other settings are refused unless ``overwrite``."""
    cfg = cfg or AutointerpConfig()
    folder = results_folder(index, cfg, out)
    results_path = folder / RESULTS_FILE
    previous = previous_output(results_path, "autointerp results", overwrite, keys=SETTINGS_KEYS) or {}
    if not same_settings(folder, results_settings(previous, folder) if previous else None,
                         results_settings(summarize({}, index, cfg)), what="autointerp results", overwrite=overwrite):
        previous = {}
    done = {int(k): v for k, v in previous.get("features", {}).items() if v.get("status") == "ok"}
    latents = choose_latents(index, cfg.features, cfg.seed)
    backend = OracleBackend(index) if cfg.backend == "oracle" else None  # refuses a model that is not the world first
    rng_for = {latent: np.random.default_rng([cfg.seed, latent]) for latent in latents}
    pool = image_pool(index)
    work = {latent: example_sets(index, latent, cfg, rng_for[latent], pool) for latent in latents if latent not in done}
    records: dict[int, dict] = dict(done)
    if backend is not None:
        for latent, (explain, tests) in work.items():
            explanation = backend.explain(latent, explain)
            records[latent] = _record(latent, explain, tests, explanation, backend.judge(explanation, tests))
    else:
        if vlm_config is None:
            from .vlm import VLMConfig

            vlm_config = VLMConfig()
        backend = VLMBackend(index, vlm_config, folder, cfg.image_size)
        explain_requests = backend.explain_requests(work)
        if cfg.dry_run:
            judge_calls = sum(len(tests) for _, tests in work.values())
            return {"dry_run": backend.client.dry_run(explain_requests), "judge_calls": judge_calls,
                    "note": "judge calls follow the explanations; their images are sent one per call"}
        explained = {int(r.key.split("/")[1]): r for r in backend.client.run(explain_requests)}
        judge_requests = {latent: backend.judge_requests(latent, r.parsed["explanation"], work[latent][1])
                          for latent, r in explained.items() if r.ok and r.parsed}
        flat = [q for qs in judge_requests.values() for q in qs]
        by_key = {r.key: r for r in backend.client.run(flat)} if flat else {}
        for latent, (explain, tests) in work.items():
            r = explained[latent]
            if not (r.ok and r.parsed):
                records[latent] = {"latent": latent, "status": "failed", "error": r.error or "no explanation"}
                continue
            judged = [by_key[q.key] for q in judge_requests[latent]]
            failed = [j for j in judged if not (j.ok and j.parsed and "score" in j.parsed)]
            if failed:
                records[latent] = {"latent": latent, "status": "failed", "explanation": r.parsed,
                                   "error": f"{len(failed)} judge call(s) failed: {failed[0].error}"}
                continue
            scores = [float(np.clip(float(j.parsed["score"]), 0, 1)) for j in judged]
            records[latent] = _record(latent, explain, tests, r.parsed, scores)
    summary = summarize(records, index, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    # the file names its dictionary relative to itself (a run folder can move); the returned summary, absolutely
    link = {"dictionary": relative_link(index.dictionary_path, folder)} if index.dictionary_path else {}
    atomic_write_json(results_path, {**summary, **link}, what="autointerp results")
    return summary


def _record(latent: int, explain: list[Example], tests: list[Example], explanation: dict, scores: list[float]) -> dict:
    s_pos = [s for s, e in zip(scores, tests) if e.positive]
    s_neg = [s for s, e in zip(scores, tests) if not e.positive]
    return {"latent": latent, "status": "ok", "explanation": explanation,
            "explainer_images": [asdict(e) for e in explain],
            "tests": [{**asdict(e), "s": s} for e, s in zip(tests, scores)],
            **detection_scores(s_pos, s_neg)}


def summarize(records: dict[int, dict], index, cfg: AutointerpConfig) -> dict:
    ok = [r for r in records.values() if r["status"] == "ok"]
    scores = np.array([r["score"] for r in ok], dtype=float)
    return {
        "backend": cfg.backend, "note": ORACLE_NOTE if cfg.backend == "oracle" else "VLM backend",
        "config": asdict(cfg), "site": index.site, "steps": index.steps, "dictionary": str(index.dictionary_path),
        "dictionary_kind": getattr(index, "dictionary_kind", None),
        "explained": len(ok), "failed": sorted(int(k) for k, r in records.items() if r["status"] != "ok"),
        "mean_score": float(np.nanmean(scores)) if len(scores) else None,
        "median_score": float(np.nanmedian(scores)) if len(scores) else None,
        "features": {str(k): records[k] for k in sorted(records)},
    }


def truth_detection(index, summary: dict, concept_of: dict[int, str], labels=None) -> dict[int, dict]:
    """The ground-truth counterpart of the oracle autointerp score: a perfect judge told each latent's ground-truth
    concept scores exactly the test examples autointerp drew for it (its results' "tests"). Token level: the share
    of the painted activation on the concept's tokens (the oracle judge's rule); image level: 1 when the concept is
    anywhere in the image. Returns {latent: {"detection_token", "detection_image"}} (the paper's score on each)."""
    judge = OracleBackend(index, labels)
    labels = judge.labels
    out = {}
    for latent, concept in concept_of.items():
        record = summary.get("features", {}).get(str(latent))
        if not record or record.get("status") != "ok" or concept not in labels.concepts:
            continue
        tests = [Example(t["image_id"], t["step"], t["painted_by"], t["positive"]) for t in record["tests"]]
        c = labels.concepts.index(concept)
        token = judge.judge({"concept": concept}, tests)
        image = [float(labels.image(e.image_id)[:, c].any()) for e in tests]
        pos = [e.positive for e in tests]
        out[int(latent)] = {
            f"detection_{level}": round(detection_scores([s for s, p in zip(scores, pos) if p],
                                                         [s for s, p in zip(scores, pos) if not p])["score"], 4)
            for level, scores in (("token", token), ("image", image))}
    return out


def concept_words(concept: str) -> list[str]:
    """The attribute words of a world concept: 'pair:red&square' -> ['red', 'square'], 'near:below:yellow' ->
    ['below', 'yellow'], 'bg:gray' -> ['gray', 'background']."""
    kind, _, rest = concept.partition(":")
    words = [w for part in rest.replace("&", ":").split(":") for w in part.split("-") if w not in ("row", "col")]
    return words + (["background"] if kind == "bg" else [])


def agreement(summary: dict, truth: dict) -> dict:
    """How far autointerp agrees with the ground truth: Spearman of the judge's score against the latent's held-out
    F1 (``spearman``), its upper-range precision (``spearman_precision``) and the perfect judge's detection score
    on the same test examples (``spearman_perfect_judge``), and the share of explanations that name the latent's
    F1-matched concept (all its attribute words appear)."""
    from scipy.stats import spearmanr

    by_latent = {int(r["latent"]): r for r in truth["latents"]}
    rows, named = [], []
    for key, record in summary["features"].items():
        match = by_latent.get(int(key))
        if record.get("status") != "ok" or match is None or match.get("concept") is None:
            continue
        rows.append((record["score"], match))
        text = json.dumps(record["explanation"]).lower()
        named.append(all(w in text for w in concept_words(match["concept"])))

    def rho(field: str):
        pairs = [(s, m.get(field)) for s, m in rows if m.get(field) is not None]
        if len(pairs) < 3 or len({p[0] for p in pairs}) < 2 or len({p[1] for p in pairs}) < 2:
            return None  # rank correlation undefined
        return float(spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic)

    return {"n": len(rows), "spearman": rho("f1"), "spearman_precision": rho("upper_precision"),
            "spearman_perfect_judge": rho("detection_token"), "named_share": float(np.mean(named)) if named else None}


def compare_methods(summaries: dict[str, dict], out: str | Path) -> dict:
    """Score histograms per method (the paper's Figure 7) and a JSON summary beside the PNG."""
    from difflens.evaluation import plots

    out = Path(out)
    series = {}
    table = {}
    for name, summary in summaries.items():
        scores = [f["score"] for f in summary["features"].values() if f.get("status") == "ok"]
        series[name] = scores
        table[name] = {"n": len(scores), "mean": float(np.mean(scores)) if scores else None,
                       "median": float(np.median(scores)) if scores else None,
                       "share_above_0.8": float(np.mean(np.asarray(scores) > 0.8)) if scores else None,
                       "backend": summary["backend"]}
    plots.histograms(series, "autointerp score (detection)", "latents",
                     f"autointerp scores by method ({next(iter(summaries.values()))['backend']} backend)", out)
    atomic_write_json(out.with_suffix(".json"), table)
    return table
