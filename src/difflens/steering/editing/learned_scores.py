"""RIEBench's learned scores of an edit against the reference generations, when their weights can be loaded:

* LPIPS (the `lpips` package, AlexNet features by default) of the edited image against the source reference and
  against the target reference (lower: more alike);
* CLIP (a `transformers` CLIPModel / CLIPProcessor folder given by the user) cosine similarity of the edited
  image's embedding with the source and target references' embeddings, and with the target and source prompts'.

`load_learned_scorers` returns the scorers that loaded and one line per scorer saying what it is, or what is
missing ("LPIPS: not scored (pip install lpips and its weights are needed)"); nothing here downloads silently
except what the `lpips` package itself fetches on first use.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

LPIPS_MISSING = "LPIPS: not scored (pip install lpips and its weights are needed)"
CLIP_MISSING = "CLIP: not scored (give --clip-model PATH, a transformers CLIP model folder)"
LEARNED_SCORES = ("lpips_source", "lpips_target", "clip_image_source", "clip_image_target", "clip_text_target",
                  "clip_text_source")


def _unit(features) -> torch.Tensor:
    """(B, E) unit-norm embeddings from CLIP's get_*_features (a tensor, or in transformers 5 an output whose
    pooler_output is the projected embedding)."""
    e = features if isinstance(features, torch.Tensor) else features.pooler_output
    e = e.float().cpu()
    return e / e.norm(dim=-1, keepdim=True)


class ClipScorer:
    """CLIP image / text cosine similarities with a transformers CLIPModel and its processor (from one folder)."""

    def __init__(self, path: str, device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        self.path, self.device = path, device
        self.model = CLIPModel.from_pretrained(path).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(path)
        self._references: dict[tuple, torch.Tensor] = {}  # the last few reference embeddings, by content

    REFERENCES_KEPT = 8
    """reference embeddings remembered: every method and setting of a category scores against the same ones"""

    def _reference(self, key: tuple, embed) -> torch.Tensor:
        """``embed()``, computed once per `key` (the content of the reference images or prompts)."""
        if key not in self._references:
            if len(self._references) >= self.REFERENCES_KEPT:
                self._references.pop(next(iter(self._references)))
            self._references[key] = embed()
        return self._references[key]

    def _reference_images(self, images_BHWC) -> torch.Tensor:
        x = np.ascontiguousarray(images_BHWC)
        key = ("images", x.shape, str(x.dtype), hashlib.blake2b(x.tobytes(), digest_size=16).digest())
        return self._reference(key, lambda: self.image_embeddings(x))

    def _reference_texts(self, texts) -> torch.Tensor:
        return self._reference(("texts", *texts), lambda: self.text_embeddings(list(texts)))

    @torch.no_grad()
    def image_embeddings(self, images_BHWC: np.ndarray) -> torch.Tensor:
        """(B, E) unit-norm image embeddings of 8-bit RGB images."""
        inputs = self.processor(images=list(images_BHWC), return_tensors="pt").to(self.device)
        return _unit(self.model.get_image_features(**inputs))

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """(B, E) unit-norm text embeddings."""
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True).to(self.device)
        return _unit(self.model.get_text_features(**inputs))

    def scores(self, edited_BHWC, source_BHWC, target_BHWC, source_texts, target_texts) -> list[dict]:
        """Per image: clip_image_source / _target (edited vs reference), clip_text_target / _source. The references
        and prompts are embedded once per category, not once per method and setting."""
        e = self.image_embeddings(edited_BHWC)
        s, t = self._reference_images(source_BHWC), self._reference_images(target_BHWC)
        ts, tt = self._reference_texts(source_texts), self._reference_texts(target_texts)
        cols = {"clip_image_source": (e * s).sum(-1), "clip_image_target": (e * t).sum(-1),
                "clip_text_target": (e * tt).sum(-1), "clip_text_source": (e * ts).sum(-1)}
        return [{k: float(v[i]) for k, v in cols.items()} for i in range(len(e))]


class LpipsScorer:
    """LPIPS distance with the `lpips` package's network (images scaled to [-1, 1])."""

    def __init__(self, net: str = "alex", device: str = "cpu"):
        import lpips

        self.net, self.device = net, device
        self.model = lpips.LPIPS(net=net, verbose=False).to(device).eval()

    @torch.no_grad()
    def distance(self, a_BHWC: np.ndarray, b_BHWC: np.ndarray) -> torch.Tensor:
        def t(x):
            return torch.from_numpy(np.asarray(x, np.float32)).permute(0, 3, 1, 2).to(self.device) / 127.5 - 1

        return self.model(t(a_BHWC), t(b_BHWC)).reshape(-1).float().cpu()

    def scores(self, edited_BHWC, source_BHWC, target_BHWC, source_texts=None, target_texts=None) -> list[dict]:
        """Per image: lpips_source / lpips_target (edited vs each reference)."""
        s, t = self.distance(edited_BHWC, source_BHWC), self.distance(edited_BHWC, target_BHWC)
        return [{"lpips_source": float(s[i]), "lpips_target": float(t[i])} for i in range(len(s))]


@dataclass
class LearnedScorers:
    """The learned scorers that loaded, and a line per scorer for tables and results (what scored, or why not)."""

    scorers: list = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def scores(self, edited_BHWC, source_BHWC, target_BHWC, source_texts, target_texts) -> list[dict]:
        """Per image: every loaded scorer's columns (an empty dict each when none loaded)."""
        out = [{} for _ in range(len(edited_BHWC))]
        for s in self.scorers:
            for row, got in zip(out, s.scores(edited_BHWC, source_BHWC, target_BHWC, source_texts, target_texts)):
                row.update(got)
        return out


def load_learned_scorers(clip_model: str | None = None, lpips_net: str | None = "alex",
                         device: str = "cpu") -> LearnedScorers:
    """CLIP from `clip_model` (None: not scored) and LPIPS with `lpips_net` (None: not scored) where their code and
    weights load; a line for each saying which produced the scores or what is missing."""
    found = LearnedScorers()
    if lpips_net is None:
        found.lines.append("LPIPS: not scored (off)")
    else:
        try:
            found.scorers.append(LpipsScorer(lpips_net, device))
            found.lines.append(f"LPIPS: lpips package, {lpips_net} network (lower: closer)")
        except ImportError:
            found.lines.append(LPIPS_MISSING)
        except Exception as err:  # the package is there but its weights are not (offline, no cache)
            found.lines.append(f"{LPIPS_MISSING}: {type(err).__name__}: {err}")
    if clip_model is None:
        found.lines.append(CLIP_MISSING)
    else:
        try:
            found.scorers.append(ClipScorer(clip_model, device))
        except ImportError as err:
            raise ValueError(f"--clip-model needs the transformers package ({err})") from None
        except OSError as err:
            raise ValueError(f"--clip-model {clip_model}: no CLIP model and processor could be loaded there ({err})") \
                from None
        found.lines.append(f"CLIP: {clip_model} (cosine similarity, higher: closer)")
    return found
