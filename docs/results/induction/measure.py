"""The numbers of docs/results/induction/README.md, from a run's RUN/heads.jsonl and metrics.jsonl.

    python docs/results/induction/measure.py RUN [RUN ...]

For each run: the iteration at which the best induction head first scores >= 0.3 (the onset),
the best induction and previous-token scores and where, the induction losses and the ICL score
at the start, at iteration 200 and at the end, and the largest rise of the training loss (a
20-point running mean of the logged losses) after its first minimum: the "loss bump".
"""

import math
import sys

from lmscope.analysis.heads import best_by_layer, load_tracked


def best(rows, detector):
    by_iter = {}
    for points in best_by_layer(rows, detector).values():
        for it, score in points:
            by_iter[it] = max(by_iter.get(it, -math.inf), score)
    return by_iter


def bump(loss, window=20):
    """(iteration of the running minimum before it, rise in nats, iteration of the peak)."""
    values = [v for _, v in loss]
    smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
              for i in range(len(values))]
    low, low_at, rise = math.inf, 0, (0, 0.0, 0)
    for (it, _), v in zip(loss, smooth, strict=True):
        if v < low:
            low, low_at = v, it
        elif v - low > rise[1]:
            rise = (low_at, v - low, it)
    return rise


for run in sys.argv[1:]:
    t = load_tracked(run)
    ind, prev = best(t.rows, "induction"), best(t.rows, "previous_token")
    print(f"## {run}: {len(t.icl)} tracked iterations, {t.icl[0].iteration}..{t.icl[-1].iteration}")
    print(f"onset (best induction >= 0.3): {t.induction_onset()}")
    if ind:
        top = max(ind, key=ind.get)
        print(f"best induction {ind[top]:.3f} at {top}; at the end {ind[t.icl[-1].iteration]:.3f}")
        top = max(prev, key=prev.get)
        print(f"best previous token {prev[top]:.3f} at {top}")
    for r in (t.icl[0], min(t.icl, key=lambda r: abs(r.iteration - 200)), t.icl[-1]):
        print(f"iter {r.iteration}: first half {r.first_half_loss:.3f}, second half "
              f"{r.second_half_loss:.3f} (gap {r.first_half_loss - r.second_half_loss:.3f}), "
              f"uniform {r.uniform_loss:.3f}, ICL {r.icl_score:.3f}")
    low_at, rise, peak = bump(t.train_loss)
    print(f"largest rise of the smoothed training loss: {rise:.3f} nats, from its minimum at "
          f"{low_at} to {peak}")
