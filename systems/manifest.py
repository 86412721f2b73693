"""``sweep.json``: the tasks of a sweep, written by ``run`` and ``submit``, read by ``collect``
and ``status``. The one owner of that file's layout.

Each task entry holds its index, its folder (relative to the sweep's output folder), the swept
values and the digest of its config (what decides its result), so ``status`` can tell a task
computed for another config without reloading the config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from .config import ConfigError, LoadedConfig

__all__ = ["MANIFEST_NAME", "find_tasks", "write_manifest"]

MANIFEST_NAME = "sweep.json"


def write_manifest(loaded: LoadedConfig, running: Sequence | None = None) -> Path | None:
    """``<output.directory>/sweep.json`` for a sweep (None without one).

    ``running``: the tasks this process runs. When they are a part of the sweep (a Slurm
    array task) and the manifest there already describes this sweep (the same config file,
    overrides, swept keys and number of tasks, and these tasks' folders, values and config
    digests), it is left as it is: writing it takes a config digest per task, so every task
    of an array of N rewrote N entries (1.7 s per task at N = 10,000).
    """
    if not loaded.sweep:
        return None
    from sensitivity.systems import atomic_write_text
    from sensitivity.systems.tasks import config_digest

    top = loaded.output_directory
    if running is not None and len(running) < len(loaded.tasks) \
            and _describes(top / MANIFEST_NAME, loaded, running):
        return top / MANIFEST_NAME
    manifest = {**_header(loaded),
                "tasks": [_entry(task, top, config_digest(task.config)) for task in loaded.tasks]}
    return atomic_write_text(top / MANIFEST_NAME, json.dumps(manifest, indent=1, default=str) + "\n")


def _header(loaded: LoadedConfig) -> dict:
    """What the manifest says of the whole sweep (JSON values)."""
    return {"format": "sensitivity-sweep", "config": str(loaded.path.resolve()),
            "overrides": list(loaded.overrides), "keys": list(loaded.sweep),
            "count": len(loaded.tasks)}


def _entry(task, top: Path, digest: str) -> dict:
    """A task's manifest entry, as JSON reads it back."""
    return json.loads(json.dumps({"index": task.index,
                                  "directory": os.path.relpath(task.directory, top),
                                  "values": task.sweep_values, "config_sha256": digest},
                                 default=str))


def _describes(path: Path, loaded: LoadedConfig, running) -> bool:
    """Whether the manifest at ``path`` is this sweep's, for the tasks ``running`` at least."""
    from sensitivity.systems.tasks import config_digest

    try:
        data = json.loads(path.read_text())
        header = _header(loaded)
        same = ({key: data[key] for key in header} == header
                and len(data["tasks"]) == len(loaded.tasks))
        return same and all(
            data["tasks"][task.index] == _entry(task, path.parent, config_digest(task.config))
            for task in running)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def find_tasks(top: Path) -> list[dict]:
    """The tasks of an output folder, as ``{"index", "directory", "values", "config_sha256"}``:
    from its manifest; else the folder itself when it holds one task's files; else every
    folder below it holding a result, a marker or a lock, in sorted order.

    Raises:
        ConfigError: the manifest exists but is not one.
    """
    from sensitivity.systems.tasks import LOCK_NAME, MARKER_NAME, RESULT_NAME

    manifest = top / MANIFEST_NAME
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
            return [{"index": int(t["index"]), "directory": top / t["directory"],
                     "values": dict(t.get("values") or {}),
                     "config_sha256": t.get("config_sha256")} for t in data["tasks"]]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{manifest}: not a sweep manifest written by `sensitivity run` "
                              f"({error})") from None
    names = (RESULT_NAME, MARKER_NAME, LOCK_NAME)
    if any((top / name).exists() for name in names):
        return [{"index": 0, "directory": top, "values": {}, "config_sha256": None}]
    folders = sorted({path.parent for name in names for path in top.rglob(name)
                      if path.is_file()})
    return [{"index": i, "directory": folder, "values": {}, "config_sha256": None}
            for i, folder in enumerate(folders)]
