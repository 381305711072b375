"""Softmax inspection: how confident is the next-character prediction, checkpoint by checkpoint?

For each prompt and each checkpoint of a run (early to final) the model's distribution over the
next token after the prompt gives:

    entropy        H = -sum_i p_i log2 p_i, in bits (0: certain; log2(vocab): uniform)
    max_prob       the probability of the most likely token, and that token
    top-k          the k most likely tokens with their probabilities
    p_expected     the probability of the expected next character (when the prompt file gives one)
                   and its rank (1 = the model's first choice)

Prompts are in-domain or out-of-domain for the run (the prompt file says, by corpus name or
"in"/"out"), and the plots show the two side by side.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lmscope.analysis.common import (
    check_prompt_fits,
    expected_id,
    load_prompts,
    markdown_table,
    run_checkpoints,
    trained_on,
    visible,
    write_csv,
)
from lmscope.errors import LmscopeError
from lmscope.io import atomic_write_text
from lmscope.report import plots

DOMAINS = ("in-domain", "out-of-domain")


@torch.no_grad()
def next_token_distribution(checkpoint, ids: list[int]) -> torch.Tensor:
    """Probabilities (vocab,) of the token after `ids`, in float64."""
    model = checkpoint.model
    device = next(model.parameters()).device
    logits = model(torch.tensor([ids], device=device))[0, -1]
    return torch.softmax(logits.double(), dim=-1).cpu()


def softmax_probe(run, prompts_path, out_dir, *, top_k: int = 5, which: str = "all",
                  device: str = "auto") -> dict:
    """Write softmax.csv, topk.csv, entropy.png, expected_prob.png and summary.md into out_dir."""
    import lmscope

    if top_k < 1:
        raise LmscopeError(f"--top-k must be at least 1, got {top_k}")
    prompts = load_prompts(prompts_path)
    paths = run_checkpoints(run, which)
    first = lmscope.load(paths[0], device=device)
    corpus = trained_on(first)
    encoded = {}
    for p in prompts:  # every prompt is checked before any work
        encoded[p.name] = (check_prompt_fits(p, first.tokenizer, first.model.context_length),
                           expected_id(p, first.tokenizer))
    rows, topk_rows = [], []
    for i, path in enumerate(paths):
        ckpt = first if i == 0 else lmscope.load(path, device=device)
        tok = ckpt.tokenizer
        for p in prompts:
            ids, want = encoded[p.name]
            probs = next_token_distribution(ckpt, ids)
            entropy = float(-(probs * torch.log2(probs.clamp_min(1e-300))).sum())
            top_p, top_i = probs.topk(min(top_k, probs.numel()))
            top = [(visible(tok.token_text(int(t))), float(q))
                   for t, q in zip(top_i, top_p, strict=True)]
            p_expected = float(probs[want]) if want is not None else math.nan
            rank = int((probs > probs[want]).sum()) + 1 if want is not None else ""
            rows.append([p.name, p.domain_of(corpus), ckpt.name, ckpt.iteration, entropy,
                         top[0][0], top[0][1], visible(p.expected) if p.expected else "",
                         p_expected, rank, "; ".join(f"{c} {q:.3f}" for c, q in top)])
            topk_rows += [[p.name, ckpt.name, ckpt.iteration, r + 1, c, q]
                          for r, (c, q) in enumerate(top)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = ["prompt", "domain", "checkpoint", "iteration", "entropy_bits", "predicted",
              "max_prob", "expected", "p_expected", "expected_rank", "top_k"]
    files = {"softmax_csv": write_csv(out / "softmax.csv", header, rows),
             "topk_csv": write_csv(out / "topk.csv", ["prompt", "checkpoint", "iteration", "rank",
                                                      "token", "prob"], topk_rows)}
    title = f"{Path(run).name} (trained on {corpus or '?'})"
    files["entropy_png"] = _plot(rows, 4, out / "entropy.png", f"Next-character entropy: {title}",
                                 "entropy (bits)")
    if any(p.expected for p in prompts):
        files["expected_png"] = _plot(rows, 8, out / "expected_prob.png",
                                      f"Probability of the expected character: {title}",
                                      "p(expected)")
    files["summary_md"] = _summary(rows, out / "summary.md", title)
    return {k: str(v) for k, v in files.items()}


def _plot(rows, column: int, path: Path, title: str, ylabel: str) -> Path:
    """One panel per domain (in / out), one line per prompt over iterations, plus their mean."""
    domains = [d for d in (*DOMAINS, "unknown") if any(r[1] == d for r in rows)]
    fig, axes = plots.panels(len(domains), title=title)
    for ax, domain in zip(axes, domains, strict=True):
        by_prompt: dict[str, list] = {}
        for r in rows:
            if r[1] == domain and not (isinstance(r[column], float) and math.isnan(r[column])):
                by_prompt.setdefault(r[0], []).append((r[3], r[column]))
        for name, points in by_prompt.items():
            ax.plot(*zip(*points, strict=True), marker=".", alpha=0.6, label=name)
        if len(by_prompt) > 1:
            iters = sorted({x for pts in by_prompt.values() for x, _ in pts})
            mean = [sum(y for pts in by_prompt.values() for x, y in pts if x == it) /
                    sum(1 for pts in by_prompt.values() for x, _ in pts if x == it) for it in iters]
            ax.plot(iters, mean, "k-", linewidth=2.5, label="mean")
        iters = sorted({r[3] for r in rows})
        positive = [i for i in iters if i > 0]
        if positive and iters[-1] > 20 * positive[0]:  # spans decades: log scale past the first
            ax.set_xscale("symlog", linthresh=positive[0], linscale=0.5)
        if len(iters) <= 10:
            ax.set_xticks(iters, [str(i) for i in iters], rotation=45 if len(iters) > 6 else 0)
        ax.set_xlabel("training iteration")
        ax.set_ylabel(ylabel)
        ax.set_title(domain)
        ax.grid(alpha=0.3)
        if by_prompt:
            ax.legend(fontsize=7)
    return plots.save(fig, path)


def _summary(rows, path: Path, title: str) -> Path:
    iters = sorted({r[3] for r in rows})
    table = []
    for it in (iters[0], iters[-1]) if len(iters) > 1 else iters:
        for domain in DOMAINS:
            sel = [r for r in rows if r[3] == it and r[1] == domain]
            if not sel:
                continue
            with_expected = [r[8] for r in sel if not math.isnan(r[8])]
            table.append([it, domain, len(sel), sum(r[4] for r in sel) / len(sel),
                          sum(r[6] for r in sel) / len(sel),
                          sum(with_expected) / len(with_expected) if with_expected else "",
                          sum(1 for r in sel if r[9] == 1) if with_expected else ""])
    text = (f"# Softmax confidence: {title}\n\nMeans over prompts at the first and the last "
            "checkpoint.\n\n" + markdown_table(
                ["iteration", "domain", "prompts", "entropy (bits)", "max prob", "p(expected)",
                 "expected ranked first"], table))
    atomic_write_text(path, text)
    return path
