"""Every bad input we know of, for every command: one `error:` line, a non-zero exit, no
traceback, and nothing already on disk changed. This table is also docs/errors.md:

    LMSCOPE_WRITE_ERRORS_DOC=1 pytest -n 0 tests/test_errors.py     # rewrites docs/errors.md

and a test checks that the document lists every case, so the two cannot drift apart. Cases run
through the command line's entry point in this process (the full-disk case in a subprocess with a
file-size limit): any exception other than the clean exit fails the test.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import re
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from lmscope.data.tokenizers import BPETokenizer
from lmscope.run.lock import FolderLock
from tests.conftest import HANG_TIMEOUT, PROMPTS, TINY_SETTINGS, TINY_TEXT
from tests.test_cli import assert_clean_error
from tests.test_export import tiny_checkpoint

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"


@dataclass(frozen=True)
class Case:
    id: str
    command: str  # the command, for the table
    bad: str  # what is wrong with the input
    args: tuple[str, ...]  # {w}: a folder of bad files, {run}: a trained run
    expect: tuple[str, ...]  # fragments of the error line
    file_limit: int | None = None  # bytes: a process that may write no more (a full disk)
    held: str | None = None  # a folder whose lock another writer holds during the command
    hidden: str | None = None  # a package the command finds not installed


C = Case
CASES = [
    # --- train: the training text
    C("train-missing-file", "train", "a corpus file that does not exist",
      ("train", "--data", "{w}/missing.txt", "--out", "{w}/out"), ("missing.txt",)),
    C("train-empty-file", "train", "an empty corpus file",
      ("train", "--data", "{w}/empty.txt", "--out", "{w}/out"), ("empty",)),
    C("train-short-file", "train", "a corpus shorter than one block",
      ("train", "--data", "{w}/short.txt", "--out", "{w}/out"), ("block_size",)),
    C("train-latin1", "train", "a non-UTF-8 (Latin-1) text file",
      ("train", "--data", "{w}/latin1.txt", "--out", "{w}/out"), ("UTF-8", "tokenizer=byte")),
    C("train-binary", "train", "a binary file (every byte value)",
      ("train", "--data", "{w}/binary.bin", "--out", "{w}/out"), ("UTF-8",)),
    C("train-empty-folder", "train", "a folder with no text files",
      ("train", "--data", "{w}/nothing", "--out", "{w}/out"), ("nothing",)),
    C("train-unknown-corpus", "train", "an unknown corpus name",
      ("train", "--data", "nosuchcorpus", "--out", "{w}/out"), ("nosuchcorpus",)),
    C("train-mixture-weight", "train", "a mixture weight of 0",
      ("train", "--data", "{w}/tiny.txt:0", "--data", "shakespeare:1"),
      ("must be a positive number, got 0",)),
    C("train-mixture-unknown", "train", "a mixture with an unknown corpus",
      ("train", "--data", "{w}/tiny.txt:0.5", "--data", "nosuchcorpus:0.5", "--out", "{w}/out"),
      ("nosuchcorpus",)),
    C("train-oov-init-from", "train", "fine-tuning onto text the vocabulary cannot read",
      ("train", "--data", "{w}/greek.txt", "--set", "train.init_from={run}", "--out", "{w}/ft"),
      ("outside the vocabulary of the checkpoint of train.init_from", "data.max_oov_rate")),
    # --- train: configuration
    C("track-heads-negative", "train", "a negative track.heads_every",
      ("train", "--data", "{w}/tiny.txt", "--set", "track.heads_every=-1", "--out", "{w}/out"),
      ("track.heads_every must not be negative, got -1",)),
    C("track-heads-short-context", "train", "head tracking asked for with a 3-token context",
      ("train", "--data", "{w}/tiny.txt", "--set", "track.heads_every=5", "model.block_size=3",
       "model.n_layer=1", "model.n_embd=8", "model.n_head=2", "train.max_iters=2",
       "train.device=cpu", "--out", "{w}/out"), ("needs model.block_size of at least 4",)),
    C("track-dynamics-negative", "train", "a negative track.dynamics_every",
      ("train", "--data", "{w}/tiny.txt", "--set", "track.dynamics_every=-1", "--out",
       "{w}/out"), ("track.dynamics_every must not be negative, got -1",)),
    C("train-checkpoint-schedule", "train", "an unknown train.checkpoint_schedule",
      ("train", "--data", "{w}/tiny.txt", "--set", "train.checkpoint_schedule=pythia", "--out",
       "{w}/out"), ("train.checkpoint_schedule must be auto or log, got 'pythia'",)),
    C("train-schedule", "train", "an unknown train.schedule",
      ("train", "--data", "{w}/tiny.txt", "--set", "train.schedule=linear", "--out", "{w}/out"),
      ("train.schedule must be cosine or wsd, got 'linear'",)),
    C("train-decay-frac", "train", "train.decay_frac outside (0, 1]",
      ("train", "--data", "{w}/tiny.txt", "--set", "train.schedule=wsd", "train.decay_frac=0",
       "--out", "{w}/out"), ("train.decay_frac must be in (0, 1]",)),
    C("train-optimizer", "train", "an unknown train.optimizer",
      ("train", "--data", "{w}/tiny.txt", "--set", "train.optimizer=sgd", "--out", "{w}/out"),
      ("train.optimizer must be adamw or muon, got 'sgd'",)),
    C("train-muon-not-gpt", "train", "train.optimizer=muon for an LSTM",
      ("train", "--data", "{w}/tiny.txt", "--set", "model.name=lstm", "train.optimizer=muon",
       "--out", "{w}/out"), ("train.optimizer=muon trains a GPT's block matrices",
                             "use train.optimizer=adamw")),
    C("train-mlp-act", "train", "an unknown model.mlp_act",
      ("train", "--data", "{w}/tiny.txt", "--set", "model.mlp_act=swish", "--out", "{w}/out"),
      ("model.mlp_act must be one of gelu, relu2, got 'swish'",)),
    C("set-unknown-key", "train", "a misspelt --set key",
      ("train", "--data", "{w}/tiny.txt", "--set", "train.max_iter=5"),
      ("did you mean train.max_iters",)),
    C("set-unknown-section", "train", "an unknown --set section",
      ("train", "--data", "{w}/tiny.txt", "--set", "trian.max_iters=5"), ("trian",)),
    C("set-no-section", "train", "a --set key without a section",
      ("train", "--data", "{w}/tiny.txt", "--set", "max_iters=5"), ("section.name",)),
    C("set-no-value", "train", "a --set without =value",
      ("train", "--data", "{w}/tiny.txt", "--set", "train.max_iters"), ("key=value",)),
    C("set-bad-type", "train", "a value of the wrong type",
      ("train", "--data", "{w}/tiny.txt", "--set", "train.max_iters=many"),
      ("train.max_iters must be an integer",)),
    C("set-bad-range", "train", "a value out of range",
      ("train", "--data", "{w}/tiny.txt", "--set", "train.lr=-1"), ("train.lr",)),
    C("set-heads", "train", "heads that do not divide the width",
      ("train", "--data", "{w}/tiny.txt", "--set", "model.n_head=5"), ("divisible",)),
    C("set-track", "train", "a negative tracking interval",
      ("train", "--data", "{w}/tiny.txt", "--set", "track.attention_every=-1"),
      ("track.attention_every must not be negative",)),
    C("set-other-model-key", "train", "a key of another architecture",
      ("train", "--data", "{w}/tiny.txt", "--model", "lstm", "--set", "model.n_head=4"),
      ("unknown config key model.n_head",)),
    C("unknown-model", "train", "an unknown model name",
      ("train", "--data", "{w}/tiny.txt", "--model", "transformerxl"),
      ("unknown model 'transformerxl'",)),
    C("kgram-k", "train", "a k-gram model with k < 1",
      ("train", "--data", "{w}/tiny.txt", "--model", "kgram", "--set", "model.k=0"),
      ("model.k must be at least 1",)),
    C("unknown-preset", "train", "an unknown preset",
      ("train", "--data", "{w}/tiny.txt", "--preset", "nope"), ("unknown preset",)),
    C("config-invalid", "train", "a config file that is not TOML",
      ("train", "--data", "{w}/tiny.txt", "--config", "{w}/bad.toml"), ("not valid TOML",)),
    C("config-missing", "train", "a config file that does not exist",
      ("train", "--data", "{w}/tiny.txt", "--config", "{w}/absent.toml"), ("absent.toml",)),
    C("unknown-option", "train", "an unknown option",
      ("train", "--data", "{w}/tiny.txt", "--bogus"), ("No such option",)),
    # --- train: the run folder
    C("out-is-file", "train", "--out naming a file",
      ("train", "--data", "{w}/tiny.txt", "--out", "{w}/tiny.txt"), ("is a file",)),
    C("out-under-file", "train", "--out inside a file (an unwritable place)",
      ("train", "--data", "{w}/tiny.txt", "--out", "{w}/tiny.txt/run", "--set", *TINY_SETTINGS),
      ("tiny.txt",)),
    C("out-taken", "train", "--out a folder holding other files",
      ("train", "--data", "{w}/tiny.txt", "--out", "{w}/taken"), ("--resume",)),
    C("resume-nothing", "train", "--resume of a folder that is not a run",
      ("train", "--out", "{w}/taken", "--resume"), ("cannot resume",)),
    C("resume-preset", "train", "--resume with --preset",
      ("train", "--out", "{run}", "--resume", "--preset", "shakespeare-char-cpu"), ("--preset",)),
    C("resume-model-change", "train", "--resume changing the model",
      ("train", "--out", "{run}", "--resume", "--set", "model.n_layer=3"), ("[model]",)),
    C("train-second-writer", "train", "--out a folder another process is writing",
      ("train", "--data", "{w}/tiny.txt", "--out", "{w}/busy", "--set", *TINY_SETTINGS),
      ("being written by another process", "pid"), held="{w}/busy"),
    C("resume-second-writer", "train", "--resume of a run another process is writing",
      ("train", "--out", "{run}", "--resume", "--set", "train.max_iters=40"),
      ("being written by another process", "pid"), held="{run}"),
    C("resume-flipped-state", "train", "--resume from a training state with one flipped byte",
      ("train", "--out", "{w}/flippedrun", "--resume", "--set", "train.max_iters=40"),
      ("cannot resume", "train_state.safetensors", "sha256")),
    C("disk-full", "train", "a full disk (the process may write at most 64 KB)",
      ("train", "--data", "{w}/tiny.txt", "--out", "{w}/full", "--set", *TINY_SETTINGS),
      ("File too large",), file_limit=64 * 1024),
    # --- sample
    C("sample-missing-run", "sample", "a run folder that does not exist",
      ("sample", "{w}/no_run", "--prompt", "x"), ("does not exist",)),
    C("sample-no-checkpoints", "sample", "a folder with no checkpoints",
      ("sample", "{w}/taken", "--prompt", "x"), ("holds no checkpoints",)),
    C("sample-wrong-kind", "sample", "a file that is not a checkpoint",
      ("sample", "{run}/config.toml", "--prompt", "x"), ("config.toml",)),
    C("sample-unknown-chars", "sample", "a prompt with characters outside the vocabulary",
      ("sample", "{run}", "--prompt", "Zebra {}"), ("not in the vocabulary",)),
    C("sample-empty-prompt", "sample", "an empty prompt",
      ("sample", "{run}", "--prompt", ""), ("empty",)),
    C("sample-top-p", "sample", "--top-p above 1", ("sample", "{run}", "--top-p", "1.5"),
      ("--top-p",)),
    C("sample-temperature", "sample", "--temperature 0", ("sample", "{run}", "--temperature", "0"),
      ("--temperature",)),
    C("sample-greedy-temperature", "sample", "--greedy with a --temperature it would ignore",
      ("sample", "{run}", "--greedy", "--temperature", "2"),
      ("--greedy always takes the most likely token", "--temperature 2 would have no effect")),
    C("sample-tokens", "sample", "a negative --max-new-tokens",
      ("sample", "{run}", "--max-new-tokens", "-1"), ("max-new-tokens",)),
    C("sample-seed", "sample", "a seed beyond 64 bits", ("sample", "{run}", "--seed", str(2**70)),
      ("--seed",)),
    C("sample-device", "sample", "an unknown device", ("sample", "{run}", "--device", "foo"),
      ("unknown device",)),
    C("sample-sweep", "sample", "a top-p sweep value outside (0, 1]",
      ("sample", "{run}", "--sweep-top-p", "0.5,1.5"), ("outside (0, 1]",)),
    C("sample-out-alone", "sample", "--out without --sweep-top-p",
      ("sample", "{run}", "--out", "{w}/sweep"), ("--sweep-top-p",)),
    C("checkpoint-truncated", "sample", "a truncated model.safetensors",
      ("sample", "{w}/truncated", "--prompt", "A"), ("model.safetensors",)),
    C("checkpoint-pickle", "sample", "a pickle planted as model.safetensors (never run)",
      ("sample", "{w}/pickled", "--prompt", "A"), ("model.safetensors",)),
    C("checkpoint-flipped-byte", "sample", "a model.safetensors with one flipped byte",
      ("sample", "{w}/flipped", "--prompt", "A"), ("model.safetensors", "sha256")),
    C("checkpoint-meta-changed", "sample", "a meta.json changed after it was written",
      ("sample", "{w}/changedmeta", "--prompt", "A"), ("meta.json", "differs")),
    C("checkpoint-meta", "sample", "a meta.json that is not JSON",
      ("sample", "{w}/badmeta", "--prompt", "A"), ("meta.json",)),
    # --- eval, data, matrix, transfer
    C("eval-missing-corpus", "eval", "a corpus file that does not exist",
      ("eval", "{run}", "--data", "{w}/absent.txt"), ("absent.txt",)),
    C("eval-missing-run", "eval", "a run folder that does not exist",
      ("eval", "{w}/no_run", "--data", "shakespeare"), ("does not exist",)),
    C("eval-one-byte", "eval", "a corpus of one byte (too short to hold a val split)",
      ("eval", "{run}", "--data", "{w}/one.txt"),
      ("cannot evaluate on", "(1 byte) is too short to split: the train split would be empty")),
    C("eval-split", "eval", "a split the corpus does not have",
      ("eval", "{run}", "--data", "{w}/tiny.txt", "--split", "test"), ("no split 'test'",)),
    C("data-typo", "data info", "a misspelt corpus name",
      ("data", "info", "shakespear"), ("did you mean 'shakespeare'",)),
    C("stats-unknown", "data stats", "an unknown corpus",
      ("data", "stats", "no-such-corpus", "--out", "{w}/stats"), ("unknown corpus",)),
    C("matrix-unknown", "matrix", "an unknown corpus",
      ("matrix", "--runs", "{run}", "--data", "no-such-corpus", "--out", "{w}/m"),
      ("unknown corpus",)),
    C("matrix-no-checkpoints", "matrix", "a run with no checkpoints",
      ("matrix", "--runs", "{w}/taken", "--data", "{w}/tiny.txt", "--out", "{w}/m"),
      ("no checkpoints",)),
    C("transfer-oov", "transfer", "a target the source model's vocabulary cannot read",
      ("transfer", "--from", "{run}", "--data", "{w}/greek.txt", "--out", "{w}/t"),
      ("outside the vocabulary of", "data.vocab_from", "--max-oov-rate")),
    C("transfer-no-checkpoints", "transfer", "a source run with no checkpoints",
      ("transfer", "--from", "{w}/taken", "--data", "{w}/tiny.txt", "--out", "{w}/t"),
      ("no checkpoints",)),
    # --- probes, compare, study
    C("softmax-domain-typo", "probe softmax", "a prompt whose domain is a misspelt corpus name",
      ("probe", "softmax", "{run}", "--prompts", "{w}/typo_prompts.toml", "--out", "{w}/p"),
      ("domain 'shakespear' is not a corpus name", "did you mean 'shakespeare'")),
    C("study-domain-typo", "study", "a study whose prompt file has a misspelt domain",
      ("study", "{w}/typo_study.toml", "--out", "{w}/s"), ("did you mean 'shakespeare'",)),
    C("softmax-empty-prompts", "probe softmax", "a prompt file with no prompts",
      ("probe", "softmax", "{run}", "--prompts", "{w}/empty.toml", "--out", "{w}/p"),
      ("no prompts",)),
    C("attribution-bad-prompts", "probe attribution", "a prompt file that is not TOML",
      ("probe", "attribution", "{run}", "--prompts", "{w}/bad.toml", "--out", "{w}/p"),
      ("bad.toml",)),
    C("attention-layer", "probe attention", "a layer the model does not have",
      ("probe", "attention", "{run}", "--prompt", "First", "--layer", "5", "--out", "{w}/a"),
      ("layer 5 does not exist",)),
    C("attention-heads", "probe attention", "heads that are not numbers",
      ("probe", "attention", "{run}", "--prompt", "First", "--heads", "0,x", "--out", "{w}/a"),
      ("--heads",)),
    C("lens-no-text", "probe lens", "neither --prompts nor --data",
      ("probe", "lens", "{run}", "--out", "{w}/l"), ("--prompts FILE or --data CORPUS",)),
    C("lens-one-token", "probe lens", "a one-character prompt with no expected character",
      ("probe", "lens", "{run}", "--prompts", "{w}/one_token.toml", "--out", "{w}/l"),
      ("one token with no expected character",)),
    C("lens-oov-corpus", "probe lens", "a corpus the model's vocabulary cannot read",
      ("probe", "lens", "{run}", "--data", "{w}/greek.txt", "--out", "{w}/l"),
      ("outside the vocabulary", "a probe allows 5%", "data.vocab_from")),
    C("lens-windows", "probe lens", "--windows 0",
      ("probe", "lens", "{run}", "--data", "{w}/tiny.txt", "--windows", "0", "--out", "{w}/l"),
      ("--windows",)),
    C("lens-tuned-missing", "probe lens", "--lens tuned on a run with no tuned lens",
      ("probe", "lens", "{run}", "--data", "{w}/tiny.txt", "--lens", "tuned", "--out", "{w}/l"),
      ("has no tuned lens", "lmscope lens train")),
    C("lens-train-oov", "lens train", "a tuned lens trained on text the vocabulary cannot read",
      ("lens", "train", "{run}", "--data", "{w}/greek.txt"),
      ("outside the vocabulary", "a probe allows 5%")),
    C("heads-seq-len-long", "probe heads", "repeated sequences longer than the context",
      ("probe", "heads", "{run}", "--seq-len", "34", "--out", "{w}/h"),
      ("seq_len 34 is longer than the model's context of 32",)),
    C("heads-seq-len-odd", "probe heads", "an odd --seq-len",
      ("probe", "heads", "{run}", "--seq-len", "15", "--out", "{w}/h"), ("must be even",)),
    C("heads-n-sequences", "probe heads", "--n-sequences 0",
      ("probe", "heads", "{run}", "--n-sequences", "0", "--out", "{w}/h"),
      ("at least 1, got 0",)),
    C("dynamics-checkpoints", "probe dynamics", "--checkpoints naming an iteration not kept",
      ("probe", "dynamics", "{run}", "--data", "{w}/tiny.txt", "--checkpoints", "10,15",
       "--out", "{w}/d"), ("has no checkpoint '15': it keeps iterations 10, 20 and final",)),
    C("dynamics-oov-corpus", "probe dynamics", "a corpus the model's vocabulary cannot read",
      ("probe", "dynamics", "{run}", "--data", "{w}/greek.txt", "--out", "{w}/d"),
      ("outside the vocabulary", "a probe allows 5%")),
    C("similarity-one-run", "probe similarity", "one run, nothing to compare it with",
      ("probe", "similarity", "{run}", "--data", "{w}/tiny.txt", "--out", "{w}/s"),
      ("give at least two runs to compare (got 1)",)),
    C("similarity-no-common-iteration", "probe similarity",
      "runs that kept no checkpoint at the same iteration",
      ("probe", "similarity", "{run}", "{w}/lstm", "--data", "{w}/tiny.txt", "--out", "{w}/s"),
      ("kept no checkpoint at a common iteration", "--checkpoints final")),
    C("similarity-tokenizers", "probe similarity", "a char run and a BPE run (different tokens)",
      ("probe", "similarity", "{run}", "{w}/bpe", "--data", "{w}/tiny.txt", "--checkpoints",
       "final", "--out", "{w}/s"), ("do not read the same tokens", "same tokenizer")),
    C("similarity-checkpoints", "probe similarity", "--checkpoints naming an iteration not kept",
      ("probe", "similarity", "{run}", "{run}", "--data", "{w}/tiny.txt", "--checkpoints", "15",
       "--out", "{w}/s"), ("has no checkpoint '15'",)),
    C("attribution-shapley-exact-long", "probe attribution",
      "exact Shapley values for prompts longer than 6 tokens",
      ("probe", "attribution", "{run}", "--prompts", "{w}/long_prompt.toml", "--method",
       "shapley_exact", "--out", "{w}/at"), ("13 tokens would walk", "use shapley_sampling")),
    C("attribution-contrast-oov", "probe attribution", "a --contrast foil outside the vocabulary",
      ("probe", "attribution", "{run}", "--prompts", "{w}/long_prompt.toml", "--contrast", "Ω",
       "--out", "{w}/at"), ("--contrast 'Ω' is not in the vocabulary",)),
    C("attribution-method", "probe attribution", "an unknown --method",
      ("probe", "attribution", "{run}", "--prompts", "{w}/long_prompt.toml", "--method",
       "saliency", "--out", "{w}/at"), ("unknown method 'saliency'", "integrated_gradients")),
    C("attribution-deeplift", "probe attribution", "--method deeplift (not offered, and why)",
      ("probe", "attribution", "{run}", "--prompts", "{w}/long_prompt.toml", "--method",
       "deeplift", "--out", "{w}/at"), ("'deeplift' is not offered", "use integrated_gradients")),
    C("attribution-baseline", "probe attribution", "an unknown --baseline",
      ("probe", "attribution", "{run}", "--prompts", "{w}/long_prompt.toml", "--baseline",
       "first", "--out", "{w}/at"), ("unknown baseline 'first'", "token:C")),
    C("attribution-baseline-token", "probe attribution", "--baseline token:C of several tokens",
      ("probe", "attribution", "{run}", "--prompts", "{w}/long_prompt.toml", "--baseline",
       "token:ee", "--out", "{w}/at"), ("baseline 'token:ee' is 2 tokens",)),
    C("attribution-window", "probe attribution", "an occlusion --window longer than a prompt",
      ("probe", "attribution", "{run}", "--prompts", "{w}/long_prompt.toml", "--method",
       "occlusion", "--window", "40", "--out", "{w}/at"), ("occlusion window of 40 positions",)),
    C("attribution-generate-zero", "probe attribution", "--generate 0",
      ("probe", "attribution", "{run}", "--prompts", "{w}/long_prompt.toml", "--generate", "0",
       "--out", "{w}/at"), ("--generate must be at least 1, got 0",)),
    C("attribution-generate-contrast", "probe attribution", "--generate with --contrast",
      ("probe", "attribution", "{run}", "--prompts", "{w}/long_prompt.toml", "--generate", "2",
       "--contrast", "a", "--out", "{w}/at"), ("--contrast does not apply with --generate",)),
    C("faithfulness-random-orders", "probe faithfulness", "--random-orders 0",
      ("probe", "faithfulness", "{run}", "--prompts", "{w}/long_prompt.toml", "--random-orders",
       "0", "--out", "{w}/f"), ("random orders must be a whole number of at least 1",)),
    C("faithfulness-method", "probe faithfulness", "an unknown --method",
      ("probe", "faithfulness", "{run}", "--prompts", "{w}/long_prompt.toml", "--method",
       "lime", "--out", "{w}/f"), ("unknown method 'lime'",)),
    C("faithfulness-checkpoints", "probe faithfulness", "--checkpoints naming an iteration not kept",
      ("probe", "faithfulness", "{run}", "--prompts", "{w}/long_prompt.toml", "--checkpoints",
       "15", "--out", "{w}/f"), ("has no checkpoint '15'",)),
    C("ablate-method", "probe ablate", "an unknown --method",
      ("probe", "ablate", "{run}", "--data", "{w}/tiny.txt", "--method", "meen", "--out",
       "{w}/a"), ("meen",)),
    C("ablate-no-corpus", "probe ablate", "no --data",
      ("probe", "ablate", "{run}", "--out", "{w}/a"), ("--data",)),
    C("ablate-component", "probe ablate", "a component the model does not have",
      ("probe", "ablate", "{run}", "--data", "{w}/tiny.txt", "--component", "L7 attn",
       "--out", "{w}/a"), ("no component 'L7 attn'", "did you mean")),
    C("ablate-resample-windows", "probe ablate", "resample ablation with one window",
      ("probe", "ablate", "{run}", "--data", "{w}/tiny.txt", "--method", "resample",
       "--windows", "1", "--out", "{w}/a"), ("at least 2 windows",)),
    C("patch-lengths", "probe patch", "clean and corrupt prompts of different lengths",
      ("probe", "patch", "{run}", "--clean", "First", "--corrupt", "Firs", "--target", " ",
       "--out", "{w}/pt"), ("same number of tokens",)),
    C("patch-unknown-char", "probe patch", "a character outside the vocabulary",
      ("probe", "patch", "{run}", "--clean", "First", "--corrupt", "Firét", "--target",
       " ", "--out", "{w}/pt"), ("corrupt prompt",)),
    C("patch-target-tokens", "probe patch", "a target of two characters",
      ("probe", "patch", "{run}", "--clean", "First", "--corrupt", "Furst", "--target", "Sp",
       "--out", "{w}/pt"), ("2 tokens", "give one token")),
    C("patch-same-foil", "probe patch", "a foil equal to the target",
      ("probe", "patch", "{run}", "--clean", "First", "--corrupt", "Furst", "--target", " ",
       "--foil", " ", "--out", "{w}/pt"), ("the same token",)),
    C("patch-too-long", "probe patch", "prompts longer than the context",
      ("probe", "patch", "{run}", "--clean", "F" * 40, "--corrupt", "C" * 40, "--target",
       " ", "--out", "{w}/pt"), ("more than the model's context of 32",)),
    C("generation-samples", "probe generation", "--num-samples 0",
      ("probe", "generation", "{run}", "--num-samples", "0", "--out", "{w}/g"),
      ("--num-samples",)),
    C("compare-out-users-file", "compare", "--out a folder holding a user's file (compare.md)",
      ("compare", "{run}", "--out", "{w}/mine"),
      ("holds files lmscope did not write (compare.md)", "choose another --out")),
    C("compare-out-earlier", "compare", "--out holding an earlier command's outputs, no --force",
      ("compare", "{run}", "--out", "{w}/earlier"),
      ("outputs of an earlier `lmscope compare`", "add --force")),
    C("compare-not-a-run", "compare", "a folder that is not a run",
      ("compare", "{w}/taken", "--out", "{w}/c"), ("no metrics.jsonl",)),
    C("report-not-a-run", "report", "a folder holding no run, study or lmscope output",
      ("report", "{w}/taken"), ("neither a run folder",)),
    C("study-missing", "study", "a study file that does not exist",
      ("study", "{w}/missing.toml", "--out", "{w}/s"), ("does not exist",)),
    C("study-seeds", "study", "--seeds that are not numbers",
      ("study", "{w}/missing.toml", "--seeds", "a,b", "--out", "{w}/s"), ("--seeds",)),
    C("study-second-writer", "study", "--out a study folder another process is writing",
      ("study", "{w}/stats_study.toml", "--out", "{w}/busy_study"),
      ("being written by another process", "pid"), held="{w}/busy_study"),
    C("study-similarity-one-run", "study", "the similarity step in a study of one run",
      ("study", "{w}/one_run_study.toml", "--out", "{w}/s"),
      ("the similarity step compares runs with each other and this study trains one",)),
    C("study-faithfulness-methods", "study", "[faithfulness] methods with one not offered",
      ("study", "{w}/faithfulness_study.toml", "--out", "{w}/s"),
      ("[faithfulness] method 'deeplift' is not offered",)),
    C("study-jobs-zero", "study", "--jobs 0",
      ("study", "{w}/faithfulness_study.toml", "--jobs", "0", "--out", "{w}/s"),
      ("--jobs must be a whole number of at least 1, or auto, got 0",)),
    C("study-jobs-word", "study", "--jobs that is neither a number nor auto",
      ("study", "{w}/faithfulness_study.toml", "--jobs", "many", "--out", "{w}/s"),
      ("--jobs must be a whole number of at least 1, or auto, got 'many'",)),
    C("study-address-local", "study", "--address without --executor ray",
      ("study", "{w}/study.toml", "--address", "auto", "--out", "{w}/s"),
      ("--address is the Ray cluster's: give it with --executor ray",)),
    C("study-ray-missing", "study", "--executor ray where Ray is not installed",
      ("study", "{w}/stats_study.toml", "--executor", "ray", "--out", "{w}/s"),
      ("--executor ray needs Ray, which is not installed", "pip install 'lmscope[ray]'"),
      hidden="ray"),
    C("study-ray-no-cluster", "study", "--address of no Ray cluster",
      ("study", "{w}/stats_study.toml", "--executor", "ray", "--address", "127.0.0.1:1",
       "--out", "{w}/s"), ("no Ray cluster at 127.0.0.1:1", "ray start --head")),
    C("study-processes-per-run", "study", "[study] processes_per_run = 0",
      ("study", "{w}/processes_study.toml", "--out", "{w}/s"),
      ("[study] processes_per_run must be a whole number of at least 1",)),
    C("study-figures", "study", "[study] figures that is neither all nor report",
      ("study", "{w}/stats_study.toml", "--set", "study.figures=some", "--out", "{w}/s"),
      ("[study] figures must be one of 'all', 'report', got 'some'",)),
    C("study-extends-missing", "study", "a study file extending a file that does not exist",
      ("study", "{w}/extends_missing.toml", "--out", "{w}/s"),
      ("extends nowhere.toml, which is not a file",)),
    C("study-extends-itself", "study", "study files extending each other",
      ("study", "{w}/extends_a.toml", "--out", "{w}/s"),
      ("extends extends_a.toml, which extends it in turn",)),
    C("study-unknown-table", "study", "a study file with an unknown table",
      ("study", "{w}/study.toml", "--out", "{w}/s"), ("unknown table [plots]",)),
    C("study-set-unknown-table", "study", "--set naming a table no study has",
      ("study", "{w}/stats_study.toml", "--set", "trian.max_iters=5", "--out", "{w}/s"),
      ("--set trian.max_iters=5: unknown table [trian]", "did you mean train?")),
    C("study-set-unknown-key", "study", "--set naming a key the table does not have",
      ("study", "{w}/stats_study.toml", "--set", "train.max_iter=5", "--out", "{w}/s"),
      ("max_iter", "did you mean train.max_iters?")),
    C("study-set-corpus", "study", "--set into a [corpus.NAME] table",
      ("study", "{w}/stats_study.toml", "--set", "corpus.x=5", "--out", "{w}/s"),
      ("not a table of settings", "edit the study file")),
    C("study-ablate-method", "study", "a study whose [ablate] names an unknown method",
      ("study", "{w}/ablation_study.toml", "--out", "{w}/s"),
      ("unknown ablation method 'meen'", "did you mean mean")),
    # --- export
    C("export-lstm", "export", "a model GPT-2 cannot represent (an LSTM)",
      ("export", "{w}/lstm", "--format", "hf", "--out", "{w}/hf"),
      ("'lstm' model", "exports GPT models with")),
    C("export-rmsnorm", "export", "a GPT with RMSNorm",
      ("export", "{w}/rmsnorm", "--format", "hf", "--out", "{w}/hf"), ("model.norm=rmsnorm",)),
    C("export-post-norm", "export", "a post-norm GPT",
      ("export", "{w}/postnorm", "--format", "hf", "--out", "{w}/hf"),
      ("model.norm_position=post",)),
    C("export-rotary", "export", "a GPT with rotary positions",
      ("export", "{w}/rotary", "--format", "hf", "--out", "{w}/hf"), ("model.pos_emb=rotary",)),
    C("export-attn-only", "export", "an attention-only GPT (no MLPs)",
      ("export", "{w}/attn_only", "--format", "hf", "--out", "{w}/hf"),
      ("model.attn_only=true",)),
    C("export-format", "export", "an unknown --format",
      ("export", "{run}", "--format", "gguf", "--out", "{w}/hf"), ("--format",)),
    C("export-out-taken", "export", "--out a folder holding other files",
      ("export", "{run}", "--format", "hf", "--out", "{w}/taken"), ("--force",)),
    C("export-force-not-export", "export", "--force on a folder that is not an earlier export",
      ("export", "{run}", "--format", "hf", "--out", "{w}/taken", "--force"),
      ("not an earlier export",)),
    C("export-out-is-file", "export", "--out naming a file",
      ("export", "{run}", "--format", "hf", "--out", "{w}/tiny.txt"), ("is a file",)),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_run):
    """Bad files, a folder that is not a run, and broken copies of a checkpoint."""
    w = tmp_path_factory.mktemp("bad_inputs")
    (w / "tiny.txt").write_text(TINY_TEXT, encoding="utf-8")
    (w / "empty.txt").write_text("")
    (w / "short.txt").write_text("too short\n")
    (w / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 500)
    (w / "binary.bin").write_bytes(bytes(range(256)) * 100)
    (w / "nothing").mkdir()
    (w / "bad.toml").write_text("[train\nmax_iters = 3")
    (w / "empty.toml").write_text("")
    (w / "prompts.toml").write_text(PROMPTS)
    (w / "one.txt").write_text("x")
    (w / "mine").mkdir()
    (w / "mine" / "compare.md").write_text("my notes")
    (w / "earlier").mkdir()
    (w / "earlier" / "compare.md").write_text("# Run comparison\n")
    (w / "earlier" / ".lmscope-outputs.json").write_text(
        '{"command": "compare", "files": ["compare.md"]}')
    (w / "greek.txt").write_text("αβγδε ζηθ ικλμν ξοπ ρστυφ χψω\n" * 200, encoding="utf-8")
    (w / "ablation_study.toml").write_text(f'[study]\ncorpora = ["{w / "tiny.txt"}"]\n'
                                           'steps = ["train", "ablate"]\n'
                                           '[ablate]\nmethod = "meen"\n')
    (w / "one_token.toml").write_text('[[prompt]]\ntext = "F"\n')
    (w / "long_prompt.toml").write_text('[[prompt]]\ntext = "First Citizen"\n')
    (w / "typo_prompts.toml").write_text('[[prompt]]\ntext = "First"\ndomain = "shakespear"\n')
    (w / "typo_study.toml").write_text(f'[study]\ncorpora = ["{w / "tiny.txt"}"]\n'
                                       'prompts = "typo_prompts.toml"\nsteps = ["train", "softmax"]\n')
    (w / "study.toml").write_text('[study]\ncorpora = ["shakespeare"]\n[plots]\nx = 1\n')
    (w / "faithfulness_study.toml").write_text(
        '[study]\ncorpora = ["shakespeare"]\n[faithfulness]\nmethods = ["deeplift"]\n')
    (w / "one_run_study.toml").write_text(f'[study]\ncorpora = ["{w / "tiny.txt"}"]\n'
                                          'steps = ["train", "similarity"]\n')
    (w / "taken").mkdir()
    (w / "taken" / "notes.txt").write_text("mine")
    final = tiny_run / "checkpoints" / "final"
    for name in ("truncated", "pickled", "badmeta", "flipped", "changedmeta"):
        shutil.copytree(final, w / name)
    _flip_last_byte(w / "flipped" / "model.safetensors")
    meta = (w / "changedmeta" / "meta.json").read_text(encoding="utf-8")
    (w / "changedmeta" / "meta.json").write_text(meta.replace('"iter": 30', '"iter": 31'))
    shutil.copytree(tiny_run, w / "flippedrun")
    _flip_last_byte(w / "flippedrun" / "checkpoints" / "last" / "train_state.safetensors")
    (w / "stats_study.toml").write_text(f'[study]\ncorpora = ["{w / "tiny.txt"}"]\n'
                                        'steps = ["stats"]\n')
    (w / "extends_missing.toml").write_text('extends = "nowhere.toml"\n')
    (w / "processes_study.toml").write_text(f'[study]\ncorpora = ["{w / "tiny.txt"}"]\n'
                                            'processes_per_run = 0\n')
    (w / "extends_a.toml").write_text('extends = "extends_b.toml"\n')
    (w / "extends_b.toml").write_text('extends = "extends_a.toml"\n')
    weights = (w / "truncated" / "model.safetensors").read_bytes()
    (w / "truncated" / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    sentinel = w / "pickle_ran"
    payload = pickle.dumps(_Planted(str(sentinel)))
    (w / "pickled" / "model.safetensors").write_bytes(payload)
    (w / "badmeta" / "meta.json").write_text("{not json")
    tiny_checkpoint(w / "lstm", model="lstm")  # models `export --format hf` refuses
    tiny_checkpoint(w / "rmsnorm", norm="rmsnorm")
    tiny_checkpoint(w / "postnorm", norm_position="post")
    tiny_checkpoint(w / "rotary", pos_emb="rotary")
    tiny_checkpoint(w / "attn_only", attn_only=True)
    tiny_checkpoint(w / "bpe", BPETokenizer.train([TINY_TEXT], 300))
    return w


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # tensor data: the file still parses, its sha256 differs
    path.write_bytes(bytes(data))


class _Planted:
    """Unpickling this would create a file: proof that a loader executed the pickle."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _snapshot(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def _folders(*roots: Path) -> set[str]:
    return {str(p) for root in roots for p in root.rglob("*") if p.is_dir()}


_seen: dict[str, str] = {}  # case id -> the error line, for docs/errors.md


def _in_process(args: list[str]) -> subprocess.CompletedProcess:
    """`lmscope ARGS` through the command line's own entry point, in this process (a second
    each faster than a new Python): any exception other than the clean exit fails the test."""
    from lmscope.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, world, tiny_run, monkeypatch):
    args = [a.replace("{w}", str(world)).replace("{run}", str(tiny_run)) for a in case.args]
    # another writer: its lock (flock) conflicts with the command's even in this one process
    holder = FolderLock(case.held.replace("{w}", str(world)).replace("{run}", str(tiny_run))) \
        if case.held else None
    with holder or contextlib.nullcontext():
        before = _snapshot(world, tiny_run)
        folders_before = _folders(world, tiny_run)
        monkeypatch.chdir(world)
        if case.hidden:  # `import ray` raises ImportError, as where it is not installed
            monkeypatch.setitem(sys.modules, case.hidden, None)
        if case.file_limit:  # a full disk: a process whose writes past the limit fail with EFBIG
            def limit():
                resource.setrlimit(resource.RLIMIT_FSIZE, (case.file_limit, case.file_limit))

            result = subprocess.run([sys.executable, "-m", "lmscope", *args], capture_output=True,
                                    text=True, timeout=HANG_TIMEOUT, preexec_fn=limit)
        else:
            result = _in_process(args)
        assert_clean_error(result, *case.expect)
        after = _snapshot(world, tiny_run)
        assert after == before  # nothing changed, lost or left behind
        assert _folders(world, tiny_run) == folders_before
        assert not (world / "pickle_ran").exists()
    line = result.stderr.strip().replace(str(world), "DIR").replace(str(tiny_run), "RUN")
    # the holder of a lock differs from run to run: the document shows its shape
    _seen[case.id] = re.sub(r"pid \d+ on host \S+, since [^)]+", "pid PID on host HOST, since TIME",
                            line)


def test_the_document_lists_every_case():
    if os.environ.get("LMSCOPE_WRITE_ERRORS_DOC"):
        assert len(_seen) == len(CASES), "run the whole module in one process (-n 0) to write the document"
        _write_doc()
    text = DOC.read_text(encoding="utf-8")
    missing = [c.id for c in CASES if f"`{c.id}`" not in text]
    assert not missing, f"docs/errors.md lacks {missing}; regenerate it (see this module)"
    assert len(CASES) >= 30


def _write_doc() -> None:
    rows = ["| case | command | bad input | what the user sees (exit code 1 or 2) |",
            "|---|---|---|---|"]
    for c in CASES:
        shown = " ".join(a.replace("{w}", "DIR").replace("{run}", "RUN") for a in c.args[:8])
        cell = _seen[c.id].replace("|", "\\|")
        rows.append(f"| `{c.id}` | `lmscope {shown}{' ...' if len(c.args) > 8 else ''}` | "
                    f"{c.bad} | {cell} |")
    DOC.write_text(
        "# Bad input and what lmscope says\n\n"
        "Every row is a case of `tests/test_errors.py`, run in CI: the command gets one `error:`\n"
        "line on stderr, a non-zero exit code, no traceback, and every file that was on disk\n"
        "before (the bad files, a trained run) is unchanged after. DIR is the test's folder of\n"
        "bad files, RUN a small trained run. Regenerate this page with\n"
        "`LMSCOPE_WRITE_ERRORS_DOC=1 pytest -n 0 tests/test_errors.py`.\n\n"
        f"{len(CASES)} cases.\n\n" + "\n".join(rows) + "\n", encoding="utf-8")
