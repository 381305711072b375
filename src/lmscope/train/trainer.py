"""The training loop: one trainer for every model in the registry.

A run folder holds everything about one training run:

    RUN/config.toml       the full resolved config (train it again with --config RUN/config.toml)
    RUN/tokenizer.json    the tokenizer (also inside every checkpoint)
    RUN/metrics.jsonl     one JSON object per line: {"kind": "train"|"eval", "iter", losses, "lr", ...}
    RUN/attention.jsonl   attention metrics every track.attention_every iterations (gpt; tracking.py)
    RUN/heads.jsonl       head detectors, induction losses, ICL score every track.heads_every
    RUN/dynamics.jsonl    weight and gradient norms, effective ranks every track.dynamics_every
    RUN/tensorboard/      the same numbers as TensorBoard scalars, with log.tensorboard=true
    RUN/samples.md        the sample written at each checkpoint, oldest first
    RUN/summary.json      final figures, written when the run ends
    RUN/checkpoints/      iter_NNNNNNN/, best/, final/, last/ (see run/checkpoint.py)

The loop is nanoGPT's: AdamW, linear warm-up then cosine decay, gradient accumulation and
clipping, bf16 autocast on CUDA, optional torch.compile, periodic loss estimates on random batches,
and a whole-split validation loss at the end. Everything a resumed run needs (model, optimizer,
data sampler, RNG states, iteration, clock) is saved in `last/`, so stopping and resuming gives the
same trajectory as an uninterrupted run.

The trainer never changes the config it is given. It works on its own copy, the *resolved*
config: corpora given as paths made absolute, the model (and tokenizer) of train.init_from, and
for epoch-style runs the planned max_iters, eval_interval and log_interval. That copy is what
RUN/config.toml and every checkpoint's meta.json record. A resumed run may change only [train],
[track] and [log] (config.check_resume); while a process writes a run folder it holds the
folder's lock (run/lock.py), so a second writer gets an error naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import itertools
import json
import math
import shutil
import signal
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from lmscope.config import RunConfig, check_resume
from lmscope.data import corpora
from lmscope.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    char_vocab,
    tokenizer_from_dict,
)
from lmscope.data.tokens import (
    BatchSampler,
    MixtureSampler,
    check_oov_rate,
    encode_to_file,
    spaced_windows,
)
from lmscope.device import pick_device
from lmscope.errors import CheckpointError, LmscopeError, TrainingInterrupted
from lmscope.generate import SamplingConfig, generate
from lmscope.io import append_jsonl, atomic_write_json, atomic_write_text, rewrite_jsonl, user_path
from lmscope.metrics.losses import batches_nll, evaluate_token_file
from lmscope.models import build_model
from lmscope.render.plots import training_curves
from lmscope.run.checkpoint import (
    load_checkpoint,
    read_meta,
    read_train_state,
    resolve_checkpoint,
    save_checkpoint,
)
from lmscope.run.run_dir import RunDir, RunSummary, TrainResult, read_metrics
from lmscope.train.distributed import Distributed, init_distributed, shutdown
from lmscope.train.optimizers import make_optimizer
from lmscope.train.tensorboard import TensorBoardLogger, check_installed
from lmscope.train.tracking import AttentionTracker, DynamicsTracker, HeadsTracker


class _EvaluationStopped(Exception):
    """Ctrl-C during an evaluation: it stops between batches rather than at its end."""


def build_tokenizer(config: RunConfig, corpus: corpora.Corpus | list[corpora.Corpus]) -> Tokenizer:
    """The run's tokenizer, built from its corpus or the corpora of a mixture (char vocabulary,
    or BPE trained on the train splits)."""
    data = config.data
    parts = corpus if isinstance(corpus, list) else [corpus]
    if data.tokenizer == "byte":
        return ByteTokenizer()
    if data.tokenizer == "bpe":
        train_text = itertools.chain.from_iterable(
            corpora.iter_text(c.splits["train"]) for c in parts)
        return BPETokenizer.train(train_text, data.bpe_vocab_size)
    # char: every character of the corpora (all splits) plus those of the vocab_from corpora
    sources = parts + [corpora.resolve(c, val_fraction=data.val_fraction) for c in data.vocab_from]
    chunks = itertools.chain.from_iterable(
        corpora.iter_text(tuple(itertools.chain.from_iterable(c.splits.values()))) for c in sources)
    return CharTokenizer(char_vocab(chunks))


class PhaseClock:
    """Seconds spent in each phase of a run (`with clock("evaluate"): ...` adds to it)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def rounded(self) -> dict[str, float]:
        return {phase: round(s, 3) for phase, s in self.seconds.items()}


class Trainer:
    def __init__(self, config: RunConfig, run_dir: str | Path, *, resume: bool = False,
                 progress: bool | None = None, log=print, plot: bool = True):
        self.given = config  # as received, never changed
        self.config = config.with_absolute_paths()  # the trainer's own copy (module docstring)
        self.run_dir = Path(run_dir)
        self.folder = RunDir(self.run_dir)
        self.lock = None  # held by rank 0 while it writes the run folder
        self.resume = resume
        self.progress = progress
        self.plot = plot  # RUN/loss.png at the end
        self.log = log
        self._stop_requested = False
        self.state_saved = True  # whether checkpoints/last holds a state (False from a start on)
        self.dist = Distributed()  # set by run() when launched by torchrun
        self.phases = PhaseClock()  # seconds in each phase: summary.json's phase_seconds
        self.final_evals: list[dict] = []  # the final whole-split EvalResults, with token files

    # --- set-up ----------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        """Check the run folder (every process), before anything is written."""
        if self.resume:
            if self.folder.resumable_state() is None:
                raise LmscopeError(f"cannot resume: {self.run_dir} has no checkpoints/last with a "
                                   "training state (start a new run without --resume)")
            if self.folder.config_file.is_file():
                check_resume(self.folder.config(), self.given)
            return
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise LmscopeError(f"--out {self.run_dir} is a file, not a folder")
        self._refuse_a_written_folder()
        self.dist.barrier()  # every process has checked before the first one writes

    def _refuse_a_written_folder(self) -> None:
        # a lock a killed run left is no obstacle, nor a start killed before its first state
        if self.folder.holds_files() and not self.folder.holds_only_a_start():
            raise LmscopeError(f"{self.run_dir} already holds files; continue it with --resume "
                               "or choose another --out")

    def _clear_start(self) -> None:
        """Remove what a start wrote before its first saved state (rank 0): a start that failed,
        or one killed before (the folder held nothing else: _refuse_a_written_folder)."""
        for path in [*self.folder.start_files(), *self.run_dir.glob(".*.tmp*")]:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _take_folder(self) -> None:
        """Rank 0 takes the run folder's lock (run/lock.py) and, on resume, clears what killed
        writes left; every process learns whether it could, so none waits for the others."""
        error = None
        if self.dist.is_main:
            self.lock = self.folder.lock(log=lambda message: print(message, file=sys.stderr))
            try:
                self.lock.acquire()
                if not self.resume:  # another process may have written between check and lock
                    self._refuse_a_written_folder()
                    if self.folder.holds_files():
                        self.log(f"{self.run_dir} holds a start that saved no state (it was "
                                 "killed before its first checkpoint): starting afresh")
                        self._clear_start()
            except (LmscopeError, OSError) as e:  # an unwritable place, too
                error = e
        if self.dist.any(error is not None, self.dist.device()):
            raise error or LmscopeError(f"{self.run_dir}: the first process could not take the "
                                        "run folder (its error says why)")
        if self.resume and self.dist.is_main:
            self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Half-written files of a process killed mid-write (temporary names, never read)."""
        for pattern in ("checkpoints/.*.tmp-*", ".*.tmp", "checkpoints/.*.tmp",
                        "attention/.*.tmp"):
            for path in self.run_dir.glob(pattern):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def setup(self) -> None:
        cfg = self.config
        tc = cfg.train
        self.device = pick_device(tc.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)  # one GPU per process
        torch.manual_seed(tc.seed)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        use_bf16 = self.device.type == "cuda" and tc.dtype in ("auto", "bfloat16") and \
            torch.cuda.is_bf16_supported()
        if tc.dtype == "bfloat16" and not use_bf16:
            raise LmscopeError(f"train.dtype=bfloat16 needs a CUDA GPU that supports it; "
                               f"this run is on {self.device}")
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16
                         else nullcontext())

        source = self._init_checkpoint() if tc.init_from and not self.resume else None
        if tc.init_from and self.resume:  # the checkpoint's model, as the run's config.toml says
            saved = self.folder.config()
            cfg.model_name, cfg.model = saved.model_name, saved.model
        if not self.dist.is_main:
            self.dist.barrier()  # rank 0 prepares the data (tokenizer, token files) first
        # the training text: one corpus, or a mixture whose batches draw rows by weight
        mixture = cfg.data.mixture
        self.parts = [corpora.resolve(name, val_fraction=cfg.data.val_fraction)
                      for name in mixture.names]
        self.weights = mixture.weights
        named = [(c.name, w) for c, w in zip(self.parts, self.weights, strict=True)]
        self.corpus_name = (self.parts[0].name if len(named) == 1
                            else str(corpora.Mixture(tuple(named))))
        self.corpus_fingerprint = self._fingerprint()  # saved with, and checked on, resume
        tok_file = self.folder.tokenizer_file
        if (self.resume or not self.dist.is_main) and tok_file.is_file():
            self.tokenizer = tokenizer_from_dict(json.loads(tok_file.read_text(encoding="utf-8")))
        elif source is not None:
            self.tokenizer = source.tokenizer
        else:
            self.tokenizer = build_tokenizer(cfg, self.parts)
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        self.train_tokens = [encode_to_file(c, "train", self.tokenizer, progress=show)
                             for c in self.parts]
        self.val_tokens = [encode_to_file(c, "val", self.tokenizer, progress=show)
                           for c in self.parts]
        # validation splits of other corpora, estimated at every evaluation (e.g. forgetting)
        self.other_val_tokens = {}
        for other in tc.eval_corpora:
            found = corpora.resolve(other, val_fraction=cfg.data.val_fraction)
            if found.name not in (c.name for c in self.parts):
                self.other_val_tokens[found.name] = encode_to_file(
                    found, "val", self.tokenizer, progress=show)

        self.block_size = cfg.model.block_size
        splits = [(c.name, split, t) for split, files in (("train", self.train_tokens),
                                                          ("val", self.val_tokens))
                  for c, t in zip(self.parts, files, strict=True)]
        splits += [(name, "val", t) for name, t in self.other_val_tokens.items()]
        for name, split, tf in splits:
            if len(tf.tokens) < self.block_size + 1:
                raise LmscopeError(
                    f"corpus {name}: the {split} split has {len(tf.tokens)} tokens, "
                    f"fewer than model.block_size+1 = {self.block_size + 1}; use a smaller "
                    "model.block_size or more text")
        self._check_vocabulary(splits, source)
        if tc.epochs:
            self._plan_epochs()
        if self.dist.is_main:
            if not self.resume:
                atomic_write_json(tok_file, self.tokenizer.to_dict())
            self.dist.barrier()  # now the other processes read the tokenizer and token files

        cfg.model.vocab_size = self.tokenizer.vocab_size
        self.raw_model = build_model(cfg.model_name, cfg.model).to(self.device)
        if source is not None and not self.resume:
            self.raw_model.load_state_dict(source.model.state_dict())
        # eval_model: compiled but not wrapped; model: what training calls (DDP-wrapped if so)
        self.eval_model = torch.compile(self.raw_model) if tc.compile else self.raw_model
        self.model = self.eval_model
        if self.dist.enabled:
            self.model = DistributedDataParallel(
                self.eval_model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = self._make_optimizer()
        self.sampler = self._sampler([t.tokens for t in self.train_tokens], tc.seed,
                                     rank=self.dist.rank, world_size=self.dist.world_size)
        heads_every = cfg.track.heads_interval()
        if heads_every and self.block_size < 4:
            if cfg.track.heads_every is not None:  # asked for: every process stops
                raise LmscopeError(f"track.heads_every needs model.block_size of at least 4 (two "
                                   f"copies of 2 random tokens), got {self.block_size}; set "
                                   "track.heads_every=0")
            heads_every = 0  # the default, with the attention tracking: not for such a context
        # what is measured besides the loss (train/tracking.py), by rank 0: attention metrics
        # (gpt), heads, learning dynamics
        self.trackers: list = []
        attention = cfg.track.attention_every and hasattr(self.raw_model, "forward_with_attention")
        dynamics_every = cfg.track.dynamics_interval()
        if self.dist.is_main and (attention or heads_every or dynamics_every):
            # the fixed probe batch the trackers read: windows of the validation split
            _, probe = spaced_windows(self.val_tokens[0].tokens, self.block_size,
                                      cfg.track.attention_batch)
            unk_id = self.tokenizer.unk_id
            if attention:
                self.trackers.append(AttentionTracker(
                    self.run_dir, probe, save_maps=cfg.track.save_maps,
                    every=cfg.track.attention_every))
            if heads_every:
                self.trackers.append(HeadsTracker(self.run_dir, self.raw_model, probe,
                                                  unk_id=unk_id, every=heads_every))
            if dynamics_every:
                self.trackers.append(DynamicsTracker(self.run_dir, probe, unk_id=unk_id,
                                                     every=dynamics_every))
        self.iter = 0
        self.best_val = math.inf
        self.elapsed = 0.0  # wall-clock seconds of training so far, over all sessions of the run
        self.step_time = 0.0  # of which in optimizer steps (for tokens/s)
        self.tokens_seen = 0
        self.skipped_steps = 0  # steps skipped for a non-finite loss or gradient

    def _check_vocabulary(self, splits: list, source) -> None:
        """The out-of-vocabulary rate of every split (self.oov_rate); a training split past
        data.max_oov_rate stops the run before it starts. Only a run with another run's tokenizer
        (train.init_from) can meet unknown characters."""
        self.oov_rate = {f"{name}/{split}": tf.oov_rate for name, split, tf in splits
                         if tf.n_unknown}
        whose = "the checkpoint of train.init_from" if source is not None else "this run's tokenizer"
        training = {c.name for c in self.parts}
        # Only the training corpora are checked: other corpora's unknown characters are left out
        # of their loss. A resume is on the text its start checked (_restore refuses changed text).
        for name, split, tf in splits:
            if name in training and not self.resume:
                check_oov_rate(name, split, tf.oov_rate, self.config.data.max_oov_rate,
                               whose=whose)

    def _record_resume(self) -> None:
        """Append this resume to RUN/resumes.jsonl (iteration, time, lmscope version, each
        setting that changed with its old and new value) and say what changed."""
        before = _flat(self.folder.config().with_absolute_paths().to_dict())
        now = _flat(self.config.to_dict())
        changed = {k: [before.get(k), now.get(k)] for k in sorted(set(before) | set(now))
                   if before.get(k) != now.get(k)}
        try:
            version = importlib.metadata.version("lmscope")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        append_jsonl(self.folder.resumes_file, {
            "iter": self.iter, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "lmscope": version, "changed": changed})
        said = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        self.log(f"resumed at iteration {self.iter}" + (f"; changed: {said}" if said else
                                                        ", no setting changed"))

    def _fingerprint(self) -> str:
        """The training text's fingerprint: the corpus's own, or one over a mixture's parts."""
        if len(self.parts) == 1:
            return self.parts[0].fingerprint()
        h = hashlib.sha256(b"lmscope-mixture-v1\n")
        for corpus, weight in zip(self.parts, self.weights, strict=True):
            h.update(f"{corpus.fingerprint()} {weight!r}\n".encode())
        return h.hexdigest()

    def _sampler(self, sources: list, seed: int, rank: int = 0, world_size: int = 1):
        """Random windows of one token array, or of a mixture's arrays drawn by weight."""
        tc = self.config.train
        if len(sources) == 1:
            return BatchSampler(sources[0], self.block_size, tc.batch_size, seed=seed,
                                rank=rank, world_size=world_size)
        return MixtureSampler(sources, self.weights, self.block_size, tc.batch_size, seed=seed,
                              rank=rank, world_size=world_size)

    def _plan_epochs(self) -> None:
        """Epoch-style training (the seed's loop): an epoch is as many steps as one pass over the
        train split takes (batches of random windows), capped by max_steps_per_epoch; the train
        loss is logged at every step and the validation loss estimated after every epoch."""
        tc = self.config.train
        tokens_per_step = tc.batch_size * self.block_size * tc.grad_accum * self.dist.world_size
        n_train = sum(len(t.tokens) for t in self.train_tokens)
        self.steps_per_epoch = max(1, n_train // tokens_per_step)
        if tc.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, tc.max_steps_per_epoch)
        tc.max_iters = tc.epochs * self.steps_per_epoch
        tc.eval_interval = self.steps_per_epoch
        tc.log_interval = 1

    def _init_checkpoint(self):
        """The checkpoint train.init_from names; the run takes its model config (and tokenizer)."""
        cfg = self.config
        path = resolve_checkpoint(user_path(cfg.train.init_from))
        cfg.train.init_from = str(path.resolve())
        source = load_checkpoint(path)
        cfg.model_name = source.model_name
        cfg.model = type(source.model.config)(**source.meta["model_config"])
        return source

    def _make_optimizer(self):
        return make_optimizer(self.raw_model, self.config.train)

    def lr_at(self, it: int) -> float:
        """Linear warm-up to lr, then (cosine) a cosine decay to min_lr at lr_decay_iters, or
        (wsd) lr until the last decay_frac of the iterations and a linear decay to min_lr at
        lr_decay_iters; min_lr after."""
        tc = self.config.train
        decay_iters = tc.lr_decay_iters or tc.max_iters
        if it < tc.warmup_iters:
            return tc.lr * (it + 1) / (tc.warmup_iters + 1)
        if it >= decay_iters:
            return tc.min_lr
        if tc.schedule == "wsd":
            start = max(tc.warmup_iters, decay_iters - round(tc.decay_frac * decay_iters))
            if it < start:
                return tc.lr
            return tc.lr + (it - start) / max(1, decay_iters - start) * (tc.min_lr - tc.lr)
        ratio = (it - tc.warmup_iters) / max(1, decay_iters - tc.warmup_iters)
        return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (tc.lr - tc.min_lr)

    def schedule(self) -> str:
        """The learning-rate schedule in words, printed at the start of a run."""
        tc = self.config.train
        decay = tc.lr_decay_iters or tc.max_iters
        if tc.schedule == "wsd":
            start = max(tc.warmup_iters, decay - round(tc.decay_frac * decay))
            text = (f"learning rate: warm-up to {tc.lr:g} over {tc.warmup_iters} iterations, "
                    f"stable to iteration {start}, linear decay to {tc.min_lr:g} at iteration "
                    f"{decay}")
        else:
            text = (f"learning rate: warm-up to {tc.lr:g} over {tc.warmup_iters} iterations, "
                    f"cosine decay to {tc.min_lr:g} at iteration {decay}")
        if not tc.lr_decay_iters:
            text += " (= train.max_iters)"
        if decay > tc.max_iters:
            text += (f"; note: the run ends at iteration {tc.max_iters} with lr "
                     f"{self.lr_at(tc.max_iters - 1):.3g}, before the decay ends (train."
                     "lr_decay_iters is set; leave it at 0 to decay over train.max_iters)")
        return text

    # --- state for resuming ----------------------------------------------------------------------
    def _train_state(self) -> tuple[dict, dict]:
        tensors, opt_state = {}, {}
        sd = self.optimizer.state_dict()
        for idx, state in sd["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{idx}.{key}"] = value.detach().cpu().contiguous()
                else:
                    opt_state[f"{idx}.{key}"] = value
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        info = {
            "iter": self.iter, "best_val": self.best_val, "elapsed_s": self.elapsed,
            "step_time_s": self.step_time, "tokens_seen": self.tokens_seen,
            "skipped_steps": self.skipped_steps,
            "corpus_fingerprint": self.corpus_fingerprint, "param_groups": sd["param_groups"],
            "optimizer_scalars": opt_state, "sampler": self.sampler.state_dict(),
        }
        return tensors, info

    def _restore(self) -> None:
        last = self.folder.resumable_state()
        ckpt = load_checkpoint(last, device=self.device)
        self.raw_model.load_state_dict(ckpt.model.state_dict())
        try:
            tensors, info = read_train_state(last)
            if info.get("corpus_fingerprint") != self.corpus_fingerprint:
                raise LmscopeError(f"cannot resume: corpus {self.corpus_name} is not the text this "
                                   "run was trained on (its content changed)")
            state: dict = {}
            for key, value in tensors.items():
                if key.startswith("optimizer."):
                    _, idx, name = key.split(".", 2)
                    state.setdefault(int(idx), {})[name] = value
            for key, value in info["optimizer_scalars"].items():
                idx, name = key.split(".", 1)
                state.setdefault(int(idx), {})[name] = value
            self.optimizer.load_state_dict({"state": state, "param_groups": info["param_groups"]})
            torch.set_rng_state(tensors["rng.torch"])
            cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
            if cuda_states and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(cuda_states)
            self.sampler.load_state_dict(info["sampler"])
            self.iter, self.best_val = info["iter"], info["best_val"]
            self.elapsed, self.tokens_seen = info["elapsed_s"], info["tokens_seen"]
            self.step_time = info["step_time_s"]
            self.skipped_steps = info.get("skipped_steps", 0)
        except CheckpointError as e:  # a file that differs from its recorded sha256
            raise CheckpointError(f"cannot resume: {e}") from None
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise CheckpointError(f"cannot resume: the training state in {last} is corrupt or "
                                  f"incomplete ({type(e).__name__}: {e})") from None

    # --- logging, evaluation, checkpoints ---------------------------------------------------------
    def _evaluates_at(self, it: int) -> bool:
        tc = self.config.train
        return it % tc.eval_interval == 0 or it >= tc.max_iters or it in self.checkpoint_iters

    def _captures_at(self, tracker, it: int) -> bool:
        """Whether `tracker` measures at iteration `it`: every its interval and at the end."""
        return it % tracker.every == 0 or it >= self.config.train.max_iters

    def _tracking_seconds(self, kind: str) -> float | None:
        """Seconds the tracker of `kind` spent capturing (None without one), for summary.json."""
        found = [t.seconds for t in self.trackers if t.kind == kind]
        return round(found[0], 3) if found else None

    def _open_metrics(self) -> None:
        self.metrics = self.tensorboard = None
        if not self.dist.is_main:
            return
        path = self.folder.metrics_file

        def keep(row: dict) -> bool:  # on resume, what this session will not write again
            it, kind = row.get("iter", 0), row.get("kind")
            # Training rows up to the saved iteration are done; an evaluation at that
            # iteration stays unless it is made again; the end of the run moves on.
            return self.resume and ((kind == "train" and it <= self.iter) or it < self.iter or (
                kind == "eval" and it == self.iter and not self._evaluates_at(it)))

        rewrite_jsonl(path, keep)
        self.metrics = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in run())
        for tracker in self.trackers:  # the same for attention.jsonl, heads.jsonl, ...
            rewrite_jsonl(tracker.path, lambda row, t=tracker: self.resume and (
                row.get("iter", 0) < self.iter or
                (row.get("iter", 0) == self.iter and not self._captures_at(t, self.iter))))
        if self.config.log.tensorboard:  # rank 0 only, like the files above
            self.tensorboard = TensorBoardLogger(self.run_dir, resume=self.resume)

    def _write_metrics(self, row: dict) -> None:
        if self.metrics is None:
            return
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()
        if self.tensorboard is not None:
            self.tensorboard.metrics(row)
            if row["kind"] != "train":  # at evaluation points and the end
                self.tensorboard.flush()

    @torch.no_grad()
    def estimate_loss(self) -> dict[str, float]:
        """Mean loss over eval_iters fixed random batches of each split (and of eval_corpora).

        A mixture's train batches are drawn by weight like the training batches; its val loss is
        the weighted mean of each part's own val estimate, which are reported too."""
        seed = self.config.train.seed + 1000  # fixed batches, apart from the training batches
        self.eval_model.eval()
        estimates = 1 + len(self.parts) + len(self.other_val_tokens)
        self.eval_bar = tqdm(total=estimates * self.config.train.eval_iters, desc="eval",
                             unit="batch", leave=False, position=1, dynamic_ncols=True,
                             disable=None if self.progress is None else not self.progress)
        try:
            return self._estimate_all(seed)
        finally:
            self.eval_bar.close()
            self.eval_model.train()

    def _estimate_all(self, seed: int) -> dict[str, float]:
        out = {"train": self._estimate([t.tokens for t in self.train_tokens], seed)}
        if len(self.parts) == 1:
            out["val"] = self._estimate([self.val_tokens[0].tokens], seed + 1)
        else:
            for corpus, tf in zip(self.parts, self.val_tokens, strict=True):
                out[f"val_loss:{corpus.name}"] = self._estimate([tf.tokens], seed + 1)
            out["val"] = sum(w * out[f"val_loss:{c.name}"]
                             for c, w in zip(self.parts, self.weights, strict=True))
        # other corpora: characters outside the vocabulary are left out, as in evaluate()
        for offset, (label, tf) in enumerate(self.other_val_tokens.items(), start=2):
            out[f"val_loss:{label}"] = self._estimate([tf.tokens], seed + offset,
                                                      ignore_unknown=True)
        return out

    def _estimate(self, sources: list, seed: int, ignore_unknown: bool = False) -> float:
        """Mean loss per token over eval_iters batches drawn from `seed` (the same batches at every
        evaluation); with ignore_unknown, `<unk>` targets are not scored."""
        tc = self.config.train
        sampler = self._sampler(sources, seed)
        unk = self.tokenizer.unk_id if ignore_unknown else None

        def batches():
            for i in range(tc.eval_iters):
                if self._stop_requested and not self.dist.enabled:  # Ctrl-C: stop between batches
                    raise _EvaluationStopped
                self.eval_bar.update(1)
                batch = sampler.sample()  # drawn by every process, so all stay in step
                if i % self.dist.world_size == self.dist.rank:
                    yield batch  # data-parallel: each process takes every world_size-th batch

        # on a CPU, batches on one thread each, several at once; a compiled model is called
        # from this thread only
        total, count = batches_nll(self.eval_model, batches(), device=self.device, unk_id=unk,
                                   autocast=self.autocast, threaded=not tc.compile)
        return float(self.dist.sum(total)) / max(float(self.dist.sum(count)), 1.0)

    def _final_eval(self) -> dict[str, float]:
        """Whole-split validation loss (every process computes the same number); a mixture's is
        the weighted mean of its parts', each reported as val_loss_full:<corpus>."""
        full = {"val_loss_full": 0.0, "val_bits_per_char_full": 0.0}
        self.final_evals = []
        for corpus, weight, tf in zip(self.parts, self.weights, self.val_tokens, strict=True):
            result = evaluate_token_file(self.raw_model, tf, block_size=self.block_size,
                                         unk_id=self.tokenizer.unk_id, corpus=corpus.name,
                                         split="val")
            self.final_evals.append(result.to_dict() | {"token_file": tf.path.name})
            full["val_loss_full"] += weight * result.loss
            full["val_bits_per_char_full"] += weight * result.bits_per_char
            if len(self.parts) > 1:
                full[f"val_loss_full:{corpus.name}"] = result.loss
        return full

    def _sample(self) -> str | None:
        tc = self.config.train
        if tc.sample_tokens == 0:
            return None
        prompt = tc.sample_prompt
        try:
            self.tokenizer.encode(prompt, unknown="error")
        except LmscopeError:
            prompt = self.tokenizer.decode([self.train_tokens[0].tokens[0]])
        cfg = SamplingConfig(max_new_tokens=tc.sample_tokens, seed=tc.seed)
        return prompt + generate(self.raw_model, self.tokenizer, prompt, cfg)

    def _save(self, name: str, losses: dict, *, sample: bool, train_state: bool = False) -> None:
        if not self.dist.is_main:
            return
        meta = {"iter": self.iter, "corpus": self.corpus_name,
                "train_loss": losses.get("train"), "val_loss": losses.get("val"),
                "elapsed_s": round(self.elapsed, 3), "tokens_seen": self.tokens_seen,
                "step_seconds": round(self.step_time, 3),  # of elapsed_s, in optimizer steps
                "run_config": self.config.to_dict()}
        meta.update({k: v for k, v in losses.items() if k not in ("train", "val")})
        if name in ("final", "last") and self.final_evals:
            # the whole-split results of these very weights: lmscope.evaluate reuses them
            meta["val_evals"] = self.final_evals
        with self.phases("samples"):
            text = self._sample() if sample else None
        with self.phases("checkpoints"):
            save_checkpoint(self.folder.checkpoints_dir / name, self.raw_model,
                            model_name=self.config.model_name, model_config=self.config.model,
                            tokenizer=self.tokenizer, meta=meta, sample=text,
                            train_state=self._train_state() if train_state else None)
        if train_state:
            self.state_saved = True
        if sample and self.config.train.sample_tokens:
            with self.phases("samples"):
                self._write_samples()

    def _write_samples(self) -> None:
        parts = [f"# Samples of {self.run_dir.name}\n"]
        for ckpt in self.folder.checkpoints():
            if not (ckpt / "sample.txt").is_file() or ckpt.name.startswith(("best", "last")):
                continue
            meta = read_meta(ckpt)
            val = meta.get("val_loss")
            loss = f", val loss {val:.4f}" if isinstance(val, float) else ""
            text = (ckpt / "sample.txt").read_text(encoding="utf-8")
            parts.append(f"## {ckpt.name} (iteration {meta.get('iter')}{loss})\n\n"
                         f"```text\n{text}\n```\n")
        atomic_write_text(self.folder.samples_file, "\n".join(parts))

    def _plot_curves(self) -> None:
        """RUN/loss.png: the run's train and validation curves (rank 0, at the end)."""
        self.metrics.flush()
        training_curves(read_metrics(self.run_dir), self.folder.loss_plot,
                        title=f"{self.run_dir.name}: {self.config.model_name} on {self.corpus_name}")

    # --- the loop --------------------------------------------------------------------------------
    def step(self, lr: float) -> torch.Tensor:
        """One optimizer step over grad_accum micro-batches; returns the last micro-batch's loss."""
        tc = self.config.train
        for group in self.optimizer.param_groups:  # Muon's at train.muon_lr / train.lr of it
            group["lr"] = lr * group.get("lr_scale", 1.0)
        for micro in range(tc.grad_accum):
            x, y = self.sampler.sample()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            # DDP averages gradients across processes on the last micro-batch only
            sync = not self.dist.enabled or micro == tc.grad_accum - 1
            with nullcontext() if sync else self.model.no_sync():
                with self.autocast:
                    logits = self.model(x)
                    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
                (loss / tc.grad_accum).backward()
        # the global gradient norm (clipped to grad_clip when set): not finite when the loss or
        # any gradient is not (every process has the same reduced gradients, so the same answer)
        norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(),
                                              tc.grad_clip if tc.grad_clip > 0 else math.inf)
        if not bool(torch.isfinite(norm) & torch.isfinite(loss.detach())):
            self.optimizer.zero_grad(set_to_none=True)
            what = "loss" if not torch.isfinite(loss.detach()) else "gradient"
            if not tc.skip_nonfinite:
                raise LmscopeError(
                    f"training stopped: non-finite {what} at iteration {self.iter + 1}; the last "
                    f"good state is in {self.run_dir / 'checkpoints' / 'last'} (try a lower "
                    "train.lr, or --set train.skip_nonfinite=true to skip such steps)")
            self.skipped_steps += 1  # the weights and optimizer state stay as they were
            return loss.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def _on_sigint(self, signum, frame):
        if self._stop_requested:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_requested = True
        if self.state_saved:
            sys.stderr.write("\nstopping after the current step (saving the state to resume "
                             "from); press Ctrl-C again to stop at once without saving\n")
        else:
            sys.stderr.write("\nstopping: no state has been saved yet, so there is nothing to "
                             "resume; what this run wrote is removed\n")

    def _stop(self) -> None:
        """After Ctrl-C: save the state to resume from, or, before there is any, say so."""
        if not self.state_saved:
            raise TrainingInterrupted(
                "interrupted before the first checkpoint: nothing is saved, and what the run "
                "wrote is removed; the same command starts it again")
        self._save("last", {}, sample=False, train_state=True)
        raise TrainingInterrupted(
            f"interrupted at iteration {self.iter}; the state is saved in "
            f"{self.run_dir / 'checkpoints' / 'last'}; continue with: "
            f"lmscope train --out {self.run_dir} --resume")

    def _start(self) -> None:
        """Everything before the first step: the folder, tokenizer, token files, model and
        optimizer, the state of a resumed run, config.toml and the metrics file."""
        if self.config.log.tensorboard:
            check_installed()  # before the run folder is touched
        self._prepare_run_dir()
        self.state_saved = self.resume  # a resumed run has a state to go back to
        self._take_folder()
        self.setup()
        if self.resume:
            self._restore()
        if self.dist.is_main:
            if self.resume:  # config.toml stays as the run started; resumes.jsonl says what changed
                self._record_resume()
            else:
                atomic_write_text(self.folder.config_file, self.config.to_toml())
        else:  # only rank 0 prints
            self.log, self.progress = (lambda *a: None), False
        self.checkpoint_iters = set(self.config.train.checkpoint_iters())
        self._open_metrics()

    def run(self) -> TrainResult:
        self.dist = init_distributed()
        missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        try:
            return self._run()
        except BaseException:
            # a start that failed (or was stopped) before its first saved state leaves nothing
            if not self.state_saved and self.lock is not None and self.lock.held:
                self._clear_start()
                self.lock.release()
                for folder in missing:  # the folders this run created, innermost first
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # only when empty
            raise
        finally:
            if self.lock is not None:
                self.lock.release()
            shutdown(self.dist)

    def _run(self) -> TrainResult:
        started = time.perf_counter()
        with self.phases("start"):
            self._start()
        cfg, tc = self.config, self.config.train
        n_params = self.raw_model.num_params()
        self.log(f"{cfg.model_name}: {n_params / 1e6:.2f}M parameters, vocabulary "
                 f"{self.tokenizer.vocab_size} ({self.tokenizer.kind}), corpus {self.corpus_name} "
                 f"({sum(map(len, self.train_tokens)):,} train / "
                 f"{sum(map(len, self.val_tokens)):,} val tokens), device {self.device}"
                 + (f" x {self.dist.world_size} processes" if self.dist.enabled else ""))
        if self.oov_rate:
            self.log("out of vocabulary (trained on as <unk>, never sampled; left out of other "
                     "corpora's losses): " + ", ".join(
                         f"{k} {v:.2%}" for k, v in self.oov_rate.items()))
        self.log(self.schedule())
        tokens_per_iter = tc.batch_size * self.block_size * tc.grad_accum * self.dist.world_size
        in_main = threading.current_thread() is threading.main_thread()
        old_handler = signal.signal(signal.SIGINT, self._on_sigint) if in_main else None
        bar = tqdm(total=tc.max_iters, initial=self.iter, desc="train", unit="it",
                   disable=None if self.progress is None else not self.progress,
                   dynamic_ncols=True)
        log = bar.write if not bar.disable else self.log
        window_t, window_tokens, tps = time.perf_counter(), 0, 0.0
        session_start, elapsed_before = time.perf_counter(), self.elapsed
        last_loss = math.nan
        self.model.train()
        try:
            while True:
                it = self.iter
                self.elapsed = elapsed_before + time.perf_counter() - session_start
                # -- evaluate and keep checkpoints at this point (state after `it` steps)
                at_end = it >= tc.max_iters
                for tracker in self.trackers:
                    if self._captures_at(tracker, it):
                        with self.phases("tracking"):
                            row = tracker.capture(self.raw_model, it)
                        if self.tensorboard is not None:
                            getattr(self.tensorboard, tracker.kind)(row)
                        window_t += row["seconds"]  # tokens/s counts optimizer steps only
                if self._evaluates_at(it):
                    try:
                        with self.phases("evaluate"):
                            losses = self.estimate_loss()
                    except _EvaluationStopped:
                        self._stop()
                    row = {"kind": "eval", "iter": it, "train_loss": losses["train"],
                           "val_loss": losses["val"], "lr": self.lr_at(min(it, tc.max_iters - 1)),
                           "elapsed_s": round(self.elapsed, 3),
                           **{k: v for k, v in losses.items() if k.startswith("val_loss:")}}
                    if tc.epochs:
                        row["epoch"] = it // tc.eval_interval
                    self._write_metrics(row)
                    others = "".join(f", {k[9:]} val loss {v:.4f}" for k, v in losses.items()
                                     if k.startswith("val_loss:"))
                    log(f"iter {it}: train loss {losses['train']:.4f}, "
                        f"val loss {losses['val']:.4f}{others}")
                    bar.set_postfix(loss=f"{last_loss:.3f}", val=f"{losses['val']:.3f}",
                                    tok_s=f"{tps:,.0f}")
                    if losses["val"] < self.best_val and it > 0:
                        self.best_val = losses["val"]
                        self._save("best", losses, sample=False)
                    if it in self.checkpoint_iters:
                        self._save(f"iter_{it:07d}", losses, sample=True)
                    if at_end:
                        break
                    self._save("last", losses, sample=False, train_state=True)
                    window_t, window_tokens = time.perf_counter(), 0  # tokens/s of steps only
                # -- one optimizer step
                t0 = time.perf_counter()
                lr = self.lr_at(it)
                loss = self.step(lr)
                self.iter = it + 1
                self.tokens_seen += tokens_per_iter
                window_tokens += tokens_per_iter
                self.step_time += time.perf_counter() - t0
                self.phases.seconds["steps"] = self.phases.seconds.get("steps", 0.0) + \
                    time.perf_counter() - t0
                self.elapsed = elapsed_before + time.perf_counter() - session_start
                bar.update(1)
                if self.iter % tc.log_interval == 0 or self.iter == tc.max_iters:
                    last_loss = self.dist.mean(loss).item()
                    now = time.perf_counter()
                    tps = window_tokens / max(now - window_t, 1e-9)
                    window_t, window_tokens = now, 0
                    row = {"kind": "train", "iter": self.iter,
                           "loss": last_loss if math.isfinite(last_loss) else None,
                           "lr": lr, "tokens_per_s": round(tps, 1),
                           "elapsed_s": round(self.elapsed, 3)}
                    if tc.skip_nonfinite:
                        row["skipped_steps"] = self.skipped_steps
                    self._write_metrics(row)
                    bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tps:,.0f}")
                if self.dist.any(self._stop_requested, self.device):
                    self._stop()
            # -- the end: whole-split validation loss (every process computes the same number),
            # final checkpoint, summary
            with self.phases("final_eval"):
                full = self._final_eval() if tc.final_eval else {}
            final_losses = {**losses, **full}
            self._write_metrics({"kind": "final", "iter": self.iter, **full,
                                 "elapsed_s": round(self.elapsed, 3)})
            self._save("final", final_losses, sample=True)
            self._save("last", final_losses, sample=False, train_state=True)
            val_loss = full.get("val_loss_full", losses["val"])
            summary = TrainResult(
                run_dir=self.run_dir, iterations=self.iter, best_val_loss=self.best_val,
                val_loss=val_loss,
                val_bits_per_char=full.get("val_bits_per_char_full", val_loss / math.log(2)),
                elapsed_s=self.elapsed, tokens_per_s=self.tokens_seen / max(self.step_time, 1e-9))
            if self.dist.is_main:
                if self.plot:
                    with self.phases("plot"):
                        self._plot_curves()
                self.phases.seconds["total"] = time.perf_counter() - started
                RunSummary(
                    **vars(summary), val_loss_is="whole split" if full else "estimate",
                    params=n_params, corpus=self.corpus_name, model=cfg.model_name,
                    processes=self.dist.world_size,
                    attention_tracking_s=self._tracking_seconds("attention"),
                    dynamics_tracking_s=self._tracking_seconds("dynamics"),
                    skipped_steps=self.skipped_steps,
                    oov_rate=self.oov_rate,
                    phase_seconds=self.phases.rounded()).save(self.folder.summary_file)
            what = "whole-split" if full else "estimated"
            log(f"done: {what} val loss {val_loss:.4f} nats/token "
                f"({summary.val_bits_per_char:.4f} bits/char) after {self.iter} iterations, "
                f"{self.elapsed:.1f} s")
            return summary
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)


def _flat(nested: dict) -> dict:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}"""
    return {f"{section}.{key}": value for section, table in nested.items()
            for key, value in table.items()}


def train(config: RunConfig, run_dir: str | Path, *, resume: bool = False,
          progress: bool | None = None, log=print, plot: bool = True) -> TrainResult:
    """Train a model as `config` says, writing the run folder `run_dir` (with its loss.png
    unless `plot` is False: a fine-tuning whose curves a study draws elsewhere)."""
    return Trainer(config, run_dir, resume=resume, progress=progress, log=log, plot=plot).run()
