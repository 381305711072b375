"""One self-contained HTML page for a run folder or a study folder: `lmscope report DIR`.

The page needs no server and no network: figures are embedded as base64 PNG, the style sheet is
inline. It shows, where the folder has them:

    configs            config.toml of a run, study.json of a study (folded)
    training           each run's summary, loss curves, and its samples at every checkpoint,
                       runs side by side
    tables             every Markdown table the steps wrote (corpora, transfer, softmax,
                       comparison, generation, seeds, ...), as HTML tables
    zero-shot matrix   matrix.csv as a table coloured by loss (lower is greener)
    attribution        each prompt's characters coloured by their importance
    attention          an interactive view of attention.json: hover a token of the prompt to
                       see where each head of the chosen layer attends from it; a slider walks
                       through the checkpoints (a few lines of JavaScript, ATTENTION_SCRIPT)
    figures            every PNG a step wrote, under its step

A study's sections, in order, come from the study's step registry (lmscope.study): each step
that has a folder gives its title, and may give a view (`matrix_view`, `attribution_view`,
`attention_view` here) drawn from its typed results; every section then shows the step's
Markdown files and figures.

Markdown is turned into HTML by `markdown_to_html`, which knows the subset the steps write
(headings, tables, fenced code, images, paragraphs, **bold** and `code`).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmscope.analysis.attention import AttentionResult
from lmscope.analysis.attribution import AttributionResult
from lmscope.analysis.cross_domain import Matrix
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.run.run_dir import RunDir

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em;
       color: #1d1d1f; }
h1 { border-bottom: 2px solid #4878a8; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f3f7; }
pre { background: #f6f8fa; padding: .6em; overflow-x: auto; white-space: pre-wrap; font-size: 12px; }
img { max-width: 100%; margin: .4em 0; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
.figures figure { margin: 0; flex: 1 1 420px; }
figcaption { font-size: 12px; color: #555; }
.samples td { font: 12px/1.3 ui-monospace, monospace; white-space: pre-wrap; min-width: 220px; }
.prompt span { font: 15px ui-monospace, monospace; white-space: pre; padding: 1px 0; }
.attn { border: 1px solid #ccc; border-radius: 6px; padding: .6em 1em; margin: .8em 0; }
.attn-controls { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: center; font-size: 13px; }
.attn .tokens { font: 14px/1.9 ui-monospace, monospace; white-space: pre; }
.attn .tokens span { padding: 1px 0; border-bottom: 2px solid transparent; }
.attn .query-row span { cursor: crosshair; }
.attn .query-row span:hover, .attn .tokens span.current { border-bottom-color: #d04020; }
.attn .tokens span.future { color: #bbb; }
.attn .head { display: flex; gap: .8em; align-items: baseline; }
.attn .head b { font-size: 12px; min-width: 4em; }
.attn .head i { font-size: 12px; color: #555; }
"""

# The attention view: for the hovered query token, colour every key token of each head's row by
# its attention weight (opacity = sqrt(weight), so that weak links stay visible).
ATTENTION_SCRIPT = """
document.querySelectorAll(".attn").forEach(function (view) {
  try { show(view); } catch (e) {  // one broken view (e.g. NaN weights) leaves the others working
    view.querySelector(".attn-heads").textContent = "cannot show this view: " + e;
  }
});
function show(view) {
  var data = JSON.parse(document.getElementById(view.dataset.maps).textContent);
  var T = data.tokens.length, query = T - 1;
  var slider = view.querySelector(".attn-checkpoint"), layer = view.querySelector(".attn-layer");
  var promptRow = view.querySelector(".query-row"), heads = view.querySelector(".attn-heads");
  function shown(text) { return text.replace(/\\n/g, "\u23ce").replace(/\\t/g, "\u21e5"); }
  function token(text, k) {
    var s = document.createElement("span");
    s.textContent = shown(text);
    s.dataset.k = k;
    return s;
  }
  data.tokens.forEach(function (text, q) {
    var s = token(text, q);
    s.addEventListener("mouseenter", function () { query = q; draw(); });
    promptRow.appendChild(s);
  });
  function draw() {
    var ckpt = data.checkpoints[+slider.value], maps = ckpt.layers[+layer.value];
    view.querySelector(".attn-checkpoint-name").textContent =
      ckpt.checkpoint + " (iteration " + ckpt.iteration + ")";
    view.querySelector(".attn-query").textContent =
      "query " + query + ": " + JSON.stringify(data.tokens[query]);
    promptRow.querySelectorAll("span").forEach(function (s) {
      s.classList.toggle("current", +s.dataset.k === query);
    });
    heads.textContent = "";
    maps.forEach(function (rows, h) {
      var weights = rows[query], top = Math.max.apply(null, weights), best = weights.indexOf(top);
      var line = document.createElement("div"), label = document.createElement("b");
      var tokens = document.createElement("span"), note = document.createElement("i");
      line.className = "head";
      label.textContent = "head " + h;
      tokens.className = "tokens";
      data.tokens.forEach(function (text, k) {
        var s = token(text, k);
        if (k > query) { s.className = "future"; }
        else {
          s.style.background = "rgba(40, 100, 200, " + Math.sqrt(weights[k]).toFixed(3) + ")";
          s.title = "key " + k + ": " + weights[k].toFixed(4);
        }
        tokens.appendChild(s);
      });
      note.textContent = "most on " + JSON.stringify(data.tokens[best]) + " at " + best +
        " (" + top.toFixed(2) + ")";
      line.append(label, tokens, note);
      heads.appendChild(line);
    });
  }
  slider.addEventListener("input", draw);
  layer.addEventListener("change", draw);
  draw();
}
"""

@dataclass(frozen=True)
class Section:
    """How one study step shows in the report: under `title`, its folder's view (if any), then
    the Markdown files (but `skip`) and the figures of the folder."""

    title: str
    folder: str  # the step's folder in the study folder
    view: Callable[[Path], str] | None = None  # HTML drawn from the step's results
    skip: tuple[str, ...] = ()  # Markdown files the view already shows


def write_page(folder: str | Path, sections: Sequence[Section] = ()) -> Path:
    """Write FOLDER/report.html for a run or study folder; returns its path. A study's
    `sections` are its steps' (`lmscope.study.runner.write_report` passes them)."""
    folder = Path(folder)
    if (folder / "study.json").is_file():
        body = _study(folder, sections)
    elif RunDir(folder).is_run():
        body = _run(folder, level=1)
    else:
        raise LmscopeError(f"{folder} is neither a run folder (metrics.jsonl) nor a study folder "
                           "(study.json)")
    script = f"<script>{ATTENTION_SCRIPT}</script>" if 'class="attn"' in body else ""
    page = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>lmscope: {html.escape(folder.name)}</title><style>{STYLE}</style></head>"
            f"<body>\n{body}\n{script}</body></html>\n")
    path = folder / "report.html"
    if not path.is_file() or path.read_text(encoding="utf-8") != page:  # unchanged: not touched
        atomic_write_text(path, page)
    return path


# --- a study ---------------------------------------------------------------------------------------

def _study(folder: Path, sections: Sequence[Section]) -> str:
    settings = json.loads((folder / "study.json").read_text(encoding="utf-8"))
    parts = [f"<h1>Study: {html.escape(str(settings.get('name', folder.name)))}</h1>",
             _details("study settings (study.json)", json.dumps(settings, indent=2))]
    runs = [RunDir(p) for p in sorted(p.parent for p in (folder / "runs").glob("*/summary.json"))]
    if runs:
        parts.append("<h2>Training</h2>" + _runs_table(runs) + _figures(
            [(r.loss_plot, r.name) for r in runs]) + _samples_side_by_side(runs))
    for section in sections:
        sub = folder / section.folder
        if not sub.is_dir():
            continue
        parts.append(f"<h2>{section.title}</h2>")
        if section.view is not None:
            parts.append(section.view(sub))
        parts.append(_markdown_files(sub, skip=set(section.skip)))
        parts.append(_figures([(p, str(p.relative_to(sub))) for p in sorted(sub.rglob("*.png"))]))
    return "\n".join(parts)


def _runs_table(runs: list[RunDir]) -> str:
    header = ["run", "model", "corpus", "iterations", "parameters", "val loss", "bits/char",
              "seconds"]
    rows = []
    for run in runs:
        s = run.summary()
        rows.append([run.name, s.model, s.corpus, s.iterations, f"{s.params:,}",
                     _num(s.val_loss), _num(s.val_bits_per_char), _num(s.elapsed_s, 0)])
    return _table(header, rows)


def _samples_side_by_side(runs: list[RunDir]) -> str:
    """One row per checkpoint name, one column per run: how generation improves."""
    samples: dict[str, dict[str, str]] = {}
    for run in runs:
        for name, text in run.samples().items():
            samples.setdefault(name, {})[run.name] = text
    if not samples:
        return ""
    names = sorted(samples, key=lambda n: (n == "final", n))
    rows = "".join(f"<tr><th>{html.escape(n)}</th>" + "".join(
        f"<td>{html.escape(samples[n].get(r.name, ''))}</td>" for r in runs) + "</tr>"
        for n in names)
    head = "<tr><th>checkpoint</th>" + "".join(f"<th>{html.escape(r.name)}</th>"
                                               for r in runs) + "</tr>"
    return (f"<h3>Samples at each checkpoint</h3><div style=\"overflow-x:auto\">"
            f"<table class=\"samples\">{head}{rows}</table></div>")


def matrix_view(folder: Path) -> str:
    """The zero-shot matrix coloured per column: the lowest loss green, the highest red."""
    if not (folder / "matrix.json").is_file():
        return ""
    matrix = Matrix.load(folder)
    header = ["model", "trained_on", *matrix.corpora]
    values = matrix.nats.tolist()
    cols = list(zip(*values, strict=True))
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for run, trained_on, row in zip(matrix.runs, matrix.trained_on, values, strict=True):
        cells = []
        for j, v in enumerate(row):
            lo, hi = min(cols[j]), max(cols[j])
            t = 0.0 if hi == lo else (v - lo) / (hi - lo)
            colour = f"hsl({120 * (1 - t):.0f}, 60%, 82%)"
            cells.append(f"<td style=\"background:{colour}\">{v:.4f}</td>")
        out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in (run, trained_on))
                   + "".join(cells) + "</tr>")
    return ("<p>nats per character on each corpus's validation split; each column coloured from "
            "its lowest (green) to its highest (red) loss.</p>" + "".join(out) + "</table>")


def attribution_view(folder: Path) -> str:
    """Each prompt's characters coloured by importance (|normalized score|), final checkpoint,
    one line per model and method."""
    parts = []
    for path in sorted(folder.glob("*/attribution.csv")):
        result = AttributionResult.load(path.parent)
        if not result.rows:
            continue
        final = max(r.iteration for r in result.rows)
        groups: dict[tuple[str, str], list] = {}
        for r in result.rows:
            if r.iteration == final:
                groups.setdefault((r.prompt, r.method), []).append(r)
        lines = []
        for (prompt, method), chars in groups.items():
            chars.sort(key=lambda r: r.position)
            top = max(abs(r.normalized) for r in chars) or 1.0
            spans = "".join(
                f"<span title=\"{html.escape(method)}: {r.normalized:+.3f}\" "
                f"style=\"background: rgba(220, 80, 40, {abs(r.normalized) / top:.2f})\">"
                f"{html.escape(r.character if r.character != chr(10) else '⏎')}</span>"
                for r in chars)
            lines.append(f"<tr><td>{html.escape(prompt)}</td><td>{html.escape(method)}</td>"
                         f"<td class=\"prompt\">{spans}</td><td>{html.escape(chars[0].target)}"
                         "</td></tr>")
        parts.append(f"<h3>{html.escape(path.parent.name)} model, iteration {final}</h3><table>"
                     "<tr><th>prompt</th><th>method</th><th>characters, coloured by importance"
                     "</th><th>predicted</th></tr>" + "".join(lines) + "</table>")
    return "".join(parts)


def attention_view(folder: Path) -> str:
    """One interactive view per attention.json (a run's maps at each checkpoint), drawn by
    ATTENTION_SCRIPT from the JSON embedded next to it."""
    parts = []
    for n, path in enumerate(sorted(folder.glob("*/attention.json"))):
        result = AttentionResult.load(path.parent)
        if not result.checkpoints:
            continue
        maps = {"prompt": result.prompt, "tokens": result.tokens,
                "checkpoints": result.checkpoints}
        last = len(maps["checkpoints"]) - 1
        n_layer = len(maps["checkpoints"][0]["layers"])
        layers = "".join(f"<option value=\"{i}\"{' selected' if i == n_layer - 1 else ''}>{i}"
                         "</option>" for i in range(n_layer))
        # no "<" at all inside the data block: "</script>" or "<!--" in a prompt cannot end it
        data = json.dumps(maps, separators=(",", ":")).replace("<", "\\u003c")
        parts.append(
            f"<h3>{html.escape(path.parent.name)} model: where each head attends</h3>"
            f"<div class=\"attn\" data-maps=\"attention-maps-{n}\"><div class=\"attn-controls\">"
            f"<label>checkpoint <input class=\"attn-checkpoint\" type=\"range\" min=\"0\" "
            f"max=\"{last}\" value=\"{last}\"> <span class=\"attn-checkpoint-name\"></span></label>"
            f"<label>layer <select class=\"attn-layer\">{layers}</select></label>"
            "<span class=\"attn-query\"></span></div>"
            "<p>Hover a token of the prompt (the query): each head's row colours the tokens it "
            "attends to from there, darker for more weight (opacity is the square root of the "
            "weight, so weak links stay visible; hover a token for its weight).</p>"
            "<div class=\"tokens query-row\"></div><div class=\"attn-heads\"></div></div>"
            f"<script type=\"application/json\" id=\"attention-maps-{n}\">{data}</script>")
    return "".join(parts)


# --- a run ---------------------------------------------------------------------------------------

def _run(folder: Path, level: int) -> str:
    run = RunDir(folder)
    h = f"h{level}"
    parts = [f"<{h}>Run: {html.escape(run.name)}</{h}>"]
    if run.is_finished():
        parts.append(_runs_table([run]))
    if run.config_file.is_file():
        parts.append(_details("config.toml", run.config_file.read_text(encoding="utf-8")))
    parts.append(_figures([(run.loss_plot, "loss curves")]))
    if run.samples_file.is_file():
        parts.append(markdown_to_html(run.samples_file.read_text(encoding="utf-8"), run.path))
    return "\n".join(parts)


# --- building blocks ------------------------------------------------------------------------------

def _markdown_files(folder: Path, skip: set[str]) -> str:
    files = sorted(folder.glob("*.md")) + sorted(folder.glob("*/*.md"))
    out = []
    for path in files:
        if path.name in skip:
            continue
        label = str(path.relative_to(folder))
        out.append(f"<details{' open' if path.parent == folder else ''}><summary>"
                   f"{html.escape(label)}</summary>"
                   + markdown_to_html(path.read_text(encoding="utf-8"), path.parent)
                   + "</details>")
    return "".join(out)


def _figures(items: list[tuple[Path, str]]) -> str:
    cells = [f"<figure>{_img(p)}<figcaption>{html.escape(caption)}</figcaption></figure>"
             for p, caption in items if p.is_file()]
    return f"<div class=\"figures\">{''.join(cells)}</div>" if cells else ""


def _img(path: Path, alt: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f"<img alt=\"{html.escape(alt or path.name)}\" src=\"data:image/png;base64,{data}\">"


def _details(summary: str, text: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"


def _table(header: list, rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _num(v, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _inline(text: str, base: Path) -> str:
    """Escape, then **bold**, `code` and ![alt](src.png) (embedded when the file exists)."""
    def image(m):
        path = base / m.group(2)
        return _img(path, m.group(1)) if path.suffix == ".png" and path.is_file() else ""

    parts = re.split(r"(!\[[^\]]*\]\([^)]+\))", text)
    out = []
    for part in parts:
        m = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", part)
        if m:
            out.append(image(m))
            continue
        s = html.escape(part)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        out.append(s)
    return "".join(out)


def markdown_to_html(text: str, base: Path) -> str:
    """The Markdown subset lmscope writes: headings, tables, fenced code, images, paragraphs."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append(f"<pre>{html.escape(chr(10).join(lines[i + 1:j]))}</pre>")
            i = j + 1
        elif line.startswith("|"):
            j = i
            while j < len(lines) and lines[j].startswith("|"):
                j += 1
            rows = [_cells(r) for r in lines[i:j] if not re.fullmatch(r"\|[-:| ]+\|?", r)]
            head = "".join(f"<th>{_inline(c, base)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{_inline(c, base)}</td>" for c in r) + "</tr>"
                           for r in rows[1:])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
            i = j
        elif m := re.match(r"(#{1,6}) (.*)", line):
            level = min(len(m.group(1)) + 2, 6)  # under the report's own h1/h2
            out.append(f"<h{level}>{_inline(m.group(2), base)}</h{level}>")
            i += 1
        elif line.strip():
            j = i
            while j < len(lines) and lines[j].strip() and not lines[j].startswith(("|", "#", "```")):
                j += 1
            out.append(f"<p>{_inline(' '.join(lines[i:j]), base)}</p>")
            i = j
        else:
            i += 1
    return "\n".join(out)


def _cells(row: str) -> list[str]:
    """The cells of a Markdown table row; `\\|` is a literal bar inside a cell."""
    inner = row.strip()[1:-1] if row.strip().endswith("|") else row.strip()[1:]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]
