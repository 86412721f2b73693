"""``sensitivity collect``: the tasks of a sweep folder, handed to
:func:`systems.summary.write_summary` (which owns the table and the HDF5 layout).

The tasks come from ``<dir>/sweep.json`` (written by ``run`` and ``submit``) when it exists, so
that tasks without a result are listed as missing; otherwise every ``sensitivity.h5`` below
``<dir>`` is a task.
"""

from __future__ import annotations

from pathlib import Path

from sensitivity.systems.tasks import RESULT_NAME

from ._manifest import find_tasks
from .config import ConfigError

__all__ = ["collect_results"]


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
    from sensitivity.systems.summary import write_summary

    return write_summary(directory, tasks, output,
                         warn=None if reporter is None else reporter.warning)
