"""Score images against the scenes their prompts describe, with the oracle as judge."""

from __future__ import annotations

import numpy as np

from .scene import Scene
from .worlds import CLASSIC, World, get_world

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
        reading = CLASSIC.read(image)
        hits["background_acc"] += reading.background == scene.background
        hits["one_object_acc"] += len(reading.objects) == 1
        if not reading.objects:
            continue
        found = max(reading.objects, key=lambda o: o.area)
        for a in ATTRIBUTES:
            hits[f"{a}_acc"] += getattr(found, a) == getattr(scene.objects[0], a)
    return {k: v / len(scenes) for k, v in hits.items()}


def score_scene_images(scenes: list[Scene], images_BHWC: np.ndarray, world: str | World = "rich",
                       part_masks: list[list[dict[str, np.ndarray]]] | None = None) -> dict[str, float]:
    """Per-attribute accuracy of images of scenes with any number of objects, read with `world`'s oracle.

    Each of a scene's objects is matched to the object the oracle finds in its grid cell; `position_acc` is the
    share of objects so found, and each object attribute counts as wrong for an object not found; `bound_acc` is
    the share of objects found with every named attribute right (attributes bound to the right object); the object
    attributes are those the world's oracle reads (`World.object_fields`). Per image: `count_acc` (exactly as
    many objects as the scene has) and each scene field the oracle reads (`background_acc`; in the rich world
    `texture_acc` too). With `part_masks` (per scene, per object, {part: bool (H, W)}, as `render_parts` gives),
    `part_iou` is the mean IoU of each composite object's rendered parts with the parts read, over composite
    objects whose shape was read right.
    """
    if len(scenes) != len(images_BHWC):
        raise ValueError(f"{len(scenes)} scenes but {len(images_BHWC)} images")
    world = get_world(world)
    attributes = world.object_fields
    hits = {f"{a}_acc": 0 for a in (*attributes, "position", "bound")}
    per_image = dict.fromkeys(["background_acc", "count_acc", *(f"{f}_acc" for f in world.scene_fields)], 0)
    n_objects, ious = 0, []
    for i, (scene, image) in enumerate(zip(scenes, images_BHWC)):
        reading = world.read(image)
        for f in world.scene_fields:
            per_image[f"{f}_acc"] += getattr(reading, f) == getattr(scene, f)
        per_image["count_acc"] += len(reading.objects) == len(scene.objects)
        by_cell = {}
        for o in reading.objects:  # the largest object read in a cell stands for it
            if o.position not in by_cell or o.area > by_cell[o.position].area:
                by_cell[o.position] = o
        for j, obj in enumerate(scene.objects):
            n_objects += 1
            found = by_cell.get(obj.position)
            if found is None:
                continue
            hits["position_acc"] += 1
            right = [getattr(found, a) == getattr(obj, a) for a in attributes]
            for a, ok in zip(attributes, right):
                hits[f"{a}_acc"] += ok
            hits["bound_acc"] += all(right)
            truth_parts = part_masks[i][j] if part_masks is not None else {}
            if truth_parts and found.shape == obj.shape:
                for name, m in truth_parts.items():
                    got = found.parts.get(name, np.zeros_like(m))
                    ious.append((m & got).sum() / max((m | got).sum(), 1))
    out = {k: v / max(n_objects, 1) for k, v in hits.items()}
    out.update({k: v / len(scenes) for k, v in per_image.items()})
    if part_masks is not None:
        out["part_iou"] = float(np.mean(ious)) if ious else float("nan")
    return out


def score_rich_images(scenes: list[Scene], images_BHWC: np.ndarray,
                      part_masks: list[list[dict[str, np.ndarray]]] | None = None) -> dict[str, float]:
    """`score_scene_images` in the rich world."""
    return score_scene_images(scenes, images_BHWC, "rich", part_masks)


def score_generations(scenes: list[Scene], images_BHWC: np.ndarray, world: str | World) -> dict[str, float]:
    """Oracle scores of a model's images of `scenes`, the way `world` scores them: single-object scenes of a world
    scored on the largest object read (`World.largest_object_score`: the classic model card's measure) by
    `score_images`, everything else by `score_scene_images`, with part IoU where the world's oracle reads parts."""
    world = get_world(world)
    if world.largest_object_score and all(len(s.objects) == 1 for s in scenes):
        return score_images(scenes, images_BHWC)
    return score_scene_images(scenes, images_BHWC, world, world.part_masks(scenes))
