"""sensitivity.systems: particle packings, their relaxation and the sensitivity of their energy minima.

Reading results needs neither jax nor jax-md::

    from sensitivity import systems
    result = systems.read_result("out/sensitivity.h5")   # numpy arrays, no jax imported
    result.positions, result.box, result.response("small_diameter").dx_dtheta

Every name below is imported on first use (module ``__getattr__``), so ``import sensitivity.systems``
is instant and changes no global state. The physics (:mod:`systems.relax`,
:mod:`systems.response`, :mod:`systems.pipeline`) runs in float64: whoever runs it turns
on JAX's 64-bit mode first, before jax-md is imported (the ``sensitivity`` command does;
in a script, ``jax.config.update("jax_enable_x64", True)`` at the top).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that owns it
_EXPORTS = {
    # errors, data, files, figures (numpy + h5py; matplotlib inside the plot functions)
    "ConvergenceError": "_errors",
    "atomic_path": "_atomic",
    "atomic_write_text": "_atomic",
    "ensure_writable_folder": "_atomic",
    "storage_error": "_atomic",
    "package_version": "versions",
    "InputError": "_errors",
    "StorageError": "_errors",
    "ParticleSystem": "_system",
    "wrap_positions": "_system",
    "random_packing": "generate",
    "Result": "_result_read",
    "Response": "_result_read",
    "RelaxReport": "_reports",
    "SolveReport": "_reports",
    "ObservableReport": "_reports",
    "file_sha256": "tasks",
    "read_packing": "_packing_file",
    "read_result": "_result_read",
    "read_jacobian_slice": "jacobian_file",
    "export_extxyz": "export",
    "collect_results": "summary",
    "write_summary": "summary",
    "summarize": "summary",
    # the config file (standard library and PyYAML)
    "ConfigError": "config",
    "LoadedConfig": "config",
    "Task": "config",
    "load_config": "config",
    "resolve_config": "config",
    "write_packing": "_packing_file",
    "write_result": "_result_write",
    "plot_magnitudes": "plots",
    "plot_response": "plots",
    "plot_result": "plots",
    # physics (jax; jax-md inside functions)
    "TaskSummary": "pipeline",
    "audit_task": "pipeline",
    "run_task": "pipeline",
    "PairModel": "potentials",
    "Pairs": "potentials",
    "PotentialParams": "potentials",
    "PotentialSpec": "potentials",
    "resolve_potential": "potentials",
    "MinimizerSpec": "relax",
    "RelaxResult": "relax",
    "Relaxer": "relax",
    "make_relaxer": "relax",
    "resolve_minimizer": "relax",
    "ParameterSpec": "theta",
    "ResponseSolver": "response",
    "find_rattlers": "contacts",
    "gauge_fix": "contacts",
    "nullspace_basis": "contacts",
    "resolve_parameters": "theta",
    "resolve_sensitivity": "response",
    "theta_apply": "theta",
    "reverse_vector_derivative": "many_rhs",
    "STRAIN_COMPONENTS": "elasticity",
    "elastic_response": "elasticity",
    "observable_derivatives": "elasticity",
    "stress_tensor": "elasticity",
    # (linear_range.linear_range is not re-exported: the same name as its module)
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    owner = _EXPORTS.get(name)
    if owner is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{owner}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
