"""Open an lmscope report in headless Chromium and check it as a reader would see it.

Used by tests/report/test_browser.py (a tiny study, a probe's folder) and by the quick domain
study test. Needs the `playwright` Python package (a dev extra) and a Chromium binary: Debian's
`chromium` package, which .ci/run installs, or $LMSCOPE_CHROMIUM. Where either is missing the
test is skipped and says why. Screenshots go to $LMSCOPE_ARTIFACTS (default: test-artifacts/ in
the repository): the whole page, top to bottom, in screens of WIDTH x HEIGHT pixels, and each
interactive view. Every check waits for a state of the page, never for a time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WIDTH, HEIGHT = 1400, 900  # the window the report is checked in: no horizontal overflow there


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


def _attention_state(view) -> dict:
    """What the attention view shows now: the query label, and each key's colour per head."""
    return view.evaluate("""v => ({
        query: v.querySelector('.attn-query').textContent,
        checkpoint: v.querySelector('.attn-checkpoint-name').textContent,
        heads: Array.from(v.querySelectorAll('.attn-heads .head')).map(h =>
            Array.from(h.querySelectorAll('.tokens span')).map(s =>
                s.classList.contains('future') ? 'future' : s.style.background)),
    })""")


def check_attention(page, shots: dict, name: str) -> dict:
    """Hovering a prompt token and moving the checkpoint slider change the first attention
    view; returns its states before and after the hover."""
    view = page.locator(".attn").first
    view.scroll_into_view_if_needed()
    before = _attention_state(view)
    assert before["heads"] and before["query"].startswith("query ")
    tokens = view.locator(".query-row span")
    tokens.nth(1).hover()
    page.wait_for_function("v => v.querySelector('.attn-query').textContent"
                           ".startsWith('query 1:')", arg=view.element_handle())
    after = _attention_state(view)
    assert after["heads"] != before["heads"]
    # from query 1 only keys 0 and 1 can be attended to; the rest are greyed out
    assert all(row[2:] == ["future"] * (len(row) - 2) for row in after["heads"])
    last = tokens.nth(tokens.count() - 1)
    last.hover()
    slider = view.locator(".attn-checkpoint")
    if int(slider.get_attribute("max")) > 0:
        slider.fill("0")  # sets the value and fires 'input': the first checkpoint
        first = _attention_state(view)
        assert first["checkpoint"] != before["checkpoint"]
        assert first["heads"] != before["heads"]
        slider.fill(slider.get_attribute("max"))
    last.hover()
    shots["attention"] = artifacts_dir() / f"{name}-attention.png"
    view.screenshot(path=shots["attention"])
    return {"before": before, "after": after}


def check_chart(page, shots: dict, name: str) -> dict:
    """The first chart: hovering the plot shows values in its legend, clicking a legend entry
    hides that series and clicking again shows it; returns the legend's labels and the values
    read at the hover."""
    chart = page.locator(".chart").first
    chart.scroll_into_view_if_needed()
    chart.locator("canvas").wait_for()
    values = chart.locator(".u-legend .u-value")
    over = chart.locator(".u-over")
    box = over.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    page.wait_for_function("c => Array.from(c.querySelectorAll('.u-legend .u-value')).some("
                           "v => /[0-9]/.test(v.textContent))", arg=chart.element_handle())
    read = values.all_text_contents()
    assert any(any(ch.isdigit() for ch in v) for v in read[1:]), read  # a series' value
    shots["chart"] = artifacts_dir() / f"{name}-chart.png"
    chart.screenshot(path=shots["chart"])
    entry = chart.locator(".u-legend .u-series").nth(1)  # the first series (0 is the x axis)
    entry.locator("th").click()
    page.wait_for_function("e => e.classList.contains('u-off')", arg=entry.element_handle())
    shots["chart-toggled"] = artifacts_dir() / f"{name}-chart-toggled.png"
    chart.screenshot(path=shots["chart-toggled"])
    entry.locator("th").click()
    page.wait_for_function("e => !e.classList.contains('u-off')", arg=entry.element_handle())
    labels = chart.locator(".u-legend .u-series .u-label").all_text_contents()
    return {"legend": labels, "values": read}


def check_matrix(page, shots: dict, name: str) -> str:
    """Hovering a cell of the zero-shot matrix reads it out; the units switch to bits."""
    view = page.locator(".matrix").first
    view.scroll_into_view_if_needed()
    cell = view.locator("td[data-r]").first
    nats = cell.text_content()
    cell.hover()
    page.wait_for_function("v => v.querySelector('.matrix-readout').textContent.includes("
                           "'nats/char')", arg=view.element_handle())
    readout = view.locator(".matrix-readout").text_content()
    view.locator("input[value=bits]").check()
    page.wait_for_function("([c, before]) => c.textContent !== before",
                           arg=[cell.element_handle(), nats])
    shots["matrix"] = artifacts_dir() / f"{name}-matrix.png"
    view.screenshot(path=shots["matrix"])
    view.locator("input[value=nats]").check()
    return readout


def check_attribution(page, shots: dict, name: str) -> None:
    """The attribution view's slider recolours the characters for another checkpoint."""
    view = page.locator(".attribution").first
    view.scroll_into_view_if_needed()

    def colours():
        return view.evaluate("v => Array.from(v.querySelectorAll('.chars span')).map("
                             "s => s.style.background)")

    final = colours()
    label = view.locator(".attribution-name").text_content()
    slider = view.locator(".attribution-checkpoint")
    if int(slider.get_attribute("max")) > 0:
        slider.fill("0")
        assert view.locator(".attribution-name").text_content() != label
        assert colours() != final
        slider.fill(slider.get_attribute("max"))
        assert colours() == final
    shots["attribution"] = artifacts_dir() / f"{name}-attribution.png"
    view.screenshot(path=shots["attribution"])


def check_continuation(page, shots: dict, name: str) -> str:
    """The continuation view draws a generated-tokens x inputs table with cells only where the
    step could see; another method or checkpoint recolours it; hovering a cell reads it out.
    Returns the readout."""
    view = page.locator(".continuation").first
    view.scroll_into_view_if_needed()

    def cells():
        return view.evaluate("v => Array.from(v.querySelectorAll('td')).map("
                             "c => c.style.background)")

    final = cells()
    rows = view.locator("table tr").count() - 1  # the header row
    coloured = sum(1 for c in final if c)
    assert rows >= 1 and 0 < coloured < len(final), (rows, coloured, len(final))
    methods = view.locator(".continuation-method option").all_text_contents()
    if len(methods) > 1:
        view.locator(".continuation-method").select_option(methods[1])
        assert cells() != final
        view.locator(".continuation-method").select_option(methods[0])
        assert cells() == final
    slider = view.locator(".continuation-checkpoint")
    if int(slider.get_attribute("max")) > 0:
        slider.fill("0")
        assert cells() != final
        slider.fill(slider.get_attribute("max"))
    view.locator("td[data-text]").first.hover()
    readout = view.locator(".continuation-readout").text_content()
    assert readout.startswith("step 0 writes ") and "input 0 " in readout, readout
    shots["continuation"] = artifacts_dir() / f"{name}-continuation.png"
    view.screenshot(path=shots["continuation"])
    return readout


def check_lens(page, shots: dict, name: str) -> str:
    """The lens view's slider redraws the cells for another checkpoint; hovering a cell reads it
    out. Returns the readout."""
    view = page.locator(".lens").first
    view.scroll_into_view_if_needed()

    def cells():
        return view.evaluate("v => Array.from(v.querySelectorAll('td.cell')).map("
                             "c => c.textContent + c.style.background)")

    final = cells()
    assert all(final), "a lens cell is empty"
    slider = view.locator(".lens-checkpoint")
    if int(slider.get_attribute("max")) > 0:
        slider.fill("0")
        assert cells() != final
        slider.fill(slider.get_attribute("max"))
        assert cells() == final
    view.locator("td.cell").nth(3).hover()
    readout = view.locator(".lens-readout").text_content()
    assert readout.startswith(view.locator("tbody th").first.text_content() + ", position 3:")
    shots["lens"] = artifacts_dir() / f"{name}-lens.png"
    view.screenshot(path=shots["lens"])
    return readout


def check_similarity(page, shots: dict, name: str) -> str:
    """The similarity view's slider redraws the CKA cells for another checkpoint and back;
    hovering a cell reads out its pair, layers and value. Returns the readout."""
    view = page.locator(".similarity").first
    view.scroll_into_view_if_needed()

    def cells():
        return view.evaluate("v => Array.from(v.querySelectorAll('td.cell')).map("
                             "c => c.textContent + c.style.background)")

    final = cells()
    assert final and all(final), "a similarity cell is empty"
    slider = view.locator(".similarity-checkpoint")
    if int(slider.get_attribute("max")) > 0:
        slider.fill("0")
        assert cells() != final
        slider.fill(slider.get_attribute("max"))
        assert cells() == final
    view.locator("td.cell").first.hover()
    readout = view.locator(".similarity-readout").text_content()
    assert " layer embed / " in readout and ": CKA " in readout, readout
    shots["similarity"] = artifacts_dir() / f"{name}-similarity.png"
    view.screenshot(path=shots["similarity"])
    return readout


def check_report(page_path: Path, screenshot_name: str) -> dict:
    """Load the report in a WIDTH-pixel window; assert no console errors, every image decodes,
    nothing overflows the window's width, and every kind of interactive view on the page works
    (attention, charts, the matrix, attribution and continuations, the lens,
    similarity). Screenshots the page top to bottom. Returns
    what it saw and the screenshots' paths."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    shots: dict = {}
    seen: dict = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_or_skip())
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            decoded = page.evaluate("""() => Promise.all(Array.from(document.images).map(
                i => i.decode().then(() => i.naturalWidth > 0, () => false)))""")
            assert all(decoded), f"{decoded.count(False)} of {len(decoded)} images do not decode"
            seen["images"] = len(decoded)
            # every folded part open, so that the width check sees all of the page
            folded = page.evaluate("""() => Array.from(document.querySelectorAll('details'))
                .map((d, i) => [d.open, d.open = true][0] ? -1 : i).filter(i => i >= 0)""")
            seen["scroll_width"] = page.evaluate("document.documentElement.scrollWidth")
            assert seen["scroll_width"] <= WIDTH, (
                f"the page is {seen['scroll_width']} px wide in a {WIDTH} px window: "
                + page.evaluate(_WIDEST))
            page.evaluate("folded => folded.forEach(i => "
                          "document.querySelectorAll('details')[i].open = false)", folded)
            seen["views"] = {kind: page.locator(selector).count() for kind, selector in
                             (("attention", ".attn"), ("chart", ".chart"),
                              ("matrix", ".matrix"), ("attribution", ".attribution"),
                              ("lens", ".lens"), ("similarity", ".similarity"),
                              ("continuation", ".continuation"))}
            if seen["views"]["attention"]:
                seen.update(check_attention(page, shots, screenshot_name))
            if seen["views"]["chart"]:
                seen.update(check_chart(page, shots, screenshot_name))
            if seen["views"]["matrix"]:
                seen["matrix_readout"] = check_matrix(page, shots, screenshot_name)
            if seen["views"]["attribution"]:
                check_attribution(page, shots, screenshot_name)
            if seen["views"]["continuation"]:
                seen["continuation_readout"] = check_continuation(page, shots, screenshot_name)
            if seen["views"]["lens"]:
                seen["lens_readout"] = check_lens(page, shots, screenshot_name)
            if seen["views"]["similarity"]:
                seen["similarity_readout"] = check_similarity(page, shots, screenshot_name)
            page.mouse.move(0, 0)
            shots["screens"] = _screens(page, screenshot_name)
            shots["page"] = shots["screens"][0]
        finally:
            browser.close()
    assert not errors, f"console errors: {errors}"
    return {**seen, "screenshots": shots}


# the elements wider than the window, for the message of a failed width check
_WIDEST = f"""() => Array.from(document.querySelectorAll('body *')).filter(
    e => e.getBoundingClientRect().right > {WIDTH}).slice(0, 5).map(
    e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right)
    ).join(', ')"""


def _screens(page, name: str) -> list[Path]:
    """The whole page, top to bottom, in screens of the window's size: NAME-01.png, ..."""
    out = artifacts_dir()
    for old in out.glob(f"{name}-[0-9][0-9].png"):
        old.unlink()
    height = page.evaluate("document.documentElement.scrollHeight")
    paths = []
    for i, top in enumerate(range(0, height, HEIGHT)):
        path = out / f"{name}-{i + 1:02d}.png"
        page.screenshot(path=path, full_page=True, clip={
            "x": 0, "y": top, "width": WIDTH, "height": min(HEIGHT, height - top)})
        paths.append(path)
    return paths
