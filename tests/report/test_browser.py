"""The report as a reader sees it, in headless Chromium (skipped where there is none)."""

import json
import shutil

from lmscope.analysis import attribution, continuation, cross_domain, lens, similarity
from lmscope.analysis.attention import attention_probe
from lmscope.study.runner import write_report
from tests.report.browser import WIDTH, check_report, chromium_or_skip


def test_a_tiny_study_report_in_the_browser(tiny_run, tmp_path):
    chromium_or_skip()
    study = tmp_path / "study"
    shutil.copytree(tiny_run, study / "runs" / "tiny")
    (study / "study.json").write_text(json.dumps({"name": "tiny"}))
    attention_probe(study / "runs" / "tiny", "First Citizen:\nBefore we", study / "attention" / "tiny",
                    which="all")
    seen = check_report(write_report(study), "tiny-study-report")
    assert seen["images"] >= 1 and seen["scroll_width"] <= WIDTH
    assert seen["views"]["chart"] == 1  # the loss curves
    assert len(seen["after"]["heads"]) == 2  # the tiny model's last layer has two heads
    for shot in [*seen["screenshots"]["screens"], seen["screenshots"]["chart"]]:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_view_of_a_two_domain_study_in_the_browser(domain_runs, tmp_path):
    """The matrix, attribution (with continuations), attention and loss-curve views, each used
    as a reader would."""
    chromium_or_skip()
    study = tmp_path / "study"
    for name in ("play", "sums"):
        shutil.copytree(domain_runs[name], study / "runs" / name)
    (study / "study.json").write_text(json.dumps({"name": "two domains"}))
    runs = [study / "runs" / "play", study / "runs" / "sums"]
    corpora = [str(domain_runs["corpora"]["play"]), str(domain_runs["corpora"]["sums"])]
    cross_domain.compute(runs, corpora, device="cpu", log=lambda m: None).save(study / "matrix")
    for run in runs:
        attribution.compute(run, domain_runs["prompts"], steps=4, device="cpu").save(
            study / "attribution" / run.name)
        continuation.compute(run, domain_runs["prompts"], generate=3, steps=4, which="0,final",
                             methods=("grad_norm", "integrated_gradients")).save(
            study / "attribution" / run.name / "continuation")
        attention_probe(run, "He has 3 + 2", study / "attention" / run.name, which="all")
        lens.compute(run, data=corpora, windows=2, device="cpu").save(study / "lens" / run.name)
    similarity.compute(runs, corpora[0], windows=2, device="cpu").save(
        study / "similarity" / "play")
    seen = check_report(write_report(study), "two-domain-study-report")
    assert seen["views"] == {"attention": 2, "chart": 1, "matrix": 1, "attribution": 2,
                             "lens": 4, "similarity": 1,  # each model's lens on each corpus
                             "continuation": 2}
    assert " (prompt): grad_norm +" in seen["continuation_readout"]
    assert seen["similarity_readout"].startswith("play layer embed / sums layer embed: CKA ")
    assert "first choice" in seen["lens_readout"] and "KL to the output" in seen["lens_readout"]
    assert "nats/char" in seen["matrix_readout"] and "bits/char" in seen["matrix_readout"]
    assert seen["legend"] == ["iteration", "play: train", "play: validation", "sums: train",
                              "sums: validation"]


def test_a_probe_folder_opens_in_the_browser(tiny_run, tmp_path):
    """`lmscope probe attention ... --checkpoints all --out DIR`: its folder is a report too."""
    chromium_or_skip()
    out = tmp_path / "attention"
    attention_probe(tiny_run, "First Citizen:\nBefore we", out, which="all")
    seen = check_report(write_report(out), "attention-probe-report")
    assert seen["views"]["attention"] == 1 and seen["images"] == 1  # the grid of heads
