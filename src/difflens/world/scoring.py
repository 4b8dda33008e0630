"""Score images against the scenes their prompts describe, with the oracle as judge."""

from __future__ import annotations

import numpy as np

from .oracle import read_image
from .scene import Scene

ATTRIBUTES = ("color", "shape", "size", "position")


def score_images(scenes: list[Scene], images_BHWC: np.ndarray) -> dict[str, float]:
    """Per-attribute accuracy of single-object generations.

    For each image the oracle's largest detected object is compared with the prompt's object (an image
    with no object scores wrong on every object attribute). Also reports background accuracy and the
    share of images where exactly one object was found.
    """
    if len(scenes) != len(images_BHWC):
        raise ValueError(f"{len(scenes)} scenes but {len(images_BHWC)} images")
    if any(len(s.objects) != 1 for s in scenes):
        raise ValueError("score_images scores single-object scenes only")
    hits = {f"{a}_acc": 0 for a in ATTRIBUTES}
    hits.update(background_acc=0, one_object_acc=0)
    for scene, image in zip(scenes, images_BHWC):
        reading = read_image(image)
        hits["background_acc"] += reading.background == scene.background
        hits["one_object_acc"] += len(reading.objects) == 1
        if not reading.objects:
            continue
        found = max(reading.objects, key=lambda o: o.area)
        for a in ATTRIBUTES:
            hits[f"{a}_acc"] += getattr(found, a) == getattr(scene.objects[0], a)
    return {k: v / len(scenes) for k, v in hits.items()}
