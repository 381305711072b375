"""Quality of generated text samples: diversity, repetition and lexical coherence, no model needed.

A *sample* is a str. Its *characters* are `list(text)`; its *words* are `text.split()`
(whitespace-separated tokens, punctuation kept attached: "cat." and "cat" are different words
here). Every metric below is computed for both unit kinds unless said otherwise.

n-grams
    The n-grams of a sequence of units u_1..u_L are the L - n + 1 contiguous tuples
    (u_i, ..., u_{i+n-1}), in order; none when L < n. n must be >= 1.

distinct-n (Li et al., 2016, "A Diversity-Promoting Objective Function for Neural Conversation
Models"), pooled over a set of samples:

    distinct_n = (number of different n-grams over all samples) / (number of n-grams over all samples)

    0.0 when there are no n-grams at all. Example, characters, n = 1: the samples "ab" and "ab"
    have 4 unigrams of which 2 are different, so distinct-1 = 2/4. 1.0 means no n-gram occurs
    twice anywhere; small values mean the set keeps saying the same things.

repetition rate of ONE sample:

    repetition_n = (number of n-gram occurrences whose n-gram already occurred earlier in the
                    same sample) / (number of n-grams of the sample)

    The first occurrence of an n-gram is not a repetition, so the count above is
    (number of n-grams) - (number of different n-grams), and for a sample with at least one
    n-gram, repetition_n = 1 - (that sample's own distinct_n). 0.0 when the sample has no n-grams
    (then its distinct_n is 0.0 too, so the identity does not hold there). Example, characters,
    n = 2: "abab" has the bigrams ab, ba, ab; the third repeats the first, so 1/3.

coherence of ONE sample (words only), with a segment length S = `segment_words` (S >= 1):

    1. Cut the sample's words into consecutive segments of S words. A last, shorter segment is
       kept only if it has at least S // 2 words (integer division); otherwise it is dropped.
    2. Turn each segment into a word-count vector: every word is lower-cased and stripped of
       leading/trailing punctuation with `word.lower().strip(string.punctuation)`; words that
       become empty (e.g. "--") are dropped. So "Cat." and "cat" count as the same word.
    3. For each pair of consecutive segments (k, k+1), take the cosine similarity of their
       count vectors a and b: sum_w a[w] b[w] / sqrt(sum_w a[w]^2 * sum_w b[w]^2). If either
       vector is empty (no words left after stripping), the pair's similarity is 0.
    4. coherence = mean of the similarities over the pairs. None when there are fewer than
       2 segments (nothing to compare).

    Example, S = 2: "a b a c" -> segments [a, b], [a, c] -> vectors {a:1, b:1}, {a:1, c:1}
    -> 1 / sqrt(2 * 2) = 0.5.

    Why this definition: it needs no model download (embedding-based coherence would), and it
    measures whether consecutive parts of a sample talk about the same things (share words).
    It is in [0, 1]. It is lexical only: synonyms do not count, and function words ("the",
    "and") contribute like any other word. A sample that repeats itself scores high (the same
    16 words three times scores 1.0), so read coherence next to repetition_n: high coherence
    with low repetition is the good case.

`sample_metrics` gives these numbers for one sample, `summarise` for a set of samples
(pooled distinct-n, mean per-sample repetition, mean coherence); see their docstrings for the
keys. All values are JSON-ready: plain ints, floats (never NaN) or None.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Sequence


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")


def _check_not_str(samples: object, name: str) -> None:
    # A str is itself a Sequence[str]: passing one sample where a set of samples is expected
    # would silently treat each character as a sample.
    if isinstance(samples, str):
        raise TypeError(f"{name} must be a sequence of samples, not a single str")


def ngrams(units: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The contiguous n-grams of `units`, in order (empty when len(units) < n)."""
    _check_n(n)
    units = list(units)
    return [tuple(units[i:i + n]) for i in range(len(units) - n + 1)]


def distinct_n(samples: Sequence[Sequence[str]], n: int) -> float:
    """Distinct-n pooled over samples: different n-grams / all n-grams (0.0 when none).

    Each sample is a sequence of units (a str gives its characters; pass `text.split()` for words).
    """
    _check_not_str(samples, "samples")
    _check_n(n)
    seen: set[tuple[str, ...]] = set()
    total = 0
    for units in samples:
        grams = ngrams(units, n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def repetition_rate(units: Sequence[str], n: int) -> float:
    """Fraction of one sample's n-gram occurrences that repeat an earlier one (0.0 when none).

    For a sample with at least one n-gram this is 1 - distinct_n([units], n).
    """
    grams = ngrams(units, n)
    if not grams:
        return 0.0
    repeats = len(grams) - len(set(grams))  # every occurrence after the first of its n-gram
    return repeats / len(grams)


def _segments(words: list[str], segment_words: int) -> list[list[str]]:
    segments = [words[i:i + segment_words] for i in range(0, len(words), segment_words)]
    # Only the last segment can be short; drop it if it is too short to compare fairly.
    if segments and len(segments[-1]) < segment_words // 2:
        segments.pop()
    return segments


def _normalized_counts(words: list[str]) -> Counter[str]:
    folded = (w.lower().strip(string.punctuation) for w in words)
    return Counter(w for w in folded if w)


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    if not a or not b:
        return 0.0
    dot = sum(count * b[word] for word, count in a.items())
    # Integer norms under one sqrt: by Cauchy-Schwarz the result is never above 1.0, even in
    # floating point (identical vectors give exactly 1.0).
    norms_squared = sum(c * c for c in a.values()) * sum(c * c for c in b.values())
    return dot / math.sqrt(norms_squared)


def coherence(text: str, segment_words: int = 16) -> float | None:
    """Mean cosine similarity of the word counts of consecutive segments (see module docstring).

    None when the sample has fewer than 2 segments.
    """
    if isinstance(segment_words, bool) or not isinstance(segment_words, int) or segment_words < 1:
        raise ValueError(f"segment_words must be an integer >= 1, got {segment_words!r}")
    segments = _segments(text.split(), segment_words)
    if len(segments) < 2:
        return None
    counts = [_normalized_counts(segment) for segment in segments]
    similarities = [_cosine(a, b) for a, b in zip(counts, counts[1:], strict=False)]
    return math.fsum(similarities) / len(similarities)


def _check_max_n(max_n: int) -> None:
    if isinstance(max_n, bool) or not isinstance(max_n, int) or max_n < 1:
        raise ValueError(f"max_n must be an integer >= 1, got {max_n!r}")


def sample_metrics(text: str, max_n: int = 4, segment_words: int = 16) -> dict:
    """JSON-ready metrics of one sample.

    Keys: n_chars, n_words; for n in 1..max_n: distinct_{n}_chars, distinct_{n}_words (the
    sample's own distinct-n), repetition_{n}_chars, repetition_{n}_words; coherence (float or
    None).
    """
    _check_max_n(max_n)
    chars, words = list(text), text.split()
    metrics: dict = {"n_chars": len(chars), "n_words": len(words)}
    for n in range(1, max_n + 1):
        metrics[f"distinct_{n}_chars"] = distinct_n([chars], n)
        metrics[f"distinct_{n}_words"] = distinct_n([words], n)
        metrics[f"repetition_{n}_chars"] = repetition_rate(chars, n)
        metrics[f"repetition_{n}_words"] = repetition_rate(words, n)
    metrics["coherence"] = coherence(text, segment_words)
    return metrics


def summarise(samples: Sequence[str], max_n: int = 4, segment_words: int = 16) -> dict:
    """JSON-ready metrics of a set of samples.

    Keys: n_samples; for n in 1..max_n: distinct_{n}_chars, distinct_{n}_words (pooled over all
    samples with distinct_n), repetition_{n}_chars, repetition_{n}_words (mean of the per-sample
    rates over all samples, a sample without n-grams counting as 0.0; 0.0 when there are no
    samples); coherence (mean over the samples that have one, None if none do) and
    coherence_samples (how many samples have one).
    """
    _check_not_str(samples, "samples")
    _check_max_n(max_n)
    samples = list(samples)
    chars = [list(text) for text in samples]
    words = [text.split() for text in samples]

    def mean(values: list[float]) -> float:
        return math.fsum(values) / len(values) if values else 0.0

    summary: dict = {"n_samples": len(samples)}
    for n in range(1, max_n + 1):
        summary[f"distinct_{n}_chars"] = distinct_n(chars, n)
        summary[f"distinct_{n}_words"] = distinct_n(words, n)
        summary[f"repetition_{n}_chars"] = mean([repetition_rate(c, n) for c in chars])
        summary[f"repetition_{n}_words"] = mean([repetition_rate(w, n) for w in words])
    scores = [coherence(text, segment_words) for text in samples]
    scores = [s for s in scores if s is not None]
    summary["coherence"] = math.fsum(scores) / len(scores) if scores else None
    summary["coherence_samples"] = len(scores)
    return summary
