"""Slurm job arrays for sweeps: the ``sbatch`` script and its submission.

One array element per task of the sweep: element ``i`` runs
``python -m cli run CONFIG --task-index $SLURM_ARRAY_TASK_ID`` with the same ``--set`` and
``--output`` options ``submit`` was given, so the array recomputes exactly the tasks
``sensitivity validate`` lists. ``run`` skips a task whose complete result exists, so an array
can be resubmitted after a time limit or a node failure; by default ``submit`` puts only the
unfinished tasks in the array. At the time limit Slurm sends SIGTERM, which ``run`` turns into a
clean stop (no partial result file).

Only the standard library is imported here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = ["SlurmError", "array_spec", "render_script", "submit_script", "LOG_PATTERN"]

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
    """
    python = python or sys.executable
    lines = ["#!/bin/bash"]
    option = lines.append
    option(f"#SBATCH --job-name={slurm.get('job_name') or 'sensitivity'}")
    option(f"#SBATCH --array={array_spec(indices, slurm.get('max_parallel'))}")
    option(f"#SBATCH --time={slurm.get('time') or '01:00:00'}")
    option("#SBATCH --ntasks=1")
    option(f"#SBATCH --cpus-per-task={int(slurm.get('cpus_per_task') or 1)}")
    if slurm.get("mem"):
        option(f"#SBATCH --mem={slurm['mem']}")
    if slurm.get("partition"):
        option(f"#SBATCH --partition={slurm['partition']}")
    if slurm.get("gpus"):
        option(f"#SBATCH --gres=gpu:{int(slurm['gpus'])}")
    option(f"#SBATCH --output={Path(log_directory) / LOG_PATTERN}")
    for extra in slurm.get("extra") or []:
        extra = extra.strip()
        if extra.startswith("#SBATCH"):
            extra = extra[len("#SBATCH") :].strip()
        option(f"#SBATCH {extra}")
    count = task_count if task_count is not None else len(indices)
    command = [python, "-m", "cli", "run", str(Path(config_path).resolve())]
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
