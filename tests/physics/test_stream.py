"""A large vector θ's Jacobian written block by block as it is computed (systems.io with a
systems.many_rhs.FactorizedJacobian): the streamed file equals the in-memory path, and a
failure mid-stream (a block raising, a full disk) leaves neither the output nor a temporary
file behind."""

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from _physics import task_config

from sensitivity import systems  # noqa: F401
from sensitivity.systems import many_rhs
from sensitivity.systems.generate import random_packing
from sensitivity.systems.io import SolveReport, read_result, write_packing, write_result
from sensitivity.systems.jacobian_file import read_jacobian_slice
from sensitivity.systems.pipeline import run_task
from sensitivity.systems.potentials import PairModel, resolve_potential
from sensitivity.systems.response import ResponseSolver, resolve_sensitivity
from sensitivity.systems.theta import ParameterSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def packing_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("input") / "packing.h5"
    write_packing(path, random_packing(40, dim=2, phi=0.9, seed=2))
    return path


def test_streamed_file_equals_the_in_memory_jacobian(packing_file, tmp_path, monkeypatch):
    monkeypatch.setattr(many_rhs, "BLOCK_COLUMNS", 16)  # 40 columns: blocks 16, 16, 8
    events = []
    summary = run_task(task_config(packing_file, many_rhs="factorization"), tmp_path,
                       progress=lambda event, **fields: events.append((event, fields)))
    assert summary.converged, summary.message
    blocks = [f["columns"] for e, f in events if e == "jacobian"]
    assert blocks == [16, 32, 40]
    solves = [f["name"] for e, f in events if e == "solve"]
    assert sorted(solves) == ["box", "diameters"]
    # the in-memory path at the relaxed positions of the file
    result = read_result(summary.result_path)
    model = PairModel.build(random_packing(40, dim=2, phi=0.9, seed=2), resolve_potential({}, 2))
    params = model.default_params(random_packing(40, dim=2, phi=0.9, seed=2).diameters)
    solver = ResponseSolver(model, result.positions, params, max_force=0.0,
                            settings=resolve_sensitivity({"many_rhs": "factorization"}))
    expected, attrs = solver.vector_derivative(ParameterSpec("diameters", "diameters"))
    got = result.dx_dtheta("diameters")
    assert np.array_equal(np.isnan(got), np.isnan(expected))
    live = ~np.isnan(expected)
    np.testing.assert_allclose(got[live], expected[live], rtol=0,
                               atol=1e-12 * np.abs(expected[live]).max())
    written = result.responses["diameters"]["report"]
    assert written.many_rhs == "factorization" and written.converged
    assert written.n_solves == 40 and written.streamed
    assert summary.responses["diameters"].converged
    assert summary.timings["time_sensitivity_s"] >= written.time_s
    np.testing.assert_array_equal(read_jacobian_slice(summary.result_path, "diameters",
                                                      particle=5), got[:, 5])
    assert [p.name for p in tmp_path.iterdir()] == ["sensitivity.h5"]


def test_a_block_failing_mid_stream_leaves_no_file(packing_file, tmp_path, monkeypatch):
    monkeypatch.setattr(many_rhs, "BLOCK_COLUMNS", 16)
    calls = []
    block = many_rhs._ColoredRHS.block

    def failing(self, start, stop):
        calls.append(start)
        if len(calls) == 2:
            raise RuntimeError("solve failed (test)")
        return block(self, start, stop)

    monkeypatch.setattr(many_rhs._ColoredRHS, "block", failing)
    with pytest.raises(RuntimeError, match="solve failed"):
        run_task(task_config(packing_file, many_rhs="factorization"), tmp_path)
    assert calls == [0, 16]
    assert list(tmp_path.iterdir()) == []  # neither sensitivity.h5 nor a .tmp


class _Stream:
    """A stand-in for FactorizedJacobian: blocks of a known field, optionally failing."""

    def __init__(self, field, fail_at=None):
        self.field, self.fail_at, self.report = field, fail_at, None
        self.shape, self.nbytes = field.shape, field.nbytes

    def blocks(self):
        for start in range(0, len(self.field), 64):
            if start == self.fail_at:
                raise RuntimeError("block failed (test)")
            yield start, start + 64, self.field[start:start + 64]
        self.report = SolveReport(converged=True, method="test")


def _write(path, stream):
    system = random_packing(len(stream.field), seed=0)
    responses = {"all": {"dx_dtheta": stream, "report": SolveReport(kind="diameters")}}
    write_result(path, system=system, relaxation={}, responses=responses,
                 rattlers=np.zeros(system.n, bool), zero_modes={}, parameters={}, timings={})
    return responses


def test_write_result_streams_blocks_into_the_chunked_dataset(tmp_path):
    field = np.random.default_rng(0).standard_normal((256, 256, 2))
    responses = _write(tmp_path / "r.h5", _Stream(field))
    assert responses["all"]["report"] == SolveReport(kind="diameters", converged=True,
                                                     method="test")
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["sensitivity/all/dx_dtheta"].chunks == (64, 64, 2)
        assert f["sensitivity/all"].attrs["method"] == "test"
    np.testing.assert_array_equal(read_result(tmp_path / "r.h5").dx_dtheta("all"), field)
    with pytest.raises(RuntimeError, match="block failed"):
        _write(tmp_path / "r.h5", _Stream(field + 1, fail_at=128))
    np.testing.assert_array_equal(read_result(tmp_path / "r.h5").dx_dtheta("all"), field)
    assert [p.name for p in tmp_path.iterdir()] == ["r.h5"]  # the prior file, no temporary


def test_disk_full_while_streaming_is_one_line_and_leaves_nothing(tmp_path):
    """The file-size limit (EFBIG, as a full disk's ENOSPC) meets the space reserved before
    HDF5 writes: one StorageError line, no crash, no file (test_hostile's simulation)."""
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "import numpy as np\n"
        "from test_stream import _Stream, _write\n"
        "from sensitivity.systems._errors import StorageError\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))\n"
        "try:\n"
        "    _write(sys.argv[1], _Stream(np.ones((512, 512, 2))))\n"
        "except StorageError as error:\n"
        "    print('StorageError:', error)\n"
    )
    target = tmp_path / "r.h5"
    done = subprocess.run([sys.executable, "-c", code, str(target), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"StorageError: {target}: cannot write (the file is larger "
                                   "than allowed (file size limit))")
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_unused_reservation_is_trimmed(tmp_path):
    """The space reserved before HDF5 writes (the result plus 64 MiB of head room) is
    trimmed to what HDF5 used when it closes: the file is its data's size."""
    field = np.random.default_rng(0).standard_normal((256, 256, 2))
    _write(tmp_path / "r.h5", _Stream(field))
    size = (tmp_path / "r.h5").stat().st_size
    assert field.nbytes < size < field.nbytes + (1 << 20)  # not the 64 MiB head room
