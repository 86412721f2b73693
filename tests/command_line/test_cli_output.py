"""Machine-readable output (--json on run, check, validate, collect), the compile stage in the
progress log, and the plot command's paper options."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import h5py
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import _compilation_cache, fake_result, invoke, write_config  # noqa: E402,F401


@pytest.fixture(scope="module")
def packing(tmp_path_factory) -> Path:
    from sensitivity.systems import random_packing, write_packing

    path = tmp_path_factory.mktemp("packings") / "p.h5"
    write_packing(path, random_packing(16, phi=0.9, seed=0))
    return path


def one_json_object(text: str) -> dict:
    payload = json.loads(text)  # fails on anything but exactly one JSON document
    assert isinstance(payload, dict)
    return payload


@pytest.mark.slow
def test_run_json_then_skipped_json(tmp_path: Path, packing: Path):
    from sensitivity.systems import read_result

    config = write_config(
        tmp_path,
        f"system: {{path: {packing}}}\n"
        "parameters: [{name: small_diameter, kind: diameter, species: 0}]\n"
        "minimizer: {ftol: 1.0e-10}\noutput: {plots: false}\n",
    )
    result = invoke(["run", config, "--json"])
    assert result.exit_code == 0, result.output
    payload = one_json_object(result.stdout)
    assert payload["converged"] is True and payload["failed"] == 0
    (task,) = payload["tasks"]
    assert task["status"] == "done" and task["exit_code"] == 0
    saved = read_result(task["result"])
    assert task["responses"]["small_diameter"]["iterations"] == \
        saved.responses["small_diameter"]["report"].iterations
    assert task["relaxation"]["steps"] == saved.relaxation.steps
    assert task["rattlers"] == int(saved.rattlers.sum()) and task["n"] == 16
    assert "Minimization stats" not in result.stdout  # the text is replaced, not added to

    again = invoke(["run", config, "--json"])
    assert again.exit_code == 0, again.output
    skipped = one_json_object(again.stdout)
    assert skipped["tasks"][0]["status"] == "skipped"
    assert skipped["tasks"][0]["responses"] == task["responses"]


def test_check_json(tmp_path: Path, packing: Path):
    config = write_config(
        tmp_path,
        f"system: {{path: {packing}}}\n"
        "parameters: [{name: small_diameter, kind: diameter, species: 0}]\n"
        "minimizer: {ftol: 1.0e-13}\noutput: {plots: false}\n",
    )
    strict = invoke(["check", config, "--json", "--tolerance", 1e-30])
    assert strict.exit_code == 1
    payload = one_json_object(strict.stdout)
    assert payload["passed"] is False and payload["tolerance"] == 1e-30
    audit = payload["tasks"][0]["audit"]
    assert 0 < audit["small_diameter"]["relative_error"] < 1e-4
    assert "audit failed" in strict.stderr


def test_validate_json(tmp_path: Path, packing: Path):
    config = write_config(
        tmp_path,
        f"system: {{path: {packing}}}\n"
        "parameters: [{name: small_diameter, kind: diameter, species: 0}]\n"
        "sweep:\n  potential.alpha: [2.0, 2.5]\n",
    )
    result = invoke(["validate", config, "--json"])
    assert result.exit_code == 0, result.output
    payload = one_json_object(result.stdout)
    assert payload["valid"] is True and payload["count"] == 2
    assert payload["sweep_keys"] == ["potential.alpha"]
    assert [t["values"] for t in payload["tasks"]] == [{"potential.alpha": 2.0},
                                                       {"potential.alpha": 2.5}]
    assert payload["tasks"][1]["config"]["potential"]["alpha"] == 2.5
    one = one_json_object(invoke(["validate", config, "--json", "--task-index", 1]).stdout)
    assert [t["index"] for t in one["tasks"]] == [1]


def test_collect_json(tmp_path: Path):
    fake_result(tmp_path / "runs" / "a" / "sensitivity.h5", seed=1)
    fake_result(tmp_path / "runs" / "b" / "sensitivity.h5", seed=2, converged=False)
    result = invoke(["collect", tmp_path / "runs", "-o", tmp_path / "summary", "--json"])
    assert result.exit_code == 0, result.output
    payload = one_json_object(result.stdout)
    assert payload["count"] == 2 and payload["missing"] == 0
    assert payload["csv"] == str(tmp_path / "summary.csv")
    assert [row["status"] for row in payload["table"]] == ["ok", "not_converged"]


def test_the_log_shows_the_compile_stage():
    import jax
    import jax.numpy as jnp

    from sensitivity.cli._report import Reporter

    stream = io.StringIO()
    log = Reporter("log", stream=stream)
    fresh = jax.jit(lambda x: jnp.sin(x) * 3.0 + jnp.cos(x) ** 2)  # never compiled before
    with log.task("t", ftol=1e-12):
        log.progress("start", n=4)
        fresh(jnp.arange(7.0)).block_until_ready()
        log.progress("relax", step=10, max_force=1e-3)
    lines = stream.getvalue().splitlines()
    messages = [re.sub(r"^\S+ \S+ \[t\] ", "", line) for line in lines]
    assert len(messages) == 4 and messages[0] == "start n=4" and messages[1] == "compiling"
    assert messages[3].startswith("relax step 10")
    # (the suite's shared compilation cache may hold the eager arange's program already)
    compiled = re.fullmatch(r"compiled (\d+) function\(s\) in (\d+\.\d+) s"
                            r"(, \d+ from the compilation cache)?", messages[2])
    assert compiled and int(compiled.group(1)) >= 1
    # listeners are removed with the task: a compile afterwards is not reported
    jax.jit(lambda x: x + 41.5)(1.0)
    assert len(stream.getvalue().splitlines()) == 4


@pytest.mark.slow
def test_plot_formats_and_options(tmp_path: Path):
    path = fake_result(tmp_path / "run" / "sensitivity.h5")
    result = invoke(["plot", path, "-o", tmp_path / "figs", "--format", "pdf", "--dpi", 72,
                     "--theta", "small_diameter", "--color-by-magnitude"])
    assert result.exit_code == 0, result.output
    written = [Path(line) for line in result.output.split()]
    assert [p.name for p in written] == ["response_small_diameter.pdf",
                                         "magnitudes_small_diameter.pdf"]
    assert all(p.read_bytes().startswith(b"%PDF") for p in written)
    unknown = invoke(["plot", path, "--theta", "nope"])
    assert unknown.exit_code == 2 and "small_diameter" in unknown.output
    with h5py.File(path) as f:  # inspect prints the attributes the file carries
        assert "gauge" in f["sensitivity/small_diameter/dx_dtheta"].attrs
    text = invoke(["inspect", path]).stdout
    assert "gauge: backbone mean zero" in text and "axes: [N][d]" in text


def test_jacobian_blocks_are_reported_as_they_are_written():
    """The streamed Jacobian's progress (systems.many_rhs): a log line per block, and the
    bar's fraction of columns in rich mode."""
    import io

    from sensitivity.cli._report import Reporter

    stream = io.StringIO()
    log = Reporter("log", stream=stream)
    with log.task("t"):
        log.progress("jacobian", name="d", columns=256, of=1024, seconds=1.5)
    assert "[t] jacobian name=d columns=256 of=1024 seconds=1.5" in stream.getvalue()
    fancy = Reporter("rich", stream=io.StringIO())
    with fancy.task("t"):
        fancy.progress("jacobian", name="d", columns=256, of=1024, seconds=1.5)
        (bar,) = fancy._progress.tasks
        assert bar.completed == 0.25 and bar.fields["status"] == "256/1024 columns"
        assert bar.description == "t: jacobian d"
