"""Start-up cost of ``import streamgmm`` and of the command line, in fresh interpreters.

Prints the median wall and CPU (user + system) seconds of each command over ``--repeat`` runs.
CPU time is the figure to compare on a loaded machine: wall time includes waiting for a core.

    python scripts/bench_startup.py --repeat 5
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass (the floor)": ["-c", "pass"],
    "import streamgmm": ["-c", "import streamgmm"],
    "streamgmm --version": ["-m", "streamgmm.service.cli", "--version"],
    "streamgmm run, invalid config": [
        "-m",
        "streamgmm.service.cli",
        "run",
        "--input",
        "x.jsonl",
        "--n-components",
        "0",
    ],
    "from streamgmm import OnlineGaussianMixture": [
        "-c",
        "from streamgmm import OnlineGaussianMixture",
    ],
}


def _measure(args: list[str], repeat: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=False)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs per command (default: 5)")
    repeat = ap.parse_args().repeat
    for name, args in COMMANDS.items():
        wall, cpu = _measure(args, repeat)
        print(f"{name:45s} wall {wall:6.3f} s   cpu {cpu:6.3f} s")


if __name__ == "__main__":
    main()
