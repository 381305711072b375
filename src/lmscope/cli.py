"""The `lmscope` command line: parses arguments, calls the Python API, prints results.

Errors the user can fix (`LmscopeError`) are printed as one line, `error: ...`, with exit code 1.

A command imports the modules it runs in its body: most of them import torch, which takes
seconds, and parsing, `--help`, usage errors and `lmscope data list` need none of them
(`tests/test_cli.py` checks it). The imports at the top are the ones that import no torch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from lmscope.data.corpora import Mixture, folder_name, list_corpora, local_copy, resolve
from lmscope.errors import LmscopeError, TrainingInterrupted
from lmscope.run.out_dir import OutDir, record_outputs

# Every command that writes an --out folder follows one policy (run/out_dir.py): a folder holding
# files lmscope did not write is refused, the outputs of an earlier command need --force.
_FORCE = click.option("--force", is_flag=True,
                      help="Replace the outputs an earlier lmscope command wrote in --out (never "
                           "other files).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lmscope")
def cli():
    """Train small language models on corpora of different domains and look inside them."""


# --- train ---------------------------------------------------------------------------------------

def _default_run_dir(corpus: str, name: str) -> Path:
    stem = f"{folder_name(corpus)}-{name}"
    path = Path("runs") / stem
    n = 2
    while path.exists():
        path = Path("runs") / f"{stem}-{n}"
        n += 1
    return path


def _all_overrides(overrides: tuple[str, ...], more: tuple[str, ...]) -> list[str]:
    """`--set a=1 b=2`: click gives `a=1` to --set and `b=2` to the trailing arguments."""
    for item in more:
        if "=" not in item:
            raise click.UsageError(f"unexpected argument {item!r} (overrides look like key=value)")
    return [*overrides, *more]


@cli.command()
@click.option("--data", "data", metavar="CORPUS[:WEIGHT]", multiple=True,
              help="Corpus name (see `lmscope data list`) or path to a text file or folder; "
                   "repeat with weights to train on a mixture: --data tinystories:0.7 "
                   "--data 3seqs:0.3.")
@click.option("--out", "out", type=click.Path(path_type=Path), metavar="RUN_DIR",
              help="Run folder to write (default: runs/<corpus>-<preset or model>).")
@click.option("--model", "model", metavar="NAME", help="Architecture (default gpt).")
@click.option("--preset", metavar="NAME", help="Named configuration, e.g. shakespeare-char-cpu.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), metavar="FILE.toml",
              help="TOML file with [model], [data] and [train] tables.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set train.max_iters=300 model.n_layer=4.")
@click.argument("more_overrides", nargs=-1, metavar="")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(data, out, model, preset, config_file, overrides, more_overrides, resume, quiet):
    """Train a model.

    \b
    lmscope train --data shakespeare --preset shakespeare-char-cpu --out runs/shakespeare
    lmscope train --data notes.txt --set model.n_layer=2 train.max_iters=500
    lmscope train --data tinystories:0.7 --data 3seqs:0.3 --set data.tokenizer=bpe
    lmscope train --out runs/shakespeare --resume
    """
    from lmscope.config import check_resume, cpu_default_preset, preset_names, resolve_config
    from lmscope.run.run_dir import RunDir
    from lmscope.train.trainer import train as run_training

    overrides = _all_overrides(overrides, more_overrides)
    data = str(Mixture.from_items(data)) if data else None  # several --data: one mixture
    note = ""
    if resume:
        if out is None:
            raise LmscopeError("--resume needs --out RUN_DIR, the run to continue")
        if preset or config_file:
            raise LmscopeError("--resume continues a run with its saved config "
                               f"({out / 'config.toml'}); --preset and --config cannot change it "
                               "(use --set train.KEY=VALUE for [train] values)")
        run = RunDir(out)
        if not run.config_file.is_file():
            raise LmscopeError(f"cannot resume: {run.config_file} does not exist")
        # the saved config with the overrides; a changed [model] or [data] is refused (here
        # before anything is printed, and by training itself, for every caller)
        config = resolve_config(base=run.config_dict(), data=data, model=model,
                                overrides=overrides)
        check_resume(run.config(), config)
    else:
        if data is None and preset is None and config_file is None:
            raise click.UsageError("give --data CORPUS (or a --preset / --config that names one); "
                                   f"presets: {', '.join(preset_names())}")
        config = resolve_config(preset=preset, config_file=config_file, data=data, model=model,
                                overrides=overrides)
        chosen = cpu_default_preset(config) if preset is None and config_file is None else None
        if chosen:  # the defaults would take hours here: a model that trains in minutes
            preset = chosen
            config = resolve_config(preset=preset, data=data, model=model, overrides=overrides)
            note = (f"no --preset or --config, on a CPU: starting from preset {preset} "
                    f"({config.model.n_layer} layers x {config.model.n_embd}, "
                    f"{config.train.max_iters} iterations: minutes, not hours); "
                    "--preset shakespeare-char for nanoGPT's 10.6M model")
        if out is None:
            out = _default_run_dir(config.data.corpus, preset or config.model_name)
    # Under torchrun every process runs this command; only rank 0 speaks.
    echo = click.echo if int(os.environ.get("RANK", "0")) == 0 else (lambda *a, **k: None)
    if note:
        echo(note)
    echo(f"run folder: {out}")
    result = run_training(config, out, resume=resume, progress=False if quiet else None,
                          log=echo)
    echo(f"best estimated val loss {result.best_val_loss:.4f}; final checkpoint: "
         f"{out / 'checkpoints' / 'final'}")


# --- sample --------------------------------------------------------------------------------------

@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--prompt", default="\n", show_default="a newline", help="Text to continue.")
@click.option("--max-new-tokens", default=500, show_default=True, type=int)
# the shown default is generate.DEFAULT_TEMPERATURE (not imported here: it imports torch; a test
# checks that the two agree)
@click.option("--temperature", type=float, default=None, show_default="0.8",
              help="Divide the logits by this before sampling (not with --greedy).")
@click.option("--top-k", type=int, default=None, help="Keep only the k most likely tokens.")
@click.option("--top-p", type=float, default=None,
              help="Nucleus sampling: keep the smallest set of tokens with probability >= p.")
@click.option("--greedy", is_flag=True, help="Always take the most likely token.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=None,
              help="Seed for reproducible samples.")
@click.option("--num-samples", default=1, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["float32", "bfloat16", "int8"]),
              default="float32", show_default=True,
              help="Sample from a lower-precision copy of the model (faster, slightly different).")
@click.option("--sweep-top-p", "sweep", metavar="P1,P2,...",
              help="One generation per nucleus threshold, from the same seed, as a table "
                   "(with --greedy, a greedy row first).")
@click.option("--out", "out", type=click.Path(path_type=Path), metavar="DIR",
              help="With --sweep-top-p: also write top_p_sweep.md and .csv into DIR.")
@_FORCE
def sample(run, prompt, max_new_tokens, temperature, top_k, top_p, greedy, seed, num_samples,
           device, precision, sweep, out, force):
    """Generate text from a run folder or checkpoint, streamed to stdout.

    \b
    lmscope sample runs/3seqs --prompt "0 1 2 3 4" --sweep-top-p 0.2,0.5,0.75,0.95,1.0 --greedy
    """
    from lmscope.analysis import sampling
    from lmscope.api import generate, load
    from lmscope.generate import DEFAULT_TEMPERATURE, SamplingConfig

    if num_samples < 1:
        raise LmscopeError(f"--num-samples must be at least 1, got {num_samples}")
    if out is not None and sweep is None:
        raise LmscopeError("--out is for --sweep-top-p tables; plain samples go to stdout")
    SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                   top_p=top_p, greedy=greedy and sweep is None).validate()
    if out is not None:
        OutDir(out, "sample", force=force).check()  # before any work
    if sweep is not None:
        values = sampling.parse_top_ps(sweep)
        ckpt = load(run, device=device)
        ckpt.tokenizer.encode(prompt, unknown="error")
        t = DEFAULT_TEMPERATURE if temperature is None else temperature
        result = sampling.compute(ckpt, prompt, values, greedy=greedy,
                                  max_new_tokens=max_new_tokens, temperature=t,
                                  seed=seed or 0, precision=precision)
        click.echo(sampling.sweep_table(result.rows, prompt), nl=False)
        if out is not None:
            with OutDir(out, "sample", force=force):
                result.save(out)
            click.echo(f"written to {out}/")
        return
    ckpt = load(run, device=device)
    ckpt.tokenizer.encode(prompt, unknown="error")  # before anything is printed
    for i in range(num_samples):
        if i:
            click.echo("\n---------------")
        click.echo(prompt, nl=False)
        generate(ckpt, prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                 top_k=top_k, top_p=top_p, greedy=greedy, precision=precision,
                 seed=None if seed is None else seed + i,
                 stream=lambda text: click.echo(text, nl=False))
        click.echo()


# --- eval ----------------------------------------------------------------------------------------

@cli.command(name="eval")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", "data", required=True, metavar="CORPUS", help="Corpus name or path.")
@click.option("--split", default="val", show_default=True)
@click.option("--batch-size", default=32, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def eval_cmd(run, data, split, batch_size, device, as_json):
    """Whole-split cross-entropy of a model on a corpus (deterministic)."""
    from lmscope.api import load
    from lmscope.evaluate import evaluate

    if batch_size < 1:
        raise LmscopeError(f"--batch-size must be at least 1, got {batch_size}")
    result = evaluate(load(run, device=device), data, split, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"{result.corpus} {result.split}: loss {result.loss:.4f} nats/token, "
               f"{result.bits_per_char:.4f} bits/char over {result.n_tokens:,} tokens "
               f"({result.checkpoint})")
    if result.n_unknown:
        click.echo(f"{result.n_unknown:,} characters ({100 * result.oov_rate:.2f}%) are outside "
                   "the model's vocabulary and were left out of the loss")


# --- data ----------------------------------------------------------------------------------------

@cli.group()
def data():
    """Corpora: list the registry, inspect one."""


@data.command(name="list")
def data_list():
    """The named corpora lmscope can find or download, and where each is found locally."""
    for spec in list_corpora():
        click.echo(f"{spec.name:<12} {spec.description}")
        found = local_copy(spec)
        if found is None:
            where = f"not downloaded (lmscope data info {spec.name} downloads it)"
        else:
            source, folder = found
            where = f"here: {folder} ({source})"
        click.echo(f"{'':<12} {where}")


@data.command(name="info")
@click.argument("corpus")
@click.option("--no-download", is_flag=True, help="Only look for local copies.")
def data_info(corpus, no_download):
    """Where a corpus is, its files, sizes, split, licence."""
    c = resolve(corpus, download=not no_download)
    click.echo(f"corpus:  {c.name}")
    click.echo(f"found:   {c.source}")
    if c.spec is not None:
        click.echo(f"about:   {c.spec.description}")
        click.echo(f"licence: {c.spec.license}")
    for f in c.files:
        click.echo(f"file:    {f} ({f.stat().st_size:,} bytes)")
    for split, ranges in c.splits.items():
        click.echo(f"split:   {split:<5} {c.n_bytes(split):,} bytes "
                   f"({', '.join(f'{r.path.name}[{r.start}:{r.end}]' for r in ranges)})")


@data.command(name="stats")
@click.argument("corpora", nargs=-1, required=True, metavar="CORPUS...")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Folder for stats.json, table.csv/.md, chars.csv, non_ascii.csv, chars_*.png.")
@click.option("--top", default=30, show_default=True, type=click.IntRange(1, 1000),
              help="Characters in each frequency plot.")
@_FORCE
def data_stats(corpora, out, top, force):
    """Characters of each corpus: size, unique, most frequent, non-ASCII by Unicode category."""
    from lmscope.analysis import corpus_stats

    with OutDir(out, "data stats", force=force):
        corpus_stats.compute(list(corpora), top=top).save(out)
    click.echo((out / "table.md").read_text(encoding="utf-8"), nl=False)
    click.echo(f"written to {out}/")


# --- studies -------------------------------------------------------------------------------------

def _gather(args: tuple[str, ...], names: tuple[str, ...]) -> dict[str, list[str]]:
    """`--runs a b --data x y` (several values per option) from the raw arguments."""
    found: dict[str, list[str]] = {n: [] for n in names}
    current = None
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in names:
            current = name
            if eq:
                found[name].append(value)
        elif arg.startswith("--"):
            raise click.UsageError(f"no such option: {name}")
        elif current is None:
            raise click.UsageError(f"unexpected argument {arg!r}; give --runs RUN... --data CORPUS...")
        else:
            found[current].append(arg)
    return found


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("lists", nargs=-1, type=click.UNPROCESSED, metavar="--runs RUN... --data CORPUS...")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Folder for matrix.csv, matrix_bits.csv, oov.csv, matrix.md/.json/.png.")
@click.option("--split", default="val", show_default=True)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1))
@click.option("--device", default="auto", show_default=True)
@_FORCE
def matrix(lists, out, split, batch_size, device, force):
    """Zero-shot cross-domain matrix: every model on the validation split of every corpus.

    \b
    lmscope matrix --runs runs/shakespeare runs/math --data shakespeare math --out results/matrix
    """
    from lmscope.analysis import cross_domain

    found = _gather(lists, ("--runs", "--data"))
    if not found["--runs"] or not found["--data"]:
        raise click.UsageError("give --runs RUN... and --data CORPUS...")
    with OutDir(out, "matrix", force=force):
        result = cross_domain.compute(found["--runs"], found["--data"], split=split,
                                      batch_size=batch_size, device=device,  # a line per cell
                                      log=lambda m: click.echo(m, err=True))
        result.save(out)
    width = max(len(r) for r in result.runs)
    click.echo(f"{'nats/char':<{width}}  " + "  ".join(f"{c:>12}" for c in result.corpora))
    for run, row in zip(result.runs, result.nats, strict=True):
        click.echo(f"{run:<{width}}  " + "  ".join(f"{v:>12.4f}" for v in row))
    click.echo(cross_domain.vocabulary_note(result))
    click.echo(f"written to {out}/")


@cli.command()
@click.option("--from", "run", required=True, type=click.Path(path_type=Path), metavar="RUN",
              help="The run whose checkpoints are fine-tuned.")
@click.option("--data", "target", required=True, metavar="CORPUS", help="The target corpus.")
@click.option("--checkpoints", default="early,mid,late", show_default=True,
              help="early, mid, late, final and/or iterations, comma-separated.")
@click.option("--iters", default=200, show_default=True, type=int, help="Fine-tuning steps.")
@click.option("--eval-every", default=20, show_default=True, type=int)
@click.option("--eval-iters", default=20, show_default=True, type=int,
              help="Batches per loss estimate.")
@click.option("--prompt", default="\n", show_default="a newline",
              help="Prompt of the samples before and after.")
@click.option("--seed", default=1337, show_default=True, type=int)
@click.option("--device", default="auto", show_default=True)
@click.option("--max-oov-rate", default=0.05, show_default=True, type=click.FloatRange(0, 1),
              help="Stop if more of the target's characters are outside the model's vocabulary.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@click.option("--set", "overrides", multiple=True, metavar="train.KEY=VALUE",
              help="Fine-tuning settings, e.g. --set train.lr=1e-4 train.batch_size=32.")
@click.argument("more_overrides", nargs=-1, metavar="")
@_FORCE
def transfer(run, target, checkpoints, iters, eval_every, eval_iters, prompt, seed, device,
             max_oov_rate, out, overrides, more_overrides, force):
    """Few-shot transfer: fine-tune from early/mid/late checkpoints on another corpus.

    \b
    lmscope transfer --from runs/math --checkpoints early,mid,late --data shakespeare --iters 200 --out results/math-to-shakespeare

    Run again into the same --out, it reuses the finished fine-tunings and resumes a stopped
    one; --force starts them all afresh.
    """
    from lmscope.analysis.transfer import transfer as run_transfer

    overrides = _all_overrides(overrides, more_overrides)
    with OutDir(out, "transfer", force=force, resumes=not force):
        run_transfer(run, target, out, checkpoints=checkpoints, iters=iters,
                     eval_every=eval_every, eval_iters=eval_iters,
                     overrides=overrides, sample_prompt=prompt, seed=seed,
                     device=device, max_oov_rate=max_oov_rate, log=click.echo)
    click.echo((out / "summary.md").read_text(encoding="utf-8"), nl=False)
    click.echo(f"written to {out}/")


@cli.group()
def probe():
    """Look inside a run's models, checkpoint by checkpoint."""


_PROMPTS = click.option("--prompts", "prompts", required=True, type=click.Path(path_type=Path),
                        metavar="FILE.toml", help="Prompt file ([[prompt]] text, domain, expected).")
_SELECT = click.option(
    "--checkpoints", "which", default="all", show_default=True, metavar="all|final|LIST",
    help="Every kept checkpoint, only the final one, or a list of iterations and names "
         "(0,100,final).")


_WHICH = click.option("--checkpoints", "which", type=click.Choice(["all", "final"]), default="all",
                      show_default=True, help="Every kept checkpoint, or only the final one.")


@probe.command(name="softmax")
@click.argument("run", type=click.Path(path_type=Path))
@_PROMPTS
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@click.option("--top-k", default=5, show_default=True, type=int)
@_WHICH
@click.option("--device", default="auto", show_default=True)
@_FORCE
def probe_softmax(run, prompts, out, top_k, which, device, force):
    """Next-character probabilities and entropy for each prompt at each checkpoint.

    \b
    A prompt file is TOML, one [[prompt]] table per prompt:
        [[prompt]]
        name = "romeo"               # optional
        text = "ROMEO:\\nBut soft, what light through yonder windo"
        domain = "shakespeare"       # optional: a corpus name, or "in" / "out"
        expected = "w"               # optional: the true next character
    """
    from lmscope.analysis import softmax

    with OutDir(out, "probe softmax", force=force):
        softmax.compute(run, prompts, top_k=top_k, which=which, device=device).save(out)
    click.echo((out / "summary.md").read_text(encoding="utf-8"), nl=False)
    click.echo(f"written to {out}/")


_ATTRIBUTION_STEPS = click.option(
    "--steps", default=32, show_default=True, type=int,
    help="Integrated-gradients steps; samples of gradient_shap and shapley_sampling.")


@probe.command(name="attribution")
@click.argument("run", type=click.Path(path_type=Path))
@_PROMPTS
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@click.option("--method", "methods", multiple=True, metavar="METHOD",
              help="Attribution method, repeat for several: grad_norm, grad_x_input, "
                   "integrated_gradients, gradient_shap, occlusion, shapley_sampling, "
                   "shapley_exact (default the first three).")
@click.option("--baseline", default="zero", show_default=True, metavar="zero|mean|unk|token:C",
              help="The baseline embedding (all methods but grad_norm and grad_x_input): zero, "
                   "the mean token embedding, the unknown token's, or the token C's.")
@click.option("--window", default=1, show_default=True, type=int, metavar="W",
              help="Occlusion: replace W consecutive positions at a time (a position's score: "
                   "the mean over the windows that hold it).")
@_ATTRIBUTION_STEPS
@click.option("--target", type=click.Choice(["predicted", "expected"]), default="predicted",
              show_default=True, help="Attribute the predicted next character or the expected one.")
@click.option("--contrast", "contrast", default=None, metavar="FOIL",
              help="Attribute log p(target) - log p(FOIL): why the target and not this character.")
@click.option("--generate", "generate", default=None, type=int, metavar="N",
              help="Write N tokens greedily after each prompt and attribute each one to the "
                   "prompt and the tokens written before it (steps.csv, scores.csv, "
                   "matrix_<prompt>_<method>.png).")
@_SELECT
@_FORCE
def probe_attribution(run, prompts, out, methods, baseline, window, steps, target, contrast,
                      generate, which, force):
    """Gradient attribution over the prompt's characters, at each checkpoint (prompt file as for
    `probe softmax`); with --generate N, of each token of a continuation the model writes."""
    from lmscope.analysis import attribution, continuation

    methods = methods or attribution.GRADIENT_METHODS
    if generate is not None:
        continuation.check_generate(generate)
        for option, given in (("--target expected", target == "expected"),
                              ("--contrast", contrast is not None)):
            if given:
                raise LmscopeError(f"{option} does not apply with --generate: each step "
                                   "attributes the token the model chose; drop one of them")
    with OutDir(out, "probe attribution", force=force):
        if generate is not None:
            continuation.compute(run, prompts, generate=generate, methods=methods,
                                 baseline=baseline, steps=steps, which=which,
                                 window=window).save(out)
        else:
            attribution.compute(run, prompts, methods=methods, baseline=baseline, steps=steps,
                                which=which, target=target, contrast=contrast,
                                window=window).save(out)
    click.echo((out / "summary.md").read_text(encoding="utf-8"), nl=False)
    click.echo(f"written to {out}/")


@probe.command(name="faithfulness")
@click.argument("run", type=click.Path(path_type=Path))
@_PROMPTS
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@click.option("--method", "methods", multiple=True, metavar="METHOD",
              help="An attribution method to score, repeat for several (default grad_norm, "
                   "grad_x_input, integrated_gradients, gradient_shap, occlusion).")
@click.option("--baseline", default="zero", show_default=True, metavar="zero|mean|unk|token:C",
              help="The embedding a removed token is replaced by, and the methods' baseline.")
@_ATTRIBUTION_STEPS
@click.option("--target", type=click.Choice(["predicted", "expected"]), default="predicted",
              show_default=True, help="Score the attribution of the predicted next character or "
                                      "of the expected one.")
@click.option("--random-orders", "random_orders", default=16, show_default=True, type=int,
              help="Random orders of the positions averaged into the 'random' row.")
@click.option("--no-randomization", "no_randomization", is_flag=True,
              help="Skip the randomization check (attribution on a re-initialised model).")
@click.option("--order", type=click.Choice(["signed", "abs"]), default="signed", show_default=True,
              help="Order the positions by signed score (evidence for the target first) or by "
                   "|score| (strong evidence either way first).")
@_SELECT
@click.option("--device", default="auto", show_default=True)
@_FORCE
def probe_faithfulness(run, prompts, out, methods, baseline, steps, target, random_orders,
                       no_randomization, order, which, device, force):
    """Which attribution method to believe: deletion and insertion curves, ERASER
    comprehensiveness and sufficiency and a randomization check for each method at each
    checkpoint, ranked, with a random order beside them (prompt file as for `probe softmax`)."""
    from lmscope.analysis import faithfulness

    with OutDir(out, "probe faithfulness", force=force):
        faithfulness.compute(run, prompts, methods=methods or faithfulness.DEFAULT_METHODS,
                             baseline=baseline, steps=steps, which=which, target=target,
                             device=device, random_orders=random_orders,
                             randomization=not no_randomization, order=order).save(out)
    _echo_summary(out)


@probe.command(name="attention")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="The text whose attention is shown.")
@click.option("--layer", default=-1, show_default="the last", type=int)
@click.option("--heads", default=None, metavar="H1,H2,...", help="Heads to show (default all).")
@click.option("--top", default=3, show_default=True, type=click.IntRange(1, 20),
              help="Keys listed per query.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@click.option("--checkpoints", "which", type=click.Choice(["all", "final"]), default="final",
              show_default=True, help="Checkpoints whose maps go into attention.json (the "
              "report's hover view); the figures and tables are of the last one.")
@click.option("--device", default="auto", show_default=True)
@_FORCE
def probe_attention(run, prompt, layer, heads, top, out, which, device, force):
    """Attention heatmaps of one layer's heads for a prompt, and the keys each query attends to;
    attention.json keeps every layer and head for `lmscope report`.

    \b
    lmscope probe attention runs/shakespeare --prompt "ROMEO:" --layer 3 --heads 0,1,2,3 --out results/attn
    """
    from lmscope.analysis import attention

    with OutDir(out, "probe attention", force=force):
        attention.compute(run, prompt, layer=layer, heads=heads, top=top, which=which,
                          device=device).save(out)
    text = (out / "summary.md").read_text(encoding="utf-8")
    click.echo(text.split("\nFor each query")[0])
    click.echo(f"written to {out}/")


@probe.command(name="lens")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--prompts", "prompts", type=click.Path(path_type=Path), metavar="FILE.toml",
              help="Read the lens on these prompts (each one's own next tokens).")
@click.option("--data", "data", multiple=True, metavar="CORPUS",
              help="Read it on windows of a corpus's validation split (repeat for several).")
@click.option("--windows", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Windows per corpus, each the model's context long.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@click.option("--lens", type=click.Choice(["logit", "tuned"]), default="logit",
              show_default=True, help="tuned: the translators `lmscope lens train` wrote.")
@_WHICH
@click.option("--device", default="auto", show_default=True)
@_FORCE
def probe_lens(run, prompts, data, windows, lens, out, which, device, force):
    """The logit lens: what the model would predict at each layer, at each checkpoint.

    \b
    lmscope probe lens runs/shakespeare --data shakespeare --data wikipedia --out results/lens
    lmscope probe lens runs/shakespeare --prompts prompts.toml --out results/lens
    """
    from lmscope.analysis import lens as lens_probe

    with OutDir(out, "probe lens", force=force):
        lens_probe.compute(run, prompts=prompts, data=data, which=which, windows=windows,
                           device=device, lens=lens).save(out)
    _echo_summary(out, stop="Where the prediction forms")


_FINAL_OR_ALL = click.option("--checkpoints", "which", type=click.Choice(["all", "final"]),
                             default="final", show_default=True,
                             help="Only the final checkpoint, or every kept one.")


def _echo_summary(out: Path, stop: str | None = None) -> None:
    """The probe's summary.md on the terminal (up to the line starting with `stop`), then where
    it was written."""
    text = (out / "summary.md").read_text(encoding="utf-8")
    if stop is not None and f"\n{stop}" in text:
        notes = [line for line in text.splitlines() if line.startswith("Note: ")]
        text = text.split(f"\n{stop}")[0].rstrip("\n") + "\n" + "".join(f"{n}\n" for n in notes)
    click.echo(text, nl=False)
    click.echo(f"written to {out}/")


@probe.command(name="heads")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", default=None, metavar="CORPUS",
              help="Also the in-context-learning score, on windows of this corpus.")
@click.option("--windows", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Windows of the corpus for the in-context-learning score.")
@click.option("--n-sequences", default=8, show_default=True, type=int,
              help="Repeated random sequences the detectors read.")
@click.option("--seq-len", default=None, type=int, show_default="the longest even length that "
              "fits the context", help="Tokens of each repeated sequence (two copies).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@_WHICH
@click.option("--device", default="auto", show_default=True)
@_FORCE
def probe_heads(run, data, windows, n_sequences, seq_len, seed, out, which, device, force):
    """Attention-head detectors (previous-token, duplicate-token, induction, first-token) and the
    in-context-learning score, at each checkpoint.

    \b
    lmscope probe heads runs/shakespeare --data shakespeare --out results/heads
    """
    from lmscope.analysis import heads

    with OutDir(out, "probe heads", force=force):
        heads.compute(run, which=which, data=data, windows=windows, n_sequences=n_sequences,
                      seed=seed, seq_len=seq_len, device=device).save(out)
    _echo_summary(out)


@probe.command(name="dynamics")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", "corpus", required=True, metavar="CORPUS",
              help="The text the gradients and activations are measured on.")
@click.option("--split", default="val", show_default=True, type=click.Choice(["train", "val"]))
@click.option("--windows", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Evenly spaced windows of the split (the same at every checkpoint).")
@click.option("--length", default=None, type=click.IntRange(2), show_default="the context",
              help="Tokens per window.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@_SELECT
@click.option("--device", default="auto", show_default=True)
@_FORCE
def probe_dynamics(run, corpus, split, windows, length, out, which, device, force):
    """Learning dynamics: norms, effective rank, condition number and sparsity of every layer's
    weights, gradients and activations at each checkpoint, and each layer's CKA, SVCCA and
    PWCCA to the final checkpoint (when does each layer settle?).

    \b
    lmscope probe dynamics runs/shakespeare --data shakespeare --out results/dynamics
    """
    from lmscope.analysis import dynamics

    with OutDir(out, "probe dynamics", force=force):
        dynamics.compute(run, corpus, which=which, split=split, windows=windows, length=length,
                         device=device).save(out)
    _echo_summary(out, stop="## Activations")


@probe.command(name="similarity")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--data", "corpus", required=True, metavar="CORPUS",
              help="The text every run reads (the same tokens for all).")
@click.option("--split", default="val", show_default=True, type=click.Choice(["train", "val"]))
@click.option("--windows", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Evenly spaced windows of the split.")
@click.option("--length", default=None, type=click.IntRange(2),
              show_default="the shortest context", help="Tokens per window.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@_SELECT
@click.option("--device", default="auto", show_default=True)
@_FORCE
def probe_similarity(runs, corpus, split, windows, length, out, which, device, force):
    """Representation similarity across runs: layer x layer CKA between every pair of runs on
    the same tokens, at matching checkpoints (which layers agree, and when do runs part?).

    \b
    lmscope probe similarity runs/shakespeare runs/math --data shakespeare --out results/sim
    """
    from lmscope.analysis import similarity

    with OutDir(out, "probe similarity", force=force):
        similarity.compute(runs, corpus, which=which, split=split, windows=windows,
                           length=length, device=device).save(out)
    _echo_summary(out, stop="Most similar layer")


@probe.command(name="ablate")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", "corpora", multiple=True, required=True, metavar="CORPUS",
              help="A corpus to measure the loss on (repeat for several; the run's own first).")
@click.option("--method", type=click.Choice(["zero", "mean", "resample"]), default="mean",
              show_default=True, help="What replaces a component's output.")
@click.option("--component", "components", multiple=True, metavar="LABEL",
              help="Only these components (e.g. L0H1, 'L1 attn', 'L1 mlp', 'lstm 0'); "
              "default all.")
@click.option("--windows", default=16, show_default=True, type=click.IntRange(1, 4096),
              help="Windows per corpus, each the model's context long.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@_FINAL_OR_ALL
@click.option("--device", default="auto", show_default=True)
@_FORCE
def probe_ablate(run, corpora, method, components, windows, out, which, device, force):
    """Which components does the model need, on which corpus: the loss with each head, attention
    layer, MLP (or LSTM / k-gram layer) ablated.

    \b
    lmscope probe ablate runs/shakespeare --data shakespeare --data wikipedia --out results/ablation
    """
    from lmscope.analysis import ablation

    with OutDir(out, "probe ablate", force=force):
        ablation.compute(run, list(corpora), method=method, which=which, windows=windows,
                         device=device, components=list(components) or None).save(out)
    _echo_summary(out)


@probe.command(name="patch")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--clean", required=True, metavar="TEXT", help="The prompt whose behaviour is "
              "restored.")
@click.option("--corrupt", required=True, metavar="TEXT",
              help="The same number of tokens, changed where it matters.")
@click.option("--target", required=True, metavar="CHAR", help="The clean prompt's next token.")
@click.option("--foil", default=None, metavar="CHAR",
              help="The corrupt prompt's next token: the metric becomes logit(target) - "
              "logit(foil) instead of log p(target).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@_FINAL_OR_ALL
@click.option("--device", default="auto", show_default=True)
@_FORCE
def probe_patch(run, clean, corrupt, target, foil, out, which, device, force):
    """Activation patching: each layer's residual stream, attention and MLP output at each
    position (and each head) taken from the clean run into the corrupt one; how much of the
    clean behaviour comes back (1: all, 0: none).

    \b
    lmscope probe patch runs/shakespeare --clean "ROMEO:" --corrupt "JULIET" --target "\n" --out results/patching
    """
    from lmscope.analysis import patching

    with OutDir(out, "probe patch", force=force):
        patching.compute(run, clean, corrupt, target, foil, which=which,
                         device=device).save(out)
    _echo_summary(out)


@probe.command(name="generation")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--num-samples", default=8, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--max-new-tokens", default=200, show_default=True, type=click.IntRange(1))
@click.option("--prompt", default="\n", show_default="a newline", help="Text every sample continues.")
@click.option("--temperature", default=None, show_default="0.8",
              type=click.FloatRange(0, min_open=True))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@_WHICH
@click.option("--device", default="auto", show_default=True)
@_FORCE
def probe_generation(run, num_samples, max_new_tokens, prompt, temperature, seed, out, which,
                     device, force):
    """Generation quality (distinct-n, repetition, coherence), speed and generation-time
    attention at each checkpoint, and their correlations.

    \b
    lmscope probe generation runs/shakespeare --num-samples 8 --out results/generation
    """
    from lmscope.analysis import generation
    from lmscope.generate import DEFAULT_TEMPERATURE

    if temperature is None:
        temperature = DEFAULT_TEMPERATURE
    with OutDir(out, "probe generation", force=force):
        result = generation.compute(run, num_samples=num_samples, prompt=prompt,
                                    max_new_tokens=max_new_tokens, temperature=temperature,
                                    seed=seed, which=which, device=device, log=click.echo)
        result.save(out, title=f"of {Path(run).name}")
    click.echo(f"written to {out}/")


@cli.group(name="lens")
def lens_group():
    """Lenses that are trained: the tuned lens's translators, beside each checkpoint."""


@lens_group.command(name="train")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", "corpus", required=True, metavar="CORPUS",
              help="The text the translators learn on (its train split; its val split measures).")
@click.option("--steps", default=300, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1))
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(0, min_open=True))
@_WHICH
@click.option("--device", default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Train again where a checkpoint has a tuned lens.")
def lens_train(run, corpus, steps, batch_size, lr, which, device, force):
    """Train a tuned lens (Belrose et al. 2023) for each checkpoint of a run; the translators go
    beside the checkpoint's weights (tuned_lens.safetensors, tuned_lens.json), and
    `lmscope probe lens RUN --lens tuned` reads them.

    \b
    lmscope lens train runs/shakespeare --data shakespeare
    """
    from lmscope.analysis import tuned_lens

    tuned_lens.train_run(run, corpus, which=which, force=force, steps=steps,
                         batch_size=batch_size, lr=lr, device=device, log=click.echo)


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN...")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@click.option("--rise", default=0.02, show_default=True, type=float,
              help="Over-fit when the final val loss is this far above its minimum (nats).")
@click.option("--gap", default=0.15, show_default=True, type=float,
              help="Over-fit when the final val loss is this far above the train loss (nats).")
@click.option("--falling", default=0.01, show_default=True, type=float,
              help="Under-fit when the last evaluation still improved val loss by this much.")
@_FORCE
def compare(runs, out, rise, gap, falling, force):
    """Overlay the loss curves of several runs; minimum val loss, where, gap and a verdict."""
    from lmscope.analysis import compare as run_comparison

    rule = run_comparison.Rule(rise=rise, gap=gap, falling=falling)
    with OutDir(out, "compare", force=force):
        run_comparison.compute(list(runs), rule=rule).save(out)
    click.echo((out / "compare.md").read_text(encoding="utf-8"), nl=False)
    click.echo(f"written to {out}/")


class _StudyCommand(click.Command):
    """`lmscope study --help` ends with every step, from the step registry."""

    def format_help_text(self, ctx, formatter):
        from lmscope.study import steps as registered

        super().format_help_text(ctx, formatter)
        with formatter.section("Steps, in the order they run (steps = [...] in [study])"):
            formatter.write_dl([(step.name, step.summary) for step in registered.STEPS])


@cli.command(cls=_StudyCommand)
@click.argument("study_file", type=click.Path(path_type=Path), metavar="STUDY.toml")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@click.option("--quick", is_flag=True, help="The study's [quick] settings: every artifact, fast.")
@click.option("--seeds", default=None, metavar="S1,S2,...",
              help="Train every run once per seed (replaces the file's [study] seeds).")
@click.option("--set", "overrides", multiple=True, metavar="TABLE.KEY=VALUE",
              help="Override a value of the study file, after [quick], e.g. --set "
                   "train.max_iters=100 model.n_layer=2 (a variant's or corpus's own table wins).")
@click.argument("more_overrides", nargs=-1, metavar="")
@click.option("--device", default="auto", show_default=True)
@click.option("--jobs", default="auto", show_default=True, metavar="N|auto",
              help="Units of work (a training run, a transfer pair, a probe of one model) to run "
                   "at once, each in a process of its own: one GPU each where there are GPUs, "
                   "the cores split between them on a CPU. auto: one per GPU, else one per core "
                   "up to 4; 1: one after another in this process.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="Where the units run: processes on this machine, or tasks "
                                      "of a Ray cluster (pip install 'lmscope[ray]').")
@click.option("--address", default=None, metavar="ADDR",
              help="The Ray cluster to join (auto: the running one; default: start one here).")
@click.option("--plan", "plan_only", is_flag=True,
              help="Print the units still to run, each with its estimated seconds (training and "
                   "transfer, from a short measurement of each model size here), and the wall "
                   "time at --jobs N; run nothing.")
def study(study_file, out, quick, seeds, overrides, more_overrides, device, jobs, executor,
          address, plan_only):
    """Run a study file's steps (by default stats, train, matrix, transfer, softmax,
    attribution) as units of work: each training run, transfer pair and probe of one model,
    up to --jobs N at once, each as soon as what it reads is done.

    Finished units are skipped, a stopped training run is resumed: run the same command again
    to continue after a stop (or a kill).

    \b
    lmscope study studies/domain.toml --quick --out results/domain-quick
    lmscope study studies/attention.toml --seeds 0,1,2 --out results/attention
    lmscope study studies/architectures.toml --quick --set train.max_iters=100 --out arch-100
    lmscope study studies/domain.toml --quick --out results/domain-quick --plan --jobs 2
    """
    from lmscope.study.runner import plan_study, run_study

    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise LmscopeError(f"--seeds takes whole numbers separated by commas, got "
                               f"{seeds!r}") from None
        if not seed_list or min(seed_list) < 0:
            raise LmscopeError(f"--seeds takes one or more seeds >= 0, got {seeds!r}")
    settings = dict(quick=quick, seeds=seed_list, device=device, jobs=jobs, executor=executor,
                    overrides=_all_overrides(overrides, more_overrides))
    if plan_only:
        click.echo(plan_study(study_file, out, **settings).table())
        return
    start = time.perf_counter()
    timings = run_study(study_file, out, log=click.echo, address=address, **settings)
    click.echo(f"done in {time.perf_counter() - start:.0f} s (seconds of work per step: "
               + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f"); see {out}/")
    click.echo(f"report: {out / 'report.html'}")


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path), metavar="DIR")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
def report(folder, open_browser):
    """Write DIR/report.html: a run's, a study's or any command's output folder (its configs,
    curves, tables, samples, figures and interactive views) in one self-contained page (no
    server, no network).

    \b
    lmscope report results/domain --open
    lmscope report attention-out      # from lmscope probe attention ... --out attention-out
    """
    from lmscope.study.runner import write_report

    path = write_report(folder)
    if OutDir(folder, "report").recorded()[0]:  # a command's --out folder: the page is lmscope's
        record_outputs(folder, [path.name], "report")
    click.echo(f"report: {path}")
    if open_browser:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


# --- export --------------------------------------------------------------------------------------

@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["hf"]), default="hf", show_default=True,
              help="hf: a Hugging Face transformers GPT-2 folder (config.json, model.safetensors, "
                   "tokenizer.json).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), metavar="DIR")
@click.option("--force", is_flag=True, help="Replace DIR if it holds an earlier export.")
def export(run, fmt, out, force):
    """Write a GPT run or checkpoint in another library's format.

    \b
    lmscope export runs/shakespeare --format hf --out hf/shakespeare
    then, in Python: transformers.AutoModelForCausalLM.from_pretrained("hf/shakespeare")
    """
    from lmscope.export import export_hf

    export_hf(run, out, force=force)
    click.echo(f"written to {out}/")


# --- entry point ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    try:
        code = cli.main(args=argv, prog_name="lmscope", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click.exceptions.Abort:  # Ctrl-C outside training
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.exceptions.NoArgsIsHelpError as e:  # `lmscope` alone: the help, as text
        click.echo(e.ctx.get_help() if e.ctx else str(e))
        sys.exit(0)
    except click.ClickException as e:  # a usage error: one line, like every other error
        click.echo(f"error: {' '.join(e.format_message().split())}", err=True)
        sys.exit(e.exit_code)
    except TrainingInterrupted as e:
        click.echo(f"{e}", err=True)
        sys.exit(130)
    except LmscopeError as e:
        click.echo(f"error: {' '.join(str(e).split())}", err=True)
        sys.exit(1)
    except OSError as e:  # unwritable folder, full disk, ...
        where = f": {e.filename}" if e.filename else ""
        click.echo(f"error: {e.strerror or e}{where}", err=True)
        sys.exit(1)
