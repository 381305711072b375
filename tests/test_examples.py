"""The example in examples/ runs as its readers will run it."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HANG_TIMEOUT

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_the_api_tour_runs(shared_data, tmp_path):
    r = subprocess.run([sys.executable, str(EXAMPLES / "tour.py"), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for expected in ("trained 300 iterations", "val loss over training", "shakespeare:",
                     "wikipedia:", "after '...windo'", "most important characters",
                     "attention entropy", "attention snapshots tracked", "distinct_2_words"):
        assert expected in out, (expected, out)
    assert (tmp_path / "run" / "checkpoints" / "final" / "model.safetensors").is_file()
