import csv
import json

from lmscope.analysis.generation import generation_probe, write_generation
from lmscope.metrics.text_quality import summarise
from tests.conftest import png


def test_generation_probe_scores_every_checkpoint(tiny_run, tmp_path):
    result = generation_probe(tiny_run, num_samples=3, max_new_tokens=40, prompt="First",
                              device="cpu", log=lambda m: None)
    names = [r["checkpoint"] for r in result.checkpoints]
    assert names == ["iter_0000010", "iter_0000020", "final"]
    final = result.checkpoints[-1]
    assert final["tokens_per_s"] > 0 and final["n_samples"] == 3
    # the pooled quality numbers are those of the samples' text
    expected = summarise(result.texts["final"])
    assert final["distinct_2_words"] == expected["distinct_2_words"]
    # generation-time attention for every sample, and the tracked training-time attention
    assert 0 < final["gen_entropy_bits"] < 6
    assert final["train_entropy_bits"] is not None  # tiny_run tracked at 0 and 30
    assert len(result.samples) == 9 and all("span90" in s for s in result.samples)
    # the same seeds give the same samples
    again = generation_probe(tiny_run / "checkpoints" / "final", num_samples=3,
                             max_new_tokens=40, prompt="First", device="cpu", log=lambda m: None)
    assert again.texts["final"] == result.texts["final"]

    write_generation(result, tmp_path, title="tiny")
    for name in ("generation.csv", "generation.md", "samples.csv", "samples/final.md",
                 "correlation_samples.csv", "correlation_samples.md", "correlation_loss.csv"):
        assert (tmp_path / name).is_file(), name
    assert png(tmp_path / "generation.png")
    with open(tmp_path / "samples.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 9


def test_models_without_attention_get_quality_only(tmp_path, tiny_corpus):
    from lmscope.config import resolve_config
    from lmscope.train.trainer import train
    from tests.conftest import TINY_SETTINGS

    settings = [s for s in TINY_SETTINGS if not s.startswith("model.")]
    train(resolve_config(data=str(tiny_corpus), model="kgram", overrides=settings),
          tmp_path / "kgram", progress=False, log=lambda *a: None)
    result = generation_probe(tmp_path / "kgram", num_samples=2, max_new_tokens=20,
                              which="final", device="cpu", log=lambda m: None)
    (row,) = result.checkpoints
    assert row["gen_entropy_bits"] is None and row["distinct_1_chars"] > 0
    assert result.correlation_samples == []
    json.dumps(result.checkpoints, allow_nan=False)
