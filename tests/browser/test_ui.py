"""The feature browser in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) opens the
index, follows a feature, draws a steering box, runs one steering request on the tiny embedded model and checks
what the page shows; a screenshot is saved in the test's temp folder. A page left while its steering request waits
cancels it (the request is never generated).

Enable on a laptop with: apt-get install chromium (or any Chromium on PATH as `chromium`) and
pip install 'difflens[test]' (Playwright; its own browser download is not needed).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time

import pytest

HOW = "install Debian's chromium (apt-get install chromium) and pip install playwright to run the browser UI test"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, app) of the browser on a tiny run, served by uvicorn in a thread."""
    if shutil.which("chromium") is None:
        pytest.skip(f"chromium is not on PATH: {HOW}")
    pytest.importorskip("playwright.sync_api", reason=f"playwright is not installed: {HOW}")
    pytest.importorskip("uvicorn")
    pytest.importorskip("difflens.steering", reason="the steering API is not importable")
    import uvicorn

    from difflens.browser.app import create_app
    from runs import build_run

    run = build_run(tmp_path_factory.mktemp("ui") / "run")
    app = create_app(run)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def server(served):
    return served[0]


def test_index_feature_and_live_steering_in_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
            page.goto(server + "/")
            assert page.locator("a.dict-link", has_text="sae").first.is_visible()
            page.locator("a.dict-link", has_text="sae").first.click()
            page.wait_for_url("**/d/sae")
            rows = page.locator("a.feature-link")
            assert rows.count() > 3
            # the hostile explanation is shown as text, not run
            assert page.get_by_text('<script>alert("x")</script>', exact=False).count() >= 1
            rows.first.click()
            page.wait_for_url("**/d/sae/f/*")
            latent = page.locator("#latent-id").inner_text()
            assert page.locator(".tile .paint").count() >= 1
            page.locator(".tile .paint").first.evaluate("img => img.decode()")
            # opacity slider acts on the overlays; hovering a token shows its value
            page.locator("#opacity").fill("40")
            assert page.locator(".tile .paint").first.evaluate("img => getComputedStyle(img).opacity") == "0.4"
            stack = page.locator(".tile .stack").first
            stack.hover(position={"x": 60, "y": 60})
            page.wait_for_function("() => !document.querySelector('.tile .tip').hidden")
            assert page.locator(".tile .tip").first.inner_text().startswith("token (")
            # live steering: a prompt the model knows, a box drawn on the image, strength up, generate
            page.locator("#steer").scroll_into_view_if_needed()
            page.fill("textarea[name=prompt]", "a red circle in the center on a white background")
            page.fill("input[name=seed]", "3")
            page.locator("input[name=strength]").fill("10")
            pad = page.locator("#boxpad").bounding_box()
            page.mouse.move(pad["x"] + 0.2 * pad["width"], pad["y"] + 0.2 * pad["height"])
            page.mouse.down()
            page.mouse.move(pad["x"] + 0.5 * pad["width"], pad["y"] + 0.5 * pad["height"], steps=5)
            page.mouse.move(pad["x"] + 0.8 * pad["width"], pad["y"] + 0.7 * pad["height"], steps=5)
            page.mouse.up()
            assert page.locator("#box").is_visible()
            assert page.locator("#box-label").inner_text().startswith("region: box x 0.20")
            page.click("#steer-go")
            page.wait_for_selector("#steer-results:not([hidden])", timeout=120_000)
            assert page.locator("#steer-status").inner_text().startswith("done in")
            for which in ("#steer-baseline", "#steer-steered"):
                assert page.locator(which).evaluate("img => img.naturalWidth") > 0
            record = page.locator("#steer-record").inner_text()
            assert "mode: add" in record and "tokens:" in record
            shot = tmp_path / f"feature_{latent}_steered.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            # a request beyond the limits shows the reason
            page.locator("input[name=num_steps]").fill("999")
            page.click("#steer-go")
            page.wait_for_function("() => document.querySelector('#steer-status').textContent.startsWith('refused')")
            assert "beyond the limit" in page.locator("#steer-status").inner_text()
        finally:
            browser.close()
    assert not errors, errors


def test_a_steering_request_is_cancelled_when_its_page_is_left(served):
    """The page sends DELETE for its waiting job when it is left (pagehide): the job is dropped unrun."""
    from playwright.sync_api import sync_playwright

    url, app = served
    service = app.state.steering
    gate, ran = threading.Event(), []

    def fake(settings):
        ran.append(settings["seed"])
        gate.wait(30)
        return {"baseline": "data:,", "steered": "data:,", "record": {}}

    real, service._generate = service._generate, fake  # the worker calls this; restored below
    try:
        busy = service.submit({"dictionary": "sae", "latent": 1, "prompt": "a red circle", "seed": 1, "num_steps": 2})
        deadline = time.time() + 10
        while service.status(busy.id)["status"] != "running" and time.time() < deadline:
            time.sleep(0.02)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            try:
                page = browser.new_page()
                page.goto(url + "/d/sae/f/1")
                page.fill("textarea[name=prompt]", "a red circle")
                page.fill("input[name=seed]", "7")
                page.click("#steer-go")
                page.wait_for_function("() => document.querySelector('#steer-status').textContent"
                                       ".startsWith('queued: position 1')")
                mine = str(int(busy.id) + 1)
                page.goto(url + "/")  # leaving the page: it cancels its job
                deadline = time.time() + 10
                while service.status(mine)["status"] == "queued" and time.time() < deadline:
                    time.sleep(0.02)
            finally:
                browser.close()
        status = service.status(mine)
        assert status["status"] == "cancelled" and "cancelled by its page" in status["message"]
        gate.set()
        deadline = time.time() + 10
        while service.status(busy.id)["status"] == "running" and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.1)
        assert ran == [1]  # the left page's request (seed 7) never ran
    finally:
        gate.set()
        service._generate = real
