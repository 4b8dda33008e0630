"""Can the embedded model's text encoder bind words to their phrase when asked to? Pretrain a fresh encoder (the
shipped rich model's architecture) on a parsing objective, then score it with `text_binding`'s probe.

    python bench/text_parse_pretrain.py [--steps 1500] [--batch 64] [--layers 4] [--identity-weight 1]
                                        [--save encoder.safetensors]

Objective: for every word, the grid cell of the object whose phrase holds it (9 classes), "background" for the
words of the background's phrase ("white dotted background"), or "other" ("and", "with", ...), known exactly from
the scene each caption was rendered from. If the probe then reads the phrase's cell from colour and shape words in
2- and 3-object captions, the architecture can bind and the diffusion loss alone does not teach it
(`bench/text_binding.py`); a next model starts from such an encoder, frozen (`world train --text-encoder-init
--freeze-text-encoder`).

Why the background class and the second head: a diffusion model on a frozen encoder must still tell the
background's words apart. Lumped in with "and" and "with" (the first version of this objective), the frozen
encoder left the model drawing backgrounds at chance while binding every object, and with a background class it
still did. The likely cause: the parsing objective alone squeezes different words' states together (cosine 0.96
between background colour words, 0.38 in the jointly trained shipped encoder). So a second head also names every
word (`--identity-weight`, 0 to switch off), and that cosine is reported.

Last line is JSON.
"""

import argparse
import json
import time

import numpy as np
import torch

from difflens.embedded import ShapesModelConfig
from difflens.embedded.pipeline import SHIPPED_WEIGHTS
from difflens.embedded.text_encoder import TextEncoder, WordTokenizer
from difflens.world import RICH_BACKGROUNDS, sample_scene
from difflens.world.scene import POSITIONS
from text_binding import binding_report, phrase_start, word_states, words  # bench/ is on sys.path when run as a script

BACKGROUND, OTHER = len(POSITIONS), len(POSITIONS) + 1


def word_cells(scene, max_len: int) -> np.ndarray:
    """(max_len,) int: each word's object cell, BACKGROUND for the background phrase's words, OTHER for the rest,
    -100 for padding."""
    caption = words(scene.caption)
    out = np.full(max_len, -100)
    out[: len(caption)] = OTHER
    bg = words(scene.background_phrase) + ["background"]
    start = next(i for i in range(len(caption)) if caption[i:i + len(bg)] == bg)
    out[start:start + len(bg)] = BACKGROUND
    for obj in scene.objects:
        start, phrase = phrase_start(caption, obj)
        out[start:start + len(phrase)] = POSITIONS.index(obj.position)
    return out


def background_word_cosine(encoder, tokenizer) -> float:
    """Mean cosine between the states of the background colour word in captions that differ only in it: near 1, a
    model reading this encoder can hardly tell the backgrounds apart."""
    colours = list(RICH_BACKGROUNDS)
    captions = [f"a large red circle in the center on a {c} background" for c in colours]
    with torch.no_grad():
        states_BTD, _ = encoder(tokenizer(captions))
    at = [words(c).index(colour) for c, colour in zip(captions, colours)]
    V = torch.nn.functional.normalize(states_BTD[torch.arange(len(colours)), at], dim=-1)
    cos = V @ V.T
    return float(cos[~torch.eye(len(colours), dtype=torch.bool)].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--layers", type=int, default=None, help="encoder layers (default: the shipped rich model's)")
    ap.add_argument("--width", type=int, default=None,
                    help="encoder width (default: the shipped rich model's); a wider transformer can keep a narrower "
                         "encoder with `world train --text-width`")
    ap.add_argument("--identity-weight", type=float, default=1.0,
                    help="weight of the second objective, naming each word (keeps different words' states apart)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", default=None,
                    help="write the pretrained encoder (safetensors) here, for `world train --text-encoder-init`")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    cfg = ShapesModelConfig.from_json((SHIPPED_WEIGHTS["rich"] / "config.json").read_text())
    layers = args.layers or cfg.text_layers
    tokenizer = WordTokenizer(cfg.vocab, cfg.max_text_len)
    width = args.width or cfg.text_encoder_width
    encoder = TextEncoder(len(cfg.vocab) + 1, cfg.max_text_len, width, layers, cfg.text_heads)
    head = torch.nn.Linear(width, OTHER + 1)
    word_head = torch.nn.Linear(width, len(cfg.vocab) + 1)
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters(), *word_head.parameters()], lr=1e-3)
    rng = np.random.default_rng(args.seed)
    start = time.time()
    for step in range(args.steps):
        scenes = [sample_scene(rng, world="rich") for _ in range(args.batch)]
        ids = tokenizer([s.caption for s in scenes])
        states, _ = encoder(ids)
        target = torch.tensor(np.stack([word_cells(s, cfg.max_text_len) for s in scenes]))
        loss = torch.nn.functional.cross_entropy(head(states).flatten(0, 1), target.flatten(), ignore_index=-100)
        if args.identity_weight:
            named = torch.where(target >= 0, ids, torch.full_like(ids, -100))
            loss = loss + args.identity_weight * torch.nn.functional.cross_entropy(
                word_head(states).flatten(0, 1), named.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step}: parsing loss {loss.item():.4f}", flush=True)
    train_s = time.time() - start
    if args.save:
        from safetensors.torch import save

        from difflens.atomic import atomic_write_bytes

        atomic_write_bytes(args.save, save({k: v.contiguous() for k, v in encoder.state_dict().items()}))
        print(f"encoder written to {args.save}")

    # the probe of bench/text_binding.py on fresh captions (another seed)
    eval_rng = np.random.default_rng(args.seed + 1)
    scenes = [sample_scene(eval_rng, world="rich") for _ in range(4000)]
    encoder.eval()
    cosine = round(background_word_cosine(encoder, tokenizer), 3)
    result = {"steps": args.steps, "layers": layers, "identity_weight": args.identity_weight,
              "train_s": round(train_s, 1), "background_word_cosine": cosine,
              **binding_report(*word_states(encoder, tokenizer, scenes))}
    print(f"mean cosine between background colour words' states: {cosine}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
