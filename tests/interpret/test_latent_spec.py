"""The one feature-spec parser (all | N | 1,5,9) that autointerp, `browse --export` and the demo share."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difflens.interpret.latent_spec import latents_from_spec

ALIVE = [1, 2, 4, 7, 8, 11, 13]  # of 16 latents


def test_all_n_and_lists_have_one_meaning():
    assert latents_from_spec("all", ALIVE, 16) == ALIVE
    three = latents_from_spec("3", ALIVE, 16, seed=5)
    assert len(three) == 3 and set(three) <= set(ALIVE) and three == sorted(three)
    assert three == latents_from_spec(" 3 ", ALIVE, 16, seed=5)  # seeded
    assert {tuple(latents_from_spec("3", ALIVE, 16, seed=s)) for s in range(8)} != {tuple(three)}  # random, not top-N
    assert latents_from_spec("99", ALIVE, 16) == ALIVE  # more than are alive: all of them
    assert latents_from_spec("9,0,9,15", ALIVE, 16) == [9, 0, 15]  # exactly these (dead ones too), in order, once
    assert latents_from_spec("=7", ALIVE, 16) == latents_from_spec("7,", ALIVE, 16) == [7]  # one latent
    assert latents_from_spec("4", [], 16) == []


def test_the_random_draw_is_the_one_autointerp_always_made():
    """The demo's autointerp sample and card grid must not change: N latents by default_rng(seed).choice, sorted."""
    expected = sorted(np.random.default_rng(3).choice(ALIVE, size=4, replace=False).tolist())
    assert latents_from_spec("4", ALIVE, 16, seed=3) == expected


@pytest.mark.parametrize("spec", ["0", "-2", "x", "1,x", "", "=", "2.5"])
def test_bad_specs_say_what_the_flag_takes(spec):
    with pytest.raises(ValueError, match=r"--export-features takes all .* N .* 1,5,9"):
        latents_from_spec(spec, ALIVE, 16, option="--export-features")


def test_listed_latents_must_exist():
    with pytest.raises(ValueError, match=r"latents \[16, -1\] do not exist: .* 0\.\.15"):
        latents_from_spec("3,16,-1", ALIVE, 16)


def test_autointerp_and_the_export_choose_the_same_latents():
    from types import SimpleNamespace

    from difflens.browser.export import _choose
    from difflens.interpret.autointerp import choose_latents, select_features

    frequency = np.zeros(16)
    frequency[ALIVE] = np.linspace(0.9, 0.1, len(ALIVE))
    index = SimpleNamespace(alive=lambda: torch.from_numpy(frequency > 0), num_latents=16)
    run_dictionary = SimpleNamespace(table=SimpleNamespace(frequency=frequency, latent=np.arange(16)), name="d")
    for spec in ("all", "3", "5,1"):
        assert choose_latents(index, spec) == _choose(run_dictionary, spec) == latents_from_spec(spec, ALIVE, 16)
    assert select_features is choose_latents  # the old name still works
