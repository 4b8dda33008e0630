"""Feature browser over HTTP: every page, escaping of file texts, traversal attempts, 404/400 pages, steering limits
and its one-at-a-time queue, the static export. The run folder is built on the fly from the tiny embedded model."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("jinja2")
pytest.importorskip("httpx")

import difflens as dl  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from difflens.browser.app import create_app  # noqa: E402
from difflens.browser.run import Run  # noqa: E402
from difflens.browser.steering import SteeringLimits  # noqa: E402

from runs import HEADLINE_DEFINITION, IMG, build_run  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return build_run(tmp_path_factory.mktemp("browse") / "run")


@pytest.fixture(scope="module")
def client(run_dir):
    app = create_app(run_dir)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def no_trace(r) -> None:
    assert "Traceback" not in r.text and 'File "' not in r.text, r.text[:500]


# ------------------------------------------------------------------------------------------------------- pages
def test_index_page_lists_dictionaries_with_metrics_and_plots(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    for name in ("sae", "itda", "text_sae"):
        assert f'href="/d/{name}"' in r.text
    assert "0.25" in r.text and "75.0%" in r.text  # FVU and variance explained of the sae
    assert '/run/plots/ok.png' in r.text
    assert client.get("/run/plots/ok.png").status_code == 200


def test_feature_table_sorts_filters_searches_and_pages(client, run_dir):
    index = dl.load_index(run_dir / "dictionaries" / "sae" / "index")
    r = client.get("/d/sae?sort=max&order=desc&per_page=500")
    assert r.status_code == 200
    latents = [int(x) for x in re.findall(r'class="feature-link" href="/d/sae/f/(\d+)"', r.text)]
    alive = torch.nonzero(index.alive()).squeeze(1).tolist()
    assert sorted(latents) == alive
    maxes = index.max_activation[latents].tolist()
    assert maxes == sorted(maxes, reverse=True)
    # pages of 5
    p2 = client.get("/d/sae?sort=max&order=desc&per_page=5&page=2").text
    assert [int(x) for x in re.findall(r'href="/d/sae/f/(\d+)"', p2)][:5] == latents[5:10]
    # frequency filter
    freq = index.frequencies().mean(0)
    cut = float(freq[alive].median())
    got = {int(x) for x in re.findall(r'class="feature-link" href="/d/sae/f/(\d+)"',
                                      client.get(f"/d/sae?min_freq={cut}&per_page=500").text)}
    assert got == {i for i in alive if float(freq[i]) >= cut}
    # search over explanations, concept and AUROC and score filters
    explained = {int(x) for x in re.findall(r'href="/d/sae/f/(\d+)"', client.get("/d/sae?q=shapes&per_page=500").text)}
    assert len(explained) == 5
    red = re.findall(r'class="feature-link" href="/d/sae/f/(\d+)"', client.get("/d/sae?concept=color:red").text)
    assert len(red) == 4
    assert len(re.findall(r'class="feature-link"', client.get("/d/sae?min_auroc=0.72").text)) == 2
    assert len(re.findall(r'class="feature-link"', client.get("/d/sae?min_score=0.515&sort=score").text)) == 4
    assert "no latent matches" in client.get("/d/sae?q=zebra").text


def test_feature_page_shows_images_histogram_steps_truth_and_nearest(client, run_dir):
    from difflens.interpret.heatmap import paint

    index = dl.load_index(run_dir / "dictionaries" / "sae" / "index")
    latent = int(index.max_activation.argmax())
    r = client.get(f"/d/sae/f/{latent}")
    assert r.status_code == 200
    top = index.top_images(latent)
    first = top[0]
    overlay = f"/overlay/sae/{latent}/{first['image_id']}/{first['step']}.png"
    assert overlay in r.text and f"/img/{first['image_id']}.png" in r.text
    for section in ('id="histogram"', 'id="steps"', 'id="quantiles"', 'id="nearest"', 'id="steer"', 'id="opacity"'):
        assert section in r.text
    assert "step 0" in r.text and "step 1" in r.text
    assert "/d/itda/f/" in r.text  # nearest latents across dictionaries of the site
    assert "/d/text_sae/f/" not in r.text  # another site is not compared
    # the overlay is interpret.heatmap.paint of the stored image with the index's activation map
    png = client.get(overlay)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    from io import BytesIO

    from PIL import Image

    got = np.asarray(Image.open(BytesIO(png.content)).convert("RGB"))
    amap = index.activation_map(latent, first["image_id"], first["step"])
    want = paint(index.store.load_image(first["image_id"]), amap, float(index.max_activation[latent]))
    assert np.array_equal(got, want)
    m = client.get(f"/api/map/sae/{latent}/{first['image_id']}/{first['step']}").json()
    assert m["grid"] == list(index.grid)
    np.testing.assert_allclose(np.array(m["values"]).reshape(m["grid"]), amap.numpy(), atol=1e-4)
    assert max(m["values"]) == pytest.approx(first["score"], rel=1e-3)


def _alive(run_dir, name="sae") -> list[int]:
    return torch.nonzero(dl.load_index(run_dir / "dictionaries" / name / "index").alive()).squeeze(1).tolist()


def test_index_page_leads_with_the_precise_share_and_keeps_f1_secondary(client):
    text = client.get("/").text
    rows = {m.group(1): m.group(0) for m in re.finditer(r'<tr>\s*<td><a class="dict-link" href="/d/(\w+)">.*?</tr>', text, re.S)}
    sae, itda, text_sae = rows["sae"], rows["itda"], rows["text_sae"]
    assert "precise <b>18.2%</b>" in sae and "[15.1, 21.0]" in sae
    assert "random 2.5%" in sae and "untrained 3.0%" in sae  # both controls, the untrained one for the SAE only
    assert "random 2.5%" in itda and "untrained" not in itda
    assert "precise <b>" not in text_sae and "written before it" in text_sae  # an old report: no precise share
    # the precise share leads; the F1 share is the last column, labelled secondary and recall-sensitive
    head = re.search(r"<thead>.*?</thead>", text, re.S).group(0)
    assert head.index("precise share") < head.index("FVU") < head.index("F1 ≥ 0.5") and "(recall-sensitive)" in head
    assert "truth-explained" not in head
    assert "25.0%" in sae and 'title="[20.0, 30.0]"' in sae  # the F1 share, with its interval as a tooltip
    assert text.count(HEADLINE_DEFINITION.replace(">", "&gt;")) >= 3  # the definition: tooltips and note


def test_old_truth_json_without_headline_still_renders(run_dir, tmp_path):
    import shutil

    root = tmp_path / "old"
    for name in ("sae", "text_sae"):
        (root / "dictionaries" / name).mkdir(parents=True)
        shutil.copy(run_dir / "dictionaries" / name / "cfg.json", root / "dictionaries" / name / "cfg.json")
    (root / "dictionaries" / "sae" / "truth.json").write_text(json.dumps(
        {"explained_share": 0.25, "explained_share_random": 0.05, "latents": [{"latent": 2, "concept": "color:red"}]}))
    with TestClient(create_app(root), raise_server_exceptions=False) as c:
        r = c.get("/")
    assert r.status_code == 200
    assert "truth-explained" in r.text and "25.0%" in r.text and "(5.0%)" in r.text
    assert "precise share" not in r.text and "recall-sensitive" not in r.text
    # an old report in a run with new ones: its feature page keeps the F1 panel, its table the old column
    alive = _alive(run_dir, "text_sae")
    page = client_get(run_dir, f"/d/text_sae/f/{alive[0]}")
    assert "best concept" in page and 'id="specificity"' not in page and "precise concept" not in page
    table = client_get(run_dir, "/d/text_sae")
    assert "<th>truth concept</th>" in table and "upper prec." not in table and "precise only" not in table


def client_get(run_dir, url: str) -> str:
    with TestClient(create_app(run_dir), raise_server_exceptions=False) as c:
        r = c.get(url)
    assert r.status_code == 200, r.text[:300]
    return r.text


def test_a_report_with_only_top_level_precise_share_reads_its_summary():
    from difflens.browser.pages import truth_headline

    got = truth_headline({"precise_share": 0.2, "precise_share_random": 0.01,
                          "summary": {"dictionary": {"intervals": {"precise_share": [0.1, 0.3]}},
                                      "init": {"precise_share": 0.04}}})
    assert got["value"] == 0.2 and got["interval"] == [0.1, 0.3]
    assert [(c["label"], c["value"]) for c in got["controls"]] == [("random", 0.01), ("untrained", 0.04)]
    assert truth_headline({"explained_share": 0.3}) is None and truth_headline(None) is None
    assert truth_headline({"headline": {"value": "nan?"}}) is None


def test_feature_table_shows_the_precise_concept_and_sorts_by_upper_precision(client, run_dir):
    alive = _alive(run_dir)
    r = client.get("/d/sae?sort=upper_precision&order=desc&per_page=500")
    assert r.status_code == 200
    head = re.search(r"<thead>.*?</thead>", r.text, re.S).group(0)
    assert "precise concept" in head and "upper prec." in head and "F1 concept" in head and "recall-sens." in head
    latents = [int(x) for x in re.findall(r'class="feature-link" href="/d/sae/f/(\d+)"', r.text)]
    assert latents[:4] == [alive[0], alive[2], alive[1], alive[3]]  # 0.95, 0.92, 0.4, 0.3; no value last
    assert sorted(latents) == alive
    assert r.text.count('<span class="mark yes"') == 2  # ✓ where the latent counts in the precise share
    assert re.search(r'<span class="mark yes"[^>]*>✓</span> <code>color:blue</code>', r.text)
    assert ">95%</td>" in r.text
    ascending = [int(x) for x in re.findall(r'class="feature-link" href="/d/sae/f/(\d+)"',
                                            client.get("/d/sae?sort=upper_precision&order=asc&per_page=500").text)]
    assert ascending[:4] == [alive[3], alive[1], alive[2], alive[0]]
    only = {int(x) for x in re.findall(r'class="feature-link" href="/d/sae/f/(\d+)"', client.get("/d/sae?precise=1").text)}
    assert only == {alive[0], alive[2]}
    blue = {int(x) for x in re.findall(r'class="feature-link" href="/d/sae/f/(\d+)"', client.get("/d/sae?concept=color:blue").text)}
    assert blue == {alive[0]}  # the concept filter matches the precise concept too
    assert client.get("/d/sae?precise=2").status_code == 400
    page = client.get("/d/sae").text
    assert "precise <b>18.2%</b>" in page and "untrained 3.0%" in page  # the dictionary's headline above its table


def test_feature_page_draws_specificity_by_activation_level(client, run_dir):
    alive = _alive(run_dir)
    text = client.get(f"/d/sae/f/{alive[0]}").text
    panel = re.search(r'<section class="card" id="truth">.*?</section>', text, re.S).group(0)
    assert "precise concept <code>color:blue</code>" in panel and "✓ counts in the precise share" in panel
    chart = re.search(r'<div id="specificity">.*?</svg>', panel, re.S).group(0)
    bands = re.findall(r'<rect class="band( upper| empty)?"', chart)
    assert len(bands) == 10
    assert [b == " empty" for b in bands] == [True, False, False, True] + [False] * 6  # no tokens: drawn empty
    assert [b == " upper" for b in bands][5:] == [True] * 5  # bands above ½ max: the upper range
    heights = [float(h) for h in re.findall(r'<rect class="band(?: upper)?" x="[\d.]+" y="[\d.]+" width="[\d.]+" height="([\d.]+)"', chart)]
    assert heights == pytest.approx([5, 10, 20, 40, 45, 50, 50, 43.75])  # precision x 50 (the chart's height)
    assert 'class="upper-zone"' in chart and 'class="base"' in chart  # upper range shaded, base rate 9.5%
    labels = re.findall(r'<span class="band-label[^"]*"[^>]*><b>([^<]*)</b><br>n (\d+)</span>', panel)
    assert labels[:3] == [("–", "0"), ("10%", "30"), ("20%", "12")] and labels[-1] == ("88%", "8") and len(labels) == 10
    assert "on 30 held-out tokens" in chart  # each bar's tooltip: precision and token count
    for words in ("upper range (&gt; 0.5 × max)", "precision 95.0%", "lift 9.5×", "29 tokens", "any activation",
                  "precision 41.0%", "AP match", "AP 0.66", "F1 match", "recall-sensitive", "<code>color:red</code> · F1 0.5"):
        assert words in panel, words
    assert "detection" not in panel
    # a latent that does not count, one without band statistics but with detection scores
    other = client.get(f"/d/sae/f/{alive[1]}").text
    assert "✗ does not count in the precise share" in other
    third = re.search(r'id="truth">.*?</section>', client.get(f"/d/sae/f/{alive[2]}").text, re.S).group(0)
    assert "no band statistics" in third and "detection (perfect judge)" in third and "tokens 0.875" in third
    empty = re.search(r'id="truth">.*?</section>', client.get(f"/d/sae/f/{alive[4]}").text, re.S).group(0)
    assert empty.count('class="band empty"') == 10 and 'class="base"' not in empty


def test_nearest_latents_are_the_decoder_cosine_neighbours(run_dir):
    run = Run(run_dir)
    d, other = run.dictionary("sae"), run.dictionary("itda")
    mine = dl.load_dictionary(run_dir / "dictionaries" / "sae").feature_directions()
    theirs = dl.load_dictionary(run_dir / "dictionaries" / "itda").feature_directions()
    got = d.nearest(3, other, 4)
    cos = theirs @ mine[3]
    assert [i for i, _ in got] == cos.topk(4).indices.tolist()
    same = d.nearest(3, d, 3)
    assert 3 not in [i for i, _ in same]


def test_text_site_feature_page_shades_prompt_words(client, run_dir):
    index = dl.load_index(run_dir / "dictionaries" / "text_sae" / "index")
    latent = int(index.max_activation.argmax())
    r = client.get(f"/d/text_sae/f/{latent}")
    assert r.status_code == 200
    assert 'class="text-row"' in r.text and 'class="word"' in r.text


def test_image_page_token_latents_and_reconstruction_error(client, run_dir):
    r = client.get("/image/3?step=1")
    assert r.status_code == 200
    assert 'id="tokenpad"' in r.text and 'data-grid="8x8"' in r.text
    assert "/errmap/sae/3/1.png" in r.text and "/errmap/itda/3/1.png" in r.text
    assert client.get("/errmap/sae/3/1.png").headers["content-type"] == "image/png"
    data = client.get("/api/token/3?step=1&token=10").json()
    names = [d["dictionary"] for d in data["dictionaries"]]
    assert names == ["itda", "matryoshka", "sae"]  # image-stream dictionaries indexed at step 1
    sae = dl.load_dictionary(run_dir / "dictionaries" / "sae")
    store = dl.open_store(run_dir / "store")
    index = dl.load_index(run_dir / "dictionaries" / "sae" / "index")
    rows = index.image_rows(3, 1)
    reader = store.reader(IMG, 1)
    acts = reader.read_rows(rows)
    token = np.asarray(reader.trace(rows)["token_index"])
    codes = sae.encode(acts[np.flatnonzero(token == 10)])
    want = {int(i): float(v) for v, i in zip(codes.values[0], codes.indices[0]) if v > 0}
    got = {it["latent"]: it["value"] for it in data["dictionaries"][names.index("sae")]["items"]}
    assert got.keys() == want.keys() and all(got[k] == pytest.approx(want[k], rel=1e-5) for k in got)
    # the evil prompt is shown as text
    page = client.get("/image/0").text
    assert "<script>bad()" not in page and "&lt;script&gt;bad()" in page


# ------------------------------------------------------------------------------------------------- security
def test_texts_from_files_are_escaped_everywhere(client, run_dir):
    index = dl.load_index(run_dir / "dictionaries" / "sae" / "index")
    evil_latent = torch.nonzero(index.alive()).squeeze(1).tolist()[0]
    pages = [client.get(u).text for u in ("/d/sae", "/d/sae?q=script", f"/d/sae/f/{evil_latent}",
                                          f"/d/itda/f/{torch.nonzero(index.alive()).squeeze(1).tolist()[1]}")]
    joined = "\n".join(pages)
    assert "&lt;script&gt;alert(" in pages[0] and "&lt;script&gt;alert(" in pages[2]
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[2]
    for page in pages:
        assert "<script>alert" not in page and "<img src=x onerror" not in page and "<b>bold</b>" not in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in joined
    scripts = re.findall(r"<script[^>]*>", joined)
    assert set(scripts) == {'<script src="/static/browser.js">'}
    # the prompt of a top image (written by the capture) in captions
    r = client.get("/image/0")
    assert "default-src 'self'" in r.headers["content-security-policy"]


def test_files_only_from_inside_the_run(client):
    for url in ("/run/../summary.json", "/run/..%2Fsecret.png", "/run/%2e%2e/secret.png", "/run/plots/escape.png",
                "/run/plots/up/secret.png", "/run//etc/passwd", "/run/summary.py", "/static/../run.py",
                "/static/%2e%2e/run.py", "/img/..%2F..%2Fsummary.json", "/run/plots/../../secret.png"):
        r = client.get(url)
        assert r.status_code == 404, url
        assert "secret outside" not in r.text
        no_trace(r)
    assert client.get("/run/summary.json").status_code == 200


def test_a_store_image_linked_out_of_the_store_is_not_served(client, run_dir):
    from difflens.store import layout

    path = layout.image_path(run_dir / "store", 15)
    kept = path.read_bytes()
    path.unlink()
    os.symlink(run_dir.parent / "secret.png", path)
    try:
        r = client.get("/img/15.png")
        assert r.status_code == 404 and "secret outside" not in r.text
        no_trace(r)
    finally:
        path.unlink()
        path.write_bytes(kept)
    assert client.get("/img/15.png").status_code == 200


def test_unknown_things_are_404_pages_and_malformed_queries_400(client, run_dir):
    for url in ("/d/nope", "/d/nope/f/1", "/d/sae/f/100000", "/image/999", "/img/999.png", "/d/sae/f/abc",
                "/overlay/sae/100000/0/1.png", "/api/map/sae/1/0/5", "/nothing/here", "/d/sae?page=99999"):
        r = client.get(url)
        assert r.status_code in (404, 400), url
        no_trace(r)
    assert client.get("/d/sae/f/100000").status_code == 404
    assert "Not found" in client.get("/d/nope").text
    for url in ("/d/sae?page=abc", "/d/sae?page=0", "/d/sae?sort=evil", "/d/sae?order=up", "/d/sae?min_freq=nan",
                "/d/sae?min_freq=x", "/d/sae?bogus=1", "/d/sae?per_page=100000", "/d/sae?page=1&page=2",
                "/image/1?step=x", "/api/token/1?step=1&token=-1", "/api/token/1?step=1", "/?x=1",
                "/api/token/1?step=1&token=999"):
        r = client.get(url)
        assert r.status_code == 400, url
        no_trace(r)
    assert "Bad request" in client.get("/d/sae?page=abc").text
    assert client.get("/api/map/sae/1/0/7").json()["error"]


def test_an_internal_error_is_a_500_page_without_a_traceback(run_dir, monkeypatch):
    from difflens.browser import routes as routes_module

    def boom(*a, **k):
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(routes_module, "run_context", boom)
    with TestClient(create_app(run_dir), raise_server_exceptions=False) as c:
        r = c.get("/")
    assert r.status_code == 500 and "secret internals" not in r.text
    no_trace(r)


# ------------------------------------------------------------------------------------------------- steering
def steer_body(**changes) -> dict:
    return {"dictionary": "sae", "latent": 1, "prompt": "a red circle", "seed": 0, "strength": 3, "mode": "add",
            "num_steps": 2, "step_start": 0, "step_end": 2, "box": [0.1, 0.1, 0.6, 0.6], **changes}


@pytest.mark.parametrize("change,reason", [
    (dict(strength=1000), "beyond the limit"), (dict(strength="nan"), "finite"), (dict(num_steps=500), "steps"),
    (dict(num_steps=0), "steps"), (dict(resolution=4096), "resolution"), (dict(mode="explode"), "mode"),
    (dict(latent=10**6), "outside the dictionary"), (dict(latent=-1), "outside"), (dict(dictionary="nope"), "no dictionary"),
    (dict(box=[0.5, 0.5, 0.2, 0.9]), "empty"), (dict(box=[0, 0, 2, 1]), "[0, 1]"), (dict(box="x"), "box"),
    (dict(step_start=2, step_end=2), "step window"), (dict(step_end=9), "step window"), (dict(prompt="x" * 5000), "characters"),
    (dict(prompt=""), "prompt"), (dict(seed=-3), "seed"), (dict(extra=1), "unknown field"),
])
def test_steering_requests_beyond_the_limits_are_refused_with_the_reason(client, change, reason):
    r = client.post("/api/steer", json=steer_body(**change))
    assert r.status_code == 400
    assert r.json()["error"].startswith("refused:") and reason in r.json()["error"], r.json()
    no_trace(r)


def test_steering_body_must_be_json(client):
    r = client.post("/api/steer", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    assert client.get("/api/steer").status_code == 405
    # a cross-site page can POST text/plain without a preflight: refused before anything is queued
    r = client.post("/api/steer", content=json.dumps(steer_body()).encode(), headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    assert client.get("/api/steer/12345").status_code == 404
    # bodies beyond the size limit are refused before they are parsed, declared or streamed (chunked)
    from difflens.browser.routes import MAX_BODY_BYTES

    big = json.dumps({**steer_body(), "prompt": "x" * (2 * MAX_BODY_BYTES)}).encode()
    r = client.post("/api/steer", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    r = client.post("/api/steer", content=iter([big[:8000], big[8000:]]), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_serving_beyond_loopback_warns_that_steering_is_open(run_dir, monkeypatch, capsys):
    import uvicorn

    from difflens.browser.app import serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    serve(run_dir, host="127.0.0.1", port=8123)
    assert "warning" not in capsys.readouterr().err
    serve(run_dir, host="0.0.0.0", port=8123)
    assert "live steering" in capsys.readouterr().err


def test_steering_runs_one_at_a_time_and_a_second_request_waits(run_dir):
    gate = threading.Event()
    running, peak, lock = [0], [0], threading.Lock()

    def fake(settings):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        gate.wait(10)
        with lock:
            running[0] -= 1
        return {"baseline": "data:,", "steered": "data:,", "record": {"latent": settings["latent"]}}

    app = create_app(run_dir, SteeringLimits(max_queue=2), generate=fake)
    app.state.steering.available = True
    with TestClient(app) as c:
        first = c.post("/api/steer", json=steer_body()).json()
        deadline = time.time() + 5
        while c.get(f"/api/steer/{first['id']}").json()["status"] != "running" and time.time() < deadline:
            time.sleep(0.01)
        second = c.post("/api/steer", json=steer_body(latent=2)).json()
        third = c.post("/api/steer", json=steer_body(latent=3)).json()
        status = c.get(f"/api/steer/{second['id']}").json()
        assert status["status"] == "queued" and status["position"] == 1 and status["running"]
        assert c.get(f"/api/steer/{third['id']}").json()["position"] == 2
        full = c.post("/api/steer", json=steer_body())
        assert full.status_code == 429 and "queue is full" in full.json()["error"]
        assert full.headers["retry-after"] == "1"
        # the page cancels a job when it is closed: dropped unrun, its place freed
        cancelled = c.delete(f"/api/steer/{second['id']}").json()
        assert cancelled["status"] == "cancelled" and "before it ran" in cancelled["message"]
        assert c.get(f"/api/steer/{third['id']}").json()["position"] == 1
        assert c.delete("/api/steer/12345").status_code == 404
        fourth = c.post("/api/steer", json=steer_body(latent=4))
        assert fourth.status_code == 202
        gate.set()
        deadline = time.time() + 10
        while time.time() < deadline and c.get(f"/api/steer/{third['id']}").json()["status"] != "done":
            time.sleep(0.02)
        done = c.get(f"/api/steer/{third['id']}").json()
        assert done["status"] == "done" and done["result"]["record"] == {"latent": 3}
        assert c.get(f"/api/steer/{second['id']}").json()["started"] is None
    assert peak[0] == 1


def test_steering_on_the_tiny_embedded_model(client):
    pytest.importorskip("difflens.steering")
    r = client.post("/api/steer", json=steer_body(strength=8))
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.time() + 120
    while job["status"] in ("queued", "running") and time.time() < deadline:
        time.sleep(0.1)
        job = client.get(f"/api/steer/{job['id']}").json()
    assert job["status"] == "done", job
    result = job["result"]
    assert result["baseline"].startswith("data:image/png;base64,") and result["steered"].startswith("data:image/png")
    assert result["baseline"] != result["steered"]
    assert result["record"]["mode"] == "add" and result["record"]["steps"] == [0, 1]


def test_steering_panel_says_why_when_the_api_is_missing(run_dir):
    app = create_app(run_dir)
    service = app.state.steering
    service.available, service.reason = False, "live steering is unavailable: difflens.steering cannot be imported (X)"
    with TestClient(app) as c:
        page = c.get("/d/sae/f/1").text
        assert "cannot be imported" in page and 'id="steer-form"' not in page
        r = c.post("/api/steer", json=steer_body())
        assert r.status_code == 400 and "cannot be imported" in r.json()["error"]


# ------------------------------------------------------------------------------------------------- export, CLI
def test_static_export_works_from_files_with_steering_disabled(run_dir, tmp_path):
    from difflens.cli import main

    out = tmp_path / "site"
    index = dl.load_index(run_dir / "dictionaries" / "sae" / "index")
    alive = torch.nonzero(index.alive()).squeeze(1).tolist()
    text_latent = int(dl.load_index(run_dir / "dictionaries" / "text_sae" / "index").max_activation.argmax())
    exported = sorted({*alive[:3], text_latent})
    pick = ",".join(map(str, exported))
    assert main(["browse", str(run_dir), "--export", str(out), "--export-features", pick]) == 0
    assert (out / "index.html").exists() and (out / "d" / "sae" / "index.html").exists()
    page = (out / "d" / "sae" / "f" / f"{alive[0]}.html").read_text()
    assert "disabled in a static export" in page and 'id="steer-form"' not in page
    assert "<script>alert" not in page and "&lt;script&gt;alert(" in page
    data = json.loads((out / "d" / "sae" / "f" / f"{alive[0]}.json").read_text())
    assert data["latent"] == alive[0] and data["maps"] and data["top"]
    # the ground-truth panel: specificity by activation level, on the page and in its data
    assert 'id="specificity"' in page and page.count('<rect class="band') == 10
    assert data["precise"]["concept"] == "color:blue" and len(data["precise"]["bars"]) == 10
    assert data["truth"]["band_fires"][1] == 30 and data["precise"]["bars"][0]["precision"] is None
    home = (out / "index.html").read_text()
    assert "precise <b>18.2%</b>" in home and "recall-sensitive" in home
    # every relative link and image of the pages resolves to a written file (or a feature not exported)
    for html in [out / "index.html", out / "d" / "sae" / "index.html", out / "d" / "sae" / "f" / f"{alive[0]}.html",
                 out / "d" / "text_sae" / "f" / f"{text_latent}.html"]:  # a text site's tiles too
        text = html.read_text()
        assert not re.search(r'(href|src)="/', text), html  # no absolute links
        for target in re.findall(r'(?:href|src)="(?!data:)([^"#?]+)"', text):
            path = (html.parent / target).resolve()
            if re.search(r"/f/\d+\.html$", target) and not path.exists():
                continue  # a neighbour latent that was not exported
            assert path.exists(), (html, target)
    # the table holds the exported latents, sorted and filtered in the page
    table = (out / "d" / "sae" / "index.html").read_text()
    assert sorted(int(x) for x in re.findall(r'class="feature-link" href="../../d/sae/f/(\d+).html"', table)) == exported
    assert "sortable" in table
    assert 'data-key="upper_precision"' in table and 'data-upper_precision="0.95"' in table
    assert 'id="t-precise"' in table and 'data-precise="1"' in table
    for bad in ("-2", "0", "x", "1,x"):
        assert main(["browse", str(run_dir), "--export", str(tmp_path / "bad"), "--export-features", bad]) == 2


def test_browse_command_defaults_to_localhost_and_refuses_bad_flags(run_dir, capsys):
    from difflens.browser.cli import BrowseCommand
    from difflens.cli import build_parser, main

    assert BrowseCommand.__dataclass_fields__["host"].default == "127.0.0.1"
    args = build_parser().parse_args(["browse", str(run_dir)])
    assert args.run == str(run_dir) and not hasattr(args, "host")  # the dataclass default applies
    assert main(["browse", str(run_dir), "--port", "0"]) == 2
    assert main(["browse", str(run_dir), "--abandon-seconds", "0"]) == 2
    assert "--abandon-seconds must be positive" in capsys.readouterr().err
    assert main(["browse", str(run_dir.parent / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_malformed_run_files_are_ignored_not_fatal(run_dir, tmp_path):
    import shutil

    root = tmp_path / "odd"
    (root / "dictionaries" / "sae").mkdir(parents=True)
    shutil.copy(run_dir / "dictionaries" / "sae" / "cfg.json", root / "dictionaries" / "sae" / "cfg.json")
    (root / "summary.json").write_text("[1, 2]")  # JSON, but no object
    (root / "dictionaries" / "sae" / "truth.json").write_text(json.dumps(
        {"latents": [{"latent": "x", "concept": "c"}, {"latent": 2, "concept": "color:red"}]}))
    run = Run(root)
    assert run.summary == {}
    assert set(run.dictionary("sae").truth["_by_latent"]) == {2}


def test_a_loopback_server_refuses_other_host_names(run_dir):
    from difflens.browser.app import LOOPBACK_HOSTS

    app = create_app(run_dir, allowed_hosts=LOOPBACK_HOSTS)
    with TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False) as c:
        assert c.get("/").status_code == 200
    with TestClient(app, base_url="http://attacker.example:8000", raise_server_exceptions=False) as c:
        assert c.get("/").status_code == 400  # DNS rebinding: the page's host name is not ours


def test_matryoshka_prefix_level_is_a_column_a_filter_and_a_line(client, run_dir, tmp_path):
    from difflens.cli import main

    index = dl.load_index(run_dir / "dictionaries" / "matryoshka" / "index")
    assert index.prefix_sizes == [12, 48]
    levels = index.prefix_levels()
    alive = set(torch.nonzero(index.alive()).squeeze(1).tolist())
    r = client.get("/d/matryoshka?sort=prefix&order=asc&per_page=500")
    assert r.status_code == 200 and 'data-key="prefix"' in r.text and 'name="prefix"' in r.text
    latents = [int(x) for x in re.findall(r'class="feature-link" href="/d/matryoshka/f/(\d+)"', r.text)]
    cells = [int(x) for x in re.findall(r'<td class="n prefix-cell">(\d+)</td>', r.text)]
    assert set(latents) == alive and cells == [int(levels[i]) for i in latents] and cells == sorted(cells)
    assert {0, 1} <= set(cells)
    for level in (0, 1):
        got = {int(x) for x in re.findall(r'class="feature-link" href="/d/matryoshka/f/(\d+)"',
                                          client.get(f"/d/matryoshka?prefix={level}&per_page=500").text)}
        assert got == {i for i in alive if int(levels[i]) == level}
    assert client.get("/d/matryoshka?prefix=x").status_code == 400
    assert 'data-key="prefix"' not in client.get("/d/sae").text  # other dictionaries have no such column
    first, last = min(i for i in alive if levels[i] == 0), max(i for i in alive if levels[i] == 1)
    assert "Matryoshka prefix level <b>0</b> (levels 0–1) · latents 0–11" in client.get(f"/d/matryoshka/f/{first}").text
    assert "Matryoshka prefix level <b>1</b> (levels 0–1) · latents 12–47" in client.get(f"/d/matryoshka/f/{last}").text
    assert "Matryoshka prefix level" not in client.get(f"/d/sae/f/{first}").text
    # the static export: a column the page sorts, a filter the page applies
    out = tmp_path / "site"
    assert main(["browse", str(run_dir), "--export", str(out), "--export-features", f"={first}"]) == 0
    table = (out / "d" / "matryoshka" / "index.html").read_text()
    assert 'data-key="prefix"' in table and 'id="t-prefix"' in table and 'data-prefix="0"' in table


def test_a_client_that_leaves_while_sending_a_steering_request_is_no_server_error(run_dir, capsys):
    import asyncio

    app = create_app(run_dir)
    app.state.steering.available = True
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/steer", "raw_path": b"/api/steer", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    messages = iter([{"type": "http.request", "body": b'{"dictionary": "sae", ', "more_body": True},
                     {"type": "http.disconnect"}])
    sent = []

    async def receive():
        return next(messages, {"type": "http.disconnect"})

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    assert "error on" not in capsys.readouterr().err  # no traceback in the server's log
    assert app.state.steering.status("1") is None  # nothing was queued
