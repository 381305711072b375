import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lmscope.errors import LmscopeError
from lmscope.study import steps as registered
from lmscope.study.registry import StepContext
from lmscope.study.runner import StudyRunner, run_study
from lmscope.study.spec import load_study
from tests.conftest import DOMAIN_SETTINGS, HANG_TIMEOUT, MATH_TEXT, PROMPTS, TINY_TEXT

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
    assert any(m.startswith("  play: done before") for m in messages)
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
def _one_at_a_time_on_other_threads(study: Path, out: Path) -> None:
    """The study at --jobs 1 on more threads than a unit of --jobs 2 gets (cores // 2)."""
    before = torch.get_num_threads()
    torch.set_num_threads((os.cpu_count() or 1) // 2 + 1)
    try:
        run_study(study, out, device="cpu", log=lambda m: None, jobs=1)
    finally:
        torch.set_num_threads(before)


def test_runs_trained_two_at_a_time_are_the_runs_trained_one_after_another(tmp_path):
    """--jobs 2 trains the two runs (then the two transfer pairs) side by side, each in its own
    process, with the same results as --jobs 1 (the same checkpoints' weights and losses) on
    another number of threads; each run is marked done, each unit's log is in logs/."""
    study = write_study(tmp_path)
    study.write_text(study.read_text().replace("[study]",
                                               '[study]\nsteps = ["train", "transfer"]'))
    seen = []
    _one_at_a_time_on_other_threads(study, tmp_path / "one")
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
    assert "play: whole-split val loss" in (tmp_path / "two" / "logs" / "train-play.log").read_text()
    assert not (tmp_path / "one" / "logs").exists()  # one at a time: the log is the study's
    # the transfer pairs too: each a unit, the same table
    summary = [(tmp_path / out / "transfer" / "summary.csv").read_bytes() for out in ("one", "two")]
    assert summary[0] == summary[1]
    assert all((tmp_path / "two" / "transfer" / pair / ".done").is_file()
               for pair in ("play-to-sums", "sums-to-play"))
    with pytest.raises(LmscopeError, match="--jobs must be a whole number of at least 1, or auto, got 0"):
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


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the study's workers in /proc")
def test_a_parallel_study_killed_midway_finishes_with_the_same_tables(tmp_path):
    """`lmscope study --jobs 2` killed with SIGKILL while its two trainings run side by side:
    its workers end with it, and the same command then finishes the study with the very tables
    of a study run one unit at a time on another number of threads."""
    study = write_study(tmp_path)
    _one_at_a_time_on_other_threads(study, tmp_path / "one")
    out = tmp_path / "two"
    command = [sys.executable, "-m", "lmscope", "study", str(study), "--out", str(out),
               "--jobs", "2"]
    study_process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + HANG_TIMEOUT
    first = out / "runs" / "play" / "checkpoints" / "iter_0000010"
    while not first.is_dir():  # killed once a training is under way
        assert study_process.poll() is None, study_process.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = [pid for pid in _children(study_process.pid) if _alive(pid)]
    study_process.kill()
    study_process.wait(timeout=HANG_TIMEOUT)
    while any(_alive(pid) for pid in workers):  # they end with the study (bounded: a hang)
        assert time.monotonic() < deadline, "a worker outlived the killed study"
        time.sleep(0.05)
    assert not (out / "transfer" / ".done").exists()
    again = subprocess.run(command, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert again.returncode == 0, again.stderr
    tables = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*.csv")
                    if p.parts[len((tmp_path / "one").parts)] != "runs")
    assert len(tables) >= 5
    for table in tables:
        assert (out / table).read_bytes() == (tmp_path / "one" / table).read_bytes(), table
    for name in ("play", "sums"):
        a, b = (tmp_path / d / "runs" / name / "checkpoints" / "final" / "model.safetensors"
                for d in ("one", "two"))
        assert a.read_bytes() == b.read_bytes(), name


def test_a_study_is_a_graph_of_units_each_needing_what_it_reads(tmp_path):
    """Each step's parts need what they read (a probe of one model: its training; a transfer
    pair: its source's), the step's own unit needs its parts, the training and the steps it
    reads; one at a time they run in the registry's order. A part done before is no unit, its
    need met."""
    study = load_study(write_study(tmp_path))
    out = tmp_path / "out"
    units = StudyRunner(study, out, jobs=2).units()
    names = [u.name for u in units]
    assert names == ["stats", "train play", "train sums", "train", "matrix play", "matrix sums",
                     "matrix", "transfer play-to-sums", "transfer sums-to-play", "transfer",
                     "softmax play", "softmax sums", "softmax",
                     "attribution play", "attribution sums", "attribution"]
    needs = {u.name: u.needs for u in units}
    assert needs["train play"] == () and needs["stats"] == ()
    assert needs["softmax play"] == ("train play",)
    assert needs["attribution sums"] == ("train sums",)
    assert needs["transfer sums-to-play"] == ("train sums",)
    trained = ["train play", "train sums", "train"]
    assert needs["train"] == ("train play", "train sums")
    assert needs["matrix sums"] == ("train sums",)  # each model's row
    assert needs["matrix"] == (*trained, "matrix play", "matrix sums")
    assert needs["transfer"] == (*trained, "transfer play-to-sums", "transfer sums-to-play")
    assert needs["attribution"] == (*trained, "attribution play", "attribution sums")
    assert [u.name for u in units if u.inline] == ["stats", "train", "matrix", "transfer",
                                                   "softmax", "attribution"]
    StepContext.mark_done(out / "runs" / "play")
    StepContext.mark_done(out / "stats")
    again = {u.name: u.needs for u in StudyRunner(study, out, jobs=2).units()}
    assert "train play" not in again and "stats" not in again
    assert again["softmax play"] == () and again["train"] == ("train sums",)
    faithful = load_study(write_study(tmp_path, "").parent / "study.toml")
    faithful.steps = ["train", "attribution", "faithfulness"]
    needs = {u.name: u.needs for u in StudyRunner(faithful, tmp_path / "f").units()}
    assert "attribution" in needs["faithfulness"]  # it reads the attribution step's table
    assert needs["faithfulness play"] == ("train play",)


def test_units_side_by_side_show_one_live_line_each_on_a_terminal(tmp_path):
    """On a terminal, --jobs 2 draws a line per running unit (its name, its seconds, its log's
    last line) and nothing of the units' own output; each unit's log is in logs/."""
    from tests.terminal import Terminal

    study = write_study(tmp_path)
    study.write_text(study.read_text().replace("[study]", '[study]\nsteps = ["train", "softmax"]'))
    out = tmp_path / "out"
    terminal = Terminal([sys.executable, "-m", "lmscope", "study", str(study), "--out", str(out),
                         "--jobs", "2"])
    terminal.wait_for("  softmax sums (")
    code, stdout, screen = terminal.finish()
    assert code == 0, screen
    assert "  train play (" in screen and "  train sums (" in screen
    assert "checkpoint/s" not in screen  # the probes' own progress bars went to their logs
    assert "softmax sums: done" in stdout and "[softmax]" in stdout
    assert "play: whole-split val loss" in (out / "logs" / "train-play.log").read_text()
    assert (out / "logs" / "softmax-sums.log").is_file()


def test_a_study_file_extends_another_with_its_own_values_over_it(tmp_path):
    base = write_study(tmp_path)
    (tmp_path / "bigger.toml").write_text(
        f'extends = "{base.name}"\n[study]\nname = "bigger"\n[model]\nn_embd = 64\n'
        '[transfer]\niters = 12\n', encoding="utf-8")
    study, parent = (load_study(tmp_path / f) for f in ("bigger.toml", base.name))
    assert study.name == "bigger" and study.corpora == parent.corpora
    assert study.prompts == parent.prompts  # relative to the files' folder
    config = study.run_config(study.runs()[0])
    assert config.model.n_embd == 64 and config.model.n_layer == 2  # its value, the base's
    assert study.settings["transfer"].iters == 12
    assert study.settings["transfer"].eval_every == parent.settings["transfer"].eval_every


def test_the_seeds_gpu_studies_are_the_seeds_sizes():
    root = Path(__file__).parents[2] / "studies"
    domain = load_study(root / "domain_gpu.toml")
    config = domain.run_config(domain.runs()[0])
    assert (config.model.n_layer, config.model.n_embd, config.model.block_size) == (6, 384, 256)
    assert config.train.max_iters == 40000
    assert domain.steps == load_study(root / "domain.toml").steps
    attention = load_study(root / "attention.toml")
    iters = {r.corpus: attention.run_config(r).train.max_iters for r in attention.runs()}
    assert iters == {"shakespeare": 5000, "enwik8": 100000, "text8": 100000}
    assert len(attention.runs()) == 9


def test_a_study_trains_each_run_data_parallel_with_processes_per_run(tmp_path):
    """[study] processes_per_run = 2: each training unit asks for 2 GPUs and trains through
    torchrun (gloo on this CPU): a run like `torchrun --nproc_per_node 2 -m lmscope train`."""
    study = write_study(tmp_path)
    study.write_text(study.read_text().replace(
        "[study]", '[study]\nsteps = ["train"]\nprocesses_per_run = 2'))
    units = StudyRunner(load_study(study), tmp_path / "out").units()
    assert [(u.name, u.gpus) for u in units if not u.inline] == [("train play", 2),
                                                                 ("train sums", 2)]
    seen = []
    run_study(study, tmp_path / "out", device="cpu", log=seen.append)
    assert any("play: training" in m and "in 2 processes" in m for m in seen)
    for name in ("play", "sums"):
        summary = json.loads((tmp_path / "out" / "runs" / name / "summary.json").read_text())
        assert summary["iterations"] == 30
        assert summary["processes"] == 2  # data-parallel: two processes trained it


def test_a_unit_that_fails_is_named_and_the_others_finish(tmp_path, monkeypatch):
    """One probe fails: the study goes on with every unit that does not need it, then stops
    with one line naming it and what was skipped; the same command redoes only those."""
    from lmscope.study.steps import softmax

    study = write_study(tmp_path)
    study.write_text(study.read_text().replace(
        "[study]", '[study]\nsteps = ["train", "softmax", "attribution"]'))
    part = softmax.STEP.part

    def broken(ctx, spec):
        if spec.name == "sums":
            raise LmscopeError("the sums probe broke")
        part(ctx, spec)

    monkeypatch.setattr(softmax, "STEP", dataclasses.replace(softmax.STEP, part=broken))
    monkeypatch.setattr(registered, "STEPS", tuple(softmax.STEP if s.name == "softmax" else s
                                                   for s in registered.STEPS))
    out = tmp_path / "out"
    with pytest.raises(LmscopeError) as failure:
        run_study(study, out, device="cpu", log=lambda m: None)
    message = str(failure.value)
    assert "\n" not in message
    assert message == ("2 of 9 units did not finish (the others did): softmax sums: the sums "
                       "probe broke; skipped (they need what failed): softmax")
    assert (out / "softmax" / "play" / ".done").is_file()
    assert (out / "attribution" / ".done").is_file()  # the next step does not need softmax
    assert not (out / "softmax" / ".done").exists()
    monkeypatch.undo()
    seen = []
    run_study(study, out, device="cpu", log=seen.append)
    assert "  play: done before" in "\n".join(seen)
    assert (out / "softmax" / ".done").is_file()


def test_a_study_drawing_only_what_its_report_shows(tmp_path):
    """[study] figures = "report": no step draws a figure its report section hides (the views
    draw those from the tables; not even the fine-tunings' loss.png), every other figure and
    every table is written, and the report holds each step's section."""
    study = write_study(tmp_path)
    steps = ["train", "matrix", "transfer", "attribution", "attention", "lens", "dynamics",
             "faithfulness", "similarity"]
    out = tmp_path / "out"
    run_study(study, out, device="cpu", log=lambda m: None, jobs=1,
              overrides=[f"study.steps={json.dumps(steps)}", "study.figures=report",
                         "lens.windows=2", "dynamics.windows=2", "similarity.windows=2",
                         'faithfulness.checkpoints="final"', "faithfulness.random_orders=2"])
    drawn = {step.name: [p.relative_to(out / step.out) for p in (out / step.out).rglob("*.png")]
             for step in registered.STEPS if step.name in steps}
    for name, figures in drawn.items():
        hide = registered.by_name()[name].report_hide
        assert not [f for f in figures if any(f.match(h) for h in hide)], name
    assert {f.as_posix() for f in drawn["attention"]} == {"play/attention_L1.png",
                                                          "sums/attention_L1.png"}
    assert {f.name for f in drawn["lens"]} == {"by_layer.png", "formation.png", "summary.png"}
    assert {f.name for f in drawn["dynamics"]} >= {"similarity.png", "summary.png"}
    assert (out / "matrix" / "matrix.csv").is_file() and (out / "lens" / "play" / "grid.csv"
                                                           ).is_file()
    assert not list((out / "transfer").rglob("loss.png"))
    page = (out / "report.html").read_text(encoding="utf-8")
    for step in registered.STEPS:
        if step.name in steps and step.report_title:
            assert step.report_title in page, step.name
