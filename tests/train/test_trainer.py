import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lmscope.config import resolve_config
from lmscope.errors import LmscopeError
from lmscope.run.run_dir import RunDir
from lmscope.train.trainer import Trainer, TrainingInterrupted, train
from tests.conftest import TINY_SETTINGS, stop_after


def _config(corpus, *extra):
    return resolve_config(data=str(corpus), overrides=[*TINY_SETTINGS, *extra])


def _quiet(config, run_dir, **kw):
    return train(config, run_dir, progress=False, log=lambda *a: None, **kw)


def test_a_tiny_model_overfits_a_tiny_corpus(tiny_corpus, tmp_path):
    result = _quiet(_config(tiny_corpus, "train.max_iters=300", "train.lr=1e-2",
                            "train.eval_interval=50", "train.checkpoint_at=[]",
                            "train.checkpoint_every=1000", "data.val_fraction=0.5"), tmp_path / "r")
    # The text repeats 20 times: a model that learned it predicts almost every character.
    assert result.val_loss < 0.5, result
    metrics = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    train_losses = [m["loss"] for m in metrics if m["kind"] == "train"]
    assert train_losses[-1] < train_losses[0] / 4


def test_run_folder_contents(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert {"config.toml", "tokenizer.json", "metrics.jsonl", "samples.md", "summary.json",
            "checkpoints"} <= names
    samples = (tiny_run / "samples.md").read_text()
    assert "iter_0000010" in samples and "iter_0000020" in samples and "## final" in samples
    rows = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == {"train", "eval", "final"}
    assert [r["iter"] for r in rows if r["kind"] == "eval"] == [0, 10, 20, 30]
    assert all({"loss", "lr", "tokens_per_s", "elapsed_s"} <= set(r) for r in rows
               if r["kind"] == "train")
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["iterations"] == 30 and summary["val_loss"] > 0


def _weights(run_dir, name="final"):
    return load_file(run_dir / "checkpoints" / name / "model.safetensors")


def _train_rows(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r.get("loss"), r.get("val_loss")) for r in rows if r["kind"] != "final"]


def test_stopping_and_resuming_continues_the_same_trajectory(tiny_corpus, tmp_path, monkeypatch):
    settings = ("train.max_iters=24", "model.dropout=0.1", "train.log_interval=1",
                "train.eval_interval=8", "train.checkpoint_at=[]", "train.checkpoint_every=1000")
    _quiet(_config(tiny_corpus, *settings), tmp_path / "straight")

    # Same run, interrupted (as by Ctrl-C) during the 13th step (the one that starts at
    # iteration 12), then resumed.
    restore = stop_after(monkeypatch, 12)
    trainer = Trainer(_config(tiny_corpus, *settings), tmp_path / "resumed", progress=False,
                      log=lambda *a: None)
    with pytest.raises(TrainingInterrupted, match="interrupted at iteration 13"):
        trainer.run()
    restore()
    assert not (tmp_path / "resumed" / "checkpoints" / "final").exists()
    _quiet(_config(tiny_corpus, *settings), tmp_path / "resumed", resume=True)

    assert _train_rows(tmp_path / "resumed") == _train_rows(tmp_path / "straight")
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_existing_run_folder_is_never_overwritten(tiny_corpus, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    with pytest.raises(LmscopeError, match="already holds files"):
        _quiet(_config(tiny_corpus), run)
    assert (run / "precious.txt").read_text() == "keep me"


def test_corpus_shorter_than_a_block_is_a_clear_error(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("hello world, this is short\n" * 2)
    with pytest.raises(LmscopeError, match="block_size"):
        _quiet(_config(short), tmp_path / "r")


def test_learning_rate_schedule_warms_up_then_decays():
    cfg = resolve_config(overrides=["train.max_iters=1000", "train.warmup_iters=100",
                                    "train.lr=1e-3", "train.min_lr=1e-4"])
    t = Trainer(cfg, "unused")
    lrs = [t.lr_at(i) for i in range(1000)]
    assert lrs[0] < lrs[50] < lrs[99] <= 1e-3
    assert max(lrs) == pytest.approx(1e-3, rel=1e-2)
    assert lrs[999] == pytest.approx(1e-4, rel=1e-3)
    assert all(x >= y for x, y in zip(lrs[100:], lrs[101:], strict=False))


@pytest.mark.parametrize("tokenizer", ["byte", "bpe"])
def test_byte_and_bpe_runs_train_sample_and_reload(tiny_corpus, tmp_path, tokenizer):
    from lmscope.api import generate, load

    extra = ["data.bpe_vocab_size=300"] if tokenizer == "bpe" else []
    result = _quiet(_config(tiny_corpus, f"data.tokenizer={tokenizer}", "train.max_iters=10",
                            "train.checkpoint_at=[]", *extra), tmp_path / "r")
    ckpt = load(tmp_path / "r")
    assert ckpt.tokenizer.kind == tokenizer and ckpt.iteration == 10
    assert result.val_bits_per_char > 0
    text = generate(ckpt, "First Citizen:", max_new_tokens=12, seed=0)
    assert isinstance(text, str) and text


def _rows(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resuming_with_more_iterations_keeps_the_history(tiny_corpus, tmp_path):
    run = tmp_path / "r"
    _quiet(_config(tiny_corpus, "train.max_iters=15", "train.lr_decay_iters=25"), run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "iter": 9')  # a line torn by a crash is dropped
    _quiet(_config(tiny_corpus, "train.max_iters=25", "train.lr_decay_iters=25"), run,
           resume=True)
    rows = _rows(run)
    evals = [r["iter"] for r in rows if r["kind"] == "eval"]
    assert evals == [0, 10, 15, 20, 25]  # the end of the first session stays in the history
    assert [r["iter"] for r in rows if r["kind"] == "final"] == [25]
    # config.toml says how the run started, resumes.jsonl what changed: together, what ran
    assert "max_iters = 15" in (run / "config.toml").read_text()
    assert RunDir(run).config().train.max_iters == 25
    assert RunDir(run).resumes()[0]["changed"] == {"train.max_iters": [15, 25]}


def test_resume_refuses_a_changed_corpus(tiny_corpus, tmp_path):
    run = tmp_path / "r"
    _quiet(_config(tiny_corpus, "train.max_iters=5"), run)
    tiny_corpus.write_text(tiny_corpus.read_text().upper())
    with pytest.raises(LmscopeError, match="not the text this run was trained on"):
        _quiet(_config(tiny_corpus, "train.max_iters=10"), run, resume=True)


def test_a_run_folder_left_by_a_failed_start_can_be_used_again(tiny_corpus, tmp_path):
    run = tmp_path / "r"
    with pytest.raises(LmscopeError, match="the val split has .* tokens, fewer than"):
        _quiet(_config(tiny_corpus, "model.block_size=512", "data.val_fraction=0.05"), run)
    assert not run.exists()  # a failed start leaves nothing behind, not even the folder
    _quiet(_config(tiny_corpus, "train.max_iters=5"), run)


def test_init_from_fine_tunes_a_checkpoint_with_its_model_and_tokenizer(tiny_run, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("Speak, speak. First, All: resolved.\n" * 40, encoding="utf-8")
    source = tiny_run / "checkpoints" / "iter_0000020"
    # the preset's [model] is replaced by the checkpoint's (n_layer 4 here is ignored)
    config = _config(other, f"train.init_from={source}", "model.n_layer=4",
                     "train.max_iters=10",
                     "train.checkpoint_at=[]", f"train.eval_corpora={tiny_run.parent / 'tiny.txt'}",
                     "train.final_eval=false")
    trainer = Trainer(config, tmp_path / "ft", progress=False, log=lambda *a: None)
    trainer._prepare_run_dir()
    trainer.setup()
    start = load_file(source / "model.safetensors")
    for name, t in trainer.raw_model.state_dict().items():
        if name in start:
            assert torch.equal(t, start[name]), name
    assert trainer.config.model.n_layer == 2  # the run's model is the checkpoint's
    assert config.model.n_layer == 4  # and the config it was given is left as it was
    assert trainer.tokenizer.to_dict() == json.loads((tiny_run / "tokenizer.json").read_text())

    result = _quiet(_config(other, f"train.init_from={source}", "train.max_iters=10",
                            "train.checkpoint_at=[]",
                            f"train.eval_corpora={tiny_run.parent / 'tiny.txt'}",
                            "train.final_eval=false"), tmp_path / "ft2")
    rows = [json.loads(x) for x in (tmp_path / "ft2" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert all("val_loss:tiny" in r for r in evals)  # the source corpus, for forgetting
    final = [r for r in rows if r["kind"] == "final"][0]
    assert "val_loss_full" not in final  # final_eval=false: no whole-split pass
    summary = json.loads((tmp_path / "ft2" / "summary.json").read_text())
    assert summary["val_loss_is"] == "estimate" and summary["val_loss"] == result.val_loss
    assert result.val_loss == evals[-1]["val_loss"]


def test_init_from_a_missing_checkpoint_is_a_clear_error(tiny_corpus, tmp_path):
    with pytest.raises(LmscopeError, match="does not exist"):
        _quiet(_config(tiny_corpus, f"train.init_from={tmp_path / 'nope'}"), tmp_path / "r")


def test_epochs_log_every_step_and_evaluate_after_each_epoch(tiny_corpus, tmp_path):
    # the tiny corpus has ~3150 train tokens: batches of 8 x 32 tokens make 12 steps an epoch
    result = _quiet(_config(tiny_corpus, "train.epochs=3", "train.max_steps_per_epoch=5",
                            "train.checkpoint_at=[]"), tmp_path / "r")
    assert result.iterations == 15
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if r["kind"] == "train"] == list(range(1, 16))
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [(r["iter"], r["epoch"]) for r in evals] == [(0, 0), (5, 1), (10, 2), (15, 3)]
    assert (tmp_path / "r" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    uncapped = _quiet(_config(tiny_corpus, "train.epochs=1", "train.checkpoint_at=[]"),
                      tmp_path / "u")
    tokens = len(tiny_corpus.read_text()) * 0.9
    assert uncapped.iterations == int(tokens // (8 * 32))


def test_a_mixture_trains_on_both_corpora_and_reports_each(tiny_corpus, tmp_path):
    numbers = tmp_path / "numbers.txt"
    numbers.write_text(" ".join(str(i % 50) for i in range(3000)) + "\n", encoding="utf-8")
    spec = f"{tiny_corpus}:0.75+{numbers}:0.25"
    result = _quiet(_config(spec, "train.checkpoint_at=[]"), tmp_path / "mix")
    run = tmp_path / "mix"
    tokenizer = json.loads((run / "tokenizer.json").read_text())
    assert "7" in json.dumps(tokenizer) and "Z" not in json.dumps(tokenizer)  # digits join
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    for r in evals:  # the mixture's val loss is the weighted mean of each part's
        parts = r["val_loss:tiny"], r["val_loss:numbers"]
        assert r["val_loss"] == pytest.approx(0.75 * parts[0] + 0.25 * parts[1])
    final = rows[-1]
    assert final["val_loss_full"] == pytest.approx(
        0.75 * final["val_loss_full:tiny"] + 0.25 * final["val_loss_full:numbers"])
    assert result.val_loss == final["val_loss_full"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["corpus"] == "tiny:0.75+numbers:0.25"
    meta = json.loads((run / "checkpoints" / "final" / "meta.json").read_text())
    assert meta["corpus"] == "tiny:0.75+numbers:0.25"

    # resuming checks the mixture: other weights are other training text
    with pytest.raises(LmscopeError, match="cannot change the|not the text this run"):
        _quiet(_config(f"{tiny_corpus}:0.5+{numbers}:0.5", "train.max_iters=40"), run,
               resume=True)
    _quiet(_config(spec, "train.checkpoint_at=[]", "train.max_iters=40"), run, resume=True)


RESUMED = ("train.max_iters=16", "train.log_interval=1", "train.eval_interval=8",
           "train.checkpoint_at=[]")


def _stopped_at_6_and_resumed(corpus, extra, tmp_path, monkeypatch, *, before_resume=None):
    """tmp_path/straight: 16 iterations in one go; tmp_path/resumed: stopped after 6, then
    resumed to 16 (`before_resume(settings)` runs in between); their trajectories compared."""
    settings = (*RESUMED, *extra)
    _quiet(_config(corpus, *settings), tmp_path / "straight")
    restore = stop_after(monkeypatch, 6)
    with pytest.raises(TrainingInterrupted):
        Trainer(_config(corpus, *settings), tmp_path / "resumed", progress=False,
                log=lambda *a: None).run()
    restore()
    if before_resume is not None:
        before_resume(settings)
    _quiet(_config(corpus, *settings), tmp_path / "resumed", resume=True)
    assert _train_rows(tmp_path / "resumed") == _train_rows(tmp_path / "straight")


def test_a_stopped_mixture_run_resumes_bit_identically(tiny_corpus, tmp_path, monkeypatch):
    numbers = tmp_path / "numbers.txt"
    numbers.write_text(" ".join(str(i % 50) for i in range(3000)) + "\n", encoding="utf-8")
    spec = f"{tiny_corpus}:0.6+{numbers}:0.4"
    _stopped_at_6_and_resumed(spec, ("train.checkpoint_every=1000",), tmp_path, monkeypatch)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _poison_training_forward(monkeypatch, calls: set[int]):
    """Make the model's training forward passes number `calls` (1-based) return NaN logits."""
    from lmscope.models.gpt import GPT

    real_forward = GPT.forward
    seen = {"n": 0}

    def forward(self, idx, *args, **kwargs):
        logits = real_forward(self, idx, *args, **kwargs)
        if self.training:
            seen["n"] += 1
            if seen["n"] in calls:
                return logits * float("nan")
        return logits

    monkeypatch.setattr(GPT, "forward", forward)


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_state(
        tiny_corpus, tmp_path, monkeypatch):
    _poison_training_forward(monkeypatch, {17})
    run = tmp_path / "r"
    with pytest.raises(LmscopeError, match="non-finite loss at iteration 17; the last good state"):
        _quiet(_config(tiny_corpus, "train.checkpoint_at=[]"), run)
    last = run / "checkpoints" / "last"
    assert json.loads((last / "train_state.json").read_text())["iter"] == 10
    weights = _weights(run, "last")
    assert all(torch.isfinite(w).all() for w in weights.values())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["iter"] for r in rows) == 15  # nothing logged past the last good step
    monkeypatch.undo()
    _quiet(_config(tiny_corpus, "train.checkpoint_at=[]"), run, resume=True)  # and it resumes


def test_skip_nonfinite_skips_and_counts_bad_steps(tiny_corpus, tmp_path, monkeypatch):
    _poison_training_forward(monkeypatch, {5, 6, 21})
    run = tmp_path / "r"
    result = _quiet(_config(tiny_corpus, "train.skip_nonfinite=true", "train.log_interval=1"),
                    run)
    assert math.isfinite(result.val_loss)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = {r["iter"]: r for r in rows if r["kind"] == "train" and r["iter"] > 0}
    assert train_rows[5]["loss"] is None and train_rows[5]["skipped_steps"] == 1
    assert train_rows[30]["skipped_steps"] == 3
    assert json.loads((run / "summary.json").read_text())["skipped_steps"] == 3
    assert all(torch.isfinite(w).all() for w in _weights(run).values())


def test_the_trainer_never_changes_the_config_it_was_given(tiny_corpus, tmp_path, monkeypatch):
    """A relative corpus path (made absolute), epochs (which plan max_iters) and init_from (which
    brings its own model) all change the run's config, never the caller's."""
    import copy

    monkeypatch.chdir(tiny_corpus.parent)
    config = _config(tiny_corpus.name, "train.epochs=2", "train.max_steps_per_epoch=3")
    given = copy.deepcopy(config)
    _quiet(config, tmp_path / "run")
    assert config == given
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert f'corpus = "{tiny_corpus.resolve()}"' in saved  # what the run resolved is recorded
    tuned = _config(tiny_corpus.name, f"train.init_from={tmp_path / 'run'}", "model.n_layer=4",
                    "train.max_iters=2", "train.checkpoint_at=[]")
    given = copy.deepcopy(tuned)
    _quiet(tuned, tmp_path / "tuned")
    assert tuned == given


def test_the_python_api_refuses_a_changed_model_or_data_on_resume(tiny_corpus, tmp_path):
    """The resume policy of `lmscope train --resume` holds for lmscope.train(..., resume=True)."""
    config = _config(tiny_corpus, "train.max_iters=10")
    _quiet(config, tmp_path / "run")
    for changed, section in ((_config(tiny_corpus, "train.max_iters=10", "model.n_layer=3"),
                              "model"),
                             (_config(tiny_corpus, "train.max_iters=10", "data.val_fraction=0.2"),
                              "data")):
        with pytest.raises(LmscopeError, match=rf"cannot change the \[{section}\] config"):
            _quiet(changed, tmp_path / "run", resume=True)
    result = _quiet(_config(tiny_corpus, "train.max_iters=12"), tmp_path / "run", resume=True)
    assert result.iterations == 12  # [train] may change


def test_a_fine_tuning_resumes_with_the_checkpoints_model(tiny_run, tmp_path, monkeypatch):
    """A stopped train.init_from run resumed with the config it was started with (whose [model]
    is not the checkpoint's) goes on with the checkpoint's model, as an uninterrupted one."""
    source = tiny_run / "checkpoints" / "iter_0000020"
    config = _config(tiny_run.parent / "tiny.txt", f"train.init_from={source}", "model.n_layer=4",
                     "train.max_iters=12", "train.checkpoint_at=[]")
    straight = _quiet(config, tmp_path / "straight")
    restore = stop_after(monkeypatch, 5)
    with pytest.raises(TrainingInterrupted):
        _quiet(config, tmp_path / "run")
    restore()
    resumed = _quiet(config, tmp_path / "run", resume=True)
    assert resumed.val_loss == straight.val_loss
    assert _weights(tmp_path / "run").keys() == _weights(tmp_path / "straight").keys()


def test_the_log_schedule_keeps_iteration_0_and_the_powers_of_two(tiny_corpus, tmp_path):
    _quiet(_config(tiny_corpus, "train.max_iters=12", "train.checkpoint_at=[]",
                   "train.checkpoint_schedule=log", "train.checkpoint_log_until=4",
                   "train.checkpoint_every=10"), tmp_path / "r")
    kept = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir()
                  if p.name.startswith("iter_"))
    assert kept == [f"iter_{i:07d}" for i in (0, 1, 2, 4, 10)]
    untrained = load_file(tmp_path / "r" / "checkpoints" / "iter_0000000" / "model.safetensors")
    after_one = load_file(tmp_path / "r" / "checkpoints" / "iter_0000001" / "model.safetensors")
    assert any(not torch.equal(untrained[k], after_one[k]) for k in untrained)


def test_summary_says_where_the_seconds_of_a_run_went(tiny_corpus, tmp_path):
    """summary.json's phase_seconds: each phase of the run (this session), none counted twice:
    together at most the whole train() call, which is at most the time around it; the steps are
    the loop's step time (tokens_per_s's denominator)."""
    import time

    config = resolve_config(data=str(tiny_corpus), overrides=TINY_SETTINGS)
    start = time.perf_counter()
    result = train(config, tmp_path / "run", progress=False, log=lambda *a: None)
    wall = time.perf_counter() - start
    phases = json.loads((tmp_path / "run" / "summary.json").read_text())["phase_seconds"]
    assert set(phases) == {"start", "steps", "evaluate", "tracking", "checkpoints", "samples",
                           "final_eval", "plot", "total"}  # tracking: attention, by default
    assert all(v > 0 for v in phases.values()), phases
    parts = sum(v for k, v in phases.items() if k != "total")
    assert parts <= phases["total"] + 0.01 and phases["total"] <= wall
    steps_per_s = 30 * 8 * 32 / phases["steps"]  # iterations x batch x block / steps' seconds
    assert steps_per_s == pytest.approx(result.tokens_per_s, rel=0.01)
    # each checkpoint says how much of its elapsed_s went into optimizer steps, so far
    metas = [json.loads((tmp_path / "run" / "checkpoints" / name / "meta.json").read_text())
             for name in ("iter_0000010", "final")]
    assert metas[0]["tokens_seen"] == 10 * 8 * 32
    assert 0 < metas[0]["step_seconds"] < metas[1]["step_seconds"] <= metas[1]["elapsed_s"]
    assert metas[1]["step_seconds"] == pytest.approx(phases["steps"], abs=0.002)


def test_muon_trains_the_blocks_matrices_and_adamw_the_rest(tiny_corpus):
    """train.optimizer=muon: torch's Muon on exactly the 2-D weights of the GPT's blocks (at
    train.muon_lr over train.lr of the schedule), AdamW on the embeddings, head, norms and
    biases; every parameter in exactly one group."""
    from lmscope.models import build_model
    from lmscope.train.optimizers import Optimizers, make_optimizer

    config = _config(tiny_corpus, "train.optimizer=muon", "train.muon_lr=0.05",
                     "train.lr=0.002", "model.bias=true")
    config.model.vocab_size = 20
    model = build_model("gpt", config.model)
    opt = make_optimizer(model, config.train)
    assert isinstance(opt, Optimizers)
    muon, adam = opt.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adam, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    in_adam = {names[id(p)] for g in adam.param_groups for p in g["params"]}
    assert in_muon == {n for n, p in model.named_parameters()
                       if n.startswith("blocks.") and p.dim() == 2}
    assert in_muon.isdisjoint(in_adam) and in_muon | in_adam == set(names.values())
    assert "tok_emb.weight" in in_adam and "blocks.0.norm1.bias" in in_adam
    assert [g["lr_scale"] for g in opt.param_groups] == [25.0, 1.0, 1.0]


def test_a_stopped_muon_run_resumes_bit_identically(tiny_corpus, tmp_path, monkeypatch):
    """Muon's momentum buffers and AdamW's moments are saved as one optimizer's state and
    restored: 6 + 10 iterations give the weights of 16 in one go; train.optimizer may not
    change on resume."""
    def as_adamw(settings):
        with pytest.raises(LmscopeError, match=r"cannot change train.optimizer \(muon -> adamw"):
            _quiet(_config(tiny_corpus, *settings[:-1]), tmp_path / "resumed", resume=True)

    _stopped_at_6_and_resumed(tiny_corpus, ("train.optimizer=muon",), tmp_path, monkeypatch,
                              before_resume=as_adamw)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [loss for _, loss, _ in _train_rows(tmp_path / "straight") if loss is not None]
    assert losses[-1] < losses[0]  # it trains


def test_an_estimate_is_the_same_on_any_number_of_threads(tiny_corpus, tmp_path):
    """Its batches are computed on one thread each (several at once): the losses a run logs do
    not depend on how many threads it had."""
    trainer = Trainer(_config(tiny_corpus, "train.eval_iters=7"), tmp_path / "r", progress=False,
                      log=lambda *a: None)
    trainer.setup()
    before = torch.get_num_threads()
    try:
        found = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            found.append(trainer.estimate_loss())
    finally:
        torch.set_num_threads(before)
    assert found[0] == found[1] == found[2]
    assert set(found[0]) == {"train", "val"} and all(math.isfinite(v) for v in found[0].values())
    assert torch.get_num_threads() == before
