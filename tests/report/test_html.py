import base64
import json
import re
import shutil
import struct
import subprocess
import sys

import pytest

from lmscope.analysis import cross_domain
from lmscope.analysis.attention import attention_probe
from lmscope.errors import LmscopeError
from lmscope.render import plots
from lmscope.report.charts import Series, line_chart
from lmscope.report.figures import png_display_width
from lmscope.report.markdown import markdown_to_html
from lmscope.study.runner import write_report


def test_a_run_report_is_one_self_contained_page(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    path = write_report(run)
    page = path.read_text()
    assert path == run / "report.html" and page.startswith("<!doctype html>")
    # nothing is fetched from elsewhere: no src or href to another place, no module import
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert not re.search(r"\bimport\s*\(|fetch\(|XMLHttpRequest", page)
    assert "Run: run" in page and "config.toml" in page and "iter_0000020" in page
    # the loss curves are an interactive chart with uPlot embedded, not a picture
    assert 'class="chart"' in page and "uPlot" in page and "loss.png" not in page
    mtime = path.stat().st_mtime_ns
    write_report(run)  # unchanged content: the file is not rewritten
    assert path.stat().st_mtime_ns == mtime


def test_figures_are_embedded_at_their_print_size(tmp_path):
    """A PNG shows at its width in inches times 96 CSS pixels: the same scale for all."""
    fig, (ax,) = plots.panels(1, title="t", width=5, height=3)
    ax.plot([0, 1], [0, 1])
    data = plots.save(fig, tmp_path / "a.png").read_bytes()
    width = struct.unpack(">I", data[16:20])[0]
    assert png_display_width(data) == width  # saved at 96 dpi: one pixel per CSS pixel
    # the same picture said to be at 192 dpi shows at half its pixel width
    at = data.find(b"pHYs")
    ppm = round(192 / 0.0254)
    doubled = data[:at + 4] + struct.pack(">IIB", ppm, ppm, 1) + data[at + 13:]
    assert png_display_width(doubled) == round(width / 2)
    assert png_display_width(b"not a png") is None


def test_figures_keep_their_colours(tmp_path):
    """A figure saved in 256 colours: every pixel within 16 (of 255) of matplotlib's own
    rendering, for lines of all ten default colours, faint and solid, and a colour map."""
    import io

    import numpy as np
    from PIL import Image

    def figure():
        fig, (ax_lines, ax_map) = plots.panels(2, title="colours")
        for i in range(10):
            ax_lines.plot([0, 1, 2], [i, i + 1, i], color=f"C{i}", alpha=0.7, marker=".",
                          label=f"C{i}")
            ax_lines.plot([0, 1, 2], [i + 0.5, i + 0.2, i + 0.5], color=f"C{i}")
        ax_lines.legend(fontsize=7)
        ax_map.imshow(np.linspace(0, 1, 400).reshape(20, 20), cmap="magma")
        return fig

    saved = np.asarray(Image.open(plots.save(figure(), tmp_path / "f.png")).convert("RGB"))
    buffer = io.BytesIO()
    figure().savefig(buffer, format="png", dpi=plots.DPI)
    reference = np.asarray(Image.open(buffer).convert("RGB"))
    assert saved.shape == reference.shape
    assert np.abs(saved.astype(int) - reference.astype(int)).max() <= 16


def test_a_figure_is_drawn_unless_its_path_matches_a_pattern():
    """plots.drawn: patterns match from the right, as the report's hidden figures do."""
    assert plots.drawn("s/attention/math/attention_L1.png", ("attention_L*_H*.png",))
    assert not plots.drawn("s/attention/math/attention_L1_H0.png", ("attention_L*_H*.png",))
    assert not plots.drawn("s/lens/math/grid_1.png", ("*/grid_*.png",))
    assert plots.drawn("grid_1.png", ("*/grid_*.png",))  # no folder above it
    assert plots.drawn("s/lens/math/grid_1.png", ())


def test_markdown(tmp_path):
    """markdown-it-py: raw HTML is escaped, headings sit under the report's, images of PNG
    files are embedded and others dropped."""
    fig, (ax,) = plots.panels(1, title="t")
    plots.save(fig, tmp_path / "fig.png")
    md = ("# Title\n\nSome **bold** and `code` <script>.\n\n| a | b \\| c |\n|---|---|\n"
          "| 1 | x \\| y |\n\n```text\n<raw>\n```\n\n![a figure](fig.png) ![gone](http://x/y.png)"
          "\n")
    out = markdown_to_html(md, tmp_path)
    assert "<h3>Title</h3>" in out and "<strong>bold</strong>" in out
    assert "<code>code</code>" in out
    assert "&lt;script&gt;" in out and "<script>" not in out  # text is escaped
    assert "<th>b | c</th>" in out and "<td>x | y</td>" in out
    assert "&lt;raw&gt;" in out and "<pre>" in out
    images = re.findall(r'<img alt="([^"]*)" width="\d+" src="data:image/png;base64,([^"]+)"',
                        out)
    assert [alt for alt, _ in images] == ["a figure"]
    assert base64.b64decode(images[0][1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in out


def test_a_chart_holds_its_data_and_nothing_can_end_its_script(tmp_path):
    html = line_chart([Series("a</script><!--", [(0, 1.0), (10, float("nan")), (20, 0.123456789)]),
                       Series("b", [(10, 2.0)])], xlabel="iteration", ylabel="loss")
    data = re.search(r'<script type="application/json">(.*?)</script>', html, re.S).group(1)
    assert "<" not in data
    spec = json.loads(data)
    assert spec["x"] == [0, 10, 20]  # the union of the series' x values
    assert [s["y"] for s in spec["series"]] == [[1, None, 0.12346], [None, 2, None]]
    assert spec["series"][0]["label"] == "a</script><!--"


def test_a_folder_that_is_neither_is_refused(tmp_path):
    with pytest.raises(LmscopeError, match="neither a run folder"):
        write_report(tmp_path)


def test_the_attention_view_embeds_the_maps(tiny_run, tmp_path):
    """A study folder with attention.json gets the hover view, its data and its script; a page
    without one gets no script."""
    study = tmp_path / "study"
    shutil.copytree(tiny_run, study / "runs" / "tiny")
    (study / "study.json").write_text(json.dumps({"name": "tiny"}))
    assert "attention.js" not in write_report(study).read_text()
    attention_probe(study / "runs" / "tiny", "All:", study / "attention" / "tiny")
    path = study / "attention" / "tiny" / "attention.json"
    maps = json.loads(path.read_text())
    path.write_text(json.dumps({**maps, "prompt": "<!--<script>All:</script>"}))  # hostile
    page = write_report(study).read_text()
    assert page.count('class="attn"') == 1 and page.count("The attention view") == 1
    data = re.search(r'<script type="application/json" id="attention-maps-0">(.*?)</script>',
                     page, re.S).group(1)
    assert "<" not in data  # the prompt's "</script>" or "<!--" cannot end the data block
    shown = json.loads(data)
    assert shown["prompt"] == "<!--<script>All:</script>" and len(shown["checkpoints"]) == 1
    # the weights of the page are attention.json's to 3 decimals
    weights = [w for layer in shown["checkpoints"][0]["layers"] for head in layer
               for row in head for w in row]
    written = [w for layer in maps["checkpoints"][0]["layers"] for head in layer
               for row in head for w in row]
    assert weights == [round(w, 3) for w in written]
    assert '<option value="1" selected>1</option>' in page  # the last layer is shown first
    # the per-head figures are not in the page (the view and the grid of heads show them)
    assert "attention_L1.png" in page and "attention_L1_H0.png" not in page


def test_lmscope_report_opens_a_probe_folder(tiny_run, tmp_path):
    """`lmscope report DIR` on the folder of `lmscope probe attention --checkpoints all`."""
    out = tmp_path / "attention"
    r = subprocess.run([sys.executable, "-m", "lmscope", "probe", "attention", str(tiny_run),
                        "--prompt", "First", "--checkpoints", "all", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "lmscope", "report", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"report: {out / 'report.html'}"
    page = (out / "report.html").read_text()
    assert "lmscope output: attention" in page and page.count('class="attn"') == 1
    assert "summary.md" in page


def test_other_output_folders_open(domain_runs, tmp_path):
    """A transfer folder: its fine-tunings' loss curves in one chart, its tables and figures."""
    from lmscope.analysis import transfer

    out = tmp_path / "transfer"
    transfer.transfer(domain_runs["play"], str(domain_runs["corpora"]["sums"]), out,
                      checkpoints="early,late", iters=4, eval_every=2, eval_iters=1,
                      sample_tokens=5, device="cpu", log=lambda m: None)
    page = write_report(out).read_text()
    assert page.count('class="chart"') == 1 and "early: validation" in page
    assert "curves.png" in page and "loss.png" not in page and "summary.md" in page

    # `lmscope matrix --out DIR`: the interactive matrix in place of matrix.png and matrix.md
    out = tmp_path / "matrix"
    cross_domain.compute([domain_runs["play"], domain_runs["sums"]],
                         [str(domain_runs["corpora"]["play"])], device="cpu",
                         log=lambda m: None).save(out)
    page = write_report(out).read_text()
    assert page.count('class="matrix"') == 1 and "oov.csv" not in page
    assert "matrix.png" not in page and "matrix.md" not in page


def test_a_run_report_shows_each_resume_and_what_it_changed(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "resumes.jsonl").write_text(json.dumps(
        {"iter": 20, "time": "2026-12-02T10:00:00+0000", "lmscope": "0.1.0",
         "changed": {"train.lr": [0.001, 0.1]}}) + "\n")
    page = write_report(run).read_text()
    assert "resumed 1 time (resumes.jsonl)" in page
    assert "iteration 20, 2026-12-02T10:00:00+0000, lmscope 0.1.0: train.lr 0.001 -&gt; 0.1" in page
