"""Word-level tokenizer and the small text encoder trained jointly with the transformer."""

from __future__ import annotations

import re

import torch
from torch import nn

PAD = "<pad>"


class WordTokenizer:
    """Lower-cases, splits on spaces and punctuation, maps each word to an id; unknown words are an error."""

    def __init__(self, vocab: list[str], max_len: int):
        self.words = [PAD, *vocab]
        self.index = {w: i for i, w in enumerate(self.words)}
        self.max_len = max_len

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """ids_BT (int64), right-padded with 0."""
        ids = torch.zeros(len(prompts), self.max_len, dtype=torch.long)
        for b, prompt in enumerate(prompts):
            words = re.findall(r"[a-z]+", prompt.lower())
            unknown = [w for w in words if w not in self.index]
            if unknown:
                raise ValueError(
                    f"unknown word(s) {unknown} in prompt {prompt!r}; the embedded model knows: {' '.join(self.words[1:])}"
                )
            if not words:
                raise ValueError(f"empty prompt {prompt!r}")
            if len(words) > self.max_len:
                raise ValueError(f"prompt {prompt!r} has {len(words)} words, more than the model's {self.max_len}")
            ids[b, : len(words)] = torch.tensor([self.index[w] for w in words])
        return ids

    def unconditional(self, n: int) -> torch.Tensor:
        """ids_BT of the empty prompt (the unconditional input of classifier-free guidance)."""
        return torch.zeros(n, self.max_len, dtype=torch.long)


class TextEncoder(nn.Module):
    """Embeddings + a small pre-norm transformer encoder -> per-token states and a pooled vector (FLUX's two inputs)."""

    def __init__(self, vocab_size: int, max_len: int, width: int, layers: int, heads: int):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.randn(max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.pool = nn.Linear(width, width)

    def forward(self, ids_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(states_BTD, pooled_BD). Padding is masked in attention and in the mean pool.

        Position 0 is never masked: all-padding ids (`WordTokenizer.unconditional`) are the empty prompt,
        which classifier-free guidance uses; every real prompt has a word there.
        """
        pad_BT = ids_BT == 0
        pad_BT[:, 0] = False
        h = self.token_embedding(ids_BT) + self.position_embedding[: ids_BT.shape[1]]
        h = self.norm(self.encoder(h, src_key_padding_mask=pad_BT))
        keep = (~pad_BT).unsqueeze(-1).to(h.dtype)
        pooled = self.pool((h * keep).sum(1) / keep.sum(1).clamp(min=1))
        return h, pooled
