"""One task end to end: read a packing, relax it, differentiate it, audit, write the result.

:func:`run_task` is what ``sensitivity run`` calls for each task of a config;
:func:`audit_task` is ``sensitivity check``. Both take the *resolved config dict* (see
``systems/config.py``); both report through an optional ``progress(event, **fields)``.

A relaxation that did not converge is never differentiated: the result file is still
written (relaxed positions, the minimizer's report), its responses are NaN with
``converged = False`` and the reason, and the summary says ``converged = False`` (the
command line turns that into exit code 1).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ._errors import InputError
from ._reports import SolveReport
from .schema import SCHEMA, SEED
from .settings import defaults
from ._system import minimum_image
from .tasks import PLOTS_NAME, RESULT_NAME
from .many_rhs import check_result_size
from .potentials import PairModel, real_positions, resolve_potential
from .relax import RelaxResult, Relaxer, make_relaxer, resolve_minimizer
from .contacts import gauge_fix
from .response import ResponseSolver, resolve_sensitivity
from .theta import resolve_parameters, theta_apply, theta_meaning

__all__ = ["TaskSummary", "run_task", "audit_task", "central_difference", "provenance",
           "AUDIT_TOLERANCE"]

#: An audited derivative passes when its relative difference to the finite difference is
#: at most this (with ftol 1e-12 and h = 1e-5 they agree to about 1e-7).
AUDIT_TOLERANCE = 1e-4

#: The audit re-minimizes to this max force (or the config's ftol if tighter): the central
#: difference divides the error of x*(θ ± h) by 2h.
AUDIT_FTOL = 1e-13

#: Vector θ (every diameter): the audit checks this many components.
AUDIT_COMPONENTS = 3


@dataclasses.dataclass
class TaskSummary:
    """What :func:`run_task` did.

    Attributes:
      converged: relaxation converged and every linear solve converged (and the audit
        passed, when one ran).
      message: one line: what happened, or what failed and what to try.
      result_path: the ``sensitivity.h5`` written; plot_paths: PNGs written.
      relaxation: the minimizer's report; responses: per-θ
        :class:`~systems._reports.SolveReport` (no arrays);
      zero_modes: zero-mode and conditioning figures; timings: seconds;
      n, dim, rattlers: sizes; audit: the audit dict or None.
    """

    converged: bool
    message: str
    result_path: Path
    plot_paths: list
    relaxation: dict
    responses: dict
    zero_modes: dict
    timings: dict
    n: int
    dim: int
    rattlers: int
    audit: dict | None = None


def provenance(config: Mapping[str, Any], input_path: Path, input_sha256: str) -> dict:
    """Package versions, input file SHA-256 (taken when it was read), device, x64, seed,
    command line."""
    import jax

    from .versions import versions
    device = jax.devices()[0]
    return {
        "versions": versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "input_path": str(input_path),
        "input_sha256": input_sha256,
        "device": f"{device.platform}:{getattr(device, 'device_kind', '')}",
        "x64": bool(jax.config.jax_enable_x64),
        "seed": int(config.get("seed") or SEED.default),
        "command_line": " ".join(sys.argv),
    }


# ---------------------------------------------------------------------------------------
# Shared set-up.


@dataclasses.dataclass
class _Task:
    config: Mapping[str, Any]
    input_path: Path
    system: Any
    model: PairModel
    params: Any
    minimizer: Any
    settings: dict
    pspecs: list
    relaxer: Relaxer
    #: sensitivity.observables against this packing (:mod:`systems.reverse`), and the
    #: vector θs reverse mode takes ({name: reason}: no Jacobian for them)
    observables: Any = None
    reversed: dict = dataclasses.field(default_factory=dict)
    #: the input file's SHA-256 just before it was read (the provenance's; a task read
    #: ahead, :mod:`systems.relax_ahead`, compares it with the file when its turn comes)
    input_sha256: str = ""


def _prepare(config: Mapping[str, Any], *, for_audit: bool, output_dir=None) -> _Task:
    from .io import file_sha256, read_packing

    system_cfg = {**defaults(SCHEMA["system"]), **(config.get("system") or {})}
    if not system_cfg.get("path"):
        raise InputError("config: system.path is required (the H5MD packing to read)")
    input_path = Path(system_cfg["path"])
    try:
        digest = file_sha256(input_path)
    except OSError:  # read_packing names the problem
        digest = ""
    system, file_potential = read_packing(input_path, group=system_cfg["group"],
                                          frame=system_cfg["frame"])
    where = str(input_path)
    _refuse_coincident(system, where, system_cfg["group"])
    spec = resolve_potential(config.get("potential"), system.n_species, file_potential,
                             where=where)
    minimizer = resolve_minimizer(config.get("minimizer"))
    settings = resolve_sensitivity(config.get("sensitivity"))
    pspecs = resolve_parameters(config.get("parameters"), system, spec)
    from .reverse import resolve_observables, reversed_thetas

    observables = resolve_observables(settings["observables"], system.n, system.dim, where)
    reverse = reversed_thetas(pspecs, settings, system.n, system.dim)
    check_result_size([p for p in pspecs if p.name not in reverse], system.n, system.dim,
                      settings, where=where, output_dir=output_dir)
    model = PairModel.build(system, spec)
    params = model.default_params(system.diameters)
    # The neighbor cutoff must cover every parameter set the run evaluates: with an audit,
    # θ ± h as well (jax-md silently drops pairs beyond the cutoff it was built with).
    seen = [params]
    if for_audit or settings["audit"]:
        for pspec in pspecs:
            h = _fd_step(settings, pspec, params, system)
            theta0, apply = theta_apply(pspec, params, system.species)
            for sign in (1.0, -1.0):
                seen.append(apply(params, theta0 + sign * h))
    relaxer = make_relaxer(model, minimizer, seen, where=f"{where}: /particles/"
                           f"{system_cfg['group']}/box/edges")
    return _Task(config, input_path, system, model, params, minimizer, settings, pspecs,
                 relaxer, observables, reverse, digest)


def _refuse_coincident(system, where: str, group: str) -> None:
    """InputError naming the particles when two of them sit on (nearly) the same point."""
    from ._system import COINCIDENT_FRACTION, coincident_pairs

    pairs, count = coincident_pairs(system)
    if not count:
        return
    i, j, distance = pairs[0]
    more = f" (and {count - 1} more pair(s))" if count > 1 else ""
    raise InputError(
        f"{where}: /particles/{group}/position: particles {i} and {j} are {distance:.3g} apart"
        f"{more}, closer than {COINCIDENT_FRACTION:g} of their diameter: coincident particles "
        "have no defined contact direction; move or remove one (check that the positions were "
        "not rounded to integers or written in the wrong unit)"
    )


def _fd_step(settings, pspec, params, system) -> float:
    """The finite-difference step: ``fd_step × max(1, |θ0|)`` (θ0 the typical value)."""
    theta0, _ = theta_apply(pspec, params, system.species)
    scale = float(np.max(np.abs(np.asarray(theta0))))
    return float(settings["fd_step"]) * max(1.0, scale)


def _report_not_converged(relaxed: RelaxResult) -> str:
    return relaxed.message() + "; no derivative was computed (a non-converged packing is " \
        "not differentiated)"


# ---------------------------------------------------------------------------------------
# The audit.


def central_difference(relaxer, model: PairModel, params, apply, theta0, y_star, h: float,
                       rattlers, *, component: int | None = None, ftol: float = AUDIT_FTOL):
    """``(x*(θ+h) - x*(θ-h)) / 2h`` by re-minimizing from ``x*`` at θ ± h, gauge-fixed like
    the implicit derivative (rattlers NaN, the backbone's mean motion removed).

    ``apply(params, θ)`` sets θ (:func:`~systems.response.theta_apply`); for a vector θ,
    ``component`` is the entry moved. Returns ``(fd, runs)``: ``runs`` holds, for ``+h`` and
    ``-h``, ``(relaxation, parameters, positions)`` with the positions unwrapped next to ``x*``.
    """
    y_star = np.asarray(y_star)
    box = None if model.box is None else np.asarray(model.box)
    step = h
    if component is not None:
        step = np.zeros(np.shape(theta0))
        step[component] = h
    ends, runs = [], []
    for sign in (1.0, -1.0):
        p = apply(params, np.asarray(theta0) + sign * step)
        r = relaxer.run(y_star, p, ftol=ftol)
        scale = float(np.asarray(p.scale))
        y = np.asarray(r.positions) / scale
        if box is not None:  # moved by whole box vectors to lie next to x*
            d = y - y_star
            y = y_star + minimum_image(d, box)
        ends.append(np.asarray(real_positions(p, y)))  # x = λ (I + ε) y
        runs.append((r, p, y))
    fd = gauge_fix((ends[0] - ends[1]) / (2 * h), rattlers, y_star, model.periodic)
    return fd, runs


def _contacts(model: PairModel, y, params) -> set:
    """Set of (i, j) pairs within interaction range."""
    from .contacts import _pair_table

    i, j, r, sigma, _ = _pair_table(model, y, params, model.interacting_pairs(y, params))
    reach = sigma if model.spec.kind == "soft_sphere" else model.spec.r_cutoff * sigma
    touching = r < reach
    return set(zip(i[touching].tolist(), j[touching].tolist()))


def _audit(task: _Task, solver: ResponseSolver, responses: Mapping[str, Mapping],
           progress: Callable[..., None] | None) -> dict:
    """Central differences by re-minimizing at θ ± h from x*, against the implicit result."""
    model, params, system = task.model, task.params, task.system
    y_star = np.asarray(solver.y)
    ftol = min(task.minimizer.ftol, AUDIT_FTOL)
    rattlers = solver.rattlers
    backbone = ~rattlers
    contacts0 = _contacts(model, y_star, params)
    out: dict[str, Any] = {}
    worst = 0.0
    all_passed = True
    t_start = time.perf_counter()
    for pspec in task.pspecs:
        if pspec.name not in responses:
            continue  # reverse mode: no Jacobian to check
        theta0, apply = theta_apply(pspec, params, system.species)
        h = _fd_step(task.settings, pspec, params, system)
        implicit_all = np.asarray(responses[pspec.name]["dx_dtheta"])
        if pspec.kind == "diameters":
            candidates = np.flatnonzero(backbone)
            picks = np.unique(candidates[np.linspace(0, len(candidates) - 1,
                                                     min(AUDIT_COMPONENTS, len(candidates)))
                                         .round().astype(int)])
            components = [int(c) for c in picks]
        else:
            components = [None]
        errors, abs_errors, norms, steps, changed, converged = [], [], [], [], 0, True
        for component in components:
            implicit = implicit_all if component is None else implicit_all[component]
            fd, runs = central_difference(task.relaxer, model, params, apply, theta0, y_star, h,
                                          rattlers, component=component, ftol=ftol)
            for sign, (r, p, y) in zip("+-", runs):
                converged &= r.converged
                steps.append(r.steps)
                changed += len(_contacts(model, y, p) ^ contacts0)
                if progress is not None:
                    progress("audit", name=pspec.name, side=sign, steps=r.steps,
                             max_force=r.max_force)
            diff = np.linalg.norm(fd[backbone] - implicit[backbone])
            norm = np.linalg.norm(implicit[backbone])
            abs_errors.append(float(diff))
            norms.append(float(norm))
            # a θ with no effect (e.g. a uniform ε) has a zero derivative: absolute then
            errors.append(float(diff / norm) if norm > 1e-12 else float(diff))
        rel = max(errors)
        passed = bool(converged and math.isfinite(rel) and rel <= AUDIT_TOLERANCE)
        entry = {
            "relative_error": rel,
            "max_abs_error": max(abs_errors),
            "norm_implicit": max(norms),
            "fd_step": h,
            "components": [-1 if c is None else c for c in components],
            "relax_steps": int(sum(steps)),
            "relax_converged": bool(converged),
            "contacts_changed": int(changed),
            "tolerance": AUDIT_TOLERANCE,
            "passed": passed,
        }
        if changed:
            entry["note"] = ("contacts changed between θ-h and θ+h: x*(θ) is only piecewise "
                             "smooth there; try a smaller sensitivity.fd_step")
        out[pspec.name] = entry
        worst = max(worst, rel)
        all_passed &= passed
    out["max_relative_error"] = worst
    out["ftol"] = ftol
    out["passed"] = bool(all_passed)
    out["time_s"] = time.perf_counter() - t_start
    return out


# ---------------------------------------------------------------------------------------
# Entry points.


def _compute(task: _Task, progress, *, audit: bool, stream: bool = False, prepared=None):
    """Relax, then (if converged) differentiate and optionally audit. ``stream``: leave a
    large vector θ to be computed as it is written (:meth:`ResponseSolver.run_all`).
    ``prepared``: the relaxation (and for a small packing all of this) done already
    (:mod:`systems.relax_ahead`), its progress reports replayed."""
    if prepared is not None and prepared.computed is not None:
        prepared.replay(progress)
        return prepared.computed
    relaxed = _relax(task, progress, prepared)
    if not relaxed.converged:
        return relaxed, None, None, None
    return (relaxed, *_differentiate(task, relaxed, progress, audit=audit, stream=stream))


def _relax(task: _Task, progress, prepared=None):
    """The relaxation of ``task`` (or ``prepared``'s, replayed) and its progress reports."""
    if prepared is not None:
        return prepared.replay(progress)
    if progress is not None:
        progress("start", n=task.system.n, dim=task.system.dim,
                 neighbor_list=task.relaxer.use_nl)
    relaxed = task.relaxer.run(task.system.positions, task.params, progress)
    if progress is not None:
        progress("relaxed", steps=relaxed.steps, max_force=relaxed.max_force,
                 converged=relaxed.converged, stop_reason=relaxed.stop_reason)
    return relaxed


def _differentiate(task: _Task, relaxed, progress, *, audit: bool, stream: bool):
    """``(solver, result, audit_result)`` of :func:`_compute` for a converged ``relaxed``."""
    # the θs differentiated forward (a reversed vector θ has no Jacobian)
    pspecs = [p for p in task.pspecs if p.name not in task.reversed]
    solver = ResponseSolver(task.model, relaxed.positions, task.params,
                            max_force=relaxed.max_force, settings=task.settings,
                            ahead=tuple(pspecs))
    # a vector θ nothing else reads here is computed while it is written (run_task)
    observed = bool(task.observables) and any(p.kind == "diameters" for p in pspecs)
    stream = stream and not audit and not task.settings.get("elasticity") and not observed
    result = solver.run_all(pspecs, progress, stream=stream)
    if task.observables:
        result["observable_derivatives"] = _observables(task, solver, result["responses"],
                                                        progress)
    if task.settings.get("elasticity"):
        from .elasticity import elastic_response, observable_derivatives

        result["elasticity"] = elastic_response(solver)
        # dU/dθ, dσ/dθ, dp/dθ of every θ, from the responses just solved
        for name, derivatives in observable_derivatives(solver, pspecs,
                                                        result["responses"]).items():
            result["responses"][name]["observables"] = derivatives
        # where the linear response stops: the first contact to open or close along each θ
        from .linear_range import linear_range

        for name, entry in linear_range(solver, pspecs, result["responses"]).items():
            response = result["responses"][name]
            if isinstance(entry["linear_range_plus"], float):
                response["report"] = response["report"].replace(**entry)
            else:  # a vector θ: one value per component, beside its Jacobian
                response["linear_range"] = entry
        if progress is not None:
            e = result["elasticity"]
            progress("elasticity", pressure=e["pressure"], bulk_modulus=e["bulk_modulus"],
                     shear_modulus=e["shear_modulus"], iterations=e["iterations"],
                     converged=e["converged"])
    audit_result = None
    if audit:
        audit_result = _audit(task, solver, result["responses"], progress)
    return solver, result, audit_result


def _observables(task: _Task, solver, responses, progress) -> dict:
    """``dO/dθ`` of ``sensitivity.observables`` for every vector θ: reverse mode for the
    reversed ones, else forward from the Jacobian just solved (:mod:`systems.reverse`)."""
    from .reverse import choose_mode, observable_derivatives

    out = {}
    for pspec in task.pspecs:
        if pspec.kind != "diameters":
            continue
        if pspec.name in task.reversed:
            mode, reason, dx = "reverse", task.reversed[pspec.name], None
        else:
            mode, reason = choose_mode(task.settings, len(task.observables), task.system.n)
            mode, dx = "forward", responses[pspec.name]["dx_dtheta"]
        entry = observable_derivatives(solver, pspec, task.observables, mode, reason, dx)
        out[pspec.name] = entry
        if progress is not None:
            progress("observables", name=pspec.name, mode=mode, count=len(task.observables),
                     solves=entry["report"].n_solves, reason=reason)
    return out


def run_task(config: Mapping[str, Any], output_dir: str | Path, *,
             progress: Callable[..., None] | None = None,
             config_text: str | None = None, prepared=None) -> TaskSummary:
    """Relax the configured packing, compute every ∂x*/∂θ, write ``sensitivity.h5``.

    Args:
      config: the resolved config dict.
      output_dir: folder for ``sensitivity.h5`` (and ``plots/`` when output.plots).
      progress: optional ``progress(event, **fields)``.
      config_text: the configuration as the user wrote it (stored beside the resolved one).
      prepared: this config's :class:`~systems.relax_ahead.Prepared` (read and relaxed
        ahead, in a thread, by a sweep), or None to read and relax it here.

    Returns:
      A :class:`TaskSummary` (``converged=False`` for a relaxation or solve that did not
      converge, with the reason in ``message``).

    Raises:
      InputError: a bad input file or configuration value.
    """
    from . import io

    t_total = time.perf_counter()  # (plus the time a sweep's worker spent on it, below)
    output = {**defaults(SCHEMA["output"]), **(config.get("output") or {})}
    if output["plots"]:
        from ._figure import preload

        preload()  # matplotlib loads in a thread while the physics runs
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepared if prepared is None or prepared.current() else None  # file changed
    task = (prepared.task if prepared is not None
            else _prepare(config, for_audit=False, output_dir=output_dir))
    if prepared is not None:  # read, relaxed (and maybe differentiated) in a worker
        t_total -= prepared.time_s
    relaxed, solver, result, audit_result = _compute(task, progress,
                                                     audit=bool(task.settings["audit"]),
                                                     stream=True, prepared=prepared)
    system = task.system.replace(positions=relaxed.positions)
    n, d = system.n, system.dim
    timings = {
        "time_relax_s": relaxed.time_s,
        "time_sensitivity_s": 0.0,
        "time_compile_s": relaxed.time_compile_s,
    }
    if result is None:
        message = _report_not_converged(relaxed)
        responses = {}
        for pspec in task.pspecs:
            if pspec.name in task.reversed:
                continue  # no Jacobian asked for
            shape = (n, n, d) if pspec.kind == "diameters" else (n, d)
            responses[pspec.name] = {
                "dx_dtheta": np.full(shape, np.nan),
                "report": SolveReport(kind=pspec.kind, converged=False,
                                      species=-1 if pspec.species is None
                                      else task.system.species_label(pspec.species),
                                      skipped=message),
            }
        rattlers = np.zeros(n, bool)
        zero_modes: dict = {"skipped": "relaxation did not converge"}
        converged = False
    else:
        responses = result["responses"]
        by_name = {pspec.name: pspec for pspec in task.pspecs}
        for name, response in responses.items():  # species as the input file labels them
            species = response["report"].species
            if isinstance(species, (int, np.integer)) and species >= 0:
                label = task.system.species_label(species)
                response["report"] = response["report"].replace(
                    species=label, theta_meaning=theta_meaning(by_name[name], label))
        rattlers = result["rattlers"]
        zero_modes = _flat_zero_modes(result)
        t = result["timings"]
        timings["time_sensitivity_s"] = t["time_sensitivity_s"]
        timings["time_compile_s"] += t["time_sensitivity_compile_s"]
        timings["time_setup_s"] = t["time_setup_s"]
        timings["time_diagnostics_s"] = t["time_diagnostics_s"]
        for entry in (result.get("observable_derivatives") or {}).values():
            timings["time_sensitivity_s"] += entry["report"].time_s  # reverse mode's
            timings["time_compile_s"] += entry["report"].time_compile_s
        if result.get("elasticity") is not None:
            timings["time_elasticity_s"] = result["elasticity"]["time_s"]
            timings["time_compile_s"] += result["elasticity"]["time_compile_s"]
        if audit_result is not None:
            timings["time_audit_s"] = audit_result["time_s"]
    timings["time_total_s"] = time.perf_counter() - t_total
    parameters = {
        "config": _jsonable(config),
        "potential": task.model.spec.as_dict(),
        "provenance": provenance(config, task.input_path, task.input_sha256),
    }
    if config_text is not None:
        parameters["config_text"] = config_text
    path = output_dir / RESULT_NAME
    t_write = time.perf_counter()
    io.write_result(path, system=system, relaxation=relaxed.as_dict(), responses=responses,
                    rattlers=rattlers, zero_modes=zero_modes, parameters=parameters,
                    timings=timings, audit=audit_result,
                    elasticity=None if result is None else _elastic_record(result),
                    observable_derivatives=None if result is None
                    else result.get("observable_derivatives"))
    timings = dict(timings, time_write_s=time.perf_counter() - t_write)
    for name, response in responses.items():
        report = response["report"]
        if report.streamed:  # its time was the write's
            response["report"] = report.replace(streamed=None)
            timings["time_sensitivity_s"] += report.time_s or 0.0
            if progress is not None:
                progress("solve", name=name, iterations=report.iterations,
                         residual=report.residual, converged=report.converged)
    if result is not None:  # after the write: a streamed Jacobian reports as it is written
        failed = [name for name, r in responses.items() if not r["report"].converged]
        failed += [f"the observables of {name}" for name, r in
                   (result.get("observable_derivatives") or {}).items()
                   if r["report"].converged is False]
        converged = not failed
        if failed and failed[0] not in responses:
            message = (f"the adjoint solve for {failed[0]} did not converge; loosen "
                       "sensitivity.tol or use sensitivity.mode forward")
        elif failed:
            first = responses[failed[0]]["report"]
            message = (f"the linear solve for {', '.join(failed)} did not converge "
                       f"({first.iterations} iterations, relative residual "
                       f"{first.solver_relative_residual:.1e} > tol {first.tol:.0e}); "
                       "raise sensitivity.maxiter, loosen sensitivity.tol, or use solver "
                       "minres/dense")
        else:
            message = (f"converged: {relaxed.steps} {relaxed.minimizer} steps, "
                       f"{len(responses)} derivative(s), {int(rattlers.sum())} rattler(s)")
        elastic = result.get("elasticity")
        if elastic is not None:
            if not elastic["converged"] and converged:
                converged = False
                message = (f"the elastic tensor is not converged: a strain solve stopped at "
                           f"{elastic['iterations']} iterations, relative residual "
                           f"{elastic['solver_relative_residual']:.1e} > tol "
                           f"{elastic['tol']:.0e}; raise sensitivity.maxiter or loosen "
                           "sensitivity.tol")
        if audit_result is not None:
            if not audit_result["passed"]:
                converged = False
                message = (f"finite-difference audit failed (max relative error "
                           f"{audit_result['max_relative_error']:.1e} > "
                           f"{AUDIT_TOLERANCE:.0e}); tighten minimizer.ftol or change "
                           "sensitivity.fd_step")
    if progress is not None:
        progress("written", time_s=timings["time_write_s"])
    plot_paths = []
    if output["plots"] and result is not None:
        t_plots = time.perf_counter()
        from .plots import plot_result

        plot_paths = plot_result(io.read_result(path), output_dir / PLOTS_NAME)
        timings["time_plots_s"] = time.perf_counter() - t_plots
        if progress is not None:
            progress("plotted", figures=len(plot_paths), time_s=timings["time_plots_s"])
    timings["time_total_s"] = time.perf_counter() - t_total  # the file's total ends before writing
    if progress is not None:
        progress("done", converged=converged, path=str(path))
    return TaskSummary(
        converged=converged,
        message=message,
        result_path=path,
        plot_paths=list(plot_paths),
        relaxation=relaxed.as_dict(),
        responses={k: v["report"] for k, v in responses.items()},
        zero_modes=zero_modes,
        timings=timings,
        n=n,
        dim=d,
        rattlers=int(np.asarray(rattlers).sum()),
        audit=audit_result,
    )


def audit_task(config: Mapping[str, Any], *,
               progress: Callable[..., None] | None = None) -> dict:
    """The finite-difference audit of one task (``sensitivity check``).

    Relaxes, computes every ∂x*/∂θ, re-minimizes at θ ± h from x* (h =
    ``sensitivity.fd_step`` × max(1, |θ|), to max force ``min(ftol, AUDIT_FTOL)``), and compares
    the central difference with the implicit derivative on the non-rattlers after the same
    gauge fixing. For the vector θ (every diameter) three components are checked.

    Returns:
      ``{name: {"relative_error", "max_abs_error", "passed", ...}, "max_relative_error",
      "passed", ...}``. A relaxation that did not converge gives ``passed = False`` and the
      reason.
    """
    task = _prepare(config, for_audit=True)
    relaxed, solver, result, audit_result = _compute(task, progress, audit=True)
    if result is None:
        return {"passed": False, "reason": _report_not_converged(relaxed),
                "max_relative_error": math.nan}
    failed = [name for name, r in result["responses"].items() if not r["report"].converged]
    if failed:
        audit_result["passed"] = False
        audit_result["reason"] = f"linear solve did not converge for {', '.join(failed)}"
    return audit_result


def _elastic_record(result: Mapping) -> dict | None:
    """What ``/elasticity`` holds (no timings: they are in ``/sensitivity``)."""
    elastic = result.get("elasticity")
    if elastic is None:
        return None
    return {k: v for k, v in elastic.items() if k not in ("time_s", "time_compile_s")}


def _flat_zero_modes(result: Mapping) -> dict:
    """Zero-mode and contact figures as flat ``/sensitivity`` attributes (no time keys)."""
    z = dict(result["zero_modes"])
    z.pop("time_s", None)
    out = {f"zero_modes_{k}" if k in ("expected", "found", "matches", "method") else k: v
           for k, v in z.items()}
    out.update(result["contacts"])
    return out


def _jsonable(config: Mapping[str, Any]) -> dict:
    """The config as plain JSON types."""
    return json.loads(json.dumps(config, default=lambda v: v.tolist()
                                 if hasattr(v, "tolist") else str(v)))
