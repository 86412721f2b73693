"""The relaxation report is one type (RelaxReport), written and read by systems io: it
round-trips through a result file, keeps the layout that files already on disk have, reads
files written before the type existed, and stays in step with the minimizer's RelaxResult.
The file-format modules read without importing jax."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from sensitivity.systems import RelaxReport, random_packing, read_result, write_result

ROOT = Path(__file__).resolve().parents[2]

#: What RelaxResult.as_dict() gives for a converged FIRE run (its keys, in its order).
AS_DICT = {"steps": 1911, "energy": 2.5e-4, "max_force": 7.5e-13, "stop_reason": "ftol",
           "converged": True, "minimizer": "fire", "ftol": 1e-12, "etol": 0.0,
           "max_steps": 100000, "time_s": 0.35, "time_compile_s": 0.9,
           "neighbor_list": False, "reallocations": 0}


def _write(path, relaxation):
    system = random_packing(8, dim=2, phi=0.9, seed=1)
    return write_result(path, system=system, relaxation=relaxation, responses={},
                        rattlers=np.zeros(system.n, bool), zero_modes={}, parameters={},
                        timings={})


def test_a_report_round_trips_through_a_written_file(tmp_path):
    report = RelaxReport(**AS_DICT, extra={"note": "written by a test", "trace": [1.0, 0.5]})
    back = read_result(_write(tmp_path / "r.h5", report)).relaxation
    assert isinstance(back, RelaxReport)
    assert back.to_attrs().keys() == report.to_attrs().keys()
    assert back.extra["note"] == "written by a test"
    np.testing.assert_array_equal(back.extra["trace"], [1.0, 0.5])
    # the recorded fields compare equal and keep their Python types (not numpy scalars)
    plain = dataclasses.replace(back, extra={})
    assert plain == RelaxReport(**AS_DICT)
    assert [type(getattr(plain, k)) for k in AS_DICT] == [type(v) for v in AS_DICT.values()]


def test_the_layout_is_the_one_the_dict_wrote(tmp_path):
    """A report from RelaxResult.as_dict() writes /relaxation exactly as the dict did before
    the type existed: the same attributes, in the same order, of the same HDF5 types."""
    from sensitivity.systems._h5 import write_tree

    path = _write(tmp_path / "typed.h5", AS_DICT)
    with h5py.File(tmp_path / "dict.h5", "w") as handle:  # the writer before RelaxReport
        write_tree(handle.create_group("relaxation", track_order=True), AS_DICT, "/relaxation")
    with h5py.File(path, "r") as typed, h5py.File(tmp_path / "dict.h5", "r") as old:
        new_attrs, old_attrs = typed["relaxation"].attrs, old["relaxation"].attrs
        assert list(new_attrs) == list(old_attrs) == list(AS_DICT)
        for key in AS_DICT:
            assert new_attrs.get_id(key).dtype == old_attrs.get_id(key).dtype, key
            assert new_attrs[key] == old_attrs[key], key
        # the energy where MD tools look for it comes from the same report
        assert typed["observables/potential_energy/value"][0] == AS_DICT["energy"]


def test_an_older_file_still_reads(tmp_path):
    """A file whose /relaxation holds only some fields, plus one this version does not know
    (as a hand-written or older file may), reads: missing fields None, the rest in extra."""
    path = _write(tmp_path / "old.h5", AS_DICT)
    with h5py.File(path, "r+") as handle:
        del handle["relaxation"]
        group = handle.create_group("relaxation")
        group.attrs["steps"] = np.int64(12)
        group.attrs["stop_reason"] = "max_steps"
        group.attrs["converged"] = np.bool_(False)
        group.attrs["legacy_flag"] = np.int64(3)
    result = read_result(path)
    assert result.relaxation == RelaxReport(steps=12, stop_reason="max_steps", converged=False,
                                            extra={"legacy_flag": 3})
    assert result.converged is False
    with h5py.File(path, "r+") as handle:  # no /relaxation at all: an empty report
        del handle["relaxation"]
    result = read_result(path)
    assert result.relaxation == RelaxReport() and result.relaxation.to_attrs() == {}
    assert result.converged is True


def test_report_fields_match_the_minimizer_result():
    """RelaxReport carries every scalar RelaxResult field, in RelaxResult.as_dict()'s order
    (a field added to one and not the other fails here)."""
    from sensitivity.systems.relax import RelaxResult

    fields = [f.name for f in dataclasses.fields(RelaxResult) if f.name != "positions"]
    assert [f.name for f in dataclasses.fields(RelaxReport)] == fields + ["extra"]
    result = RelaxResult(positions=np.zeros((2, 2)), steps=3, energy=1.0, max_force=1e-13,
                         stop_reason="ftol", converged=True)
    assert list(RelaxReport.from_attrs(result.as_dict()).to_attrs().items()) \
        == list(result.as_dict().items())


def test_file_format_modules_import_no_jax(tmp_path):
    path = _write(tmp_path / "r.h5", AS_DICT)
    code = (
        "import sys, json\n"
        "from sensitivity.systems._result_read import read_result\n"
        "from sensitivity.systems.jacobian_file import read_jacobian_slice\n"
        "from sensitivity.systems.io import read_packing, write_packing, write_result\n"
        "from sensitivity.systems.summary import summarize\n"  # inspect and collect
        f"r = read_result({str(path)!r})\n"
        f"s = summarize({str(path)!r})\n"
        "print(json.dumps({'steps': r.relaxation.steps, 'summary': s['relaxation'], "
        "'jax': sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', "
        "'jax_md'))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True, timeout=120)
    assert json.loads(done.stdout) == {"steps": AS_DICT["steps"], "summary": AS_DICT, "jax": []}
