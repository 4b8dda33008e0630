"""The two worlds as objects: found by name once, each carrying its sampler, captions, vocabulary, oracle and
what that oracle reads; the by-name functions are the same thing."""

from __future__ import annotations

import numpy as np
import pytest

from difflens.world import CLASSIC, RICH, WORLDS, caption_world, get_world, read_image, render, world_prompts
from difflens.world.scoring import score_generations, score_images, score_scene_images


def test_worlds_are_found_by_name_once():
    assert get_world("classic") is CLASSIC and get_world("rich") is RICH and get_world(RICH) is RICH
    assert list(WORLDS) == ["classic", "rich"]
    with pytest.raises(ValueError, match="world must be one of classic, rich, got 'neon'"):
        get_world("neon")


def test_each_world_holds_its_own_scenes_and_the_rich_one_the_classic_ones():
    classic, rich = CLASSIC.scenes(40, seed=1), RICH.scenes(40, seed=1)
    assert all(CLASSIC.holds(s) and RICH.holds(s) for s in classic)
    assert all(RICH.holds(s) for s in rich) and not all(CLASSIC.holds(s) for s in rich)
    assert {caption_world(s.caption) for s in classic} == {"classic"}
    assert all(caption_world(s.caption) == ("classic" if CLASSIC.holds(s) else "rich") for s in rich)
    assert all(RICH.caption(s, 0) == RICH.caption(s) for s in rich[:3])
    assert set(CLASSIC.vocabulary()) < set(RICH.vocabulary())


def test_by_name_functions_ask_the_world():
    assert world_prompts(5, seed=2, world="rich") == RICH.prompts(5, seed=2) != CLASSIC.prompts(5, seed=2)
    image = render(RICH.scenes(1, seed=3)[0])[0]
    assert read_image(image, world="rich").as_dict(rich=True) == RICH.read(image).as_dict(rich=True)


def test_what_the_oracle_reads_decides_descriptions_and_scores():
    scene = RICH.scenes(1, seed=5, n_objects=1)[0]
    reading = RICH.read(render(scene)[0])
    assert set(RICH.describe(reading)) == {"background", "texture", "objects"}
    assert set(CLASSIC.describe(reading)) == {"background", "objects"}
    assert "pattern" in RICH.object_fields and "pattern" not in CLASSIC.object_fields
    assert CLASSIC.part_masks([scene]) is None and len(RICH.part_masks([scene])[0]) == 1

    classic = CLASSIC.scenes(6, seed=4, n_objects=1)
    images = np.stack([render(s)[0] for s in classic])
    assert score_generations(classic, images, "classic") == score_images(classic, images)  # the card's measure
    rich_scores = score_generations([scene], render(scene)[0][None], RICH)
    assert {"texture_acc", "pattern_acc", "count_acc", "part_iou"} <= set(rich_scores)
    assert list(rich_scores) == list(score_scene_images([scene], render(scene)[0][None], "rich", RICH.part_masks([scene])))
