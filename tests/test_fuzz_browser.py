"""Fuzzed browser inputs: query parameters, URL path values and steering JSON are either served or refused with a
4xx and a message -- never a 500 or a traceback. The parsers alone (FeatureQuery.parse, parse_int, check_request)
are fuzzed on their own, then every route of a tiny run through the test client (as tests/browser/test_app.py).

Hypothesis runs derandomized (the same examples on every run, no example database), so CI is deterministic.
"""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("hypothesis")
pytest.importorskip("starlette")
pytest.importorskip("jinja2")
pytest.importorskip("httpx")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from starlette.datastructures import QueryParams  # noqa: E402

from difflens.browser.run import BadRequest, FeatureQuery, parse_int  # noqa: E402
from difflens.browser.steering import Refused, SteeringLimits, check_request  # noqa: E402
from runs import SteeringStubRun  # noqa: E402

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ROUTES = settings(FUZZ, max_examples=60)  # each example is a request through the app: fewer, still varied

QUERY_KEYS = sorted(FeatureQuery.__dataclass_fields__) + ["", "x", "page[]"]
QUERY_VALUES = st.one_of(st.text(max_size=12), st.from_regex(r"-?[0-9.e]{0,12}|nan|inf|-inf|0|1", fullmatch=True),
                         st.integers(-10**12, 10**12).map(str), st.sampled_from(["frequency", "max", "asc", "desc"]))


def _query_strings():
    pairs = st.lists(st.tuples(st.sampled_from(QUERY_KEYS), QUERY_VALUES), max_size=4)
    return pairs


@FUZZ
@given(pairs=_query_strings())
def test_feature_query_parses_or_refuses(pairs):
    try:
        q = FeatureQuery.parse(QueryParams(pairs))
    except BadRequest as err:
        assert str(err).strip()
        return
    assert 1 <= q.page <= 10**9 and 1 <= q.per_page <= 500 and q.order in ("asc", "desc")
    for name in ("min_freq", "max_freq", "min_max", "max_max", "min_score", "min_auroc"):
        value = getattr(q, name)
        assert value is None or math.isfinite(value)
    assert FeatureQuery.parse(QueryParams(q.params())) == q  # its own links read back the same query


@FUZZ
@given(text=st.one_of(st.none(), QUERY_VALUES, st.from_regex(r"-?\d{1,12}", fullmatch=True)))
def test_url_integers_parse_or_refuse(text):
    try:
        v = parse_int(text, "step", 0, 10**6)
    except BadRequest as err:
        assert str(err).strip()
        return
    assert type(v) is int and 0 <= v <= 10**6


# ---------------------------------------------------------------------------------------------- steering JSON
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-3, 70), st.integers(10**300, 10**310),
                         st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8),
                         st.sampled_from(["nan", "inf", "-inf", "1e999", "3", "2.5", "sae", "add", "ablate"]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                                                  st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                           max_leaves=8)
STEER_KEYS = ["dictionary", "latent", "prompt", "seed", "strength", "mode", "box", "step_start", "step_end",
              "num_steps", "resolution"]


def _steer_bodies():
    good = {"dictionary": "sae", "latent": 3, "prompt": "a small red circle", "strength": 3.0}
    changed = st.dictionaries(st.sampled_from(STEER_KEYS + ["other"]), JSON_VALUES, max_size=4)
    boxes = st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), JSON_SCALARS), min_size=3, max_size=5)
    return st.one_of(changed.map(lambda c: {**good, **c}), boxes.map(lambda b: {**good, "box": b}), JSON_VALUES)


@FUZZ
@given(body=_steer_bodies())
def test_steering_request_checks_or_refuses(body):
    limits = SteeringLimits()
    try:
        s = check_request(body, SteeringStubRun(), limits, default_steps=8)
    except Refused as err:
        assert str(err).strip()
        return
    assert 0 <= s["latent"] < 16 and 0 <= s["seed"] < 2**31 and abs(s["strength"]) <= limits.max_strength
    assert 1 <= s["num_steps"] <= limits.max_steps and 0 <= s["steps"][0] < s["steps"][1] <= s["num_steps"]
    assert s["box"] is None or (len(s["box"]) == 4 and all(0 <= v <= 1 for v in s["box"]))
    json.dumps(s)  # the settings travel as JSON (job status)


# ------------------------------------------------------------------------------------------- routes of a run
@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from starlette.testclient import TestClient

    from difflens.browser.app import create_app
    from runs import build_run

    def generate(settings):  # accepted requests finish at once: the fuzz is about the checks, not generation
        return {"settings": {k: v for k, v in settings.items() if k != "steps"}}

    app = create_app(build_run(tmp_path_factory.mktemp("fuzz") / "run"), SteeringLimits(max_queue=10**6), generate)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def served_or_refused(r) -> None:
    assert r.status_code < 500, (r.request.url, r.status_code, r.text[:300])
    assert "Traceback" not in r.text and 'File "' not in r.text, r.text[:300]


INTS = st.one_of(st.integers(0, 40), st.integers(-5, 10**25).map(abs))
NAMES = st.one_of(st.sampled_from(["sae", "itda", "text_sae", "nope"]), st.text("abc_.-%", max_size=6))


@ROUTES
@given(name=NAMES, pairs=_query_strings())
def test_feature_table_serves_or_refuses(client, name, pairs):
    served_or_refused(client.get(f"/d/{name}", params=pairs))


@ROUTES
@given(name=NAMES, latent=INTS, image=INTS, step=INTS, kind=st.sampled_from(["f", "map", "overlay", "errmap"]))
def test_feature_pages_and_images_serve_or_refuse(client, name, latent, image, step, kind):
    url = {"f": f"/d/{name}/f/{latent}", "map": f"/api/map/{name}/{latent}/{image}/{step}",
           "overlay": f"/overlay/{name}/{latent}/{image}/{step}.png", "errmap": f"/errmap/{name}/{image}/{step}.png"}
    served_or_refused(client.get(url[kind]))


@ROUTES
@given(image=INTS, pairs=st.lists(st.tuples(st.sampled_from(["step", "token", "x"]), QUERY_VALUES), max_size=3),
       kind=st.sampled_from(["/image/{}", "/api/token/{}", "/img/{}.png"]))
def test_image_pages_serve_or_refuse(client, image, pairs, kind):
    served_or_refused(client.get(kind.format(image), params=pairs))


@ROUTES
@given(body=_steer_bodies())
def test_steering_endpoint_queues_or_refuses(client, body):
    r = client.post("/api/steer", content=json.dumps(body), headers={"content-type": "application/json"})
    served_or_refused(r)
    if r.status_code == 202:
        job = r.json()["id"]
        served_or_refused(client.get(f"/api/steer/{job}"))
    else:
        assert r.json()["error"].startswith("refused: ")
