"""A few observables of a vector θ: ``dO_k/dθ`` by reverse mode (one adjoint solve per
observable) or forward mode (from the whole ``[N][N][d]`` Jacobian).

For θ of kind ``diameters`` (P = N components) and K observables ``O_k(y, θ)`` of the
relaxed packing (``sensitivity.observables``: the energy U, the pressure p, a coordinate of
one particle's position x_i),

    dO_k/dθ = ∂O_k/∂θ + ∂O_k/∂y · dy*/dθ,    H dy*/dθ = -∂F/∂θ   (F = ∇_y E).

Forward mode solves for ``dy*/dθ`` (P right-hand sides, the Jacobian the run writes anyway)
and contracts. Reverse mode solves ``H λ_k = ∂O_k/∂y`` (K right-hand sides, on the backbone,
off its rigid motions: :func:`systems.many_rhs.reverse_vector_derivative`) and takes
``dO_k/dθ = ∂O_k/∂θ - λ_kᵀ ∂F/∂θ`` (one VJP): K solves instead of P. ``sensitivity.mode``
chooses (:func:`choose_mode`; ``auto``: reverse when K < P), the reason goes in the report.

Both use the gauge of the Jacobian: a particle's position is relative to the backbone (its
rigid motion removed; Blondel et al. 2021 for implicit differentiation, the adjoint being
the transpose of the same linear solve); a rattler's position has no derivative (NaN). Since
``∇_y U = 0`` at x*, ``dU/dθ = ∂U/∂θ`` (the adjoint part vanishes up to the force
tolerance).

The result file stores them in ``/observable_derivatives`` (:mod:`systems.io`, which reads
them back without JAX).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, NamedTuple

import numpy as np

from . import settings as _settings
from ._errors import InputError
from ._reports import ObservableReport

__all__ = ["ObservableSet", "resolve_observables", "choose_mode", "reversed_thetas",
           "observable_derivatives"]

_CODES = {"energy": 0, "pressure": 1, "position": 2}
_AXES = "xyz"


class ObservableSet(NamedTuple):
    """K observables as arrays a compiled function takes: ``code`` (K,) (0 energy,
    1 pressure, 2 a position coordinate), ``particle`` and ``axis`` (K,) (0 unless a
    position), and their ``names`` (``energy``, ``pressure``, ``x[7]``)."""

    names: tuple
    code: np.ndarray
    particle: np.ndarray
    axis: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


def resolve_observables(items, n: int, dim: int, where: str = "config") -> ObservableSet:
    """``sensitivity.observables`` (checked by :func:`systems.settings.observable_list`)
    against a packing of ``n`` particles in ``dim`` dimensions.

    Raises:
      InputError: a particle index >= n or an axis >= dim, naming the key.
    """
    names, code, particle, axis = [], [], [], []
    for k, item in enumerate(_settings.observable_list()(list(items or []))):
        if isinstance(item, str):
            names.append(item)
            code.append(_CODES[item])
            particle.append(0)
            axis.append(0)
            continue
        spec = item["position"]
        key = f"sensitivity.observables[{k}].position"
        if spec["particle"] >= n:
            raise InputError(f"{where}: {key}.particle = {spec['particle']}: out of range; "
                             f"the packing has {n} particles (0 .. {n - 1})")
        if spec["axis"] is not None and spec["axis"] >= dim:
            raise InputError(f"{where}: {key}.axis = {spec['axis']}: out of range; the "
                             f"packing is {dim}D (axis 0 .. {dim - 1})")
        for a in range(dim) if spec["axis"] is None else [spec["axis"]]:
            names.append(f"{_AXES[a]}[{spec['particle']}]")
            code.append(2)
            particle.append(spec["particle"])
            axis.append(a)
    return ObservableSet(tuple(names), np.asarray(code, np.int32),
                         np.asarray(particle, np.int32), np.asarray(axis, np.int32))


def choose_mode(settings: Mapping[str, Any], n_observables: int,
                n_components: int) -> tuple[str, str]:
    """``(mode, reason)`` for a vector θ of ``n_components`` with ``n_observables``:
    ``sensitivity.mode`` other than ``auto`` wins; else reverse when there are observables
    and fewer of them than θ's components, forward otherwise."""
    requested = settings.get("mode") or "auto"
    if requested != "auto":
        return requested, f"sensitivity.mode is {requested!r}"
    if not n_observables:
        return "forward", "no sensitivity.observables: the whole Jacobian"
    if n_observables < n_components:
        return "reverse", (f"{n_observables} observable(s) < {n_components} θ components: "
                           f"{n_observables} adjoint solve(s) instead of {n_components} "
                           "forward ones (the Jacobian is not written; sensitivity.mode "
                           "forward writes both)")
    return "forward", (f"{n_observables} observables >= {n_components} θ components: "
                       "forward solves, the observables from the Jacobian")


def reversed_thetas(pspecs, settings: Mapping[str, Any], n: int, dim: int) -> dict:
    """``{name: reason}`` of the vector θs that reverse mode takes (no Jacobian)."""
    k = len(resolve_observables(settings.get("observables"), n, dim))
    out = {}
    for p in pspecs:
        if p.kind == "diameters":
            mode, reason = choose_mode(settings, k, n)
            if mode == "reverse":
                out[p.name] = reason
    return out


def _values(pk, y, params, obs):
    """The K observables at reference positions ``y`` (jax): U, p (over the backbone's
    pairs) and coordinates of real positions ``x = λ y``."""
    import jax.numpy as jnp

    from .elasticity import observables
    from .potentials import real_positions

    code, particle, axis = obs
    energy, _, pressure = observables(pk.model, y, params, pk.pairs)
    x = real_positions(params, y)[particle, axis]
    return jnp.where(code == 0, energy, jnp.where(code == 1, pressure, x))


def _gradients(cfg, pk, base, theta0, member, obs):
    """``(O (K,), ∂O/∂y (K, N, d), ∂O/∂θ (K, P))`` at ``(y*, θ0)``: reverse mode."""
    import jax

    from .theta import apply_theta

    (tag,) = cfg.tags

    def f(y, theta):
        return _values(pk, y, apply_theta(tag, base, theta, theta0, member), obs)

    gy, gt = jax.jacrev(f, argnums=(0, 1))(pk.y, theta0)
    return f(pk.y, theta0), gy, gt


def _values_fn(pk, y, params, obs):
    return _values(pk, y, params, obs)


def _forward_along(cfg, pk, base, thetas0, members, dy, tangents, extra):
    """:func:`systems.elasticity._along` of the observables: their JVPs along each column."""
    from .elasticity import _along

    return _along(cfg, pk, base, thetas0, members, dy, tangents, extra, fn=_values_fn)


def _forward(solver, pspec, dx_dtheta, arrays):
    """``(O (K,), dO/dθ (K, P), compile s)`` from the gauge-fixed Jacobian ``[P][N][d]``:
    one JVP in ``(y, θ)`` per component."""
    from .elasticity import reference_response

    tag, theta0, member, dy, tangents = reference_response(solver, pspec, dx_dtheta)
    (value, along), _, t_compile = solver._run(
        _forward_along, solver._config(tags=(tag,)), solver.data, solver.params, (theta0,),
        (member,), dy, (tangents,), arrays)
    return np.asarray(value), np.asarray(along).T, t_compile


def observable_derivatives(solver, pspec, obs: ObservableSet, mode: str, reason: str,
                           dx_dtheta=None) -> dict:
    """``dO_k/dθ`` of a vector θ for the observables ``obs``.

    Args:
      solver: a :class:`~systems.response.ResponseSolver` at the relaxed packing.
      pspec: the vector θ (kind ``diameters``).
      obs: from :func:`resolve_observables`.
      mode: ``reverse`` (K adjoint solves) or ``forward`` (needs ``dx_dtheta``, the
        ``[P][N][d]`` Jacobian).
      reason: why this mode (for the report).

    Returns:
      ``{"d_observable_d_theta": (K, P), "value": (K,), "report": ObservableReport}``
      (:class:`~systems._reports.ObservableReport`); rows of a rattler's position are NaN.
    """
    import jax.numpy as jnp

    from .many_rhs import reverse_vector_derivative
    from .theta import theta_data

    t0 = time.perf_counter()
    arrays = tuple(jnp.asarray(a) for a in obs[1:])
    tag, theta0, member = theta_data(pspec, solver.params, np.asarray(solver.model.species))
    if mode == "reverse":
        (value, gy, gt), _, t_compile = solver._run(
            _gradients, solver._config(tags=[tag]), solver.data, solver.params, theta0,
            member, arrays)
        scale = float(np.asarray(solver.params.scale))
        implicit, report = reverse_vector_derivative(solver, pspec, np.asarray(gy) / scale)
        total = np.asarray(gt) + implicit
        t_compile += report.time_compile_s
    elif mode == "forward":
        if dx_dtheta is None:
            raise ValueError("forward mode needs the Jacobian dx_dtheta")
        value, total, t_compile = _forward(solver, pspec, dx_dtheta, arrays)
        report = ObservableReport(method=f"forward mode, contracted with the "
                                         f"[{len(theta0)}][N][d] Jacobian (one JVP per "
                                         "component)", n_solves=0)
    else:
        raise ValueError(f"mode must be 'forward' or 'reverse', got {mode!r}")
    total = np.array(total, np.float64)
    rattler = np.asarray(solver.rattlers)[obs.particle] & (obs.code == 2)
    total[rattler] = np.nan
    report = report.replace(mode=mode, reason=reason, theta_kind=pspec.kind,
                            observables=list(obs.names),
                            time_s=time.perf_counter() - t0 - t_compile,
                            time_compile_s=t_compile)
    return {"d_observable_d_theta": total, "value": np.asarray(value, np.float64),
            "report": report}
