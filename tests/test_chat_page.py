"""The chat page at `/` in a real browser: Debian's headless Chromium driven by Playwright.

A screenshot is kept as an artifact: under $MINIGRAD_SCREENSHOT_DIR when set, else pytest's
tmp dir (the path is printed). Skips only where Chromium or the playwright package is missing.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from serve_helpers import Served, save_tiny_run

CHROMIUM = os.environ.get("MINIGRAD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, needs_tokenizer):
    s = Served("--init", str(save_tiny_run(tmp_path_factory.mktemp("chat") / "run", task="instruct")),
               "--model-name", "tiny-instruct")
    yield s
    s.close()


def screenshot_path(tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("MINIGRAD_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def test_chat_page_streams_an_answer_and_stops(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    seen_chunks = []
    page.on("response", lambda r: seen_chunks.append(r.url))
    try:
        page.goto(server.url + "/", timeout=30_000)
        page.wait_for_function("document.getElementById('model').textContent.startsWith('tiny-instruct')",
                               timeout=30_000)
        assert "(instruct)" in page.inner_text("#model")

        # a short answer: type, send with Enter, wait for the stream to finish
        page.fill("#temperature", "0")
        page.fill("#max-tokens", "12")
        page.fill("#input", "Name three colours.")
        page.press("#input", "Enter")
        page.wait_for_selector(".msg.assistant[data-state=done]", timeout=60_000)
        answer = page.locator(".msg.assistant").first
        meta = answer.locator(".meta").inner_text()
        assert meta in ("finished: length", "finished: stop"), meta
        text = answer.inner_text().replace(meta, "").strip()
        assert page.locator(".msg.user").first.inner_text() == "Name three colours."

        # the page's text is what the API gives for the same request (greedy: deterministic)
        from test_serve import post
        _, r = post(server.url + "/v1/chat/completions",
                    {"messages": [{"role": "user", "content": "Name three colours."}],
                     "temperature": 0, "max_tokens": 12})
        assert text == r["choices"][0]["message"]["content"].strip()
        assert any(u.endswith("/v1/chat/completions") for u in seen_chunks)

        # a long answer, stopped from the page while it streams
        page.fill("#temperature", "1")
        page.fill("#max-tokens", "900")
        page.fill("#input", "Tell me a long story.")
        page.click("#send")
        page.wait_for_function("document.querySelectorAll('.msg.assistant')[1]"
                               "&& document.querySelectorAll('.msg.assistant')[1].textContent.length > 0",
                               timeout=60_000)
        page.click("#stop")
        page.wait_for_selector(".msg.assistant >> nth=1 >> .meta", timeout=30_000)
        assert page.locator(".msg.assistant").nth(1).locator(".meta").inner_text() == "stopped"
        assert page.is_enabled("#send") and not page.is_enabled("#stop")

        shot = screenshot_path(tmp_path, "chat_page.png")
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 1000
    finally:
        page.close()
