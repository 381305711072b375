import json
import os
import signal

import pytest

from lmscope.errors import LmscopeError
from lmscope.study.runner import run_study
from lmscope.study.spec import load_study
from tests.conftest import DOMAIN_SETTINGS, MATH_TEXT, PROMPTS, TINY_TEXT

ARTIFACTS = [
    "stats/table.csv", "stats/table.md", "stats/chars_play.png", "stats/chars_sums.png",
    "runs/play/checkpoints/final/meta.json", "runs/play/samples.md", "runs/sums/summary.json",
    "matrix/matrix.csv", "matrix/matrix_bits.csv", "matrix/oov.csv", "matrix/matrix.png",
    "transfer/summary.csv", "transfer/summary.md", "transfer/play-to-sums/curves.png",
    "transfer/from_play.png", "transfer/from_sums.png",
    "transfer/sums-to-play/samples.md", "softmax/play/softmax.csv", "softmax/sums/entropy.png",
    "softmax/sums/expected_prob.png", "attribution/play/attribution.csv",
    "attribution/sums/by_class.png", "attribution/sums/heatmap_sum.png",
    "softmax/summary.csv", "softmax/summary.md", "softmax/summary.png",
    "attribution/by_class_models.csv", "attribution/by_class_models.md",
    "attribution/by_class_models.png",
    "timings.json", "study.json", "README.md", "report.html",
]


def write_study(tmp_path, extra=""):
    (tmp_path / "play.txt").write_text(TINY_TEXT, encoding="utf-8")
    (tmp_path / "sums.txt").write_text(MATH_TEXT, encoding="utf-8")
    (tmp_path / "prompts.toml").write_text(PROMPTS, encoding="utf-8")
    model = "\n".join(f"{s.split('=')[0].split('.')[1]} = {s.split('=')[1]}"
                      for s in DOMAIN_SETTINGS if s.startswith("model."))
    train = "\n".join(f"{s.split('=')[0].split('.')[1]} = "
                      f"{'[' + s.split('=')[1] + ']' if 'checkpoint_at' in s else repr(s.split('=')[1]) if s.endswith('cpu') else s.split('=')[1]}"
                      for s in DOMAIN_SETTINGS if s.startswith("train."))
    study = tmp_path / "study.toml"
    study.write_text(f"""
[study]
corpora = ["{tmp_path / 'play.txt'}", "{tmp_path / 'sums.txt'}"]
prompts = "prompts.toml"
[model]
{model}
[train]
{train}
[transfer]
checkpoints = "early,late"
iters = 6
eval_every = 3
eval_iters = 2
[attribution]
steps = 4
{extra}""", encoding="utf-8")
    return study


def test_a_study_makes_every_artifact_and_continues_after_a_stop(tmp_path):
    study = write_study(tmp_path)
    out = tmp_path / "out"
    seen = []

    def stop_at_transfer(message):
        seen.append(message)
        if message == "[transfer]":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(study, out, device="cpu", log=stop_at_transfer)
    assert (out / "matrix" / ".done").is_file() and not (out / "transfer" / ".done").exists()

    seen.clear()
    timings = run_study(study, out, device="cpu", log=seen.append)
    assert "[stats] already complete" in seen and "[matrix] already complete" in seen
    assert "[transfer]" in seen and "[attribution]" in seen
    assert set(timings) == {"stats", "train", "matrix", "transfer", "softmax", "attribution"}
    for name in ARTIFACTS:
        assert (out / name).is_file(), name
    matrix = json.loads((out / "matrix" / "matrix.json").read_text())
    assert matrix["joint_vocabulary"] and matrix["own_domain_lowest"] == {"play": True, "sums": True}
    readme = (out / "README.md").read_text()
    for heading in ("## Corpora", "## Training", "## Zero-shot cross-domain matrix",
                    "## Few-shot transfer", "## Softmax confidence", "## Gradient attribution"):
        assert heading in readme, heading
    for link in readme.split("](")[1:]:
        assert (out / link.split(")")[0]).is_file(), link

    # a third run does nothing and changes nothing
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    seen.clear()
    run_study(study, out, device="cpu", log=seen.append)
    assert all(m.endswith("already complete") for m in seen), seen
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert before == after


def test_a_stopped_training_run_is_resumed(tmp_path, monkeypatch):
    from lmscope.train.trainer import Trainer, TrainingInterrupted

    study = write_study(tmp_path)
    study.write_text(study.read_text().replace("[study]", '[study]\nsteps = ["train"]'))
    uninterrupted = run_study(study, tmp_path / "plain", device="cpu", log=lambda m: None)
    assert set(uninterrupted) == {"train"}

    step = Trainer.step

    def ctrl_c_at_15(self, lr):  # Ctrl-C in the middle of the second run
        if self.iter == 15 and self.corpus_name == "sums":
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, lr)

    monkeypatch.setattr(Trainer, "step", ctrl_c_at_15)
    with pytest.raises(TrainingInterrupted):
        run_study(study, tmp_path / "out", device="cpu", log=lambda m: None)
    monkeypatch.setattr(Trainer, "step", step)
    messages = []
    run_study(study, tmp_path / "out", device="cpu", log=messages.append)
    assert any(m.startswith("  play: trained") for m in messages)
    assert any(m.startswith("  sums: resuming") for m in messages)
    for name in ("play", "sums"):
        plain = json.loads((tmp_path / "plain" / "runs" / name / "summary.json").read_text())
        resumed = json.loads((tmp_path / "out" / "runs" / name / "summary.json").read_text())
        assert resumed["val_loss"] == plain["val_loss"]  # the same trajectory


@pytest.mark.parametrize("extra,fragment", [
    ("[plots]\nx = 1\n", "unknown table [plots]"),
    ("[softmax]\ntop_kk = 3\n", "did you mean softmax.top_k"),
    ("[quick.train]\nmax_iters = 3\n", None),
    ("[faithfulness]\nrandom_orders = 0\n", "[faithfulness] random_orders must be"),
    ("[faithfulness]\nmethods = [\"deeplift\"]\n", "[faithfulness] method 'deeplift' is not"),
    ("generate = -1\n", "[attribution] --generate must be at least 1"),
])
def test_bad_study_files(tmp_path, extra, fragment):
    study = write_study(tmp_path, extra)
    if fragment is None:
        assert load_study(study, quick=True).train["max_iters"] == 3
        return
    with pytest.raises(LmscopeError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_study(study)


def test_study_file_errors(tmp_path):
    study = write_study(tmp_path)
    with pytest.raises(LmscopeError, match="has no \\[quick\\] table"):
        load_study(study, quick=True)
    text = study.read_text()
    study.write_text(text.replace('prompts = "prompts.toml"', 'steps = ["train", "plot"]'))
    with pytest.raises(LmscopeError, match="unknown step 'plot'"):
        load_study(study)
    study.write_text(text.replace('prompts = "prompts.toml"', 'steps = ["softmax"]'))
    with pytest.raises(LmscopeError, match="needs \\[study\\] prompts"):
        load_study(study)
    sums = tmp_path / "sums.txt"
    one_corpus = text.replace(f', "{sums}"', "")
    study.write_text(one_corpus.replace('prompts = "prompts.toml"',
                                        'steps = ["train", "similarity"]'))
    with pytest.raises(LmscopeError, match="the similarity step compares runs with each other "
                                           "and this study trains one"):
        load_study(study)
    study.write_text(text.replace("[train]", "[train]\nmax_iterz = 3"))
    with pytest.raises(LmscopeError, match="did you mean train.max_iters"):
        load_study(study)
    with pytest.raises(LmscopeError, match="does not exist"):
        load_study(tmp_path / "missing.toml")
    # another study's folder is never overwritten
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(LmscopeError, match="already holds files"):
        run_study(write_study(tmp_path), tmp_path / "taken", log=lambda m: None)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_an_architecture_study_trains_each_variant_and_compares_them(tmp_path):
    study = write_study(tmp_path)
    text = study.read_text()
    head, _, rest = text.partition("[model]")
    head = head.replace(f'"{tmp_path / "sums.txt"}"', "").replace('", ]', '"]').replace(
        '", ]', '"]')
    variants = '''
steps = ["train", "compare", "generate", "attention", "dynamics", "similarity"]

[[variant]]
name = "pre"

[[variant]]
name = "post"
model = { norm_position = "post" }

[[variant]]
name = "nopos"
model = { pos_emb = "none" }
train = { lr = 2e-3 }

[generate]
prompt = "First"
top_p = [0.5, 1.0]
max_new_tokens = 10

[attention]
prompt = "First Citizen"
layer = 1
heads = "0"
'''
    study.write_text(head.replace('prompts = "prompts.toml"', 'prompts = "prompts.toml"'
                                  + variants) + "[model]" + rest.split("[transfer]")[0])
    loaded = load_study(study)
    assert [r.name for r in loaded.runs()] == ["pre", "post", "nopos"]
    assert loaded.run_config(loaded.runs()[1]).model.norm_position == "post"
    assert loaded.run_config(loaded.runs()[2]).train.lr == 2e-3
    out = tmp_path / "arch"
    run_study(study, out, device="cpu", log=lambda m: None)
    for name in ("compare/compare.csv", "compare/curves.png", "generate/summary.md",
                 "generate/pre/top_p_sweep.md", "generate/nopos/top_p_sweep.csv",
                 "attention/post/attention_L1_H0.png", "runs/nopos/loss.png", "README.md"):
        assert (out / name).is_file(), name
    rows = (out / "compare" / "compare.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["pre", "post", "nopos"]
    assert "| post | First" in (out / "generate" / "summary.md").read_text()
    assert "## Run comparison" in (out / "README.md").read_text()
    # the variants layer by layer: the same layers, on the study's one corpus
    sim = (out / "similarity" / "summary.csv").read_text().splitlines()
    assert {tuple(r.split(",")[1:3]) for r in sim[1:]} == {("pre", "post"), ("pre", "nopos"),
                                                           ("post", "nopos")}
    assert (out / "similarity" / "play" / "cka_pre_post.png").is_file()
    assert (out / "dynamics" / "nopos" / "similarity.csv").is_file()
    assert "## Representation similarity between the models" in (out / "README.md").read_text()

    study.write_text(study.read_text().replace('steps = ["train", "compare", "generate", '
                                               '"attention", "dynamics", "similarity"]',
                                               'steps = ["train", "matrix"]'))
    with pytest.raises(LmscopeError, match="the matrix step compares one model per corpus"):
        load_study(study)


def test_data_tables_and_quick_variant_tables(tmp_path):
    (tmp_path / "a.txt").write_text(TINY_TEXT, encoding="utf-8")
    (tmp_path / "b.txt").write_text(MATH_TEXT, encoding="utf-8")
    study = tmp_path / "study.toml"
    study.write_text(f"""
[study]
corpora = ["{tmp_path / 'a.txt'}"]
steps = ["train", "compare"]
[data]
tokenizer = "byte"
[train]
max_iters = 50
[[variant]]
name = "plain"
[[variant]]
name = "mix"
data = {{ corpus = "{tmp_path / 'a.txt'}:0.5+{tmp_path / 'b.txt'}:0.5" }}
train = {{ max_iters = 80 }}
[quick.train]
max_iters = 5
[quick.variants.mix]
train = {{ max_iters = 7 }}
""")
    full = load_study(study)
    plain, mix = (full.run_config(r) for r in full.runs())
    assert plain.data.tokenizer == mix.data.tokenizer == "byte"
    assert "+" in mix.data.corpus and mix.train.max_iters == 80 and plain.train.max_iters == 50
    assert not plain.log.tensorboard
    quick = load_study(study, quick=True)
    plain, mix = (quick.run_config(r) for r in quick.runs())
    assert (plain.train.max_iters, mix.train.max_iters) == (5, 7)

    study.write_text(study.read_text() + "\n[log]\ntensorboard = true\n[track]\n"
                     "attention_every = 3\n")  # the [log] and [track] tables reach every run
    configs = [load_study(study).run_config(r) for r in load_study(study).runs()]
    assert all(c.log.tensorboard and c.track.attention_every == 3 for c in configs)

    study.write_text(study.read_text().replace("[quick.variants.mix]", "[quick.variants.mixx]"))
    with pytest.raises(LmscopeError, match=r"\[quick.variants.mixx\] names no \[\[variant\]\] \("
                                           "did you mean mix"):
        load_study(study, quick=True)


def test_a_mixture_corpus_has_one_run_folder_for_every_step(tmp_path):
    from lmscope.study.plan import Study
    from lmscope.study.runner import StudyRunner

    study = Study(corpora=["tinystories:0.7+3seqs:0.3", "shakespeare"])
    runner = StudyRunner(study, tmp_path)
    trained = [runner.run_dir(r.name) for r in study.runs()]  # where step_train writes
    looked_up = [runner.corpus_dir(c) for c in study.corpora]  # where matrix, softmax... read
    assert trained == looked_up
    assert trained[0].name == "tinystories0.7-3seqs0.3"


def test_attribution_with_continuations_and_the_faithfulness_step(tmp_path):
    """[attribution] generate = N adds each model's continuation; the faithfulness step ranks
    the methods of every model beside random orders, and reads the winner's character classes
    from the attribution step."""
    study = write_study(tmp_path, 'generate = 2\ngenerate_checkpoints = "final"\n'
                                  'methods = ["grad_norm", "occlusion"]\n'
                                  '[faithfulness]\nmethods = ["grad_norm", "occlusion"]\n'
                                  'checkpoints = "10,final"\nsteps = 4\nrandom_orders = 4\n')
    study.write_text(study.read_text().replace(
        "[study]", '[study]\nsteps = ["train", "attribution", "faithfulness"]'))
    out = tmp_path / "out"
    run_study(study, out, device="cpu", log=lambda m: None)
    for name in ("play", "sums"):
        assert (out / "attribution" / name / "continuation" / "steps.csv").is_file()
        ranking = (out / "faithfulness" / name / "ranking.csv").read_text().splitlines()
        assert len(ranking) == 1 + 2 * 3  # two checkpoints, two methods and random
    summary = (out / "faithfulness" / "summary.md").read_text()
    assert "| random |" in summary and "**Reading**" in summary
    assert summary.count("character classes rank") == 2  # under each model's winner
    assert "Which attribution to believe" in (out / "README.md").read_text()


@pytest.mark.xdist_group("ray")  # it starts a local Ray instance
def test_runs_trained_two_at_a_time_are_the_runs_trained_one_after_another(tmp_path):
    """--jobs 2 trains the two runs (then the two transfer pairs) side by side, each in its own
    process, with the same results as --jobs 1 (the same checkpoints' weights and losses) where
    the runs get the same number of threads (the test processes have one); each run is marked
    done."""
    study = write_study(tmp_path)
    study.write_text(study.read_text().replace("[study]",
                                               '[study]\nsteps = ["train", "transfer"]'))
    seen = []
    run_study(study, tmp_path / "one", device="cpu", log=lambda m: None, jobs=1)
    run_study(study, tmp_path / "two", device="cpu", log=seen.append, jobs=2)
    for name in ("play", "sums"):
        one, two = (tmp_path / out / "runs" / name for out in ("one", "two"))
        assert (two / ".done").is_file()
        for ckpt in ("iter_0000010", "final"):
            a, b = (p / "checkpoints" / ckpt / "model.safetensors" for p in (one, two))
            assert a.read_bytes() == b.read_bytes(), (name, ckpt)
        losses = [json.loads((p / "summary.json").read_text())["val_loss"] for p in (one, two)]
        assert losses[0] == losses[1]
    assert sum("whole-split val loss" in m for m in seen) == 2
    # the transfer pairs too: each a unit, the same table
    summary = [(tmp_path / out / "transfer" / "summary.csv").read_bytes() for out in ("one", "two")]
    assert summary[0] == summary[1]
    assert all((tmp_path / "two" / "transfer" / pair / ".done").is_file()
               for pair in ("play-to-sums", "sums-to-play"))
    with pytest.raises(LmscopeError, match="--jobs must be a whole number of at least 1, got 0"):
        run_study(study, tmp_path / "zero", jobs=0)
    assert not (tmp_path / "zero").exists()

    # the same units as tasks of a local Ray instance (2 CPUs, one each)
    ray = pytest.importorskip("ray")
    try:
        run_study(study, tmp_path / "ray", device="cpu", log=lambda m: None, jobs=2,
                  executor="ray")
    finally:
        ray.shutdown()
    for name in ("play", "sums"):
        a, b = (tmp_path / out / "runs" / name / "checkpoints" / "final" / "model.safetensors"
                for out in ("one", "ray"))
        assert a.read_bytes() == b.read_bytes(), name
    assert (tmp_path / "ray" / "transfer" / "summary.csv").read_bytes() == summary[0]
