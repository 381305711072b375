"""The study commands run as a user would: data stats, matrix, transfer, probe, study."""

import csv
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import HANG_TIMEOUT, png
from tests.report.browser import check_report
from tests.terminal import Terminal
from tests.test_cli import assert_clean_error, lmscope

REPO = Path(__file__).resolve().parents[1]


def test_data_stats(shared_data, tmp_path):
    r = lmscope("data", "stats", "shakespeare", "wikipedia", "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    assert "| shakespeare |" in r.stdout and "65" in r.stdout
    assert png(tmp_path / "s" / "chars_wikipedia.png")


def test_matrix_takes_several_runs_and_corpora(domain_runs, tmp_path):
    play, sums = domain_runs["corpora"]["play"], domain_runs["corpora"]["sums"]
    r = lmscope("matrix", "--runs", domain_runs["play"], domain_runs["sums"], "--data", play, sums,
                "--out", tmp_path / "m")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["nats/char", "play", "sums"]
    assert lines[1].split()[0] == "play" and lines[2].split()[0] == "sums"
    assert "share one vocabulary" in r.stdout
    # progress: one line per cell on stderr while the matrix is computed
    cells_done = [line for line in r.stderr.splitlines() if " nats/char" in line]
    assert [line.split(":")[0] for line in cells_done] == ["play on play", "play on sums",
                                                          "sums on play", "sums on sums"]
    cells = json.loads((tmp_path / "m" / "matrix.json").read_text())["nats_per_char"]
    assert float(lines[1].split()[1]) == pytest.approx(cells[0][0], abs=1e-4)


def test_transfer_and_probes(domain_runs, tmp_path):
    sums = domain_runs["corpora"]["sums"]
    r = lmscope("transfer", "--from", domain_runs["play"], "--data", sums, "--checkpoints",
                "early,late", "--iters", "4", "--eval-every", "2", "--eval-iters", "1",
                "--out", tmp_path / "t", "--set", "train.batch_size=4", "train.lr=1e-3")
    assert r.returncode == 0, r.stderr
    assert "Does partial training make adaptation easier?" in r.stdout
    config = (tmp_path / "t" / "runs" / "late" / "config.toml").read_text()
    assert "batch_size = 4" in config and "lr = 0.001" in config
    for kind in ("softmax", "attribution"):
        r = lmscope("probe", kind, domain_runs["sums"], "--prompts", domain_runs["prompts"],
                    "--out", tmp_path / kind, *(["--steps", "4"] if kind == "attribution" else []))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / kind / "summary.md").is_file()
    # a whole continuation attributed, token by token, as a user would ask for it
    r = lmscope("probe", "attribution", domain_runs["sums"], "--prompts", domain_runs["prompts"],
                "--generate", "3", "--method", "integrated_gradients", "--steps", "4",
                "--checkpoints", "final", "--out", tmp_path / "continuation")
    assert r.returncode == 0, r.stderr
    assert "written to" in r.stdout
    steps = (tmp_path / "continuation" / "steps.csv").read_text().splitlines()
    assert steps[0].startswith("prompt,checkpoint") and len(steps) > 3
    r = lmscope("probe", "faithfulness", domain_runs["sums"], "--prompts", domain_runs["prompts"],
                "--method", "grad_norm", "--method", "occlusion", "--random-orders", "4",
                "--checkpoints", "0,final", "--out", tmp_path / "faithfulness")
    assert r.returncode == 0, r.stderr
    assert "## Ranking at the final checkpoint" in r.stdout and "| random |" in r.stdout
    assert (tmp_path / "faithfulness" / "curves.png").is_file()


def test_bad_input_to_the_study_commands(domain_runs, tmp_path):
    run, prompts = domain_runs["play"], domain_runs["prompts"]
    empty_run = tmp_path / "empty_run"
    empty_run.mkdir()
    empty_prompts = tmp_path / "empty.toml"
    empty_prompts.write_text("")
    out = tmp_path / "o"
    cases = [
        (("data", "stats", "no-such-corpus", "--out", out), ["unknown corpus"]),
        (("matrix", "--runs", run, "--data", "no-such-corpus", "--out", out), ["unknown corpus"]),
        (("matrix", "--runs", empty_run, "--data", "shakespeare", "--out", out),
         ["no checkpoints"]),
        (("transfer", "--from", empty_run, "--data", "shakespeare", "--out", out),
         ["no checkpoints"]),
        (("transfer", "--from", run, "--data", "no-such-corpus", "--checkpoints", "late",
          "--out", out), ["unknown corpus"]),
        (("probe", "softmax", run, "--prompts", empty_prompts, "--out", out), ["no prompts"]),
        (("probe", "attribution", run, "--prompts", empty_prompts, "--out", out), ["no prompts"]),
        (("probe", "softmax", empty_run, "--prompts", prompts, "--out", out), ["no checkpoints"]),
        (("probe", "attribution", empty_run, "--prompts", prompts, "--out", out),
         ["no checkpoints"]),
        (("study", tmp_path / "missing.toml", "--out", out), ["does not exist"]),
    ]
    for args, fragments in cases:
        assert_clean_error(lmscope(*args), *fragments)
    assert not out.exists()


def readme_main_command() -> list[str]:
    """The lmscope part of the README's first command (the line after its marker)."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    command = lines[lines.index("<!-- main-command -->") + 2]
    install, run = command.split(" && ", 1)
    assert install.startswith("pip install") and run.startswith("lmscope ")
    return shlex.split(run)[1:]


@pytest.fixture(scope="module")
def quick_domain_study(tmp_path_factory) -> Path:
    """The README's main command, the quick domain study on the real corpora, run once for two
    tests (with its study files and output folder moved into a temporary folder)."""
    if not (os.environ.get("LMSCOPE_DATA") and Path(os.environ["LMSCOPE_DATA"]).is_dir()):
        pytest.skip("LMSCOPE_DATA is not set to the folder of shared corpora")
    args = readme_main_command()
    assert args[:4] == ["study", "studies/domain.toml", "--quick", "--out"], args
    root = tmp_path_factory.mktemp("quick_domain")
    shutil.copytree(REPO / "studies", root / "studies")
    out = root / "quick"
    env = {"LMSCOPE_DATA": str(Path(os.environ["LMSCOPE_DATA"]).resolve()),  # run from root
           "LMSCOPE_CACHE": str(root / "cache")}  # never the user's cache
    r = lmscope(*args[:4], out, *args[5:], cwd=root, timeout=HANG_TIMEOUT, env_extra=env)
    assert r.returncode == 0, r.stderr
    done, report = r.stdout.splitlines()[-2:]
    assert done.startswith("done in") and report == f"report: {out / 'report.html'}"
    return out


@pytest.mark.slow
@pytest.mark.xdist_group("quick_domain_study")  # one run of the study
def test_the_quick_domain_study(quick_domain_study):
    """Every artifact of the quick domain study, and each model is the best on its own domain."""
    out = quick_domain_study
    page = (out / "report.html").read_text()
    assert "Zero-shot cross-domain matrix" in page and "coloured by importance" in page
    corpora = ["shakespeare", "math", "wikipedia"]
    expected = ["stats/table.md", "stats/non_ascii.csv", "matrix/matrix.csv",
                "matrix/matrix_bits.csv", "matrix/oov.csv", "transfer/summary.md"]
    for c in corpora:
        expected += [f"stats/chars_{c}.png", f"runs/{c}/samples.md",
                     f"softmax/{c}/entropy.png", f"softmax/{c}/expected_prob.png",
                     f"attribution/{c}/attribution.csv", f"attribution/{c}/by_class.png"]
        expected += [f"transfer/{c}-to-{t}/curves.csv" for t in corpora if t != c]
        expected += [f"transfer/from_{c}.png", f"attention/{c}/attention_L1.png",
                     f"lens/{c}/formation.png", f"lens/{c}/by_layer.png",
                     f"ablate/{c}/ablation.csv", f"ablate/{c}/heads.png"]
        expected += [f"dynamics/{c}/dynamics.csv", f"dynamics/{c}/similarity.png",
                     f"dynamics/{c}/during_training.png",
                     f"similarity/{c}/cka.csv", f"similarity/{c}/same_layer.png",
                     f"faithfulness/{c}/ranking.csv", f"faithfulness/{c}/curves.csv"]
    expected += ["lens/summary.md", "lens/summary.png", "ablate/summary.md",
                 "dynamics/summary.md", "dynamics/summary.png", "similarity/summary.md",
                 "similarity/summary.png",
                 "faithfulness/summary.md", "faithfulness/summary.png"]
    missing = [name for name in expected if not (out / name).is_file()]
    assert not missing, missing
    # [quick.study] figures = "report": the figures the report draws itself are not drawn
    hidden = ["matrix/matrix.png", "attention/math/attention_L1_H0.png", "lens/math/grid_1.png",
              "dynamics/math/weights.png", "attribution/math/heatmap_math_1.png",
              "similarity/shakespeare/cka_shakespeare_math.png", "faithfulness/math/curves.png",
              "transfer/math-to-shakespeare/curves.png"]
    assert not [name for name in hidden if (out / name).exists()]
    matrix = json.loads((out / "matrix" / "matrix.json").read_text())
    assert matrix["corpora"] == corpora and matrix["joint_vocabulary"]
    assert matrix["own_domain_lowest"] == dict.fromkeys(corpora, True)
    samples = (out / "runs" / "math" / "samples.md").read_text()
    assert samples.count("## iter_") == 5  # iterations 0, 50, 100, 200, 400, and final
    maps = json.loads((out / "attention" / "math" / "attention.json").read_text())
    assert [c["iteration"] for c in maps["checkpoints"]] == [0, 50, 100, 200, 400, 600]
    # the lens: every model read on every corpus; its last point is the model's own output
    lens = list(csv.DictReader((out / "lens" / "summary.csv").open(encoding="utf-8")))
    assert {(r["model"], r["corpus"]) for r in lens} == {(m, c) for m in corpora for c in corpora}
    last = [r for r in lens if r["point"] == "1.mlp"]
    assert len(last) == 9 and all(float(r["agree_final"]) == 1.0 for r in last)
    # ablation: every model's components, each with its specificity to the model's own corpus
    ablation = list(csv.DictReader((out / "ablate" / "summary.csv").open(encoding="utf-8")))
    assert {r["model"] for r in ablation} == set(corpora)
    assert len(ablation) == 3 * (2 * 4 + 2 + 2)  # per model: 8 heads, 2 attention, 2 MLP
    # dynamics: each model's layers against themselves at the final checkpoint
    dynamics = list(csv.DictReader((out / "dynamics" / "math" / "similarity.csv").open()))
    assert {r["layer"] for r in dynamics} == {"embed", "0", "1"}
    assert all(float(r["cka"]) > 0.999 for r in dynamics if r["checkpoint"] == "final")
    # similarity: the three models start from the same weights (one seed, one vocabulary), so
    # every pair is identical at iteration 0, and parts during training
    pairs = list(csv.DictReader((out / "similarity" / "summary.csv").open(encoding="utf-8")))
    assert len({(r["corpus"], r["run_a"], r["run_b"]) for r in pairs}) == 3 * 3
    assert all(float(r["mean_same_layer_cka"]) > 0.999 for r in pairs if r["iteration"] == "0")
    assert all(float(r["mean_same_layer_cka"]) < 0.99 for r in pairs if r["iteration"] == "600")
    # faithfulness: every model's most faithful method beats random orders clearly
    ranking = list(csv.DictReader((out / "faithfulness" / "summary.csv").open(encoding="utf-8")))
    for c in corpora:
        final = {r["method"]: float(r["faithfulness_score"]) for r in ranking
                 if r["model"] == c and r["checkpoint"] == "final"}
        assert set(final) == {"grad_norm", "integrated_gradients", "occlusion", "random"}
        assert max(final.values()) > final["random"] + 0.05, final


@pytest.mark.slow
@pytest.mark.xdist_group("quick_domain_study")  # one run of the study
def test_the_quick_domain_study_report_in_the_browser(quick_domain_study):
    """The browser test on a real study's report, at most 4 MB: no console errors, every image
    decodes, nothing overflows a 1400-pixel window, and every interactive view works (the loss
    chart's hover and legend, the matrix, the attribution and attention sliders and hover); the
    page is screenshotted top to bottom into test-artifacts/ (skipped where there is no
    Chromium)."""
    page = quick_domain_study / "report.html"
    assert page.stat().st_size <= 4_000_000, page.stat().st_size
    seen = check_report(page, "quick-domain-study-report")
    assert seen["scroll_width"] <= 1400
    assert seen["views"] == {"attention": 3, "chart": 1, "matrix": 1, "attribution": 3,
                             "lens": 9, "similarity": 3,  # the lens: each model on each corpus
                             "continuation": 0}  # the quick study writes none
    assert seen["legend"][1:] == [f"{c}: {curve}" for c in ("math", "shakespeare", "wikipedia")
                                  for curve in ("train", "validation")]
    assert len(seen["after"]["heads"]) == 4  # the quick model's last layer has four heads
    assert len(seen["screenshots"]["screens"]) > 5  # the page, top to bottom


def test_sweep_compare_and_attention_commands(tiny_run, domain_runs, tmp_path):
    r = lmscope("sample", tiny_run, "--prompt", "First", "--sweep-top-p", "0.2,0.5,1.0",
                "--greedy", "--max-new-tokens", "20", "--seed", "1", "--out", tmp_path / "sw")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines] == ["top-p", "greedy", "0.2", "0.5", "1"]
    assert (tmp_path / "sw" / "top_p_sweep.csv").is_file()
    again = lmscope("sample", tiny_run, "--prompt", "First", "--sweep-top-p", "0.2,0.5,1.0",
                    "--greedy", "--max-new-tokens", "20", "--seed", "1")
    assert again.stdout.splitlines()[:5] == r.stdout.splitlines()[:5]  # same seed, same rows

    r = lmscope("compare", tiny_run, domain_runs["play"], "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    assert "min_val_loss" in r.stdout and "Rule: over-fit" in r.stdout

    r = lmscope("probe", "attention", tiny_run, "--prompt", "First", "--layer", "0", "--heads",
                "1", "--checkpoints", "all", "--out", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert "| head | previous token |" in r.stdout
    assert png(tmp_path / "a" / "attention_L0_H1.png")
    maps = json.loads((tmp_path / "a" / "attention.json").read_text())
    assert [c["checkpoint"] for c in maps["checkpoints"]] == ["iter_0000010", "iter_0000020",
                                                              "final"]


def test_bad_input_to_sampling_and_model_commands(tiny_run, tiny_corpus, tmp_path):
    cases = [
        (("sample", tiny_run, "--sweep-top-p", "0.5,1.5"), ["outside (0, 1]"]),
        (("sample", tiny_run, "--sweep-top-p", "0"), ["outside (0, 1]"]),
        (("sample", tiny_run, "--out", tmp_path / "x"), ["--sweep-top-p"]),
        (("train", "--data", tiny_corpus, "--model", "transformerxl", "--out", tmp_path / "r"),
         ["unknown model 'transformerxl'"]),
        (("train", "--data", tiny_corpus, "--model", "kgram", "--set", "model.k=0", "--out",
          tmp_path / "r"), ["model.k must be at least 1"]),
        (("train", "--data", tiny_corpus, "--model", "lstm", "--set", "model.n_head=4", "--out",
          tmp_path / "r"), ["unknown config key model.n_head"]),
        (("compare", tmp_path, "--out", tmp_path / "c"), ["no metrics.jsonl"]),
        (("probe", "attention", tiny_run, "--prompt", "First", "--layer", "5", "--out",
          tmp_path / "a"), ["layer 5 does not exist"]),
        (("probe", "attention", tiny_run, "--prompt", "First", "--heads", "0,x", "--out",
          tmp_path / "a"), ["--heads"]),
    ]
    for args, fragments in cases:
        assert_clean_error(lmscope(*args), *fragments)
    assert not (tmp_path / "r").exists() and not (tmp_path / "a").exists()


@pytest.mark.slow
def test_the_quick_architectures_study(shared_data, tmp_path):
    """`lmscope study studies/architectures.toml --quick`, shortened with --set to 50
    iterations: every variant trains, is compared, generates from "0 1 2 3 4", and the attention
    models draw their maps."""
    study = tmp_path / "studies"
    shutil.copytree(REPO / "studies", study)
    out = tmp_path / "arch"
    r = lmscope("study", study / "architectures.toml", "--quick", "--out", out, "--set",
                "train.max_iters=50", "train.eval_interval=25", "train.checkpoint_at=[25]",
                timeout=HANG_TIMEOUT)
    assert r.returncode == 0, r.stderr
    for v in ("lstm", "gpt-rotary"):  # --set reaches every variant, over [quick.train]
        config = (out / "runs" / v / "config.toml").read_text()
        assert "max_iters = 50" in config and "eval_interval = 25" in config, config
    variants = ["lstm", "kgram-onehot", "kgram-embedding", "gpt", "gpt-post-norm",
                "gpt-rmsnorm", "gpt-rotary", "gpt-no-pos"]
    rows = (out / "compare" / "compare.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == variants
    for v in variants:
        assert (out / "runs" / v / "loss.png").is_file()
        sweep = (out / "generate" / v / "top_p_sweep.md").read_text()
        assert "| greedy | 0 1 2 3 4" in sweep and "| 0.95 |" in sweep
        has_attention = (out / "attention" / v / "summary.md").is_file()
        assert has_attention == v.startswith("gpt"), v


@pytest.mark.slow
def test_the_quick_attention_study_with_two_seeds(shared_data, tmp_path):
    out = tmp_path / "attention"
    # --quick, shortened with --set to 150 iterations: 7 attention snapshots (every 25)
    r = lmscope("study", REPO / "studies" / "attention.toml", "--quick", "--seeds", "0,1",
                "--out", out, "--set", "train.max_iters=150", "train.checkpoint_at=[100]",
                timeout=HANG_TIMEOUT)
    assert r.returncode == 0, r.stderr
    results = json.loads((out / "seeds" / "results.json").read_text())
    assert set(results) == {"shakespeare", "wikipedia"}
    for dataset, entry in results.items():
        for q in ("final_train_loss", "best_val_loss", "total_train_time",
                  "avg_inference_tokens_per_second"):
            for key in (f"{q}_mean", f"{q}_stderr"):
                assert isinstance(entry[key], float) and entry[key] == entry[key], (dataset, key)
        for kind in ("train_loss", "val_loss", "attention_metrics", "layer_similarity"):
            assert png(out / "seeds" / f"{kind}_{dataset}.png"), (kind, dataset)
        assert (out / "seeds" / f"correlation_{dataset}.md").is_file()
    for run in ("shakespeare-s0", "shakespeare-s1", "wikipedia-s0", "wikipedia-s1"):
        rows = [json.loads(x) for x in (out / "runs" / run / "attention.jsonl").open()]
        assert len(rows) == 7 and all(x["entropy_bits"] == x["entropy_bits"] for x in rows)
        assert (out / "generation" / run / "correlation_samples.csv").is_file()
        assert (out / "generation" / run / "correlation_loss.csv").is_file()
    # attention entropy falls as the model learns shakespeare: in every seed, in every layer
    for seed in (0, 1):
        rows = [json.loads(x) for x in (out / "runs" / f"shakespeare-s{seed}" /
                                        "attention.jsonl").open()]
        assert rows[-1]["entropy_bits"] < rows[0]["entropy_bits"] - 0.5
        for layer in range(rows[0]["n_layers"]):
            first, last = (sum(r["layers"][layer]["entropy_bits"]) for r in (rows[0], rows[-1]))
            assert last < first
    assert "## Means over seeds" in (out / "README.md").read_text()
    # the heads step: every run's detectors at each checkpoint, induction as a mean over seeds
    for run in ("shakespeare-s0", "wikipedia-s1"):
        heads = list(csv.DictReader((out / "heads" / run / "heads.csv").open(encoding="utf-8")))
        assert {r["detector"] for r in heads} == {"previous_token", "duplicate_token",
                                                 "induction", "first_token"}
        assert {int(r["iteration"]) for r in heads} == {100, 150}
        assert len(heads) == 2 * 2 * 4 * 4  # checkpoints x layers x heads x detectors
    for dataset in ("shakespeare", "wikipedia"):
        assert png(out / "heads" / f"induction_{dataset}.png")
    summary = (out / "heads" / "summary.md").read_text()
    assert "| shakespeare | attention | 2 |" in summary
    assert "## Attention heads and in-context learning" in (out / "README.md").read_text()
    assert_clean_error(lmscope("study", REPO / "studies" / "attention.toml", "--seeds", "a,b",
                               "--out", tmp_path / "x"), "--seeds")


def test_a_probe_at_a_terminal_shows_its_progress(domain_runs, tmp_path):
    """At a terminal (stderr a pseudo-terminal), a probe draws a bar counting checkpoints; on a
    pipe (every other test here) it stays silent."""
    term = Terminal([sys.executable, "-m", "lmscope", "probe", "softmax", str(domain_runs["play"]),
                     "--prompts", str(domain_runs["prompts"]), "--checkpoints", "all", "--out",
                     str(tmp_path / "s")])
    code, stdout, screen = term.finish()
    assert code == 0, screen
    assert "softmax: " in screen and "checkpoint" in screen, screen
    assert "/4 [" in screen  # 4 checkpoints: iterations 0, 10, 20 and final
    assert (tmp_path / "s" / "summary.md").is_file() and "# Softmax confidence" in stdout
