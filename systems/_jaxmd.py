"""jax-md's ``space`` and ``partition`` without the rest of jax-md.

``import jax_md`` runs ``jax_md/__init__.py``, which imports every module of the package:
``rigid_body`` (2.9 s of its own here) and ``nn`` (e3nn-jax, flax, scipy.signal: 1.2 s) among
them, 5-7 s in all, for a run that needs two small modules. :func:`module` imports just the
named submodule: when jax-md is not imported yet, ``sys.modules["jax_md"]`` becomes a *lazy*
package object with jax-md's own search path and spec, so ``jax_md.space`` loads from
jax-md's files as usual, and any other submodule a caller touches later (``jax_md.energy``,
``import jax_md.rigid_body``, ``jax_md.elasticity``) is imported on first attribute access.
Where jax-md was already imported whole, that package is used unchanged.

The pair laws come from :mod:`systems.pair_laws` (the formulas of ``jax_md.energy``, tested
against it), since ``jax_md.energy`` imports ``jax_md.nn`` at module level.

:func:`make_space` gives jax-md's ``(displacement_fn, shift_fn)`` of a box, cached by the
box's value; :func:`require_x64` refuses to build one while JAX's 64-bit mode is off.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import threading
import types

import jax
import jax.numpy as jnp
import numpy as np

from ._compile import device_array

__all__ = ["box_key", "make_space", "module", "nearest_image", "periodic_difference",
           "require_x64", "wrap_mod"]

_LOCK = threading.Lock()


class _LazyPackage(types.ModuleType):
    """``jax_md`` with its submodules imported on first attribute access."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return importlib.import_module(f"{self.__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"{self.__name__}.{name}":
                raise AttributeError(f"module 'jax_md' has no attribute {name!r}") from None
            raise


def _install() -> None:
    if "jax_md" in sys.modules:
        return
    spec = importlib.util.find_spec("jax_md")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("jax-md is not installed (pip install jax-md)", name="jax_md")
    package = _LazyPackage("jax_md", "jax-md, imported module by module (systems._jaxmd)")
    package.__spec__ = spec
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    package.__package__ = "jax_md"
    sys.modules["jax_md"] = package


def module(name: str) -> types.ModuleType:
    """The jax-md submodule ``name`` (``"space"``, ``"partition"``), importing nothing else of
    jax-md that it does not import itself."""
    with _LOCK:
        _install()
    return importlib.import_module(f"jax_md.{name}")


def make_space(box: np.ndarray | None, periodic: bool):
    """jax-md ``(displacement_fn, shift_fn)`` for a periodic box or free space.

    Edge lengths ``(d,)`` take ``space.periodic`` (today's path, unchanged); a cell matrix
    ``(d, d)`` (columns = cell vectors) takes ``space.periodic_general(H,
    fractional_coordinates=False)``: positions stay Cartesian, and each displacement is
    mapped to fractional coordinates, rounded to the nearest image and mapped back (the
    minimum image while the interaction range is below half the cell's smallest face
    distance, which :func:`systems.relax.make_relaxer` checks).

    Cached by value: equal boxes get the *same* function objects, so the pair models (and
    jax-md neighbor lists, whose update functions close over them) of two packings in one
    box compare equal as static data, and compiled functions are reused between them.
    """
    key = None if box is None or not periodic else box_key(box)
    return _space(key, bool(periodic))


def wrap_mod(u, side):
    """``jnp.mod(u, side)`` (``side > 0``), bit for bit, without its floating-point remainder
    where it can: when every ``u`` lies in ``(-side, 2 side)`` (positions in the box moved
    by less than a box, or their differences) the remainder is ``u``, ``u - side`` (exact,
    Sterbenz) or ``u + side`` (what ``jnp.mod`` adds itself); otherwise ``jnp.mod``. One
    branch for the whole array: XLA's CPU remainder costs ~10 ns an element, as much as the
    rest of a pair force.
    """

    inside = jnp.all((u > -side) & (u < 2 * side))
    return jax.lax.cond(inside, _near_mod, jnp.mod, u, side)


def _near_mod(u, side):
    """:func:`wrap_mod`'s branch for ``u`` in ``(-side, 2 side)``. The branches are module
    functions, not closures over ``side``: jax then traces each once per shape and reuses
    the trace (a run traces the wrap about ten times, 15 ms each as closures)."""
    return jnp.where(u >= side, u - side, jnp.where(u < 0, u + side, u))


def periodic_difference(dr, side):
    """jax-md's ``space.periodic`` displacement of raw differences ``dr = Ra - Rb``
    (``(..., d)``), bit for bit: ``mod(dr + side/2, side) - side/2`` (:func:`wrap_mod`)."""
    half = side * 0.5
    return wrap_mod(dr + half, side) - half


def nearest_image(dr, side):
    """The minimum image ``dr - side · round(dr / side)`` of raw differences ``dr``
    (``(..., d)``): jax-md's :func:`periodic_difference` up to round-off, for any ``dr``,
    without a branch (no ``cond`` to check the range, none to transpose). For the forces
    and the neighbor-list check of the FIRE loop."""
    return dr - side * jnp.round(dr / side)


def box_key(box) -> tuple:
    """A box as a hashable value: edge lengths, or rows of a cell matrix."""
    box = np.asarray(box, np.float64)
    if box.ndim == 2:
        return tuple(tuple(float(e) for e in row) for row in box)
    return tuple(float(e) for e in box)


def require_x64() -> None:
    """Raise unless JAX's 64-bit mode is on: the physics is float64, and jax-md casts its
    parameters to float32 when it is off. Importing :mod:`systems` does not turn it on."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            "systems runs its physics in float64 but JAX's 64-bit mode is off; put "
            "jax.config.update('jax_enable_x64', True) at the top of your script, before "
            "jax-md is imported (the `sensitivity` command does this itself)"
        )


@functools.lru_cache(maxsize=64)
def _space(box: tuple | None, periodic: bool):
    require_x64()
    space = module("space")

    if periodic and isinstance(box[0], tuple):  # a cell matrix: a sheared cell
        return space.periodic_general(device_array(box, np.float64),
                                      fractional_coordinates=False)
    if periodic:
        return space.periodic(device_array(box, np.float64))
    return space.free()
