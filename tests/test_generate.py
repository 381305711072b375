import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmscope.data.tokenizers import CharTokenizer
from lmscope.errors import LmscopeError
from lmscope.generate import SamplingConfig, filter_logits, generate, generate_ids
from lmscope.models.gpt import GPT, GPTConfig


def brute_force_nucleus(probs: list[float], p: float) -> set[int]:
    """The smallest set of tokens, most likely first, whose total probability reaches p."""
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for i in order:
        kept.add(i)
        mass += probs[i]
        if mass >= p:
            break
    return kept


def _well_separated(xs: list[float]) -> bool:
    """No near-ties, which make "the smallest set" ambiguous up to float rounding."""
    ys = sorted(xs)
    return all(b - a > 1e-3 for a, b in zip(ys, ys[1:], strict=False))


@settings(max_examples=300, deadline=None)
@given(logits=st.lists(st.floats(-8, 8), min_size=1, max_size=12).filter(_well_separated),
       p=st.floats(0.01, 1.0))
def test_top_p_keeps_the_smallest_set_reaching_p(logits, p):
    t = torch.tensor(logits, dtype=torch.float64)
    kept = set(torch.nonzero(filter_logits(t, top_p=p) > float("-inf")).flatten().tolist())
    probs = t.softmax(-1).tolist()
    expected = brute_force_nucleus(probs, p)
    if kept != expected:  # only float rounding exactly at the boundary may differ
        assert abs(sum(probs[i] for i in expected) - p) < 1e-9, (kept, expected)
    assert kept


@settings(max_examples=300, deadline=None)
@given(logits=st.lists(st.floats(-8, 8), min_size=1, max_size=12), p=st.floats(0.01, 1.0))
def test_top_p_set_is_a_minimal_top_set_even_with_ties(logits, p):
    t = torch.tensor(logits, dtype=torch.float64)
    keep = filter_logits(t, top_p=p) > float("-inf")
    probs = t.softmax(-1)
    kept, dropped = probs[keep], probs[~keep]
    assert kept.numel() >= 1
    if dropped.numel():
        assert kept.min() >= dropped.max()  # the most likely tokens are the ones kept
        assert kept.sum() >= p - 1e-9  # together they reach p ...
    assert kept.sum() - kept.min() < p + 1e-9  # ... and dropping the least likely would not


# Logits with ties (values drawn from a small pool) and -inf entries (tokens already ruled out,
# e.g. by top-k), at least one finite; in the dtypes sampling uses.
_TIE_POOL = [-3.0, -1.0, 0.0, 0.5, 1.0, 2.5]
_logit = st.one_of(st.floats(-8, 8, width=32), st.sampled_from(_TIE_POOL),
                   st.just(float("-inf")))
_rows = st.lists(_logit, min_size=1, max_size=12).filter(lambda xs: any(map(math.isfinite, xs)))
# p down to the smallest positive float: below ~7e-46 it rounds to 0 in float32 (test below).
_top_p = st.one_of(st.floats(5e-324, 1.0), st.sampled_from([1.0, 0.5, 1e-9, 1e-46]))
_dtype = st.sampled_from([torch.float32, torch.float64])
TOL = 1e-6  # float sums of probabilities (float32 cumsum in filter_logits)


def brute_force_nucleus_size(sorted_probs: list[float], p: float) -> int:
    """How many of the most likely tokens it takes for their mass to reach p."""
    mass = 0.0
    for n, q in enumerate(sorted_probs, start=1):
        mass += q
        if mass >= p:
            return n
    return len(sorted_probs)


@settings(max_examples=500, deadline=None)
@given(logits=_rows, p=_top_p, dtype=_dtype)
def test_top_p_agrees_with_brute_force_with_ties_and_ruled_out_tokens(logits, p, dtype):
    t = torch.tensor(logits, dtype=dtype)
    out = filter_logits(t, top_p=p)
    keep = out > float("-inf")
    finite = torch.isfinite(t)
    probs = t.double().softmax(-1)  # exact reference probabilities of the same logits
    assert torch.equal(out[keep], t[keep])  # kept logits are untouched
    assert not torch.any(keep & ~finite)  # ruled-out tokens stay out
    n = int(keep.sum())
    assert n >= 1
    kept, dropped = probs[keep], probs[finite & ~keep]
    if dropped.numel():
        assert kept.min() >= dropped.max()  # the most likely tokens are the ones kept
    assert kept.sum() >= p - TOL  # they reach p ...
    assert kept.sum() - kept.min() < p + TOL  # ... and without the least likely they would not
    # The brute-force nucleus: as many tokens, and (ties aside) the same probabilities.
    ranked = sorted(probs[finite].tolist(), reverse=True)
    assert sorted(kept.tolist(), reverse=True) == ranked[:n]  # multiset: ties may swap members
    expected = brute_force_nucleus_size(ranked, p)
    if n != expected:  # only where the running mass lies within float rounding of p
        masses = torch.tensor(ranked, dtype=torch.float64).cumsum(0)
        for k in range(min(n, expected), max(n, expected)):
            assert abs(float(masses[k - 1]) - p) < TOL, (n, expected, ranked, p)


@settings(max_examples=200, deadline=None)
@given(logits=_rows, dtype=_dtype)
def test_top_p_of_one_keeps_every_finite_token(logits, dtype):
    t = torch.tensor(logits, dtype=dtype)
    assert torch.equal(filter_logits(t, top_p=1.0), t)
    assert torch.equal(filter_logits(t, top_p=None), t)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), p=_top_p, dtype=_dtype)
def test_top_p_filters_each_batch_row_on_its_own(data, p, dtype):
    size = data.draw(st.integers(1, 12))
    row = st.lists(_logit, min_size=size, max_size=size).filter(
        lambda xs: any(map(math.isfinite, xs)))
    rows = data.draw(st.lists(row, min_size=1, max_size=5))
    batch = torch.tensor(rows, dtype=dtype)
    out = filter_logits(batch, top_p=p)
    for i in range(len(rows)):
        assert torch.equal(out[i], filter_logits(batch[i], top_p=p))
    stacked = filter_logits(batch[None], top_p=p)[0]  # any leading dims: (1, batch, vocab)
    assert torch.equal(stacked, out)


def test_a_top_p_below_float32_resolution_still_keeps_the_most_likely_token():
    SamplingConfig(top_p=1e-46).validate()  # accepted as a valid setting
    kept = filter_logits(torch.tensor([1.0, 2.0]), top_p=1e-46) > float("-inf")
    assert kept.tolist() == [False, True]


def test_top_k_keeps_the_k_largest_even_with_ties():
    t = torch.tensor([[0.1, 3.0, 2.0, -1.0, 2.5]])
    kept = filter_logits(t, top_k=2) > float("-inf")
    assert kept.tolist() == [[False, True, False, False, True]]
    tied = filter_logits(torch.tensor([1.0, 1.0, 1.0, 0.0]), top_k=1) > float("-inf")
    assert int(tied.sum()) == 1


@pytest.mark.parametrize("kwargs,message", [
    ({"temperature": float("nan")}, "--temperature"), ({"temperature": -1.0}, "--temperature"),
    ({"top_k": 0}, "--top-k"), ({"top_p": 0.0}, "--top-p"), ({"top_p": float("nan")}, "--top-p"),
    ({"max_new_tokens": -1}, "--max-new-tokens"),
])
def test_invalid_sampling_settings_are_refused(kwargs, message):
    with pytest.raises(LmscopeError, match=message):
        SamplingConfig(**kwargs).validate()


def _model(block_size=8):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=6, block_size=block_size, n_layer=2, n_head=2, n_embd=16)).eval()


def test_greedy_decoding_equals_argmax_of_full_recomputation():
    model = _model()
    prompt = torch.tensor([[1, 2, 3]])
    new = generate_ids(model, prompt, SamplingConfig(max_new_tokens=4, greedy=True))
    ctx = prompt
    for _ in range(4):  # nanoGPT's way: recompute the whole context for every token
        ctx = torch.cat([ctx, model(ctx)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert new.tolist() == ctx[:, 3:].tolist()


def test_generation_past_the_context_window_follows_the_documented_policy():
    """Past the window, the model sees the recent tokens: a full window until the cache is full,
    then the last 3/4 of a window, growing back to a full one (generate.py's docstring)."""
    block = 8
    model = _model(block_size=block)
    new = generate_ids(model, torch.tensor([[1, 2]]), SamplingConfig(max_new_tokens=40,
                                                                      greedy=True))
    assert new.shape == (1, 40)
    ctx, start = [1, 2], 0  # start: where the tokens the cache holds begin
    for _ in range(40):
        if len(ctx) - start > block:  # the cache was full: keep the last 3/4 window
            start = len(ctx) - block * 3 // 4
        logits = model(torch.tensor([ctx[start:]]))[0, -1]
        ctx.append(int(logits.argmax()))
    assert new[0].tolist() == ctx[2:]


def test_seeded_sampling_is_reproducible_and_batched_rows_differ():
    model = _model()
    cfg = SamplingConfig(max_new_tokens=20, seed=123, top_k=4, temperature=1.5)
    prompt = torch.tensor([[1], [1], [1]])
    a, b = generate_ids(model, prompt, cfg), generate_ids(model, prompt, cfg)
    assert torch.equal(a, b)
    assert a.shape == (3, 20)
    assert len({tuple(r) for r in a.tolist()}) > 1


def test_streamed_text_equals_returned_text():
    tok = CharTokenizer(list("abcde"))
    model = _model()
    pieces = []
    text = generate(model, tok, "ab", SamplingConfig(max_new_tokens=15, seed=1), stream=pieces.append)
    assert "".join(pieces) == text
    assert len(text) == 15


# --- issue 15: <unk> is never sampled; one default temperature; conflicting options ------------

def test_unk_is_never_sampled_even_where_the_model_prefers_it():
    """A model whose logits put almost all mass on id 0 (<unk>, "�") still never emits it,
    greedy or sampled, through every filter."""
    tok = CharTokenizer(list("abcde"))  # vocabulary 6: <unk> + 5 characters
    model = _model()
    bias = torch.zeros(6)
    bias[0] = 50.0  # make <unk> by far the most likely next token everywhere
    model.head.register_forward_hook(lambda m, i, out: out + bias)
    assert int(model(torch.tensor([tok.encode("ab")]))[0, -1].argmax()) == 0  # it does prefer it
    for cfg in (SamplingConfig(max_new_tokens=300, seed=0),
                SamplingConfig(max_new_tokens=50, greedy=True),
                SamplingConfig(max_new_tokens=300, top_k=1, seed=1),
                SamplingConfig(max_new_tokens=300, top_p=0.5, temperature=3.0, seed=2)):
        text = generate(model, tok, "ab", cfg)
        assert len(text) == cfg.max_new_tokens and "\ufffd" not in text


@pytest.mark.parametrize("kwargs,named", [
    ({"temperature": 2.0}, "--temperature 2"), ({"top_k": 3}, "--top-k 3"),
    ({"top_p": 0.9}, "--top-p 0.9"),
])
def test_greedy_with_a_setting_it_would_ignore_is_an_error(kwargs, named):
    with pytest.raises(LmscopeError, match=f"--greedy .* {named} would have no effect"):
        SamplingConfig(greedy=True, **kwargs).validate()


def test_one_default_temperature_for_the_api_and_the_command_line(tiny_run):
    import lmscope
    from lmscope.generate import DEFAULT_TEMPERATURE
    assert SamplingConfig().effective_temperature == DEFAULT_TEMPERATURE == 0.8
    default = lmscope.generate(tiny_run, "\n", max_new_tokens=60, seed=5)
    assert default == lmscope.generate(tiny_run, "\n", max_new_tokens=60, seed=5,
                                       temperature=DEFAULT_TEMPERATURE)
    assert default != lmscope.generate(tiny_run, "\n", max_new_tokens=60, seed=5, temperature=1.0)
