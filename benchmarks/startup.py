"""How long the command line takes to start; prints one JSON object.

    python benchmarks/startup.py               # 10 runs of each command
    python benchmarks/startup.py --runs 5

Each command (`python -m lmscope --help`, `python -m lmscope data list`) runs as a whole new
process, first twice unmeasured (warm file cache), then `--runs` times in alternation. For each:
the median wall seconds and the median CPU seconds (user + sys of the child process, from
getrusage), and whether the process imported torch (a separate run with `-X importtime`).
The lmscope that runs is the one `python -m lmscope` finds (set PYTHONPATH to choose a checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

COMMANDS = {"--help": ["--help"], "data list": ["data", "list"]}


def run_once(args: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of one `python -m lmscope ARGS`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lmscope", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def imports_torch(args: list[str]) -> bool:
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "lmscope", *args],
                       capture_output=True, text=True, check=True)
    return any(line.split("|")[-1].strip() == "torch" for line in r.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    for cmd in COMMANDS.values():  # warm-up
        for _ in range(2):
            run_once(cmd)
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, cmd in COMMANDS.items():
            times[name].append(run_once(cmd))
    result = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "runs": args.runs,
    }
    for name, cmd in COMMANDS.items():
        result[f"lmscope {name}"] = {
            "median_wall_s": round(statistics.median(w for w, _ in times[name]), 3),
            "median_cpu_s": round(statistics.median(c for _, c in times[name]), 3),
            "imports_torch": imports_torch(cmd),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
