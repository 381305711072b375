"""Attention-head detectors, induction losses and the in-context-learning score of a model.

Head detectors (GPT only). The model reads `n_sequences` sequences x = [r, r]: r is L random
tokens, drawn uniformly with replacement by torch.Generator().manual_seed(seed) from the
vocabulary without the `exclude` ids (the tokenizer's unknown id), and repeated once, so T = 2L
(`seq_len`, by default the largest even length <= the context length). This is the probe of
Olsson et al. (2022, "In-context Learning and Induction Heads", transformer-circuits.pub: the
"prefix matching" score on repeated random tokens) and of TransformerLens's induction tests.
With A[b, h, q, k] a layer's attention probabilities (`blocks.L.attn.hook_pattern`; each row
sums to 1 over keys k <= q), each head gets four scores in [0, 1], each a mean over the pairs
(sequence b, query q) that have a target key, pooled over sequences:

    previous_token   A[q, q-1], over queries q >= 1 (all but the first)
    duplicate_token  sum of A[q, k] over the earlier keys k < q holding the same token as q
                     (x_k = x_q), over queries that have one (every query of the second half;
                     first-half queries only where r repeats a token)
    induction        A[q, q - L + 1], over the queries q = L .. 2L-1 of the second half: the key
                     just after the earlier copy of the current token (Olsson's prefix matching)
    first_token      A[q, 0], over queries q >= 1: the attention sink (query 0 has no choice)

Relation to TransformerLens (transformer_lens/head_detector.py, `detect_head`): its default
score ("mul") is sum(A * D) / sum(A) for a 0/1 detection pattern D over one sequence, and
sum(A) = T (one per query row), so it averages over all T queries, queries without a target
counting 0. Ours averages only over the queries that have a target, so for one sequence
TL = (queries with a target / T) x ours, for any A: previous token TL = (T-1)/T x ours, and
duplicate token the same with its own count. The two agree in ordering and reach their maxima
for the same patterns, the one-hot pattern A = D (one key per query where D has one): there
ours is 1 and TL's is that fraction (1 - 1/T for previous-token, 1/2 for induction). Their
induction pattern marks the key after *every* earlier copy of the current token, in both
halves; ours marks only the one after the copy L back, so the two agree (up to the factor
L / T = 1/2) when r repeats no token. TL has no first-token detector (its `exclude_bos` drops
key 0 instead); its "abs" measure compares whole patterns and is not used here. TL averages a
list of sequences per sequence; ours pools queries (the same for every detector but duplicate
token, whose count of queries varies by sequence).

Induction losses (every architecture: only logits): on the same sequences, the mean next-token
loss (nats) of the first half, predictions at t = 0 .. L-2 (of x_1 .. x_{L-1}), and of the
second half, t = L .. 2L-2 (of x_{L+1} .. x_{2L-1}); the prediction at t = L-1 of the start of
the repeat is in neither. The second half can be predicted by copying, the first cannot: a model
with working induction heads has a second-half loss far below the first, which stays near the
uniform loss, log(number of tokens drawn from).

In-context-learning score (every architecture), after Olsson et al. (2022), who take the loss of
the 500th token of a 512-token context minus the loss of the 50th, averaged over the data set.
Our contexts are short (32 to 256 tokens) and the windows few (16 by default), so one position
each would be noisy; we keep Olsson's two places in the context (about a tenth in, and the end)
and average over a band of w = max(1, n // 10) predictions at each, n = length - 1 being the
predictions a window holds (prediction t is of token t+1 from the t+1 tokens before it):

    early   predictions t = s .. s+w-1, s = max(0, n // 10 - w // 2)  (centred a tenth in)
    late    the last w predictions, t = n-w .. n-1
    icl     mean loss over late - mean loss over early (nats), over every window's known targets

For a context of 32 (n = 31): early 2..4, late 28..30; for 512: early 26..76 (around Olsson's
50th), late 460..510 (around his 500th). Negative: the model predicts better with more context.

`head_scores`, `induction_loss` and `in_context_score` work on a bare model (no files, no
checkpoints): analysis/heads.py runs them over a run's checkpoints, train/tracking.py during
training (track.heads_every). The model runs in eval mode without gradients, through its hook
points (`model(ids, hooks=Hooks(cache=[...]))`, models/hooks.py) for the patterns, and draws no
random numbers from torch's global generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmscope.errors import LmscopeError
from lmscope.models.hooks import Hooks, run_batches

DETECTORS = ("previous_token", "duplicate_token", "induction", "first_token")


def pattern_name(layer: int) -> str:
    """The hook point of a GPT layer's attention probabilities."""
    return f"blocks.{layer}.attn.hook_pattern"


def has_heads(model) -> bool:
    """Whether the model has attention patterns to score (a GPT)."""
    return pattern_name(0) in model.hook_names()


def default_seq_len(context_length: int) -> int:
    """The largest even length that fits the context."""
    return context_length - context_length % 2


def check_seq_len(model, seq_len: int | None) -> int:
    """`seq_len` (None: the default for the model's context), checked: even, 4 .. context."""
    context = model.context_length
    seq_len = default_seq_len(context) if seq_len is None else seq_len
    if seq_len > context:
        raise LmscopeError(f"seq_len {seq_len} is longer than the model's context of {context} "
                           "tokens: give at most that (or leave it out)")
    if seq_len < 4 or seq_len % 2:
        raise LmscopeError(f"seq_len must be even and at least 4 (two copies of at least 2 "
                           f"random tokens), got {seq_len}"
                           + (f" (the model's context is {context})" if context < 4 else ""))
    return seq_len


def allowed_ids(vocab_size: int, exclude=()) -> torch.Tensor:
    """The token ids random sequences are drawn from: range(vocab_size) without `exclude`."""
    excluded = set(exclude)
    allowed = torch.tensor([i for i in range(vocab_size) if i not in excluded], dtype=torch.long)
    if allowed.numel() < 2:
        raise LmscopeError(f"need at least 2 token ids to draw random sequences from, the "
                           f"vocabulary of {vocab_size} without {sorted(excluded)} has "
                           f"{allowed.numel()}")
    return allowed


def repeated_random_tokens(vocab_size: int, seq_len: int, n_sequences: int, *, seed: int = 0,
                           exclude=()) -> torch.Tensor:
    """(n_sequences, seq_len) ids [r, r]: r of seq_len // 2 tokens drawn uniformly with
    replacement from range(vocab_size) without `exclude`, by torch.Generator(seed)."""
    if n_sequences < 1:
        raise LmscopeError(f"n_sequences must be at least 1, got {n_sequences}")
    allowed = allowed_ids(vocab_size, exclude)
    generator = torch.Generator().manual_seed(seed)
    half = allowed[torch.randint(0, allowed.numel(), (n_sequences, seq_len // 2),
                                 generator=generator)]
    return torch.cat([half, half], dim=1)


def pattern_scores(patterns, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four detectors' scores, {detector: (layer, head) float64 on the CPU}, from each
    layer's attention (batch, head, query, key) on ids (batch, T) = [r, r] (T even)."""
    ids = torch.as_tensor(ids).cpu()
    T = ids.size(1)
    L = T // 2
    queries = torch.arange(L, T)
    earlier = torch.ones(T, T, dtype=torch.bool).tril(-1)  # k < q
    same = (ids[:, :, None] == ids[:, None, :]) & earlier  # (batch, q, k)
    has_dup = same.any(-1)  # (batch, q)
    out: dict[str, list[torch.Tensor]] = {d: [] for d in DETECTORS}
    for a in patterns:
        a = a.detach().to("cpu", torch.float64)  # (batch, head, q, k)
        out["previous_token"].append(a.diagonal(offset=-1, dim1=-2, dim2=-1).mean((0, 2)))
        dup_mass = (a * same[:, None]).sum(-1)  # (batch, head, q)
        out["duplicate_token"].append((dup_mass * has_dup[:, None]).sum((0, 2))
                                      / has_dup.sum().clamp_min(1))
        out["induction"].append(a[:, :, queries, queries - L + 1].mean((0, 2)))
        out["first_token"].append(a[:, :, 1:, 0].mean((0, 2)))
    return {d: torch.stack(v) for d, v in out.items()}


@dataclass
class InductionLoss:
    """Mean next-token loss (nats) on the two halves of repeated random sequences."""

    first_half: float  # predictions t = 0 .. L-2: nothing to copy from
    second_half: float  # predictions t = L .. 2L-2: the tokens L back give the answer
    uniform: float  # log(number of tokens drawn from): a model that knows nothing

    @property
    def gap(self) -> float:
        """first_half - second_half: how much the repeat helps (positive with induction)."""
        return self.first_half - self.second_half


def halves_loss(logits: torch.Tensor, ids: torch.Tensor, n_allowed: int) -> InductionLoss:
    """The induction losses from a model's logits (batch, T, vocab) on ids [r, r] drawn from
    `n_allowed` token ids."""
    L = ids.size(1) // 2
    logp = logits.detach().to("cpu", torch.float64).log_softmax(-1)
    nll = -logp[:, :-1].gather(-1, ids[:, 1:, None].cpu())[..., 0]  # (batch, T-1): of x_{t+1}
    return InductionLoss(float(nll[:, :L - 1].mean()), float(nll[:, L:2 * L - 1].mean()),
                         math.log(n_allowed))


@torch.no_grad()
def forward_cached(model, ids: torch.Tensor, names=(), *, batch_size: int = 64):
    """(logits (batch, time, vocab), {name: activation}) of a model in eval mode on `ids`, run
    `batch_size` rows at a time; without `names` the model runs without hooks (the LSTM's hooked
    path runs position by position). The model's training mode is restored."""
    logits, used = run_batches(model, ids, lambda: Hooks(cache=names) if names else None,
                               batch_size)
    return logits, {n: torch.cat([h.cache[n] for h in used]) for n in names}


def repeated_run(model, ids: torch.Tensor, *, n_allowed: int, heads: bool,
                 batch_size: int = 64):
    """(scores or None, InductionLoss) from one pass over repeated random sequences `ids`
    [r, r] drawn from `n_allowed` token ids; the scores only with `heads` (a GPT)."""
    if not heads:
        return None, halves_loss(forward_cached(model, ids, batch_size=batch_size)[0], ids,
                                 n_allowed)
    names = [pattern_name(layer) for layer in range(model.config.n_layer)]
    logits, cache = forward_cached(model, ids, names, batch_size=batch_size)
    return pattern_scores([cache[n] for n in names], ids), halves_loss(logits, ids, n_allowed)


def _repeated(model, *, seq_len, n_sequences, seed, batch_size, exclude, heads: bool):
    seq_len = check_seq_len(model, seq_len)
    ids = repeated_random_tokens(model.config.vocab_size, seq_len, n_sequences, seed=seed,
                                 exclude=exclude)
    n_allowed = allowed_ids(model.config.vocab_size, exclude).numel()
    return repeated_run(model, ids, n_allowed=n_allowed, heads=heads, batch_size=batch_size)


def head_scores(model, *, seq_len: int | None = None, n_sequences: int = 8, seed: int = 0,
                batch_size: int = 64, exclude=()) -> dict[str, torch.Tensor]:
    """{detector: (n_layer, n_head) scores in [0, 1]} of a GPT on repeated random tokens (the
    module docstring defines them); `exclude`: token ids never drawn (the unknown id)."""
    if not has_heads(model):
        raise LmscopeError(f"{type(model).__name__} has no attention heads to score (no "
                           f"{pattern_name(0)}): the head detectors are for gpt models")
    return _repeated(model, seq_len=seq_len, n_sequences=n_sequences, seed=seed,
                     batch_size=batch_size, exclude=exclude, heads=True)[0]


def induction_loss(model, *, seq_len: int | None = None, n_sequences: int = 8, seed: int = 0,
                   batch_size: int = 64, exclude=()) -> InductionLoss:
    """The mean loss on the first and second halves of the sequences `head_scores` reads (the
    same ones for the same arguments); any architecture."""
    return _repeated(model, seq_len=seq_len, n_sequences=n_sequences, seed=seed,
                     batch_size=batch_size, exclude=exclude, heads=False)[1]


def icl_positions(length: int) -> tuple[range, range]:
    """(early, late): the predictions (t predicts token t+1) the ICL score compares in a window
    of `length` tokens."""
    if length < 4:
        raise LmscopeError(f"the in-context-learning score needs windows of at least 4 tokens, "
                           f"got {length}")
    n = length - 1
    w = max(1, n // 10)
    start = max(0, n // 10 - w // 2)
    return range(start, start + w), range(n - w, n)


def icl_losses(model, windows: torch.Tensor, mask: torch.Tensor | None = None, *,
               batch_size: int = 64) -> tuple[float, float]:
    """(early, late) mean losses in nats over the known targets (`mask` (n, length-1), True
    where the next token is known; None: all) of `icl_positions`; NaN where a band has none."""
    windows = torch.as_tensor(windows, dtype=torch.long)
    if windows.dim() != 2:
        raise LmscopeError(f"windows must be (n, length) token ids, got shape "
                           f"{tuple(windows.shape)}")
    early, late = icl_positions(windows.size(1))
    if windows.size(1) > model.context_length:
        raise LmscopeError(f"windows of {windows.size(1)} tokens: give at most "
                           f"{model.context_length} (the model's context length)")
    mask = torch.ones(windows.size(0), windows.size(1) - 1, dtype=torch.bool) if mask is None \
        else torch.as_tensor(mask, dtype=torch.bool).cpu()
    if mask.shape != (windows.size(0), windows.size(1) - 1):
        raise LmscopeError(f"the target mask must be (n, length - 1) = "
                           f"{(windows.size(0), windows.size(1) - 1)}, got {tuple(mask.shape)}")
    logits = forward_cached(model, windows, batch_size=batch_size)[0]
    logp = logits.to("cpu", torch.float64).log_softmax(-1)
    nll = -logp[:, :-1].gather(-1, windows[:, 1:, None])[..., 0]

    def band(positions: range) -> float:
        m = mask[:, positions.start:positions.stop]
        return float(nll[:, positions.start:positions.stop][m].mean()) if m.any() else math.nan

    return band(early), band(late)


def in_context_score(model, windows: torch.Tensor, mask: torch.Tensor | None = None, *,
                     batch_size: int = 64) -> float:
    """Late minus early mean loss (nats) on natural-text windows (n, length): negative when
    the model uses its context (the module docstring defines the positions)."""
    early, late = icl_losses(model, windows, mask, batch_size=batch_size)
    return late - early
