"""Result files read back without jax: :func:`read_result` gives a :class:`Result` (numpy
arrays, the solve and relaxation reports), :func:`copy_result` copies one into another file.
The layout is in :mod:`systems.io`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._errors import InputError
from ._h5 import (
    ELASTICITY_DATASETS,
    OBSERVABLE_DERIVATIVES,
    RESULT_FORMAT,
    RESULT_FORMAT_VERSION,
    checked_read,
    decode,
    jacobian_unit,
    open_for_reading,
    read_tree,
    require,
)
from ._packing_file import PackingReader
from ._reports import ObservableReport, RelaxReport, SolveReport
from .settings import LAST_FRAME, PARTICLES_GROUP
from ._system import ParticleSystem, cell_matrix, wrap_positions


@dataclasses.dataclass(frozen=True, eq=False)
class Result:
    """Everything a ``sensitivity.h5`` result file holds (see :func:`write_result`).

    What :func:`read_result` returns: numpy arrays, no jax. By name: :attr:`positions`,
    :attr:`box`, :attr:`diameters`, :attr:`species`, :attr:`rattlers`, :attr:`provenance`;
    per θ, :meth:`response` (the Jacobian, its unit and the solve's report),
    :meth:`magnitudes` and :meth:`predicted_system` (``x* + Δθ · ∂x*/∂θ``).

    Attributes:
        system: the relaxed packing (``/particles/all``).
        relaxation: the minimizer's :class:`RelaxReport` (steps, energy, max_force,
            stop_reason, converged, ...).
        responses: ``{name: {"dx_dtheta": array, "report": SolveReport, ...}}``, one entry
            per parameter θ: ``dx_dtheta`` is ``[N][d]`` for a scalar θ and ``[P][N][d]`` for
            a θ with P components; rattler rows are NaN. ``report``
            (:class:`~systems._reports.SolveReport`) holds θ's value, the solver,
            iterations, residual, converged, ...
        rattlers: ``[N]`` bool mask.
        zero_modes: zero-mode and conditioning figures.
        parameters: ``{"config": dict, "provenance": dict, ...}`` (``/parameters``).
        timings: wall-clock timings in seconds (``time_relax_s``, ``time_sensitivity_s``,
            ``time_compile_s``, ...).
        audit: the finite-difference audit, or ``None`` when it was not run.
        path: the file it was read from (``None`` if built in memory).
    """

    system: ParticleSystem
    relaxation: RelaxReport
    responses: dict
    rattlers: np.ndarray
    zero_modes: dict
    parameters: dict
    timings: dict
    audit: dict | None = None
    path: Path | None = None
    elasticity: dict | None = None
    #: ``{θ name: {"d_observable_d_theta" (K, P), "value" (K,), "report": ObservableReport}}``
    #: (``/observable_derivatives``, computed by :mod:`systems.reverse`)
    observable_derivatives: dict = dataclasses.field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The parameter names, in the order they were written."""
        return list(self.responses)

    def dx_dtheta(self, name: str) -> np.ndarray:
        """``dx*/dθ`` for parameter ``name`` (``[N][d]`` or ``[P][N][d]``)."""
        return self.responses[name]["dx_dtheta"]

    @property
    def converged(self) -> bool:
        """True when the relaxation and every linear solve (the elastic tensor's included)
        report convergence."""
        ok = bool(True if self.relaxation.converged is None else self.relaxation.converged)
        for response in self.responses.values():
            converged = response["report"].converged
            ok = ok and bool(True if converged is None else converged)
        if self.elasticity is not None:  # the strain solves of the elastic tensor
            ok = ok and bool(self.elasticity.get("converged", True))
        return ok

    def __repr__(self) -> str:
        where = f"{str(self.path)!r}, " if self.path is not None else ""
        return (f"Result({where}n={self.system.n}, dim={self.system.dim}, "
                f"thetas={self.names}, rattlers={int(np.sum(self.rattlers))}, "
                f"converged={self.converged})")

    # -- the packing, by name -----------------------------------------------------------

    @property
    def positions(self) -> np.ndarray:
        """``[N][d]`` relaxed positions x* (wrapped into a periodic box)."""
        return self.system.positions

    @property
    def box(self) -> np.ndarray | None:
        """``[d]`` box edge lengths, or a sheared cell's ``[d][d]`` cell matrix (columns = cell
        vectors); ``None``: free boundaries."""
        return self.system.box

    @property
    def diameters(self) -> np.ndarray:
        """``[N]`` particle diameters."""
        return self.system.diameters

    @property
    def species(self) -> np.ndarray:
        """``[N]`` integer species."""
        return self.system.species

    @property
    def config(self) -> dict:
        """The resolved configuration of the run (``{}`` if the file has none)."""
        config = self.parameters.get("config")
        return config if isinstance(config, dict) else {}

    @property
    def provenance(self) -> dict:
        """Package versions, input file and its SHA-256, device, x64, command line."""
        return dict(self.parameters.get("provenance") or {})

    # -- responses ------------------------------------------------------------------------

    def response(self, name: str | None = None) -> "Response":
        """θ ``name``'s Jacobian and its report (default: the only or first θ)."""
        if name is None:
            if not self.names:
                raise InputError(f"{self.path or 'result'}: /sensitivity holds no responses")
            name = self.names[0]
        if name not in self.responses:
            raise InputError(
                f"{self.path or 'result'}: /sensitivity/{name} is missing, expected one of: "
                f"{', '.join(self.names) or 'none'}"
            )
        entry = self.responses[name]
        report = entry["report"]
        description = dict(entry.get("description") or {})
        unit, theta_unit = jacobian_unit(report.kind)  # files written before the attrs
        unit = str(description.get("unit", unit))
        theta_unit = str(description.get("theta_unit", theta_unit))
        theta = report.theta
        return Response(
            name=name,
            dx_dtheta=entry["dx_dtheta"],
            kind=report.kind,
            theta=None if theta is None else (np.asarray(theta, dtype=np.float64)
                                              if np.ndim(theta) else float(theta)),
            unit=unit or "unknown",
            theta_unit=theta_unit,
            converged=report.converged,
            report=report,
            description=description,
        )

    def magnitudes(self, name: str | None = None, component: int | None = None) -> np.ndarray:
        """``[N]`` per-particle response magnitudes (see :meth:`Response.magnitudes`)."""
        return self.response(name).magnitudes(component)

    def predicted_system(self, name: str | None, delta: Any) -> ParticleSystem:
        """The packing linear response predicts at ``θ + Δθ``: ``x* + Δθ · ∂x*/∂θ``.

        ``delta`` is a number for a scalar θ, a ``[P]`` vector for a θ with P components
        (``x* + Σ_p Δθ_p ∂x*/∂θ_p``). What θ moves moves too: a species' diameter
        (``diameter``), every diameter (``diameters``), the box edges (``box``: edges ×
        (λ + Δλ)/λ), the cell (``strain``: ``(I + Δε E) H`` for the unit symmetric strain
        ``E`` of the component, a sheared cell for a shear). Positions are wrapped into the
        (new) periodic box. Rattlers, whose
        response is undefined (NaN), stay where they are. The prediction is in the result's
        gauge (backbone mean unchanged) and holds while no contact opens or closes.
        """
        response = self.response(name)
        field = response.dx_dtheta
        if field.ndim == 3:
            delta = np.asarray(delta, dtype=np.float64)
            if delta.shape != (field.shape[0],):
                raise ValueError(
                    f"theta {response.name!r} has {field.shape[0]} components: delta must "
                    f"have shape ({field.shape[0]},), got {delta.shape}"
                )
            step = np.einsum("p,pnd->nd", delta, np.nan_to_num(field, nan=0.0))
        else:
            delta = float(delta)
            step = delta * np.nan_to_num(field, nan=0.0)
        moved = np.isfinite(field).all(axis=-1)
        if field.ndim == 3:
            moved = moved.all(axis=0)
        positions = self.positions + np.where(moved[:, None], step, 0.0)
        diameters, box = self.diameters, self.box
        if response.kind == "diameter":
            species = response.report.species
            diameters = diameters + delta * (self.species == species)
        elif response.kind == "diameters":
            diameters = diameters + delta
        elif response.kind == "box" and box is not None:
            box = box * (response.theta + delta) / response.theta
        elif response.kind == "strain" and box is not None \
                and response.report.component is not None:
            a, b = ("xyz".index(c) for c in str(response.report.component))
            unit = np.zeros((self.system.dim, self.system.dim))
            unit[a, b] = unit[b, a] = 1.0
            box = (np.eye(self.system.dim) + delta * unit) @ cell_matrix(box)
        if self.system.periodic:
            positions = wrap_positions(positions, box)
        return self.system.replace(positions=positions, diameters=diameters, box=box)

    def predicted_positions(self, name: str | None, delta: Any) -> np.ndarray:
        """``[N][d]`` positions of :meth:`predicted_system`."""
        return self.predicted_system(name, delta).positions


def response_magnitudes(dx_dtheta: np.ndarray, component: int | None = None) -> np.ndarray:
    """|∂x*_i/∂θ| per particle: ``[N][d]`` -> ``[N]``; ``[P][N][d]`` -> ``[N]``, the norm
    over θ's components and the axes (or one component's, with ``component``).

    Rattler rows (NaN) stay NaN.
    """
    field = np.asarray(dx_dtheta, dtype=np.float64)
    if field.ndim == 3 and component is not None:
        field = field[component]
    if field.ndim == 2:
        return np.linalg.norm(field, axis=-1)
    return np.sqrt(np.sum(field**2, axis=(0, 2)))


@dataclasses.dataclass(frozen=True, eq=False)
class Response:
    """One θ of a result: its Jacobian ``∂x*/∂θ`` and the linear solve's report.

    Attributes:
        name: θ's name (``/sensitivity/<name>``).
        dx_dtheta: ``[N][d]`` (scalar θ) or ``[P][N][d]`` (θ with P components), in
            :attr:`unit`; rattler rows NaN; backbone mean zero (the gauge).
        kind: ``diameter``, ``diameters``, ``epsilon`` or ``box``.
        theta: θ's value at x* (a float, or ``[P]``).
        unit: H5MD unit string of ``dx_dtheta`` (length per unit of θ; reduced units).
        theta_unit: θ's unit.
        converged: whether the linear solve converged (``None``: not recorded).
        report: the solve's :class:`~systems._reports.SolveReport` (solver, iterations,
            residual, tol, time_s, ...: the group's attributes).
        description: the dataset's attributes (axes, gauge, rattler rows, θ definition).
    """

    name: str
    dx_dtheta: np.ndarray
    kind: str | None
    theta: float | np.ndarray | None
    unit: str
    theta_unit: str
    converged: bool | None
    report: SolveReport
    description: dict

    def __repr__(self) -> str:
        shape = "x".join(str(size) for size in self.dx_dtheta.shape)
        theta = (f"{self.theta:g}" if isinstance(self.theta, float) else "?"
                 if self.theta is None else f"[{np.size(self.theta)} values]")
        return (f"Response({self.name!r}, kind={self.kind!r}, theta={theta} {self.theta_unit}, "
                f"dx_dtheta {shape} [{self.unit}], converged={self.converged})")

    @property
    def vector(self) -> bool:
        """True for a θ with several components (``[P][N][d]``)."""
        return self.dx_dtheta.ndim == 3

    def magnitudes(self, component: int | None = None) -> np.ndarray:
        """``[N]`` |∂x*_i/∂θ| (:func:`response_magnitudes`); NaN for rattlers."""
        return response_magnitudes(self.dx_dtheta, component)


def _read_elasticity(handle: h5py.File, label: str, dim: int) -> dict | None:
    group = handle.get("elasticity")
    if not isinstance(group, h5py.Group):
        return None
    out = read_tree(group, skip=tuple(ELASTICITY_DATASETS))
    for key, ndim in ELASTICITY_DATASETS.items():
        item = group.get(key)
        if item is None:
            continue
        where = f"/elasticity/{key}"
        value = checked_read(item, where, label).astype(np.float64, copy=False)
        ok = value.ndim == ndim and value.shape[-1] == dim
        if key in ("stress", "elastic_tensor"):
            ok = ok and value.shape == (dim,) * ndim
        elif key == "per_particle_stress":
            ok = ok and value.shape[1:] == (dim, dim)
        if not ok:
            expected = {"stress": "[d][d]", "elastic_tensor": "[d][d][d][d]",
                        "nonaffine": "[m][N][d]", "per_particle_stress": "[N][d][d]"}[key]
            raise InputError(f"{label}: {where} has shape {list(value.shape)}, expected "
                             f"{expected} with d = {dim}")
        out[key] = value
    return out



def _read_observable_derivatives(handle) -> dict:
    """``{name: {"d_observable_d_theta", "value", "report"}}`` from an open result file
    (empty when it has none)."""
    top = handle.get(OBSERVABLE_DERIVATIVES)
    if not isinstance(top, h5py.Group):
        return {}
    out = {}
    for name, group in top.items():
        out[name] = {"d_observable_d_theta": np.asarray(group["d_observable_d_theta"]),
                     "value": np.asarray(group["value"]),
                     "report": ObservableReport.from_attrs(
                         read_tree(group, skip=("d_observable_d_theta", "value")))}
    return out


def read_result(path: str | os.PathLike) -> Result:
    """Read a result file written by :func:`write_result` (the output of ``sensitivity run``).

    Raises:
        InputError: the file is missing, not HDF5, not a sensitivity result (for example an
            input packing), or a required item is malformed.
    """
    with open_for_reading(path) as (handle, label):
        sensitivity = handle.get("/sensitivity")
        if not isinstance(sensitivity, h5py.Group) \
                or sensitivity.attrs.get("format") != RESULT_FORMAT:
            hint = " (this looks like an input packing)" if "particles" in handle else ""
            raise InputError(
                f"{label}: /sensitivity is missing or has no attribute format = '{RESULT_FORMAT}', "
                f"expected a result file written by `sensitivity run`{hint}"
            )
        version = decode(sensitivity.attrs.get("format_version", 0))
        if not isinstance(version, int) or version > RESULT_FORMAT_VERSION:
            raise InputError(
                f"{label}: /sensitivity attribute format_version = {version!r}, expected at most "
                f"{RESULT_FORMAT_VERSION} (written by a newer sensitivity; upgrade to read it)"
            )
        system = PackingReader(handle, label, PARTICLES_GROUP).read_system(LAST_FRAME)
        rattlers_item = require(handle, label, "/sensitivity/rattlers", h5py.Dataset,
                                f"[{system.n}] bool")
        rattlers = checked_read(rattlers_item, "/sensitivity/rattlers", label).astype(bool)
        if rattlers.shape != (system.n,):
            raise InputError(
                f"{label}: /sensitivity/rattlers has shape {rattlers.shape}, expected "
                f"({system.n},) to match /particles/all/position"
            )
        figures = {}
        for key in ("timings", "zero_modes"):
            names = decode(sensitivity.attrs.get(f"{key}_keys", np.array([], dtype="S1")))
            figures[key] = {
                name: decode(sensitivity.attrs[name]) for name in names if name in sensitivity.attrs
            }
        responses = {}
        for name, group in sensitivity.items():
            if not isinstance(group, h5py.Group):
                continue
            where = f"/sensitivity/{name}/dx_dtheta"
            dataset = require(handle, label, where, h5py.Dataset, "[N][d] or [P][N][d] float")
            dx_dtheta = checked_read(dataset, where, label).astype(np.float64, copy=False)
            if dx_dtheta.ndim not in (2, 3) or dx_dtheta.shape[-2:] != (system.n, system.dim):
                raise InputError(
                    f"{label}: {where} has shape {dx_dtheta.shape}, expected ({system.n}, "
                    f"{system.dim}) or (P, {system.n}, {system.dim})"
                )
            response = {"dx_dtheta": dx_dtheta, "report": SolveReport.from_attrs(
                read_tree(group, skip=("dx_dtheta", "extra", "nonaffine")))}
            if isinstance(group.get("nonaffine"), h5py.Dataset):
                response["nonaffine"] = checked_read(group["nonaffine"],
                                                      f"/sensitivity/{name}/nonaffine", label)
            response["description"] = {k: decode(v) for k, v in dataset.attrs.items()}
            if isinstance(group.get("extra"), h5py.Group):
                response.update(read_tree(group["extra"]))
            responses[name] = response
        relaxation = RelaxReport.from_attrs(read_tree(handle["relaxation"]) if isinstance(
            handle.get("relaxation"), h5py.Group) else {})
        audit = read_tree(handle["audit"]) if isinstance(handle.get("audit"), h5py.Group) else None
        elasticity = _read_elasticity(handle, label, system.dim)
        observable_derivatives = _read_observable_derivatives(handle)
        parameters: dict = {}
        if isinstance(handle.get("parameters"), h5py.Group):
            parameters_group = handle["parameters"]
            parameters = read_tree(parameters_group, skip=("config",))
            config_group = parameters_group.get("config")
            if isinstance(config_group, h5py.Group):
                attrs = {key: decode(value) for key, value in config_group.attrs.items()}
                if "json" in attrs:
                    try:
                        parameters["config"] = json.loads(attrs["json"])
                    except (TypeError, ValueError) as error:
                        raise InputError(
                            f"{label}: /parameters/config attribute json is not valid JSON "
                            f"({error})"
                        ) from None
                    if "text" in attrs:
                        parameters["config_text"] = attrs["text"]
                elif "text" in attrs:
                    parameters["config"] = attrs["text"]
            # keep the written order: config first
            parameters = {
                **{k: parameters[k] for k in ("config", "config_text") if k in parameters},
                **{k: v for k, v in parameters.items() if k not in ("config", "config_text")},
            }
    return Result(
        observable_derivatives=observable_derivatives,
        system=system,
        relaxation=relaxation,
        responses=responses,
        rattlers=rattlers,
        zero_modes=figures["zero_modes"],
        parameters=parameters,
        timings=figures["timings"],
        audit=audit,
        path=Path(path),
        elasticity=elasticity,
    )


RESULT_GROUPS = ("particles", "sensitivity", "relaxation", "parameters", "audit", "elasticity")


def copy_result(path: str | os.PathLike, target: h5py.Group) -> None:
    """Copy the groups of result file ``path`` into ``target`` (a group of another file).

    Checked like :func:`read_result` (links, external storage); on failure nothing is left in
    ``target`` and InputError names the file.
    """
    copied = []
    try:
        with open_for_reading(path) as (handle, _label):
            for item in RESULT_GROUPS:
                if item in handle:
                    handle.copy(handle[item], target, name=item)
                    copied.append(item)
    except BaseException:
        for item in copied:
            with contextlib.suppress(Exception):
                del target[item]
        raise
