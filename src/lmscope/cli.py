"""The `lmscope` command line: parses arguments, calls the Python API, prints results.

Errors the user can fix (`LmscopeError`) are printed as one line, `error: ...`, with exit code 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from lmscope.errors import LmscopeError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lmscope")
def cli():
    """Train small language models on corpora of different domains and look inside them."""


# --- train ---------------------------------------------------------------------------------------

def _default_run_dir(corpus: str, name: str) -> Path:
    stem = f"{Path(corpus).stem}-{name}"
    path = Path("runs") / stem
    n = 2
    while path.exists():
        path = Path("runs") / f"{stem}-{n}"
        n += 1
    return path


@cli.command()
@click.option("--data", "data", metavar="CORPUS",
              help="Corpus name (see `lmscope data list`) or path to a text file or folder.")
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
    lmscope train --out runs/shakespeare --resume
    """
    from lmscope.config import load_toml, preset_names, resolve_config
    from lmscope.train.trainer import train as run_training

    for item in more_overrides:  # `--set a=1 b=2`: the values after the first arrive here
        if "=" not in item:
            raise click.UsageError(f"unexpected argument {item!r} (overrides look like key=value)")
    overrides = [*overrides, *more_overrides]
    if resume:
        if out is None:
            raise LmscopeError("--resume needs --out RUN_DIR, the run to continue")
        if preset or config_file:
            raise LmscopeError("--resume continues a run with its saved config "
                               f"({out / 'config.toml'}); --preset and --config cannot change it "
                               "(use --set train.KEY=VALUE for [train] values)")
        saved = out / "config.toml"
        if not saved.is_file():
            raise LmscopeError(f"cannot resume: {saved} does not exist")
        base = load_toml(saved)
        config = resolve_config(base=base, data=data, model=model, overrides=overrides)
        for section in ("model", "data"):
            if config.to_dict()[section] != resolve_config(base=base).to_dict()[section]:
                raise LmscopeError(f"cannot change the [{section}] config of a run when resuming; "
                                   "only [train] values may change")
    else:
        if data is None and preset is None and config_file is None:
            raise click.UsageError("give --data CORPUS (or a --preset / --config that names one); "
                                   f"presets: {', '.join(preset_names())}")
        config = resolve_config(preset=preset, config_file=config_file, data=data, model=model,
                                overrides=overrides)
        if out is None:
            out = _default_run_dir(config.data.corpus, preset or config.model_name)
    # Under torchrun every process runs this command; only rank 0 speaks.
    echo = click.echo if int(os.environ.get("RANK", "0")) == 0 else (lambda *a, **k: None)
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
@click.option("--temperature", default=0.8, show_default=True, type=float)
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
def sample(run, prompt, max_new_tokens, temperature, top_k, top_p, greedy, seed, num_samples,
           device, precision):
    """Generate text from a run folder or checkpoint, streamed to stdout."""
    from lmscope.api import generate, load
    from lmscope.generate import SamplingConfig

    if num_samples < 1:
        raise LmscopeError(f"--num-samples must be at least 1, got {num_samples}")
    SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                   top_p=top_p, greedy=greedy).validate()
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
    """The named corpora lmscope can find or download."""
    from lmscope.data.corpora import list_corpora

    for spec in list_corpora():
        click.echo(f"{spec.name:<12} {spec.description}")


@data.command(name="info")
@click.argument("corpus")
@click.option("--no-download", is_flag=True, help="Only look for local copies.")
def data_info(corpus, no_download):
    """Where a corpus is, its files, sizes, split, licence."""
    from lmscope.data.corpora import resolve

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


# --- entry point ---------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    from lmscope.train.trainer import TrainingInterrupted

    try:
        cli.main(args=argv, prog_name="lmscope", standalone_mode=True)
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
