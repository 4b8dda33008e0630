"""Step 1 of the recipe of the shipped `embedded-rich` weights: pretrain a text encoder to parse captions.

Can the embedded model's text encoder bind words to their phrase when asked to? A fresh encoder of a model's
architecture (default: the shipped rich model's) trains on a parsing objective, then `binding.measure_binding`
scores it. `difflens world pretrain-text --save FILE`; the next step starts a model from that encoder, frozen
(`world train --text-encoder-init FILE --freeze-text-encoder`).

Objective: for every word, the grid cell of the object whose phrase holds it (9 classes), "background" for the
words of the background's phrase ("white dotted background"), or "other" ("and", "with", ...), known exactly from
the scene each caption was rendered from. If the probe then reads the phrase's cell from colour and shape words in
2- and 3-object captions, the architecture can bind, and the diffusion loss alone does not teach it.

Why the background class and the second head: a diffusion model on a frozen encoder must still tell the
background's words apart. Lumped in with "and" and "with" (the first version of this objective), the frozen
encoder left the model drawing backgrounds at chance while binding every object, and with a background class it
still did. The likely cause: the parsing objective alone squeezes different words' states together (cosine 0.96
between background colour words, 0.38 in the jointly trained shipped encoder). So a second head also names every
word (`identity_weight`, 0 to switch off), and that cosine is reported (`background_word_cosine`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..world import RICH_BACKGROUNDS, sample_scene
from ..world.scene import POSITIONS
from .binding import measure_binding, phrase_start, words
from .config import ShapesModelConfig
from .pipeline import CONFIG_FILE, SHIPPED_WEIGHTS
from .text_encoder import TextEncoder, WordTokenizer

BACKGROUND, OTHER = len(POSITIONS), len(POSITIONS) + 1  # the two classes after the 9 cells
IGNORE = -100  # padding: no target


@dataclass
class TextPretrainConfig:
    """`difflens world pretrain-text`: the parsing pretraining of a text encoder (rich world)."""

    steps: int = 1500
    """optimiser steps"""
    batch: int = 64
    """captions per step"""
    lr: float = 1e-3
    """AdamW learning rate"""
    layers: int | None = None
    """encoder layers; None: the base model's"""
    width: int | None = None
    """encoder width; None: the base model's (a wider transformer can keep a narrower encoder with
    `world train --text-width`)"""
    identity_weight: float = 1.0
    """weight of the second objective, naming each word (keeps different words' states apart); 0: off"""
    seed: int = 0
    """initialisation and caption seed (the probe's captions use seed + 1)"""
    eval_captions: int = 4000
    """fresh captions the binding probe is scored on"""
    base: str | None = None
    """model folder whose config (vocabulary, caption length, heads, default layers and width) the encoder
    takes; None: the shipped rich model"""
    save: str | None = None
    """write the pretrained encoder (safetensors) here, for `world train --text-encoder-init`"""


def word_cells(scene, max_len: int) -> np.ndarray:
    """(max_len,) int: each word's object cell, BACKGROUND for the background phrase's words, OTHER for the rest,
    IGNORE for padding."""
    caption = words(scene.caption)
    out = np.full(max_len, IGNORE)
    out[: len(caption)] = OTHER
    bg = words(scene.background_phrase) + ["background"]
    start = next(i for i in range(len(caption)) if caption[i:i + len(bg)] == bg)
    out[start:start + len(bg)] = BACKGROUND
    for obj in scene.objects:
        start, phrase = phrase_start(caption, obj)
        out[start:start + len(phrase)] = POSITIONS.index(obj.position)
    return out


def background_word_cosine(encoder: TextEncoder, tokenizer: WordTokenizer) -> float:
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


def pretrain_text_encoder(cfg: TextPretrainConfig = TextPretrainConfig(), log=print) -> tuple[TextEncoder, dict]:
    """Train a fresh encoder on the parsing objective; returns (encoder in eval mode, result): the settings,
    training seconds, `background_word_cosine` and the binding probe's accuracies (`binding.binding_report`).
    Writes the encoder to `cfg.save` when set. `log` gets a progress line every 250 steps."""
    base_dir = Path(cfg.base) if cfg.base else SHIPPED_WEIGHTS["rich"]
    base = ShapesModelConfig.read(base_dir / CONFIG_FILE)
    layers, width = cfg.layers or base.text_layers, cfg.width or base.text_encoder_width
    torch.manual_seed(cfg.seed)
    tokenizer = WordTokenizer(base.vocab, base.max_text_len)
    encoder = TextEncoder(len(base.vocab) + 1, base.max_text_len, width, layers, base.text_heads)
    parse_head = torch.nn.Linear(width, OTHER + 1)
    word_head = torch.nn.Linear(width, len(base.vocab) + 1)
    opt = torch.optim.AdamW([*encoder.parameters(), *parse_head.parameters(), *word_head.parameters()], lr=cfg.lr)
    rng = np.random.default_rng(cfg.seed)
    start = time.time()
    for step in range(cfg.steps):
        scenes = [sample_scene(rng, world="rich") for _ in range(cfg.batch)]
        ids_BT = tokenizer([s.caption for s in scenes])
        states_BTD, _ = encoder(ids_BT)
        target_BT = torch.tensor(np.stack([word_cells(s, base.max_text_len) for s in scenes]))
        loss = torch.nn.functional.cross_entropy(parse_head(states_BTD).flatten(0, 1), target_BT.flatten(),
                                                 ignore_index=IGNORE)
        if cfg.identity_weight:
            named_BT = torch.where(target_BT >= 0, ids_BT, torch.full_like(ids_BT, IGNORE))
            loss = loss + cfg.identity_weight * torch.nn.functional.cross_entropy(
                word_head(states_BTD).flatten(0, 1), named_BT.flatten(), ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == cfg.steps - 1:
            log(f"step {step}: parsing loss {loss.item():.4f}")
    train_s = time.time() - start
    encoder.eval()
    if cfg.save:
        from difflens.atomic import atomic_save_tensors

        atomic_save_tensors(cfg.save, encoder.state_dict())
        log(f"encoder written to {cfg.save}")
    result = {**{k: v for k, v in asdict(cfg).items() if k != "save"}, "layers": layers, "width": width,
              "train_s": round(train_s, 1), "background_word_cosine": round(background_word_cosine(encoder, tokenizer), 3),
              **measure_binding(encoder, tokenizer, "rich", cfg.eval_captions, seed=cfg.seed + 1)}
    return encoder, result
