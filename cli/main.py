"""The ``sensitivity`` command: relax packings, differentiate them, batch sweeps on Slurm.

A thin click layer over :mod:`systems`: each command turns its arguments into library calls and
renders the result. Nothing heavy is imported at module level (no jax, jax-md, matplotlib or
``systems`` physics), so ``sensitivity --help`` is instant; commands import what they need.

Exit codes: 0 success; 1 a numerical failure (a relaxation or linear solve that did not
converge, a failed audit); 2 a usage or input mistake (one line naming the fix; ``--debug``
shows the traceback); 74 a storage failure (disk full, read-only file system, permission
denied: one line naming the path); 143 / 130 when stopped by SIGTERM / Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from pathlib import Path

import click

from sensitivity.systems.config import LoadedConfig, Task, dump_yaml, load_config
from sensitivity.systems.manifest import MANIFEST_NAME, find_tasks, write_manifest
from sensitivity.systems.schema import EXAMPLE_CONFIG
from sensitivity.systems.settings import PACKING

from . import _results
from ._common import (_FAILURE_CLASSES, EXIT_NUMERICAL, EXIT_OK, EXIT_STORAGE, FiniteFloat,
                      NumericalFailure, SensitivityGroup, State, UserError, _state,
                      cache_options, common_options, config_options, emit_json, json_option,
                      task_index_option, translate_error)


EPILOG = f"""\b
Quick start:
  sensitivity generate --n 256 --dim 2 --phi 0.9 --seed 0 -o packing.h5
  sensitivity run config.yaml          # writes out/sensitivity.h5 and plots
  sensitivity inspect out/sensitivity.h5

\b
Example config (paths are relative to the config file's folder):
{EXAMPLE_CONFIG}
\b
Batch: a sweep expands into numbered tasks (out/task-0000, ...); `run` without
--task-index runs them in turn, with it (or with SLURM_ARRAY_TASK_ID set) one;
finished tasks are skipped, so rerunning resumes. `submit` writes and sbatch-es
an array job, one element per unfinished task.

\b
Environment:
  SENSITIVITY_CACHE_DIR       JAX compilation cache (default
                              $XDG_CACHE_HOME/sensitivity/jax or ~/.cache/...;
                              'off' disables; JAX_COMPILATION_CACHE_DIR also works)
  JAX_PLATFORMS=cpu           force the CPU even where a GPU is visible
  OPENBLAS_NUM_THREADS, MKL_NUM_THREADS, OMP_NUM_THREADS
                              NumPy's BLAS threads (default here: 1)
  XLA_PYTHON_CLIENT_PREALLOCATE=false
                              on a shared GPU: do not reserve 75% of its memory
                              (submit's scripts set it)

\b
GPU: pip install 'sensitivity[cuda]' (jax[cuda12]); the same commands then run
on the GPU. Exit codes: 0 ok, 1 not converged, 2 usage or input error,
74 storage error (disk full, read-only, permission denied), 143/130 stopped
by SIGTERM/SIGINT.
"""



def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from sensitivity.systems.versions import package_version as version

    own = version("sensitivity")
    others = ", ".join(f"{name} {version(name)}" for name in ("jax", "jaxlib", "jax-md"))
    click.echo(f"sensitivity {own} ({others}; python {sys.version.split()[0]})")
    ctx.exit()


@click.group(
    cls=SensitivityGroup,
    epilog=EPILOG,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option(
    "--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
    help="Show the versions of sensitivity, jax and jax-md, and exit.",
)
@common_options
def main() -> None:
    """Sensitivity of particle packings: relax a packing to its energy minimum x*, then
    compute dx*/dtheta for chosen parameters theta (diameters, energy scale, box) by implicit
    differentiation, for single runs, sweeps and Slurm job arrays."""


# ---------------------------------------------------------------------------------------------
# Helpers shared by the commands
# ---------------------------------------------------------------------------------------------


def _task_record(task: Task, status: str, code: int = EXIT_OK, message: str = "") -> dict:
    record = {"index": task.index, "label": task.label, "directory": str(task.directory),
              "status": status, "exit_code": code}
    if message:
        record["message"] = message
    written = status in ("done", "skipped") or code == EXIT_NUMERICAL  # not converged: written
    if written and task.result_path.is_file():
        from sensitivity.systems.batch import result_record

        with contextlib.suppress(Exception):
            record.update(result_record(task.result_path))
    return record


def _progress(reporter, loaded: LoadedConfig, task: Task):
    """The reporter's progress context of one task (labelled by the config file alone)."""
    label = task.label if len(loaded.tasks) > 1 else Path(loaded.path).name
    return reporter.task(label, ftol=task.config["minimizer"]["ftol"])


def _echo_task_text(loaded: LoadedConfig, task: Task, text: str) -> None:
    """A task's block of text on stdout, headed by its label in a sweep."""
    if len(loaded.tasks) > 1:
        click.echo(f"--- {task.label}")
    click.echo(text)


def _stats_from_result(path: Path) -> str:
    """The stats block of a result file."""
    from sensitivity.systems.batch import result_record

    from ._report import stats_block

    r = result_record(path)
    return stats_block(r["relaxation"], r["responses"], r["timings"], rattlers=r["rattlers"],
                       n=r["n"], result_path=str(path))


# ---------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------


@main.command(short_help="Relax and differentiate the packing(s) of a config.")
@config_options
@task_index_option(
    "Run only this task of the sweep [default: $SLURM_ARRAY_TASK_ID; unset: every task].")
@click.option("--overwrite", is_flag=True, help="Recompute every task, also the complete ones.")
@click.option("--keep-failed", is_flag=True,
              help="Count tasks that finished without converging as done (do not recompute them).")
@json_option
@cache_options
@common_options
def run(config: str, overrides: tuple[str, ...], output: str | None, task_index: int | None,
        overwrite: bool, keep_failed: bool) -> None:
    """Relax the packing(s) of CONFIG and compute their sensitivities.

    Writes OUTPUT/sensitivity.h5 (the relaxed packing, dx*/dtheta for every theta, rattlers,
    the resolved config and provenance), OUTPUT/config.yaml, plots and, last,
    OUTPUT/complete.json. A sweep writes one folder per task (OUTPUT/task-0000, ...) and
    OUTPUT/sweep.json. A task is skipped only when it is complete: converged (or failed, with
    --keep-failed), for this config and these input files (SHA-256), every file in place.
    """
    from sensitivity.systems.batch import (StopSignals, Terminated, array_index, select_tasks,
                                           setup_jax, task_state)

    state = _state()
    reporter = state.reporter()
    task_index = array_index(task_index)  # one task of an array: resolve only that one
    loaded = load_config(config, overrides, output=output, only=task_index)
    tasks = select_tasks(loaded, task_index)
    write_manifest(loaded, running=tasks)

    todo = []
    records: dict[int, dict] = {}  # --json
    for task in tasks:
        status = task_state(task)
        if not overwrite and status.finished(keep_failed):
            what = ("complete result exists" if status.state == "done"
                    else f"failed earlier ({status.reason}), kept by --keep-failed")
            reporter.info(f"{task.label}: skipped, {what} ({task.directory})")
            if state.json:
                records[task.index] = _task_record(task, "skipped")
            continue
        if not overwrite and status.state not in ("missing", "done"):
            reporter.info(f"{task.label}: {status.state} ({status.reason}); computing it")
        todo.append(task)
    if not todo:
        reporter.info(f"nothing to do: all {len(tasks)} task(s) complete (--overwrite recomputes)")
        if state.json:
            emit_json({"config": str(loaded.path), "converged": True, "failed": 0,
                       "tasks": [records[i] for i in sorted(records)]})
        return

    from sensitivity.systems.relax_ahead import RelaxAhead, workers_for

    workers = workers_for(len(todo))  # the next tasks relaxed in threads (0: none)
    started = time.perf_counter()
    setup_jax(state.cache_directory(), reporter)
    from sensitivity.systems.pipeline import run_task

    reporter.info(f"imported jax and the physics in {time.perf_counter() - started:.2f} s")

    failures: dict[int, tuple[int, str]] = {}
    single = len(todo) == 1 and len(loaded.tasks) == 1
    current = None
    ran = 0
    signals = StopSignals()
    ahead = None
    try:
        with signals, contextlib.ExitStack() as stack:
            if workers:
                ahead = stack.enter_context(RelaxAhead(
                    [(t.index, t.config, t.directory) for t in todo], workers))
            for task in todo:
                signals.check()
                current = task
                code, message = _run_one(task, loaded, run_task, reporter, state, signals,
                                         ahead)
                current = None
                ran += 1
                if code != EXIT_OK:
                    failures[task.index] = (code, message)
                if state.json:
                    records[task.index] = _task_record(
                        task, "done" if code == EXIT_OK else "failed", code, message)
                if code == EXIT_STORAGE:
                    break  # a full or read-only disk fails every later task the same way
            signals.check()
    except (Terminated, KeyboardInterrupt) as stop:
        signum = getattr(stop, "signum", None) or signals.signum or signal.SIGINT
        which = f"({current.label}) " if current is not None and len(loaded.tasks) > 1 else ""
        reporter.warning(
            f"stopped by {signal.Signals(signum).name}: the running task {which}is not complete "
            "and will be computed again when you rerun the same command (complete tasks are "
            "skipped)"
        )
        sys.exit(128 + signum)
    elapsed = time.perf_counter() - started
    done = ran - len(failures)
    if len(todo) > 1:
        per_task = elapsed / max(ran, 1)
        reporter.info(f"{done} of {len(todo)} task(s) done in {elapsed:.1f} s ({per_task:.2f} s per task)")
    if state.json:
        emit_json({"config": str(loaded.path), "converged": not failures, "failed": len(failures),
                   "elapsed_s": elapsed, "tasks": [records[i] for i in sorted(records)]})
    if failures:
        code = max(failures.values(), key=lambda item: (item[0] == EXIT_STORAGE, item[0]))[0]
        failure = _FAILURE_CLASSES.get(code, NumericalFailure)
        if single:
            raise failure(next(iter(failures.values()))[1])
        lines = [f"task {i}: {m}" for i, (c, m) in sorted(failures.items())]
        not_started = len(todo) - ran
        raise failure(f"{len(failures)} of {len(todo)} task(s) failed:\n" + "\n".join(lines)
                      + (f"\n{not_started} task(s) not started" if not_started > 0 else ""))


def _run_one(task: Task, loaded: LoadedConfig, run_task, reporter, state: State,
             signals, ahead=None) -> tuple[int, str]:
    """Run one task in its folder (:func:`systems.tasks.run_in_folder`, which keeps the folder
    honest); returns (exit code, message) and never raises for a task's own failure."""
    from sensitivity.systems import ConvergenceError, InputError, StorageError, storage_error
    from sensitivity.systems.tasks import run_in_folder

    def run(config, directory):
        reporter.info(f"start: {config['system']['path']} -> {directory}")
        prepared = ahead.take(task.index) if ahead is not None else None
        return run_task(config, directory, progress=reporter.progress, config_text=loaded.text,
                        prepared=prepared)

    try:
        with _progress(reporter, loaded, task):
            outcome = run_in_folder(task.config, task.directory, run,
                                    before_complete=signals.check,
                                    not_converged_code=EXIT_NUMERICAL)
    except (OSError, InputError, ConvergenceError) as error:
        if state.debug:
            raise
        if not isinstance(error, (StorageError, InputError, ConvergenceError)):
            # a write outside the atomic writer (a figure): a storage failure all the same
            error = storage_error(error.filename or task.directory, error)
        failure = translate_error(error)
        return failure.exit_code, failure.message
    if not state.quiet and not state.json and outcome.result_path.is_file():
        text = _stats_from_result(outcome.result_path)
        _echo_task_text(loaded, task, text)
    return (EXIT_OK, "") if outcome.converged else (EXIT_NUMERICAL, outcome.message)


@main.command(short_help="Check a config; print the resolved configuration.")
@config_options
@task_index_option("Print this task's resolved config.")
@click.option("--no-file-check", is_flag=True, help="Do not check that input files exist.")
@json_option
@common_options
def validate(config: str, overrides: tuple[str, ...], output: str | None, task_index: int | None,
             no_file_check: bool) -> None:
    """Check CONFIG without running it; print the resolved configuration.

    Every key is checked (unknown keys, types, ranges, choices, input files); a sweep is
    expanded and its tasks listed.
    """
    state = _state()
    loaded = load_config(config, overrides, output=output, check_files=not no_file_check)
    if state.json:
        selected = [loaded.task(task_index)] if task_index is not None else loaded.tasks
        emit_json({
            "config": str(loaded.path), "valid": True, "count": len(loaded.tasks),
            "output_directory": str(loaded.output_directory), "sweep_keys": list(loaded.sweep),
            "tasks": [{"index": t.index, "directory": str(t.directory), "values": t.sweep_values,
                       "config": t.config} for t in selected],
        })
        return
    if task_index is not None:
        task = loaded.task(task_index)
        if not state.quiet:
            click.echo(f"# task {task.index} of {task.count}: {task.directory}")
            click.echo(dump_yaml(task.config), nl=False)
        return
    if state.quiet:
        return
    if not loaded.sweep:
        click.echo(dump_yaml(loaded.tasks[0].config), nl=False)
    else:
        base = dict(loaded.base)
        click.echo("# resolved config of task 0; the sweep varies the keys listed below")
        click.echo(dump_yaml(base), nl=False)
        click.echo(f"sweep:  # {len(loaded.tasks)} tasks")
        for task in loaded.tasks:
            values = ", ".join(f"{k}: {json.dumps(v, default=str)}" for k, v in task.sweep_values.items())
            click.echo(f"  # {task.directory.name}: {values}")
    click.echo(f"config OK: {len(loaded.tasks)} task(s), output in {loaded.output_directory}", err=True)


@main.command(short_help="Write a random bidisperse packing (H5MD).")
@click.option("--n", "n", type=click.IntRange(min=2), required=True, help="Number of particles.")
@click.option("--dim", type=click.Choice(["2", "3"]), default=str(PACKING["dim"]),
              show_default=True, help="2: disks, 3: spheres.")
@click.option("--phi", type=FiniteFloat(min=0, max=2, min_open=True),
              default=PACKING["phi"], show_default=True, help="Packing fraction.")
@click.option("--seed", type=click.IntRange(min=0), default=PACKING["seed"], show_default=True)
@click.option("--size-ratio", type=FiniteFloat(min=0, min_open=True),
              default=PACKING["size_ratio"], show_default=True,
              help="Large over small diameter (50:50 mixture).")
@click.option("--tilt", multiple=True, metavar="NAME=T",
              help="A sheared (triclinic) box: tilt factor xy, xz or yz (2D: xy) in units of "
                   "the box edge, e.g. --tilt xy=0.2 (repeatable; the volume is unchanged).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True,
              help="The H5MD file to write.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@common_options
def generate(n: int, dim: str, phi: float, seed: int, size_ratio: float, tilt: tuple,
             output: str, force: bool) -> None:
    """Write a random bidisperse packing (H5MD) to start from.

    Half the particles are small (species 0, diameter 1), half large (species 1, diameter
    SIZE_RATIO), uniform at random in a periodic box sized for packing fraction PHI. They
    overlap: `sensitivity run` relaxes them.
    """
    state = _state()
    path = Path(output)
    if path.exists() and not force:
        raise UserError(f"{path} exists; pass --force to overwrite it or choose another -o")
    from sensitivity.systems.generate import random_packing, sheared_cell_problem, tilt_matrix
    from sensitivity.systems.io import write_packing

    tilts = {}
    for item in tilt:
        name, _, value = item.partition("=")
        try:
            tilts[name.strip()] = float(value)
        except ValueError:
            raise UserError(f"--tilt {item!r}: expected NAME=T with a number T, "
                            "e.g. --tilt xy=0.2") from None
    try:
        tilt_matrix(tilts, int(dim))
    except ValueError as error:
        raise UserError(f"--{error}") from None
    try:
        system = random_packing(n, dim=int(dim), phi=phi, seed=seed, size_ratio=size_ratio,
                                tilt=tilts or None)
    except ValueError as error:  # the generator's checks (finite φ and sizes, memory)
        raise UserError(f"generate: {error}") from None
    problem = sheared_cell_problem(system)
    if problem:
        raise UserError(f"--tilt: the sheared box {problem}")
    write_packing(path, system)
    if not state.quiet:
        if system.box.ndim == 2:
            from ._report import format_vectors

            box = "cell vectors " + format_vectors(system.box.T)
        else:
            box = "box " + " x ".join(f"{edge:.6g}" for edge in system.box)
        click.echo(
            f"wrote {path}: {n} {'disks' if dim == '2' else 'spheres'}, phi {phi:g}, seed {seed}, "
            f"{box}"
        )


@main.command(short_help="Finite-difference audit of the derivatives.")
@config_options
@task_index_option("Audit only this task [default: $SLURM_ARRAY_TASK_ID; unset: every task].")
@click.option("--tolerance", type=FiniteFloat(min=0, min_open=True), default=None,
              help="Largest relative error accepted [default: the audit's own].")
@json_option
@cache_options
@common_options
def check(config: str, overrides: tuple[str, ...], output: str | None, task_index: int | None,
          tolerance: float | None) -> None:
    """Audit the implicit derivatives of CONFIG against finite differences.

    Re-minimizes at theta +/- h (sensitivity.fd_step) from x* and compares the central
    difference with dx*/dtheta on the non-rattlers, after the same gauge fixing. Exit code 1
    when they disagree.
    """
    from sensitivity.systems.batch import StopSignals, array_index, select_tasks, setup_jax

    state = _state()
    reporter = state.reporter()
    task_index = array_index(task_index)
    loaded = load_config(config, overrides, output=output, only=task_index)
    tasks = select_tasks(loaded, task_index)
    setup_jax(state.cache_directory(), reporter)
    from sensitivity.systems.pipeline import audit_task

    from ._inspect import render_audit

    failed = []
    reasons: dict[int, str] = {}
    records = []  # --json
    with StopSignals():
        for task in tasks:
            with _progress(reporter, loaded, task):
                audit = audit_task(task.config, progress=reporter.progress)
            text, ok = render_audit(audit, tolerance=tolerance)
            records.append({"index": task.index, "label": task.label, "passed": ok,
                            "audit": audit})
            if not state.quiet and not state.json:
                _echo_task_text(loaded, task, text)
            if not ok:
                failed.append(task.index)
                if audit.get("reason"):
                    reasons[task.index] = " ".join(str(audit["reason"]).split())
    if state.json:
        emit_json({"config": str(loaded.path), "passed": not failed, "tolerance": tolerance,
                   "tasks": records})
    if reasons:
        lines = [f"task {i}: {reason}" if len(loaded.tasks) > 1 else reason
                 for i, reason in sorted(reasons.items())]
        raise NumericalFailure("nothing to audit: " + "\n".join(lines))
    if failed:
        which = ", ".join(str(i) for i in failed)
        raise NumericalFailure(
            f"finite-difference audit failed for task(s) {which}: the implicit derivative and "
            "the finite difference disagree (see the table); tighten minimizer.ftol and "
            "sensitivity.tol, or try another sensitivity.fd_step"
        )


@main.command(short_help="Submit a sweep as a Slurm job array.")
@config_options
@click.option("--dry-run", is_flag=True, help="Write and print the script; do not submit.")
@click.option("--all", "all_tasks", is_flag=True,
              help="Recompute every task, also the complete ones (the array runs --overwrite).")
@click.option("--failed", "only_failed", is_flag=True,
              help="Only the tasks that ran and are not done (failed, incomplete, stale); not "
              "those never started.")
@click.option("--keep-failed", is_flag=True,
              help="Count tasks that finished without converging as done.")
@click.option("--script", type=click.Path(dir_okay=False), default=None,
              help="Where to write the sbatch script [default: OUTPUT/submit.sbatch].")
@click.option("--partition", default=None, help="Slurm partition (slurm.partition).")
@click.option("--time", "time_limit", default=None, help="Time limit per task (slurm.time).")
@click.option("--mem", default=None, help="Memory per task (slurm.mem).")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=None,
              help="CPUs per task (slurm.cpus_per_task).")
@click.option("--gpus", type=click.IntRange(min=0), default=None,
              help="GPUs per task (slurm.gpus).")
@click.option("--max-parallel", type=click.IntRange(min=1), default=None,
              help="At most this many tasks at once (slurm.max_parallel).")
@cache_options
@common_options
def submit(config: str, overrides: tuple[str, ...], output: str | None, dry_run: bool,
           all_tasks: bool, only_failed: bool, keep_failed: bool, script: str | None, partition,
           time_limit, mem, cpus_per_task, gpus, max_parallel) -> None:
    """Submit the tasks of CONFIG as a Slurm job array (sbatch --array).

    Resources come from the config's slurm section, overridden by the options. The array holds
    the tasks that are not done (see `sensitivity status`), less those already queued or
    running from an earlier submission; resubmitting resumes a sweep.
    """
    from sensitivity.systems.batch import submission_indices
    from sensitivity.systems.slurm import record_submission, render_script, submit_script

    state = _state()
    if all_tasks and only_failed:
        raise UserError("--all and --failed contradict each other; give one")
    options = {
        "partition": partition, "time": time_limit, "mem": mem, "cpus_per_task": cpus_per_task,
        "gpus": gpus, "max_parallel": max_parallel,
    }
    overrides = tuple(overrides) + tuple(
        f"slurm.{key}={json.dumps(value)}" for key, value in options.items() if value is not None
    )
    loaded = load_config(config, overrides, output=output)
    top = loaded.output_directory
    indices = submission_indices(loaded, all_tasks=all_tasks, only_failed=only_failed,
                                 keep_failed=keep_failed)
    if not indices:
        if not state.quiet:
            what = "ran and failed" if only_failed else "to do (queued, running or complete)"
            click.echo(f"nothing to submit: none of the {len(loaded.tasks)} task(s) {what} "
                       "(`sensitivity status` shows each; --all recomputes them)")
        return
    run_arguments: list[str] = []
    for override in overrides:
        run_arguments += ["--set", override]
    run_arguments += ["--output", str(top)]
    if all_tasks:
        run_arguments.append("--overwrite")
    if keep_failed:
        run_arguments.append("--keep-failed")
    if state.verbose:
        run_arguments.append("-" + "v" * state.verbose)
    cache, logs = state.cache_directory(), top / "logs"
    environment = {"SENSITIVITY_CACHE_DIR": str(cache) if cache is not None else "off"}
    text = render_script(
        config_path=loaded.path,
        indices=indices,
        slurm=loaded.base["slurm"],
        log_directory=logs,
        workdir=Path.cwd(),
        run_arguments=run_arguments,
        environment=environment,
        task_count=len(loaded.tasks),
    )
    from sensitivity.systems import atomic_write_text, ensure_writable_folder

    script_path = Path(script) if script else top / "submit.sbatch"
    ensure_writable_folder(logs, "log folder")
    atomic_write_text(script_path, text)
    write_manifest(loaded)
    if dry_run:
        if not state.quiet:
            click.echo(text, nl=False)
        click.echo(f"wrote {script_path} ({len(indices)} task(s)); not submitted (--dry-run)",
                   err=True)
        return
    job_id = submit_script(script_path)
    record_submission(top, job_id, indices, script_path)
    if state.quiet:
        click.echo(job_id)
    else:
        click.echo(f"submitted job {job_id}: {len(indices)} task(s) of {len(loaded.tasks)}, "
                   f"script {script_path}, logs {logs}")
        click.echo(f"follow it: sensitivity status {top}; when done: sensitivity collect {top} "
                   f"-o {top / 'summary'}")


@main.command(short_help="Where each task of a run or sweep stands.")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@common_options
def status(directory: str, as_json: bool) -> None:
    """Show each task under DIRECTORY (a run's or sweep's output folder): done, failed (with the
    reason), incomplete, stale, missing or running, and the Slurm state of its array element
    when `submit` sent it. Exit code 0 when every task is done, 1 otherwise."""
    from sensitivity.systems.batch import status_table

    state = _state()
    top = Path(directory)
    if not top.is_dir():
        raise UserError(f"{top}: no such folder; give the output folder of a run or sweep")
    tasks = find_tasks(top)
    if not tasks:
        raise UserError(f"{top}: no task found (no {MANIFEST_NAME}, no task folder); run "
                        "`sensitivity run CONFIG` or `sensitivity submit CONFIG` first")
    rows, counts = status_table(top, tasks)
    if as_json:
        emit_json({"directory": str(top), "counts": counts, "tasks": rows})
    elif not state.quiet:
        width = max(len(r["directory"]) for r in rows)
        show_slurm = any(r["slurm"] for r in rows)
        for r in rows:
            slurm_text = f"  {r['slurm'] or '-':<11}" if show_slurm else ""
            click.echo(f"{r['task']:>5}  {r['directory']:<{width}}  {r['state']:<10}{slurm_text}  "
                       f"{r['reason']}".rstrip())
        click.echo(", ".join(f"{v} {k}" for k, v in counts.items() if v) + f" of {len(rows)}",
                   err=True)
    if counts["done"] != len(rows):
        sys.exit(EXIT_NUMERICAL)


for _command in (_results.inspect, _results.plot, _results.export, _results.collect):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
