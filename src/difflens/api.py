"""The researcher's API: ``import difflens as dl`` and script the whole loop from a notebook.

    model = dl.load_model("embedded")
    acts = dl.capture(model, n_images=64, sites=["double.1.img.out"], steps=[3])      # in memory
    sae = dl.train_sae(acts, k=16, num_latents=768, num_tokens=200_000)
    codes = sae.encode(acts["double.1.img.out", 3])                                 # (images, tokens, k)
    direction = sae.feature_directions([17])[0]                                     # residual space

Every function is a thin layer over a stage's own module (adapters, capture, dictionaries, evaluation);
keyword settings are the fields of that stage's config dataclass, so the API, the CLI and the configs
share one set of defaults.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from difflens.capture import activations as _capture


def _split_settings(settings: dict[str, Any], *configs: type) -> list[dict[str, Any]]:
    """Route keyword settings to the config dataclasses that own them; unknown names are an error."""
    parts: list[dict[str, Any]] = [{} for _ in configs]
    for name, value in settings.items():
        owners = [i for i, cls in enumerate(configs) if name in {f.name for f in fields(cls)}]
        if not owners:
            known = sorted({f.name for cls in configs for f in fields(cls)})
            raise TypeError(f"unknown setting {name!r}; known: {', '.join(known)}")
        for i in owners:
            parts[i][name] = value
    return parts


def load_model(name: str = "embedded", **options: Any):
    """A model adapter by name (embedded, flux-schnell, flux:PATH, sdxl-turbo, ...); options: LoadOptions fields
    (dtype, device, cpu_offload, quantization)."""
    from difflens.adapters import LoadOptions, load_adapter

    (load,) = _split_settings(options, LoadOptions)
    return load_adapter(name, LoadOptions(**load))


capture = _capture.capture  # record sites into memory or a store; it lives with its stage (`capture/activations.py`)


def open_store(path: str | Path):
    """An activation store folder, opened (sites, readers, images, prompts, split)."""
    from difflens.store import ActivationStore

    return ActivationStore.open(path)


def train_sae(source, site: str | None = None, step: int | list[int] | str | None = None, *,
              out: str | Path | None = None, split: str = "auto", on_step=None, arch: str = "topk", **settings: Any):
    """Train a TopK SAE on ``source`` (store folder, opened store, capture, reader or tensor ``(..., D)``).

    ``step``: one denoising step, or several (``[0, 3, 7]`` or ``"all"``, a store only) for one dictionary across
    them, trained on batches balanced per step; ``step_normalization="shared"`` fits one normaliser on all of
    them, ``"per-step"`` one per step (then ``sae.encode(acts, step=3)`` needs the rows' step).
    The lr defaults to 2e-4 / √(num_latents / 2**14) (sparsify's scaling) when not given.
    arch: the SAE family, topk, batchtopk, matryoshka (prefixes=(1/16, 1/4, 1), base="batchtopk"|"topk") or
    jumprelu (k = target L0, l0_coef, l0_tracking, bandwidth); its settings are its config's fields (``family_configs``).
    settings: SAETrainConfig fields (k, num_latents, normalization, loss_space, lr, num_tokens, ...) and
    RunConfig fields (resume, overwrite, device, checkpoint_every, progress, ...). ``out`` None trains in memory;
    with ``out`` the dictionary folder is written (and resumed; locked against other writers meanwhile; a
    dictionary of other settings there is refused unless overwrite=True or resume=False). The SAE remembers its
    site, step and store.
    """
    from difflens.dictionaries.train import RunConfig, sae_train_config
    from difflens.dictionaries.train.sae import train_sae as _train

    config = sae_train_config(arch)
    cfg, run = _split_settings(settings, config, RunConfig)
    run.setdefault("progress", False)
    return _train(source, config(**cfg), RunConfig(**{**run, "out": None if out is None else str(out)}),
                  site=site, step=step, split=split, on_step=on_step)


def train_itda(source, site: str | None = None, step: int | list[int] | str | None = None, *, out: str | Path | None = None,
               split: str = "auto", on_step=None, **settings: Any):
    """Grow an ITDA dictionary on ``source`` (as :func:`train_sae`); settings: ITDATrainConfig and RunConfig fields."""
    from difflens.dictionaries.train import ITDATrainConfig, RunConfig
    from difflens.dictionaries.train.itda import train_itda as _train

    cfg, run = _split_settings(settings, ITDATrainConfig, RunConfig)
    run.setdefault("progress", False)
    return _train(source, ITDATrainConfig(**cfg), RunConfig(**{**run, "out": None if out is None else str(out)}),
                  site=site, step=step, split=split, on_step=on_step)


def neuron_baseline(source, site: str | None = None, step: int | None = None, *, k: int | None = None,
                    out: str | Path | None = None, split: str = "auto", overwrite: bool = False):
    """The MLP-neuron baseline of an ``.mlp`` site: its hidden units as a (k-sparse) dictionary. ``out`` holding a
    dictionary made by other settings is refused unless ``overwrite``."""
    from difflens.dictionaries.train.neurons import neuron_baseline as _neurons

    return _neurons(source, site, step, k=k, out=None if out is None else str(out), split=split, overwrite=overwrite)


def load_dictionary(path: str | Path, device: str = "cpu"):
    """Any saved dictionary folder (SAE, ITDA, neurons, or a sparsify SAE), with its site, step and store."""
    from difflens.dictionaries.io import load_dictionary as _load

    return _load(path, device)


def save_dictionary(dictionary, path: str | Path) -> Path:
    """Write a dictionary folder (cfg.json + safetensors), its provenance included."""
    from difflens.dictionaries.io import save_dictionary as _save

    return _save(dictionary, path)


def evaluate(dictionary, source=None, **options: Any) -> dict:
    """FVU (residual and input space), L0, dead fraction; by default on the held-out images of the store the
    dictionary was trained on. options: site, step, split, max_tokens, batch_size, seed, device."""
    from difflens.evaluation.metrics import evaluate as _evaluate

    return _evaluate(dictionary, source, **options)


def evaluate_steps(dictionary, source=None, **options: Any) -> list[dict]:
    """Evaluate on every recorded step of the dictionary's site (and ``sites=[...]`` of the same width)."""
    from difflens.evaluation.analyses import across_steps

    return across_steps(dictionary, source, **options)


def compare_per_step(dictionary, per_step, source=None, **options: Any) -> list[dict]:
    """A dictionary across steps against one-step dictionaries (objects or folders) of its site and width, at each
    step both cover: FVU and L0 of each. options: split, max_tokens."""
    from difflens.evaluation.analyses import compare_per_step as _compare

    return _compare(dictionary, per_step, source, **options)


def feature_index(dictionary, source=None, *, steps=None, out: str | Path | None = None, overwrite: bool = False,
                  **settings: Any):
    """Index every latent of ``dictionary`` on its site's rows (default: its own store and step): frequency per
    step, max/mean activation, histogram, top images, quantile samples. settings: IndexConfig fields
    (top_n, samples, split, ...), plus device and progress. ``out`` writes (and resumes) an index folder; one
    of other settings there is refused unless ``overwrite`` (which starts over)."""
    from difflens.interpret.index import IndexConfig, build_feature_index

    options = {k: settings.pop(k) for k in ("device", "progress") if k in settings}
    (cfg,) = _split_settings(settings, IndexConfig)
    return build_feature_index(dictionary, source, steps=steps, out=None if out is None else str(out),
                               config=IndexConfig(**cfg), resume=not overwrite, **{"progress": False, **options})


def load_index(path: str | Path):
    """A feature index folder written by :func:`feature_index` or `difflens features index`."""
    from difflens.interpret.index import FeatureIndex

    return FeatureIndex.load(path)


def feature_card(index, latent: int, out: str | Path | None = None, n_images: int = 8, style: str = "blue"):
    """One latent's card (top images with its activation in blue, or ``style="spotlight"``: true colours where it
    fires; histogram; frequency by step); PNG if ``out``."""
    from difflens.interpret.cards import feature_card as _card

    return _card(index, latent, out, n_images, style)


def autointerp(index, out: str | Path | None = None, vlm=None, overwrite: bool = False, **settings: Any) -> dict:
    """Explain latents and score the explanations on held-out images. settings: AutointerpConfig fields
    (backend "oracle" | "openai", features, explain_images, ...); ``vlm``: a VLMConfig for the openai backend.
    Results of other settings in ``out`` are refused unless ``overwrite``."""
    from difflens.interpret.autointerp import AutointerpConfig, run_autointerp

    (cfg,) = _split_settings(settings, AutointerpConfig)
    return run_autointerp(index, AutointerpConfig(**cfg), out, vlm, overwrite=overwrite)


def steer(model, dictionary, edits, prompts, seeds=0, **options: Any):
    """Generate ``prompts`` unsteered and once per item of ``edits`` (an :class:`Edit` or a list applied together);
    ``dictionary``: a Dictionary or its folder. options: num_steps, guidance_scale, resolution, index.
    Returns a :class:`~difflens.steering.SteerResult` (baseline, images, records, oracle readings)."""
    from difflens.steering import steer as _steer

    if isinstance(model, str):
        model = load_model(model)
    if isinstance(dictionary, (str, Path)):
        dictionary = load_dictionary(dictionary)
    return _steer(model, dictionary, edits, prompts, seeds, **options)


def __getattr__(name: str):
    if name == "Edit":  # dl.Edit(latent, mode, strength, ...): one feature edit for steer()
        from difflens.steering import Edit

        return Edit
    raise AttributeError(f"module 'difflens.api' has no attribute {name!r}")
