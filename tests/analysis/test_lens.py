"""The logit lens (analysis/lens.py), checked against properties and an independent entropy
(scipy): the last point reads what the model outputs, ranks agree with the top tokens."""

import math
from pathlib import Path

import pytest
import scipy.stats
import torch

from lmscope.analysis import lens as lens_probe
from lmscope.analysis.lens import logit_lens
from lmscope.errors import LmscopeError
from lmscope.run.checkpoint import load
from tests.test_export import CHARS, _run_cli, tiny_checkpoint


@pytest.mark.parametrize("model,config", [("gpt", {}), ("gpt", {"norm_position": "post"}),
                                          ("lstm", {}), ("kgram", {})])
def test_the_last_point_is_the_models_own_output(tmp_path, model, config):
    net = load(tiny_checkpoint(tmp_path / "ckpt", model=model, **config), device="cpu").model
    ids = torch.randint(1, CHARS.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    lens = logit_lens(net, ids, top_k=3)
    n_points = len(net.lens_points())
    assert len(lens.points) == n_points and lens.p_next.shape == (n_points, 2, 19)
    with torch.no_grad():
        probs = net(ids)[:, :-1].softmax(-1)
    expected = probs.gather(-1, ids[:, 1:, None])[..., 0]
    assert torch.allclose(lens.p_next[-1], expected, atol=1e-5)
    assert lens.kl_bits[-1].abs().max() < 1e-4  # KL(final || final) = 0
    # ranks and top tokens agree: rank 1 exactly where the first choice is the next token
    assert torch.equal(lens.rank_next == 1, lens.top_ids[..., 0] == ids[:, 1:])
    assert lens.top_ids.shape == (n_points, 2, 19, 3)
    # entropy against scipy at one point and position
    p = probs[1, 7].double().numpy()
    assert lens.entropy_bits[-1, 1, 7].item() == pytest.approx(scipy.stats.entropy(p, base=2),
                                                               abs=1e-4)
    assert lens.entropy_bits.min() >= 0.0
    assert lens.entropy_bits.max() <= math.log2(probs.size(-1)) + 1e-4
    assert set(lens.mean_over_positions()) == {"p_next", "rank_next", "entropy_bits", "kl_bits"}


def test_gpt_points_are_the_embeddings_then_each_sublayer(tmp_path):
    net = load(tiny_checkpoint(tmp_path / "ckpt"), device="cpu").model
    assert [label for label, _ in net.lens_points()] == ["embed", "0.attn", "0.mlp", "1.attn",
                                                         "1.mlp"]


def test_agreement_with_the_output_is_complete_at_the_last_point(tmp_path):
    net = load(tiny_checkpoint(tmp_path / "ckpt"), device="cpu").model
    ids = torch.randint(1, CHARS.vocab_size, (3, 16), generator=torch.Generator().manual_seed(1))
    lens = logit_lens(net, ids)
    assert lens.agree_final[-1].all()
    with torch.no_grad():  # the first point by hand: the embeddings read by the final norm + head
        first = net.head(net.norm_f(net.tok_emb(ids) + net.pos_emb(torch.arange(16))))
    expected = first[:, :-1].argmax(-1) == net(ids)[:, :-1].argmax(-1)
    assert torch.equal(lens.agree_final[0], expected)


def test_a_single_token_has_no_next_token_to_read(tmp_path):
    net = load(tiny_checkpoint(tmp_path / "ckpt"), device="cpu").model
    with pytest.raises(LmscopeError, match="at least 2 tokens"):
        logit_lens(net, torch.tensor([[3]]))


PROMPTS = """
[[prompt]]
name = "citizen"
text = "First Citizen:\\nBefore we"
domain = "in"
expected = " "

[[prompt]]
name = "all"
text = "All:\\nSpeak, speak."
domain = "out"
"""


def test_the_probe_over_checkpoints_on_prompts_saves_and_loads(tiny_run, tmp_path):
    prompts = tmp_path / "prompts.toml"
    prompts.write_text(PROMPTS, encoding="utf-8")
    result = lens_probe.compute(tiny_run, prompts=prompts, device="cpu")
    iterations = sorted({r.iteration for r in result.rows})
    assert iterations == [10, 20, 30]
    points = result.points
    assert points == ["embed", "0.attn", "0.mlp", "1.attn", "1.mlp"]
    # n: the prompt's tokens after the first, plus the expected character
    citizen = [r for r in result.rows if r.source == "citizen"]
    assert {r.n_targets for r in citizen} == {len("First Citizen:\nBefore we")}
    assert {r.group for r in result.rows} == {"in-domain", "out-of-domain"}
    last = [r for r in result.rows if r.depth == len(points) - 1]
    assert all(r.agree_final == 1.0 and r.kl_bits < 1e-4 for r in last)
    # the grid: every point and position of each prompt, at every checkpoint
    per_checkpoint = len(points) * (citizen[0].n_targets + len("All:\nSpeak, speak.") - 1)
    assert len(result.grid) == len(iterations) * per_checkpoint
    assert {c.iteration for c in result.grid} == set(iterations)
    final = [c for c in result.grid if c.iteration == 30 and c.source == "all"]
    assert [c.lens_top for c in final if c.point == "1.mlp"] == [
        r for r in _first_choices(tiny_run, "All:\nSpeak, speak.")]
    files = result.save(tmp_path / "out")
    for kind in ("lens_csv", "grid_csv", "by_layer_png", "formation_png", "grid_1_png",
                 "grid_2_png", "summary_md"):
        assert Path(files[kind]).stat().st_size > 0
    summary = (tmp_path / "out" / "summary.md").read_text(encoding="utf-8")
    assert "Where the prediction forms" in summary and "in-domain" in summary
    back = lens_probe.LensResult.load(tmp_path / "out")
    assert [r.point for r in back.rows] == [r.point for r in result.rows]
    assert back.rows[3].kl_bits == pytest.approx(result.rows[3].kl_bits, rel=1e-5)
    assert back.grid[5].lens_top == result.grid[5].lens_top


def test_the_probe_on_a_corpus_reads_windows_and_leaves_nothing_out(tiny_run, tiny_corpus,
                                                                     tmp_path):
    result = lens_probe.compute(tiny_run, data=[str(tiny_corpus)], which="final", windows=3,
                                device="cpu")
    assert {r.n_targets for r in result.rows} == {3 * 31}  # 3 windows of the context (32)
    assert len({c.position for c in result.grid}) == 31
    assert not result.notes


def test_the_probe_needs_prompts_or_data_and_refuses_one_token(tiny_run, tmp_path):
    with pytest.raises(LmscopeError, match="--prompts FILE or --data CORPUS"):
        lens_probe.compute(tiny_run, device="cpu")
    one = tmp_path / "one.toml"
    one.write_text('[[prompt]]\ntext = "F"\n', encoding="utf-8")
    with pytest.raises(LmscopeError, match="one token with no expected character"):
        lens_probe.compute(tiny_run, prompts=one, device="cpu")


def test_the_lens_command(tiny_run, tiny_corpus, tmp_path):
    code, out, err = _run_cli("probe", "lens", tiny_run, "--data", tiny_corpus, "--windows", 2,
                              "--checkpoints", "final", "--out", tmp_path / "lens")
    assert code == 0, err
    assert "Logit lens" in out and "1.mlp" in out and "written to" in out
    assert (tmp_path / "lens" / "formation.png").is_file()


def _first_choices(run, text):
    """The final model's own first choice at each position of `text`, as the grid shows it."""
    from lmscope.data.chars import visible

    ckpt = load(run, device="cpu")
    ids = ckpt.tokenizer.encode(text)
    with torch.no_grad():
        top = ckpt.model(torch.tensor([ids]))[0, :-1].argmax(-1).tolist()
    return [visible(ckpt.tokenizer.token_text(t)) for t in top]
