"""Slurm job arrays: the script ``sensitivity submit`` writes, and a real submission.

The end-to-end test submits a sweep of 4 tasks to a running Slurm cluster, waits for the array
to finish and collects the results. It is skipped where ``sbatch`` is missing or the cluster does
not answer; ``.ci/slurm-setup.sh`` starts a one-node cluster on localhost (Debian, as root).
Setting ``SENSITIVITY_REQUIRE_SLURM=1`` (as CI does) turns that skip into a failure.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from sensitivity.cli.main import main
from sensitivity.systems.slurm import SlurmError, array_spec, render_script, submit_script

ROOT = Path(__file__).resolve().parents[2]


def test_array_spec_compresses_ranges():
    assert array_spec([0, 1, 2, 3]) == "0-3"
    assert array_spec([5, 0, 1, 2, 7, 8]) == "0-2,5,7-8"
    assert array_spec([4]) == "4"
    assert array_spec(range(10), max_parallel=2) == "0-9%2"
    with pytest.raises(ValueError):
        array_spec([])


def test_render_script_has_resources_and_the_run_command(tmp_path: Path):
    slurm = {
        "partition": "gpu", "time": "00:30:00", "cpus_per_task": 4, "mem": "8G", "gpus": 1,
        "job_name": "sweep1", "max_parallel": 3, "extra": ["--account=abc", "#SBATCH --qos=low"],
    }
    text = render_script(
        config_path=tmp_path / "c.yaml", indices=[0, 1, 2, 5], slurm=slurm,
        log_directory=tmp_path / "logs", workdir=tmp_path,
        run_arguments=["--set", "minimizer.ftol=1e-13", "--output", str(tmp_path / "out dir")],
        python="/opt/py/bin/python", environment={"SENSITIVITY_CACHE_DIR": "/c"}, task_count=8,
    )
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for expected in [
        "#SBATCH --job-name=sweep1", "#SBATCH --array=0-2,5%3", "#SBATCH --time=00:30:00",
        "#SBATCH --cpus-per-task=4", "#SBATCH --mem=8G", "#SBATCH --partition=gpu",
        "#SBATCH --gres=gpu:1", f"#SBATCH --output={tmp_path / 'logs'}/slurm-%A_%a.out",
        "#SBATCH --account=abc", "#SBATCH --qos=low", "export SENSITIVITY_CACHE_DIR=/c",
    ]:
        assert expected in lines, expected
    # #SBATCH lines must all come before the first command.
    first_command = next(i for i, l in enumerate(lines) if l and not l.startswith("#"))
    assert all(not l.startswith("#SBATCH") for l in lines[first_command:])
    run_line = lines[-1]
    assert run_line.startswith(f"exec /opt/py/bin/python -m sensitivity.cli run {tmp_path / 'c.yaml'}")
    assert "--set minimizer.ftol=1e-13" in run_line
    assert f"'{tmp_path / 'out dir'}'" in run_line  # quoted for the shell
    assert run_line.endswith('--task-index "$SLURM_ARRAY_TASK_ID"')
    assert "XLA_PYTHON_CLIENT_PREALLOCATE" in text
    bash = shutil.which("bash")
    if bash:
        assert subprocess.run([bash, "-n"], input=text, text=True).returncode == 0


@pytest.fixture
def sweep_config(tmp_path: Path) -> Path:
    (tmp_path / "p.h5").write_bytes(b"")
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "system: {path: p.h5}\noutput: {directory: out}\n"
        "sweep: {seed: [0, 1, 2]}\nslurm: {time: '00:05:00', mem: 1G, partition: debug}\n"
    )
    return path


def test_submit_dry_run_writes_the_script(sweep_config: Path, tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(
        main, ["submit", str(sweep_config), "--dry-run", "--time", "00:02:00", "--max-parallel", "2",
               "--set", "minimizer.max_steps=50"],
    )
    assert result.exit_code == 0, result.output
    script = tmp_path / "out" / "submit.sbatch"
    text = script.read_text()
    assert "#SBATCH --array=0-2%2" in text
    assert "#SBATCH --time=00:02:00" in text
    assert "#SBATCH --mem=1G" in text
    assert "#SBATCH --partition=debug" in text
    assert "--set minimizer.max_steps=50" in text
    assert text in result.output
    assert (tmp_path / "out" / "sweep.json").is_file()
    assert (tmp_path / "out" / "logs").is_dir()


def _finish(task, converged=True):
    """Lay out a task folder as a finished `run` leaves it (result, config, marker)."""
    from sensitivity.systems.tasks import mark_complete

    task.directory.mkdir(parents=True, exist_ok=True)
    (task.directory / "sensitivity.h5").write_bytes(b"result")
    (task.directory / "config.yaml").write_text("config")
    mark_complete(task.directory, task.config, converged=converged, message="max_steps reached",
                  artifacts=[task.directory / "sensitivity.h5", task.directory / "config.yaml"])


def test_submit_leaves_out_finished_tasks(sweep_config: Path, tmp_path: Path):
    from sensitivity.systems.config import load_config

    tasks = load_config(sweep_config).tasks
    _finish(tasks[1])
    _finish(tasks[2], converged=False)
    runner = CliRunner()
    script = tmp_path / "out" / "submit.sbatch"
    result = runner.invoke(main, ["submit", str(sweep_config), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "#SBATCH --array=0,2\n" in script.read_text()  # the failed task is recomputed
    assert "--overwrite" not in script.read_text()
    result = runner.invoke(main, ["submit", str(sweep_config), "--dry-run", "--keep-failed"])
    assert "#SBATCH --array=0\n" in script.read_text() and "--keep-failed" in script.read_text()
    result = runner.invoke(main, ["submit", str(sweep_config), "--dry-run", "--failed"])
    assert "#SBATCH --array=2\n" in script.read_text()  # ran and failed; task 0 never ran
    # --all recomputes: the array runs every task with --overwrite, so none prints "skipped".
    result = runner.invoke(main, ["submit", str(sweep_config), "--dry-run", "--all"])
    assert "#SBATCH --array=0-2\n" in script.read_text()
    assert script.read_text().splitlines()[-1].count("--overwrite") == 1
    _finish(tasks[0])
    _finish(tasks[2])
    result = runner.invoke(main, ["submit", str(sweep_config), "--dry-run"])
    assert result.exit_code == 0
    assert "nothing to submit" in result.output
    # An input file regenerated at the same path makes every task stale: all resubmitted.
    (tmp_path / "p.h5").write_bytes(b"another packing")
    result = runner.invoke(main, ["submit", str(sweep_config), "--dry-run"])
    assert "#SBATCH --array=0-2\n" in script.read_text(), result.output


def test_submit_without_sbatch_is_a_usage_error(sweep_config: Path, monkeypatch):
    monkeypatch.setenv("PATH", str(sweep_config.parent))  # no sbatch there
    result = CliRunner().invoke(main, ["submit", str(sweep_config)])
    assert result.exit_code == 2
    assert "sbatch not found on PATH" in result.output
    assert "--dry-run" in result.output
    assert "Traceback" not in result.output


def test_sbatch_refusal_is_reported_in_one_line(tmp_path: Path, monkeypatch):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: x' >&2\nexit 1\n")
    (fake / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ.get('PATH', '')}")
    script = tmp_path / "s.sbatch"
    script.write_text("#!/bin/bash\n")
    with pytest.raises(SlurmError, match="sbatch refused .*invalid partition specified: x"):
        submit_script(script)
    (fake / "sbatch").write_text("#!/bin/sh\necho '42;cluster'\n")
    assert submit_script(script) == "42"


# --- end to end on a real cluster -------------------------------------------------------------


def _cluster_problem() -> str | None:
    """None when a Slurm cluster answers with an idle node, else why not."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "sbatch/sinfo not found (start a one-node cluster with .ci/slurm-setup.sh, as root)"
    try:
        states = subprocess.run(
            ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer in 20 s (is slurmctld running?)"
    usable = {s.strip().rstrip("*~#$@+") for s in states.stdout.split()} & {"idle", "mixed", "allocated"}
    if states.returncode != 0 or not usable:
        message = " ".join((states.stderr or states.stdout).split())
        return f"the Slurm cluster has no usable node (sinfo: {message or 'no nodes'})"
    return None


@pytest.fixture
def slurm_cluster():
    problem = _cluster_problem()
    if problem is not None:
        if os.environ.get("SENSITIVITY_REQUIRE_SLURM") == "1":
            pytest.fail(f"SENSITIVITY_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)


def _wait_for_job(job_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = subprocess.run(
            ["squeue", "--noheader", "--jobs", job_id, "--format=%i %T"],
            capture_output=True, text=True, timeout=30,
        )
        if queue.returncode == 0 and not queue.stdout.strip():
            return
        if queue.returncode != 0 and "Invalid job id" in queue.stderr:
            return  # purged from the queue: finished
        time.sleep(0.5)  # squeue is cheap; the jobs take seconds
    subprocess.run(["scancel", job_id], capture_output=True, timeout=30)
    pytest.fail(f"Slurm job {job_id} still running after {timeout:.0f} s (cancelled)")


@pytest.mark.slurm
@pytest.mark.slow
def test_submit_a_sweep_to_slurm_and_collect(slurm_cluster, tmp_path: Path, monkeypatch):
    """submit (4-task array) -> wait -> every task wrote its result -> collect."""
    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(main, ["generate", "--n", "16", "--seed", "3", "-o", "p.h5"]).exit_code == 0
    config = tmp_path / "sweep.yaml"
    config.write_text(
        "system: {path: p.h5}\n"
        "parameters: [{name: small_diameter, kind: diameter, species: 0}]\n"
        "minimizer: {ftol: 1.0e-10}\n"
        "output: {directory: out, plots: false}\n"
        "sweep:\n  potential.alpha: [2.0, 2.5]\n  sensitivity.solver: [cg, minres]\n"
        "slurm: {time: '00:10:00', mem: 1G}\n"
    )
    # The jobs run `python -m sensitivity.cli` (this checkout, installed editable), and share
    # a compilation cache.
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "SENSITIVITY_CACHE_DIR": str(tmp_path / "jax-cache"),
    }
    result = runner.invoke(main, ["-q", "submit", str(config)], env=env)
    assert result.exit_code == 0, result.output
    job_id = result.output.strip().splitlines()[-1]
    assert job_id.isdigit(), result.output
    _wait_for_job(job_id, timeout=420)

    logs = sorted((tmp_path / "out" / "logs").glob("slurm-*.out"))
    log_text = "\n".join(f"--- {p.name}\n{p.read_text()}" for p in logs)
    assert len(logs) == 4, log_text
    for index in range(4):
        assert (tmp_path / "out" / f"task-{index:04d}" / "sensitivity.h5").is_file(), log_text

    # Every task is done: resubmitting has nothing to do, and collect sees them all.
    result = runner.invoke(main, ["submit", str(config)], env=env)
    assert result.exit_code == 0 and "nothing to submit" in result.output, result.output
    result = runner.invoke(main, ["collect", "out", "-o", "summary"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "summary.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["task"]) for r in rows] == [0, 1, 2, 3]
    assert [r["sensitivity.solver"] for r in rows] == ["cg", "minres", "cg", "minres"]
    assert {r["status"] for r in rows} == {"ok"}, rows
    assert (tmp_path / "summary.h5").is_file()


@pytest.mark.slurm
@pytest.mark.slow
def test_hostile_values_on_a_real_cluster_run_nothing(slurm_cluster, tmp_path: Path, monkeypatch):
    """Paths full of shell syntax go through sbatch and the job as plain data: the task's result
    lands in the hostile folder, `status` sees the array element, and no command ran."""
    runner = CliRunner()
    hostile = tmp_path / "run $(touch PWNED1) `touch PWNED2` 'q' \"d\" # x"
    hostile.mkdir()
    monkeypatch.chdir(hostile)
    assert runner.invoke(main, ["generate", "--n", "16", "--seed", "4", "-o", "p.h5"]).exit_code == 0
    config = hostile / "c; touch PWNED3.yaml"
    config.write_text(
        "system: {path: p.h5}\n"
        "minimizer: {ftol: 1.0e-10}\n"
        "output: {directory: 'out $(touch PWNED4)', plots: false}\n"
        "slurm: {time: '00:10:00', mem: 1G}\n"
    )
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "SENSITIVITY_CACHE_DIR": str(tmp_path / "jax-cache"),
    }
    # A newline in a value never reaches the script.
    refused = runner.invoke(main, ["submit", str(config), "--partition", "debug\ntouch PWNED5"],
                            env=env)
    assert refused.exit_code == 2 and "control character" in refused.output
    result = runner.invoke(main, ["-q", "submit", str(config)], env=env)
    assert result.exit_code == 0, result.output
    job_id = result.output.strip().splitlines()[-1]
    assert job_id.isdigit(), result.output
    _wait_for_job(job_id, timeout=300)
    out = hostile / "out $(touch PWNED4)"
    logs = "\n".join(p.read_text() for p in (out / "logs").glob("slurm-*.out"))
    assert (out / "sensitivity.h5").is_file() and (out / "complete.json").is_file(), logs
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path("/").glob("PWNED*"))
    status = runner.invoke(main, ["status", str(out), "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["tasks"][0]["state"] == "done"
