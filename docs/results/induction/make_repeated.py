"""Write a corpus of repeated random letters, the setting of the induction-heads papers.

Each line is r r: r is 8 to 40 lowercase letters drawn uniformly (seeded), then the same letters
again. Nothing predicts the first copy; the second can be predicted exactly by copying from it,
which is what induction heads do.

    python docs/results/induction/make_repeated.py OUT.txt [--lines 20000] [--seed 0]
"""

import argparse
import random
import string

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("--lines", type=int, default=20000)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
rng = random.Random(args.seed)
with open(args.out, "w", encoding="utf-8") as f:
    for _ in range(args.lines):
        r = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(8, 40)))
        f.write(r + r + "\n")
