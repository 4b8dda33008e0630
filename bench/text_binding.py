"""Does an embedded model's text encoder bind each object's words to their phrase? A linear probe reads, from the
text encoder's state of an object's colour word and of its shape word, the grid cell its phrase names.

    python bench/text_binding.py [--weights DIR] [--captions 4000] [--world rich]

Captions are sampled scenes of the model's world (1-3 objects in the rich world); the probe (multinomial logistic
regression, L-BFGS, small L2, standardised states) trains on the first 75 % of the objects and is scored on the rest,
by object count. Chance is 1/9. A text encoder that binds reads the cell from any word of the phrase, in scenes of
one object and of three alike; one that only knows which cells the caption names cannot beat about 1/n on an
n-object caption. Last line is JSON.
"""

import argparse
import json
import re

import numpy as np
import torch

from difflens.embedded.pipeline import SHIPPED_WEIGHTS, ShapesPipeline
from difflens.world import sample_scene
from difflens.world.scene import POSITIONS


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def phrase_start(caption_words: list[str], obj) -> tuple[int, list[str]]:
    """(index of the first word of `obj`'s phrase in the caption's words, the phrase's words)."""
    phrase = words(obj.phrase())
    return next(i for i in range(len(caption_words)) if caption_words[i:i + len(phrase)] == phrase), phrase


def word_states(encoder, tokenizer, scenes) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """({"color"|"shape": states (N, D)}, cell index (N,), object count of its scene (N,)), one row per object."""
    with torch.no_grad():
        states_BTD, _ = encoder(tokenizer([s.caption for s in scenes]))
    rows = {"color": [], "shape": []}
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
    """Held-out correctness (bool per row after n_train) of a 9-way logistic probe."""
    X = torch.tensor(X_ND)
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
        return ((X[n_train:] @ W + b).argmax(1).numpy() == y_N[n_train:])


def binding_report(states: dict[str, np.ndarray], cells: np.ndarray, counts: np.ndarray) -> dict:
    """Probe accuracy per word kind, overall and by the caption's object count (train on the first 75 %); prints it."""
    n_train = int(0.75 * len(cells))
    result = {"objects": int(len(cells)), "chance": 1 / len(POSITIONS)}
    for kind, X in states.items():
        ok = probe_accuracy(X, cells, n_train)
        held_counts = counts[n_train:]
        by_count = {int(k): round(float(ok[held_counts == k].mean()), 3) for k in np.unique(held_counts)}
        result[f"{kind}_word"] = {"all": round(float(ok.mean()), 3), "by_objects": by_count}
        print(f"{kind} word -> its phrase's cell: {ok.mean():.3f} held-out; by objects in the caption "
              f"{by_count} (chance {1 / len(POSITIONS):.3f})")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(SHIPPED_WEIGHTS["rich"]))
    ap.add_argument("--captions", type=int, default=4000)
    ap.add_argument("--world", default=None, help="classic or rich (default: the model's)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    pipe = ShapesPipeline.from_pretrained(args.weights)
    world = args.world or pipe.config.world
    rng = np.random.default_rng(args.seed)
    scenes = [sample_scene(rng, world=world) for _ in range(args.captions)]
    result = {"weights": args.weights, "world": world,
              **binding_report(*word_states(pipe.text_encoder, pipe.tokenizer, scenes))}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
