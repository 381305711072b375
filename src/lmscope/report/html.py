"""One self-contained HTML page for any lmscope output folder: `lmscope report DIR`.

The page needs no server and no network: figures are embedded as base64 PNG, the style sheet and
scripts are inline (the report's own, js/, and uPlot for the charts, vendor/). DIR may be a run
folder, a study folder, or the folder of any probe or command (`lmscope probe attention ...
--out DIR`, `lmscope matrix`, `lmscope transfer`, ...). The page shows, where the folder has them:

    configs            config.toml of a run, study.json of a study (folded)
    training           each run's summary, an interactive chart of its loss curves (charts.py),
                       and its samples at every checkpoint, runs side by side
    tables             every Markdown file the steps wrote, as HTML (markdown.py)
    logit lens         grid.csv: points by positions, each cell the lens's first choice coloured by
                       p(next), a slider walking through the checkpoints (js/lens.js)
    zero-shot matrix   matrix.json as a table coloured by loss, in nats, bits or the
                       out-of-vocabulary rate; hover a cell to read it out (js/matrix.js)
    attribution        each prompt's characters coloured by their importance, a slider walking
                       through the checkpoints (js/attribution.js); with a continuation
                       (attribution/<corpus>/continuation/, or a `--generate` folder) its
                       generated tokens x inputs matrix, hovered (js/continuation.js)
    similarity         similarity.json and cka.csv: the layer x layer CKA of every pair of runs,
                       a slider walking through the shared checkpoints (js/similarity.js)
    attention          attention.json: hover a token of the prompt to see where each head of the
                       chosen layer attends from it; a slider walks through the checkpoints
                       (js/attention.js)
    figures            the PNG figures the steps wrote, each at its print size (figures.py)

A study's sections, in order, come from the study's step registry (lmscope.study): each step
that has a folder gives its title, and may give a view (`matrix_view`, `attribution_view`,
`attention_view` here) drawn from its typed results, and the figures its view replaces; every
section then shows the step's Markdown files and figures. Any other folder gets every view that
finds its results there, then its Markdown files and figures.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from lmscope.analysis.attention import AttentionResult
from lmscope.analysis.attribution import AttributionResult
from lmscope.analysis.continuation import ContinuationResult
from lmscope.analysis.cross_domain import Matrix
from lmscope.analysis.lens import LensResult
from lmscope.analysis.similarity import SimilarityResult
from lmscope.data.chars import QUIET, quiet
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.report import charts
from lmscope.report.figures import figures
from lmscope.report.markdown import markdown_to_html
from lmscope.run.run_dir import RunDir

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em;
       color: #1d1d1f; overflow-wrap: break-word; }
h1 { border-bottom: 2px solid #4878a8; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
details > summary { cursor: pointer; color: #335; margin: .3em 0; }
.table-wrap { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f3f7; }
pre { background: #f6f8fa; padding: .6em; overflow-x: auto; white-space: pre-wrap; font-size: 12px; }
img { max-width: 100%; height: auto; margin: .4em 0; }
.figures { display: flex; flex-wrap: wrap; gap: 1em 2em; align-items: flex-start; }
.figures figure { margin: 0; max-width: 100%; }
figcaption { font-size: 12px; color: #555; }
.samples td { font: 12px/1.3 ui-monospace, monospace; white-space: pre-wrap; min-width: 220px; }
.ws { color: #aaa; }
.chars { font: 14px/1.7 ui-monospace, monospace; word-break: break-all; min-width: 20em; }
.chars span { padding: 1px 0; }
.controls { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: center; font-size: 13px;
            margin: .5em 0; }
.matrix td[data-r] { font-variant-numeric: tabular-nums; cursor: crosshair; }
.matrix td.cross { outline: 2px solid #4878a8; outline-offset: -2px; }
.matrix-readout { font-size: 13px; min-height: 1.5em; color: #333; }
.lens td.cell { font: 12px ui-monospace, monospace; text-align: center; min-width: 1.4em;
               padding: 2px 3px; }
.lens th.pos { font: 11px ui-monospace, monospace; writing-mode: vertical-rl; padding: 3px 1px; }
.similarity .pairs { display: flex; flex-wrap: wrap; gap: 1em 2em; }
.similarity td.cell { font: 12px ui-monospace, monospace; text-align: center; min-width: 3em;
                      padding: 2px 4px; cursor: crosshair; }
.continuation td { font: 12px ui-monospace, monospace; text-align: center; padding: 1px 2px;
                   min-width: 1.1em; cursor: crosshair; }
.continuation th.pos { font: 11px ui-monospace, monospace; writing-mode: vertical-rl;
                       padding: 3px 1px; }
.continuation .first-written { border-left: 2px solid #4878a8; }
.continuation-readout { font-size: 13px; min-height: 1.5em; color: #333; }
.attn { border: 1px solid #ccc; border-radius: 6px; padding: .6em 1em; margin: .8em 0; }
.attn .tokens { font: 14px/1.9 ui-monospace, monospace; word-break: break-all; }
.attn .tokens span { padding: 1px 0; border-bottom: 2px solid transparent; }
.attn .query-row span { cursor: crosshair; }
.attn .query-row span:hover, .attn .tokens span.current { border-bottom-color: #d04020; }
.attn .tokens span.future { color: #ccc; }
.attn .head { display: flex; gap: .8em; align-items: baseline; }
.attn .head b { font-size: 12px; min-width: 4em; flex: none; }
.attn .head .tokens { flex: 0 1 auto; min-width: 0; }
.attn .head i { font-size: 12px; color: #555; flex: none; }
"""


@dataclass(frozen=True)
class Section:
    """How one study step shows in the report: under `title`, its folder's view (if any), then
    the Markdown files (but `skip`) and the figures of the folder (but those matching `hide`)."""

    title: str
    folder: str  # the step's folder in the study folder
    view: Callable[[Path], str] | None = None  # HTML drawn from the step's results
    skip: tuple[str, ...] = ()  # Markdown files the view already shows
    hide: tuple[str, ...] = ()  # figures (patterns of their paths) not shown; kept in the folder


def write_page(folder: str | Path, sections: Sequence[Section] = ()) -> Path:
    """Write FOLDER/report.html for a run folder, a study folder or any other lmscope output
    folder; returns its path. `sections` are the study steps' (`lmscope.study.runner.write_report`
    passes them): a study's sections, and the views tried on any other folder."""
    folder = Path(folder)
    if (folder / "study.json").is_file():
        body = _study(folder, sections)
    elif RunDir(folder).is_run():
        body = _run(folder, level=1)
    elif _holds_output(folder):
        body = _output_folder(folder, sections)
    else:
        raise LmscopeError(f"{folder} is neither a run folder (metrics.jsonl), a study folder "
                           "(study.json) nor the output of an lmscope command (no tables, "
                           "figures or results in it)")
    head, scripts = charts.assets(body)
    for marker, name in (('class="attn"', "attention.js"), ('class="attribution"',
                                                              "attribution.js"),
                         ('class="matrix"', "matrix.js"), ('class="lens"', "lens.js"),
                         ('class="similarity"', "similarity.js"),
                         ('class="continuation"', "continuation.js")):
        if marker in body:
            scripts += f"<script>{charts.script(name)}</script>"
    page = (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>lmscope: {html.escape(folder.name)}</title><style>{STYLE}</style>{head}"
            f"</head><body>\n{body}\n{scripts}</body></html>\n")
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
        parts.append("<h2>Training</h2>" + _runs_table(runs) + loss_chart(runs)
                     + _samples_side_by_side(runs))
    for section in sections:
        sub = folder / section.folder
        if not sub.is_dir():
            continue
        parts.append(f"<h2>{section.title}</h2>")
        if section.view is not None:
            parts.append(section.view(sub))
        parts.append(_markdown_files(sub, skip=set(section.skip)))
        parts.append(_figures_of(sub, section.hide))
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


def loss_chart(runs: Sequence[RunDir]) -> str:
    """The runs' loss curves in one interactive chart: the training loss at every logged step
    (faint) and the validation loss at every evaluation, one colour per run."""
    series = []
    for i, run in enumerate(runs):
        metrics = run.metrics()
        name = f"{run.name}: " if len(runs) > 1 else ""
        series.append(charts.Series(f"{name}train", metrics.train_losses, charts.colour(i),
                                    width=1, faint=True))
        series.append(charts.Series(f"{name}validation",
                                    [(e.iter, e.val_loss) for e in metrics.evaluations],
                                    charts.colour(i), width=2, markers=True))
    if not any(s.points for s in series):
        return ""
    return charts.line_chart(series, xlabel="iteration", ylabel="loss (nats/token)",
                             caption="Loss curves: the training loss at each logged step (faint) "
                                     "and the validation loss estimated at each evaluation.")


def _samples_side_by_side(runs: list[RunDir]) -> str:
    """One row per checkpoint name, one column per run: how generation improves (a sample's
    leading newlines, its prompt, are not shown)."""
    samples: dict[str, dict[str, str]] = {}
    for run in runs:
        for name, text in run.samples().items():
            samples.setdefault(name, {})[run.name] = text
    if not samples:
        return ""
    names = sorted(samples, key=lambda n: (n == "final", n))
    rows = "".join(f"<tr><th>{html.escape(n)}</th>" + "".join(
        f"<td>{html.escape(samples[n].get(r.name, '').lstrip(chr(10)))}</td>" for r in runs)
        + "</tr>"
        for n in names)
    head = "<tr><th>checkpoint</th>" + "".join(f"<th>{html.escape(r.name)}</th>"
                                               for r in runs) + "</tr>"
    return (f"<details open><summary>Samples at each checkpoint</summary><div class=\"table-wrap\">"
            f"<table class=\"samples\">{head}{rows}</table></div></details>")


def _json_block(data) -> str:
    """`data` as a JSON script element; no "<" at all inside, so that text holding "</script>"
    or "<!--" cannot end it."""
    text = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    return f"<script type=\"application/json\">{text}</script>"


def matrix_view(folder: Path) -> str:
    """The zero-shot matrix coloured per column, the lowest loss green, the highest red; in nats,
    bits or the out-of-vocabulary rate, and hovering a cell reads it out (js/matrix.js)."""
    if not (folder / "matrix.json").is_file():
        return ""
    matrix = Matrix.load(folder)
    header = ["model", "trained on", *matrix.corpora]
    values = matrix.nats.tolist()
    cols = list(zip(*values, strict=True))
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for r, (run, trained_on, row) in enumerate(zip(matrix.runs, matrix.trained_on, values,
                                                   strict=True)):
        cells = []
        for j, v in enumerate(row):
            lo, hi = min(cols[j]), max(cols[j])
            t = 0.0 if hi == lo else (v - lo) / (hi - lo)
            colour = f"hsl({120 * (1 - t):.0f}, 60%, 82%)"
            cells.append(f"<td data-r=\"{r}\" data-c=\"{j}\" style=\"background:{colour}\">"
                         f"{v:.4f}</td>")
        out.append("<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in (run, trained_on))
                   + "".join(cells) + "</tr>")
    data = {"runs": matrix.runs, "corpora": matrix.corpora, "trained_on": matrix.trained_on,
            "nats": values, "bits": matrix.bits.tolist(), "oov": matrix.oov_rate.tolist()}
    radios = "".join(f"<label><input type=\"radio\" name=\"matrix-unit\" value=\"{v}\""
                     f"{' checked' if v == 'nats' else ''}> {label}</label>"
                     for v, label in (("nats", "nats/char"), ("bits", "bits/char"),
                                      ("oov", "out-of-vocabulary rate")))
    return ("<div class=\"matrix\"><p>Each model on each corpus's validation split (whole split); "
            "each column coloured from its lowest (green) to its highest (red) value. Hover a "
            f"cell to read it out.</p><div class=\"controls\">show {radios}</div>"
            f"<div class=\"table-wrap\">{''.join(out)}</table></div>"
            f"<p class=\"matrix-readout\"></p>{_json_block(data)}</div>")


def _chars(characters: list[str], values: list[float], method: str) -> str:
    """A prompt's characters (as written in tables), each coloured by |value| relative to the
    row's largest; whitespace as a quiet mark."""
    top = max((abs(v) for v in values), default=0.0) or 1.0
    spans = []
    for c, v in zip(characters, values, strict=True):
        ws = " class=\"ws\"" if c in QUIET else ""
        spans.append(f"<span{ws} title=\"{html.escape(method)}: {v:+.3f}\" style=\"background: "
                     f"rgba(220, 80, 40, {abs(v) / top:.2f})\">{html.escape(quiet(c))}</span>")
    return "".join(spans)


def attribution_view(folder: Path) -> str:
    """Each prompt's characters coloured by importance (|normalized score|), one line per prompt
    and method, for every model; a slider walks through the checkpoints (js/attribution.js)."""
    paths = [folder / "attribution.csv"] + sorted(folder.glob("*/attribution.csv"))
    parts = []
    for path in paths:
        if not path.is_file():
            continue
        result = AttributionResult.load(path.parent)
        if not result.rows:
            continue
        points = result.iterations
        rows: dict[tuple[str, str], dict] = {}
        for r in result.rows:
            row = rows.setdefault((r.prompt, r.method), {
                "prompt": r.prompt, "method": r.method, "chars": [], "values": {}, "targets": {}})
            c = points.index((r.checkpoint, r.iteration))
            row["values"].setdefault(c, []).append((r.position, round(r.normalized, 3)))
            row["targets"][c] = [quiet(r.target), round(r.target_prob, 3)]
            if c == len(points) - 1:
                row["chars"].append((r.position, r.character))
        data_rows = []
        for row in rows.values():
            data_rows.append({
                "method": row["method"],
                "values": [[v for _, v in sorted(row["values"].get(c, []))]
                           for c in range(len(points))],
                "targets": [row["targets"].get(c, ["", 0.0]) for c in range(len(points))]})
        body = []
        for row, data in zip(rows.values(), data_rows, strict=True):
            chars = [c for _, c in sorted(row["chars"])]
            target, prob = data["targets"][-1]
            body.append(f"<tr><td>{html.escape(row['prompt'])}</td>"
                        f"<td>{html.escape(row['method'])}</td><td class=\"chars\">"
                        f"{_chars(chars, data['values'][-1], row['method'])}</td>"
                        f"<td class=\"predicted\">{html.escape(target)} ({prob:.2f})</td></tr>")
        last = len(points) - 1
        name = "" if path.parent == folder else f"{html.escape(path.parent.name)} model: "
        parts.append(
            f"<h3>{name}characters coloured by importance</h3><div class=\"attribution\">"
            f"<div class=\"controls\"><label>checkpoint <input class=\"attribution-checkpoint\" "
            f"type=\"range\" min=\"0\" max=\"{last}\" value=\"{last}\"> <span class=\""
            f"attribution-name\">{html.escape(points[-1][0])} (iteration {points[-1][1]})"
            "</span></label></div><div class=\"table-wrap\"><table><thead><tr><th>prompt</th>"
            "<th>method</th><th>characters, coloured by |normalized score| (hover one for its "
            "score)</th><th>predicted (p)</th></tr></thead><tbody>" + "".join(body)
            + "</tbody></table></div>"
            + _json_block({"checkpoints": points, "rows": data_rows}) + "</div>")
        parts.append(continuation_view(path.parent / "continuation", "" if path.parent == folder
                                       else f"{path.parent.name} model"))
    if (folder / "steps.csv").is_file() and (folder / "scores.csv").is_file():
        parts.append(continuation_view(folder))  # a `probe attribution --generate` folder
    return "".join(parts)


def continuation_view(folder: Path, model: str = "") -> str:
    """Each token of a generated continuation attributed to the prompt and the tokens written
    before it: generated tokens down, inputs across, each cell coloured by |normalized score|
    relative to its row's largest; a prompt, a method and a checkpoint to choose, and hovering a
    cell reads it out (js/continuation.js). "" where `folder` has no continuation."""
    if not (folder / "steps.csv").is_file():
        return ""
    data = ContinuationResult.load(folder).view_data()
    if not data["prompts"]:
        return ""
    for prompt in data["prompts"]:  # whitespace as a quiet mark, as in the attribution rows
        for point in prompt["checkpoints"]:
            point["tokens"] = [quiet(t) for t in point["tokens"]]
    first = data["prompts"][0]
    last = len(first["checkpoints"]) - 1
    prompts = "".join(f"<option value=\"{i}\">{html.escape(p['name'])}</option>"
                      for i, p in enumerate(data["prompts"]))
    methods = "".join(f"<option>{html.escape(m)}</option>" for m in data["methods"])
    title = f"{model}: " if model else ""
    return (
        f"<h3>{html.escape(title)}each token of a {data['generate']}-token continuation "
        "attributed</h3><div class=\"continuation\"><div class=\"controls\"><label>prompt "
        f"<select class=\"continuation-prompt\">{prompts}</select></label><label>method "
        f"<select class=\"continuation-method\">{methods}</select></label><label>checkpoint "
        f"<input class=\"continuation-checkpoint\" type=\"range\" min=\"0\" max=\"{last}\" "
        f"value=\"{last}\"> <span class=\"continuation-name\"></span></label></div>"
        "<p class=\"continuation-readout\">rows: the tokens the model wrote (greedy), each "
        "with its probability and the entropy of its step; columns: the prompt, then the "
        "written tokens; a cell's colour: its share of the row's attribution, relative to the "
        "row's largest. Hover a cell.</p><div class=\"table-wrap continuation-table\"></div>"
        + _json_block(data) + "</div>")


LENS_POSITIONS = 32  # positions of each text the lens view shows


def lens_view(folder: Path) -> str:
    """The logit-lens picture of each text (points by positions, each cell the lens's first
    choice, coloured by the probability it gives the true next token), with a slider through the
    checkpoints (js/lens.js); hovering a cell reads out its numbers."""
    paths = [folder / "grid.csv"] + sorted(folder.glob("*/grid.csv"))
    parts = []
    for path in paths:
        if not path.is_file():
            continue
        result = LensResult.load(path.parent)
        name = "" if path.parent == folder else f"{html.escape(path.parent.name)} model, "
        for source in dict.fromkeys(c.source for c in result.grid):
            cells = [c for c in result.grid if c.source == source
                     and c.position < LENS_POSITIONS]
            checkpoints = list(dict.fromkeys((c.checkpoint, c.iteration) for c in cells))
            points = list(dict.fromkeys(c.point for c in cells))
            positions = sorted({c.position for c in cells})
            at = {(c.checkpoint, c.point, c.position): c for c in cells}
            data = {"checkpoints": checkpoints, "points": points,
                    "cells": [[[[quiet(at[ck, pt, t].lens_top), round(at[ck, pt, t].p_next, 3),
                                 round(at[ck, pt, t].kl_bits, 3)] for t in positions]
                               for pt in points] for ck, _ in checkpoints]}
            final = checkpoints[-1][0]
            head = "".join(f"<th class=\"pos\">{html.escape(quiet(at[final, points[0], t].token))}"
                           f"→{html.escape(quiet(at[final, points[0], t].next_token))}</th>"
                           for t in positions)
            body = "".join(f"<tr><th>{html.escape(pt)}</th>"
                           + "<td class=\"cell\"></td>" * len(positions) + "</tr>"
                           for pt in points)
            last = len(checkpoints) - 1
            parts.append(
                f"<h3>{name}{html.escape(source)}: what each layer would predict</h3>"
                "<div class=\"lens\"><div class=\"controls\"><label>checkpoint <input "
                f"class=\"lens-checkpoint\" type=\"range\" min=\"0\" max=\"{last}\" "
                f"value=\"{last}\"> <span class=\"lens-name\"></span></label><span "
                "class=\"lens-readout\">each cell: the lens's first choice there, coloured by "
                "the probability it gives the true next token; hover one</span></div>"
                "<div class=\"table-wrap\"><table><thead><tr><th>point \\ token→next</th>"
                f"{head}</tr></thead><tbody>{body}</tbody></table></div>"
                + _json_block(data) + "</div>")
    return "".join(parts)


def similarity_view(folder: Path) -> str:
    """The layer x layer CKA of every pair of runs, one table per pair coloured by CKA, with a
    slider through the shared checkpoints (js/similarity.js); hovering a cell reads it out."""
    paths = [folder / "similarity.json"] + sorted(folder.glob("*/similarity.json"))
    parts = []
    for path in (p for p in paths if p.is_file()):
        result = SimilarityResult.load(path.parent)
        iterations = [str(it) for it in result.iterations]
        pairs = [{"a": a, "b": b, "rows": result.layers[a], "cols": result.layers[b],
                  "cka": [[[None if math.isnan(v) else round(float(v), 3) for v in row]
                           for row in result.matrix(it, a, b)] for it in result.iterations]}
                 for a, b in result.pairs]
        tables = "".join(
            f"<div class=\"pair\"><b>{html.escape(p['a'])} (rows) / {html.escape(p['b'])} "
            "(columns)</b><table><tr><th></th>"
            + "".join(f"<th>{html.escape(c)}</th>" for c in p["cols"]) + "</tr>"
            + "".join(f"<tr><th>{html.escape(r)}</th>" + "<td class=\"cell\"></td>"
                      * len(p["cols"]) + "</tr>" for r in p["rows"])
            + "</table></div>" for p in pairs)
        last = len(iterations) - 1
        where = "" if path.parent == folder else f" on {html.escape(path.parent.name)}"
        parts.append(
            f"<h3>Layer x layer linear CKA between the runs{where}</h3><div class=\"similarity\">"
            "<div class=\"controls\"><label>checkpoint <input class=\"similarity-checkpoint\" "
            f"type=\"range\" min=\"0\" max=\"{last}\" value=\"{last}\"> <span "
            "class=\"similarity-name\"></span></label><span class=\"similarity-readout\">each "
            "cell: the CKA of a layer of one run with a layer of the other (1: the same up to a "
            f"rotation and scale); hover one</span></div><div class=\"pairs\">{tables}</div>"
            + _json_block({"iterations": iterations, "pairs": pairs}) + "</div>")
    return "".join(parts)


def attention_view(folder: Path) -> str:
    """One interactive view per attention.json (a run's maps at each checkpoint), drawn by
    js/attention.js from the JSON embedded next to it (weights to 3 decimals)."""
    parts = []
    paths = [folder / "attention.json"] + sorted(folder.glob("*/attention.json"))
    for path in (p for p in paths if p.is_file()):
        result = AttentionResult.load(path.parent)
        if not result.checkpoints:
            continue
        n = len(parts)
        checkpoints = [{**c, "layers": [[[[round(w, 3) for w in row] for row in head]
                                         for head in layer] for layer in c["layers"]]}
                       for c in result.checkpoints]
        maps = {"prompt": result.prompt, "tokens": result.tokens, "checkpoints": checkpoints}
        last = len(maps["checkpoints"]) - 1
        n_layer = len(maps["checkpoints"][0]["layers"])
        layers = "".join(f"<option value=\"{i}\"{' selected' if i == n_layer - 1 else ''}>{i}"
                         "</option>" for i in range(n_layer))
        # no "<" at all inside the data block: "</script>" or "<!--" in a prompt cannot end it
        data = json.dumps(maps, separators=(",", ":")).replace("<", "\\u003c")
        name = "" if path.parent == folder else f"{html.escape(path.parent.name)} model: "
        parts.append(
            f"<h3>{name}where each head attends</h3>"
            f"<div class=\"attn\" data-maps=\"attention-maps-{n}\"><div class=\"controls\">"
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
        parts.append(_details("config.toml (as the run started)",
                              run.config_file.read_text(encoding="utf-8")))
    resumes = run.resumes()
    if resumes:  # each resume, with what it changed (resumes.jsonl)
        lines = [f"iteration {r.get('iter')}, {r.get('time')}, lmscope {r.get('lmscope')}: " + (
            ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in r["changed"].items())
            if r.get("changed") else "no setting changed") for r in resumes]
        parts.append(_details(f"resumed {len(resumes)} time{'s' * (len(resumes) != 1)} "
                              "(resumes.jsonl)", "\n".join(lines)))
    parts.append(loss_chart([run]))
    if run.samples_file.is_file():
        parts.append(markdown_to_html(run.samples_file.read_text(encoding="utf-8"), run.path))
    return "\n".join(parts)


# --- any other output folder ---------------------------------------------------------------------

def _holds_output(folder: Path) -> bool:
    """Whether `folder` holds what an lmscope command writes: tables, figures or results."""
    return folder.is_dir() and any(
        p.suffix in (".md", ".csv", ".json", ".png") and p.name != "report.html"
        for pattern in ("*", "*/*") for p in folder.glob(pattern))


def _output_folder(folder: Path, sections: Sequence[Section]) -> str:
    """The folder of a probe or a command: every view that finds its results here, the loss
    curves of the runs in it (a transfer's fine-tunings), its Markdown files and figures."""
    parts = [f"<h1>lmscope output: {html.escape(folder.name)}</h1>"]
    hide: list[str] = []
    skip: set[str] = set()
    for section in sections:
        view = section.view(folder) if section.view is not None else ""
        if view:
            parts.append(view)
            hide += section.hide
            skip.update(section.skip)
    runs = [RunDir(p.parent) for pattern in ("*/metrics.jsonl", "*/*/metrics.jsonl")
            for p in sorted(folder.glob(pattern))]
    if runs:
        parts.append("<h2>Runs</h2>" + loss_chart(runs))
        hide += [str(PurePath(r.loss_plot).relative_to(folder)) for r in runs]
    parts.append(_markdown_files(folder, skip=skip))
    parts.append(_figures_of(folder, tuple(hide)))
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
                   f"{html.escape(label)}</summary><div class=\"table-wrap\">"
                   + markdown_to_html(path.read_text(encoding="utf-8"), path.parent)
                   + "</div></details>")
    return "".join(out)


def _figures_of(folder: Path, hide: Sequence[str]) -> str:
    """The PNG figures under `folder` (but those whose path matches a pattern of `hide`), the
    folder's own first (a step's summary across models), then its sub-folders'."""
    paths = [p for p in sorted(folder.rglob("*.png"), key=lambda p: (len(p.parts), p))
             if not any(PurePath(p.relative_to(folder)).match(h) for h in hide)]
    return figures([(p, str(p.relative_to(folder))) for p in paths])


def _details(summary: str, text: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary><pre>{html.escape(text)}</pre></details>"


def _table(header: list, rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<div class=\"table-wrap\"><table><tr>{head}</tr>{body}</table></div>"


def _num(v, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)
