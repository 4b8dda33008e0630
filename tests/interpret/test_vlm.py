"""The `openai` VLM backend against a scripted chat-completions server on 127.0.0.1: cache, retries,
timeouts, malformed replies, a refused key, a dead endpoint, structured output, dry runs, and the key
never reaching a file."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from difflens.interpret.vlm import (
    VLMAuthError,
    VLMClient,
    VLMFatalError,
    VLMConfig,
    VLMRequest,
    format_dry_run,
    image_tokens,
    ledger_totals,
    parse_json_reply,
    read_ledger,
    to_png,
)

from chat_stub import ChatServer, user_text

KEY_ENV = "DIFFLENS_TEST_VLM_KEY"
SECRET = "sk-test-SECRET-31337-do-not-leak"


@pytest.fixture
def server():
    s = ChatServer()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def config(url: str, **kw) -> VLMConfig:
    base = dict(base_url=url, model="test-vlm", api_key_env=KEY_ENV, max_retries=3, timeout_s=5.0, retry_base_s=0.01, retry_max_s=0.05)
    return VLMConfig(**{**base, **kw})


def png(w: int = 64, h: int = 48, value: int = 0) -> bytes:
    return to_png(np.full((h, w, 3), value, np.uint8))


def requests(*texts, **kw) -> list[VLMRequest]:
    return [VLMRequest(key=f"explain/{t}", system="You explain features.", text=t, images=[png(value=i)], **kw) for i, t in enumerate(texts)]


def test_success_then_cache_hit_on_rerun(server, tmp_path):
    image = np.zeros((32, 40, 3), np.uint8)
    image[:, :20] = 255
    reqs = [VLMRequest("explain/latent-1", "sys", "what is shared?", [image]), *requests("b")]
    client = VLMClient(config(server.url, price_in_per_mtok=1.0, price_out_per_mtok=2.0), tmp_path / "cache", tmp_path / "ledger.jsonl")
    res = client.run(reqs)
    assert [r.ok for r in res] == [True, True] and [r.cached for r in res] == [False, False]
    assert res[0].content == "answer to what is shared?" and res[0].key == "explain/latent-1"
    assert (res[0].input_tokens, res[0].output_tokens, res[0].cost_usd) == (100, 20, pytest.approx(140e-6))
    assert len(server.calls) == 2
    call = next(c for c in server.calls if user_text(c["body"]) == "what is shared?")
    assert call["path"] == "/v1/chat/completions" and call["body"]["model"] == "test-vlm"
    assert call["headers"]["authorization"] == f"Bearer {SECRET}"  # the key is sent, in the header only
    url = call["body"]["messages"][1]["content"][1]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    np.testing.assert_array_equal(sent, image)

    again = VLMClient(config(server.url), tmp_path / "cache", tmp_path / "ledger.jsonl").run(reqs)
    assert len(server.calls) == 2  # nothing sent the second time
    assert [r.cached for r in again] == [True, True] and [r.content for r in again] == [r.content for r in res]
    rows = read_ledger(tmp_path / "ledger.jsonl")
    assert [(r["key"], r["cached"], r["ok"]) for r in rows[2:]] == [("explain/latent-1", True, True), ("explain/b", True, True)]
    totals = ledger_totals(rows)
    assert totals["input_tokens"] == 200 and totals["cached"] == 2 and totals["cost_usd"] == pytest.approx(280e-6)


def test_retry_after_429_and_500(tmp_path):
    script = [("status", 429, {"error": {"message": "slow down"}}), ("status", 500, {"error": {"message": "boom"}}), ("ok", "fine")]
    s = ChatServer(lambda i, body: script[i])
    try:
        (res,) = VLMClient(config(s.url), tmp_path).run(requests("a"))
    finally:
        s.close()
    assert res.ok and res.content == "fine" and res.attempts == 3 and len(s.calls) == 3


def test_timeout_is_retried_then_recorded_as_failure(tmp_path):
    s = ChatServer(lambda i, body: ("hang", 5))
    try:
        t0 = time.monotonic()
        (res,) = VLMClient(config(s.url, timeout_s=0.3, max_retries=1), tmp_path / "cache").run(requests("a"))
        elapsed = time.monotonic() - t0
    finally:
        s.close()
    assert not res.ok and "timeout" in res.error and res.attempts == 2 and len(s.calls) == 2
    assert elapsed < 3
    assert not list((tmp_path / "cache").glob("*.json"))  # failures are not cached


@pytest.mark.parametrize(
    "action, reason",
    [
        (("raw", b"<html>not json</html>"), "malformed reply"),
        (("raw", b'{"id": "x", "choices": []}'), "no choices"),
        (("ok", ""), "empty content"),
    ],
)
def test_malformed_reply_is_a_recorded_failure(tmp_path, action, reason):
    s = ChatServer(lambda i, body: action)
    try:
        (res,) = VLMClient(config(s.url), tmp_path / "cache", tmp_path / "ledger.jsonl").run(requests("a"))
    finally:
        s.close()
    assert not res.ok and reason in res.error and res.content is None and len(s.calls) == 1
    (row,) = read_ledger(tmp_path / "ledger.jsonl")
    assert row["ok"] is False and reason in row["error"]


def test_wrong_key_401_stops_the_run_after_one_call(tmp_path):
    s = ChatServer(lambda i, body: ("status", 401, {"error": {"message": f"Incorrect API key provided: {SECRET}"}}))
    try:
        with pytest.raises(VLMAuthError) as info:
            VLMClient(config(s.url, max_concurrency=4), tmp_path / "cache", tmp_path / "ledger.jsonl").run(requests(*"abcde"))
    finally:
        s.close()
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert f"refused the API key from ${KEY_ENV} (401)" in message and SECRET not in message
    assert len(s.calls) == 1  # no retry storm
    assert len(info.value.results) == 5 and not any(r.ok for r in info.value.results)
    assert SECRET not in (tmp_path / "ledger.jsonl").read_text()


def test_dead_endpoint_keeps_finished_and_names_the_failure(tmp_path):
    reqs = requests("a", "b", "c")
    s = ChatServer()
    VLMClient(config(s.url), tmp_path).run(reqs[:1])
    s.close()  # the endpoint dies: its port now refuses connections
    t0 = time.monotonic()
    res = VLMClient(config(s.url, max_retries=1), tmp_path).run(reqs)
    assert time.monotonic() - t0 < 3
    assert res[0].ok and res[0].cached and res[0].content == "answer to a"
    assert not res[1].ok and "connection error" in res[1].error and res[1].attempts == 2
    assert not res[2].ok and res[2].error.startswith("skipped: endpoint unreachable") and res[2].attempts == 0
    assert len(s.calls) == 1


def test_rerun_fills_exactly_the_gaps(server, tmp_path):
    server.responder = lambda i, body: ("status", 503, {}) if user_text(body) == "b" else ("ok", "ok " + user_text(body))
    first = VLMClient(config(server.url, max_retries=0), tmp_path).run(requests("a", "b", "c"))
    assert [r.ok for r in first] == [True, False, True] and "HTTP 503" in first[1].error
    server.responder = lambda i, body: ("ok", "ok " + user_text(body))
    server.calls.clear()
    second = VLMClient(config(server.url), tmp_path).run(requests("a", "b", "c"))
    assert [r.ok for r in second] == [True, True, True] and [r.cached for r in second] == [True, False, True]
    assert [user_text(c["body"]) for c in server.calls] == ["b"]


def test_structured_output_is_parsed(server, tmp_path):
    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    server.responder = lambda i, body: ("ok", json.dumps({"label": "red circles"}))
    (res,) = VLMClient(config(server.url), tmp_path).run(requests("a", json_schema=schema))
    assert res.ok and res.parsed == {"label": "red circles"}
    fmt = server.calls[0]["body"]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == schema


def test_structured_output_falls_back_to_json_in_text(server, tmp_path):
    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}

    def responder(i, body):
        if "response_format" in body:
            return ("status", 400, {"error": {"message": "response_format is not supported"}})
        return ("ok", 'Sure:\n```json\n{"label": "stripes"}\n```')

    server.responder = responder
    client = VLMClient(config(server.url), tmp_path)
    res = client.run(requests("a", "b", json_schema=schema))
    assert [r.parsed for r in res] == [{"label": "stripes"}] * 2
    assert ["response_format" in c["body"] for c in server.calls] == [True, False, False]  # learnt once
    assert "JSON schema" in server.calls[1]["body"]["messages"][0]["content"]

    server.responder = lambda i, body: ("ok", "no JSON here")
    (bad,) = client.run(requests("c", json_schema=schema))
    assert not bad.ok and "malformed reply" in bad.error


def test_the_key_appears_in_no_file(server, tmp_path):
    def responder(i, body):
        text = user_text(body)
        if text == "fail":
            return ("status", 500, {"error": {"message": f"upstream rejected {SECRET}"}})
        return ("ok", "fine")

    server.responder = responder
    cfg = config(server.url, max_retries=1)
    client = VLMClient(cfg, tmp_path / "cache", tmp_path / "ledger.jsonl")
    res = client.run(requests("ok", "fail"))
    assert [r.ok for r in res] == [True, False]
    server.responder = lambda i, body: ("status", 401, {"error": {"message": f"bad key {SECRET}"}})
    with pytest.raises(VLMAuthError) as info:
        VLMClient(config(server.url), tmp_path / "cache", tmp_path / "ledger.jsonl").run(requests("other"))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 2
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p
    for text in (repr(cfg), repr(client), str(info.value), *(str(r) for r in res), *(str(r) for r in info.value.results)):
        assert SECRET not in text


def test_dry_run_makes_no_calls_and_needs_no_key(server, tmp_path, monkeypatch):
    reqs = requests("a", "b", "c")
    VLMClient(config(server.url, max_tokens=100), tmp_path).run(reqs[:1])
    assert len(server.calls) == 1
    monkeypatch.delenv(KEY_ENV)
    client = VLMClient(config(server.url, price_in_per_mtok=0.3, price_out_per_mtok=2.5, max_tokens=100), tmp_path)
    summary = client.dry_run(reqs)
    assert len(server.calls) == 1
    assert (summary["requests"], summary["cached"], summary["calls"]) == (3, 1, 2)
    assert summary["input_tokens_est"] == sum(client.estimate_tokens(r) for r in reqs[1:])
    assert summary["output_tokens_max"] == 200
    assert summary["cost_usd_max"] == pytest.approx((summary["input_tokens_est"] * 0.3 + 200 * 2.5) / 1e6)
    text = format_dry_run(summary)
    assert "call explain/b" in text and "call explain/a" not in text and "2 calls" in text
    assert client.run(reqs[:1])[0].cached  # fully cached: no key needed
    with pytest.raises(ValueError, match=KEY_ENV):
        client.run(reqs)
    assert len(server.calls) == 1


def test_bounded_concurrency(tmp_path):
    s = ChatServer(lambda i, body: (time.sleep(0.1), ("ok", "x"))[1])
    try:
        res = VLMClient(config(s.url, max_concurrency=2), tmp_path).run(requests(*"abcdef"))
    finally:
        s.close()
    assert all(r.ok for r in res) and len(s.calls) == 6 and s.max_inflight == 2


def test_identical_requests_are_sent_once(server, tmp_path):
    a, b = (VLMRequest(k, "sys", "same", [png()]) for k in ("explain/same", "explain/other"))
    res = VLMClient(config(server.url), tmp_path).run([a, b])
    assert [r.key for r in res] == ["explain/same", "explain/other"] and all(r.ok for r in res)
    assert len(server.calls) == 1


def test_estimates_and_parsing():
    assert image_tokens(png(64, 48)) == 85 + 170
    assert image_tokens(png(1024, 1024)) == 85 + 170 * 4  # scaled to 768 x 768
    req = VLMRequest("k", "s" * 40, "t" * 40, [png(), png()])
    client = VLMClient(VLMConfig(api_key_env=KEY_ENV), "unused")
    assert client.estimate_tokens(req) == 8 + 20 + 2 * 255
    assert parse_json_reply('noise {"a": 1} noise') == {"a": 1}
    with pytest.raises(ValueError):
        parse_json_reply("[1, 2]")
    with pytest.raises(ValueError):
        to_png(np.zeros((4, 4), np.float32))


def test_keyless_local_server_and_exhausted_account(server, tmp_path):
    (res,) = VLMClient(config(server.url, api_key_env=""), tmp_path).run(requests("a"))
    assert res.ok and server.calls[0]["headers"]["authorization"] == "Bearer no-key"
    server.responder = lambda i, body: ("status", 402, {"error": {"message": "insufficient credits"}})
    server.calls.clear()
    with pytest.raises(VLMFatalError, match=r"no credit left \(402\)"):
        VLMClient(config(server.url), tmp_path).run(requests("b", "c", "d"))
    assert len(server.calls) == 1
