"""Why the command line imports each command's modules inside the command: start-up time.

    python benchmarks/cli_startup.py            # 5 rounds
    python benchmarks/cli_startup.py --rounds 9

Times, as whole processes run alternately, the median wall-clock seconds of

    help            `python -m lmscope --help` as it is (commands import their modules when run)
    usage_error     `python -m lmscope train` with no --data (a one-line usage error)
    all_imported    the same help after importing every lmscope module first, which is what
                    `lmscope --help` would cost if cli.py imported the commands at its top

and prints one JSON object with the medians and the ratio all_imported / help.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "help": [sys.executable, "-m", "lmscope", "--help"],
    "usage_error": [sys.executable, "-m", "lmscope", "train"],
    "all_imported": [sys.executable, "-c",
                     "import lmscope, lmscope.study.runner, lmscope.analysis.attribution, "
                     "lmscope.export, lmscope.cli as c, sys; sys.argv = ['lmscope', '--help'];"
                     " c.main()"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():  # alternating: noise hits all alike
            start = time.perf_counter()
            subprocess.run(command, capture_output=True, check=False)
            seconds[name].append(time.perf_counter() - start)
    medians = {name: round(statistics.median(values), 3) for name, values in seconds.items()}
    print(json.dumps({"rounds": args.rounds, "median_s": medians,
                      "ratio_all_imported_over_help": round(
                          medians["all_imported"] / medians["help"], 2)}))


if __name__ == "__main__":
    main()
