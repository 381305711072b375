"""Write a corpus of repeated random sequences, the setting of the induction-heads papers.

Each line is r r: r is 8 to 24 letters drawn uniformly (seeded) from the 128 letters of Unicode's
Latin Extended-A block (U+0100 to U+017F), then the same letters again. Nothing predicts the
first copy; the second is predicted exactly by copying from the first, which is what induction
heads do. With 128 letters a letter seldom recurs within r, so the token after the earlier copy
of the current letter is the right answer (with 26 letters it often is not: a letter recurs, and
the previous-token / induction mechanism has several candidates).

    python docs/results/induction/make_repeated.py OUT.txt [--lines 20000] [--seed 0]
"""

import argparse
import random

LETTERS = [chr(c) for c in range(0x100, 0x180)]

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--lines", type=int, default=20000)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
rng = random.Random(args.seed)
with open(args.out, "w", encoding="utf-8") as f:
    for _ in range(args.lines):
        r = "".join(rng.choice(LETTERS) for _ in range(rng.randint(8, 24)))
        f.write(r + r + "\n")
