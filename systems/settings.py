"""Every setting of the physics, defined once: its default, the values it accepts, its help.

The config file (``systems/config.py``) derives its validation, its one-line messages, the
defaults it fills in and the help it prints from these definitions; :mod:`systems.potentials`,
:mod:`systems.relax` and :mod:`systems.response` take their defaults and their checks from
here too, so a script that calls them directly is checked by the same rules. Changing a
default or a bound is a one-line change in this file.

A :class:`Setting` holds a :class:`Check`: a function that turns a raw value (from YAML, a
``--set`` override or a Python call) into the resolved value or raises :class:`Invalid`
with what the key accepts, e.g. ``"a number > 0 and < 1"``. The checks are written here
rather than taken from a validation library (pydantic, attrs): the messages must read as
one line naming the file, the key, the value found and what is allowed, YAML 1.1 reads
``1e-12`` as a string, and a 32-bit bound applies to every integer, which are a few lines
each here and a custom validator each there.

This module imports only the standard library (``sensitivity --help`` stays instant).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._errors import InputError

__all__ = [
    "INT_MAX", "MANY_RHS", "MINIMIZER", "MINIMIZERS", "PARAMETER", "PARAMETER_KINDS", "POTENTIAL",
    "POTENTIALS", "PRECONDITIONERS", "SENSITIVITY", "SOLVERS", "STRAIN_COMPONENTS", "STRAIN_COMPONENTS_BY_DIM", "DEFAULT_PARAMETERS", "Check",
    "Invalid", "Setting", "any_of", "boolean", "check_section", "choice", "defaults", "integer",
    "matrix", "minimizer_errors", "nullable", "number", "potential_errors", "resolve_section",
    "string",
    "MODES", "NAME", "OBSERVABLES", "PACKING", "observable_list", "sensitivity_errors",
    "FIGURE_DPI", "FIGURE_FORMATS", "LAST_FRAME", "PARTICLES_GROUP", "SUMMARY_TOP",
    "unknown_key",
]

#: The largest integer any setting accepts unless it says otherwise (steps, counts and seeds
#: are 32-bit on the device; a YAML ``1e23`` must fail at validation, not as an OverflowError
#: hours later).
INT_MAX = 2**31 - 1


class Invalid(Exception):
    """Raised by a :class:`Check`; ``allowed`` says what the key accepts."""

    def __init__(self, allowed: str):
        super().__init__(allowed)
        self.allowed = allowed


@dataclasses.dataclass(frozen=True)
class Check:
    """``check(value) -> resolved value`` (or :class:`Invalid`) and its ``allowed`` text."""

    check: Callable[[Any], Any]
    allowed: str

    def __call__(self, value: Any) -> Any:
        return self.check(value)


def _bounds_text(gt=None, ge=None, lt=None, le=None) -> str:
    parts = [f"{op} {v:g}" for op, v in ((">", gt), (">=", ge), ("<", lt), ("<=", le))
             if v is not None]
    return " and ".join(parts)


def _in_bounds(x: float, gt=None, ge=None, lt=None, le=None) -> bool:
    return not ((gt is not None and not x > gt) or (ge is not None and not x >= ge)
                or (lt is not None and not x < lt) or (le is not None and not x <= le))


def _as_float(value: Any) -> float | None:
    """A number, or a string that reads as one (YAML 1.1 reads ``1e-12`` as a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def number(*, gt=None, ge=None, lt=None, le=None) -> Check:
    bounds = _bounds_text(gt, ge, lt, le)
    allowed = f"a number {bounds}" if bounds else "a number"

    def check(value):
        x = _as_float(value)
        if x is None or not math.isfinite(x) or not _in_bounds(x, gt, ge, lt, le):
            raise Invalid(allowed)
        return x

    return Check(check, allowed)


def integer(*, ge=None, le=INT_MAX) -> Check:
    bounds = _bounds_text(ge=ge, le=le)
    allowed = f"an integer {bounds}" if bounds else "an integer"

    def check(value):
        x = _as_float(value)
        if x is None or not math.isfinite(x) or not x.is_integer():
            raise Invalid(allowed)
        if not _in_bounds(int(x), ge=ge, le=le):
            raise Invalid(allowed)
        return int(x)

    return Check(check, allowed)


def matrix(*, gt=None, ge=None) -> Check:
    """A number, or a square nested list of numbers (a per-species-pair matrix)."""
    scalar = number(gt=gt, ge=ge)
    allowed = f"{scalar.allowed}, or a square [S][S] list of such numbers"

    def check(value):
        if isinstance(value, list):
            rows = value
            if not rows or not all(isinstance(r, list) and len(r) == len(rows) for r in rows):
                raise Invalid(allowed)
            try:
                return [[scalar(x) for x in row] for row in rows]
            except Invalid:
                raise Invalid(allowed) from None
        try:
            return scalar(value)
        except Invalid:
            raise Invalid(allowed) from None

    return Check(check, allowed)


def boolean() -> Check:
    def check(value):
        if not isinstance(value, bool):
            raise Invalid("true or false")
        return value

    return Check(check, "true or false")


def choice(*options: Any) -> Check:
    allowed = "one of " + ", ".join(str(o) for o in options)

    def check(value):
        for option in options:
            if value == option and type(value) is type(option):
                return option
        raise Invalid(allowed)

    return Check(check, allowed)


def string(pattern: str | None = None, what: str = "a non-empty string", *,
           numbers: bool = False) -> Check:
    """A non-empty string (matching ``pattern`` in full); ``numbers``: a bare integer >= 0
    is read as its decimal text (Slurm reads a bare number as minutes / megabytes)."""
    regex = re.compile(pattern) if pattern else None

    def check(value):
        if numbers and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise Invalid(what)
        if regex is not None and not regex.fullmatch(value):
            raise Invalid(what)
        return value

    return Check(check, what)


def nullable(spec: Check) -> Check:
    allowed = f"null or {spec.allowed}"

    def check(value):
        if value is None:
            return None
        try:
            return spec(value)
        except Invalid:
            raise Invalid(allowed) from None

    return Check(check, allowed)


def any_of(*specs: Check) -> Check:
    allowed = " or ".join(s.allowed for s in specs)

    def check(value):
        for spec in specs:
            try:
                return spec(value)
            except Invalid:
                pass
        raise Invalid(allowed)

    return Check(check, allowed)


def observable_list() -> Check:
    """A list of observables: ``energy``, ``pressure``, or ``{position: {particle: i}}``
    (optionally ``axis: a``; without it, every coordinate of particle i). The resolved value
    has the same form (``axis`` filled in as null), so a saved config reads back."""
    allowed = ("a list whose items are energy, pressure or {position: {particle: i, axis: a}} "
               "(i an integer >= 0, axis optional: 0, 1, 2 or null)")
    index = integer(ge=0)
    axis_check = nullable(integer(ge=0, le=2))

    def item(k, value):
        if value in ("energy", "pressure"):
            return value
        bad = Invalid(f"{allowed}; item {k} = {value!r} is not")
        if not (isinstance(value, Mapping) and list(value) == ["position"]
                and isinstance(value["position"], Mapping)):
            raise bad
        where = value["position"]
        if "particle" not in where or set(where) - {"particle", "axis"}:
            raise bad
        try:
            return {"position": {"particle": index(where["particle"]),
                                 "axis": axis_check(where.get("axis"))}}
        except Invalid:
            raise bad from None

    def check(value):
        if not isinstance(value, list):
            raise Invalid(allowed)
        return [item(k, v) for k, v in enumerate(value)]

    return Check(check, allowed)


_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class Setting:
    """One key: how it is checked, its default (none: required) and a short help text."""

    check: Check
    default: Any = _REQUIRED
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


# ---------------------------------------------------------------------------------------
# The settings of a run, by section.

SOLVERS = ("cg", "minres", "gmres", "bicgstab", "normal_cg", "dense", "lstsq", "lu", "cholesky")
PRECONDITIONERS = ("block_jacobi", "jacobi", "two_level", "schwarz", "none")
POTENTIALS = ("soft_sphere", "lennard_jones", "morse")
MINIMIZERS = ("fire", "gradient_descent")
PARAMETER_KINDS = ("diameter", "diameters", "epsilon", "box", "strain")
#: Components of a symmetric strain (kind strain), in Voigt order, by dimension.
STRAIN_COMPONENTS_BY_DIM = {2: ("xx", "yy", "xy"), 3: ("xx", "yy", "zz", "yz", "xz", "xy")}
STRAIN_COMPONENTS = STRAIN_COMPONENTS_BY_DIM[3]
MANY_RHS = ("auto", "dense", "factorization", "iterative")
#: Values of ``sensitivity.mode``: how a vector θ (kind diameters) is differentiated.
MODES = ("auto", "forward", "reverse")
#: Observables of ``sensitivity.observables`` (:mod:`systems.reverse`).
OBSERVABLES = ("energy", "pressure", "position")

#: The pair potential. epsilon, alpha, sigma and morse_alpha also take an ``[S][S]``
#: per-species-pair matrix. In a config file a key left out (null) takes the input file's
#: ``/parameters/potential`` value, else this default.
POTENTIAL: dict[str, Setting] = {
    "kind": Setting(choice(*POTENTIALS), "soft_sphere"),
    "epsilon": Setting(matrix(gt=0), 1.0, "energy scale"),
    "alpha": Setting(matrix(gt=1), 2.0, "soft-sphere exponent"),
    "sigma": Setting(nullable(matrix(gt=0)), None,
                     "LJ/Morse length (null: the pair's mean diameter)"),
    "r_onset": Setting(number(gt=0), 2.0, "LJ/Morse smoothing onset / sigma"),
    "r_cutoff": Setting(number(gt=0), 2.5, "LJ/Morse cutoff / sigma"),
    "morse_alpha": Setting(matrix(gt=0), 5.0, "Morse stiffness"),
    "neighbor_list": Setting(any_of(choice("auto"), boolean()), "auto",
                             "cell-list neighbor list (auto: from 128 particles on)"),
    # at most 64: more head room than 64x the measured occupancy is never needed (an
    # overflowing list is reallocated), and 1e9 overflowed the list's int32 capacity
    "capacity_multiplier": Setting(number(ge=1, le=64), 1.25, "neighbor-list head room"),
}

MINIMIZER: dict[str, Setting] = {
    "kind": Setting(choice(*MINIMIZERS), "fire"),
    "ftol": Setting(number(ge=0), 1.0e-12, "stop when max |force| <= ftol"),
    "etol": Setting(number(ge=0), 0.0, "stop on relative energy change < etol (0: off)"),
    "max_steps": Setting(integer(ge=1), 200_000),
    "dt_start": Setting(number(gt=0), 0.1, "FIRE"),
    "dt_max": Setting(number(gt=0), 0.4, "FIRE"),
    "n_min": Setting(integer(ge=1), 5, "FIRE"),
    "f_inc": Setting(number(gt=1), 1.1, "FIRE"),
    "f_dec": Setting(number(gt=0, lt=1), 0.5, "FIRE"),
    "alpha_start": Setting(number(gt=0, le=1), 0.1, "FIRE"),
    "f_alpha": Setting(number(gt=0, lt=1), 0.99, "FIRE"),
    "step_size": Setting(number(gt=0), 0.01, "gradient descent"),
    "report_every": Setting(integer(ge=1), 1000, "progress every this many steps"),
}

SENSITIVITY: dict[str, Setting] = {
    "solver": Setting(choice(*SOLVERS), "cg"),
    "tol": Setting(number(gt=0, lt=1), 1.0e-10, "relative residual of the linear solves"),
    "maxiter": Setting(nullable(integer(ge=1)), None),
    "rattler_contacts": Setting(nullable(integer(ge=1)), None, "null: dimension + 1"),
    "audit": Setting(boolean(), False, "finite-difference audit after the run"),
    "fd_step": Setting(number(gt=0, lt=1), 1.0e-5, "finite-difference step of the audit"),
    "preconditioner": Setting(choice(*PRECONDITIONERS), "block_jacobi",
                              "block_jacobi: folded into the operator (free per iteration); "
                              "schwarz: fewer CG iterations, dearer ones and setup"),
    "dense_max_dof": Setting(integer(ge=1), 4096, "dense solves up to this many unknowns"),
    "lanczos_steps": Setting(integer(ge=0), 200,
                             "Lanczos steps for the smallest-eigenvalue estimate"),
    "elasticity": Setting(boolean(), False,
                          "stress, pressure, elastic tensor (/elasticity); per theta dU, dp, "
                          "dsigma/dtheta and the linear range (first contact change)"),
    "many_rhs": Setting(choice(*MANY_RHS), "auto",
                        "kind diameters (N right-hand sides): one dense or sparse "
                        "factorization, or Krylov solves; auto: by size"),
    "mode": Setting(choice(*MODES), "auto",
                    "a vector theta (kind diameters): forward (the whole [N][N][d] Jacobian) "
                    "or reverse (one adjoint solve per observable: d observable/d theta "
                    "only); auto: reverse when there are fewer observables than components"),
    "observables": Setting(observable_list(), [],
                           "d observable/d theta of a vector theta: energy, pressure, "
                           "{position: {particle: i, axis: a}}"),
    "max_result_gib": Setting(nullable(number(gt=0)), None,
                              "refuse a run whose result is larger (null: half the free "
                              "memory / disk)"),
}

#: A name (of a theta, a Slurm job): what file and group names can hold.
NAME = string(r"[A-Za-z_][A-Za-z0-9_.\-]*",
              "a name of letters, digits, '_', '-' or '.', starting with a letter or '_'")

#: One entry of ``parameters``: a θ to differentiate x* with respect to.
PARAMETER: dict[str, Setting] = {
    "name": Setting(NAME, help="name of the result group /sensitivity/<name>"),
    "kind": Setting(choice(*PARAMETER_KINDS)),
    "species": Setting(nullable(integer(ge=0)), None,
                       "species index (diameter; optional for epsilon)"),
    "component": Setting(nullable(choice(*STRAIN_COMPONENTS)), None,
                         "strain component (kind strain; 2D: xx, yy, xy)"),
}
DEFAULT_PARAMETERS = ({"name": "small_diameter", "kind": "diameter", "species": 0},)

#: The random bidisperse packing of :func:`systems.generate.random_packing` (``sensitivity
#: generate``): dimension, packing fraction, seed, large over small diameter.
PACKING = {"dim": 2, "phi": 0.9, "seed": 0, "size_ratio": 1.4}

#: The H5MD particles group a packing is read from by default (``system.group``) and the one
#: a result's relaxed packing is written to (``/particles/all``); the frame read by default
#: (``system.frame``; -1: the last).
PARTICLES_GROUP = "all"
LAST_FRAME = -1

#: Figures (:mod:`systems.plots`, ``sensitivity plot``): the file formats (the first is the
#: default) and the resolution of PNGs (dots per inch).
FIGURE_FORMATS = ("png", "pdf", "svg")
FIGURE_DPI = 150

#: How many of the largest responses a summary lists per θ (:func:`systems.summary.summarize`,
#: ``sensitivity inspect --top``).
SUMMARY_TOP = 5


def defaults(section: Mapping[str, Setting]) -> dict[str, Any]:
    """``{key: default}`` of a section (required keys left out)."""
    return {k: s.default for k, s in section.items() if not s.required}


def unknown_key(where: str, key: Any, known: Iterable[str]) -> str:
    """The message for a key not in ``known``, naming the closest known key (a typo)."""
    known = list(known)
    full = f"{where}.{key}" if where else str(key)
    hint = difflib.get_close_matches(str(key), known, n=1)
    prefix = f"{where}." if where else ""
    suggestion = f"did you mean '{prefix}{hint[0]}'? " if hint else ""
    return f"unknown key '{full}': {suggestion}allowed keys{' in ' + where if where else ''}: " + (
        ", ".join(known)
    )


def check_section(section: Mapping[str, Setting], given: Mapping[str, Any] | None,
                  name: str, *, show: Callable[[Any], str] = repr
                  ) -> tuple[dict[str, Any], list[str]]:
    """Every key of ``section`` in its order: the value ``given`` checked, else (left out or
    ``None``) a copy of its default. The one validation of a section, for a config file and
    for a direct call alike.

    Returns ``(values, errors)``: one message per mistake (unknown keys first),
    ``"<name>.<key> = <show(value)>: must be <allowed>"``, ``"<name>.<key> is required: ..."``
    or :func:`unknown_key`'s; a key in error keeps its default (a required one: ``None``).
    """
    given = given or {}
    errors = [unknown_key(name, key, section) for key in given if key not in section]
    values: dict[str, Any] = {}
    for key, setting in section.items():
        value = given.get(key)
        if value is None:  # left out or empty (``ftol:``): the default
            if setting.required:
                errors.append(f"{name}.{key} is required: {setting.help or setting.check.allowed}")
            values[key] = None if setting.required else copy.deepcopy(setting.default)
            continue
        try:
            values[key] = setting.check(value)
        except Invalid as bad:
            errors.append(f"{name}.{key} = {show(value)}: must be {bad.allowed}")
            values[key] = None if setting.required else copy.deepcopy(setting.default)
    return values, errors


def resolve_section(section: Mapping[str, Setting], given: Mapping[str, Any] | None,
                    name: str, cross_errors: Callable[[dict[str, Any]], list[str]],
                    where: str = "config") -> dict[str, Any]:
    """:func:`check_section`, then ``cross_errors`` (the checks across keys) on its values:
    the values, or :class:`~systems._errors.InputError` naming ``where`` and the first
    mistake (how a direct call resolves a section)."""
    values, errors = check_section(section, given, name)
    errors = errors or cross_errors(values)
    if errors:
        raise InputError(f"{where}: {errors[0]}")
    return values


def potential_errors(values: Mapping[str, Any]) -> list[str]:
    """The checks across keys of a resolved potential section."""
    errors = []
    if values["kind"] != "soft_sphere" and not values["r_onset"] < values["r_cutoff"]:
        errors.append(f"potential.r_cutoff = {values['r_cutoff']:g}: must be > "
                      f"potential.r_onset = {values['r_onset']:g}")
    if values["kind"] == "soft_sphere" and values["sigma"] is not None:
        errors.append(f"potential.sigma = {values['sigma']}: sigma is for lennard_jones/morse; "
                      "soft spheres use the particle diameters (sigma_ij = (d_i + d_j)/2): "
                      "remove it or set potential.kind")
    return errors


def sensitivity_errors(values: Mapping[str, Any]) -> list[str]:
    """The checks across keys of a resolved sensitivity section."""
    if values.get("mode") == "reverse" and not values.get("observables"):
        return ["sensitivity.mode = 'reverse': needs sensitivity.observables (e.g. [pressure]): "
                "reverse mode differentiates a few observables, not the whole Jacobian"]
    return []


def minimizer_errors(values: Mapping[str, Any]) -> list[str]:
    """The checks across keys of a resolved minimizer section."""
    errors = []
    if values["ftol"] == 0 and values["etol"] == 0:
        errors.append("minimizer.ftol = 0: ftol and etol cannot both be 0 (nothing would "
                      "stop the minimizer before max_steps)")
    if values["dt_max"] < values["dt_start"]:
        errors.append(f"minimizer.dt_max = {values['dt_max']:g}: must be >= "
                      f"minimizer.dt_start = {values['dt_start']:g}")
    return errors
