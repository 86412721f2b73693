"""Small relaxed packings and central finite differences shared by the physics tests."""

from __future__ import annotations

import numpy as np

from sensitivity import systems  # noqa: F401  (x64 is on: tests/conftest.py)
from sensitivity.systems.generate import random_packing
from sensitivity.systems.pipeline import central_difference as central_difference_at
from sensitivity.systems.potentials import PairModel, resolve_potential
from sensitivity.systems.relax import make_relaxer, resolve_minimizer
from sensitivity.systems.response import ResponseSolver, resolve_sensitivity
from sensitivity.systems.theta import theta_apply


def relaxed(n, dim, phi, seed, *, shrink=None, potential=None, ftol=1e-13, system=None,
            sensitivity=None, minimizer=None):
    """A relaxed packing and its ResponseSolver.

    ``shrink``: diameter given to particle 0 (makes it a rattler for the seeds used here).
    """
    if system is None:
        system = random_packing(n, dim=dim, phi=phi, seed=seed)
        if shrink is not None:
            d = system.diameters.copy()
            d[0] = shrink
            system = system.replace(diameters=d)
    spec = resolve_potential(potential or {}, system.n_species)
    model = PairModel.build(system, spec)
    params = model.default_params(system.diameters)
    minimizer = resolve_minimizer({"ftol": ftol, **(minimizer or {})})
    relaxer = make_relaxer(model, minimizer, [params, params._replace(
        diameters=params.diameters * 1.01, scale=params.scale * 0.99)])
    result = relaxer.run(system.positions, params)
    assert result.converged, result.message()
    solver = ResponseSolver(model, result.positions, params, max_force=result.max_force,
                            settings=resolve_sensitivity(sensitivity or {}))
    return system, model, params, relaxer, result, solver


def central_difference(system, model, params, relaxer, solver, pspec, h=1e-5,
                       component=None):
    """(x*(θ+h) - x*(θ-h)) / 2h by re-minimizing from x* (ftol 1e-13), gauge-fixed like the
    implicit one (:func:`systems.pipeline.central_difference`)."""
    theta0, apply = theta_apply(pspec, params, system.species)
    fd, runs = central_difference_at(relaxer, model, params, apply, theta0, solver.y, h,
                                     solver.rattlers, component=component, ftol=1e-13)
    for r, _, _ in runs:
        assert r.converged, r.message()
    return fd


def relative_error(a, b, mask):
    return np.linalg.norm(a[mask] - b[mask]) / max(np.linalg.norm(b[mask]), 1e-300)


def task_config(path, **sensitivity):
    """A resolved-config dict for ``run_task`` on the packing at ``path``: FIRE to 1e-12,
    θ = every diameter and the box, no audit, no plots; ``sensitivity`` adds settings."""
    return {
        "system": {"path": str(path), "group": "all", "frame": -1},
        "minimizer": {"kind": "fire", "ftol": 1e-12, "max_steps": 200000},
        "parameters": [{"name": "diameters", "kind": "diameters", "species": None},
                       {"name": "box", "kind": "box", "species": None}],
        "sensitivity": {"audit": False, **sensitivity},
        "output": {"directory": "out", "plots": False},
        "seed": 0,
    }
