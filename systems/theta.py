"""The θs a packing's minimum is differentiated with respect to: their definitions, their
validation against a system and a potential, and how each one moves the parameters.

A θ is a :class:`ParameterSpec` (name, kind, species, component). :func:`theta_data` turns
it into data (a static tag, θ's value at the base parameters and which entries it moves),
so the compiled functions of :mod:`systems.response` take θ as arguments and are shared
between packings; :func:`apply_theta` is the one rule per tag that maps θ to parameters.
The kinds are described in :mod:`systems.response`.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from . import settings
from ._compile import device_array
from ._errors import InputError
from .potentials import PotentialParams, PotentialSpec

__all__ = ["PARAMETER_KINDS", "ParameterSpec", "apply_theta", "resolve_parameters",
           "theta_apply", "theta_data", "theta_meaning"]

PARAMETER_KINDS = settings.PARAMETER_KINDS


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    """One θ: ``name`` (dataset name), ``kind`` (see :data:`PARAMETER_KINDS`), ``species``,
    ``component`` (kind ``strain``: ``"xx"``, ``"xy"``, ...)."""

    name: str
    kind: str
    species: int | None = None
    component: str | None = None
    dim: int | None = None  # kind strain: the dimension of the strain tensor


def resolve_parameters(parameter_cfgs, system, spec: PotentialSpec,
                       where: str = "config") -> list[ParameterSpec]:
    """Validate the ``parameters`` config list against the system and potential."""
    if parameter_cfgs is None:
        parameter_cfgs = [dict(p) for p in settings.DEFAULT_PARAMETERS]
    out: list[ParameterSpec] = []
    names = set()
    for k, cfg in enumerate(parameter_cfgs):
        key = f"{where}: parameters[{k}]"
        kind = cfg.get("kind")
        name = cfg.get("name")
        species = cfg.get("species")
        if kind not in PARAMETER_KINDS:
            raise InputError(
                f"{key}.kind must be one of {', '.join(PARAMETER_KINDS)}, got {kind!r}")
        if not isinstance(name, str) or not name or "/" in name:
            raise InputError(f"{key}.name must be a non-empty name without '/', got {name!r}")
        if name in names:
            raise InputError(f"{key}.name {name!r} is used twice; names must be unique")
        names.add(name)
        if species is not None:
            if not isinstance(species, (int, np.integer)) or isinstance(species, bool):
                raise InputError(f"{key}.species must be an integer or null, got {species!r}")
            code = system.species_code(species)
            if code is None or not np.any(system.species == code):
                present = sorted(set(np.asarray(system.labelled_species).tolist()))
                raise InputError(
                    f"{key}.species {species} has no particles; species present: {present}")
            species = code
        if kind == "diameter" and species is None:
            raise InputError(f"{key}: kind 'diameter' needs species (the species whose "
                             "diameter is θ); use kind 'diameters' for every particle")
        if kind in ("diameters", "box") and species is not None:
            raise InputError(f"{key}: kind {kind!r} takes no species (set species: null)")
        if kind in ("diameter", "diameters") and spec.sigma is not None:
            raise InputError(f"{key}: kind {kind!r} has no effect when potential.sigma is "
                             "set (σ does not come from the diameters); set sigma to null")
        if kind == "box" and not system.periodic:
            raise InputError(f"{key}: kind 'box' needs a periodic box; this system has free "
                             "boundaries")
        component = cfg.get("component")
        if kind == "strain":
            from .elasticity import check_component

            if species is not None:
                raise InputError(f"{key}: kind 'strain' takes no species (set species: null)")
            if not system.periodic:
                raise InputError(f"{key}: kind 'strain' needs a periodic box; this system has "
                                 "free boundaries")
            component = check_component(component, system.dim, f"{key}.component")
        elif component is not None:
            raise InputError(f"{key}.component is for kind 'strain' only, got kind {kind!r}; "
                             "remove it")
        out.append(ParameterSpec(name=name, kind=kind,
                                 species=None if species is None else int(species),
                                 component=component,
                                 dim=system.dim if kind == "strain" else None))
    if not out:
        raise InputError(f"{where}: parameters is empty; list at least one θ")
    return out


def _no_member():
    """The ``member`` of a θ that moves no particular entries: a float64 zero."""
    return device_array(0.0, np.float64)


def theta_data(pspec: ParameterSpec, base: PotentialParams, species: np.ndarray):
    """``(tag, theta0, member)``: how θ enters the parameters, as data.

    ``tag`` (static) names the rule of :func:`apply_theta`; ``theta0`` (θ at ``base``) and
    ``member`` (which diameters / ε entries θ moves) are arrays, so compiled functions take
    them as arguments and are shared between packings.
    """
    species = np.asarray(species)
    kind = pspec.kind
    if kind == "diameter":
        member = device_array(species == pspec.species, np.float64)
        theta0 = device_array(np.asarray(base.diameters)[species == pspec.species].mean(),
                              np.float64)
        return "diameter", theta0, member
    if kind == "diameters":
        return "diameters", device_array(base.diameters, np.float64), _no_member()
    if kind == "epsilon":
        eps0 = np.asarray(base.epsilon)
        if pspec.species is not None:
            s = pspec.species
            member = np.zeros_like(eps0)
            member[s, :] = 1.0
            member[:, s] = 1.0
            return ("epsilon_species", device_array(eps0[s, s], np.float64),
                    device_array(member, np.float64))
        theta0 = eps0.flat[0] if np.all(eps0 == eps0.flat[0]) else 1.0
        return "epsilon_scale", device_array(theta0, np.float64), _no_member()
    if kind == "box":
        return "box", device_array(base.scale, np.float64), _no_member()
    if kind == "strain":
        from .elasticity import strain_direction

        direction = strain_direction(pspec.component, pspec.dim)
        theta0 = 0.0 if base.strain is None else float(
            np.sum(np.asarray(base.strain) * direction) / np.sum(direction * direction))
        return "strain", device_array(theta0, np.float64), device_array(direction, np.float64)
    raise ValueError(f"unknown parameter kind {kind!r}")


def apply_theta(tag: str, params: PotentialParams, theta, theta0, member) -> PotentialParams:
    """The parameters with θ set to ``theta`` (see :func:`theta_data`)."""
    if tag == "diameter":
        return params._replace(diameters=params.diameters + member * (theta - theta0))
    if tag == "diameters":
        return params._replace(diameters=theta)
    if tag == "epsilon_species":
        return params._replace(epsilon=params.epsilon + member * (theta - theta0))
    if tag == "epsilon_scale":
        return params._replace(epsilon=params.epsilon * (theta / theta0))
    if tag == "box":
        return params._replace(scale=params.scale * (theta / theta0))
    if tag == "strain":
        strain = jnp.zeros_like(member) if params.strain is None else params.strain
        return params._replace(strain=strain + member * (theta - theta0))
    raise ValueError(f"unknown θ rule {tag!r}")


def theta_apply(pspec: ParameterSpec, base: PotentialParams, species: np.ndarray):
    """``(theta0, apply)`` with ``apply(params, theta) -> PotentialParams``.

    ``apply(base, theta0) == base``; ``apply`` changes only what this θ controls, so
    several θs compose (``apply_2(apply_1(base, t1), t2)``) and are differentiated together.
    See the module docstring for what θ means for each kind.
    """
    tag, theta0, member = theta_data(pspec, base, species)
    return theta0, lambda p, theta: apply_theta(tag, p, theta, theta0, member)


def theta_meaning(pspec: ParameterSpec, species: int | None = None) -> str:
    """θ's definition in words; ``species``: its species as the input file labels it
    (default: ``pspec.species``, the code)."""
    species = pspec.species if species is None else species
    return {
        "diameter": f"mean diameter of species {species} (all of them move together)",
        "diameters": "every particle's diameter (row p: dx*/dd_p)",
        "epsilon": ("energy scale of every pair involving species "
                    f"{species}" if species is not None
                    else "energy scale of every pair (value, or multiplier of the matrix)"),
        "box": "box edge scale λ at fixed fractional positions (1 = input box)",
        "strain": (f"strain component ε_{pspec.component} (symmetric: ε_ab = ε_ba = θ; the "
                   "box and positions deformed affinely by I + ε; 0 = input box)"),
    }[pspec.kind]


