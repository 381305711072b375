"""Few-shot transfer: fine-tune copies of a model, from several of its checkpoints, on a new corpus.

For each starting checkpoint (early, mid, late, or given iterations) a short training run on the
target corpus starts from its weights and tokenizer (`train.init_from`). Every `eval_every` steps
it estimates two validation losses on fixed batches (the same batches at every point):

    target loss   how far the model has adapted to the new corpus
    source loss   how much of its original corpus it has forgotten

The summary answers "does partial training make adaptation easier?" with numbers: the target
loss each start reaches after the same number of steps, how much it dropped, and what the
source loss rose by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from lmscope.analysis.common import markdown_table, run_checkpoints, trained_on, write_csv
from lmscope.data import corpora
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.report import plots
from lmscope.train.checkpoint import read_meta

NAMED = ("early", "mid", "late")


def pick_checkpoints(run, spec: str) -> dict[str, Path]:
    """Checkpoints by name: "early,mid,late" and/or iterations ("500,2000") and/or "final".

    early is the first kept checkpoint after iteration 0 (iteration 0 is the untrained model;
    ask for it as "0"), late is the final one, mid the one nearest to half of late's iteration.
    """
    found = run_checkpoints(run)
    iters = {p: int(read_meta(p).get("iter", 0)) for p in found}
    late = found[-1]
    trained = [p for p in found if iters[p] > 0] or found
    picked: dict[str, Path] = {}
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise LmscopeError("--checkpoints is empty: give early,mid,late or iterations like 500,2000")
    for item in items:
        if item == "early":
            picked[item] = trained[0]
        elif item == "late" or item == "final":
            picked[item] = late
        elif item == "mid":
            half = iters[late] / 2
            picked[item] = min(trained, key=lambda p: (abs(iters[p] - half), iters[p]))
        elif item.isdigit():
            match = [p for p in found if iters[p] == int(item)]
            if not match:
                have = ", ".join(str(iters[p]) for p in found)
                raise LmscopeError(f"{run} has no checkpoint at iteration {item}; it has {have}")
            picked[f"iter {item}"] = match[0]
        else:
            raise LmscopeError(f"unknown checkpoint {item!r}: use early, mid, late, final or an "
                               "iteration number")
    merged: dict[Path, list[str]] = {}  # one fine-tuning per checkpoint, under all its names
    for name, path in picked.items():
        merged.setdefault(path, []).append(name)
    return {"=".join(names): path for path, names in merged.items()}


@dataclass
class TransferRun:
    start: str  # early / mid / late / iter N
    checkpoint: Path
    start_iter: int
    run_dir: Path
    curve: list[dict]  # {"step", "target_loss", "source_loss"} at every evaluation


def transfer(run, target: str, out_dir, *, checkpoints: str = "early,mid,late", iters: int = 200,
             eval_every: int = 20, eval_iters: int = 20, overrides=(), sample_prompt: str = "\n",
             sample_tokens: int = 200, seed: int = 1337, device: str = "auto",
             log=print) -> list[TransferRun]:
    """Fine-tune from each picked checkpoint of `run` on `target`; write curves, samples, summary.

    `overrides` are more `train.KEY=VALUE` settings for the fine-tuning runs (batch size, lr, ...);
    by default they train with the source run's own [train] settings.
    A fine-tuning run that finished is reused; one that was stopped is resumed.
    """
    import lmscope
    from lmscope.config import resolve_config

    if iters < 1 or eval_every < 1 or eval_iters < 1:
        raise LmscopeError("--iters, --eval-every and --eval-iters must be at least 1")
    for item in overrides:
        if not item.startswith("train."):
            raise LmscopeError(f"transfer settings are train.KEY=VALUE (the model and data come "
                               f"from the checkpoint and --data), got {item!r}")
    picked = pick_checkpoints(run, checkpoints)
    corpora.resolve(target)  # an unknown target is an error before anything is written
    first = lmscope.load(next(iter(picked.values())), device="cpu")
    source = trained_on(first)
    source_corpus = first.meta.get("run_config", {}).get("data", {}).get("corpus", source)
    if not source:
        raise LmscopeError(f"{run}: its checkpoints do not say which corpus they were trained on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, ckpt_path in picked.items():
        run_dir = out / "runs" / name.replace(" ", "_").replace("=", "+")
        base = dict(first.meta["run_config"])
        base = {"train": dict(base.get("train", {})), "data": dict(base.get("data", {}))}
        base["train"].update(
            init_from=str(ckpt_path.resolve()), max_iters=iters, eval_interval=eval_every,
            eval_iters=eval_iters, lr_decay_iters=0, warmup_iters=min(iters // 10, 100),
            checkpoint_at=[], checkpoint_every=0, sample_tokens=0, seed=seed, device=device,
            final_eval=False,
            eval_corpora=[source_corpus], log_interval=max(1, min(eval_every, 10)))
        base["data"].update(corpus=target, vocab_from=[])
        config = resolve_config(base=base, overrides=list(overrides))
        if (run_dir / "summary.json").is_file():
            log(f"{name}: fine-tuning already done ({run_dir})")
        else:
            resume = (run_dir / "checkpoints" / "last" / "train_state.json").is_file()
            if run_dir.is_dir() and not resume and any(run_dir.iterdir()):
                raise LmscopeError(f"{run_dir} holds an unfinished fine-tuning run that cannot "
                                   "be resumed; remove it and run again")
            log(f"{name}: fine-tuning from {ckpt_path} on {target} for {iters} steps")
            lmscope.train(config, run_dir, resume=resume, progress=False, log=lambda *a: None)
        curve = []
        for row in lmscope.read_metrics(run_dir):
            if row.get("kind") == "eval":
                curve.append({"step": row["iter"], "target_loss": row["val_loss"],
                              "source_loss": row.get(f"val_loss:{source}", math.nan)})
        results.append(TransferRun(name, ckpt_path, int(read_meta(ckpt_path).get("iter", 0)),
                                   run_dir, curve))
    _write(results, out, source=source, target=target, prompt=sample_prompt,
           sample_tokens=sample_tokens, seed=seed)
    return results


def _write(results: list[TransferRun], out: Path, *, source: str, target: str, prompt: str,
           sample_tokens: int, seed: int) -> None:
    import lmscope

    target_name = _corpus_name(results[0].run_dir) or target
    write_csv(out / "curves.csv", ["start", "start_iter", "step", "target_loss", "source_loss"],
              [[r.start, r.start_iter, c["step"], c["target_loss"], c["source_loss"]]
               for r in results for c in r.curve])
    fig, (ax_t, ax_s) = plots.panels(2, title=f"Fine-tuning {source} models on {target_name}")
    for r in results:
        steps = [c["step"] for c in r.curve]
        label = f"{r.start} (iter {r.start_iter})"
        ax_t.plot(steps, [c["target_loss"] for c in r.curve], marker=".", label=label)
        ax_s.plot(steps, [c["source_loss"] for c in r.curve], marker=".", label=label)
    for ax, what in ((ax_t, f"{target_name} (target) val loss"),
                     (ax_s, f"{source} (source) val loss: forgetting")):
        ax.set_xlabel("fine-tuning step")
        ax.set_ylabel("nats/char (estimate)")
        ax.set_title(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    plots.save(fig, out / "curves.png")

    header = ["start", "start_iter", "target_before", "target_after", "target_gain",
              "source_before", "source_after", "forgetting"]
    rows = []
    for r in results:
        a, b = r.curve[0], r.curve[-1]
        rows.append([r.start, r.start_iter, a["target_loss"], b["target_loss"],
                     a["target_loss"] - b["target_loss"], a["source_loss"], b["source_loss"],
                     b["source_loss"] - a["source_loss"]])
    write_csv(out / "summary.csv", header, rows)
    steps = results[0].curve[-1]["step"]
    best = min(rows, key=lambda row: row[3])
    most = max(rows, key=lambda row: row[4])
    least_forgot = min(rows, key=lambda row: row[7])
    text = [f"# Few-shot transfer: {source} -> {target_name}, {steps} steps\n\n",
            "Losses in nats per character, estimated on the same fixed validation batches at "
            "every point (before = step 0, after = the last step).\n\n",
            markdown_table(header, rows),
            f"\nDoes partial training make adaptation easier? After {steps} steps the lowest "
            f"{target_name} loss ({best[3]:.4f}) comes from the **{best[0]}** checkpoint "
            f"(iteration {best[1]}); the largest drop ({most[4]:.4f}) from **{most[0]}** "
            f"(iteration {most[1]}); the least forgetting of {source} ({least_forgot[7]:+.4f}) "
            f"from **{least_forgot[0]}**.\n"]
    atomic_write_text(out / "summary.md", "".join(text))

    samples = [f"# Samples before and after fine-tuning on {target_name}\n\n"
               f"Prompt {prompt!r}, temperature 0.8, seed {seed}.\n"]
    for r in results:
        before = lmscope.load(r.checkpoint, device="cpu")
        after = lmscope.load(r.run_dir / "checkpoints" / "final", device="cpu")
        for when, ckpt in (("before", before), ("after", after)):
            text = _sample(ckpt, prompt, sample_tokens, seed)
            samples.append(f"\n## {r.start} (iteration {r.start_iter}), {when}\n\n```text\n"
                           f"{text}\n```\n")
    atomic_write_text(out / "samples.md", "".join(samples))


def _sample(ckpt, prompt: str, tokens: int, seed: int) -> str:
    import lmscope

    try:
        ckpt.tokenizer.encode(prompt, unknown="error")
    except LmscopeError:  # characters the model does not know: start from a newline instead
        prompt = "\n"
    return prompt + lmscope.generate(ckpt, prompt, max_new_tokens=tokens, temperature=0.8,
                                     seed=seed)


def _corpus_name(run_dir: Path) -> str:
    return read_meta(run_dir / "checkpoints" / "final").get("corpus", "")
