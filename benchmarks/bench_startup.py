"""What a user waits for: ``sensitivity run examples/packing.yaml`` in a fresh process, against
the cost of importing jax itself, measured side by side in one run of this script.

Rows (each a fresh interpreter, best of ``--repeat``):

* ``import jax`` baseline: ``python -c "import jax, jax.numpy as jnp; jnp.zeros(1).block_until_ready()"``
* ``run, warm cache``: the bundled 64-disk example with plots, the persistent compilation
  cache already filled by an earlier run;
* ``run, warm, no plots``: the same with ``--set output.plots=false`` (matplotlib's share);
* ``run, empty cache``: a fresh compilation-cache folder for every repetition;
* ``inspect``, ``status``: post-processing commands (they never import jax).

Targets (issue 15): warm ≤ 3× the baseline; empty cache ≤ 2× warm.

    python benchmarks/bench_startup.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "import jax, jax.numpy as jnp; jnp.zeros(1).block_until_ready()"


def wall(argv: list[str], *, cwd: Path, env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    try:
        for name in ("packing.yaml", "packing.h5"):
            shutil.copy(ROOT / "examples" / name, work / name)
        cache = work / "cache"
        env = dict(os.environ, SENSITIVITY_CACHE_DIR=str(cache),
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cli = [sys.executable, "-m", "sensitivity.cli"]
        run = cli + ["run", "packing.yaml", "--overwrite"]

        def best(argv, fresh_cache=False):
            times = []
            for _ in range(args.repeat):
                if fresh_cache:
                    shutil.rmtree(cache, ignore_errors=True)
                times.append(wall(argv, cwd=work, env=env))
            return min(times)

        wall(run, cwd=work, env=env)  # fill the compilation cache
        rows = [
            ("import jax (baseline)", best([sys.executable, "-c", BASELINE])),
            ("run, warm cache", best(run)),
            ("run, warm, no plots", best(run + ["--set", "output.plots=false"])),
            ("run, empty cache", best(run, fresh_cache=True)),
        ]
        wall(run, cwd=work, env=env)
        rows += [
            ("inspect", best(cli + ["inspect", "out/sensitivity.h5"])),
            ("status", best(cli + ["status", "out"])),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = rows[0][1]
    warm = rows[1][1]
    print(f"{'what':28s} {'wall s':>8s} {'/ import jax':>13s}")
    for name, seconds in rows:
        print(f"{name:28s} {seconds:8.2f} {seconds / base:13.2f}")
    print(f"\nwarm run / import jax = {warm / base:.2f} (target <= 3)")
    print(f"empty-cache run / warm run = {rows[3][1] / warm:.2f} (target <= 2)")


if __name__ == "__main__":
    main()
