"""Molecular-dynamics sensitivity: how a jammed packing moves when the small disks grow.

The paper's molecular-dynamics experiment (Blondel et al., 2022, §4.5): a bidisperse packing of
soft disks in a periodic box is relaxed to an energy minimum ``x*(θ)``, with ``θ`` the small
disks' diameter, and ``∂x*/∂θ`` comes from implicit differentiation of the force balance
``∇ₓE(x*, θ) = 0`` (no differentiation through the minimizer). The packing's exact zero modes
(rigid translations, rattlers) are handled as a null space of the Hessian.

The script generates a random packing (``systems.generate.random_packing``), runs the whole
pipeline (``systems.pipeline.run_task``: FIRE relaxation, rattler detection, the linear solve,
a finite-difference audit, the result file and the arrow figure), and prints its report.

    python examples/packing_sensitivity.py [--full] [--output out/examples]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="a larger packing (N=512)")
    parser.add_argument("--n", type=int, help="number of disks (default 64, or 512 with --full)")
    parser.add_argument("--phi", type=float, default=0.9, help="packing fraction")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-audit", action="store_true", help="skip the finite-difference audit")
    parser.add_argument("--output", default="out/examples", help="folder for the figure and result")
    args = parser.parse_args(argv)
    n = args.n or (512 if args.full else 64)

    import jax

    jax.config.update("jax_enable_x64", True)  # float64 physics, before jax-md loads

    from sensitivity import systems
    from sensitivity.systems.config import resolve_config

    out = Path(args.output)
    work = out / "packing_sensitivity"
    work.mkdir(parents=True, exist_ok=True)
    packing = systems.random_packing(n, dim=2, phi=args.phi, seed=args.seed)
    systems.write_packing(work / "packing.h5", packing)

    raw = {
        "system": {"path": str((work / "packing.h5").resolve())},
        "potential": {"kind": "soft_sphere", "alpha": 2.0, "epsilon": 1.0},
        "minimizer": {"kind": "fire", "ftol": 1e-12},
        "parameters": [{"name": "small_diameter", "kind": "diameter", "species": 0}],
        "sensitivity": {"solver": "cg", "tol": 1e-10, "audit": not args.no_audit},
        "output": {"directory": str(work), "plots": True},
    }
    config, errors = resolve_config(raw, base_dir=work)
    if errors:
        raise SystemExit("bad configuration:\n" + "\n".join(errors))

    t0 = time.perf_counter()
    summary = systems.run_task(config, work)
    elapsed = time.perf_counter() - t0
    result = systems.read_result(summary.result_path)
    response = result.responses["small_diameter"]
    dx = np.asarray(response["dx_dtheta"])
    movers = ~np.asarray(result.rattlers, bool)
    norms = np.linalg.norm(dx[movers], axis=1)
    report = summary.responses["small_diameter"]  # a systems.SolveReport

    rows = [
        ("disks (small/large)", f"{n} ({int(np.sum(packing.species == 0))}/{int(np.sum(packing.species == 1))}), "
                                f"phi={args.phi}"),
        ("relaxation", f"{summary.relaxation.get('steps')} FIRE steps, max force "
                       f"{summary.relaxation.get('max_force', float('nan')):.1e}, "
                       f"converged={summary.relaxation.get('converged')}"),
        ("rattlers", str(summary.rattlers)),
        ("linear solve", f"{report.solver}: {report.iterations} iterations, relative residual "
                         f"{report.relative_residual:.1e}, converged={report.converged}"),
        ("|dx*_i/dθ| over non-rattlers", f"mean {norms.mean():.3f}, max {norms.max():.3f}"),
        ("time relax / sensitivity [s]", f"{summary.timings['time_relax_s']:.2f} / "
                                         f"{summary.timings['time_sensitivity_s']:.3f}"),
    ]
    audit_error = None
    if summary.audit is not None:
        audit_error = float(summary.audit["max_relative_error"])
        rows.append(("finite-difference audit", f"max relative error {audit_error:.1e}, "
                                                f"passed={summary.audit['passed']}"))
    rows.append(("pipeline", summary.message))
    w = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(w)}  {value}")

    figure = out / "packing_sensitivity.png"
    arrows = [p for p in summary.plot_paths if "magnitude" not in Path(p).name]
    if arrows:
        shutil.copyfile(arrows[0], figure)
    else:
        systems.plot_response(result, "small_diameter", figure)
    print(f"figure: {figure}  (result file {summary.result_path}; {elapsed:.1f} s in all)")

    return {
        "converged": bool(summary.converged),
        "rattlers": int(summary.rattlers),
        "mean_response": float(norms.mean()),
        "audit_relative_error": audit_error,
        "figure": str(figure),
        "result": str(summary.result_path),
    }


if __name__ == "__main__":
    main()
