"""The study file: a TOML file that says which models to train and which steps to run on them.

Two kinds. A *domain* study trains one model per corpus and compares them across corpora:

    [study]
    corpora = ["shakespeare", "math", "wikipedia"]
    preset = "shakespeare-char-cpu"      # model and training recipe for every corpus
    joint_vocabulary = true              # one character vocabulary over all corpora
    processes_per_run = 1                # > 1: each run data-parallel (torchrun), a GPU each
    figures = "all"                      # "report": only the figures report.html shows
    prompts = "domain_prompts.toml"      # for the softmax and attribution probes (path relative to this file)
    steps = ["stats", "train", "matrix", "transfer", "softmax", "attribution"]   # the default
    [model]                              # the preset's [model] values overridden for every run
    [train]                              # ... and [train]
    [data]                               # ... and [data] (tokenizer = "bpe", ...)
    [track]                              # ... and [track] (attention_every = 100, ...)
    [log]                                # ... and [log] (tensorboard = true)
    [transfer]    checkpoints, iters, eval_every, eval_iters
    [softmax]     top_k
    [attribution] methods, baseline, steps, window, generate, generate_checkpoints
    [faithfulness] methods, baseline, steps, checkpoints, random_orders, order

An *architecture* study trains several variants on the same corpora and compares the models:

    [[variant]]
    name = "lstm"
    model = { name = "lstm", n_hidden = 256 }   # another architecture starts from its defaults
    train = { lr = 3e-3 }
    data = { corpus = "tinystories:0.7+3seqs:0.3" }   # e.g. a mixture instead of the corpus
    ...
    steps = ["stats", "train", "compare", "generate", "attention"]               # the default
    [generate]    prompt, top_p, greedy, max_new_tokens, seed    (a nucleus-sampling table per run)
    [attention]   prompt, layer, heads                           (attention maps, gpt runs)

A study file may start from another: `extends = "domain.toml"` (before any table, a path
relative to it) takes that file's tables, and its own tables are merged over them.

Either kind may train every run with several seeds (`seeds = [0, 1, 2]` in [study], or
`lmscope study FILE --seeds 0,1,2`): runs are named <run>-s<seed>, and the `seeds` step reports
means over seeds with standard errors. A corpus may have its own settings, merged over
[model]/[train]/[data] for its runs only:

    [corpus.enwik8]
    data = { tokenizer = "byte" }
    train = { lr = 5e-4 }
    [generation]  num_samples, max_new_tokens, prompt, temperature, checkpoints (all | final)

Either kind may have [quick]: the same tables again, merged over the others by --quick
([quick.train], [quick.model], [quick.transfer], ...), and [quick.variants.NAME] merged over
the variant of that name (a variant's own tables win over [quick.train]).

Every step's table, and the steps themselves, are declared in study/steps/ (docs/studies.md
lists them); what a read study file becomes is study/plan.py; the runner is study/runner.py.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from lmscope.data.corpora import REGISTRY
from lmscope.data.prompts import check_domains, load_prompts
from lmscope.errors import ConfigError, LmscopeError
from lmscope.settings import build, load_toml, merge, parse_override, suggest
from lmscope.study import steps as registered
from lmscope.study.plan import FIGURES, RUN_TABLES, Study, Variant


def load_study(path: str | Path, *, quick: bool = False, seeds: list[int] | None = None,
               overrides: list[str] = ()) -> Study:
    """Read and check a study file; with quick=True its [quick] tables are merged over the rest;
    `seeds` (the command line's --seeds) replaces [study] seeds; `overrides` (the command line's
    --set, "train.max_iters=100") are merged over the file's tables, after [quick] (a variant's
    or a corpus's own table still wins, as it does over the file's)."""
    path = Path(path)
    raw = _read(path)
    quick_raw = raw.pop("quick", {})
    if quick:
        if not quick_raw:
            raise LmscopeError(f"study file {path} has no [quick] table, so it has no --quick mode")
        quick_raw = dict(quick_raw)
        per_variant = quick_raw.pop("variants", {})  # [quick.variants.NAME]: into that variant
        raw = merge(raw, quick_raw)
        names = [v.get("name") for v in raw.get("variant", []) if isinstance(v, dict)]
        for name, tables in per_variant.items():
            if name not in names:
                raise ConfigError(f"study file {path}: [quick.variants.{name}] names no "
                                  f"[[variant]]{suggest(name, names)}")
            i = names.index(name)
            raw["variant"][i] = merge(raw["variant"][i], tables)
    settings = registered.settings_tables()
    steps = registered.by_name()
    tables = ("study", *RUN_TABLES, "corpus", "variant", *settings)
    for item in overrides:
        override = parse_override(item)
        table = next(iter(override))
        if table in ("corpus", "variant"):
            raise ConfigError(f"--set {item}: [{table}] is not a table of settings; edit the "
                              "study file for [corpus.NAME] and [[variant]] tables")
        if table not in tables:
            raise ConfigError(f"--set {item}: unknown table [{table}]"
                              f"{suggest(table, [t for t in tables if t not in ('corpus', 'variant')])}")
        raw = merge(raw, override)
    if seeds is not None:
        raw = merge(raw, {"study": {"seeds": seeds}})
    for key, value in raw.items():
        if key not in tables:
            raise ConfigError(f"study file {path}: unknown table [{key}]{suggest(key, tables)}")
        if not isinstance(value, list if key == "variant" else dict):
            raise ConfigError(f"study file {path}: [{key}] must be a table"
                              + (" list ([[variant]])" if key == "variant" else ""))
    try:  # the [study] table: the fields of Study but the ones other tables give
        study = build(Study, dict(raw.get("study", {})), "study", kind="study key",
                      skip=(*RUN_TABLES, "variants", "corpus", "settings"))
    except TypeError:
        raise ConfigError(f"study file {path}: [study] needs corpora = [\"...\", ...]") from None
    study = dataclasses.replace(
        study, **{table: raw.get(table, {}) for table in RUN_TABLES}, corpus=raw.get("corpus", {}),
        variants=[_variant(v, path) for v in raw.get("variant", [])],
        settings={key: build(cls, raw.get(key, {}), key, kind="study key")
                  for key, cls in settings.items()})
    if not study.corpora:
        raise ConfigError(f"study file {path}: [study] corpora is empty")
    if len(set(study.corpora)) != len(study.corpora):
        raise ConfigError(f"study file {path}: a corpus is listed twice in corpora")
    for name, tables in study.corpus.items():
        # a corpus a [quick] table dropped from corpora may keep its table
        if name not in study.corpora and name not in REGISTRY:
            raise ConfigError(f"study file {path}: [corpus.{name}] is not one of the corpora"
                              f"{suggest(name, study.corpora)}")
        if not isinstance(tables, dict) or set(tables) - set(RUN_TABLES) or \
                not all(isinstance(t, dict) for t in tables.values()):
            raise ConfigError(f"study file {path}: [corpus.{name}] may hold only "
                              f"{', '.join(RUN_TABLES)} tables")
    if isinstance(study.processes_per_run, bool) or not isinstance(study.processes_per_run, int) \
            or study.processes_per_run < 1:
        raise ConfigError(f"study file {path}: [study] processes_per_run must be a whole number "
                          f"of at least 1 (each run's data-parallel processes), got "
                          f"{study.processes_per_run!r}")
    if study.figures not in FIGURES:
        raise ConfigError(f"study file {path}: [study] figures must be one of "
                          f"{', '.join(map(repr, FIGURES))}, got {study.figures!r} (\"report\": "
                          "only the figures report.html shows)")
    if len(set(study.seeds)) != len(study.seeds):
        raise ConfigError(f"study file {path}: a seed is listed twice in seeds")
    names = [v.name for v in study.variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"study file {path}: two [[variant]] tables have the same name")
    study.steps = study.steps or list(registered.VARIANT_STEPS if study.variants
                                      else registered.DEFAULT_STEPS)
    bad = [s for s in study.steps if s not in steps]
    if bad:
        raise ConfigError(f"study file {path}: unknown step {bad[0]!r}{suggest(bad[0], steps)}; "
                          f"steps are {', '.join(steps)}")
    per_corpus = [s for s in study.steps if steps[s].per_corpus]
    if study.seeds and per_corpus:
        allowed = [s.name for s in steps.values() if not s.per_corpus and s.name != "stats"]
        raise ConfigError(f"study file {path}: the {per_corpus[0]} step compares one model per "
                          f"corpus; a study with seeds runs {', '.join(allowed[:-1])} and "
                          f"{allowed[-1]}")
    if study.variants and per_corpus:
        raise ConfigError(f"study file {path}: the {per_corpus[0]} step compares one model per "
                          "corpus; a study with [[variant]] tables runs "
                          f"{', '.join(registered.VARIANT_STEPS)}")
    compares_runs = [s for s in study.steps if steps[s].compares_runs]
    if compares_runs and len(study.runs()) < 2:
        raise ConfigError(f"study file {path}: the {compares_runs[0]} step compares runs with "
                          "each other and this study trains one; remove it from steps, or add "
                          "corpora, [[variant]] tables or seeds")
    needs_prompts = {s for s in study.steps if steps[s].needs_prompts}
    if needs_prompts and not study.prompts:
        raise ConfigError(f"study file {path}: the {sorted(needs_prompts)[0]} step needs "
                          "[study] prompts = \"FILE.toml\"")
    if study.prompts:
        study.prompts = str((path.parent / study.prompts).resolve())
        if needs_prompts:  # a misspelt domain is an error now, not a mislabelled table later
            check_domains(load_prompts(study.prompts), study.corpora, study.prompts)
    for run in study.runs():
        study.run_config(run)  # every config error shows now, not after an hour of training
    return study


def _read(path: Path, extended_by: tuple[Path, ...] = ()) -> dict:
    """A study file's tables, merged over those of the file it `extends` (a path relative to
    it), and so on: a study at another size is its few changed values."""
    raw = load_toml(path, "study file")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"study file {path}: extends must be a study file's path, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in (*extended_by, path.resolve()):
        raise ConfigError(f"study file {path}: extends {base}, which extends it in turn; one of "
                          "them must be a whole study")
    if not base_path.is_file():
        raise ConfigError(f"study file {path}: extends {base}, which is not a file (a path "
                          f"relative to {path.parent})")
    return merge(_read(base_path, (*extended_by, path.resolve())), raw)


def _variant(raw, path: Path) -> Variant:
    if not isinstance(raw, dict):
        raise ConfigError(f"study file {path}: each [[variant]] must be a table")
    extra = set(raw) - {"name", "model", "train", "data"}
    if extra:
        raise ConfigError(f"study file {path}: unknown key {sorted(extra)[0]!r} in [[variant]] "
                          "(keys: name, model, train, data)")
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise ConfigError(f"study file {path}: a [[variant]] needs name = \"...\" (letters, "
                          f"digits, - and _), got {name!r}")
    for key in ("model", "train", "data"):
        if not isinstance(raw.get(key, {}), dict):
            raise ConfigError(f"study file {path}: variant {name}: {key} must be a table")
    return Variant(name, dict(raw.get("model", {})), dict(raw.get("train", {})),
                   dict(raw.get("data", {})))
