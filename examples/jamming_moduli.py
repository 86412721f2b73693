"""Jamming: the elastic moduli of soft-disk packings against pressure (O'Hern et al. 2003).

Bidisperse 50:50 packings of harmonic soft disks (alpha = 2, diameters 1 and 1.4,
``systems.random_packing``) at several packing fractions above jamming and several seeds are
relaxed with FIRE (max force <= 1e-12); at each energy minimum the library's elasticity code
(``systems.elastic_response``: the athermal tensor ``C = (1/V)(∂²U/∂ε∂ε − Ξ·H⁺·Ξ)``
with rattlers and translations in the null space) gives the pressure ``p``, the bulk modulus ``B``
and the isotropic shear modulus ``G``. Power laws fitted on log-log axes are printed beside
O'Hern et al.'s values for harmonic disks: ``G ~ p^0.5``, ``B ~ p^0``.

A packing is skipped (kept in the table with ``used = False`` and the reason) when FIRE did
not converge, the strain solves did not converge, its pressure is not positive (it fell
below its own jamming point), B or G is not positive (a small packing relaxed at fixed box
can be unstable to shear, Dagois-Bohy et al. 2012), or its backbone has fewer contacts than
the isostatic count ``N_iso = d (N' − 1) + 1`` (N' non-rattlers; periodic box, Goodrich et
al. 2012). Every skipped packing is listed with its reason at the end of the run.

Units: lengths in small diameters, energies in epsilon: p, B, G in epsilon / d_small².
All packings of one run share one box (the packing fraction is set by scaling the
diameters, and the moduli are converted back), so the relaxation and the strain solves
compile once for the whole run.

Outputs in ``--output`` (default ``./jamming_out``): ``jamming_moduli.csv`` (one row per
packing), ``jamming_tensors.npz`` (each packing's stress, elastic tensor, relaxed positions
and box), and ``jamming_moduli.png`` (G and B against p, log-log, with the fits).

The same measurement through the command line: ``examples/jamming_sweep.yaml`` runs one
task per generated packing with ``sensitivity.elasticity: true``; ``--from-sweep DIR``
collects those result files into the same table, fits and figure.

    python examples/jamming_moduli.py            # N=256, 8 fractions x 6 seeds
    python examples/jamming_moduli.py --quick    # N=32, 3 fractions, 1 seed (the test)
    python examples/jamming_moduli.py --full     # N=1024, 12 fractions x 10 seeds
    python examples/jamming_moduli.py --from-sweep examples/out/jamming

Measured 2026-12-07 on the 2-core CPU shared with other jobs (load average ~6; jax on CPU,
float64), wall time including imports and the one compile (~20 s):

    default  N=256,  48 packings: 46 s; 45 used (3 skipped: 2 with G < 0, 1 not jammed);
             p 2.6e-4 .. 5.4e-2; G ~ p^0.595, B ~ p^0.133
    --full   N=1024, 120 packings: 564 s; 118 used (1 with G < 0, 1 not jammed);
             p 1.0e-4 .. 6.3e-2; G ~ p^0.542, B ~ p^0.119
    --quick  N=32, 3 packings: 16 s (three points: the exponents mean nothing)

O'Hern's B ~ p^0 is the limit p -> 0 (B jumps to a finite value at jamming); over these
pressures B still rises slowly, hence the small positive exponent.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np

#: O'Hern et al. 2003, harmonic (alpha = 2) disks: G ~ p^0.5, B ~ p^0.
OHERN_EXPONENTS = {"shear_modulus": 0.5, "bulk_modulus": 0.0}

#: the run sizes: particles, packing fractions, seeds. (At N = 32 many packings relaxed at
#: fixed box have G < 0; seed 3 gives three stable ones for the test-sized run.)
SIZES = {
    "quick": (32, (0.96, 0.92, 0.88), (3,)),
    "default": (256, (0.98, 0.95, 0.91, 0.88, 0.86, 0.85, 0.846, 0.843), tuple(range(6))),
    "full": (1024, (1.0, 0.97, 0.94, 0.91, 0.89, 0.87, 0.86, 0.852, 0.848, 0.845, 0.8435,
                    0.8425), tuple(range(10))),
}

COLUMNS = ("n", "phi", "seed", "used", "note", "fire_steps", "max_force", "rattlers",
           "contacts", "isostatic_contacts", "pressure", "bulk_modulus", "shear_modulus",
           "tensor_converged", "time_s")


def fit_power_law(p, y) -> tuple[float, float]:
    """The exponent and prefactor of ``y = a p^b`` by least squares on log-log axes."""
    b, log_a = np.polyfit(np.log(p), np.log(y), 1)
    return float(b), float(np.exp(log_a))


def measure(n: int, phis, seeds, progress=print) -> tuple[list[dict], dict]:
    """Relax every (phi, seed) packing and take its pressure and moduli.

    Returns the table's rows (:data:`COLUMNS`) and ``{"stress": (k, 2, 2),
    "elastic_tensor": (k, 2, 2, 2, 2), "positions": (k, N, 2), "box": (k, 2)}`` in row
    order (NaN moduli for a skipped packing; the relaxed positions and box in units of the
    small diameter).
    """
    from sensitivity import systems
    from sensitivity.systems.potentials import PairModel
    from sensitivity.systems.response import resolve_sensitivity

    phis = sorted(phis, reverse=True)  # densest first: the pair lists' padded sizes fit all
    phi_max = phis[0]
    spec = systems.resolve_potential({"kind": "soft_sphere", "alpha": 2.0, "epsilon": 1.0}, 2)
    minimizer = systems.resolve_minimizer({"kind": "fire", "ftol": 1e-12})
    settings = resolve_sensitivity({"solver": "cg", "tol": 1e-10})
    rows, stresses, tensors, positions, boxes = [], [], [], [], []
    for phi in phis:
        for seed in seeds:
            t0 = time.perf_counter()
            # the box of phi_max for every packing; phi from the diameters (2D: d ∝ √phi)
            dense = systems.random_packing(n, dim=2, phi=phi_max, seed=seed)
            shrink = float(np.sqrt(phi / phi_max))
            system = dense.replace(diameters=dense.diameters * shrink)
            model = PairModel.build(system, spec)
            params = model.default_params(system.diameters)
            # one neighbor cutoff (that of phi_max) for every packing: one compiled loop
            relaxer = systems.make_relaxer(model, minimizer,
                                           [params, model.default_params(dense.diameters)])
            relaxed = relaxer.run(system.positions, params)
            row = {"n": n, "phi": phi, "seed": seed, "used": False, "note": "",
                   "fire_steps": relaxed.steps, "max_force": relaxed.max_force,
                   "rattlers": "", "contacts": "", "isostatic_contacts": "",
                   "pressure": np.nan, "bulk_modulus": np.nan, "shear_modulus": np.nan,
                   "tensor_converged": False}
            stress, tensor = np.full((2, 2), np.nan), np.full((2, 2, 2, 2), np.nan)
            solver = None
            if not relaxed.converged:
                row["note"] = f"FIRE did not converge ({relaxed.stop_reason})"
            else:
                try:
                    solver = systems.ResponseSolver(model, relaxed.positions, params,
                                                    max_force=relaxed.max_force,
                                                    settings=settings)
                except systems.InputError:  # every particle a rattler: not jammed
                    solver = None
            if solver is None and relaxed.converged:
                row.update(rattlers=n, contacts=0, isostatic_contacts=0,
                           note="not jammed: every particle is a rattler")
            elif solver is not None:
                backbone = int((~solver.rattlers).sum())
                contacts = int(solver.contacts["n_contacts"])
                iso = 2 * (backbone - 1) + 1
                row.update(rattlers=n - backbone, contacts=contacts, isostatic_contacts=iso)
                if backbone < 3 or contacts < iso:
                    row["note"] = f"too few contacts ({contacts} < {iso}, isostatic)"
                else:
                    out = systems.elastic_response(solver)
                    # back to units of the small diameter 1: p, B, G ∝ 1/length² in 2D
                    unit = shrink ** 2
                    stress, tensor = out["stress"] * unit, out["elastic_tensor"] * unit
                    row.update(pressure=out["pressure"] * unit,
                               bulk_modulus=out["bulk_modulus"] * unit,
                               shear_modulus=out["shear_modulus"] * unit,
                               tensor_converged=bool(out["converged"]))
                    row["note"] = _moduli_note(row)
                    row["used"] = not row["note"]
            row["time_s"] = time.perf_counter() - t0
            rows.append(row)
            stresses.append(stress)
            tensors.append(tensor)
            # the relaxed packing in units of the small diameter (diameters 1 and 1.4)
            positions.append(np.asarray(relaxed.positions) / shrink)
            boxes.append(np.asarray(system.box) / shrink)
            if progress:
                status = "ok" if row["used"] else f"SKIPPED: {row['note']}"
                progress(f"  phi={phi:.4f} seed={seed}: p={row['pressure']:.3e} "
                         f"B={row['bulk_modulus']:.4f} G={row['shear_modulus']:.4f} "
                         f"({relaxed.steps} FIRE steps, {row['time_s']:.1f} s) {status}")
    return rows, {"stress": np.asarray(stresses), "elastic_tensor": np.asarray(tensors),
                  "positions": np.asarray(positions), "box": np.asarray(boxes)}


def _moduli_note(row: dict) -> str:
    """Why a packing's moduli are left out of the fits ("" when they are used)."""
    if not row["tensor_converged"]:
        return "strain solves did not converge"
    if not row["pressure"] > 0:
        return "p <= 0: below this packing's jamming point"
    if not (row["bulk_modulus"] > 0 and row["shear_modulus"] > 0):
        # a small packing relaxed in a fixed box can be unstable to shear
        # (Dagois-Bohy et al. 2012): the averaged G comes out negative
        return "B or G <= 0: unstable to a strain at fixed box"
    return ""


def read_sweep(folder: Path) -> tuple[list[dict], dict]:
    """The same rows from a command-line sweep's results (``examples/jamming_sweep.yaml``:
    every ``sensitivity.h5`` under ``folder``, written with ``sensitivity.elasticity``).
    The seed is read from the input file's name (``...seed<k>.h5``, else -1); the contact
    count is not in the result file, so the isostatic check is left to the run's rattlers."""
    import re

    from sensitivity import systems

    rows, stresses, tensors = [], [], []
    paths = sorted(Path(folder).glob("**/sensitivity.h5"))
    if not paths:
        raise SystemExit(f"--from-sweep {folder}: no sensitivity.h5 under it (run the sweep "
                         "first: sensitivity run examples/jamming_sweep.yaml)")
    for path in paths:
        result = systems.read_result(path)
        system, relaxation, e = result.system, result.relaxation, result.elasticity or {}
        phi = float(np.sum(np.pi * np.asarray(system.diameters) ** 2 / 4)
                    / np.prod(np.asarray(system.box)))
        source = str((result.provenance or {}).get("input_path", path))
        seed = re.search(r"seed(\d+)", Path(source).name)
        row = {"n": system.n, "phi": round(phi, 6), "seed": int(seed[1]) if seed else -1,
               "used": False, "note": "", "fire_steps": relaxation.steps,
               "max_force": relaxation.max_force,
               "rattlers": int(np.sum(result.rattlers)), "contacts": "",
               "isostatic_contacts": "", "pressure": float(e.get("pressure", np.nan)),
               "bulk_modulus": float(e.get("bulk_modulus", np.nan)),
               "shear_modulus": float(e.get("shear_modulus", np.nan)),
               "tensor_converged": bool(e.get("converged", False)), "time_s": np.nan}
        if not relaxation.converged:
            row["note"] = f"FIRE did not converge ({relaxation.stop_reason})"
        elif not e:
            row["note"] = "no /elasticity in the result (sensitivity.elasticity off?)"
        else:
            row["note"] = _moduli_note(row)
            row["used"] = not row["note"]
        rows.append(row)
        stresses.append(np.asarray(e.get("stress", np.full((2, 2), np.nan))))
        tensors.append(np.asarray(e.get("elastic_tensor", np.full((2, 2, 2, 2), np.nan))))
    return rows, {"stress": np.asarray(stresses), "elastic_tensor": np.asarray(tensors)}


def write_csv(path: Path, rows) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{row[k]:.10g}" if isinstance(row[k], float) else row[k])
                             for k in COLUMNS})


def plot(path: Path, rows, fits) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    used = [r for r in rows if r["used"]]
    p = np.array([r["pressure"] for r in used])
    fig, ax = plt.subplots(figsize=(5.0, 4.0))
    for key, label, marker in (("shear_modulus", "G", "o"), ("bulk_modulus", "B", "s")):
        y = np.array([r[key] for r in used])
        line = ax.loglog(p, y, marker, ms=4, alpha=0.7, label=label)[0]
        if key in fits:
            b, a = fits[key]
            grid = np.geomspace(p.min(), p.max(), 50)
            ax.loglog(grid, a * grid ** b, "-", color=line.get_color(),
                      label=f"{label} ~ p^{b:.2f} (O'Hern: {OHERN_EXPONENTS[key]:g})")
    ax.set_xlabel(r"pressure $p$ [$\epsilon/d^2$]")
    ax.set_ylabel(r"modulus [$\epsilon/d^2$]")
    ax.set_title(f"harmonic bidisperse disks, N={used[0]['n'] if used else '?'}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="N=1024, 12 fractions, 10 seeds")
    size.add_argument("--quick", action="store_true", help="N=32, 3 fractions, 1 seed")
    parser.add_argument("--n", type=int, help="number of disks (overrides the size)")
    parser.add_argument("--seeds", type=int,
                        help="number of seeds, 0 .. seeds-1 (overrides the size)")
    parser.add_argument("--phi", type=float, nargs="+", help="packing fractions")
    parser.add_argument("--from-sweep", metavar="DIR",
                        help="collect a command-line sweep's results instead of computing "
                             "(examples/jamming_sweep.yaml)")
    parser.add_argument("--output", default="jamming_out", help="folder for the table and figure")
    args = parser.parse_args(argv)
    n, phis, seeds = SIZES["full" if args.full else "quick" if args.quick else "default"]
    n = args.n or n
    phis = args.phi or phis
    seeds = tuple(range(args.seeds)) if args.seeds else seeds

    import jax

    jax.config.update("jax_enable_x64", True)  # float64 physics, before jax-md loads

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.from_sweep:
        print(f"results of the sweep in {args.from_sweep}")
        rows, arrays = read_sweep(Path(args.from_sweep))
    else:
        print(f"N={n} harmonic bidisperse disks, phi in {sorted(phis)}, {len(seeds)} seed(s)")
        rows, arrays = measure(n, phis, seeds)
    elapsed = time.perf_counter() - t0

    used = [r for r in rows if r["used"]]
    skipped = [r for r in rows if not r["used"]]
    fits = {}
    if len({r["phi"] for r in used}) >= 2:
        p = np.array([r["pressure"] for r in used])
        for key in OHERN_EXPONENTS:
            fits[key] = fit_power_law(p, np.array([r[key] for r in used]))

    csv_path, fig_path = out / "jamming_moduli.csv", out / "jamming_moduli.png"
    write_csv(csv_path, rows)
    np.savez(out / "jamming_tensors.npz", phi=[r["phi"] for r in rows],
             seed=[r["seed"] for r in rows], **arrays)
    plot(fig_path, rows, fits)

    print(f"{len(used)} of {len(rows)} packings used; {len(skipped)} skipped"
          + "".join(f"\n  skipped phi={r['phi']} seed={r['seed']}: {r['note']}"
                    for r in skipped))
    if used:
        p = [r["pressure"] for r in used]
        print(f"pressure range {min(p):.2e} .. {max(p):.2e}")
    for key, label in (("shear_modulus", "G"), ("bulk_modulus", "B")):
        if key in fits:
            print(f"{label} ~ p^{fits[key][0]:.3f}   (O'Hern et al. 2003: "
                  f"p^{OHERN_EXPONENTS[key]:g})")
        else:
            print(f"{label}: too few packing fractions to fit an exponent")
    print(f"table {csv_path}, figure {fig_path}; {elapsed:.1f} s in all")
    return {"rows": rows, "fits": {k: v[0] for k, v in fits.items()}, "csv": str(csv_path),
            "figure": str(fig_path), "tensors": str(out / "jamming_tensors.npz"),
            "time_s": elapsed, "used": len(used), "skipped": len(skipped)}


if __name__ == "__main__":
    main()
