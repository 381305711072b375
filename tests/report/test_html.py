import base64
import re

import pytest

from lmscope.errors import LmscopeError
from lmscope.report.html import markdown_to_html
from lmscope.study.runner import write_report


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


def test_the_attention_view_embeds_the_maps(tiny_run, tmp_path):
    """A study folder with attention.json gets the hover view, its data and its script; a page
    without one gets no script."""
    import json
    import shutil

    from lmscope.analysis.attention import attention_probe

    study = tmp_path / "study"
    shutil.copytree(tiny_run, study / "runs" / "tiny")
    (study / "study.json").write_text(json.dumps({"name": "tiny"}))
    assert "<script" not in write_report(study).read_text()
    attention_probe(study / "runs" / "tiny", "All:", study / "attention" / "tiny")
    path = study / "attention" / "tiny" / "attention.json"
    maps = json.loads(path.read_text())
    path.write_text(json.dumps({**maps, "prompt": "<!--<script>All:</script>"}))  # hostile
    page = write_report(study).read_text()
    assert page.count('class="attn"') == 1 and page.count("<script>") == 1
    data = re.search(r'<script type="application/json" id="attention-maps-0">(.*?)</script>',
                     page, re.S).group(1)
    assert "<" not in data  # the prompt's "</script>" or "<!--" cannot end the data block
    maps = json.loads(data)
    assert maps["prompt"] == "<!--<script>All:</script>" and len(maps["checkpoints"]) == 1
    assert '<option value="1" selected>1</option>' in page  # the last layer is shown first
