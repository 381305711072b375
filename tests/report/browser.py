"""Open an lmscope report in headless Chromium and check it as a reader would see it.

Used by tests/report/test_browser.py (a tiny study) and by the quick domain study test. Needs the
`playwright` Python package (a dev extra) and a Chromium binary: Debian's `chromium` package,
which .ci/run installs, or $LMSCOPE_CHROMIUM. Where either is missing the test is skipped and
says why. Screenshots go to $LMSCOPE_ARTIFACTS (default: test-artifacts/ in the repository).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def chromium_or_skip() -> str:
    pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright "
                        "(pip install -e '.[dev]')")
    for name in (os.environ.get("LMSCOPE_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome"):
        found = name and shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium found (apt-get install chromium, or set LMSCOPE_CHROMIUM)")


def artifacts_dir() -> Path:
    path = Path(os.environ.get("LMSCOPE_ARTIFACTS", REPO / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _view_state(view) -> dict:
    """What the attention view shows now: the query label, and each key's colour per head."""
    return view.evaluate("""v => ({
        query: v.querySelector('.attn-query').textContent,
        checkpoint: v.querySelector('.attn-checkpoint-name').textContent,
        heads: Array.from(v.querySelectorAll('.attn-heads .head')).map(h =>
            Array.from(h.querySelectorAll('.tokens span')).map(s =>
                s.classList.contains('future') ? 'future' : s.style.background)),
    })""")


def check_report(page_path: Path, screenshot_name: str) -> dict:
    """Load the report; assert no console errors, every image decodes, and hovering a prompt
    token (and moving the checkpoint slider) changes the attention view. Returns what it saw and
    the screenshots' paths."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_or_skip())
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            decoded = page.evaluate("""() => Promise.all(Array.from(document.images).map(
                i => i.decode().then(() => i.naturalWidth > 0, () => false)))""")
            assert decoded and all(decoded), f"{decoded.count(False)} of {len(decoded)} " \
                "images do not decode"

            views = page.locator(".attn")
            assert views.count() > 0, "the report has no attention view"
            view = views.first
            view.scroll_into_view_if_needed()
            before = _view_state(view)
            assert before["heads"] and before["query"].startswith("query ")
            tokens = view.locator(".query-row span")
            tokens.nth(1).hover()
            after = _view_state(view)
            assert after["query"].startswith("query 1:") and after["heads"] != before["heads"]
            # from query 1 only keys 0 and 1 can be attended to; the rest are greyed out
            assert all(row[2:] == ["future"] * (len(row) - 2) for row in after["heads"])
            last = tokens.nth(tokens.count() - 1)
            last.hover()
            slider = view.locator(".attn-checkpoint")
            if int(slider.get_attribute("max")) > 0:
                slider.fill("0")  # sets the value and fires 'input': the first checkpoint
                first = _view_state(view)
                assert first["checkpoint"] != before["checkpoint"]
                assert first["heads"] != before["heads"]
                slider.fill(slider.get_attribute("max"))
            last.hover()

            out = artifacts_dir()
            shots = {"page": out / f"{screenshot_name}.png",
                     "attention": out / f"{screenshot_name}-attention.png"}
            view.screenshot(path=shots["attention"])
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=shots["page"])
        finally:
            browser.close()
    assert not errors, f"console errors: {errors}"
    return {"images": len(decoded), "views": views, "before": before, "after": after,
            "screenshots": shots}
