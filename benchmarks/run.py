"""lmscope benchmarks: prints one JSON object.

    python benchmarks/run.py            # full: 5 repeats of each measurement
    python benchmarks/run.py --quick    # 2 repeats, shorter runs (a smoke test)

Figures (medians over repeats; the machine may be shared, so compare runs made side by side):
- matmul_gflops: float32 square matmul throughput, the machine's practical peak.
- train: tokens/s of the training step (forward, backward, clip, AdamW) of the shakespeare-char-cpu
  model (0.80M parameters, batch 12 x block 64), and model FLOPs utilisation against that peak.
- eval: tokens/s of whole-split evaluation (no grad, batched non-overlapping windows).
- sample: tokens/s generating 500 tokens at batch size 1 from the baby GPT (6 layers, 384 wide,
  block 256), with the KV cache and by recomputing the whole context for every token (nanoGPT's
  way), their ratio, batched sampling of 16 prompts with the cache, and batch-1 sampling from
  bfloat16 and int8 copies of the model (`lmscope sample --precision`). Beside int8: the bytes
  one decoding step must read (int8 weights, bfloat16 keys and values of the mean context), the
  machine's read bandwidth (a sum over 1 GB, all threads; and over 16 MB, which the caches
  hold), the tokens/s that bandwidth would allow, and the fraction of it int8 sampling reaches.
- peak_rss_mb: the process's peak resident memory after each phase (and peak_cuda_mb on a GPU).
- memory (not with --quick): peak resident memory of `lmscope train` on a generated 100 MB
  corpus against the same run on the 1 MB shakespeare corpus: the token file is memory-mapped.
- nanogpt (with --nanogpt DIR, a checkout of karpathy/nanoGPT): its documented CPU recipe run
  side by side with lmscope's step on the same model and batch, alternating, 3 rounds each;
  median ms per iteration of each and their ratio. DIR/data/shakespeare_char is prepared from
  the shakespeare corpus when it is not there yet. With --compile, lmscope's torch.compiled
  step is timed too (after its one-off compilation, about 30 s on 2 CPU cores). Then
  `short_run`: the whole commands for 300 iterations, nanoGPT's `train.py`, `lmscope train
  --preset shakespeare-char-cpu`, and the same doing only nanoGPT's work (NANOGPT_WORK: no
  whole-split loss, samples, early checkpoints or tracking), alternating, with the median wall
  seconds of each, their ratios and where lmscope's seconds went (summary.json's phase_seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from lmscope.config import resolve_config
from lmscope.device import pick_device
from lmscope.generate import SamplingConfig, generate_ids
from lmscope.metrics.losses import token_nll
from lmscope.models.gpt import GPT, GPTConfig
from lmscope.models.quantize import for_sampling
from lmscope.train.trainer import Trainer


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux


def sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, repeats: int, warmup: int = 1, device: torch.device | None = None) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_gflops(repeats: int, device: torch.device) -> float:
    """float32 matmul throughput (TF32 off): 1024^2 on the CPU, 8192^2 on a GPU."""
    n = 8192 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = median_time(lambda: [a @ b for _ in range(10)], repeats, device=device)
    return 10 * 2 * n**3 / seconds / 1e9


def flops_per_token(model: GPT) -> float:
    """Training FLOPs per token: 6 per parameter (forward + backward) plus attention scores (PaLM appendix B)."""
    c = model.config
    return 6 * model.num_params() + 12 * c.n_layer * c.n_embd * c.block_size


@contextmanager
def cpu_recipe_trainer(corpus: str, device: torch.device, compile: bool = False):
    """A set-up Trainer for the shakespeare-char-cpu model and batch (nanoGPT's CPU recipe)."""
    config = resolve_config(preset="shakespeare-char-cpu", data=corpus,
                            overrides=[f"train.device={device}", "train.dtype=float32",
                                       f"train.compile={str(compile).lower()}"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp) / "run", progress=False, log=lambda *a: None)
        trainer.setup()
        yield trainer


def bench_train(corpus: str, repeats: int, steps: int, peak: float, device: torch.device) -> dict:
    with cpu_recipe_trainer(corpus, device) as trainer:
        config = trainer.config
        tokens_per_step = config.train.batch_size * config.model.block_size
        seconds = median_time(lambda: [trainer.step(1e-3) for _ in range(steps)], repeats,
                              device=device) / steps
        tps = tokens_per_step / seconds
        model = trainer.raw_model
        eval_tokens = trainer.val_tokens[0].tokens  # one corpus: the first (and only) part
        eval_seconds = median_time(
            lambda: token_nll(model, eval_tokens, block_size=config.model.block_size,
                              batch_size=64), max(1, repeats // 2), device=device)
    return {
        "model_params": model.num_params(),
        "batch": [config.train.batch_size, config.model.block_size],
        "step_ms": round(seconds * 1000, 2),
        "tokens_per_s": round(tps),
        "mfu": round(tps * flops_per_token(model) / (peak * 1e9), 3),
        "eval_tokens_per_s": round(len(eval_tokens) / eval_seconds),
        "eval_vs_train_ratio": round(len(eval_tokens) / eval_seconds / tps, 2),
    }


def our_step_ms(corpus: str, steps: int, device: torch.device, compile: bool = False) -> float:
    """Median milliseconds of lmscope's training step, shakespeare-char-cpu model and batch."""
    with cpu_recipe_trainer(corpus, device, compile) as trainer:
        return median_time(lambda: trainer.step(1e-3), steps, warmup=10, device=device) * 1000


NANOGPT_CPU_RECIPE = [  # nanoGPT README: "train a baby GPT on a macbook / cheap computer"
    "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
    "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
    "--n_embd=128", "--lr_decay_iters=2000", "--dropout=0.0",
]


def prepare_nanogpt_data(nanogpt: Path) -> None:
    """nanoGPT's DIR/data/shakespeare_char prepared from the shakespeare corpus, once."""
    data = nanogpt / "data" / "shakespeare_char"
    if not (data / "train.bin").is_file():
        from lmscope.data.corpora import resolve

        shutil.copy(resolve("shakespeare").files[0], data / "input.txt")
        subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True,
                       capture_output=True)


def nanogpt_step_ms(nanogpt: Path, iters: int) -> float:
    """Median milliseconds per iteration nanoGPT prints for its CPU recipe (first 10 skipped)."""
    prepare_nanogpt_data(nanogpt)
    with tempfile.TemporaryDirectory() as out:
        r = subprocess.run([sys.executable, "train.py", *NANOGPT_CPU_RECIPE,
                            f"--max_iters={iters}", "--eval_interval=100000", f"--out_dir={out}"],
                           cwd=nanogpt, capture_output=True, text=True, check=True)
    times = [float(m) for m in re.findall(r"^iter \d+: .*time ([0-9.]+)ms", r.stdout, re.M)]
    return statistics.median(times[10:])


def bench_nanogpt(nanogpt: Path, corpus: str, rounds: int, device: torch.device,
                  compile: bool) -> dict:
    """nanoGPT's recipe (no compile, as documented) and lmscope's step, alternating rounds;
    with `compile`, lmscope's torch.compiled step too (its compile time is not counted)."""
    times: dict[str, list[float]] = {"nanogpt": [], "lmscope": []}
    if compile:
        times["lmscope_compiled"] = []
    for _ in range(rounds):  # alternate, so all see the same machine load
        times["nanogpt"].append(round(nanogpt_step_ms(nanogpt, iters=150), 2))
        times["lmscope"].append(round(our_step_ms(corpus, steps=140, device=device), 2))
        if compile:
            times["lmscope_compiled"].append(
                round(our_step_ms(corpus, steps=140, device=device, compile=True), 2))
    out = {}
    for name, ts in times.items():
        out[f"{name}_step_ms"] = round(statistics.median(ts), 2)
        out[f"{name}_tokens_per_s"] = round(12 * 64 / statistics.median(ts) * 1000)
    for name in times:
        if name != "nanogpt":
            out[f"{name}_speedup"] = round(out["nanogpt_step_ms"] / out[f"{name}_step_ms"], 3)
    out["rounds"] = times
    return out


# What nanoGPT's train.py does not do and `lmscope train` does by default: the whole-split
# validation loss at the end, checkpoints with samples at iterations 100 and 200 (and a sample at
# the end), attention and dynamics tracking. Without them, a run does nanoGPT's work (its
# estimates, checkpoints of the best and last weights, the loss plot).
NANOGPT_WORK = ["train.final_eval=false", "train.sample_tokens=0", "train.checkpoint_at=[]",
                "track.attention_every=0"]


def bench_short_run(nanogpt: Path, corpus: str, rounds: int, iters: int = 300) -> dict:
    """Whole commands, alternating: nanoGPT's `train.py` of its CPU recipe for `iters`
    iterations, `lmscope train --preset shakespeare-char-cpu` (the same model, batch and
    evaluation batches) for as many, and the same with NANOGPT_WORK; median wall seconds of each,
    their ratios to nanoGPT's, and where lmscope's seconds went (summary.json's phase_seconds,
    of the median round of each)."""
    prepare_nanogpt_data(nanogpt)
    commands = {"lmscope": [], "lmscope_nanogpt_work": ["--set", *NANOGPT_WORK]}
    walls: dict[str, list[float]] = {"nanogpt": [], **{name: [] for name in commands}}
    phases: dict[str, list[dict]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            start = time.perf_counter()
            subprocess.run([sys.executable, "train.py", *NANOGPT_CPU_RECIPE,
                            f"--max_iters={iters}", f"--out_dir={tmp}/ng{r}"], cwd=nanogpt,
                           check=True, capture_output=True)
            walls["nanogpt"].append(round(time.perf_counter() - start, 2))
            for name, extra in commands.items():
                out = f"{tmp}/{name}{r}"
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "lmscope", "train", "--data", corpus,
                                "--preset", "shakespeare-char-cpu", "--set",
                                f"train.max_iters={iters}", *extra, "--out", out, "--quiet"],
                               check=True, capture_output=True)
                walls[name].append(round(time.perf_counter() - start, 2))
                phases[name].append(json.loads(Path(out, "summary.json").read_text())
                                    ["phase_seconds"])
    median = {name: statistics.median(w) for name, w in walls.items()}
    out = {"iters": iters, "nanogpt_wall_s": round(median["nanogpt"], 2)}
    for name in commands:
        middle = sorted(range(rounds), key=lambda i, n=name: walls[n][i])[rounds // 2]
        out[f"{name}_wall_s"] = round(median[name], 2)
        out[f"{name}_over_nanogpt"] = round(median[name] / median["nanogpt"], 3)
        out[f"{name}_phase_seconds"] = phases[name][middle]
    return {**out, "rounds": walls}


_PEAK_RSS_WRAPPER = """
import sys
from lmscope.cli import main
try:
    main(sys.argv[2:])
finally:  # VmHWM: this process's own peak RSS (ru_maxrss would include the parent's, from fork)
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM"))
    with open(sys.argv[1], "w") as f:
        f.write(kb)
"""


def lmscope_peak_rss_mb(args: list[str], env: dict, tmp: Path) -> float:
    """Run `lmscope ARGS` in a new process and return that process's peak resident memory (MB)."""
    report = tmp / "peak_kb.txt"
    subprocess.run([sys.executable, "-c", _PEAK_RSS_WRAPPER, str(report), *args], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    return int(report.read_text()) / 1024


def bench_memory(tmp: Path, corpus: str) -> dict:
    """Peak RSS of a short training run on a 100 MB corpus and on the 1 MB one."""
    from lmscope.data.corpora import resolve

    source = resolve(corpus).files[0].read_bytes()
    big = tmp / "big100mb.txt"
    with open(big, "wb") as f:
        written = 0
        while written < 100_000_000:
            f.write(source[: 100_000_000 - written])
            written += min(len(source), 100_000_000 - written)
    settings = ["train.max_iters=200", "train.eval_interval=100", "train.eval_iters=5",
                "train.sample_tokens=0", "train.checkpoint_at=[]", "data.val_fraction=0.01"]
    env = {**os.environ, "LMSCOPE_CACHE": str(tmp / "cache")}
    out = {}
    for name, data in (("small_corpus", corpus), ("corpus_100mb", str(big))):
        args = ["train", "--preset", "shakespeare-char-cpu", "--data", data,
                "--out", str(tmp / name), "--quiet", "--set", *settings]
        out[f"peak_rss_mb_{name}"] = round(lmscope_peak_rss_mb(args, env, tmp), 1)
    out["corpus_bytes"] = big.stat().st_size
    out["extra_rss_mb_for_100mb"] = round(out["peak_rss_mb_corpus_100mb"]
                                          - out["peak_rss_mb_small_corpus"], 1)
    return out


def nanogpt_style_generate(model: GPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Reference: recompute the whole (cropped) context for every new token, as nanoGPT does."""
    gen = torch.Generator(device=idx.device).manual_seed(0)
    for _ in range(n):
        logits = model(idx[:, -model.config.block_size:])[:, -1] / 0.8
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=gen)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


def read_bandwidth_gb_s(n_bytes: int, repeats: int) -> float:
    """Bytes per second (in GB/s) of reading a float32 buffer of `n_bytes` once (a sum over it,
    all threads), median over repeats: at 1 GB this is main memory's practical read bandwidth,
    at a few MB it is the caches'."""
    buffer = torch.ones(n_bytes // 4, dtype=torch.float32)
    seconds = median_time(lambda: buffer.sum(), repeats, warmup=2)
    return n_bytes / seconds / 1e9


def sampling_bytes_per_token(model: nn.Module, context: int) -> dict:
    """What one batch-1 decoding step must read at least: every weight matrix of the blocks and
    the head (the embeddings only one row each), and the keys and values of `context` cached
    tokens (bfloat16 in the lower-precision copies, float32 otherwise)."""
    weights = sum(p.numel() * p.element_size() for name, p in
                  list(model.named_parameters()) + list(model.named_buffers())
                  if not name.startswith(("tok_emb", "pos_emb")))
    head = model.head.weight
    if head is model.tok_emb.weight:  # a tied head reads the whole embedding matrix
        weights += head.numel() * head.element_size()
    c = model.config
    cache = 2 * c.n_layer * context * c.n_embd * model.tok_emb.weight.element_size()
    return {"weights": weights, "kv_cache": cache}


def cache_lengths(block_size: int, new_tokens: int, prompt: int = 1) -> list[int]:
    """How many cached tokens each of generate_ids's decoding steps reads (it prefills the last
    three quarters of the window afresh when the window is full)."""
    keep, length, lengths = max(1, block_size * 3 // 4), prompt, []
    for _ in range(new_tokens - 1):
        length = keep if length >= block_size else length
        lengths.append(length)
        length += 1
    return lengths


@torch.no_grad()
def bench_sample(repeats: int, new_tokens: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384))
    model = model.to(device).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device=device)
    cfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0.8, seed=0)
    cached = median_time(lambda: generate_ids(model, prompt, cfg), repeats, device=device)
    recompute = median_time(lambda: nanogpt_style_generate(model, prompt, new_tokens),
                            max(1, repeats // 2), warmup=0, device=device)
    batch = 16
    batched = median_time(lambda: generate_ids(model, prompt.repeat(batch, 1), cfg),
                          max(1, repeats // 2), device=device)
    lower = {}
    copies = {precision: for_sampling(model, precision) for precision in ("bfloat16", "int8")}
    for precision, fast in copies.items():
        seconds = median_time(lambda m=fast: generate_ids(m, prompt, cfg), repeats, device=device)
        lower[f"kv_cache_{precision}_tokens_per_s"] = round(new_tokens / seconds, 1)
    # The int8 copy against what reading its bytes once per token from main memory allows
    int8 = copies["int8"]
    context = statistics.mean(cache_lengths(model.config.block_size, new_tokens))
    need = sampling_bytes_per_token(int8, round(context))
    bandwidth = read_bandwidth_gb_s(2**30, repeats)
    bound = bandwidth * 1e9 / (need["weights"] + need["kv_cache"])
    lower["int8_bytes_per_token"] = need["weights"] + need["kv_cache"]
    lower["int8_mean_context"] = round(context, 1)
    lower["memory_read_gb_s"] = round(bandwidth, 1)
    lower["memory_read_gb_s_16mb"] = round(read_bandwidth_gb_s(2**24, repeats), 1)
    lower["int8_bound_tokens_per_s"] = round(bound, 1)
    lower["int8_fraction_of_bound"] = round(lower["kv_cache_int8_tokens_per_s"] / bound, 3)
    return {
        "model_params": model.num_params(),
        "new_tokens": new_tokens,
        "kv_cache_tokens_per_s": round(new_tokens / cached, 1),
        "recompute_tokens_per_s": round(new_tokens / recompute, 1),
        "kv_cache_speedup": round(recompute / cached, 2),
        "batched_prompts": batch,
        "batched_tokens_per_s": round(batch * new_tokens / batched, 1),
        **lower,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, shorter runs")
    parser.add_argument("--device", default="auto", help="auto (cuda, else cpu) | cpu | cuda")
    parser.add_argument("--corpus", default=None, help="training corpus (default: shakespeare "
                        "where found, else a generated file)")
    parser.add_argument("--nanogpt", type=Path, default=None,
                        help="a checkout of karpathy/nanoGPT to run side by side")
    parser.add_argument("--compile", action="store_true",
                        help="with --nanogpt: also time lmscope's torch.compiled step")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus or default_corpus(Path(tmp))
        device = pick_device(args.device)
        result = run_all(corpus, repeats, args.quick, device)
        if not args.quick and sys.platform == "linux":
            result["memory"] = bench_memory(Path(tmp), corpus)
        if args.nanogpt is not None:
            result["nanogpt"] = bench_nanogpt(args.nanogpt.resolve(), corpus,
                                              rounds=1 if args.quick else 3, device=device,
                                              compile=args.compile)
            result["short_run"] = bench_short_run(args.nanogpt.resolve(), corpus,
                                                  rounds=1 if args.quick else 3)
    print(json.dumps(result, indent=2))


def default_corpus(tmp: Path) -> str:
    """Shakespeare where found, else a generated file of the same size and alphabet
    (the content does not change the speed; only the vocabulary size does, a little)."""
    data = os.environ.get("LMSCOPE_DATA")
    if data and (Path(data) / "shakespeare" / "input.txt").is_file():
        return "shakespeare"
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n.,;:!?'-&3$"))
    path = tmp / "generated.txt"
    path.write_text("".join(rng.choice(letters, 1_100_000)))
    return str(path)


def run_all(corpus: str, repeats: int, quick: bool, device: torch.device) -> dict:
    peak = matmul_gflops(repeats, device)
    result = {
        "machine": {"platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpu_count": os.cpu_count(), "device": str(device),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "matmul_gflops": round(peak, 1),
    }
    result["train"] = bench_train(corpus, repeats, steps=10 if quick else 30, peak=peak,
                                  device=device)
    result["peak_rss_mb_after_train"] = round(peak_rss_mb(), 1)
    result["sample"] = bench_sample(repeats, new_tokens=100 if quick else 500, device=device)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    if device.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


if __name__ == "__main__":
    main()
