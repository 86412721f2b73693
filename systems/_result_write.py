"""Result files written atomically (:func:`write_result`): the relaxed packing, every θ's
Jacobian (streamed block by block when large, :mod:`systems.jacobian_file`) with the
attributes that make it readable without this package, the reports, the configuration and
the provenance. The layout is in :mod:`systems.io`; :mod:`systems._result_read` reads it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._errors import InputError
from ._h5 import (
    ELASTICITY_DATASETS,
    ENERGY_UNIT,
    LENGTH_UNIT,
    MAX_ATTRIBUTE_ELEMENTS,
    OBSERVABLE_DERIVATIVES,
    RESULT_FORMAT,
    RESULT_FORMAT_VERSION,
    UNITS_NOTE,
    atomic_h5,
    check_name,
    encode,
    fixed_string,
    jacobian_unit,
    time_dependent_element,
    write_tree,
)
from ._packing_file import write_h5md_header, write_particles
from ._reports import ObservableReport, RelaxReport, SolveReport
from .settings import PARTICLES_GROUP
from ._system import ParticleSystem
from .jacobian_file import is_stream, jacobian_layout, write_streamed


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in the configuration JSON")


_GAUGE = (
    "backbone mean zero: the rigid translations are removed, so the mean of dx_dtheta over "
    "the non-rattler particles is 0 along every axis{rotation}; a Jacobian is defined up to "
    "this gauge"
)
_RATTLERS = (
    "rows of rattlers (/sensitivity/rattlers true: fewer than d+1 contacts) are NaN; a "
    "rattler carries no force at x*, so its response is undefined"
)



def _describe_jacobian(dataset: h5py.Dataset, name: str, report: SolveReport,
                       system: ParticleSystem, potential: Mapping | None) -> None:
    """Attributes that make ``/sensitivity/<name>/dx_dtheta`` readable without this package:
    axes, unit, θ (name, kind, definition, value, unit), gauge, rattler rows, and the linear
    solve's report (copied from the group's attributes)."""
    kind = report.kind
    # ε of no particular species over a non-uniform ε matrix: θ multiplies the matrix
    epsilon = None if potential is None else potential.get("epsilon")
    multiplier = (kind == "epsilon" and report.species in (None, -1) and epsilon is not None
                  and np.unique(np.asarray(epsilon, dtype=np.float64)).size > 1)
    if dataset.ndim == 3:
        count = dataset.shape[0]
        dataset.attrs["axes"] = np.array(["theta_component", "particle", "dimension"],
                                         dtype=h5py.string_dtype())
        what = "diameter of particle p" if kind == "diameters" else "component p of theta"
        dataset.attrs["axes_text"] = (
            f"[P][N][d], P = {count}: entry [p, i, a] is dx*_(i,a)/dtheta_p, theta_p = {what}"
        )
    else:
        dataset.attrs["axes"] = np.array(["particle", "dimension"], dtype=h5py.string_dtype())
        dataset.attrs["axes_text"] = "[N][d]: entry [i, a] is dx*_(i,a)/dtheta"
    unit, theta_unit = jacobian_unit(kind, multiplier)
    if unit:
        dataset.attrs["unit"] = fixed_string(unit)
    dataset.attrs["unit_text"] = f"{LENGTH_UNIT} / {theta_unit} (length per unit of theta)"
    dataset.attrs["units"] = UNITS_NOTE
    dataset.attrs["theta_name"] = name
    dataset.attrs["theta_kind"] = "unknown" if kind is None else str(kind)
    dataset.attrs["theta_unit"] = theta_unit
    if report.theta_meaning is not None:
        dataset.attrs["theta_definition"] = str(report.theta_meaning)
    theta = report.theta
    if theta is not None:
        value = np.asarray(theta, dtype=np.float64)
        if value.size <= MAX_ATTRIBUTE_ELEMENTS:
            dataset.attrs["theta"] = value
        else:
            dataset.attrs["theta"] = h5py.Empty("f8")
            dataset.attrs["theta_text"] = f"{value.size} values: see /sensitivity/{name}/theta"
    rotation = "" if system.periodic else " and the rigid rotations about the centroid"
    dataset.attrs["gauge"] = _GAUGE.format(rotation=rotation)
    dataset.attrs["rattlers"] = _RATTLERS
    for key in ("converged", "residual", "solver_relative_residual", "iterations", "solver",
                "method", "tol"):
        if getattr(report, key) is not None:
            where = f"/sensitivity/{name}/dx_dtheta attribute {key}"
            dataset.attrs[key] = encode(getattr(report, key), where)


def _write_observables(handle: h5py.File, relaxation: RelaxReport) -> None:
    """``/observables/potential_energy`` (H5MD, unit ε): the relaxed energy where MD tools
    look for it (MDAnalysis puts it in ``ts.data``); ``/relaxation`` keeps the full report."""
    energy = relaxation.energy
    if isinstance(energy, (bool, np.bool_)) or not isinstance(energy, (int, float, np.number)):
        return
    value = time_dependent_element(handle.require_group("observables"), "potential_energy",
                            np.asarray(float(energy)))
    value.attrs["unit"] = fixed_string(ENERGY_UNIT)


def write_result(
    path: str | os.PathLike,
    *,
    system: ParticleSystem,
    relaxation: RelaxReport | Mapping,
    responses: Mapping[str, Mapping],
    rattlers: np.ndarray,
    zero_modes: Mapping,
    parameters: Mapping,
    timings: Mapping,
    audit: Mapping | None = None,
    author: str | None = None,
    creator: Any = None,
    elasticity: Mapping | None = None,
    observable_derivatives: Mapping | None = None,
) -> Path:
    """Write a sensitivity result as a valid H5MD 1.1 file (float64; atomic).

    Layout (see :mod:`systems.io`): ``/h5md``; ``/particles/all`` = the relaxed
    ``system``; ``/sensitivity/<name>/dx_dtheta`` with ``attrs`` on the ``<name>`` group;
    ``/sensitivity/rattlers``; ``timings`` and ``zero_modes`` as attributes of
    ``/sensitivity``; ``relaxation`` in ``/relaxation``; ``audit`` in ``/audit``;
    ``parameters`` under ``/parameters``: ``config`` (a mapping, stored as the JSON string
    attribute ``json``, or a string stored as ``text``), ``config_text`` (the configuration
    as the user wrote it, attribute ``text``), and every other mapping entry as a group
    (``provenance``, ``potential``...). Nested mappings become groups, values attributes,
    arrays of more than 256 elements datasets; ``None`` is an empty attribute.

    Args:
        relaxation: the minimizer's report, a :class:`~systems._reports.RelaxReport` or
            its attributes (``RelaxResult.as_dict()``), written as
            :meth:`RelaxReport.to_attrs <systems._reports.RelaxReport.to_attrs>` gives them.
        responses: ``{name: {"dx_dtheta": [N][d] or [P][N][d] array, "report": ...}}``, the
            report a :class:`~systems._reports.SolveReport` or its attributes, written as
            :meth:`SolveReport.to_attrs <systems._reports.SolveReport.to_attrs>` gives them
            (a streamed ``dx_dtheta``'s own report is added to it, and left in
            ``responses[name]["report"]``); other entries are kept in
            ``/sensitivity/<name>/extra``.
        rattlers: ``[N]`` bool.

    Returns:
        The path written. :func:`read_result` reads everything back.
    """
    n, dim = system.n, system.dim
    rattlers = np.asarray(rattlers)
    if rattlers.shape != (n,):
        raise ValueError(f"rattlers must have shape ({n},), got {rattlers.shape}")
    overlap = set(timings) & set(zero_modes)
    if overlap:
        raise ValueError(f"timings and zero_modes share keys {sorted(overlap)}")
    streamed = sum(r["dx_dtheta"].nbytes for r in responses.values()
                   if is_stream(r.get("dx_dtheta")))
    on_disk = streamed + (64 << 20) if streamed else 0  # + room for the rest of the file
    with atomic_h5(path, on_disk) as handle:
        write_h5md_header(handle, author, creator)
        write_particles(handle, system, PARTICLES_GROUP, time_dependent=True)

        sensitivity = handle.create_group("sensitivity", track_order=True)
        sensitivity.attrs["format"] = RESULT_FORMAT
        sensitivity.attrs["format_version"] = np.int32(RESULT_FORMAT_VERSION)
        for key in ("timings", "zero_modes"):
            figures = timings if key == "timings" else zero_modes
            sensitivity.attrs[f"{key}_keys"] = np.array(
                [check_name(k, f"/sensitivity {key}") for k in figures], dtype=h5py.string_dtype()
            )
            for name, value in figures.items():
                if isinstance(value, Mapping):
                    raise TypeError(f"/sensitivity attribute {name}: {key} values must not be "
                                    "mappings")
                sensitivity.attrs[str(name)] = encode(value, f"/sensitivity attribute {name}")
        sensitivity.create_dataset("rattlers", data=rattlers.astype(bool))
        for name, response in responses.items():
            name = check_name(name, "/sensitivity")
            if name == "rattlers":
                raise InputError("/sensitivity: a parameter cannot be named 'rattlers' (reserved)")
            if "dx_dtheta" not in response:
                raise ValueError(f"responses[{name!r}] has no 'dx_dtheta'")
            dx_dtheta = response["dx_dtheta"]
            stream = is_stream(dx_dtheta)
            if not stream:
                dx_dtheta = np.asarray(dx_dtheta, dtype=np.float64)
            if tuple(dx_dtheta.shape[-2:]) != (n, dim) or len(dx_dtheta.shape) not in (2, 3):
                raise ValueError(
                    f"responses[{name!r}]['dx_dtheta'] has shape {dx_dtheta.shape}, expected "
                    f"({n}, {dim}) or (P, {n}, {dim})"
                )
            group = sensitivity.create_group(name, track_order=True)
            report = SolveReport.from_attrs(response.get("report") or {})
            if stream:  # computed block by block as it is written; its report comes last
                write_streamed(group, dx_dtheta)
                report = report.replace(**dx_dtheta.report.to_attrs())
                response["report"] = report
            else:  # chunked when large
                group.create_dataset("dx_dtheta", data=dx_dtheta,
                                     **jacobian_layout(dx_dtheta.shape))
            _describe_jacobian(group["dx_dtheta"], name, report, system,
                               parameters.get("potential"))
            attrs = report.to_attrs()
            for reserved in ("dx_dtheta", "extra"):
                if reserved in attrs:
                    raise ValueError(f"responses[{name!r}]['report'] uses the reserved key "
                                     f"{reserved!r}")
            write_tree(group, attrs, f"/sensitivity/{name}")
            if response.get("nonaffine") is not None:
                nonaffine = np.asarray(response["nonaffine"], dtype=np.float64)
                if nonaffine.shape != dx_dtheta.shape:
                    raise ValueError(f"responses[{name!r}]['nonaffine'] has shape "
                                     f"{nonaffine.shape}, expected {dx_dtheta.shape}")
                dataset = group.create_dataset("nonaffine", data=nonaffine)
                dataset.attrs["definition"] = (
                    "non-affine part of dx_dtheta: dx*/dtheta minus the affine motion "
                    "lambda E y* of the strain direction E, backbone mean zero, rattlers NaN")
            extra = {k: v for k, v in response.items()
                     if k not in ("dx_dtheta", "report", "nonaffine")}
            if extra:
                write_tree(group.create_group("extra", track_order=True), extra,
                           f"/sensitivity/{name}/extra")

        relaxation = RelaxReport.from_attrs(relaxation)  # what read_result gives back
        write_tree(handle.create_group("relaxation", track_order=True), relaxation.to_attrs(),
                   "/relaxation")
        _write_observables(handle, relaxation)
        if audit is not None:
            write_tree(handle.create_group("audit", track_order=True), audit, "/audit")
        if elasticity is not None:
            _write_elasticity(handle, elasticity, dim)
        if observable_derivatives:  # dO/dθ of a vector θ (reverse or forward mode)
            _write_observable_derivatives(handle, observable_derivatives)

        group = handle.create_group("parameters", track_order=True)
        rest = dict(parameters)
        config, config_text = rest.pop("config", None), rest.pop("config_text", None)
        if config is not None or config_text is not None:
            config_group = group.create_group("config", track_order=True)
            if isinstance(config, str):
                config_group.attrs["text"] = config
            elif config is not None:
                config_group.attrs["json"] = json.dumps(config, default=_json_default)
            if config_text is not None:
                config_group.attrs["text"] = str(config_text)
        write_tree(group, rest, "/parameters")
    return Path(path)



def _write_elasticity(handle: h5py.File, elasticity: Mapping, dim: int) -> None:
    """``/elasticity``: the datasets of :data:`ELASTICITY_DATASETS`, the rest attributes."""
    group = handle.create_group("elasticity", track_order=True)
    for key in ELASTICITY_DATASETS:
        if elasticity.get(key) is not None:
            group.create_dataset(key, data=np.asarray(elasticity[key], dtype=np.float64))
    rest = {k: v for k, v in elasticity.items() if k not in ELASTICITY_DATASETS}
    write_tree(group, rest, "/elasticity")


def _write_observable_derivatives(handle, entries: Mapping[str, Mapping]) -> None:
    """``/observable_derivatives/<name>/`` (see :mod:`systems.io`) in an open HDF5 file;
    ``entries`` as :func:`systems.reverse.observable_derivatives` returns, by θ name."""
    if not entries:
        return
    top = handle.create_group(OBSERVABLE_DERIVATIVES, track_order=True)
    top.attrs["definition"] = (
        "d_observable_d_theta[k, p] = dO_k/dtheta_p at the relaxed packing, total "
        "derivative through x*(theta); observables: energy U, pressure p, x[i] / y[i] / z[i] "
        "the position of particle i relative to the backbone (its rigid motion removed), "
        "NaN for a rattler")
    for name, entry in entries.items():
        group = top.create_group(name, track_order=True)
        data = group.create_dataset("d_observable_d_theta",
                                    data=np.asarray(entry["d_observable_d_theta"], np.float64))
        data.attrs["axes"] = np.array(["observable", "theta_component"],
                                      dtype=h5py.string_dtype())
        group.create_dataset("value", data=np.asarray(entry["value"], np.float64))
        write_tree(group, ObservableReport.from_attrs(entry["report"]).to_attrs(),
                   f"/{OBSERVABLE_DERIVATIVES}/{name}")
