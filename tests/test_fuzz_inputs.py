"""Fuzzed user inputs: every parser a user feeds either accepts the input (and returns a well-formed value) or
refuses it with the project's error type (ValueError, or argparse's refusal) and a message -- never another
exception (TypeError, IndexError, KeyError, OverflowError, ...).

Parsers covered: captions (world.caption), feature specs (interpret.latent_spec), step windows (steering.edits),
edits (steering.edits.Edit.check), regions (steering.regions), site names and patterns (adapters, capture),
capture step lists, and the type converter of every flag of every `difflens` command (configs). The browser's
query parameters, routes and steering JSON are fuzzed in test_fuzz_browser.py.

Hypothesis runs derandomized (the same examples on every run, no example database), so CI is deterministic.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def refused_with_message(err: BaseException) -> None:
    """A refusal must say something: a non-empty message."""
    assert str(err).strip(), f"{type(err).__name__} without a message"


def words_of(vocabulary, extra=()) -> st.SearchStrategy[str]:
    """Sentences drawn from a vocabulary (so fuzzing reaches the grammar, not only the unknown-word check)."""
    return st.lists(st.sampled_from(sorted(vocabulary) + list(extra)), max_size=24).map(" ".join)


NUMBERISH = st.one_of(st.integers(), st.integers(-3, 20), st.floats(allow_nan=True, allow_infinity=True),
                      st.floats(0, 1), st.booleans(), st.text(max_size=6), st.none(),
                      st.integers(10**300, 10**310))
"""Values a Python caller or a JSON body may put where a number belongs."""


# ---------------------------------------------------------------------------------------------------- captions
def _caption_texts():
    from difflens.world.worlds import RICH

    glue = ["a", "on", "background", "with", "and", "picture", "of", ",", "A", "Background"]
    return st.one_of(st.text(max_size=60), words_of(RICH.vocabulary(), glue))


@FUZZ
@given(text=_caption_texts())
def test_caption_parser_accepts_or_refuses(text):
    from difflens.world.caption import caption_world, parse_caption
    from difflens.world.worlds import RICH

    try:
        scene = parse_caption(text)
    except ValueError as err:
        refused_with_message(err)
        return
    assert scene.caption == text and 1 <= len(scene.objects) <= 3
    assert RICH.holds(scene), scene  # every attribute is one the widest world knows
    assert caption_world(text) in ("classic", "rich")
    assert parse_caption(RICH.caption(scene)).objects == scene.objects  # its own caption reads back the same


# ---------------------------------------------------------------------------------------------- feature specs
@FUZZ
@given(spec=st.one_of(st.text(max_size=20), st.from_regex(r"=?-?\d{0,4}(,\s*-?\d{0,4}){0,4}", fullmatch=True),
                      st.integers(-5, 10**20), st.just("all")),
       alive=st.lists(st.integers(0, 31), max_size=32, unique=True).map(sorted))
def test_feature_spec_accepts_or_refuses(spec, alive):
    from difflens.interpret.latent_spec import latents_from_spec

    try:
        latents = latents_from_spec(spec, alive, 32, seed=0)
    except ValueError as err:
        refused_with_message(err)
        return
    assert all(isinstance(i, int) and 0 <= i < 32 for i in latents)
    assert len(set(latents)) == len(latents)


# ---------------------------------------------------------------------------------------------- step windows
STEP_SPECS = st.one_of(
    st.text(max_size=12),
    st.from_regex(r"\s?-?[0-9.]{0,4}\s?:\s?-?[0-9.e]{0,4}|all|[0-9, ]{0,8}", fullmatch=True),
    st.tuples(NUMBERISH, NUMBERISH), st.tuples(NUMBERISH), st.lists(NUMBERISH, max_size=4), st.none(), NUMBERISH)


@FUZZ
@given(steps=STEP_SPECS, num_steps=st.integers(1, 12))
def test_step_window_accepts_or_refuses(steps, num_steps):
    from difflens.steering.edits import parse_steps

    try:
        picked = parse_steps(steps, num_steps)
    except ValueError as err:
        refused_with_message(err)
        return
    assert picked and picked == sorted(set(picked)) and all(type(s) is int and 0 <= s < num_steps for s in picked)


@FUZZ
@given(latent=NUMBERISH, mode=st.one_of(st.sampled_from(["add", "clamp", "scale", "ablate"]), st.text(max_size=6)),
       strength=NUMBERISH, unit=st.one_of(st.sampled_from(["typical", "norm", "raw"]), NUMBERISH),
       guidance=st.one_of(st.sampled_from(["both", "cond", "contrast"]), st.text(max_size=5)))
def test_edit_check_accepts_or_refuses(latent, mode, strength, unit, guidance):
    from difflens.steering.edits import Edit

    edit = Edit(latent=latent, mode=mode, strength=strength, unit=unit, guidance=guidance)
    try:
        edit.check(16)
    except ValueError as err:
        refused_with_message(err)
        return
    assert 0 <= edit.latent < 16 and math.isfinite(float(edit.strength))


# ---------------------------------------------------------------------------------------------------- regions
REGION_SPECS = st.one_of(
    st.text(max_size=16),
    st.from_regex(r"(box:)?[-0-9.e]{0,4}(,[-0-9.e]{0,4}){0,4}", fullmatch=True),
    st.from_regex(r"cells:[-0-9]{0,2}(,[-0-9]{0,2})?(;[-0-9]{0,2}(,[-0-9]{0,2})?){0,3};?", fullmatch=True),
    st.from_regex(r"\s?object:\s?-?[0-9a]{0,3}\s?", fullmatch=True),
    st.sampled_from(["all", "active", "background", " background ", "", "box:"]),
    st.tuples(NUMBERISH, NUMBERISH, NUMBERISH, NUMBERISH), st.lists(NUMBERISH, max_size=5), NUMBERISH,
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@FUZZ
@given(spec=REGION_SPECS, grid=st.one_of(st.none(), st.tuples(st.integers(1, 6), st.integers(1, 6))))
def test_region_accepts_or_refuses(spec, grid):
    from difflens.steering.regions import ACTIVE, BACKGROUND, object_index, parse_region

    try:
        region = parse_region(spec, grid)
    except ValueError as err:
        refused_with_message(err)
        return
    if region is None or region == ACTIVE:
        return
    if isinstance(region, str):
        assert region == BACKGROUND or object_index(region) >= 0
        return
    assert region.shape == grid and np.isfinite(region).all() and region.min() >= 0 and region.max() <= 1
    assert region.max() > 0  # a region that selects no token is refused, not accepted as a silent no-op


@FUZZ
@given(mask=st.one_of(
    st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=8),
             min_size=1, max_size=8),
    st.lists(st.lists(st.integers(-300, 300), min_size=3, max_size=3), min_size=1, max_size=8)),
    grid=st.tuples(st.integers(1, 4), st.integers(1, 4)))
def test_mask_region_accepts_or_refuses(mask, grid):
    from difflens.steering.regions import parse_region

    try:
        spec = np.asarray(mask, dtype=np.float32)
    except ValueError:  # ragged: not an image at all
        return
    try:
        region = parse_region(spec, grid)
    except ValueError as err:
        refused_with_message(err)
        return
    if isinstance(region, np.ndarray):
        assert region.shape == grid and np.isfinite(region).all() and 0 <= region.min() <= region.max() <= 1


# ------------------------------------------------------------------------------------------- sites and patterns
SITE_NAMES = st.one_of(
    st.text(max_size=24),
    st.from_regex(r"(double|single|unet)\.[0-9a-z*?\[\]]{0,3}\.(img|txt|\*)\.(out|update|mlp|\*)\n?", fullmatch=True),
    st.from_regex(r"[a-z_.*?\[\]!0-9-]{0,20}", fullmatch=True))


@FUZZ
@given(name=SITE_NAMES)
def test_flux_site_name_accepts_or_refuses(name):
    from difflens.adapters.flux_hooks import parse_site

    try:
        kind, block, stream, what = parse_site(name)
    except ValueError as err:
        refused_with_message(err)
        return
    assert f"{kind}.{block}.{stream}.{what}" == name  # only names written exactly in the scheme are accepted


@pytest.fixture(scope="module")
def tiny_adapter():
    from tiny_models import adapter

    return adapter("embedded-tiny")


@FUZZ
@given(patterns=st.lists(SITE_NAMES, min_size=1, max_size=3))
def test_site_patterns_accept_or_refuse(tiny_adapter, patterns):
    from difflens.capture.runner import resolve_sites

    names = {s.name for s in tiny_adapter.sites(tiny_adapter.default_resolution)}
    try:
        sites = resolve_sites(tiny_adapter, patterns, tiny_adapter.default_resolution)
    except ValueError as err:
        refused_with_message(err)
        return
    assert sites and all(s.name in names for s in sites) and len({s.name for s in sites}) == len(sites)


# -------------------------------------------------------------------------------------- capture's step lists
@FUZZ
@given(text=st.one_of(st.text(max_size=10), st.from_regex(r"all|[-0-9, ]{0,10}|ALL|al", fullmatch=True)),
       num_steps=st.integers(1, 10))
def test_capture_steps_to_record_accepts_or_refuses(text, num_steps):
    """`--steps-to-record 0,3,7|all` as the flag's converter reads it, then as the capture plan resolves it."""
    from difflens.capture.runner import CaptureConfig, resolve_steps
    from difflens.configs import add_config_arguments

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, CaptureConfig, only={"steps_to_record"})
    convert = parser._option_string_actions["--steps-to-record"].type
    try:
        requested = convert(text)
        steps = resolve_steps(requested, num_steps)
    except (ValueError, argparse.ArgumentTypeError) as err:
        refused_with_message(err)
        return
    assert steps and steps == sorted(set(steps)) and all(type(s) is int and 0 <= s < num_steps for s in steps)


# ------------------------------------------------------------------------------ every flag of every command
def _typed_flags() -> list[tuple[str, str, argparse.Action]]:
    from difflens.cli import build_parser

    out = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif action.option_strings and callable(action.type):
                out.append((path, action.option_strings[0], action))

    walk(build_parser(), "difflens")
    return out


TYPED_FLAGS = _typed_flags()


def test_every_command_has_typed_flags_to_fuzz():
    assert len(TYPED_FLAGS) > 50 and any(flag == "--steps-to-record" for _c, flag, _a in TYPED_FLAGS)


FLAG_VALUES = st.one_of(st.text(max_size=16), st.from_regex(r"-?[0-9.e,]{0,12}|none|None|nan|-?inf|all", fullmatch=True),
                        st.integers(-10**30, 10**30).map(str), st.just("9" * 5000))


@FUZZ
@given(data=st.data())
def test_every_flag_converter_accepts_or_refuses(data):
    """argparse turns ArgumentTypeError, ValueError and TypeError from a flag's converter into a usage error; any
    other exception would escape as a traceback."""
    command, flag, action = data.draw(st.sampled_from(TYPED_FLAGS), label="flag")
    value = data.draw(FLAG_VALUES, label="value")
    try:
        action.type(value)
    except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
        refused_with_message(err)


@FUZZ
@given(text=st.one_of(st.text(max_size=10), st.from_regex(r"all|[-0-9, ]{0,10}|al", fullmatch=True)))
def test_eval_steps_words_are_refused_before_any_work(text):
    """`difflens eval --steps` takes the same values; a word other than all (or nothing) is refused up front, by
    name, before the store is opened (`dictionary` None: reaching it would fail differently)."""
    from difflens.capture.runner import CaptureConfig
    from difflens.configs import add_config_arguments
    from difflens.evaluation.analyses import across_steps

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, CaptureConfig, only={"steps_to_record"})
    steps = parser._option_string_actions["--steps-to-record"].type(text)
    if steps == "all" or (isinstance(steps, list) and steps):
        return
    with pytest.raises(ValueError, match="--steps takes step indices"):
        across_steps(None, None, steps=steps)
