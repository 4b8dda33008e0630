"""Does a text encoder bind each object's words to their phrase? A linear probe reads, from the encoder's state of
an object's colour word and of its shape word, the grid cell its phrase names.

Captions are sampled scenes of a world (1-3 objects in the rich world); the probe (multinomial logistic
regression, L-BFGS, small L2, standardised states) trains on the first 75 % of the objects and is scored on the
rest, by object count. Chance is 1/9. An encoder that binds reads the cell from any word of the phrase, in scenes
of one object and of three alike; one that only knows which cells the caption names cannot beat about 1/n on an
n-object caption. `difflens world binding` runs it on a model's encoder; `text_pretrain` uses it to score a
pretrained one.
"""

from __future__ import annotations


import numpy as np
import torch

from ..world import sample_scene
from ..world.caption import caption_words as words  # the words the tokenizer sees
from ..world.scene import POSITIONS

TRAIN_SHARE = 0.75  # share of the objects the probe trains on (the rest score it)


def phrase_start(caption_words: list[str], obj) -> tuple[int, list[str]]:
    """(index of the first word of `obj`'s phrase in the caption's words, the phrase's words)."""
    phrase = words(obj.phrase())
    return next(i for i in range(len(caption_words)) if caption_words[i:i + len(phrase)] == phrase), phrase


def word_states(encoder, tokenizer, scenes) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """({"color"|"shape": states (N, D)}, cell index (N,), object count of its scene (N,)), one row per object."""
    with torch.no_grad():
        states_BTD, _ = encoder(tokenizer([s.caption for s in scenes]))
    rows: dict[str, list] = {"color": [], "shape": []}
    cells, counts = [], []
    for b, scene in enumerate(scenes):
        caption = words(scene.caption)
        for obj in scene.objects:
            start, phrase = phrase_start(caption, obj)
            for kind in rows:
                rows[kind].append(states_BTD[b, start + phrase.index(getattr(obj, kind))].numpy())
            cells.append(POSITIONS.index(obj.position))
            counts.append(len(scene.objects))
    return {k: np.array(v) for k, v in rows.items()}, np.array(cells), np.array(counts)


def probe_accuracy(X_ND: np.ndarray, y_N: np.ndarray, n_train: int) -> np.ndarray:
    """Held-out correctness (bool per row after n_train) of a 9-way logistic probe trained on the first rows."""
    X = torch.tensor(X_ND, dtype=torch.float32)
    X = (X - X[:n_train].mean(0)) / X[:n_train].std(0).clamp(min=1e-6)
    W = torch.zeros(X.shape[1], len(POSITIONS), requires_grad=True)
    b = torch.zeros(len(POSITIONS), requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=300)
    y = torch.tensor(y_N[:n_train])

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(X[:n_train] @ W + b, y) + 1e-3 * (W ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (X[n_train:] @ W + b).argmax(1).numpy() == y_N[n_train:]


def binding_report(states: dict[str, np.ndarray], cells: np.ndarray, counts: np.ndarray) -> dict:
    """{"objects", "chance", "<kind>_word": {"all": held-out accuracy, "by_objects": {n: accuracy}}}."""
    n_train = int(TRAIN_SHARE * len(cells))
    result: dict = {"objects": int(len(cells)), "chance": 1 / len(POSITIONS)}
    held_counts = counts[n_train:]
    for kind, X in states.items():
        ok = probe_accuracy(X, cells, n_train)
        by_count = {int(k): round(float(ok[held_counts == k].mean()), 3) for k in np.unique(held_counts)}
        result[f"{kind}_word"] = {"all": round(float(ok.mean()), 3), "by_objects": by_count}
    return result


def format_binding(report: dict) -> str:
    """One line per word kind: held-out accuracy, by object count, beside chance."""
    return "\n".join(f"{kind} word -> its phrase's cell: {report[f'{kind}_word']['all']:.3f} held-out; by objects "
                     f"in the caption {report[f'{kind}_word']['by_objects']} (chance {report['chance']:.3f})"
                     for kind in ("color", "shape"))


def measure_binding(encoder, tokenizer, world: str, captions: int = 4000, seed: int = 0) -> dict:
    """The binding probe on `captions` fresh scenes of `world` (seeded); see the module docstring."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, world=world) for _ in range(captions)]
    was_training = encoder.training
    encoder.eval()
    try:
        return binding_report(*word_states(encoder, tokenizer, scenes))
    finally:
        encoder.train(was_training)
