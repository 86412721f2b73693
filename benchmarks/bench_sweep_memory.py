"""Memory of a long sweep in one process: resident set size after each task.

A sweep run by one process (``sensitivity run sweep.yaml`` without ``--task-index``) keeps its
compiled functions for the next task. Packings that share N, the potential's static settings
and the box compile nothing after the first; a sweep over a setting that changes compiled code
(the soft-sphere exponent α) compiles every task. Either way the memory must stay flat: the
compile caches are bounded. This runs the same TASKS-task sweep three ways and prints, per
sweep, the compilations, the RSS after the first and the last task and the growth per task
over the second half (after the caches fill):

    python benchmarks/bench_sweep_memory.py                 # 32 tasks of N = 64
    python benchmarks/bench_sweep_memory.py --tasks 16 --n 128

Measured in one process, one sweep after another (the later sweeps start with warm caches).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    with open("/proc/self/statm") as stream:
        return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=32)
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    from sensitivity.systems.config import load_config
    from sensitivity.systems import random_packing, write_packing
    from sensitivity.systems.pipeline import run_task
    from sensitivity.systems import relax, response

    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    packing = work / "p.h5"
    write_packing(packing, random_packing(args.n, phi=0.9, seed=0))
    sweeps = {
        "seeds (same shapes)": None,
        "potential.epsilon": [round(1.0 + 0.01 * k, 4) for k in range(args.tasks)],
        "potential.alpha": [round(2.0 + 0.01 * k, 4) for k in range(args.tasks)],
    }
    print(f"N = {args.n}, {args.tasks} tasks per sweep, one process")
    print(f"{'sweep over':<22} {'compiles':>8} {'RSS first':>10} {'RSS last':>9} "
          f"{'MB/task (2nd half)':>19} {'s/task':>7}")
    for name, values in sweeps.items():
        packings = []
        if values is None:
            for k in range(args.tasks):
                path = work / f"p{k}.h5"
                write_packing(path, random_packing(args.n, phi=0.9, seed=k))
                packings.append(path)
            sweep = f"sweep: {{system.path: [{', '.join(str(p) for p in packings)}]}}\n"
        else:
            sweep = f"sweep: {{{name}: {values}}}\n"
        config = work / "c.yaml"
        config.write_text(f"system: {{path: {packing}}}\nminimizer: {{ftol: 1.0e-10}}\n"
                          f"output: {{directory: {work / name.split()[0]}, plots: false}}\n{sweep}")
        tasks = load_config(config).tasks
        before = relax.compile_cache_info()["compiles"]
        rss, start = [], time.perf_counter()
        for task in tasks:
            run_task(task.config, task.directory)
            rss.append(rss_mb())
        elapsed = (time.perf_counter() - start) / len(tasks)
        half = len(rss) // 2
        growth = (rss[-1] - rss[half]) / max(len(rss) - 1 - half, 1)
        compiles = relax.compile_cache_info()["compiles"] - before
        print(f"{name:<22} {compiles:>8} {rss[0]:>9.0f}M {rss[-1]:>8.0f}M {growth:>19.2f} "
              f"{elapsed:>7.3f}")
    del response


if __name__ == "__main__":
    main()
