"""The report as a reader sees it, in headless Chromium (skipped where there is none)."""

import json
import shutil

from lmscope.analysis.attention import attention_probe
from lmscope.study.runner import write_report
from tests.report.browser import check_report, chromium_or_skip


def test_a_tiny_study_report_in_the_browser(tiny_run, tmp_path):
    chromium_or_skip()
    study = tmp_path / "study"
    shutil.copytree(tiny_run, study / "runs" / "tiny")
    (study / "study.json").write_text(json.dumps({"name": "tiny"}))
    attention_probe(study / "runs" / "tiny", "First Citizen:\nBefore we", study / "attention" / "tiny",
                    which="all")
    seen = check_report(write_report(study), "tiny-study-report")
    assert seen["images"] >= 2
    assert len(seen["after"]["heads"]) == 2  # the tiny model's last layer has two heads
    for shot in seen["screenshots"].values():
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
