"""systems: particle packings, their relaxation and the sensitivity of their energy minima.

Importing this package turns on JAX's 64-bit mode (``jax_enable_x64``): the physics is
done in float64, and jax-md must see x64 enabled before it is imported. jax-md itself is
imported lazily, only by the modules that run physics, so that reading and writing files
stays fast.
"""

import jax

jax.config.update("jax_enable_x64", True)

# --- io / data (io helper) ---
from ._errors import ConvergenceError, InputError
from ._system import ParticleSystem, wrap_positions
from .generate import random_packing
from .io import Result, file_sha256, read_packing, read_result, write_packing, write_result
from .plots import plot_magnitudes, plot_response, plot_result

# --- physics (physics helper) ---
from .pipeline import TaskSummary, audit_task, run_task
from .potentials import PairModel, Pairs, PotentialParams, PotentialSpec, resolve_potential
# (the functions relax.relax and response.response are not re-exported: same names as
# their modules)
from .relax import MinimizerSpec, RelaxResult, Relaxer, make_relaxer, resolve_minimizer
from .response import (
    ParameterSpec,
    ResponseSolver,
    find_rattlers,
    gauge_fix,
    nullspace_basis,
    resolve_parameters,
    resolve_sensitivity,
    theta_apply,
)

__all__ = [
    "ConvergenceError",
    "InputError",
    "ParticleSystem",
    "wrap_positions",
    "random_packing",
    "Result",
    "file_sha256",
    "read_packing",
    "read_result",
    "write_packing",
    "write_result",
    "plot_magnitudes",
    "plot_response",
    "plot_result",
    "TaskSummary",
    "audit_task",
    "run_task",
    "PairModel",
    "Pairs",
    "PotentialParams",
    "PotentialSpec",
    "resolve_potential",
    "MinimizerSpec",
    "RelaxResult",
    "Relaxer",
    "make_relaxer",
    "resolve_minimizer",
    "ParameterSpec",
    "ResponseSolver",
    "find_rattlers",
    "gauge_fix",
    "nullspace_basis",
    "resolve_parameters",
    "resolve_sensitivity",
    "theta_apply",
]
