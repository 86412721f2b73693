"""jax-md's ``space`` and ``partition`` without the rest of jax-md.

``import jax_md`` runs ``jax_md/__init__.py``, which imports every module of the package:
``rigid_body`` (2.9 s of its own here) and ``nn`` (e3nn-jax, flax, scipy.signal: 1.2 s) among
them, 5-7 s in all, for a run that needs two small modules. :func:`module` imports just the
named submodule: when jax-md is not imported yet, ``sys.modules["jax_md"]`` becomes a *lazy*
package object with jax-md's own search path and spec, so ``jax_md.space`` loads from
jax-md's files as usual, and any other submodule a caller touches later (``jax_md.energy``,
``import jax_md.rigid_body``, ``jax_md.elasticity``) is imported on first attribute access.
Where jax-md was already imported whole, that package is used unchanged.

The pair laws come from :mod:`systems.potentials` (the formulas of ``jax_md.energy``, tested
against it), since ``jax_md.energy`` imports ``jax_md.nn`` at module level.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

__all__ = ["module"]

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
