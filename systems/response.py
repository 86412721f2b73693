"""The linear response of a packing's energy minimum, ∂x*/∂θ, by implicit differentiation.

At a minimum the forces vanish: ``F(x*, θ) = ∇ₓE(x*, θ) = 0``. That is the optimality
condition handed to :func:`sensitivity.custom_root`, whose linear solves (Hessian-vector
products of ``E``, matrix-free) give ``∂x*/∂θ``; nothing here writes the implicit function
theorem by hand. The decorated "solver" returns the already-relaxed positions: the
relaxation (:mod:`systems.relax`) is never differentiated.

Zero modes. A periodic packing's Hessian is singular: the ``d`` rigid translations, and
``d`` more per *rattler* (a particle held by fewer than ``d + 1`` contacts, found by
iterative removal; O'Hern et al. 2003). Rattlers carry no force at the minimum, so the
pair terms that involve a rattler are dropped and each rattler coordinate is held in the
linear system by a spring to its relaxed position (an identity-like block with a zero
right-hand side: its response is zero, reported as NaN with a mask). The unknowns stay
``N × d`` for every packing of N particles, so packings of one sweep share compiled
functions. What remains of the null space is the ``d`` translations of the backbone (plus
its rigid rotations in free space), handed to the engine's solver as ``nullspace=``: it
solves on the orthogonal complement and returns the minimum-norm answer. That *is* the
gauge: the mean response of the backbone is zero. The diagnostics count the zero modes of
the whole (rattler-masked, untethered) Hessian against ``d (1 + rattlers)``.

Cost. Every Hessian-vector product is taken at ``(x*, θ0)``, so the Hessian is assembled
once from the pair stiffness blocks into padded block rows
(:class:`~systems.hessian.BlockHessian`) and each product is a gather and a batched d×d
product. The default preconditioner, ``block_jacobi``, is folded into the operator: CG
runs on ``S H S z = S b`` with ``S = D^(-1/2)`` from the d×d diagonal blocks ``D``
(:func:`~systems.preconditioners.build_block_scaling`), which is CG preconditioned with
``D⁻¹`` at the price of plain CG per iteration, and, the right-hand side being consistent,
without the per-iteration null-space projection (the engine's ``scaling=``,
:func:`~systems._linear_system._block_scaling`); ``jacobi`` does the same with the
diagonal of ``D``. Also: nothing (``none``), ``two_level`` (block-Jacobi plus the
translations of grid cells) and ``schwarz`` (two-level additive Schwarz over compact parts
of ~16 particles, :mod:`systems.preconditioners`: about half the iterations, dearer ones
and a dearer setup; figures in ``benchmarks/README.md``). Scalar θs go through
:func:`sensitivity.root_jvp` (the JVP rule of :func:`sensitivity.custom_root`), which
returns the solve's report as a value. The default ``tol = 1e-10`` matches the accuracy of
x* at ``ftol = 1e-12``: measured at N = 1024, the derivative changes by 2e-10 (relative)
between x* relaxed to 1e-12 and to 1e-14, while a solve to ``tol`` errs by about 5 ``tol``;
a looser tolerance would throw away accuracy that x* has.

θ kinds (tangents of :class:`~systems.potentials.PotentialParams`):

- ``diameter`` (species s, scalar): every diameter of species s moves by the same amount;
  θ is the species' mean diameter. One forward-mode solve.
- ``diameters`` (vector, P = N): the full ``[N][N][d]`` Jacobian. Forward mode needs N
  solves, reverse mode N·d, so forward; :func:`systems.many_rhs.choose_method` picks, by
  size (``sensitivity.many_rhs`` overrides; the reason is in the report): one dense
  factorization for small systems (``vmap`` of the dense solve keeps the factorization
  outside the batch), one sparse factorization of the backbone Hessian
  (:mod:`systems.many_rhs`), or chunks of batched iterative solves.
- ``epsilon`` (scalar): with species s, ε of every pair involving s moves by the same
  amount (θ = ε_ss); without, a uniform ε (θ = ε) or a multiplier of the ε matrix (θ = 1).
  A single uniform ε scales the energy, so ∂x*/∂ε = 0 exactly; a species' ε does not.
- ``box`` (scalar): θ = λ scales every box edge at fixed fractional positions (θ = 1 is the
  input box); ``x*(λ) = λ y*(λ)`` so ∂x*/∂λ = y* + ∂y*/∂λ (affine + non-affine parts).
- ``strain`` (scalar, with ``component``): θ = ε_ab = ε_ba (θ = 0 is the input box), a
  symmetric small strain of the box and positions, ``x*(ε) = λ (I + ε) y*(ε)``; the total
  ∂x*/∂ε and its non-affine part λ ∂y*/∂ε (:mod:`systems.elasticity`).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from . import _compile, settings
from ._compile import device_array
from ._errors import InputError
from ._reports import SolveReport
from ._system import wrap_positions
from ._linear_system import (DENSE_SOLVERS, PRECONDITIONED_SOLVERS, SCALINGS, PackingData,
                             SolveConfig, compile_seconds, compiled, custom_root_solver,
                             engine_solver, hessian_data, merge_reports, optimality, params_at,
                             relative)
from .contacts import (clear_capacities, contact_analysis, gauge_fix, padded_pairs,
                       pair_capacity, row_capacity)
from .hessian import ell_pattern, scale_blocks
from .preconditioners import build_schwarz, two_level
from .potentials import PairModel, Pairs, PotentialParams, real_positions
from .theta import ParameterSpec, apply_theta, theta_data, theta_meaning

__all__ = ["SENSITIVITY_DEFAULTS", "ResponseSolver", "resolve_sensitivity"]

#: The solver's defaults (defined with their checks in :data:`systems.settings.SENSITIVITY`).
SENSITIVITY_DEFAULTS: dict[str, Any] = settings.defaults(settings.SENSITIVITY)
PRECONDITIONERS = settings.PRECONDITIONERS
SOLVERS = settings.SOLVERS


def resolve_sensitivity(config: Mapping[str, Any] | None, where: str = "config") -> dict:
    """Defaults updated by the ``sensitivity`` config block, checked by the rules of
    :data:`systems.settings.SENSITIVITY` (the first mistake raises :class:`InputError`)."""
    return settings.resolve_section(settings.SENSITIVITY, config, "sensitivity",
                                    settings.sensitivity_errors, where)


def clear_compile_cache() -> None:
    """Forget the compiled response functions (and the pair capacities seen)."""
    _compile.clear("response")
    clear_capacities()


# ---------------------------------------------------------------------------------------
# The derivatives, compiled: every function takes the packing's arrays as arguments
# (:class:`~systems._linear_system.PackingData`) and its settings as a static, hashable
# config (:mod:`systems._linear_system`, which owns the compile cache).


def _scalar_derivatives(cfg: SolveConfig, pk: PackingData, base, thetas0, members):
    """(P, N, d) derivatives of the real positions and the P solves' LinearSolveInfo.

    One forward-mode implicit derivative per θ (:func:`sensitivity.root_jvp`: the JVP rule
    of :func:`sensitivity.custom_root`, returning the linear solve's report as a value, so
    no host callback), the θs one after another (``lax.map``: a batched while loop would
    carry every state through selects at every iteration).
    """
    import sensitivity

    solve = engine_solver(cfg, pk, cfg.solver)

    def forces(y, thetas):
        return optimality(pk, y, params_at(cfg, base, thetas, thetas0, members))

    def positions(thetas, y):  # x = λ (I + ε) y
        return real_positions(params_at(cfg, base, thetas, thetas0, members), y)

    def one(tangent):
        dy, info = sensitivity.root_jvp(forces, pk.y, (thetas0,), (tangent,), solve=solve,
                                        full_output=True)
        return jax.jvp(positions, (thetas0, pk.y), (tangent, dy))[1], info

    return jax.lax.map(one, jnp.eye(thetas0.shape[0], dtype=thetas0.dtype))


def _vector_derivative(cfg: SolveConfig, pk: PackingData, base, theta0, member):
    """``(dx (N, N, d), iterations (N,))``: one forward-mode solve per component of a vector
    θ (iterations 0 for a dense solve)."""
    import sensitivity

    (tag,) = cfg.tags
    relaxed = custom_root_solver(cfg, pk, report=False)
    n, d = pk.y.shape

    def params_of(theta):
        return apply_theta(tag, base, theta, theta0, member)

    def x_of(theta):
        params = params_of(theta)
        return real_positions(params, relaxed(pk.y, params))

    if cfg.solver in DENSE_SOLVERS:
        # vmap keeps the factorization, which does not depend on the right-hand side,
        # outside the batch: one factorization for every column
        return (jnp.moveaxis(jax.jacfwd(x_of)(theta0), -1, 0),
                jnp.zeros(theta0.shape[0], jnp.int32))
    chunk = cfg.chunk
    n_chunks = -(-n // chunk)
    solve = engine_solver(cfg, pk, cfg.solver)

    def forces(y, theta):
        return optimality(pk, y, params_of(theta))

    def one(tangent):  # root_jvp: the JVP rule of custom_root, with the solve's report
        dy, info = sensitivity.root_jvp(forces, pk.y, (theta0,), (tangent,), solve=solve,
                                        full_output=True)
        s0, ds = jax.jvp(lambda t: params_of(t).scale, (theta0,), (tangent,))
        return s0 * dy + ds * pk.y, info.iterations

    def columns(k0):
        tangents = jax.nn.one_hot(k0 + jnp.arange(chunk), n, dtype=jnp.float64)
        return jax.vmap(one)(tangents)

    out, iterations = jax.lax.map(columns, jnp.arange(n_chunks) * chunk)
    return out.reshape((-1, n, d))[:n], iterations.reshape(-1)[:n]


def _column_residuals(cfg: SolveConfig, pk: PackingData, base, theta0, member, dy):
    """``‖H dy_k - b_k‖`` and ``‖b_k‖`` for every column k of a vector θ, and the same in
    the norm the solver's convergence test uses (``‖S r‖``, ``‖S b‖`` for the scaled
    system of :func:`~systems._linear_system._block_scaling`; the plain norms otherwise)."""
    (tag,) = cfg.tags
    scaled = cfg.solver in PRECONDITIONED_SOLVERS and cfg.preconditioner in SCALINGS

    def column(k):
        tangent = jnp.zeros_like(theta0).at[k].set(1.0)
        b = -jax.jvp(lambda t: optimality(pk, pk.y, apply_theta(tag, base, t, theta0,
                                                                 member)),
                     (theta0,), (tangent,))[1]
        hv = jax.jvp(lambda y: optimality(pk, y, base), (pk.y,), (dy[k],))[1]
        r = hv - b
        if scaled:
            r_s, b_s = scale_blocks(pk.precond.scale, r), scale_blocks(pk.precond.scale, b)
        else:
            r_s, b_s = r, b
        return tuple(jnp.linalg.norm(a) for a in (r, b, r_s, b_s))

    return jax.lax.map(column, jnp.arange(dy.shape[0]))



class ResponseSolver:
    """∂x*/∂θ at a relaxed packing, through :func:`sensitivity.custom_root`.

    Rattlers carry no force at the minimum and their pair terms are dropped; in the linear
    system each rattler coordinate is held by a spring to its relaxed position (an identity
    block: its right-hand side is zero, so its response is zero, reported as NaN with a
    mask) which keeps the unknowns at ``N × d`` for every packing of N particles (shared
    compiled functions). What is left of the null space is the ``d`` rigid translations of
    the backbone (plus its rigid rotations in free space), handed to the engine's solver
    as ``nullspace=``; its minimum-norm answer is the gauge (mean response of the backbone
    zero).

    Args:
      model: the pair model.
      positions: relaxed real positions ``(N, d)`` at ``params``.
      params: the parameters at which they were relaxed.
      max_force: the residual max per-particle force of the relaxation (contact threshold).
      settings: the resolved ``sensitivity`` block.
    """

    def __init__(self, model: PairModel, positions, params: PotentialParams, *,
                 max_force: float, settings: Mapping[str, Any],
                 ahead: tuple[ParameterSpec, ...] = ()):
        t0 = time.perf_counter()
        compile0 = compile_seconds()
        self.model = model
        self.settings = dict(settings)
        params = jax.tree.map(lambda a: device_array(a, np.float64), params)
        self.params = params
        y = np.asarray(positions, np.float64) / float(params.scale)
        if model.periodic:
            y = wrap_positions(y, np.asarray(model.box))
        self.y = device_array(y, np.float64)
        self.max_force = float(max_force)
        contacts = contact_analysis(model, self.y, params, max_force=max_force,
                                    min_contacts=settings.get("rattler_contacts"))
        self.contacts = contacts
        self.rattlers = contacts["rattlers"]
        self.backbone = np.flatnonzero(~self.rattlers)
        if len(self.backbone) == 0:
            most = contacts["max_contacts_per_particle"]
            raise InputError(
                f"every one of the {model.n} particles is a rattler after relaxation (fewer "
                f"than {contacts['min_contacts']} contacts each, at most {most}): the relaxed "
                "packing is not jammed (its overlaps relaxed away), so x* does not depend on "
                "θ and there is no response to differentiate; start from a denser packing "
                "(higher packing fraction) or a potential with attraction")
        n = model.n
        pairs = contacts["pairs"]
        i, j = np.asarray(pairs.i), np.asarray(pairs.j)
        keep = ~self.rattlers[i] & ~self.rattlers[j]
        #: the backbone's pairs (compact half list, numbered as in the whole packing)
        self.pairs = Pairs.from_arrays(i[keep], j[keep])
        padded = padded_pairs(i[keep], j[keep], n, pair_capacity(int(keep.sum()), n))
        cfg = self._config()
        # Every Hessian-vector product of the implicit derivative is taken at (y*, θ0): the
        # pair stiffness blocks, the Hessian in block rows and the block scaling are
        # computed once, here, in one compiled call; the host finds only where each
        # pair's blocks go (integers).
        row_entries = 1 + np.bincount(np.concatenate([i[keep], j[keep]]), minlength=n).max()
        pattern = ell_pattern(padded.i, padded.j, n,
                              capacity=row_capacity(int(row_entries), n))
        active = device_array(~self.rattlers, np.float64)
        args = (model, self.y, params, padded, pattern, active)
        self._compile_ahead(cfg, args, [p for p in ahead if p.kind != "diameters"])
        exe, _ = compiled(hessian_data, cfg, *args)
        stiffness, tether, hessian, precond = exe(*args)
        if self.settings.get("preconditioner") == "two_level":
            precond = two_level(model, np.asarray(stiffness), padded, np.asarray(self.y),
                                tether=float(tether), rattlers=self.rattlers)
        elif self.settings.get("preconditioner") == "schwarz":
            precond = build_schwarz(hessian, np.asarray(self.y), model.box if model.periodic
                                    else None, active=~self.rattlers)
        #: the arrays every compiled function of this packing takes
        self.data = PackingData(model, self.y, active, padded, stiffness, tether, hessian,
                                precond)
        #: compilation seconds of this packing's response functions (setup, solves,
        #: diagnostics): 0 when an earlier packing of the same shapes compiled them
        self.time_compile_s = compile_seconds() - compile0
        #: setup wall-clock seconds (contacts, rattlers, stiffness), compilation excluded
        self.time_setup_s = time.perf_counter() - t0 - self.time_compile_s

    def _compile_ahead(self, cfg: SolveConfig, args: tuple, scalars: list) -> None:
        """On a first compilation of ``hessian_data``, compile the forward solve of the
        scalar θs ``scalars`` (those :meth:`scalar_derivatives` will be given) meanwhile, in a
        thread: the two compilations overlap (about 1 and 2 s in a first run of the bundled
        example). The solve's arguments take ``hessian_data``'s outputs as
        :func:`systems._compile.abstract_outputs` gives them, so the key is the one asked
        for later. Only a head start: any failure leaves the compilation to
        :meth:`scalar_derivatives`.
        """
        if (not scalars or self.settings.get("preconditioner") in ("two_level", "schwarz")
                or not _compile.first_compilation(hessian_data, cfg, *args)):
            return
        model, y, _, padded, _, active = args

        def compile_solve():
            try:
                out = _compile.abstract_outputs(hessian_data, cfg, *args)
                data = PackingData(model, y, active, padded, *out)
                solve_cfg, solve_args = self._scalar_call(scalars, data)
                compiled(_scalar_derivatives, solve_cfg, *solve_args)
            except Exception:  # noqa: BLE001  (scalar_derivatives compiles it then)
                pass

        threading.Thread(target=compile_solve, name="compile-ahead", daemon=True).start()

    def _scalar_call(self, pspecs: list[ParameterSpec], data: PackingData) -> tuple:
        """``(cfg, args)`` of the batched forward solve of the scalar θs ``pspecs``."""
        species = np.asarray(self.model.species)
        thetas = [theta_data(p, self.params, species) for p in pspecs]
        cfg = self._config(tags=[tag for tag, _, _ in thetas])
        thetas0 = device_array([np.asarray(t0) for _, t0, _ in thetas], np.float64)
        return cfg, (data, self.params, thetas0, tuple(m for _, _, m in thetas))

    def _config(self, solver: str | None = None, *, report: bool = True, tags=(),
                chunk: int = 0, steps: int = 0) -> SolveConfig:
        s = self.settings
        return SolveConfig(solver=solver or s["solver"], tol=float(s["tol"]),
                       maxiter=None if s.get("maxiter") is None else int(s["maxiter"]),
                       preconditioner=str(s.get("preconditioner") or "none"), report=report,
                       tags=tuple(tags), chunk=int(chunk), steps=int(steps))

    @property
    def n_dof(self) -> int:
        """Unknowns of the linear system (every coordinate; rattlers' are tethered)."""
        return self.model.n * self.model.dim

    # ---- the decorated solver -----------------------------------------------------------
    def relaxed_solver(self, solver_name: str | None = None, report: bool = True):
        """``solver(init, params) -> y*`` decorated with ``sensitivity.custom_root``.

        The relaxation already happened: the decorated function returns ``init`` (the
        relaxed reference positions ``self.y``), so only the implicit derivative is
        computed here, and only at the parameters of the relaxation.
        """
        return custom_root_solver(self._config(solver_name, report=report), self.data)

    def positions_of(self, solver, params):
        """Real positions ``(N, d)`` from the decorated solver at ``params``."""
        return real_positions(params, solver(self.y, params))

    # ---- derivatives -------------------------------------------------------------------
    def _run(self, fn, cfg, *args):
        """Run a cached compiled function: (result, t_run, t_compile)."""
        exe, t_compile = compiled(fn, cfg, *args)
        self.time_compile_s += t_compile
        t0 = time.perf_counter()
        out = jax.block_until_ready(exe(*args))
        t_run = time.perf_counter() - t0
        return jax.tree.map(np.asarray, out), t_run, t_compile

    def scalar_derivatives(self, pspecs: list[ParameterSpec]) -> dict:
        """∂x*/∂θ for scalar θs, all in one compiled, batched forward-mode solve.

        Returns {name: (dx_dtheta (N, d), SolveReport)}.
        """
        s = self.settings
        cfg, args = self._scalar_call(pspecs, self.data)
        thetas0 = args[2]
        (dx, infos), t_run, t_compile = self._run(_scalar_derivatives, cfg, *args)
        out = {}
        infos = jax.tree.map(np.asarray, infos)  # indexed on the host: no device programs
        for k, pspec in enumerate(pspecs):
            info = merge_reports([jax.tree.map(lambda a: a[k], infos)])
            report = self.report(pspec, np.asarray(thetas0)[k], s["solver"], "forward mode", info,
                                 time_s=t_run, time_compile_s=t_compile,
                                 batched_with=[p.name for p in pspecs])
            out[pspec.name] = (self._gauge(dx[k]), report)
        return out

    def vector_derivative(self, pspec: ParameterSpec,
                          progress: Callable[..., None] | None = None,
                          stream: bool = False) -> tuple[np.ndarray, SolveReport]:
        """The ``[N][N][d]`` Jacobian of every particle's diameter (kind ``diameters``).

        Forward mode: N right-hand sides (reverse mode would need N·d), solved by the method
        :func:`~systems.many_rhs.choose_method` picks (the report's ``many_rhs`` and
        ``reason``): one dense factorization, one sparse factorization
        (:func:`~systems.many_rhs.factorized_vector_derivative`), or chunks of batched
        iterative solves.

        ``stream``: on the factorization path, return a
        :class:`~systems.many_rhs.FactorizedJacobian` (computed block by block while
        :func:`systems.io.write_result` writes it; its report is filled in then) and
        a report with the method and the reason only (``streamed``).
        """
        from .many_rhs import FactorizedJacobian, choose_method, factorized_vector_derivative

        s = self.settings
        n, d = self.model.n, self.model.dim
        many_rhs, reason = choose_method(s, self.n_dof, n, d)
        if many_rhs == "factorization":
            try:
                if stream:
                    jacobian = FactorizedJacobian(self, pspec, reason, progress=progress)
                    return jacobian, SolveReport(kind=pspec.kind, many_rhs=many_rhs,
                                                 reason=reason, streamed=True)
                return factorized_vector_derivative(self, pspec, reason, progress=progress)
            except np.linalg.LinAlgError as error:  # a zero mode beyond the rigid motions
                many_rhs = "iterative"
                reason = f"{reason}; the factorization failed ({error}): Krylov solves instead"
        solver_name = s["solver"]
        if many_rhs == "dense":
            solver_name = solver_name if solver_name in DENSE_SOLVERS else "dense"
            method = f"forward mode, one dense factorization for {n} right-hand sides"
        else:
            solver_name = solver_name if solver_name not in DENSE_SOLVERS else "cg"
            method = f"forward mode, {n} batched iterative solves"
        tag, theta0, member = theta_data(pspec, self.params, np.asarray(self.model.species))
        capacity = int(self.data.pairs.i.shape[0])
        chunk = max(1, min(n, int(2 ** 22 // max(capacity * d, 1))))
        # No report per column (a host callback each: most of the time of a dense solve for
        # a few hundred columns); the residuals are checked below, all columns at once.
        cfg = self._config(solver_name, report=False, tags=[tag], chunk=chunk)
        (dx, iterations), t_run, t_compile = self._run(_vector_derivative, cfg, self.data,
                                                       self.params, theta0, member)
        info = self._residuals(cfg, dx, theta0, member)
        info.update(iterations=int(np.max(iterations, initial=0)),
                    iterations_total=int(np.sum(iterations)))
        report = self.report(pspec, theta0, solver_name, method, info, time_s=t_run,
                             time_compile_s=t_compile, many_rhs=many_rhs, reason=reason)
        return self._gauge(dx), report

    def _residuals(self, cfg, dx, theta0, member) -> dict:
        """``‖H v_p - b_p‖`` of every column of a vector θ, recomputed (one batched pass);
        converged by the solver's own test (:func:`_column_residuals`)."""
        from sensitivity import within_tolerance

        s = self.settings
        dy = jnp.asarray(np.asarray(dx))  # (P, N, d); rattler rows 0, H t = 0 on the gauge
        (res, rhs, res_s, rhs_s), _, _ = self._run(_column_residuals, cfg, self.data,
                                                   self.params, theta0, member, dy)
        rel = relative(res, rhs)
        # the solver's own test (on the scaled system for jacobi / block_jacobi)
        rel_s = relative(res_s, rhs_s)
        # the solver's own test (a relative 1e-6 of slack: these residuals are recomputed
        # through the optimality map, not the solver's operator)
        ok = np.isfinite(res) & within_tolerance(np.asarray(res_s), np.asarray(rhs_s),
                                                 float(s["tol"]) * (1 + 1e-6), 1e-300)
        return {
            "iterations": 0,  # the caller's: the solver's iterations
            "iterations_total": 0,
            "residual": float(res.max()) if res.size else 0.0,
            "relative_residual": float(rel.max()) if rel.size else 0.0,
            "solver_relative_residual": float(rel_s.max()) if rel_s.size else 0.0,
            "converged": bool(ok.all()),
            "inconsistency": 0.0,
            "n_solves": int(res.size),
        }

    def _gauge(self, dx):
        return gauge_fix(dx, self.rattlers, np.asarray(self.y), self.model.periodic)

    def report(self, pspec, theta0, solver_name: str, method: str, info: Mapping,
               **figures) -> SolveReport:
        """θ's :class:`~systems._reports.SolveReport`: θ, the solver and its settings, the
        solves' figures ``info`` (:func:`~systems._linear_system.merge_reports`) and
        ``figures`` (timings, the many-right-hand-side method)."""
        s = self.settings
        theta_value = np.asarray(theta0)
        return SolveReport(
            kind=pspec.kind,
            species=-1 if pspec.species is None else int(pspec.species),
            theta=theta_value.tolist() if theta_value.ndim else float(theta_value),
            theta_meaning=theta_meaning(pspec),
            component=pspec.component or None,
            solver=solver_name,
            method=method,
            preconditioner=(s.get("preconditioner") or "none")
            if solver_name in PRECONDITIONED_SOLVERS else "none",
            tol=float(s["tol"]),
            **info,
            **figures,
        )

    # ---- diagnostics -------------------------------------------------------------------
    def zero_modes(self, seed: int = 0) -> dict:
        """Zero modes found against ``d (1 + rattlers)`` and conditioning figures of the
        backbone Hessian (:func:`systems.diagnostics.zero_modes`)."""
        from .diagnostics import zero_modes

        return zero_modes(self, seed)



    def run_all(self, pspecs: list[ParameterSpec],
                progress: Callable[..., None] | None = None, stream: bool = False) -> dict:
        """Every θ's derivative, then the zero-mode diagnostics (see :func:`response`).

        ``stream``: a vector θ on the factorization path is left to be computed while it is
        written (:meth:`vector_derivative`); its report says ``streamed``."""
        responses = {}
        t_solve = 0.0
        scalars = [p for p in pspecs if p.kind != "diameters"]
        results = self.scalar_derivatives(scalars) if scalars else {}
        if scalars:
            t_solve += results[scalars[0].name][1].time_s
        for pspec in pspecs:
            if pspec.kind == "diameters":
                results[pspec.name] = self.vector_derivative(pspec, progress, stream)
                t_solve += results[pspec.name][1].time_s or 0.0
        for pspec in pspecs:
            dx, report = results[pspec.name]
            responses[pspec.name] = {"dx_dtheta": dx, "report": report}
            if report.streamed:
                continue  # reported as it is written
            if pspec.kind == "strain":  # the non-affine part, beside the total
                from .elasticity import nonaffine_part

                responses[pspec.name]["nonaffine"] = nonaffine_part(
                    dx, pspec.component, np.asarray(self.y), float(self.params.scale),
                    self.rattlers)
            if progress is not None:
                progress("solve", name=pspec.name, iterations=report.iterations,
                         residual=report.residual, converged=report.converged)
        zero_modes = self.zero_modes()
        contacts = {k: v for k, v in self.contacts.items() if k not in ("rattlers", "pairs")}
        return {
            "responses": responses,
            "rattlers": self.rattlers,
            "zero_modes": zero_modes,
            "contacts": contacts,
            "timings": {
                "time_sensitivity_s": t_solve,
                # every response function compiled for this packing (setup, solves,
                # diagnostics); 0 when a packing of the same shapes came before
                "time_sensitivity_compile_s": self.time_compile_s,
                "time_setup_s": self.time_setup_s,
                "time_diagnostics_s": zero_modes["time_s"],
            },
        }
