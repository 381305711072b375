"""Generation quality metrics: hand-computed answers on small samples, and properties on random ones."""

from __future__ import annotations

import json
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmscope.metrics.text_quality import (
    coherence,
    distinct_n,
    ngrams,
    repetition_rate,
    sample_metrics,
    summarise,
)

RATE_KINDS = ("distinct", "repetition")
UNIT_KINDS = ("chars", "words")


def rate_keys(max_n: int = 4) -> list[str]:
    return [f"{kind}_{n}_{unit}" for n in range(1, max_n + 1)
            for kind in RATE_KINDS for unit in UNIT_KINDS]


# ngrams

def test_ngrams_of_abcd():
    assert ngrams("abcd", 1) == [("a",), ("b",), ("c",), ("d",)]
    assert ngrams("abcd", 2) == [("a", "b"), ("b", "c"), ("c", "d")]
    assert ngrams("abcd", 3) == [("a", "b", "c"), ("b", "c", "d")]
    assert ngrams("abcd", 4) == [("a", "b", "c", "d")]
    assert ngrams("abcd", 5) == []


def test_ngrams_of_words():
    assert ngrams(["the", "cat", "sat"], 2) == [("the", "cat"), ("cat", "sat")]


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
def test_ngrams_rejects_bad_n(n):
    with pytest.raises(ValueError):
        ngrams("abcd", n)


# distinct_n

def test_distinct_n_hand_computed():
    assert distinct_n(["aaaa"], 1) == 1 / 4
    # two samples "ab", "ab": unigrams a b a b -> 2 different of 4; bigrams ab ab -> 1 of 2
    assert distinct_n(["ab", "ab"], 1) == 2 / 4
    assert distinct_n(["ab", "ab"], 2) == 1 / 2
    # words of "the cat the cat", bigrams: (the cat) (cat the) (the cat) -> 2 of 3
    assert distinct_n([["the", "cat", "the", "cat"]], 2) == 2 / 3
    assert distinct_n(["abcd"], 1) == 1.0


def test_distinct_n_without_ngrams_is_zero():
    assert distinct_n([], 1) == 0.0
    assert distinct_n([""], 1) == 0.0
    assert distinct_n(["ab", "c"], 3) == 0.0


def test_distinct_n_pools_but_does_not_join_samples():
    # "ab" and "cd" pooled: bigrams ab, cd (no "bc" across the boundary) -> 2 of 2
    assert distinct_n(["ab", "cd"], 2) == 1.0
    assert distinct_n(["ab", "cd"], 3) == 0.0


def test_distinct_n_refuses_a_single_str():
    with pytest.raises(TypeError):
        distinct_n("abab", 1)


# repetition_rate

def test_repetition_rate_hand_computed():
    assert repetition_rate("abab", 2) == pytest.approx(1 / 3)  # ab, ba, ab
    assert repetition_rate("abcd", 1) == 0.0
    assert repetition_rate("abcd", 2) == 0.0
    assert repetition_rate("aaaa", 1) == 3 / 4  # every a after the first
    assert repetition_rate(["the", "cat", "the", "cat"], 2) == pytest.approx(1 / 3)
    assert repetition_rate("", 1) == 0.0
    assert repetition_rate("ab", 3) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_repetition_rate_is_one_minus_own_distinct(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice("abc ") for _ in range(60))
    for units in (list(text), text.split()):
        for n in range(1, 5):
            if ngrams(units, n):
                assert repetition_rate(units, n) == pytest.approx(1 - distinct_n([units], n))


# coherence

WORDS_16 = " ".join(f"w{i}" for i in range(16))


def test_coherence_of_a_repeated_segment_is_one():
    assert coherence(" ".join([WORDS_16] * 3)) == 1.0


def test_coherence_of_disjoint_segments_is_zero():
    other = " ".join(f"v{i}" for i in range(16))
    assert coherence(WORDS_16 + " " + other) == 0.0


def test_coherence_hand_computed():
    # [a b] [a c]: {a:1, b:1} . {a:1, c:1} = 1, norms sqrt(2) sqrt(2) -> 1/2
    assert coherence("a b a c", segment_words=2) == pytest.approx(0.5)
    # [a b] [a c] [d d]: pairs 0.5 and 0 -> mean 0.25
    assert coherence("a b a c d d", segment_words=2) == pytest.approx(0.25)
    # [a a b] [a b b]: dot 2*1 + 1*2 = 4, norms sqrt(5) sqrt(5) -> 4/5
    assert coherence("a a b a b b", segment_words=3) == pytest.approx(0.8)


def test_coherence_folds_case_and_strips_punctuation():
    assert coherence("Cat. dog cat, DOG!", segment_words=2) == 1.0
    # "--" strips to nothing: the second segment has no words, so its pair scores 0
    assert coherence("cat dog -- ...", segment_words=2) == 0.0
    # inner punctuation stays: "don't" is not "dont"
    assert coherence("don't x dont x", segment_words=2) == pytest.approx(0.5)


def test_coherence_needs_two_segments():
    assert coherence("") is None
    assert coherence(WORDS_16) is None
    assert coherence("a b c", segment_words=4) is None


def test_coherence_shorter_last_segment_rule():
    # S = 4: a last segment of 2 words (>= 4 // 2) is kept -> [a b c d] [a b]:
    # dot 2, norms sqrt(4) sqrt(2) -> 2 / sqrt(8)
    assert coherence("a b c d a b", segment_words=4) == pytest.approx(2 / math.sqrt(8))
    # a last segment of 1 word (< 2) is dropped -> one segment -> None
    assert coherence("a b c d a", segment_words=4) is None
    # with three full segments and a dropped tail, the tail changes nothing
    assert coherence("a b c d a b c d a", segment_words=4) == 1.0
    # S = 5: 5 // 2 = 2, so a 2-word tail counts
    assert coherence("a b c d e a b", segment_words=5) == pytest.approx(2 / math.sqrt(10))


@pytest.mark.parametrize("segment_words", [0, -3])
def test_coherence_rejects_bad_segment_length(segment_words):
    with pytest.raises(ValueError):
        coherence("a b c d", segment_words=segment_words)


# sample_metrics and summarise

TEXT = ("The cat sat on the mat. The cat sat on the mat again, and then the dog came "
        "in and sat on the mat too. The dog and the cat looked at the mat for a while.")


def test_sample_metrics_keys_ranges_and_json():
    m = sample_metrics(TEXT)
    assert m["n_chars"] == len(TEXT)
    assert m["n_words"] == len(TEXT.split())
    for key in rate_keys():
        assert 0.0 <= m[key] <= 1.0, key
    assert 0.0 <= m["coherence"] <= 1.0
    assert set(m) == {"n_chars", "n_words", "coherence", *rate_keys()}
    json.dumps(m, allow_nan=False)


def test_sample_metrics_hand_computed():
    m = sample_metrics("abab", max_n=2)
    assert m["distinct_1_chars"] == 2 / 4
    assert m["distinct_2_chars"] == 2 / 3
    assert m["repetition_2_chars"] == pytest.approx(1 / 3)
    assert m["distinct_1_words"] == 1.0  # one word, "abab"
    assert m["distinct_2_words"] == 0.0  # no word bigrams
    assert m["repetition_2_words"] == 0.0
    assert m["coherence"] is None
    json.dumps(m, allow_nan=False)


def test_sample_metrics_of_empty_text():
    m = sample_metrics("")
    assert m["n_chars"] == 0 and m["n_words"] == 0
    assert all(m[key] == 0.0 for key in rate_keys())
    assert m["coherence"] is None
    json.dumps(m, allow_nan=False)


def test_summarise_of_one_sample_equals_its_metrics():
    m = sample_metrics(TEXT, segment_words=8)
    s = summarise([TEXT], segment_words=8)
    assert s["n_samples"] == 1
    assert s["coherence_samples"] == 1
    assert s["coherence"] == pytest.approx(m["coherence"])
    for key in rate_keys():
        assert s[key] == pytest.approx(m[key]), key
    json.dumps(s, allow_nan=False)


def test_summarise_pools_distinct_across_samples():
    text = "abcdefg"  # all characters different: own distinct-1 is 1.0
    one = sample_metrics(text)
    two = summarise([text, text])
    assert one["distinct_1_chars"] == 1.0
    assert two["distinct_1_chars"] == one["distinct_1_chars"] / 2
    # repetition is per sample, so two copies repeat nothing within either
    assert two["repetition_1_chars"] == 0.0


def test_summarise_means_and_coherence_counts():
    s = summarise(["abab", "abcd", "a b a c"], max_n=2, segment_words=2)
    assert s["repetition_2_chars"] == pytest.approx((1 / 3 + 0 + 1 / 6) / 3)
    # "a b a c" -> bigrams "a ", " b", "b ", " a", "a ", " c": one repeat of 6
    assert s["coherence_samples"] == 1  # only "a b a c" has two segments of words
    assert s["coherence"] == pytest.approx(0.5)


def test_summarise_without_samples_or_coherence():
    s = summarise([])
    assert s["n_samples"] == 0
    assert all(s[key] == 0.0 for key in rate_keys())
    assert s["coherence"] is None and s["coherence_samples"] == 0
    json.dumps(s, allow_nan=False)
    t = summarise(["short", "texts"])
    assert t["coherence"] is None and t["coherence_samples"] == 0


def test_summarise_refuses_a_single_str():
    with pytest.raises(TypeError):
        summarise("abab")


# properties on random strings

@settings(max_examples=100, deadline=None)
@given(text=st.text(alphabet="abc .,!\nAB", max_size=80), n=st.integers(1, 4))
def test_rates_and_identity_on_random_strings(text, n):
    for units in (list(text), text.split()):
        rate = repetition_rate(units, n)
        distinct = distinct_n([units], n)
        assert 0.0 <= rate <= 1.0
        assert 0.0 <= distinct <= 1.0
        if ngrams(units, n):
            assert rate == pytest.approx(1 - distinct)
        else:
            assert rate == 0.0 and distinct == 0.0
    score = coherence(text, segment_words=3)
    assert score is None or 0.0 <= score <= 1.0


@settings(max_examples=50, deadline=None)
@given(samples=st.lists(st.text(max_size=60), max_size=4))
def test_metrics_are_json_ready_rates_on_random_samples(samples):
    s = summarise(samples, segment_words=4)
    json.dumps(s, allow_nan=False)
    for key in rate_keys():
        assert 0.0 <= s[key] <= 1.0, key
    for text in samples:
        m = sample_metrics(text, segment_words=4)
        json.dumps(m, allow_nan=False)
        for key in rate_keys():
            assert 0.0 <= m[key] <= 1.0, key
