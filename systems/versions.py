"""Installed versions of this package and its dependencies (the standard library only, so
``sensitivity --version`` and the provenance written with every result ask one place)."""

from __future__ import annotations

import functools
from importlib import metadata
from pathlib import Path

__all__ = ["package_version", "versions"]

#: The packages a result's provenance names.
PROVENANCE_PACKAGES = ("sensitivity", "jax", "jaxlib", "jax-md", "numpy", "scipy", "h5py")


@functools.lru_cache(maxsize=None)
def package_version(name: str) -> str:
    """The installed version of ``name``; for ``sensitivity`` run from a checkout that is not
    installed, the ``__version__`` in its source; ``"not installed"`` otherwise.

    Read once per process (reading package metadata took ~5 ms a package, paid by every
    task of a sweep): the code a process runs is what it imported, whatever is installed
    later.
    """
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        pass
    if name == "sensitivity":
        source = Path(__file__).resolve().parents[1] / "sensitivity" / "__init__.py"
        try:
            return source.read_text().split('__version__ = "', 1)[1].split('"', 1)[0]
        except (OSError, IndexError):
            return "unknown"
    return "not installed"


def versions(names=PROVENANCE_PACKAGES) -> dict[str, str]:
    """``{package: version}`` for ``names``."""
    return {name: package_version(name) for name in names}
