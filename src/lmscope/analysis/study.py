"""A study: one TOML file that trains models and runs the analyses on them, in order.

Two kinds. A *domain* study trains one model per corpus and compares them across corpora:

    [study]
    corpora = ["shakespeare", "math", "wikipedia"]
    preset = "shakespeare-char-cpu"      # model and training recipe for every corpus
    joint_vocabulary = true              # one character vocabulary over all corpora
    prompts = "domain_prompts.toml"      # for the softmax and attribution probes (path relative to this file)
    steps = ["stats", "train", "matrix", "transfer", "softmax", "attribution"]   # the default
    [model]                              # overrides of the preset, as with --set model.KEY=VALUE
    [train]                              # ... and train.KEY=VALUE
    [data]                               # ... and data.KEY=VALUE (tokenizer = "bpe", ...)
    [track]                              # ... and track.KEY=VALUE (attention_every = 100, ...)
    [log]                                # ... and log.KEY=VALUE (tensorboard = true)
    [transfer]    checkpoints, iters, eval_every, eval_iters
    [softmax]     top_k
    [attribution] methods, baseline, steps

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

`run_study` writes everything under one folder, a sub-folder per step:

    DIR/study.json        the settings the study ran with (a restart must use the same)
    DIR/stats/            corpus statistics                    (analysis/corpus_stats.py)
    DIR/runs/<run>/       one training run per corpus (or variant) (lmscope train)
    DIR/compare/          curves overlaid, early-stopping point, verdict (analysis/compare.py)
    DIR/matrix/           zero-shot cross-domain matrix        (analysis/cross_domain.py)
    DIR/transfer/<a>-to-<b>/ few-shot transfer, every pair     (analysis/transfer.py)
    DIR/softmax/<corpus>/ softmax confidence per model         (analysis/softmax.py)
    DIR/softmax/summary.* the models side by side, in- vs out-of-domain
    DIR/attribution/<corpus>/ gradient attribution per model   (analysis/attribution.py)
    DIR/attribution/by_class_models.* the models side by side, by character class
    DIR/generate/<run>/   nucleus-sampling table per run       (analysis/sampling.py)
    DIR/attention/<run>/  attention maps of a prompt           (analysis/attention.py)
    DIR/generation/<run>/ generation quality, speed and attention per checkpoint (generation.py)
    DIR/seeds/            means over seeds +- standard error, curves with bands (analysis/seeds.py)
    DIR/timings.json      seconds per step
    DIR/README.md         every table in one page, with links to the figures
    DIR/report.html       the same and more in one self-contained web page (report/html.py)

A step (or part of one: a training run, a transfer pair) that finished leaves a `.done` file and
is skipped when the study runs again; a stopped training run is resumed. So a study can be
stopped at any moment (Ctrl-C) and restarted with the same command.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from lmscope.analysis.common import markdown_table, write_csv
from lmscope.config import _suggest, coerce, load_toml, merge
from lmscope.errors import ConfigError, LmscopeError
from lmscope.io import atomic_write_json, atomic_write_text

STEPS = ("stats", "train", "compare", "matrix", "transfer", "softmax", "attribution", "generate",
         "attention", "generation", "seeds")
CORPUS_STEPS = ("matrix", "transfer", "softmax", "attribution")  # one run per corpus
RUN_TABLES = ("model", "train", "data", "track", "log")  # config sections a study sets for its runs
DEFAULT_STEPS = ("stats", "train", "matrix", "transfer", "softmax", "attribution")
VARIANT_STEPS = ("stats", "train", "compare", "generate", "attention")


@dataclass
class TransferSettings:
    checkpoints: str = "early,mid,late"
    iters: int = 200
    eval_every: int = 20
    eval_iters: int = 20


@dataclass
class SoftmaxSettings:
    top_k: int = 5


@dataclass
class AttributionSettings:
    methods: list[str] = field(
        default_factory=lambda: ["grad_norm", "grad_x_input", "integrated_gradients"])
    baseline: str = "zero"
    steps: int = 32


@dataclass
class GenerateSettings:
    prompt: str = "\n"
    top_p: list[float] = field(default_factory=lambda: [0.2, 0.5, 0.75, 0.95, 1.0])
    greedy: bool = True
    max_new_tokens: int = 100
    seed: int = 0


@dataclass
class GenerationSettings:
    num_samples: int = 8
    max_new_tokens: int = 200
    prompt: str = "\n"
    temperature: float = 0.8
    checkpoints: str = "all"  # all | final


@dataclass
class AttentionSettings:
    prompt: str = "\n"
    layer: int = -1
    heads: str = ""  # all


@dataclass
class Variant:
    """One model of an architecture study: a name and its [model] / [train] / [data] settings."""

    name: str
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


@dataclass
class RunSpec:
    name: str  # the run folder's name under DIR/runs/
    corpus: str
    variant: Variant | None = None
    seed: int | None = None  # train.seed, in a multi-seed study


@dataclass
class Study:
    corpora: list[str]
    name: str = "study"
    preset: str = ""
    joint_vocabulary: bool = True
    prompts: str = ""
    steps: list[str] = field(default_factory=list)  # empty: DEFAULT_STEPS, or VARIANT_STEPS
    model: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # e.g. tokenizer = "bpe"
    track: dict = field(default_factory=dict)  # e.g. attention_every = 100
    log: dict = field(default_factory=dict)  # e.g. tensorboard = true
    seeds: list[int] = field(default_factory=list)  # train every run once per seed
    corpus: dict = field(default_factory=dict)  # [corpus.NAME]: model/train/data for one corpus
    variants: list[Variant] = field(default_factory=list)
    transfer: TransferSettings = field(default_factory=TransferSettings)
    softmax: SoftmaxSettings = field(default_factory=SoftmaxSettings)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    attention: AttentionSettings = field(default_factory=AttentionSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def runs(self) -> list[RunSpec]:
        """One run per corpus, or per variant and corpus in an architecture study."""
        from lmscope.analysis.common import folder_name

        if not self.variants:
            runs = [RunSpec(folder_name(c), c) for c in self.corpora]
        else:
            runs = [RunSpec(v.name if len(self.corpora) == 1 else f"{v.name}-{folder_name(c)}", c, v)
                    for v in self.variants for c in self.corpora]
        if not self.seeds:
            return runs
        return [dataclasses.replace(r, name=f"{r.name}-s{seed}", seed=seed)
                for r in runs for seed in self.seeds]

    def run_config(self, run: RunSpec):
        """The training config of one run: preset < [model]/[train]/[data] < [corpus.NAME] <
        the variant's tables < the run's seed.
        A variant with another architecture (model.name) starts from that model's defaults."""
        from lmscope.config import load_preset, resolve_config

        base = load_preset(self.preset) if self.preset else {}
        variant = run.variant or Variant("")
        name = variant.model.get("name")
        if name is not None and name != base.get("model", {}).get("name", "gpt"):
            base = {**base, "model": {"name": name}}
        own = self.corpus.get(run.corpus, {})
        settings = []
        for section in RUN_TABLES:
            values = {**getattr(self, section), **own.get(section, {}),
                      **getattr(variant, section, {})}
            settings += [f"{section}.{k}={_literal(v)}" for k, v in values.items()]
        if run.seed is not None:
            settings.append(f"train.seed={run.seed}")
        if self.joint_vocabulary and len(self.corpora) > 1:
            others = [c for c in self.corpora if c != run.corpus]
            settings.append(f"data.vocab_from={_literal(others)}")
        return resolve_config(base=base, data=run.corpus, overrides=settings)


def _literal(value) -> str:
    """A value as the TOML literal `--set` reads back."""
    from lmscope.config import _toml_value

    return _toml_value(value)


def load_study(path: str | Path, *, quick: bool = False, seeds: list[int] | None = None) -> Study:
    """Read and check a study file; with quick=True its [quick] tables are merged over the rest;
    `seeds` (the command line's --seeds) replaces [study] seeds."""
    path = Path(path)
    raw = load_toml(path, "study file")
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
                                  f"[[variant]]{_suggest(name, names)}")
            i = names.index(name)
            raw["variant"][i] = merge(raw["variant"][i], tables)
    settings = {"transfer": TransferSettings, "softmax": SoftmaxSettings,
                "attribution": AttributionSettings, "generate": GenerateSettings,
                "attention": AttentionSettings, "generation": GenerationSettings}
    if seeds is not None:
        raw = merge(raw, {"study": {"seeds": seeds}})
    tables = ("study", *RUN_TABLES, "corpus", "variant", *settings)
    for key, value in raw.items():
        if key not in tables:
            raise ConfigError(f"study file {path}: unknown table [{key}]{_suggest(key, tables)}")
        if not isinstance(value, list if key == "variant" else dict):
            raise ConfigError(f"study file {path}: [{key}] must be a table"
                              + (" list ([[variant]])" if key == "variant" else ""))
    head = dict(raw.get("study", {}))
    try:
        study = Study(
            **_fields(Study, head, "study", skip=(*RUN_TABLES, "variants", "corpus", *settings)),
            **{table: raw.get(table, {}) for table in RUN_TABLES},
            corpus=raw.get("corpus", {}),
            variants=[_variant(v, path) for v in raw.get("variant", [])],
            **{key: cls(**_fields(cls, raw.get(key, {}), key)) for key, cls in settings.items()})
    except TypeError:
        raise ConfigError(f"study file {path}: [study] needs corpora = [\"...\", ...]") from None
    if not study.corpora:
        raise ConfigError(f"study file {path}: [study] corpora is empty")
    if len(set(study.corpora)) != len(study.corpora):
        raise ConfigError(f"study file {path}: a corpus is listed twice in corpora")
    from lmscope.data.corpora import REGISTRY

    for name, tables in study.corpus.items():
        # a corpus a [quick] table dropped from corpora may keep its table
        if name not in study.corpora and name not in REGISTRY:
            raise ConfigError(f"study file {path}: [corpus.{name}] is not one of the corpora"
                              f"{_suggest(name, study.corpora)}")
        if not isinstance(tables, dict) or set(tables) - set(RUN_TABLES) or \
                not all(isinstance(t, dict) for t in tables.values()):
            raise ConfigError(f"study file {path}: [corpus.{name}] may hold only "
                              f"{', '.join(RUN_TABLES)} tables")
    if len(set(study.seeds)) != len(study.seeds):
        raise ConfigError(f"study file {path}: a seed is listed twice in seeds")
    names = [v.name for v in study.variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"study file {path}: two [[variant]] tables have the same name")
    study.steps = study.steps or list(VARIANT_STEPS if study.variants else DEFAULT_STEPS)
    bad = [s for s in study.steps if s not in STEPS]
    if bad:
        raise ConfigError(f"study file {path}: unknown step {bad[0]!r}{_suggest(bad[0], STEPS)}; "
                          f"steps are {', '.join(STEPS)}")
    per_corpus = [s for s in study.steps if s in CORPUS_STEPS]
    if study.seeds and per_corpus:
        raise ConfigError(f"study file {path}: the {per_corpus[0]} step compares one model per "
                          "corpus; a study with seeds runs train, compare, generate, attention, "
                          "generation and seeds")
    if study.variants and per_corpus:
        raise ConfigError(f"study file {path}: the {per_corpus[0]} step compares one model per "
                          "corpus; a study with [[variant]] tables runs "
                          f"{', '.join(VARIANT_STEPS)}")
    needs_prompts = {"softmax", "attribution"} & set(study.steps)
    if needs_prompts and not study.prompts:
        raise ConfigError(f"study file {path}: the {sorted(needs_prompts)[0]} step needs "
                          "[study] prompts = \"FILE.toml\"")
    if study.prompts:
        study.prompts = str((path.parent / study.prompts).resolve())
    for run in study.runs():
        study.run_config(run)  # every config error shows now, not after an hour of training
    return study


def _variant(raw, path: Path) -> Variant:
    import re

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


def _fields(cls, values: dict, table: str, skip=()) -> dict:
    import typing

    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    out = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown study key {table}.{key}{_suggest(key, names, table + '.')}")
        out[key] = coerce(value, hints[key], f"{table}.{key}")
    return out


# --- running -------------------------------------------------------------------------------------

class StudyRunner:
    def __init__(self, study: Study, out_dir: str | Path, *, device: str = "auto", log=print):
        self.study = study
        self.out = Path(out_dir)
        self.device = device
        self.log = log
        self.timings: dict[str, float] = {}

    def run(self) -> dict[str, float]:
        self._claim_folder()
        timings_file = self.out / "timings.json"
        if timings_file.is_file():
            self.timings = json.loads(timings_file.read_text(encoding="utf-8"))
        for step in STEPS:
            if step not in self.study.steps:
                continue
            if self._done(self.out / step if step != "train" else self.out / "runs"):
                self.log(f"[{step}] already complete")
                continue
            self.log(f"[{step}]")
            start = time.perf_counter()
            getattr(self, f"step_{step}")()
            self.timings[step] = round(self.timings.get(step, 0) + time.perf_counter() - start, 1)
            self._mark_done(self.out / step if step != "train" else self.out / "runs")
            atomic_write_json(timings_file, self.timings)
        self._write_readme()
        from lmscope.report.html import write_report

        write_report(self.out)
        return self.timings

    def _write_readme(self) -> None:
        """DIR/README.md: the study's tables in one page, with links to its figures."""
        study, out = self.study, self.out
        names = [self.corpus_dir(c).name for c in study.corpora]
        parts = [f"# Study: {study.name}\n\nCorpora: {', '.join(names)}; preset "
                 f"{study.preset or '(defaults)'}; steps: {', '.join(study.steps)}.\n"
                 f"Seconds per step: {json.dumps(self.timings)}.\n"]
        if (out / "stats" / "table.md").is_file():
            parts.append("\n## Corpora\n\n" + _body(out / "stats" / "table.md") +
                         "".join(f"\n![{n}](stats/chars_{n}.png)" for n in names) + "\n")
        runs = []
        for run in study.runs():
            summary = self.run_dir(run.name) / "summary.json"
            if summary.is_file():
                d = json.loads(summary.read_text(encoding="utf-8"))
                runs.append([run.name, d["model"], d["iterations"], d["params"],
                             d["val_loss"], d["val_bits_per_char"], round(d["elapsed_s"])])
        if runs:
            parts.append("\n## Training\n\nWhole-split validation loss of each final model "
                         "(nats and bits per character); samples at every checkpoint in "
                         "`runs/<corpus>/samples.md`.\n\n" + markdown_table(
                             ["run", "model", "iterations", "parameters", "val loss",
                              "bits/char", "seconds"], runs))
        for title, rel, figures in (
                ("Zero-shot cross-domain matrix", "matrix/matrix.md", ["matrix/matrix.png"]),
                ("Few-shot transfer", "transfer/summary.md",
                 [f"transfer/{self.corpus_dir(a).name}-to-{self.corpus_dir(b).name}/curves.png"
                  for a in study.corpora for b in study.corpora if a != b]),
                ("Run comparison", "compare/compare.md", ["compare/curves.png"]),
                ("Generation", "generate/summary.md", []),
                ("Means over seeds", "seeds/results.md",
                 [f"seeds/{kind}_{self.corpus_dir(c).name}.png" for c in study.corpora
                  for kind in ("train_loss", "val_loss", "attention_metrics",
                               "layer_similarity")]),
                ("Softmax confidence", "softmax/summary.md", ["softmax/summary.png"]),
                ("Gradient attribution", "attribution/by_class_models.md",
                 ["attribution/by_class_models.png"])):
            if (out / rel).is_file():
                parts.append(f"\n## {title}\n\n{_body(out / rel)}" +
                             "".join(f"\n![{f}]({f})\n" for f in figures if (out / f).is_file()))
        text, readme = "".join(parts), out / "README.md"
        if not readme.is_file() or readme.read_text(encoding="utf-8") != text:
            atomic_write_text(readme, text)

    def _claim_folder(self) -> None:
        """A new folder, or one holding this very study (to continue it); never someone else's."""
        settings = self.out / "study.json"
        if self.out.exists() and not self.out.is_dir():
            raise LmscopeError(f"--out {self.out} is a file, not a folder")
        if settings.is_file():
            if json.loads(settings.read_text(encoding="utf-8")) != self.study.to_dict():
                raise LmscopeError(f"{self.out} holds a study with other settings "
                                   f"({settings}); choose another --out")
        elif self.out.is_dir() and any(self.out.iterdir()):
            raise LmscopeError(f"{self.out} already holds files that are not a study; "
                               "choose another --out")
        else:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(settings, self.study.to_dict())

    @staticmethod
    def _done(folder: Path) -> bool:
        return (folder / ".done").is_file()

    @staticmethod
    def _mark_done(folder: Path) -> None:
        atomic_write_json(folder / ".done", {"finished": time.strftime("%Y-%m-%d %H:%M:%S")})

    def run_dir(self, name: str) -> Path:
        """The folder of the run named `name` (a RunSpec's name)."""
        return self.out / "runs" / name

    def corpus_dir(self, corpus: str) -> Path:
        """The run of `corpus` in a study with one run per corpus (named by `folder_name`)."""
        from lmscope.analysis.common import folder_name

        return self.run_dir(folder_name(corpus))

    # --- the steps ------------------------------------------------------------------------------
    def step_stats(self) -> None:
        from lmscope.analysis.corpus_stats import corpus_stats, write_stats

        write_stats([corpus_stats(c) for c in self.study.corpora], self.out / "stats")

    def step_train(self) -> None:
        import lmscope

        for run in self.study.runs():
            run_dir = self.run_dir(run.name)
            name = run.name
            if self._done(run_dir):
                self.log(f"  {name}: trained ({run_dir})")
                continue
            resume = (run_dir / "checkpoints" / "last" / "train_state.json").is_file()
            if run_dir.is_dir() and not resume:
                shutil.rmtree(run_dir)  # this study's own run, stopped before it saved anything
            self.log(f"  {name}: {'resuming' if resume else 'training'} {run_dir}")
            config = self.study.run_config(run)
            config.train.device = self.device if self.device != "auto" else config.train.device
            result = lmscope.train(config, run_dir, resume=resume, progress=False,
                                   log=lambda *a: None)
            self.log(f"  {name}: whole-split val loss {result.val_loss:.4f} after "
                     f"{result.iterations} iterations, {result.elapsed_s:.0f} s")
            self._mark_done(run_dir)

    def step_compare(self) -> None:
        from lmscope.analysis.compare import compare_runs

        runs = self.study.runs()
        compare_runs([self.run_dir(r.name) for r in runs], self.out / "compare",
                     names=[r.name for r in runs])

    def step_generate(self) -> None:
        """A nucleus-sampling table per run, and every run's greedy continuation side by side."""
        import lmscope
        from lmscope.analysis.sampling import top_p_sweep, write_sweep

        g = self.study.generate
        greedy_rows = []
        for run in self.study.runs():
            ckpt = lmscope.load(self.run_dir(run.name), device=self.device)
            rows = top_p_sweep(ckpt, g.prompt, g.top_p, greedy=g.greedy,
                               max_new_tokens=g.max_new_tokens, seed=g.seed)
            write_sweep(rows, g.prompt, self.out / "generate" / run.name, seed=g.seed,
                        temperature=1.0)
            greedy_rows.append([run.name, (g.prompt + rows[0][1]).replace("\n", " ⏎ ")])
        write_csv(self.out / "generate" / "summary.csv", ["run", "generated"], greedy_rows)
        atomic_write_text(self.out / "generate" / "summary.md",
                          f"# Generation, every run\n\nPrompt {g.prompt!r}, "
                          f"{'greedy' if g.greedy else f'top-p {g.top_p[0]:g}'}; one table per "
                          "run with every top-p setting in generate/<run>/.\n\n"
                          + markdown_table(["run", "generated"], greedy_rows))

    def step_attention(self) -> None:
        """Attention maps of the prompt for every run whose model has attention."""
        import lmscope
        from lmscope.analysis.attention import attention_probe

        a = self.study.attention
        for run in self.study.runs():
            ckpt = lmscope.load(self.run_dir(run.name), device=self.device)
            if not hasattr(ckpt.model, "forward_with_attention"):
                self.log(f"  {run.name}: {ckpt.model_name} has no attention, skipped")
                continue
            attention_probe(self.run_dir(run.name), a.prompt, self.out / "attention" / run.name,
                            layer=a.layer, heads=a.heads or None, which="all",
                            device=self.device)

    def step_generation(self) -> None:
        """Generation quality, speed and generation-time attention of every run, per checkpoint
        (analysis/generation.py)."""
        from lmscope.analysis.generation import generation_probe, write_generation

        g = self.study.generation
        for run in self.study.runs():
            folder = self.out / "generation" / run.name
            if self._done(folder):
                continue
            result = generation_probe(self.run_dir(run.name), num_samples=g.num_samples,
                                      prompt=g.prompt, max_new_tokens=g.max_new_tokens,
                                      temperature=g.temperature, which=g.checkpoints,
                                      device=self.device,
                                      log=lambda m, name=run.name: self.log(f"  {name} {m}"))
            write_generation(result, folder, title=f"of {run.name}")
            self._mark_done(folder)

    def step_seeds(self) -> None:
        """Means over seeds with standard errors, and their plots (analysis/seeds.py)."""
        from lmscope.analysis.common import folder_name
        from lmscope.analysis.seeds import aggregate_seeds

        groups: dict[str, dict[str, list[Path]]] = {}
        for run in self.study.runs():
            variant = run.variant.name if run.variant else self.study.name
            groups.setdefault(folder_name(run.corpus), {}).setdefault(variant, []).append(
                self.run_dir(run.name))
        generation = self.out / "generation"
        aggregate_seeds(groups, self.out / "seeds",
                        generation_dir=generation if generation.is_dir() else None)

    def step_matrix(self) -> None:
        from lmscope.analysis.cross_domain import cross_domain_matrix, write_matrix

        matrix = cross_domain_matrix([self.corpus_dir(c) for c in self.study.corpora],
                                     self.study.corpora, device=self.device,
                                     log=lambda m: self.log(f"  {m}"))
        write_matrix(matrix, self.out / "matrix")

    def step_transfer(self) -> None:
        from lmscope.analysis.common import corpus_label
        from lmscope.analysis.transfer import transfer

        ts = self.study.transfer
        header = ["source", "target", "start", "start_iter", "target_before", "target_after",
                  "target_gain", "source_before", "source_after", "forgetting"]
        rows = []
        for source in self.study.corpora:
            for target in self.study.corpora:
                if target == source:
                    continue
                pair = f"{self.corpus_dir(source).name}-to-{self.corpus_dir(target).name}"
                folder = self.out / "transfer" / pair
                self.log(f"  {folder.name}")
                if not self._done(folder):
                    transfer(self.corpus_dir(source), target, folder, checkpoints=ts.checkpoints,
                             iters=ts.iters, eval_every=ts.eval_every, eval_iters=ts.eval_iters,
                             device=self.device, log=lambda m: self.log(f"    {m}"))
                    self._mark_done(folder)
                numbers = header[4:]
                rows += [[corpus_label(source), corpus_label(target), r["start"],
                          int(r["start_iter"]), *(float(r[k]) for k in numbers)]
                         for r in _read_csv(folder / "summary.csv")]
        write_csv(self.out / "transfer" / "summary.csv", header, rows)
        atomic_write_text(self.out / "transfer" / "summary.md",
                          f"# Few-shot transfer, every pair, {ts.iters} steps\n\n"
                          "Losses in nats per character (estimates on fixed validation batches); "
                          "gain = before - after on the target, forgetting = after - before on "
                          "the source.\n\n" + markdown_table(header, rows) + "\n" +
                          _transfer_answer(rows))

    def step_softmax(self) -> None:
        from lmscope.analysis.softmax import softmax_probe

        for corpus in self.study.corpora:
            softmax_probe(self.corpus_dir(corpus), self.study.prompts,
                          self.out / "softmax" / self.corpus_dir(corpus).name,
                          top_k=self.study.softmax.top_k, device=self.device)
        self._softmax_across_models()

    def _softmax_across_models(self) -> None:
        """softmax/summary.csv/.md/.png: mean entropy and p(expected), in- vs out-of-domain,
        per model and iteration."""
        from lmscope.report import plots

        rows = []
        for corpus in self.study.corpora:
            name = self.corpus_dir(corpus).name
            table = _read_csv(self.out / "softmax" / name / "softmax.csv")
            for it in sorted({int(r["iteration"]) for r in table}):
                for domain in ("in-domain", "out-of-domain"):
                    sel = [r for r in table if int(r["iteration"]) == it and r["domain"] == domain]
                    if sel:
                        rows.append([name, it, domain, _mean(r["entropy_bits"] for r in sel),
                                     _mean(r["p_expected"] for r in sel)])
        header = ["model", "iteration", "domain", "entropy_bits", "p_expected"]
        write_csv(self.out / "softmax" / "summary.csv", header, rows)
        last = {}
        for r in rows:
            last[r[0]] = max(last.get(r[0], 0), r[1])
        atomic_write_text(self.out / "softmax" / "summary.md",
                          "# Softmax confidence across models\n\nMeans over prompts at the final "
                          "checkpoint (the full curves are in summary.csv).\n\n" + markdown_table(
                              header, [r for r in rows if r[1] == last[r[0]]]))
        fig, axes = plots.panels(2, title="Next-character confidence: in-domain (solid) vs "
                                           "out-of-domain (dashed) prompts")
        for i, name in enumerate(last):
            for domain, style in (("in-domain", "-"), ("out-of-domain", "--")):
                pts = [(r[1], r[3], r[4]) for r in rows if r[0] == name and r[2] == domain]
                if pts:
                    its, ent, pexp = zip(*pts, strict=True)
                    axes[0].plot(its, ent, style, color=f"C{i}", marker=".",
                                 label=f"{name} model, {domain}")
                    axes[1].plot(its, pexp, style, color=f"C{i}", marker=".")
        for ax, label in zip(axes, ("entropy (bits)", "p(expected next character)"), strict=True):
            ax.set_xscale("symlog", linthresh=100, linscale=0.5)
            ax.set_xlabel("training iteration")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        plots.save(fig, self.out / "softmax" / "summary.png")

    def step_attribution(self) -> None:
        from lmscope.analysis.attribution import attribution_probe

        a = self.study.attribution
        for corpus in self.study.corpora:
            attribution_probe(self.corpus_dir(corpus), self.study.prompts,
                              self.out / "attribution" / self.corpus_dir(corpus).name,
                              methods=tuple(a.methods), baseline=a.baseline, steps=a.steps,
                              device="cpu" if self.device == "auto" else self.device)
        self._attribution_across_models()

    def _attribution_across_models(self) -> None:
        """attribution/by_class_models.csv/.md/.png: each model's final-checkpoint importance
        of each character class (mean |normalized score|, over prompts), per method."""
        from lmscope.analysis.common import CHAR_CLASSES
        from lmscope.report import plots

        rows = []
        for corpus in self.study.corpora:
            name = self.corpus_dir(corpus).name
            table = _read_csv(self.out / "attribution" / name / "by_class.csv")
            final = max(int(r["iteration"]) for r in table)
            rows += [[name, r["method"], r["char_class"], float(r["mean_abs_normalized"])]
                     for r in table if int(r["iteration"]) == final]
        header = ["model", "method", "char_class", "mean_abs_normalized"]
        write_csv(self.out / "attribution" / "by_class_models.csv", header, rows)
        models = [self.corpus_dir(c).name for c in self.study.corpora]
        methods = list(dict.fromkeys(r[1] for r in rows))
        value = {(r[0], r[1], r[2]): r[3] for r in rows}
        md = ["# Attribution by character class, final checkpoints\n\nMean |normalized score| "
              "of a prompt's characters of each class, averaged over prompts.\n"]
        for method in methods:
            md.append(f"\n## {method}\n\n" + markdown_table(
                ["class", *models],
                [[c, *(value.get((m, method, c), "") for m in models)] for c in CHAR_CLASSES]))
        atomic_write_text(self.out / "attribution" / "by_class_models.md", "".join(md))
        fig, axes = plots.panels(len(methods), title="Importance by character class, per model "
                                                     "(final checkpoints)", width=5.5)
        width = 0.8 / len(models)
        for ax, method in zip(axes, methods, strict=True):
            for i, model in enumerate(models):
                ax.bar([k + i * width for k in range(len(CHAR_CLASSES))],
                       [value.get((model, method, c), 0) for c in CHAR_CLASSES], width,
                       label=f"{model} model")
            ax.set_xticks([k + 0.4 - width / 2 for k in range(len(CHAR_CLASSES))],
                          CHAR_CLASSES, rotation=30, ha="right")
            ax.set_title(method)
            ax.set_ylabel("mean |normalized score|")
        axes[0].legend(fontsize=8)
        plots.save(fig, self.out / "attribution" / "by_class_models.png")


def _transfer_answer(rows: list[list]) -> str:
    """'Does partial training make adaptation easier?', answered from the table: for each
    starting checkpoint, in how many pairs it ends lowest, gains most and forgets least."""
    pairs: dict[tuple, list] = {}
    for row in rows:
        pairs.setdefault((row[0], row[1]), []).append(row)
    starts = list(dict.fromkeys(row[2] for row in rows))
    wins = {start: [0, 0, 0] for start in starts}
    for group in pairs.values():
        wins[min(group, key=lambda r: r[5])[2]][0] += 1
        wins[max(group, key=lambda r: r[6])[2]][1] += 1
        wins[min(group, key=lambda r: r[9])[2]][2] += 1
    table = [[start, f"{w[0]} of {len(pairs)}", f"{w[1]} of {len(pairs)}",
              f"{w[2]} of {len(pairs)}", _mean(r[5] for r in rows if r[2] == start),
              _mean(r[6] for r in rows if r[2] == start), _mean(r[9] for r in rows if r[2] == start)]
             for start, w in wins.items()]
    return ("\n## Does partial training make adaptation easier?\n\nFor each starting checkpoint: "
            "in how many source-target pairs it reaches the lowest target loss, the largest gain "
            "and the least forgetting, and its means over pairs.\n\n" + markdown_table(
                ["start", "lowest target loss", "largest gain", "least forgetting",
                 "mean target after", "mean gain", "mean forgetting"], table))


def _body(markdown_file: Path) -> str:
    """A Markdown file without its first heading, its sub-headings one level down."""
    lines = markdown_file.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    return "\n".join("#" + line if line.startswith("## ") else line for line in lines).strip() + "\n"


def _read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _mean(values) -> float:
    numbers = [float(v) for v in values if v not in ("", "nan")]
    return sum(numbers) / len(numbers) if numbers else float("nan")


def run_study(path: str | Path, out_dir: str | Path, *, quick: bool = False,
              seeds: list[int] | None = None, device: str = "auto",
              log=print) -> dict[str, float]:
    """Run (or continue) the study in `path`, writing into `out_dir`; returns seconds per step."""
    return StudyRunner(load_study(path, quick=quick, seeds=seeds), out_dir, device=device,
                       log=log).run()
