"""Provenance versions: the installed ones, read once per process."""

from importlib import metadata

import numpy as np

from sensitivity.systems import versions


def test_versions_are_the_installed_ones_read_once(monkeypatch):
    versions.package_version.cache_clear()
    calls = []
    real = metadata.version

    def counted(name):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(versions.metadata, "version", counted)
    first = versions.versions()
    assert first["numpy"] == np.__version__ and first["h5py"] == real("h5py")
    assert sorted(calls) == sorted(versions.PROVENANCE_PACKAGES)
    assert versions.versions() == first  # a second task of a sweep reads nothing
    assert len(calls) == len(versions.PROVENANCE_PACKAGES)
    versions.package_version.cache_clear()
