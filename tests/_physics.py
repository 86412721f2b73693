"""Small relaxed packings and central finite differences shared by the physics tests."""

from __future__ import annotations

import numpy as np

import systems  # noqa: F401  (x64 is on: tests/conftest.py)
from systems.generate import random_packing
from systems.potentials import PairModel, resolve_potential
from systems.relax import make_relaxer, resolve_minimizer
from systems.response import ResponseSolver, gauge_fix, resolve_sensitivity, theta_apply


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
    """(x*(θ+h) - x*(θ-h)) / 2h by re-minimizing from x*, gauge-fixed like the implicit one."""
    theta0, apply = theta_apply(pspec, params, system.species)
    y_star = np.asarray(solver.y)
    box = None if model.box is None else np.asarray(model.box)
    ends = []
    for sign in (1.0, -1.0):
        if component is None:
            p = apply(params, theta0 + sign * h)
        else:
            delta = np.zeros(system.n)
            delta[component] = sign * h
            p = apply(params, np.asarray(theta0) + delta)
        r = relaxer.run(y_star, p, ftol=1e-13)
        assert r.converged, r.message()
        scale = float(np.asarray(p.scale))
        y = np.asarray(r.positions) / scale
        if box is not None:
            dy = y - y_star
            y = y_star + dy - box * np.round(dy / box)
        ends.append(scale * y)
    fd = (ends[0] - ends[1]) / (2 * h)
    return gauge_fix(fd, solver.rattlers, y_star, model.periodic)


def relative_error(a, b, mask):
    return np.linalg.norm(a[mask] - b[mask]) / max(np.linalg.norm(b[mask]), 1e-300)
