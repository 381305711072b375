"""The Markdown files the steps write, as HTML for the report: markdown-it-py (CommonMark with
GitHub's tables), raw HTML in the text escaped, headings moved under the report's own h1/h2, and
images of existing PNG files embedded (other images dropped: the page fetches nothing)."""

from __future__ import annotations

from pathlib import Path

from markdown_it import MarkdownIt

from lmscope.report.figures import img_tag


def markdown_to_html(text: str, base: Path) -> str:
    """`text` (Markdown) as HTML; images are looked up relative to the folder `base`."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    rules = md.renderer.rules

    def heading(tokens, idx, options, env):
        token = tokens[idx]
        level = min(int(token.tag[1]) + 2, 6)  # under the report's own h1/h2
        return f"<h{level}>" if token.nesting == 1 else f"</h{level}>\n"

    def image(tokens, idx, options, env):
        token = tokens[idx]
        path = base / str(token.attrGet("src") or "")
        alt = "".join(child.content for child in token.children or [])
        return img_tag(path, alt) if path.suffix == ".png" and path.is_file() else ""

    rules["heading_open"] = rules["heading_close"] = heading
    rules["image"] = image
    return md.render(text)
