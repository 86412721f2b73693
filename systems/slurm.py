"""Slurm job arrays for sweeps: the ``sbatch`` script and its submission.

One array element per task of the sweep: element ``i`` runs
``python -m sensitivity.cli run CONFIG --task-index $SLURM_ARRAY_TASK_ID`` with the same ``--set`` and
``--output`` options ``submit`` was given, so the array recomputes exactly the tasks
``sensitivity validate`` lists. ``run`` skips a task whose complete result exists, so an array
can be resubmitted after a time limit or a node failure; by default ``submit`` puts only the
unfinished tasks in the array. At the time limit Slurm sends SIGTERM, which ``run`` turns into a
clean stop (no partial result file).

Only the standard library is imported here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = ["SlurmError", "array_spec", "array_states", "queued_indices", "read_submissions",
           "record_submission", "render_script", "sbatch_value", "submit_script",
           "submitted_states", "LOG_PATTERN"]

LOG_PATTERN = "slurm-%A_%a.out"


class SlurmError(RuntimeError):
    """sbatch is missing or refused the job (a one-line message naming the fix)."""


def array_spec(indices: Iterable[int], max_parallel: int | None = None) -> str:
    """Compress task indices into Slurm's ``--array`` syntax: ``[0, 1, 2, 5]`` -> ``0-2,5``."""
    values = sorted(set(int(i) for i in indices))
    if not values:
        raise ValueError("no task indices")
    parts = []
    start = prev = values[0]
    for value in values[1:]:
        if value == prev + 1:
            prev = value
            continue
        parts.append(f"{start}-{prev}" if prev > start else f"{start}")
        start = prev = value
    parts.append(f"{start}-{prev}" if prev > start else f"{start}")
    spec = ",".join(parts)
    if max_parallel:
        spec += f"%{max_parallel}"
    return spec


_SBATCH_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.,:/=+@%")


def sbatch_value(value: str, what: str) -> str:
    """``value`` as one argument of an ``#SBATCH`` line.

    sbatch splits those lines itself (no shell reads them): whitespace separates arguments,
    ``#`` starts a comment, double quotes group and a backslash escapes. A value with any other
    character is written in double quotes with ``\\`` and ``"`` escaped; control characters,
    which would end the line, are refused.
    """
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise SlurmError(f"{what} {value[:60]!r} contains a control character; it cannot be "
                         "written into an sbatch script")
    if value and all(c in _SBATCH_SAFE for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_script(
    *,
    config_path: str | os.PathLike,
    indices: Sequence[int],
    slurm: Mapping,
    log_directory: str | os.PathLike,
    workdir: str | os.PathLike,
    run_arguments: Sequence[str] = (),
    python: str | None = None,
    environment: Mapping[str, str] | None = None,
    task_count: int | None = None,
) -> str:
    """The text of an ``sbatch --array`` script.

    Args:
        config_path: the config file (absolute paths are written).
        indices: task indices to put in the array.
        slurm: the resolved ``slurm`` config section (partition, time, cpus_per_task, mem,
            gpus, job_name, max_parallel, extra).
        log_directory: where Slurm writes ``slurm-<job>_<task>.out``.
        workdir: folder the job runs in.
        run_arguments: extra ``sensitivity run`` arguments (``--set``, ``--output`` ...).
        python: the interpreter to run (default: this one).
        environment: variables to export in the script.
        task_count: number of tasks in the sweep (for the comment).

    A key missing from ``slurm`` takes the config's default (:data:`systems.schema.SCHEMA`).
    """
    from .schema import SCHEMA
    from .settings import defaults

    slurm = {**defaults(SCHEMA["slurm"]), **{k: v for k, v in slurm.items() if v is not None}}
    python = python or sys.executable
    lines = ["#!/bin/bash"]
    option = lines.append
    option(f"#SBATCH --job-name={sbatch_value(str(slurm['job_name']), 'slurm.job_name')}")
    option(f"#SBATCH --array={array_spec(indices, slurm['max_parallel'])}")
    option(f"#SBATCH --time={sbatch_value(str(slurm['time']), 'slurm.time')}")
    option("#SBATCH --ntasks=1")
    option(f"#SBATCH --cpus-per-task={int(slurm['cpus_per_task'])}")
    if slurm.get("mem"):
        option(f"#SBATCH --mem={sbatch_value(str(slurm['mem']), 'slurm.mem')}")
    if slurm.get("partition"):
        option(f"#SBATCH --partition={sbatch_value(str(slurm['partition']), 'slurm.partition')}")
    if slurm.get("gpus"):
        option(f"#SBATCH --gres=gpu:{int(slurm['gpus'])}")
    option("#SBATCH --output=" + sbatch_value(str(Path(log_directory) / LOG_PATTERN),
                                             "log path"))
    for extra in slurm.get("extra") or []:
        sbatch_value(extra, "slurm.extra entry")  # refuses a line break
        extra = extra.strip()
        if extra.startswith("#SBATCH"):
            extra = extra[len("#SBATCH") :].strip()
        option(f"#SBATCH {extra}")
    count = task_count if task_count is not None else len(indices)
    command = [python, "-m", "sensitivity.cli", "run", str(Path(config_path).resolve())]
    command += list(run_arguments)
    lines += [
        "#",
        "# Written by `sensitivity submit`: one array element per task of the sweep in",
        f"# {Path(config_path).resolve()} ({count} task(s); this array runs {len(indices)}).",
        "# Resubmitting is safe: `sensitivity run` skips tasks whose complete result exists,",
        "# and at the time limit Slurm's SIGTERM stops a task without leaving a partial result.",
        "set -euo pipefail",
        f"cd {shlex.quote(str(Path(workdir).resolve()))}",
        "# On a shared GPU, do not let JAX grab 75% of its memory up front.",
        "export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}",
    ]
    for key, value in (environment or {}).items():
        lines.append(f"export {key}={shlex.quote(str(value))}")
    lines.append(
        'echo "sensitivity task ${SLURM_ARRAY_TASK_ID} of job ${SLURM_ARRAY_JOB_ID} on $(hostname)"'
    )
    lines.append(
        "exec " + " ".join(shlex.quote(c) for c in command) + ' --task-index "$SLURM_ARRAY_TASK_ID"'
    )
    return "\n".join(lines) + "\n"


def find_sbatch() -> str:
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SlurmError(
            "sbatch not found on PATH: run `sensitivity submit` on a Slurm login node, or use "
            "--dry-run to write the script without submitting it"
        )
    return sbatch


def submit_script(script: str | os.PathLike, *, timeout: float = 60.0) -> str:
    """Run ``sbatch --parsable SCRIPT`` and return the job id."""
    sbatch = find_sbatch()
    try:
        completed = subprocess.run(
            [sbatch, "--parsable", str(script)],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SlurmError(
            f"sbatch did not answer in {timeout:g} s: is slurmctld running? (try `sinfo`)"
        ) from None
    if completed.returncode != 0:
        message = " ".join((completed.stderr or completed.stdout).split()) or "no message"
        raise SlurmError(f"sbatch refused {script}: {message}")
    job_id = completed.stdout.strip().split(";")[0]
    if not job_id:
        raise SlurmError(f"sbatch printed no job id for {script}")
    return job_id


# --- what the scheduler knows about earlier submissions ------------------------------------

SUBMISSIONS_NAME = "submissions.json"

_ELEMENT = re.compile(r"^(\d+)_(\d+)\|(\S+)$")
_RANGE = re.compile(r"^(\d+)_\[([0-9,\-%]+)\]\|(\S+)$")


def record_submission(top: str | os.PathLike, job_id: str, indices: Sequence[int],
                      script: str | os.PathLike) -> None:
    """Append a submission to ``<top>/submissions.json`` (read by ``sensitivity status``)."""
    from ._atomic import atomic_write_text

    path = Path(top) / SUBMISSIONS_NAME
    entries = read_submissions(top)
    entries.append({"job_id": str(job_id), "indices": [int(i) for i in indices],
                    "script": str(script), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    atomic_write_text(path, json.dumps(entries[-1000:], indent=1) + "\n")


def read_submissions(top: str | os.PathLike) -> list[dict]:
    try:
        entries = json.loads((Path(top) / SUBMISSIONS_NAME).read_text())
    except (OSError, ValueError):
        return []
    return [e for e in entries if isinstance(e, dict) and str(e.get("job_id", "")).isdigit()] \
        if isinstance(entries, list) else []


def _expand(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split("%")[0].split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            out += range(int(low), int(high) + 1)
        elif part:
            out.append(int(part))
    return out


def _states_from(lines: Iterable[str], jobs: set[str]) -> dict[int, str]:
    states: dict[int, str] = {}
    for line in lines:
        line = line.strip()
        match = _ELEMENT.match(line)
        if match and match.group(1) in jobs:
            states[int(match.group(2))] = match.group(3).split()[0]
            continue
        match = _RANGE.match(line)
        if match and match.group(1) in jobs:
            for index in _expand(match.group(2)):
                states[index] = match.group(3).split()[0]
    return states


def array_states(job_ids: Sequence[str], *, timeout: float = 20.0) -> dict[int, str]:
    """``{task index: Slurm state}`` of the array elements of ``job_ids``, later jobs winning.

    Finished elements come from ``sacct`` (where accounting is enabled), queued and running
    ones from ``squeue``. Empty when neither answers (no Slurm here): the caller shows no
    scheduler column rather than failing.
    """
    jobs = [str(j) for j in job_ids if str(j).isdigit()]
    if not jobs:
        return {}
    states: dict[int, str] = {}
    wanted = set(jobs)
    commands = []
    if shutil.which("sacct"):
        commands.append(["sacct", "--noheader", "--parsable2", "--array", "--allocations",
                         "--format=JobID,State", "--jobs", ",".join(jobs)])
    if shutil.which("squeue"):
        commands.append(["squeue", "--noheader", "--array", "--format=%i|%T",
                         "--jobs", ",".join(jobs)])
    for command in commands:
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            states.update(_states_from(done.stdout.splitlines(), wanted))
    return states


#: The Slurm states of an array element that will still run (or is running).
QUEUED_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "REQUEUED", "RESIZING",
                           "SUSPENDED", "COMPLETING"})


def submitted_states(top: str | os.PathLike) -> dict[int, str]:
    """``{task index: Slurm state}`` of the elements ``submit`` sent from output folder ``top``."""
    return array_states([entry["job_id"] for entry in read_submissions(top)])


def queued_indices(top: str | os.PathLike) -> set[int]:
    """The task indices of ``top`` that an earlier submission has queued or is running."""
    return {index for index, state in submitted_states(top).items() if state in QUEUED_STATES}
