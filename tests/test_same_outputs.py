"""benchmarks/same_outputs.py: what it calls the same, and what it does not."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "same_outputs", Path(__file__).resolve().parents[1] / "benchmarks" / "same_outputs.py")
same_outputs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(same_outputs)


def _study(root: Path, tokens_per_s: str, loss: str, seconds: str) -> Path:
    (root / "gen").mkdir(parents=True)
    (root / "gen" / "generation.csv").write_text(
        f"checkpoint,val_loss,tokens_per_s\nfinal,{loss},{tokens_per_s}\n")
    (root / "README.md").write_text(f"# Study\nSeconds per step: {{\"train\": {seconds}}}.\n\n"
                                    f"| run | val loss | seconds |\n|---|---|---|\n"
                                    f"| a | {loss} | {seconds} |\n\nsee {root}/runs/a\n")
    return root


def test_paths_and_timings_are_masked_and_nothing_else(tmp_path):
    a = _study(tmp_path / "a", "512.3", "2.25", "17")
    b = _study(tmp_path / "b", "611.9", "2.25", "25")
    result = same_outputs.compare(a, b)
    assert result["differ"] == [] and result["identical_as_they_are"] == 0
    c = _study(tmp_path / "c", "512.3", "2.26", "17")  # a different loss is a difference
    assert same_outputs.compare(a, c)["differ"] == ["README.md", "gen/generation.csv"]
    (c / "extra.txt").write_text("x")
    assert same_outputs.compare(a, c)["only_after"] == ["extra.txt"]
