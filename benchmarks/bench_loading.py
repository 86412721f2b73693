"""Loading a result in a fresh Python, as a notebook does: ``systems.read_result`` against
reading the same datasets with bare h5py (the baseline), and against importing jax first
(what ``import systems`` cost before it became lazy).

Each row is a fresh interpreter (imports included), best of ``--repeat``; the ratio is to
the bare-h5py baseline measured in the same run.

    python benchmarks/bench_loading.py [--n 65536] [--repeat 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def synthetic_result(path: Path, n: int) -> None:
    """A 2D result of ``n`` particles with two scalar θs, as `sensitivity run` writes it."""
    sys.path.insert(0, str(ROOT))
    from sensitivity.systems import random_packing, write_result

    system = random_packing(n, seed=0)
    rng = np.random.default_rng(0)
    rattlers = rng.random(n) < 0.02
    responses = {}
    for name, kind in (("small_diameter", "diameter"), ("box", "box")):
        field = rng.normal(size=(n, 2))
        field[rattlers] = np.nan
        responses[name] = {"dx_dtheta": field, "report": {
            "kind": kind, "species": 0, "theta": 1.0, "theta_meaning": kind, "solver": "cg",
            "iterations": 2390, "residual": 1e-11, "converged": True}}
    write_result(path, system=system,
                 relaxation={"energy": 1e-3, "steps": 12166, "converged": True},
                 responses=responses, rattlers=rattlers, zero_modes={"found": 2},
                 parameters={"config": {"seed": 0}, "provenance": {"x64": True}},
                 timings={"time_relax_s": 182.0})


def best_of(code: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sensitivity.h5"
        synthetic_result(path, args.n)
        rows = {
            "python alone": "pass",
            "bare h5py (baseline)": (
                "import h5py, numpy as np\n"
                f"f = h5py.File({str(path)!r}, 'r')\n"
                "x = f['particles/all/position/value'][0]\n"
                "e = f['particles/all/box/edges/value'][0]\n"
                "j = [f[f'sensitivity/{k}/dx_dtheta'][()] for k in ('small_diameter', 'box')]\n"),
            "systems.read_result": f"from sensitivity import systems; systems.read_result({str(path)!r})",
            "  + response, magnitudes, prediction": (
                f"from sensitivity import systems; r = systems.read_result({str(path)!r})\n"
                "r.response('box'); r.magnitudes('box'); r.predicted_system('box', 1e-3)\n"),
            "import jax, then read_result": (
                f"import jax; from sensitivity import systems; systems.read_result({str(path)!r})"),
        }
        times = {label: best_of(code, args.repeat) for label, code in rows.items()}
    baseline = times["bare h5py (baseline)"]
    print(f"Loading a {args.n}-particle 2D result (fresh interpreter, best of {args.repeat})")
    for label, seconds in times.items():
        print(f"  {label:<38} {seconds:6.3f} s   {seconds / baseline:5.2f} x baseline")


if __name__ == "__main__":
    main()
