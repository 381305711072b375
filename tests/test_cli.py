"""Every command run as a user would: a subprocess, checking output, exit code and the files left."""

import json
import os
import subprocess
import sys

from tests.conftest import HANG_TIMEOUT, TINY_SETTINGS


def lmscope(*args, cwd=None, env_extra=None, timeout=HANG_TIMEOUT):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "lmscope", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def assert_clean_error(result, *fragments):
    """A user error: non-zero exit, one line on stderr starting with 'error:', no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_train_sample_eval_round_trip(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    r = lmscope("train", "--data", tiny_corpus, "--out", run, "--set", *TINY_SETTINGS)
    assert r.returncode == 0, r.stderr
    assert "whole-split val loss" in r.stdout
    assert (run / "checkpoints" / "final" / "model.safetensors").is_file()

    s = lmscope("sample", run, "--prompt", "First", "--max-new-tokens", "40", "--seed", "1")
    assert s.returncode == 0, s.stderr
    assert s.stdout.startswith("First") and len(s.stdout.rstrip("\n")) >= 40
    again = lmscope("sample", run, "--prompt", "First", "--max-new-tokens", "40", "--seed", "1")
    assert again.stdout == s.stdout  # seeded

    g = lmscope("sample", run / "checkpoints" / "iter_0000010", "--prompt", "All", "--greedy",
                "--max-new-tokens", "10")  # with --top-p or --top-k: an error (test_errors)
    assert g.returncode == 0, g.stderr
    q = lmscope("sample", run, "--prompt", "All", "--max-new-tokens", "10", "--precision", "int8",
                "--seed", "0")
    assert q.returncode == 0 and q.stdout.startswith("All"), q.stderr

    e = lmscope("eval", run, "--data", tiny_corpus, "--json")
    assert e.returncode == 0, e.stderr
    result = json.loads(e.stdout)
    assert result["split"] == "val" and result["loss"] > 0 and result["n_unknown"] == 0
    e2 = lmscope("eval", run, "--data", tiny_corpus, "--json")
    assert json.loads(e2.stdout)["loss"] == result["loss"]  # deterministic

    resume = lmscope("train", "--out", run, "--resume", "--set", "train.max_iters=35")
    assert resume.returncode == 0, resume.stderr
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["iter"] == 35


def test_training_on_a_weighted_mixture_with_bpe(shared_data, tmp_path):
    """The seed's `tinystories_weight` + `input_files`: token-level (BPE) training on a mixture."""
    run = tmp_path / "mix"
    r = lmscope("train", "--data", "tinystories:0.7", "--data", "3seqs:0.3", "--out", run,
                "--set", *TINY_SETTINGS, "data.tokenizer=bpe", "data.bpe_vocab_size=512",
                "--quiet")
    assert r.returncode == 0, r.stderr
    assert "corpus tinystories:0.7+3seqs:0.3" in r.stdout
    assert "tinystories val loss" in r.stdout and "3seqs val loss" in r.stdout
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"val_loss_full:tinystories", "val_loss_full:3seqs"} <= set(final)
    s = lmscope("sample", run, "--prompt", "Once upon a time", "--max-new-tokens", "5",
                "--seed", "0")
    assert s.returncode == 0 and s.stdout.startswith("Once upon a time"), s.stderr


def test_data_list_and_info(shared_data):
    r = lmscope("data", "list")
    assert r.returncode == 0
    for name in ("shakespeare", "wikipedia", "math", "tinystories", "enwik8", "text8", "3seqs"):
        assert name in r.stdout
    info = lmscope("data", "info", "shakespeare")
    assert info.returncode == 0, info.stderr
    assert "input.txt" in info.stdout and "val" in info.stdout


def test_data_list_says_where_each_corpus_is_without_downloading(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    (data / "shakespeare").mkdir(parents=True)
    (data / "shakespeare" / "input.txt").write_text("First Citizen:\n")
    (cache / "corpora" / "3seqs").mkdir(parents=True)
    (cache / "corpora" / "3seqs" / "3seqs.txt").write_text("0 1 2\n")
    (data / "math").mkdir()
    (data / "math" / "gsm8k_train.txt").write_text("half of math\n")  # gsm8k_test.txt missing
    r = lmscope("data", "list", env_extra={"LMSCOPE_DATA": str(data), "LMSCOPE_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    where = {lines[i].split()[0]: lines[i + 1].strip() for i in range(0, len(lines), 2)}
    assert where["shakespeare"] == f"here: {data / 'shakespeare'} ($LMSCOPE_DATA/shakespeare)"
    assert where["3seqs"] == f"here: {cache / 'corpora' / '3seqs'} (cache)"
    for name in ("math", "wikipedia", "tinystories", "enwik8", "text8"):
        assert where[name] == f"not downloaded (lmscope data info {name} downloads it)"
    assert sorted(p.name for p in (cache / "corpora").iterdir()) == ["3seqs"]  # nothing fetched


# Runs `python -m lmscope ARGS` in this process, then prints whether torch was imported.
_NO_TORCH_RUNNER = """
import runpy, sys
sys.argv[0] = "lmscope"
code = 0
try:
    runpy.run_module("lmscope", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
print("torch imported:", "torch" in sys.modules)
sys.exit(code)
"""


def test_help_usage_errors_and_data_list_do_not_import_torch():
    """Importing torch takes seconds; a command that does not run a model must not pay it."""
    for args, code in [(["--help"], 0), (["train", "--help"], 0), (["--version"], 0), ([], 0),
                       (["sample"], 2), (["train", "--bogus"], 2), (["data", "list"], 0)]:
        r = subprocess.run([sys.executable, "-c", _NO_TORCH_RUNNER, *args], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == code, (args, r.stderr)
        assert "Traceback" not in r.stderr, r.stderr
        assert r.stdout.splitlines()[-1] == "torch imported: False", args


def test_eval_reports_characters_outside_the_vocabulary(tiny_run, tmp_path):
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("Zebra quiz: 42 jumping foxes!\n" * 200)
    r = lmscope("eval", tiny_run, "--data", foreign, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_unknown"] > 0


def test_training_into_an_existing_run_keeps_its_files(tiny_corpus, tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert_clean_error(lmscope("train", "--data", tiny_corpus, "--out", run), "--resume")
    assert (run / "notes.txt").read_text() == "mine"


def test_resume_with_a_corrupt_training_state_is_a_clear_error(tiny_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    state = run / "checkpoints" / "last" / "train_state.safetensors"
    state.write_bytes(state.read_bytes()[:50])
    r = lmscope("train", "--out", run, "--resume", "--set", "train.max_iters=40")
    assert_clean_error(r, "cannot resume", "corrupt")
    assert (run / "checkpoints" / "final" / "model.safetensors").is_file()  # nothing lost


def test_resume_from_another_folder_and_only_train_values_change(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    corpus_here = tmp_path / "text.txt"
    corpus_here.write_text(tiny_corpus.read_text())
    r = lmscope("train", "--data", "text.txt", "--out", run, "--set", *TINY_SETTINGS,
                "train.max_iters=10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert_clean_error(lmscope("train", "--out", run, "--resume", "--preset",
                               "shakespeare-char-cpu", cwd=elsewhere), "--preset")
    assert_clean_error(lmscope("train", "--out", run, "--resume", "--set", "model.n_layer=3",
                               cwd=elsewhere), "[model]")
    ok = lmscope("train", "--out", run, "--resume", "--set", "train.max_iters=12", cwd=elsewhere)
    assert ok.returncode == 0, ok.stderr


def test_sample_prints_nothing_before_an_error(tiny_run):
    for args in (["--prompt", "Zebra"], ["--max-new-tokens", "-1"], ["--device", "foo"],
                 ["--seed", str(2**70)]):
        r = lmscope("sample", tiny_run, *args)
        assert r.returncode != 0 and r.stdout == "", (args, r.stdout)
        assert "Traceback" not in r.stderr


def test_the_shown_default_temperature_is_the_one_default():
    """`--temperature`'s shown default is written out in the command line (which imports no
    torch at start); it must be generate.DEFAULT_TEMPERATURE."""
    from lmscope.generate import DEFAULT_TEMPERATURE

    for args in (["sample", "--help"], ["probe", "generation", "--help"]):
        r = lmscope(*args)
        assert f"default: ({DEFAULT_TEMPERATURE})" in " ".join(r.stdout.split()), r.stdout


def test_every_command_writing_a_folder_keeps_a_users_files(tiny_run, tmp_path):
    """The user's case: `compare --out` and the probes replaced a summary.md and compare.md of
    the user's. One policy (run/out_dir.py): refused, the file intact; an earlier command's
    outputs need --force, which replaces only those."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.md").write_text("my notes")
    r = lmscope("probe", "attention", tiny_run, "--prompt", "First", "--out", mine)
    assert_clean_error(r, "holds files lmscope did not write (summary.md)")
    assert (mine / "summary.md").read_text() == "my notes"
    assert sorted(p.name for p in mine.iterdir()) == ["summary.md"]

    out = tmp_path / "out"
    assert lmscope("compare", tiny_run, "--out", out).returncode == 0
    assert_clean_error(lmscope("compare", tiny_run, "--out", out), "add --force")
    (out / "stale.png").write_text("mine too")  # a file of the user's among lmscope's
    assert_clean_error(lmscope("compare", tiny_run, "--out", out, "--force"),
                       "holds files lmscope did not write (stale.png)")
    (out / "stale.png").unlink()
    r = lmscope("compare", tiny_run, "--out", out, "--force")
    assert r.returncode == 0, r.stderr
    assert (out / "compare.md").is_file()


def test_a_run_with_no_preset_on_a_cpu_starts_from_the_cpu_preset(tiny_corpus, tmp_path):
    """The defaults (a 10.6M model, 200-batch estimates) took over a minute before the first
    progress on a CPU; with no --preset or --config a GPT there starts from the CPU preset, and
    the run says so."""
    from lmscope.config import CPU_PRESET, load_preset

    fast = ["train.max_iters=2", "train.eval_iters=1", "train.sample_tokens=0",
            "train.checkpoint_at=[]", "train.device=cpu"]
    r = lmscope("train", "--data", tiny_corpus, "--out", tmp_path / "run", "--set", *fast)
    assert r.returncode == 0, r.stderr
    assert f"starting from preset {CPU_PRESET} (4 layers x 128, 2 iterations" in r.stdout
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert f"n_embd = {load_preset(CPU_PRESET)['model']['n_embd']}" in saved
    r = lmscope("train", "--data", tiny_corpus, "--out", tmp_path / "lstm", "--model", "lstm",
                "--set", *fast)
    assert r.returncode == 0, r.stderr
    assert "starting from preset" not in r.stdout  # another architecture keeps its defaults
