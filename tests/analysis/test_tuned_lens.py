"""The tuned lens (analysis/tuned_lens.py): untrained it is the logit lens exactly; trained, its
held-out divergence from the model's output falls at every point; it is kept beside the
checkpoint, refused for other weights, and read by the lens probe."""

import shutil

import pytest
import torch

from lmscope.analysis import lens as lens_probe
from lmscope.analysis import tuned_lens
from lmscope.analysis.lens import logit_lens
from lmscope.errors import LmscopeError
from lmscope.run.checkpoint import load
from tests.test_export import CHARS, _run_cli, tiny_checkpoint


@pytest.mark.parametrize("model", ["gpt", "lstm", "kgram"])
def test_untrained_translators_are_the_logit_lens(tmp_path, model):
    net = load(tiny_checkpoint(tmp_path / "ckpt", model=model), device="cpu").model
    points = net.lens_points()
    translators = tuned_lens.Translators([label for label, _ in points[:-1]],
                                         net.head.in_features)
    ids = torch.randint(1, CHARS.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    plain, tuned = logit_lens(net, ids), logit_lens(net, ids, translators=translators)
    assert torch.equal(plain.p_next, tuned.p_next)
    assert torch.equal(plain.top_ids, tuned.top_ids)


@pytest.fixture
def lens_run(tiny_run, tmp_path):
    """A copy of the tiny run (the tuned lens writes beside its checkpoints)."""
    return shutil.copytree(tiny_run, tmp_path / "run")


def test_training_lowers_the_held_out_divergence_at_every_point(lens_run, tiny_corpus):
    ckpt = load(lens_run, device="cpu")
    before = [p.detach().clone() for p in ckpt.model.parameters()]
    translators, record = tuned_lens.train(ckpt, str(tiny_corpus), steps=60, lr=3e-3,
                                           windows=64, val_windows=8)
    assert record.points == [label for label, _ in ckpt.model.lens_points()]
    assert len(record.kl_before_bits) == len(record.points)
    for b, a in zip(record.kl_before_bits[:-1], record.kl_after_bits[:-1], strict=True):
        assert a < b  # every translated point is closer to the output than the logit lens
    assert record.kl_after_bits[-1] == pytest.approx(0.0, abs=1e-5)  # the output itself
    # the model is frozen, left as it was (weights and gradient flags)
    assert all(torch.equal(a, b) for a, b in zip(before, ckpt.model.parameters(), strict=True))
    assert all(p.requires_grad for p in ckpt.model.parameters())
    # the held-out KL of the record is what the lens probe measures with the saved translators
    tuned_lens.save(ckpt.path, translators, record)
    loaded, same = tuned_lens.load(ckpt)
    assert same == record
    for a, b in zip(loaded.parameters(), translators.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_probe_reads_the_tuned_lens_and_refuses_a_missing_or_stale_one(lens_run,
                                                                          tiny_corpus):
    with pytest.raises(LmscopeError, match="has no tuned lens; train one with"):
        lens_probe.compute(lens_run, data=[str(tiny_corpus)], lens="tuned", device="cpu")
    lines = []
    tuned_lens.train_run(lens_run, str(tiny_corpus), which="final", steps=5, log=lines.append)
    assert lines[0].startswith("final: held-out KL")
    result = lens_probe.compute(lens_run, data=[str(tiny_corpus)], which="final", windows=2,
                                lens="tuned", device="cpu")
    assert result.lens == "tuned" and "tuned lens" in result.notes[0]
    # a second training keeps it, unless forced
    tuned_lens.train_run(lens_run, str(tiny_corpus), which="final", steps=5, log=lines.append)
    assert "kept the tuned lens" in lines[-1]
    # a lens copied beside other weights: refused
    for name in (tuned_lens.WEIGHTS, tuned_lens.RECORD):
        shutil.copyfile(lens_run / "checkpoints" / "final" / name,
                        lens_run / "checkpoints" / "iter_0000010" / name)
    with pytest.raises(LmscopeError, match="trained for other weights"):
        tuned_lens.load(lens_run / "checkpoints" / "iter_0000010")


def test_the_lens_train_command(lens_run, tiny_corpus, tmp_path):
    code, out, err = _run_cli("lens", "train", lens_run, "--data", tiny_corpus, "--steps", 3,
                              "--checkpoints", "final")
    assert code == 0, err
    assert "final: held-out KL" in out
    assert (lens_run / "checkpoints" / "final" / "tuned_lens.safetensors").is_file()
    code, out, err = _run_cli("probe", "lens", lens_run, "--data", tiny_corpus, "--lens", "tuned",
                              "--checkpoints", "final", "--windows", 2, "--out", tmp_path / "t")
    assert code == 0, err
    assert "# Tuned lens" in out and "Note: tuned lens" in out


def test_the_last_translator_trained_a_few_steps_stays_close_to_the_identity(lens_run,
                                                                            tiny_corpus):
    """The point before the output (after the last attention) is almost what the head reads,
    so its translator h -> h + A h + b stays near the identity: |A| small against |I|."""
    translators, _ = tuned_lens.train(lens_run, str(tiny_corpus), steps=10, windows=32,
                                      val_windows=4, device="cpu")
    last = translators.maps[-1]
    width = last.weight.size(0)
    assert translators.labels[-1] == "1.attn"
    assert last.weight.norm() / torch.eye(width).norm() < 0.05
    assert last.bias.norm() < 0.05 * width ** 0.5
