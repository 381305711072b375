import base64
import re

import pytest

from lmscope.errors import LmscopeError
from lmscope.report.html import markdown_to_html, write_report


def test_a_run_report_is_one_self_contained_page(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    path = write_report(run)
    page = path.read_text()
    assert path == run / "report.html" and page.startswith("<!doctype html>")
    # every image is embedded and decodes as a PNG; nothing is fetched from elsewhere
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert images and all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "Run: run" in page and "config.toml" in page and "iter_0000020" in page
    mtime = path.stat().st_mtime_ns
    write_report(run)  # unchanged content: the file is not rewritten
    assert path.stat().st_mtime_ns == mtime


def test_markdown_subset(tmp_path):
    md = ("# Title\n\nSome **bold** and `code` <script>.\n\n| a | b \\| c |\n|---|---|\n"
          "| 1 | x \\| y |\n\n```text\n<raw>\n```\n")
    out = markdown_to_html(md, tmp_path)
    assert "<h3>Title</h3>" in out and "<b>bold</b>" in out and "<code>code</code>" in out
    assert "&lt;script&gt;" in out and "<script>" not in out  # text is escaped
    assert "<th>b | c</th>" in out and "<td>x | y</td>" in out
    assert "<pre>&lt;raw&gt;</pre>" in out


def test_a_folder_that_is_neither_is_refused(tmp_path):
    with pytest.raises(LmscopeError, match="neither a run folder"):
        write_report(tmp_path)
