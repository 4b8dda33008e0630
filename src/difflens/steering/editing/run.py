"""The editing benchmark loop: `run_edit_bench(BenchConfig(...))` -> results (rows per category x method x
site x strength x k, with bootstrap intervals), written atomically to results.json, a printed table and
success-vs-preservation curves.

Per category the loop walks the pairs in file order, generates source and target prompts with the pair's seed
(capturing every method's site at the edit steps), and keeps the first `n` pairs whose source generation the
oracle reads as the source scene (the edit needs a known starting point; pairs without scenes are all kept).
Without a pairs file the model's world picks the shipped one (`pairs.pairs_file`: classic or rich pairs), and the
oracle always reads images, and judges them, in the model's world (a rich model is also judged on patterns and
textures). The edit mask is the oracle's mask of the edited object in the source and target generations (for
background and texture edits: everything that is no object in either), resized to each site's token grid and
thresholded > 0; a pair file's own mask replaces it, prepared as RIEBench prepares it (blurred, resized to each
site's token grid, thresholded: `image_scores.prepare_mask`). Each method then re-generates the source prompts,
same seeds, with its intervention, and the oracle judges the results of pairs with scenes (`scoring.judge`).

Every edited image is also scored against the two reference generations (the model's own generations of the
source and the target prompt, same seed): PSNR / SSIM outside the edit region (the token mask at pixel resolution)
against the source and inside it against the target, over the whole image when the pair has no mask
(`image_scores`), and LPIPS / CLIP when their weights load (`learned_scores`). This is all a model without an
oracle (FLUX, SDXL) is scored with; results and tables name the scorers that produced them.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from ...locks import locks_output
from ...outputs import same_settings
from ...reading import read_json
from ..edits import parse_steps
from ..regions import mask_to_grid
from .image_scores import MASKED, WHOLE_IMAGE, pixel_scores, prepare_mask
from .learned_scores import LearnedScorers, load_learned_scorers
from .methods import BUILTIN_METHODS, FeatureEdit, FeatureMethod, PairActs, SiteEdit, dense_delta, token_deltas
from .pairs import SCENE_ATTRIBUTES, EditPair, check_prompts, model_vocabulary, pairs_file, read_pairs
from .scoring import faithful, judge, summarise

LPIPS_NETS = ("alex", "vgg", "squeeze", "off")


@dataclass
class BenchConfig:
    """`difflens bench edits`: what to edit, with which methods, and where the results go."""

    run: str | None = None
    """run folder (its dictionaries/ subfolder or its dictionary folders are the feature methods) or one
    dictionary folder; none: only the dense and swap methods"""
    model: str = "embedded"
    """model to edit with (embedded, flux-schnell, sdxl-turbo, ...)"""
    pairs: str | None = None
    """pairs file (difflens or RIEBench JSON lines; none: the shipped shapes-world pairs of the model's world)"""
    categories: list[str] = field(default_factory=list)
    """categories to run (empty: every category in the pairs file)"""
    n: int = 20
    """pairs per category (the first ones whose source generation the oracle reads as the source scene)"""
    methods: list[str] = field(default_factory=list)
    """dictionary folder names of the run, and dense, random, swap (empty: every dictionary and all three)"""
    sites: list[str] = field(default_factory=list)
    """sites of the dense activation difference (empty: the feature methods' sites)"""
    steps: str = "all"
    """denoising steps edited: start:end (end exclusive), a comma list, or all (on the embedded model, edits
    of the first half only are undone by the later steps, which re-read the prompt)"""
    select: str = "own"
    """step whose codes select the features: own (the dictionary's own step when edited, else the first edited
    step), first (RIEBench's), each (every step selects its own), or a step number"""
    selection: Literal["mean-difference", "truth"] = "mean-difference"
    """feature methods' latents: mean-difference (RIEBench's top / bottom k) or truth (up to k latents the
    dictionary's truth.json names precise for the target concept, added, and for the source concept, removed;
    needs `difflens features truth` run on the dictionary)"""
    apply: Literal["add", "clamp"] = "add"
    """feature methods' edit: add (RIEBench's transfer delta) or clamp (the added latents' live codes set to m1 x
    their typical activation in the target generation, the removed ones' to 0, on the masked tokens)"""
    preserve_norm: bool = False
    """rescale every token a feature method (or its random control) edits to its unedited norm"""
    together: bool = False
    """apply every feature method at once (one edit at all their sites, named a+b, with its random control)
    instead of one method at a time"""
    ks: list[int] = field(default_factory=lambda: [8, 32])
    """latents added (top-k) and subtracted (bottom-k)"""
    strengths: list[float] = field(default_factory=lambda: [1.0, 2.0, 4.0])
    """m1 of the feature transfer (and of its random control)"""
    dense_strengths: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    """m1 of the dense activation difference"""
    random_reference: str | None = None
    """dictionary whose deltas the random control matches (none: sae_pca if run, else the first)"""
    num_steps: int | None = None
    """denoising steps of a generation (none: the model's)"""
    guidance: float | None = None
    """classifier-free guidance scale (none: the model's)"""
    halves: Literal["both", "cond", "contrast"] = "both"
    """under classifier-free guidance, the halves edited (contrast: +cond, -uncond)"""
    require_faithful: bool = True
    """keep only pairs whose source generation reads as the source scene (oracle pairs)"""
    mask_blur: float = 1 / 64
    """a pair file's masks: gaussian blur sigma as a fraction of the mask's longer side (RIEBench's preparation)"""
    mask_threshold: float = 0.5
    """a pair file's masks: a token is edited when its blurred, resized mask value exceeds this"""
    clip_model: str | None = None
    """transformers CLIP model folder (or hub id) for CLIP image / text similarity to the references; none: not
    scored"""
    lpips_net: str = "alex"
    """network of the LPIPS distance to the references (alex, vgg, squeeze; off: not scored); needs the lpips
    package and its weights (else said and not scored)"""
    batch_size: int = 32
    """images per generation call"""
    seed: int = 0
    """seed of the random control and the bootstrap"""
    n_boot: int = 1000
    """bootstrap resamples of the 95 % intervals"""
    out: str = field(default="edit_bench/results.json", metadata={"aliases": ["-o"]})
    """results.json path (the curves PNG goes beside it)"""
    quiet: bool = False
    """no progress lines"""
    overwrite: bool = False
    """replace results at --out made with other settings (said on stderr) instead of refusing them"""

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if any(k < 1 for k in self.ks) or not self.ks:
            raise ValueError(f"ks must be >= 1, got {self.ks}")
        if not self.strengths or not self.dense_strengths:
            raise ValueError("strengths and dense_strengths need at least one value")
        if self.halves not in ("both", "cond", "contrast"):
            raise ValueError(f"halves must be both, cond or contrast, got {self.halves!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.n_boot < 1:
            raise ValueError(f"n_boot must be >= 1, got {self.n_boot}")
        if self.lpips_net not in LPIPS_NETS:
            raise ValueError(f"lpips_net must be one of {', '.join(LPIPS_NETS)}, got {self.lpips_net!r}")
        if self.mask_blur < 0 or not 0 <= self.mask_threshold < 1:
            raise ValueError(f"mask_blur must be >= 0 and mask_threshold in [0, 1), got {self.mask_blur}, "
                             f"{self.mask_threshold}")


# ------------------------------------------------------------------ masks
def _object_at(reading, cell: str):
    found = [o for o in reading.objects if o.position == cell]
    return max(found, key=lambda o: o.area) if found else None


def _cell_box(cell: str, shape: tuple[int, int]) -> np.ndarray:
    from difflens.world.scene import POSITIONS

    r, c = divmod(POSITIONS.index(cell), 3)
    H, W = shape
    m = np.zeros(shape, bool)
    m[r * H // 3:(r + 1) * H // 3, c * W // 3:(c + 1) * W // 3] = True
    return m


def edit_mask(pair: EditPair, source_reading, target_reading, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the oracle's mask of the edited object in the source and target generations (its grid cell
    where a generation lacks it); for background and texture edits every pixel that is no object in either."""
    if pair.attribute in SCENE_ATTRIBUTES:
        objects = np.zeros(shape, bool)
        for r in (source_reading, target_reading):
            for o in r.objects:
                objects |= o.mask
        return ~objects
    mask = np.zeros(shape, bool)
    if pair.category != "add":
        cell = pair.source_scene["objects"][pair.object]["position"]
        o = _object_at(source_reading, cell)
        mask |= o.mask if o is not None else _cell_box(cell, shape)
    if pair.category != "remove":
        cell = pair.target_scene["objects"][pair.object]["position"]
        o = _object_at(target_reading, cell)
        mask |= o.mask if o is not None else _cell_box(cell, shape)
    return mask


def to_tokens(mask_HW: np.ndarray, grid: tuple[int, int]) -> torch.Tensor:
    """(T,) 0/1 float token mask: the pixel mask area-resized to the grid, thresholded > 0 (row-major)."""
    return torch.from_numpy(mask_to_grid(mask_HW, grid) > 0).float().reshape(-1)


def to_pixels(mask_T: torch.Tensor, grid: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels of the tokens in a token mask."""
    m = mask_T.reshape(1, 1, *grid).float()
    return F.interpolate(m, size=shape, mode="nearest")[0, 0].numpy() > 0


# ------------------------------------------------------------------ the loop
@dataclass
class Kept:
    """One pair kept for editing: its generations, readings, masks and captured activations."""

    pair: EditPair
    source: np.ndarray
    target: np.ndarray
    source_reading: object
    target_reading: object
    mask_px: np.ndarray | None
    acts: dict[str, PairActs]
    tokens: dict[str, torch.Tensor] = field(default_factory=dict)  # site -> (T,) mask


def _dictionaries(run: str | None, names: list[str]) -> dict:
    from difflens.dictionaries.io import load_dictionary
    from difflens.store.run_layout import find_dictionaries

    if run is None:
        if names:
            raise ValueError(f"methods {names} need --run (a run folder holding those dictionaries)")
        return {}
    found = find_dictionaries(run)
    if names is None:
        names = list(found)
    missing = [n for n in names if n not in found]
    if missing:
        raise ValueError(f"no dictionary named {', '.join(missing)} in {run}; it holds: {', '.join(found) or 'none'} "
                         f"(built-in methods: {', '.join(BUILTIN_METHODS)})")
    return {n: load_dictionary(found[n]) for n in names}


class _Log:
    def __init__(self, quiet: bool):
        self.quiet, self.t0 = quiet, time.time()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.time() - self.t0:6.0f}s] {msg}", file=sys.stderr, flush=True)


def bench_settings(config: dict) -> dict:
    """What makes two benchmark runs the same job: the config but where it writes and how it talks."""
    return {k: v for k, v in config.items() if k not in ("out", "quiet", "overwrite")}


@locks_output(lambda config, *_, **__: config.out or None)
def run_edit_bench(config: BenchConfig, model=None, dictionaries: dict | None = None,
                   learned: LearnedScorers | None = None) -> dict:
    """Run the benchmark; returns the results dict written to `config.out` (when set; locked meanwhile; results
    of other settings there are refused unless `config.overwrite`). `model`: an adapter (default:
    `load_adapter(config.model)`); `dictionaries`: {name: Dictionary} instead of the run's folders; `learned`: the
    scorers of :func:`learned_scorers` when already loaded (several runs of one config)."""
    if config.out and Path(config.out).exists():
        same_settings(config.out, bench_settings(load_results(config.out)["config"]), bench_settings(asdict(config)),
                      what="editing-benchmark results", overwrite=config.overwrite)
    log = _Log(config.quiet)
    plan = _Plan.check(config, model, dictionaries, learned)  # all that can be wrong, before the first generation
    bench = _Bench(plan, config)
    for category in plan.categories:
        kept = bench.keep_pairs(category, log)
        if kept:
            bench.edit(category, kept, log)
    return _write_results(config, plan, bench.records, bench.counts)


@dataclass
class _Plan:
    """What a benchmark run edits and how, checked in full before anything generates."""

    model: object
    world: str  # the shapes world the oracle reads and judges in
    pairs_path: Path
    pairs: list[EditPair]
    categories: list[str]
    num_steps: int
    steps: list[int]
    builtin: list[str]  # of dense, random, swap: those to run
    features: dict[str, FeatureMethod]
    dense_sites: list[str]
    reference: str | None  # the dictionary method whose deltas the random control matches
    select_index: dict[str, int | None]  # per feature method: the edited step (its position) whose codes select
    sites: list[str]  # every site captured: the feature methods' and the dense ones
    grids: dict[str, tuple[int, int]]
    learned: LearnedScorers  # LPIPS / CLIP where they loaded, and a line per scorer

    @property
    def oracle(self) -> bool:
        """Whether the oracle scores any pair (the pairs carry their scenes)."""
        return any(p.judged for p in self.pairs if p.category in self.categories)

    def scorer_lines(self) -> list[str]:
        """Which scorer produced which numbers, one line each (tables and results.json)."""
        oracle = (f"oracle: the {self.world} world's oracle reads each image (success, preservation, clean)"
                  if self.oracle else "oracle: none (pairs without scenes: success, preservation, clean not scored)")
        pixels = ("pixels: PSNR / SSIM against the model's own generations of the source prompt (outside the mask) "
                  f"and the target prompt (inside it), same seed; {WHOLE_IMAGE} -> over every pixel")
        return [oracle, pixels, *self.learned.lines]

    @classmethod
    def check(cls, config: BenchConfig, model, dictionaries: dict | None,
              learned: LearnedScorers | None = None) -> "_Plan":
        builtin = [m for m in (config.methods or BUILTIN_METHODS) if m in BUILTIN_METHODS]
        dictionaries = _chosen_dictionaries(config, dictionaries)
        if model is None:
            from difflens.adapters import load_adapter

            model = load_adapter(config.model)
        world = model.world
        pairs_path, pairs, categories = _chosen_pairs(config, model)
        num_steps = config.num_steps or model.default_num_steps
        steps = parse_steps(config.steps, num_steps)
        features = _feature_methods(dictionaries, model,
                                    FeatureEdit(config.selection, config.apply, config.preserve_norm))
        dense_sites = _dense_sites(config, builtin, features, model)
        reference = _random_reference(config, builtin, features)
        if config.together and reference is not None:  # the control matches the joint edit
            reference = joint_name(features)
        select_index = {name: _select_index(config.select, f, steps) for name, f in features.items()}
        sites = list(dict.fromkeys([*(f.site for f in features.values()), *dense_sites]))
        grids = {s: model.site(s).grid for s in sites}
        learned = learned_scorers(config) if learned is None else learned
        return cls(model, world, pairs_path, pairs, categories, num_steps, steps, builtin, features, dense_sites,
                   reference, select_index, sites, grids, learned)


def learned_scorers(config: BenchConfig) -> LearnedScorers:
    """The learned scorers `config` asks for (CLIP, LPIPS), loaded where their weights can be."""
    return load_learned_scorers(config.clip_model, None if config.lpips_net == "off" else config.lpips_net,
                                "cuda" if torch.cuda.is_available() else "cpu")


def _chosen_dictionaries(config: BenchConfig, dictionaries: dict | None) -> dict:
    """The feature methods' dictionaries: the given ones among config.methods, else the run's named ones."""
    if dictionaries is None:
        named = [m for m in config.methods if m not in BUILTIN_METHODS] if config.methods else None
        if named is None and config.run is None:
            named = []
        return _dictionaries(config.run, named)
    return {k: v for k, v in dictionaries.items() if not config.methods or k in config.methods}


def _chosen_pairs(config: BenchConfig, model) -> tuple[Path, list[EditPair], list[str]]:
    """(pairs file, its pairs, the categories to run), every prompt checked against the model's words."""
    pairs_path = Path(config.pairs) if config.pairs else pairs_file(model.world)
    pairs = read_pairs(pairs_path, vocabulary=model_vocabulary(model))
    check_prompts(model, pairs)
    categories = config.categories or list(dict.fromkeys(p.category for p in pairs))
    missing = [c for c in categories if not any(p.category == c for p in pairs)]
    if missing:
        raise ValueError(f"no pairs of categories {missing} in the pairs file; it has "
                         f"{', '.join(dict.fromkeys(p.category for p in pairs))}")
    return pairs_path, pairs, categories


def joint_name(names) -> str:
    """The name of feature methods applied at once (--together): their names (or a {name: method} dict's) joined
    by +."""
    return "+".join(names)


def _feature_methods(dictionaries: dict, model, how: FeatureEdit) -> dict[str, FeatureMethod]:
    """A feature-transfer method per dictionary, each checked against its image site on the model."""
    features = {}
    for name, d in dictionaries.items():
        if d.site is None:
            raise ValueError(f"dictionary {name} does not record its site")
        info = model.site(d.site)
        if info.dim != d.d_in:
            raise ValueError(f"dictionary {name} has width {d.d_in}, its site {d.site} has width {info.dim}")
        if info.grid is None:
            raise ValueError(f"dictionary {name}'s site {d.site} holds text tokens; edits need an image site")
        features[name] = FeatureMethod(name, d, d.site, how)
    return features


def _dense_sites(config: BenchConfig, builtin: list[str], features: dict[str, FeatureMethod], model) -> list[str]:
    """Sites of the dense method (none when it does not run): config.sites, else the feature methods' sites."""
    dense_sites = list(config.sites) or list(dict.fromkeys(f.site for f in features.values()))
    if "dense" in builtin and not dense_sites:
        raise ValueError("the dense method needs --sites (no dictionary gives one)")
    if "dense" not in builtin:
        dense_sites = []
    for s in dense_sites:
        if model.site(s).grid is None:
            raise ValueError(f"site {s} holds text tokens; edits need an image site")
    return dense_sites


def _random_reference(config: BenchConfig, builtin: list[str], features: dict[str, FeatureMethod]) -> str | None:
    """The dictionary method the random control matches (None without the control)."""
    if "random" not in builtin:
        return None
    if not features:
        raise ValueError("the random control needs a dictionary method to match")
    reference = config.random_reference or ("sae_pca" if "sae_pca" in features else next(iter(features)))
    if reference not in features:
        raise ValueError(f"random_reference {reference!r} is not among the dictionary methods {list(features)}")
    return reference


def _select_index(select: str, f: FeatureMethod, steps: list[int]) -> int | None:
    """Position in ``steps`` of the step whose codes select a method's features (None: each step its own)."""
    if select == "each":
        return None
    if select == "own":
        want = f.dictionary.step if f.dictionary.step in steps else steps[0]
    elif select == "first":
        want = steps[0]
    else:
        try:
            want = int(select)
        except ValueError:
            raise ValueError(f"select must be own, first, each or a step number, got {select!r}") from None
    if want not in steps:
        raise ValueError(f"select step {want} is not an edited step {steps}")
    return steps.index(want)


class _Bench:
    """The loop's state: generation (batched, capturing sites at the edited steps), the oracle's scoring, and the
    records and per-category pair counts it collects."""

    def __init__(self, plan: _Plan, config: BenchConfig):
        self.plan, self.config = plan, config
        self.main_grid = plan.model.grid()
        self.records: list[dict] = []
        self.counts: dict[str, dict] = {}
        self.gen = torch.Generator().manual_seed(config.seed)  # the random control's draws, across categories

    def generate(self, prompts, seeds, capture_sites=(), interventions=()):
        """(images (B, H, W, 3), {site: (B, S, T, D) activations at the edited steps}) in batches of batch_size;
        each intervention is a function of the batch's slice."""
        from difflens.adapters.base import Capture

        plan, config, steps = self.plan, self.config, self.plan.steps
        got: dict = {}
        images = []
        for i in range(0, len(prompts), config.batch_size):
            sl = slice(i, i + config.batch_size)
            part: dict = {}
            caps = [Capture(list(capture_sites), lambda n, st, x: part.setdefault(n, {}).__setitem__(st, x.float().cpu()),
                            steps=steps)] if capture_sites else []
            ivs = [iv(sl) for iv in interventions]
            images.append(plan.model.generate(prompts[sl], seeds=seeds[sl], num_steps=plan.num_steps,
                                              guidance=config.guidance, capture=caps, interventions=ivs))
            for n, by_step in part.items():
                got.setdefault(n, []).append(torch.stack([by_step[s] for s in steps], 1))  # (B, S, T, D)
        return np.concatenate(images), {n: torch.cat(v) for n, v in got.items()}

    def score(self, kept: list[Kept], images: np.ndarray, method: str, site: str | None, strength, k, extra=None):
        """One record per kept pair: the oracle's judgement of its edited image (oracle pairs), its pixel scores
        against the two reference generations (inside / outside the edit region, or the whole image without a
        mask) and the learned scores that loaded."""
        from difflens.world.oracle import read_image

        world = self.plan.world
        learned = self.plan.learned.scores(images, np.stack([kp.source for kp in kept]),
                                           np.stack([kp.target for kp in kept]), [kp.pair.source for kp in kept],
                                           [kp.pair.target for kp in kept])
        for j, (kp, img) in enumerate(zip(kept, images)):
            rec = {"pair": kp.pair.id, "category": kp.pair.category, "method": method, "site": site,
                   "strength": strength, "k": k}
            if kp.pair.judged:
                rec.update(judge(kp.pair, read_image(img, world=world), world))
            else:
                rec.update(success=None, preservation=None, clean=None)
            region = None
            if kp.mask_px is not None:  # the edited tokens at pixel resolution (the site's, or the main grid's)
                grid = self.plan.grids.get(site, self.main_grid)
                tok = kp.tokens[site] if site in kp.tokens else to_tokens(kp.mask_px, grid)
                region = to_pixels(tok, grid, img.shape[:2])
            rec.update(pixel_scores(img, kp.source, kp.target, region))
            rec.update(learned[j])
            if extra is not None:
                rec.update(extra[j])
            self.records.append(rec)

    def keep_pairs(self, category: str, log) -> list[Kept]:
        """The first ``n`` pairs of the category whose source generation reads as the source scene (all pairs
        without scenes), generated in chunks with their target prompts, every site captured."""
        config, plan = self.config, self.plan
        candidates = [p for p in plan.pairs if p.category == category]
        kept: list[Kept] = []
        tried = 0
        while len(kept) < config.n and tried < len(candidates):
            # ask for a few more than still needed: some sources will not read as their scene
            want = min(config.batch_size, max(2, int(1.5 * (config.n - len(kept))) + 1))
            chunk = candidates[tried: tried + want]
            tried += len(chunk)
            prompts = [p.source for p in chunk] + [p.target for p in chunk]
            seeds = [p.seed for p in chunk] * 2
            images, acts = self.generate(prompts, seeds, plan.sites)
            B = len(chunk)
            for j, p in enumerate(chunk):
                kp = self._kept(p, images[j], images[B + j], {s: PairActs(acts[s][j], acts[s][B + j]) for s in plan.sites})
                if kp is not None:
                    kept.append(kp)
        usable = len(kept)
        kept = kept[: config.n]
        self.counts[category] = {"tried": tried, "usable": usable, "kept": len(kept)}
        oracle = any(p.judged for p in candidates[:tried])
        if oracle and config.require_faithful:
            why = "oracle pairs: the source generation reads as the source scene"
        else:
            why = "every pair is usable" + ("" if oracle else ": no oracle, scored against the reference generations")
        log(f"{category}: {len(kept)} pairs kept; {usable} of {tried} tried usable ({why})")
        return kept

    def _kept(self, p: EditPair, src: np.ndarray, tgt: np.ndarray, acts: dict[str, PairActs]) -> Kept | None:
        """A generated pair with its readings and masks (pixel and per-site token), or None when its source does
        not read as the source scene (and faithful sources are required)."""
        from difflens.world.oracle import read_image

        world, grids = self.plan.world, self.plan.grids
        r_src = r_tgt = None
        if p.judged:
            r_src, r_tgt = read_image(src, world=world), read_image(tgt, world=world)
            if self.config.require_faithful and not faithful(p.source_scene, r_src, world):
                return None
        if p.mask is not None:  # the user's mask, prepared as RIEBench prepares it, per token grid
            def prepared(grid):
                return prepare_mask(p.mask, grid, self.config.mask_blur, self.config.mask_threshold)

            mask_px = to_pixels(prepared(self.main_grid), self.main_grid, src.shape[:2])
            tokens = {s: prepared(grids[s]) for s in self.plan.sites}
        else:
            mask_px = edit_mask(p, r_src, r_tgt, src.shape[:2]) if p.judged else None
            tokens = {s: torch.ones(grids[s][0] * grids[s][1]) if mask_px is None else to_tokens(mask_px, grids[s])
                      for s in self.plan.sites}
        return Kept(p, src, tgt, r_src, r_tgt, mask_px, acts, tokens)

    def edit(self, category: str, kept: list[Kept], log) -> None:
        """Every method on the kept pairs: the prompt swap, each dictionary's feature transfer (with the random
        control beside its reference) at every k and strength, the dense difference at every strength."""
        config, plan = self.config, self.plan
        if "swap" in plan.builtin:
            self.score(kept, np.stack([kp.target for kp in kept]), "swap", None, None, None)
        groups = [list(plan.features)] if config.together and plan.features else [[n] for n in plan.features]
        for names in groups:
            self._transfer(kept, names)
            log(f"{category}: {'+'.join(names)} done")
        for site in plan.dense_sites:
            for m1 in config.dense_strengths:
                deltas = torch.stack([dense_delta(kp.acts[site], kp.tokens[site], m1) for kp in kept])
                self._edit_with(kept, [(None, SiteEdit(site, deltas))], "dense", m1, None)
        if plan.dense_sites:
            log(f"{category}: dense done")

    def _transfer(self, kept: list[Kept], names: list[str]) -> None:
        """Feature edits by the named methods, applied together (one method: the usual case), at every k and
        strength, with the random control when they are the reference; each added (`FeatureEdit.apply` add) or
        clamped, the latents chosen by the mean difference or the ground truth."""
        plan, config = self.plan, self.config
        methods = [plan.features[n] for n in names]
        name = joint_name(names)
        codes = {fm.name: [fm.codes(kp.acts[fm.site]) for kp in kept] for fm in methods}
        for k in config.ks:
            for m1 in config.strengths:
                edits, controls, counts = [], [], np.zeros((len(kept), 2))
                for fm in methods:
                    edit, control, n_chosen = self._one_method(kept, fm, codes[fm.name], k, m1, name == plan.reference)
                    edits.append((fm, edit))
                    controls.append((fm, control))
                    counts += n_chosen
                extra = [{"latents_added": float(a), "latents_subtracted": float(b)} for a, b in counts]
                self._edit_with(kept, edits, name, m1, k, extra)
                if name == plan.reference:
                    self._edit_with(kept, controls, "random", m1, k, extra)

    def _one_method(self, kept: list[Kept], fm: FeatureMethod, codes: list, k: int, m1: float, control: bool):
        """(its SiteEdit, the random control's SiteEdit or None, (B, 2) latents added / removed per pair, mean
        over steps) of one feature method on the kept pairs."""
        index = self.plan.select_index[fm.name]
        clamp = fm.how.apply == "clamp"
        per, rand, chosen = [], [], []
        for kp, (src, tgt) in zip(kept, codes):
            mask = kp.tokens[fm.site]
            if clamp:
                v, c = fm.clamps(src, tgt, mask, index, k, m1, kp.pair)
                per.append(v)
                if control:
                    rand.append(fm.random_clamps(v, c, self.gen))
            else:
                v, c = fm.deltas(src, tgt, mask, index, k, m1, kp.pair)
                per.append(v)
                if control:
                    rand.append(fm.random_deltas(v, src, tgt, c, mask, self.gen))
            chosen.append(c)
        masks = torch.stack([kp.tokens[fm.site] for kp in kept])

        def site_edit(values):
            if clamp:
                return SiteEdit(fm.site, clamp_BSF=torch.stack(values), mask_BT=masks)
            return SiteEdit(fm.site, deltas_BSTD=torch.stack(values))

        counts = np.array([[np.mean([len(t) for t, _b in c]), np.mean([len(b) for _t, b in c])] for c in chosen])
        return site_edit(per), (site_edit(rand) if control else None), counts

    def _edit_with(self, kept: list[Kept], edits: list[tuple[FeatureMethod | None, SiteEdit]], method: str,
                   strength, k, extra=None) -> None:
        """Re-generate the kept pairs' source prompts, same seeds, with every (method, SiteEdit) applied at the
        edited steps (a feature method's own intervention; None: the plain deltas), and score the results under
        the sites joined by +."""
        steps, halves = self.plan.steps, self.config.halves

        def intervention(fm, edit):
            if fm is None:
                return lambda sl: token_deltas(edit.site, {st: edit.deltas_BSTD[sl, s] for s, st in enumerate(steps)},
                                               halves)
            return lambda sl: fm.intervention(edit, steps, halves, sl)

        ivs = [intervention(fm, e) for fm, e in edits]
        images, _ = self.generate([kp.pair.source for kp in kept], [kp.pair.seed for kp in kept], interventions=ivs)
        self.score(kept, images, method, "+".join(e.site for _fm, e in edits), strength, k, extra)


def _write_results(config: BenchConfig, plan: _Plan, records: list[dict], counts: dict[str, dict]) -> dict:
    """The results (rows aggregated with bootstrap intervals, every pair's records, the definitions), written
    atomically to config.out with the curves beside it (when config.out is set)."""
    rows = aggregate(records, config.n_boot, config.seed)
    results = {"config": asdict(config), "model": plan.model.name, "world": plan.world, "pairs_file": str(plan.pairs_path),
               "num_steps": plan.num_steps, "steps": plan.steps,
               "random_reference": plan.reference, "pair_counts": counts,
               "oracle": plan.oracle, "scorers": plan.scorer_lines(),
               "definitions": definitions(plan.oracle),
               "rows": rows, "pairs": records}
    if config.out:
        from difflens.atomic import atomic_write_json

        out = Path(config.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        plot = curves(rows, out.with_name(out.stem + "_curves.png"), plan.reference)  # first: the JSON is the commit
        atomic_write_json(out, results)  # point (a --groups rerun skips a group whose JSON exists)
        results["plot"] = str(plot)
    return results


def definitions(oracle: bool) -> dict:
    """What each score of results.json means (the oracle's scores only when the oracle scored)."""
    judged = {
        "success": "(oracle) the oracle reads the edited attribute as the target's on the edited object",
        "preservation": "(oracle) every other fact of the scene reads as before (background, other objects, "
                        "the edited object's other attributes)",
        "clean": "(oracle) success and preservation: the edited image reads exactly as the target scene"}
    refs = "the reference generations (the model's own images of the source / target prompt, same seed)"
    return {**(judged if oracle else {}),
            "psnr_outside": f"PSNR (dB, capped at 60) against the source reference outside the edit region (the "
                            f"mask's tokens); {WHOLE_IMAGE}: over every pixel",
            "ssim_outside": "SSIM (gaussian window) against the source reference, same region",
            "psnr_inside": "PSNR (dB) against the target reference inside the edit region; no mask: every pixel",
            "ssim_inside": "SSIM against the target reference, same region",
            "lpips_source": f"LPIPS distance to the source reference (lower: closer); of {refs}",
            "lpips_target": "LPIPS distance to the target reference",
            "clip_image_source": "CLIP image-embedding cosine similarity to the source reference",
            "clip_image_target": "CLIP image-embedding cosine similarity to the target reference",
            "clip_text_target": "CLIP cosine similarity of the edited image to the target prompt",
            "clip_text_source": "CLIP cosine similarity of the edited image to the source prompt",
            "region": f"{MASKED}: the pair's mask; {WHOLE_IMAGE}: the pair has none (per pair; rows: masked pairs)",
            "interval": "95 % percentile bootstrap over pairs (_lo, _hi)"}


def aggregate(records: list[dict], n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """One row per (category, method, site, strength, k): means and 95 % bootstrap intervals over pairs, and how
    many of its pairs had a mask ("masked"; the others are scored over the whole image)."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["category"], r["method"], r["site"], r["strength"], r["k"]), []).append(r)
    rows = []
    for (cat, method, site, strength, k), recs in groups.items():
        row = {"category": cat, "method": method, "site": site, "strength": strength, "k": k}
        row.update(summarise(recs, n_boot, seed))
        row["masked"] = sum(r.get("region", MASKED) == MASKED for r in recs)
        if "latents_added" in recs[0]:
            row["latents_added"] = float(np.mean([r["latents_added"] for r in recs]))
            row["latents_subtracted"] = float(np.mean([r["latents_subtracted"] for r in recs]))
        rows.append(row)
    return rows


def best_rows(rows: list[dict], key: str = "clean") -> list[dict]:
    """Per (category, method, site): the row of the best setting by `key` (psnr_outside without the oracle).
    The random control is reported at the setting where its reference dictionary did best."""
    if not any(r[key] is not None for r in rows):
        key = "psnr_outside"
    best: dict = {}
    for r in rows:
        g = (r["category"], r["method"], r["site"])
        v = -np.inf if r[key] is None else r[key]
        if g not in best or v > best[g][0]:
            best[g] = (v, r)
    return [r for _v, r in best.values()]


def region_text(row: dict) -> str:
    """Where a row's pixel scores were taken: the masks, the whole image (no mask), or how many pairs had each."""
    n, masked = row["n"], row.get("masked", row["n"])
    if masked == n:
        return MASKED
    return WHOLE_IMAGE if masked == 0 else f"mask {masked}/{n}, whole {n - masked}/{n}"


# the reference columns of the table: (score, header, format); learned ones only where some row has them
_REFERENCE_COLUMNS = (("psnr_outside", "psnr out", ".1f"), ("ssim_outside", "ssim out", ".3f"),
                      ("psnr_inside", "psnr in", ".1f"), ("ssim_inside", "ssim in", ".3f"))
_LEARNED_COLUMNS = (("lpips_source", "lpips src", ".3f"), ("lpips_target", "lpips tgt", ".3f"),
                    ("clip_image_source", "clipI src", ".3f"), ("clip_image_target", "clipI tgt", ".3f"),
                    ("clip_text_target", "clipT tgt", ".3f"), ("clip_text_source", "clipT src", ".3f"))


def format_bench_table(rows: list[dict], reference: str | None = None, scorers: list[str] | None = None) -> str:
    """Per category x method (x site): the best setting's scores — the oracle's clean / success / preservation
    with intervals where the oracle scored, the pixel scores against the reference generations always, LPIPS /
    CLIP where they loaded, and the region they cover — headed by who scored, followed by `scorers` (each
    scorer's line, from results.json)."""
    picked = best_rows([r for r in rows if r["method"] != "random"])
    if reference is not None:  # the control at its reference's best setting
        ref = {(r["category"], r["site"]): r for r in picked if r["method"] == reference}
        for r in rows:
            b = ref.get((r["category"], r["site"]))
            if r["method"] == "random" and b is not None and (r["strength"], r["k"]) == (b["strength"], b["k"]):
                picked.append(r)
    judged = any(r.get("success") is not None for r in rows)
    numeric = [*_REFERENCE_COLUMNS, *(c for c in _LEARNED_COLUMNS if any(r.get(c[0]) is not None for r in rows))]

    def pct(r, key):
        if r[key] is None:
            return "   -"
        lo, hi = r.get(f"{key}_lo"), r.get(f"{key}_hi")
        return f"{100 * r[key]:4.0f} [{100 * lo:3.0f},{100 * hi:3.0f}]"

    def num(r, key, fmt):
        return "-" if r.get(key) is None else format(r[key], fmt)

    mw = max([10, *(len(r["method"]) + 2 for r in picked)])
    rw = max([8, *(len(region_text(r)) + 2 for r in picked)])
    oracle_head = f"{'clean %':<15}{'success %':<15}{'preserv. %':<15}" if judged else ""
    head = (f"{'category':<11}{'method':<{mw}}{'site':<20}{'m1':>5}{'k':>4}{'n':>4}  {oracle_head}"
            + "".join(f"{h:>10}" for _k, h, _f in numeric) + f"  {'region':<{rw}}")
    by = ("the oracle (clean, success, preservation) and the reference generations" if judged
          else "the reference generations (no oracle)")
    lines = [f"scored by {by}; out: outside the mask vs the source reference, in: inside it vs the target "
             "reference", head, "-" * len(head)]
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    for r in sorted(picked, key=lambda r: (r["category"], order[r["method"]], r["site"] or "")):
        oracle = f"{pct(r, 'clean'):<15}{pct(r, 'success'):<15}{pct(r, 'preservation'):<15}" if judged else ""
        lines.append(f"{r['category']:<11}{r['method']:<{mw}}{(r['site'] or '-'):<20}"
                     f"{'-' if r['strength'] is None else format(r['strength'], 'g'):>5}"
                     f"{'-' if r['k'] is None else r['k']:>4}{r['n']:>4}  {oracle}"
                     + "".join(f"{num(r, k, f):>10}" for k, _h, f in numeric) + f"  {region_text(r):<{rw}}")
    lines += list(scorers or ())
    return "\n".join(lines)


def curves(rows: list[dict], path: Path, reference: str | None = None) -> Path:
    """Success (y) against preservation (x) over strength, one panel per category, one line per method and
    site at its best k (points in order of strength; swap: a single star; the random control at its reference
    dictionary's k). Without the oracle: PSNR over strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = any(r["success"] is not None for r in rows)
    cats = list(dict.fromkeys(r["category"] for r in rows))
    if not cats:  # no category kept a pair: say so rather than draw empty axes
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no pairs were kept in any category: nothing to plot", ha="center", va="center")
        return _save_figure(fig, path)
    cols = min(4, len(cats))
    nrows = (len(cats) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.3 * cols, 3.9 * nrows), squeeze=False)
    for ax in axes.flat[len(cats):]:
        ax.axis("off")
    colours = {}
    for ax, cat in zip(axes.flat, cats):
        mine = [r for r in rows if r["category"] == cat]
        chosen_k: dict = {}
        pairs = sorted(dict.fromkeys((r["method"], r["site"]) for r in mine), key=lambda m: m[0] == "random")
        for method, site in pairs:
            these = [r for r in mine if (r["method"], r["site"]) == (method, site)]
            ks = {r["k"] for r in these}
            if len(ks) > 1:  # the k whose mean clean rate (PSNR without the oracle) over strengths is best
                key = "clean" if judged else "psnr_outside"
                ks_best = max(ks, key=lambda k: np.mean([r[key] or 0 for r in these if r["k"] == k]))
                if method == "random" and chosen_k.get((reference, site)) in ks:
                    ks_best = chosen_k[(reference, site)]
                chosen_k[(method, site)] = ks_best
                these = [r for r in these if r["k"] == ks_best]
            these.sort(key=lambda r: r["strength"] or 0)
            label = method if len({r["site"] for r in rows if r["method"] == method}) <= 1 else f"{method} {site}"
            if these[0]["k"] is not None:
                label += f" k={these[0]['k']}"
            colour = colours.setdefault(label.split(" k=")[0], f"C{len(colours) % 10}")
            if judged:
                xs, ys = [r["preservation"] for r in these], [r["success"] for r in these]
            else:
                xs, ys = [r["strength"] or 0 for r in these], [r["psnr_outside"] for r in these]
            style = dict(marker="*", markersize=12, linestyle="none") if method == "swap" else dict(marker="o")
            ax.plot(xs, ys, color=colour, label=label, **style,
                    **({"linestyle": "--"} if method == "random" else {}))
            if judged and method not in ("swap",):
                for x, y, r in zip(xs, ys, these):
                    ax.annotate(f"{r['strength']:g}", (x, y), fontsize=6, xytext=(3, 2), textcoords="offset points",
                                color=colour)
        if judged:
            ax.set_xlim(-0.03, 1.03)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel("preservation")
            ax.set_ylabel("success")
        else:
            ax.set_xlabel("strength (m1)")
            ax.set_ylabel("PSNR vs the source reference, outside the mask (dB)")
        ax.set_title(cat, fontsize=10)
        ax.legend(fontsize=6, loc="best")
    fig.suptitle("edits: oracle success vs preservation over strength (numbers: m1)" if judged else
                 "edits (no oracle): pixel preservation over strength", fontsize=11)
    fig.tight_layout()
    return _save_figure(fig, path)


def _save_figure(fig, path: Path) -> Path:
    """Write a figure as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    from difflens.atomic import atomic_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path


def load_results(path: str | Path) -> dict:
    return read_json(path, "editing benchmark results", expect=dict)


def merge_results(paths: list[str | Path], out: str | Path) -> dict:
    """Join results files of disjoint categories (runs split to keep each short) into one results.json, its
    table and curves. Settings other than the categories must agree."""
    from difflens.atomic import atomic_write_json

    parts = [load_results(p) for p in paths]
    if not parts:
        raise ValueError("no results files to merge")
    first = parts[0]
    def settings(config: dict) -> dict:  # the job's settings (bench_settings) but the categories and their sizes
        return {k: v for k, v in bench_settings(config).items() if k not in ("categories", "n")}

    for p, path in zip(parts[1:], paths[1:]):
        a, b = settings(first["config"]), settings(p["config"])
        if a != b:
            diff = sorted(k for k in a if a[k] != b.get(k))
            raise ValueError(f"{path} was run with other settings ({', '.join(diff)})")
    worlds = {p.get("world", "classic") for p in parts}  # results written before worlds were recorded: classic
    if len(worlds) > 1:
        raise ValueError(f"results files come from models of different worlds ({', '.join(sorted(worlds))})")
    cats = [c for p in parts for c in p["pair_counts"]]
    if len(cats) != len(set(cats)):
        raise ValueError(f"results files share categories: {cats}")
    merged = dict(first)
    merged["config"] = dict(first["config"], categories=cats, out=str(out))
    merged["pair_counts"] = {c: v for p in parts for c, v in p["pair_counts"].items()}
    merged["rows"] = [r for p in parts for r in p["rows"]]
    merged["pairs"] = [r for p in parts for r in p["pairs"]]
    merged["merged_from"] = [str(p) for p in paths]
    merged.pop("plot", None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, merged)
    merged["plot"] = str(curves(merged["rows"], out.with_name(out.stem + "_curves.png"), merged.get("random_reference")))
    return merged
