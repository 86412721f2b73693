"""The command line attacked the way a careless user, a full disk and a scheduler do.

Every case asserts the exit code, that the message is one line per mistake naming what was
wrong, that no traceback is printed, and that nothing already there is lost. Property-based
cases (hypothesis) build config values and HDF5 files on the fly; explicit cases cover each
class of issue 11: shell injection through submit, coincident particles, resume, signals,
other people's files, storage faults, metadata that allocates, HDF5 odds, collect.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sensitivity.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
CONTROL = [chr(c) for c in range(32)] + ["\x7f"]
FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _compilation_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SENSITIVITY_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "jax-cache"))
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)


def invoke(args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def assert_clean_failure(result, code: int, *needles: str, lines: int | None = 1):
    """Exit ``code``, ``error:`` lines only (``lines`` of them), no traceback, the needles."""
    output = result.output
    assert result.exit_code == code, output
    assert "Traceback" not in output and "unexpected" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    if lines is not None:
        assert len(errors) == lines, output
    for needle in needles:
        assert needle in output, (needle, output)


@pytest.fixture(scope="module")
def packing(tmp_path_factory) -> Path:
    from sensitivity.systems import random_packing, write_packing

    folder = tmp_path_factory.mktemp("hostile")
    path = folder / "p.h5"
    write_packing(path, random_packing(16, phi=0.9, seed=0))
    return path


def config_for(folder: Path, packing: Path, extra: str = "", name: str = "c.yaml") -> Path:
    path = folder / name
    path.write_text(f"system: {{path: {packing}}}\nminimizer: {{ftol: 1.0e-10}}\n"
                    f"output: {{directory: out, plots: false}}\n{extra}")
    return path


# --- 1. no value reaches a shell ------------------------------------------------------------

STRING_KEYS = ["system.group", "output.directory", "slurm.partition", "slurm.job_name",
               "parameters.0.name", "slurm.time", "slurm.mem"]


@FAST
@given(key=st.sampled_from(STRING_KEYS),
       prefix=st.text(string.ascii_letters + string.digits + " ;$`'\"|&", max_size=12),
       control=st.sampled_from(CONTROL),
       suffix=st.text(string.printable, max_size=12))
def test_control_characters_are_refused_in_every_string(tmp_path, packing, key, prefix,
                                                        control, suffix):
    config = config_for(tmp_path, packing)
    value = prefix + control + suffix
    result = invoke(["validate", config, "--set", f"{key}={json.dumps(value)}"])
    # Either --set refuses the raw text, or the config names the key: exit 2, one line.
    assert_clean_failure(result, 2, "control character")
    named = key.replace(".0.", "[0].")
    assert named in result.output or "--set" in result.output


@pytest.mark.parametrize("args", [
    ["--partition", "debug\ntouch x"],
    ["--set", 'slurm.extra=["--qos=low\\ntouch x"]'],
    ["--set", 'slurm.partition="debug\\rtouch x"'],
    ["--output", "out\nrm -rf ~"],
])
def test_submit_refuses_line_breaks_before_writing_a_script(tmp_path, packing, args):
    config = config_for(tmp_path, packing)
    result = invoke(["submit", config, "--dry-run", *args])
    assert_clean_failure(result, 2, "control character")
    assert not list(tmp_path.rglob("*.sbatch"))


@pytest.mark.parametrize("key,value,expected", [
    ("slurm.partition", "debug --wrap=id", "Slurm partition name"),
    ("slurm.partition", "a;b", "Slurm partition name"),
    ("slurm.extra", '["--qos=low x"]', "sbatch options"),
    ("slurm.extra", '["touch x"]', "sbatch options"),
    ("slurm.extra", "[\"--comment='x'\"]", "sbatch options"),
    ("slurm.job_name", '"a b"', "a name of letters"),
])
def test_scheduler_values_follow_slurm_grammar(tmp_path, packing, key, value, expected):
    config = config_for(tmp_path, packing)
    result = invoke(["submit", config, "--dry-run", "--set", f"{key}={value}"])
    assert_clean_failure(result, 2, key, expected)


HOSTILE_NAMES = ["out $(touch PWNED)", "out `touch PWNED`", "out'; touch PWNED; '",
                 'out"; touch PWNED; "', "out # comment", "out\\ntouch PWNED", "out & touch PWNED"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_paths_reach_the_job_as_plain_arguments(tmp_path, packing, name):
    """The script, run by bash, hands every hostile path to the program unchanged; the
    #SBATCH --output value reads back (as sbatch splits it) as the same path."""
    from sensitivity.systems.slurm import render_script

    folder = tmp_path / name
    folder.mkdir()
    config = folder / "c.yaml"
    config.write_text(f"system: {{path: {packing}}}\n")
    echo = tmp_path / "echo-args"
    echo.write_text("#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    echo.chmod(0o755)
    text = render_script(config_path=config, indices=[0], slurm={}, log_directory=folder / "logs",
                         workdir=folder, run_arguments=["--output", str(folder / "out")],
                         python=str(echo))
    script = tmp_path / "job.sh"
    script.write_text(text)
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "SLURM_ARRAY_TASK_ID": "0",
                               "SLURM_ARRAY_JOB_ID": "1"}, timeout=30)
    assert done.returncode == 0, done.stderr
    argv = json.loads(done.stdout.strip().splitlines()[-1])
    assert argv[:3] == ["-m", "sensitivity.cli", "run"]
    assert argv[3] == str(config.resolve()) and str(folder / "out") in argv
    assert not list(tmp_path.rglob("PWNED")) and not Path("PWNED").exists()
    output_line = next(l for l in text.splitlines() if l.startswith("#SBATCH --output="))
    assert _sbatch_split(output_line[len("#SBATCH "):]) == [
        f"--output={folder / 'logs' / 'slurm-%A_%a.out'}"]


def _sbatch_split(line: str) -> list[str]:
    """Split an #SBATCH line the way sbatch does: whitespace, double/single quotes, backslash
    escapes, and '#' starting a comment."""
    words, word, quote, escape, started = [], [], None, False, False
    for char in line:
        if escape:
            word.append(char)
            escape, started = False, True
        elif char == "\\":
            escape = True
        elif quote:
            if char == quote:
                quote = None
            else:
                word.append(char)
        elif char in "\"'":
            quote, started = char, True
        elif char == "#":
            break
        elif char.isspace():
            if started:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(char)
            started = True
    if started:
        words.append("".join(word))
    return words


# --- 2. coincident particles ------------------------------------------------------------------


@pytest.mark.parametrize("how", ["pair", "all", "integers"])
def test_coincident_particles_are_an_input_error_naming_them(tmp_path, how):
    from sensitivity.systems import random_packing, write_packing

    system = random_packing(16, phi=0.9, seed=1)
    positions = np.array(system.positions)
    if how == "pair":
        positions[9] = positions[4] + 1e-9
    elif how == "all":
        positions[:] = 1.5
    else:
        positions = np.floor(positions)
    path = tmp_path / "p.h5"
    write_packing(path, system.replace(positions=positions))
    result = invoke(["run", config_for(tmp_path, path)])
    assert_clean_failure(result, 2, "apart", "coincident", str(path))
    if how == "pair":
        assert "particles 4 and 9 are 1.41e-09 apart" in result.output
    assert "packing fraction" not in result.output
    assert not (tmp_path / "out" / "sensitivity.h5").exists()


def test_coincident_pairs_against_brute_force():
    from sensitivity.systems import random_packing
    from sensitivity.systems._system import coincident_pairs

    system = random_packing(40, phi=0.9, seed=2)
    positions = np.array(system.positions)
    box = system.box
    positions[7] = positions[3] + 1e-8 * np.array([1.0, 0.0])
    positions[12] = np.mod(positions[5] - box * [1.0, 0.0] + 1e-10, box)  # across the boundary
    system = system.replace(positions=positions)
    pairs, count = coincident_pairs(system)
    delta = positions[:, None] - positions[None]
    delta -= box * np.round(delta / box)
    distance = np.linalg.norm(delta, axis=-1)
    mean = 0.5 * (system.diameters[:, None] + system.diameters[None])
    brute = {(i, j) for i, j in zip(*np.nonzero(distance < 1e-6 * mean)) if i < j}
    assert {(i, j) for i, j, _ in pairs} == brute == {(3, 7), (5, 12)} and count == 2


# --- 3. resume trusts only complete, converged, current results -------------------------------


@pytest.mark.slow
def test_resume_recomputes_what_is_not_done(tmp_path, packing):
    from sensitivity.systems import random_packing, write_packing

    local = tmp_path / "p.h5"
    shutil.copy(packing, local)
    config = config_for(tmp_path, local)
    out = tmp_path / "out"
    assert invoke(["run", config]).exit_code == 0
    assert "skipped, complete" in invoke(["run", config]).output
    marker = json.loads((out / "complete.json").read_text())
    assert marker["converged"] and set(marker["artifacts"]) == {"sensitivity.h5", "config.yaml"}

    (out / "config.yaml").unlink()  # an artifact lost (killed, cleaned up by hand)
    again = invoke(["run", config])
    assert again.exit_code == 0 and "incomplete (config.yaml is missing)" in again.output
    assert (out / "config.yaml").is_file()

    write_packing(local, random_packing(16, phi=0.9, seed=5))  # regenerated at the same path
    again = invoke(["run", config])
    assert again.exit_code == 0 and "stale (input" in again.output and "changed" in again.output

    # A task that did not converge exits 1, and 1 again when rerun (not "skipped" with 0) ...
    failing = ["--set", "minimizer.max_steps=3"]
    assert invoke(["run", config, *failing]).exit_code == 1
    rerun = invoke(["run", config, *failing])
    assert rerun.exit_code == 1 and "failed" in rerun.output and "skipped" not in rerun.output
    status = invoke(["status", out, "--json"])
    data = json.loads(status.stdout)
    assert status.exit_code == 1 and data["tasks"][0]["state"] == "failed"
    assert "max_steps" in data["tasks"][0]["reason"]
    # ... unless the user keeps failures.
    kept = invoke(["run", config, *failing, "--keep-failed"])
    assert kept.exit_code == 0 and "kept by --keep-failed" in kept.output


@pytest.mark.slow
def test_two_runs_into_one_folder(tmp_path, packing):
    from sensitivity.systems.tasks import lock_task

    config = config_for(tmp_path, packing)
    out = tmp_path / "out"
    out.mkdir()
    with lock_task(out):
        result = invoke(["run", config])
        assert_clean_failure(result, 2, "being written by another sensitivity run",
                             f"pid {os.getpid()}")
        status = json.loads(invoke(["status", out, "--json"]).stdout)
        assert status["tasks"][0]["state"] == "running"
    assert invoke(["run", config]).exit_code == 0


@pytest.mark.slow
def test_only_our_own_temporaries_are_removed(tmp_path, packing):
    config = config_for(tmp_path, packing)
    out = tmp_path / "out"
    out.mkdir()
    theirs = [out / ".thesis_draft.tmp", out / ".notes.yaml.tmp", out / "data.tmp"]
    for path in theirs:
        path.write_text("precious")
    ours = out / ".sensitivity.h5.deadhost.999999.0000.tmp"  # a killed writer's leftover
    ours.write_bytes(b"half a file")
    assert invoke(["run", config]).exit_code == 0
    assert all(p.read_text() == "precious" for p in theirs)
    assert not ours.exists()
    assert not [p for p in out.glob(".*.tmp") if p not in theirs]


# --- 4. signals at any instant ------------------------------------------------------------------


def _status(out: Path) -> str:
    from sensitivity.systems.tasks import task_status

    return task_status(out).state


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # see below
def test_sigterm_at_random_instants_never_leaves_a_false_complete(tmp_path, packing):
    """SIGTERM delivered to the main thread at 12 random instants of an in-process run.

    A signal that lands in a finalizer is printed as 'Exception ignored' (Python drops the
    exception there): the run still stops, which the destructor test below checks."""
    config = config_for(tmp_path, packing, "output: {directory: out, plots: true}\n")
    config.write_text(config.read_text().replace("output: {directory: out, plots: false}\n", ""))
    out = tmp_path / "out"
    assert invoke(["run", config]).exit_code == 0  # warm: compiled once
    started = time.perf_counter()
    assert invoke(["run", config, "--overwrite"]).exit_code == 0
    duration = time.perf_counter() - started  # a warm run: the signals land inside one
    # Outside a run the handler the command line restores is this no-op, not the default
    # action, which would kill the test process (a pytest-xdist worker) when a late timer fires.
    late = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: late.append(signum))
    try:
        codes = _sigterm_at_random_instants(config, out, duration)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert 143 in codes
    # whatever happened, a plain rerun finishes the task
    assert invoke(["run", config]).exit_code == 0 and _status(out) == "done"


def _sigterm_at_random_instants(config, out, duration):
    rng = random.Random(11)
    codes = []
    for attempt in range(12):
        delay = rng.uniform(0, duration)
        main_thread = threading.main_thread().ident
        timer = threading.Timer(delay, signal.pthread_kill, (main_thread, signal.SIGTERM))
        timer.start()
        result = invoke(["run", config, "--overwrite"])
        timer.join()
        time.sleep(0.05)  # a signal delivered after the run returned is handled here, harmlessly
        codes.append(result.exit_code)
        assert result.exit_code in (0, 143), result.output
        assert "Traceback" not in result.output
        state = _status(out)
        if result.exit_code == 143:
            assert "stopped by SIGTERM" in result.output
            assert "wrote no result" not in result.output
            assert state != "done" or (out / "complete.json").exists()
        else:
            assert state == "done"
        assert not [p for p in out.rglob(".*.tmp")], list(out.rglob(".*.tmp"))
    return codes


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_signal_swallowed_by_a_destructor_still_stops_the_run(tmp_path, packing, monkeypatch):
    """Python prints 'Exception ignored' for an exception raised inside a weakref callback;
    the run must still exit 143 and the task must not count as complete."""
    import gc

    import sensitivity.systems.pipeline  # noqa: F401  (patched below as systems.pipeline)
    from sensitivity import systems

    config = config_for(tmp_path, packing)
    original = systems.pipeline.run_task

    def run_task(*args, **kwargs):
        summary = original(*args, **kwargs)

        class Trap:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)  # the handler raises inside __del__

        Trap()
        gc.collect()
        return summary

    monkeypatch.setattr(systems.pipeline, "run_task", run_task)
    result = invoke(["run", config])
    assert result.exit_code == 143, result.output
    assert _status(tmp_path / "out") != "done"


def test_a_signal_masked_by_an_extension_error_still_stops_the_run(tmp_path, packing, monkeypatch):
    """A C extension that sees the handler's exception as a failed call raises its own error
    instead (matplotlib's Agg renderer: "ValueError: Invalid bounding box", seen once in 12
    random SIGTERMs); the run must still exit 143, not 1, and leave no complete task."""
    import sensitivity.systems.pipeline  # noqa: F401  (patched below as systems.pipeline)
    from sensitivity import systems

    config = config_for(tmp_path, packing)
    original = systems.pipeline.run_task

    def run_task(*args, **kwargs):
        summary = original(*args, **kwargs)
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here
            time.sleep(1)
        except BaseException as signal_exception:
            raise ValueError("Invalid bounding box") from signal_exception
        return summary

    monkeypatch.setattr(systems.pipeline, "run_task", run_task)
    result = invoke(["run", config])
    assert result.exit_code == 143, result.output
    assert "stopped by SIGTERM" in result.output and "unexpected" not in result.output
    assert _status(tmp_path / "out") != "done"


def test_a_signal_during_check_stops_it_with_one_line(tmp_path, packing, monkeypatch):
    """check audits under the same stop-signal rule as run: 143, one line, no traceback."""
    import sensitivity.systems.pipeline  # noqa: F401  (patched below as systems.pipeline)
    from sensitivity import systems

    def audit_task(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises here
        time.sleep(1)

    monkeypatch.setattr(systems.pipeline, "audit_task", audit_task)
    result = invoke(["check", config_for(tmp_path, packing)])
    assert result.exit_code == 143, result.output
    assert "stopped by SIGTERM" in result.output and "Traceback" not in result.output


# --- 6. storage faults ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "validate", "submit"])
def test_config_that_never_ends_or_expands_without_bound_is_one_line(tmp_path, packing, command):
    """A pipe (would wait for a writer), ``/dev/zero`` (would never end) and YAML aliases
    that expand to 10^8 values or contain themselves: refused before any check walks them."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    bomb = config_for(tmp_path, packing, 'l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x"]\n' + "".join(
        f"l{k}: &l{k} [{', '.join([f'*l{k - 1}'] * 10)}]\n" for k in range(1, 9)), "bomb.yaml")
    cycle = config_for(tmp_path, packing, "parameters: &p [{name: d, kind: diameter}, *p]\n",
                       "cycle.yaml")
    for path, needle in ((fifo, "not a regular file"), (Path("/dev/zero"), "not a regular file"),
                         (bomb, "once its YAML aliases are expanded"),
                         (cycle, "contains itself")):
        assert_clean_failure(invoke([command, path]), 2, f"{path}: ", needle)


@pytest.mark.parametrize("option", ["--dpi", "--scale", "--slice-z"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_float_options_refuse_nan_and_infinity(tmp_path, packing, option, value):
    """click's FloatRange lets NaN through its bounds (every comparison is false):
    `--dpi nan` was an unexpected ValueError, `--scale nan` a figure of NaN arrows."""
    result = invoke(["plot", packing, option, value, "-o", tmp_path / "plots"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert ("is not a finite number" in result.output  # (±inf beyond a bound: out of range)
            or value != "nan" and "is not in the range" in result.output), result.output
    assert not (tmp_path / "plots").exists()
    for command in (["generate", "--n", "8", "-o", tmp_path / "p.h5", "--phi", value],
                    ["generate", "--n", "8", "-o", tmp_path / "p.h5", "--size-ratio", value],
                    ["check", packing, "--tolerance", value]):
        result = invoke(command)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert ("is not a finite number" in result.output
                or value != "nan" and "is not in the range" in result.output), result.output


@pytest.mark.parametrize("args, needle", [  # (NaN and inf options: the test above)
    (["--size-ratio", "1e308"], "box edge"), (["--n", "100000000000"], "GiB"),
])
def test_generate_refuses_what_would_be_garbage_or_exhaust_memory(tmp_path, args, needle):
    result = invoke(["generate", "--n", "8", *args, "-o", tmp_path / "p.h5"])
    assert_clean_failure(result, 2, "generate: ", needle)
    assert not (tmp_path / "p.h5").exists()


def test_paths_longer_than_the_file_system_allows_are_one_line(tmp_path, packing):
    """ENAMETOOLONG met while looking at a path (before any writing): exit 74, the path
    shortened, the cause named, no traceback."""
    config = config_for(tmp_path, packing)
    for args in (["run", config, "-o", tmp_path / ("a" * 300)],
                 ["run", config, "-o", "/".join(["b" * 200] * 25)],
                 ["generate", "--n", "8", "-o", tmp_path / ("c" * 300 + ".h5")],
                 ["status", tmp_path / ("d" * 300)]):
        result = invoke(args)
        assert_clean_failure(result, 74, "characters): cannot use the path (the name is too long)")
        assert len(result.output) < 300


def test_output_directory_that_is_a_file(tmp_path, packing):
    (tmp_path / "out").write_text("a file")
    result = invoke(["run", config_for(tmp_path, packing)])
    assert_clean_failure(result, 74, "is an existing file")
    assert (tmp_path / "out").read_text() == "a file"


@pytest.fixture
def immutable(tmp_path):
    """Make a path read-only for whoever runs the tests (root included: chattr +i)."""
    made = []

    def make(path: Path):
        if os.geteuid() == 0:
            if shutil.which("chattr") is None or subprocess.run(
                    ["chattr", "+i", str(path)], capture_output=True).returncode != 0:
                pytest.skip("chattr +i is not available here")
        else:
            path.chmod(0o555 if path.is_dir() else 0o444)
        made.append(path)

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_observable_of_a_missing_particle_is_one_line_exit_2(tmp_path, packing):
    extra = ("parameters: [{name: d, kind: diameters}]\n"
             "sensitivity: {observables: [pressure, {position: {particle: 16}}]}\n")
    result = invoke(["run", config_for(tmp_path, packing, extra)])
    assert_clean_failure(result, 2, "sensitivity.observables[1].position.particle = 16: out "
                                    "of range; the packing has 16 particles (0 .. 15)")
    assert "relax step" not in result.output  # refused before relaxing


def test_read_only_target_fails_before_any_computation(tmp_path, packing, immutable):
    out = tmp_path / "out"
    out.mkdir()
    immutable(out)
    started = time.perf_counter()
    result = invoke(["run", config_for(tmp_path, packing)])
    assert_clean_failure(result, 74, str(out))
    assert "relax step" not in result.output  # refused before relaxing
    assert time.perf_counter() - started < 30


def test_immutable_earlier_result_is_refused_up_front_and_kept(tmp_path, packing, immutable):
    config = config_for(tmp_path, packing)
    assert invoke(["run", config]).exit_code == 0
    result_path = tmp_path / "out" / "sensitivity.h5"
    before = result_path.read_bytes()
    immutable(result_path)
    result = invoke(["run", config, "--overwrite"])
    assert_clean_failure(result, 74, "sensitivity.h5", "cannot replace it")
    assert result_path.read_bytes() == before
    assert not list((tmp_path / "out").glob(".*.tmp"))


def test_disk_full_while_writing_is_one_line_and_keeps_the_prior_file(tmp_path):
    """The file-size limit makes every write past 20 kB fail (EFBIG), as a full disk does
    (ENOSPC): the writer must report it in one line, not crash (HDF5 once segfaulted here)."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "from sensitivity.systems import random_packing, write_packing\n"
        "from sensitivity.systems._errors import StorageError\n"
        "write_packing(sys.argv[1], random_packing(32))\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "try:\n"
        "    write_packing(sys.argv[1], random_packing(4000))\n"
        "except StorageError as error:\n"
        "    print('StorageError:', error)\n"
    )
    target = tmp_path / "p.h5"
    done = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"StorageError: {target}: cannot write (the file is larger "
                                   "than allowed (file size limit))")
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    from sensitivity.systems import read_packing

    assert read_packing(target)[0].n == 32  # the prior file, intact
    assert [p.name for p in tmp_path.iterdir()] == ["p.h5"]


# --- 7. metadata that allocates; 8. HDF5 odds --------------------------------------------------


def _raw(path: Path, n: int = 4, **changes) -> Path:
    """A small valid H5MD packing, with ``changes`` applied through callables on the file."""
    from sensitivity.systems import random_packing, write_packing

    write_packing(path, random_packing(n, phi=0.5, seed=3))
    with h5py.File(path, "a") as handle:
        for change in changes.values():
            change(handle)
    return path


def _set_attr(name, value):
    return lambda h: h["particles/all/box"].attrs.__setitem__(name, value)


def _replace(path, make):
    def change(handle):
        del handle[path]
        make(handle, path)
    return change


HDF5_ODDS = {
    "boundary is an int": _set_attr("boundary", 5),
    "dimension is a string": _set_attr("dimension", "three"),
    "edges are strings": _replace("particles/all/box/edges",
                                  lambda h, p: h.create_dataset(p, data=np.array([b"a", b"b"]))),
    "external link": _replace("particles/all/diameter",
                              lambda h, p: h.__setitem__(p, h5py.ExternalLink("other.h5", "/d"))),
    "dangling soft link": _replace("particles/all/species",
                                   lambda h, p: h.__setitem__(p, h5py.SoftLink("/nowhere"))),
    "soft link loop": lambda h: (h.__setitem__("a", h5py.SoftLink("/b")),
                                 h.__setitem__("b", h5py.SoftLink("/a"))),
    "unallocated giant positions": _replace(
        "particles/all/position",
        lambda h, p: h.create_dataset(p, shape=(500_000_000, 2), dtype="f8")),
    "external raw storage": _replace(
        "particles/all/diameter",
        lambda h, p: h.create_dataset(p, shape=(4,), dtype="f8",
                                      external=[("elsewhere.bin", 0, 32)])),
    "positions are a group": _replace("particles/all/position",
                                      lambda h, p: h.create_group(p)),
}


@pytest.mark.parametrize("case", sorted(HDF5_ODDS))
def test_hdf5_odds_are_one_line_in_every_reader(tmp_path, case):
    path = _raw(tmp_path / "odd.h5", change=HDF5_ODDS[case])
    for args in (["inspect", path], ["plot", path],
                 ["run", config_for(tmp_path, path)]):
        result = invoke(args)
        assert_clean_failure(result, 2, str(path))


def test_species_labels_are_mapped_not_allocated(tmp_path, packing):
    """One species labelled 100000 used to build a 100001 x 100001 matrix (74.5 GiB)."""
    from sensitivity.systems import read_packing, read_result

    path = tmp_path / "labels.h5"
    shutil.copy(packing, path)
    with h5py.File(path, "a") as handle:
        species = handle["particles/all/species"][()]
        del handle["particles/all/species"]
        handle["particles/all/species"] = np.where(species == 0, 100000, 7)
    system, _ = read_packing(path)
    assert system.n_species == 2 and system.species_labels == (7, 100000)
    config = config_for(tmp_path, path, "parameters: [{name: big, kind: diameter, species: 100000}]\n")
    result = invoke(["run", config])
    assert result.exit_code == 0, result.output
    saved = read_result(tmp_path / "out" / "sensitivity.h5")
    assert saved.responses["big"]["report"].species == 100000
    np.testing.assert_array_equal(saved.system.labelled_species, np.where(species == 0, 100000, 7))
    # every reader names the species as the input file does, never the internal codes 0, 1
    out = tmp_path / "out" / "sensitivity.h5"
    with h5py.File(out) as handle:
        definition = handle["sensitivity/big/dx_dtheta"].attrs["theta_definition"]
    assert definition == "mean diameter of species 100000 (all of them move together)"
    shown = invoke(["inspect", out]).output
    counts = {label: int((np.where(species == 0, 100000, 7) == label).sum()) for label in (7, 100000)}
    assert f"({counts[7]} of species 7, {counts[100000]} of species 100000)" in shown
    assert "(species 0)" not in shown and "(species 1)" not in shown
    assert "(species 100000)" in shown.split("largest:")[1]  # θ moves its own species most
    from sensitivity.systems.plots import response_figure

    figure = response_figure(saved, "big")
    legend = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
    assert [text.split(" (")[0] for text in legend[:2]] == ["species 7", "species 100000"]
    assert invoke(["export", out, "-o", tmp_path / "p.xyz"]).exit_code == 0
    import ase.io

    atoms = ase.io.read(tmp_path / "p.xyz")
    np.testing.assert_array_equal(atoms.arrays["species_id"], np.where(species == 0, 100000, 7))


@FAST
@given(offset=st.integers(min_value=0, max_value=4000), length=st.integers(1, 512),
       seed=st.integers(0, 2**16))
def test_random_bytes_inside_a_result_file(tmp_path_factory, offset, length, seed):
    from sensitivity.systems._errors import InputError
    from sensitivity.systems.io import read_result

    folder = tmp_path_factory.mktemp("corrupt")
    path = folder / "r.h5"
    _fake_result(path)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    offset = offset % len(data)
    data[offset:offset + length] = rng.integers(0, 256, min(length, len(data) - offset),
                                                dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    try:
        read_result(path)  # undamaged parts may still read: that is fine
    except InputError as error:
        assert str(path) in str(error) and "\n" not in str(error)


def _fake_result(path: Path, n: int = 8):
    from sensitivity.systems import random_packing, write_result

    system = random_packing(n, phi=0.9, seed=0)
    write_result(path, system=system,
                 relaxation={"steps": 1, "converged": True, "stop_reason": "ftol"},
                 responses={"d": {"dx_dtheta": np.ones((n, 2)), "report": {"converged": True}}},
                 rattlers=np.zeros(n, bool), zero_modes={}, parameters={}, timings={})
    return path


def test_collect_writes_its_summary_despite_a_corrupt_file(tmp_path):
    good = _fake_result(tmp_path / "runs" / "a" / "sensitivity.h5")
    bad = tmp_path / "runs" / "b" / "sensitivity.h5"
    bad.parent.mkdir()
    bad.write_bytes(good.read_bytes()[:2000])  # truncated
    linked = tmp_path / "runs" / "c" / "sensitivity.h5"
    linked.parent.mkdir()
    shutil.copy(good, linked)
    with h5py.File(linked, "a") as handle:
        handle["sensitivity/evil"] = h5py.ExternalLink("/etc/passwd", "/")
    result = invoke(["collect", tmp_path / "runs", "-o", tmp_path / "summary"])
    assert_clean_failure(result, 1, "2 unreadable")
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(rows) == 4
    assert [r.split(",")[2] for r in rows[1:]] == ["ok", "unreadable", "unreadable"]
    with h5py.File(tmp_path / "summary.h5") as summary:
        assert list(summary["tasks"]) == ["a"]


# --- config values that overflow ----------------------------------------------------------------


@FAST
@given(key=st.sampled_from(["minimizer.max_steps", "minimizer.report_every", "minimizer.n_min",
                            "sensitivity.maxiter", "sensitivity.dense_max_dof", "seed",
                            "slurm.cpus_per_task", "slurm.gpus", "sensitivity.lanczos_steps",
                            "potential.capacity_multiplier"]),
       value=st.one_of(st.floats(min_value=2**32, max_value=1e300), st.just("1e23"),
                       st.floats(allow_nan=True).filter(lambda x: x != x), st.just(".inf"),
                       st.integers(max_value=-1),
                       # (null in any case is YAML's null: the key's default, valid)
                       st.text(string.ascii_letters, min_size=1).filter(
                           lambda text: text.lower() != "null")))
def test_numbers_out_of_range_fail_at_validation(tmp_path, packing, key, value):
    config = config_for(tmp_path, packing)
    text = value if isinstance(value, str) else repr(value)
    result = invoke(["validate", config, "--set", f"{key}={text}"])
    assert_clean_failure(result, 2, key)
