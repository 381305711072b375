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
