"""A sweep's results as one table (CSV) and one HDF5 file (``sensitivity collect``).

One row per task: the swept values, the relaxation (steps, energy, max force, stopping
criterion), rattlers, timings, per θ the solver's iterations, residual, convergence and the
largest and rms |dx_i*/dθ|, and, where the result has ``/elasticity``, its pressure, bulk and
shear moduli, volume and solver report (``elasticity.<key>``). The HDF5 summary holds the
same table (``/table/<column>``, one dataset per column) and, for each task, a copy of its
result file's groups under ``/tasks/<task folder>/`` (``particles``, ``sensitivity``,
``relaxation``, ``parameters``, ``audit``, ``elasticity``), so one file carries every
Jacobian. Needs h5py and numpy, not jax.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ._atomic import atomic_path
from ._result_read import copy_result, read_result, response_magnitudes
from .config import ConfigError
from .manifest import find_tasks
from .settings import STRAIN_COMPONENTS_BY_DIM, SUMMARY_TOP
from .tasks import RESULT_NAME

__all__ = ["SUMMARY_FORMAT", "collect_results", "summarize", "summary_paths", "write_summary"]

SUMMARY_FORMAT = "sensitivity-summary"

#: The attributes of a result's ``/elasticity`` group that become columns
#: ``elasticity.<key>`` (tasks without the group leave them empty).
ELASTICITY_COLUMNS = ("pressure", "bulk_modulus", "shear_modulus", "volume", "converged",
                      "iterations", "residual")


def summary_paths(output: Path) -> tuple[Path, Path]:
    """``summary`` / ``summary.csv`` / ``summary.h5`` -> (``summary.csv``, ``summary.h5``)."""
    stem = output.with_suffix("") if output.suffix.lower() in (".csv", ".h5", ".hdf5") else output
    return stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".h5")


def _column_value(value: Any) -> Any:
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_summary(directory: Path, tasks: Sequence[Mapping[str, Any]], output: Path,
                  warn: Callable[[str], None] | None = None) -> tuple[Path, Path, list[dict]]:
    """Write the CSV and HDF5 summaries of a sweep's ``tasks``.

    Args:
        directory: the sweep's output folder (the table's paths are relative to it).
        tasks: ``{"index", "directory", "values"}`` per task (the sweep manifest's entries, or
            one per result file found).
        output: ``SUMMARY``, ``SUMMARY.csv`` or ``SUMMARY.h5``: both files are written.
        warn: called with one line per task that has no result or an unreadable one.

    Returns:
        (csv path, hdf5 path, the table rows).
    """
    keys: list[str] = []
    for task in tasks:
        for key in task["values"]:
            if key not in keys:
                keys.append(key)

    rows: list[dict] = []
    results = []
    for task in tasks:
        path = task["directory"] / RESULT_NAME
        row: dict[str, Any] = {
            "task": task["index"],
            "directory": os.path.relpath(task["directory"], directory),
        }
        for key in keys:
            row[key] = _column_value(task["values"].get(key))
        if not path.is_file():
            row["status"] = "missing"
            rows.append(row)
            results.append(None)
            if warn is not None:
                warn(f"task {task['index']}: no result in {task['directory']}")
            continue
        try:
            result = read_result(path)
        except Exception as error:  # one damaged file never costs the other rows
            reason = " ".join(str(error).split()) or type(error).__name__
            row["status"] = "unreadable"
            row["error"] = reason
            rows.append(row)
            results.append(None)
            if warn is not None:
                warn(f"task {task['index']}: {reason}")
            continue
        relaxation = result.relaxation
        row["status"] = "ok" if result.converged else "not_converged"
        row["n"] = result.system.n
        row["dim"] = result.system.dim
        for key in ("steps", "energy", "max_force", "stop_reason", "converged"):
            row[f"relax_{key}"] = _column_value(getattr(relaxation, key))
        row["rattlers"] = int(np.asarray(result.rattlers).sum())
        for key, value in result.timings.items():
            row[key] = _column_value(value)
        for name, response in result.responses.items():
            report = response["report"]
            magnitude = response_magnitudes(response["dx_dtheta"])
            finite = magnitude[np.isfinite(magnitude)]
            row[f"{name}.theta"] = _column_value(report.theta)
            for key in ("iterations", "residual", "converged"):
                row[f"{name}.{key}"] = _column_value(getattr(report, key))
            row[f"{name}.max_response"] = float(finite.max()) if finite.size else None
            row[f"{name}.rms_response"] = float(np.sqrt(np.mean(finite**2))) if finite.size else None
        elasticity = result.elasticity or {}
        for key in ELASTICITY_COLUMNS:  # /elasticity's scalars (sensitivity.elasticity: true)
            if key in elasticity:
                row[f"elasticity.{key}"] = _column_value(elasticity[key])
        rows.append(row)
        results.append(path)

    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    csv_path, h5_path = summary_paths(output)
    with atomic_path(h5_path) as tmp_h5:
        with h5py.File(tmp_h5, "w") as out:
            out.attrs["format"] = SUMMARY_FORMAT
            out.attrs["source"] = str(directory.resolve())
            out.attrs["sweep_keys"] = json.dumps(keys)
            group = out.create_group("tasks", track_order=True)
            for row, path in zip(rows, results):
                if path is None:
                    continue
                name = Path(row["directory"]).name if row["directory"] != "." else "task"
                if name in group:
                    name = f"task-{row['task']:04d}"
                target = group.create_group(name)
                target.attrs["task"] = int(row["task"])
                target.attrs["source"] = str(path.resolve())
                try:
                    copy_result(path, target)
                except Exception as error:
                    del group[name]
                    row["status"] = "unreadable"
                    row["error"] = " ".join(str(error).split()) or type(error).__name__
                    if warn is not None:
                        warn(f"task {row['task']}: {row['error']}")
            if "error" in columns or any("error" in row for row in rows):
                columns = columns if "error" in columns else [*columns, "error"]
            table = out.create_group("table", track_order=True)
            for column in columns:
                values = [row.get(column) for row in rows]
                table.create_dataset(column, data=_as_array(values))
    with atomic_path(csv_path) as tmp_csv:
        with open(tmp_csv, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})

    return csv_path, h5_path, rows


def _as_array(values: list) -> np.ndarray:
    """A column as a numeric array where every value is a number (None -> NaN), else strings."""
    def numeric(v):
        return v is None or (isinstance(v, (int, float, np.number)) and not isinstance(v, str))

    if all(numeric(v) for v in values):
        if all(isinstance(v, (bool, np.bool_)) for v in values):
            return np.asarray(values, dtype=bool)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
            return np.asarray(values, dtype=np.int64)
        return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return np.asarray(["" if v is None else str(v) for v in values], dtype=h5py.string_dtype())


def collect_results(directory: Path, output: Path, reporter=None) -> tuple[Path, Path, list[dict]]:
    """Write the CSV and HDF5 summaries of the results under ``directory``.

    Returns:
        (csv path, hdf5 path, the table rows).

    Raises:
        ConfigError: ``directory`` is missing or holds no result at all.
    """
    if not directory.is_dir():
        raise ConfigError(f"{directory}: no such folder; give the output folder of a run or sweep")
    tasks = find_tasks(directory)
    if not tasks or not any((t["directory"] / RESULT_NAME).is_file() for t in tasks):
        raise ConfigError(
            f"{directory}: no {RESULT_NAME} found below it; run `sensitivity run CONFIG` first "
            "(or give the folder of output.directory)"
        )
    return write_summary(directory, tasks, output,
                         warn=None if reporter is None else reporter.warning)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 16 else f"array{list(value.shape)}"
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def summarize(path: str | Path, *, top: int = SUMMARY_TOP) -> dict:
    """A JSON-friendly summary of a result file."""
    result = read_result(path)
    system = result.system
    # species as the input file labels them (the codes 0..S-1 are internal)
    species, counts = np.unique(np.asarray(system.labelled_species), return_counts=True)
    rattlers = np.asarray(result.rattlers, dtype=bool)
    thetas = []
    for name in result.names:
        typed = result.response(name)
        field = np.asarray(typed.dx_dtheta)
        report = typed.report
        magnitude = typed.magnitudes()
        finite = np.where(np.isfinite(magnitude), magnitude, -np.inf)
        order = np.argsort(-finite, kind="stable")[: min(top, int(np.isfinite(magnitude).sum()))]
        valid = magnitude[np.isfinite(magnitude)]
        thetas.append(
            {
                "name": name,
                "kind": report.kind,
                "theta": _plain(report.theta),
                "shape": list(field.shape),
                "solver": report.solver,
                "iterations": _plain(report.iterations),
                "residual": _plain(report.residual),
                "converged": _plain(report.converged),
                "unit": typed.unit,
                "theta_unit": typed.theta_unit,
                "max_response": float(valid.max()) if valid.size else None,
                "rms_response": float(np.sqrt(np.mean(valid**2))) if valid.size else None,
                "largest": [
                    {
                        "particle": int(i),
                        "species": system.species_label(system.species[i]),
                        "magnitude": float(magnitude[i]),
                    }
                    for i in order
                ],
                "attrs": _plain(report.to_attrs()),
                "dataset_attrs": _plain(typed.description),
            }
        )
    config = result.parameters.get("config")
    config = config if isinstance(config, Mapping) else {}
    provenance = result.parameters.get("provenance", {})
    return {
        "file": str(path),
        "converged": bool(result.converged),
        "system": {
            "n": int(system.n),
            "dim": int(system.dim),
            "periodic": bool(system.periodic),
            # edge lengths, or a sheared cell's matrix (columns = cell vectors) as rows
            "box": None if system.box is None else np.asarray(system.box, float).tolist(),
            "packing_fraction": _plain(system.packing_fraction),
            "species": {int(s): int(c) for s, c in zip(species, counts)},
            "input": (config.get("system") or {}).get("path"),
        },
        "potential": _plain(result.parameters.get("potential") or config.get("potential") or {}),
        "relaxation": _plain(result.relaxation.to_attrs()),
        "thetas": thetas,
        "rattlers": {
            "count": int(rattlers.sum()),
            "indices": [int(i) for i in np.flatnonzero(rattlers)[:50]],
        },
        "zero_modes": _plain(result.zero_modes),
        "timings": _plain(result.timings),
        "audit": _plain(result.audit),
        "elasticity": _elasticity_summary(result.elasticity),
        "provenance": _plain(provenance),
    }


def _elasticity_summary(elasticity: Mapping | None) -> dict | None:
    """``/elasticity`` with the tensor as its Voigt matrix (no per-particle fields)."""
    if elasticity is None:
        return None
    out = {k: _plain(v) for k, v in elasticity.items()
           if k not in ("elastic_tensor", "nonaffine", "stress")}
    tensor = elasticity.get("elastic_tensor")
    if tensor is not None:
        c = np.asarray(tensor)
        labels = STRAIN_COMPONENTS_BY_DIM.get(c.shape[0], ())
        index = [("xyz".index(a), "xyz".index(b)) for a, b in labels]
        out["voigt_components"] = list(labels)
        out["voigt"] = [[float(c[a, b, e, f]) for e, f in index] for a, b in index]
    if elasticity.get("stress") is not None:
        out["stress"] = np.asarray(elasticity["stress"]).tolist()
    return out
