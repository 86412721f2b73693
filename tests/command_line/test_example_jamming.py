"""examples/jamming_moduli.py at --quick size: the table, p(φ), the moduli's signs, and each
packing's B, G and p recomputed from its stored tensors by the 2D closed forms."""

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "jamming_moduli.py"


def _load():
    spec = importlib.util.spec_from_file_location("example_jamming_moduli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~15-20 s on 2 shared cores (one compile of the relaxation and the solves)
def test_jamming_quick(tmp_path):
    module = _load()
    n, phis, seeds = module.SIZES["quick"]
    assert n <= 32 and 2 <= len(phis) <= 3 and len(seeds) == 1
    result = module.main(["--quick", "--output", str(tmp_path)])
    assert Path(result["figure"]).stat().st_size > 1000

    with open(result["csv"], newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == module.COLUMNS
        rows = list(reader)
    assert len(rows) == len(phis) * len(seeds)
    assert sorted(float(r["phi"]) for r in rows) == sorted(phis)
    used = [r for r in rows if r["used"] == "True"]
    assert len(used) == len(rows), [r["note"] for r in rows]  # the quick packings are jammed
    used.sort(key=lambda r: float(r["phi"]))
    p = np.array([float(r["pressure"]) for r in used])
    assert np.all(p > 0) and np.all(np.diff(p) > 0)  # p grows with φ above jamming
    for r in used:
        assert float(r["bulk_modulus"]) > 0 and float(r["shear_modulus"]) > 0
        assert int(r["contacts"]) >= int(r["isostatic_contacts"])
        assert float(r["max_force"]) <= 1e-12

    # each packing's p, B, G against its stress and tensor, by closed forms (Voigt, 2D)
    data = np.load(result["tensors"])
    for k, r in enumerate(rows):
        assert float(data["phi"][k]) == float(r["phi"])
        if r["used"] != "True":
            continue
        stress, c = data["stress"][k], data["elastic_tensor"][k]
        np.testing.assert_allclose(c, c.transpose(2, 3, 0, 1), rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(c, c.transpose(1, 0, 2, 3), atol=0)
        c11, c22, c12, c66 = c[0, 0, 0, 0], c[1, 1, 1, 1], c[0, 0, 1, 1], c[0, 1, 0, 1]
        assert float(r["pressure"]) == pytest.approx(-np.trace(stress) / 2, rel=1e-9)
        assert float(r["bulk_modulus"]) == pytest.approx((c11 + c22 + 2 * c12) / 4, rel=1e-9)
        assert float(r["shear_modulus"]) == pytest.approx(
            (c11 + c22 - 2 * c12 + 4 * c66) / 8, rel=1e-9)
    # with 3 fractions and one seed an exponent fit means little; it is only reported
    assert set(result["fits"]) <= {"shear_modulus", "bulk_modulus"}


@pytest.mark.slow  # two compiles (the script's shared box, the pipeline's own box): ~25 s
def test_jamming_scaled_box_matches_the_pipeline_and_from_sweep(tmp_path):
    """The script sets φ by shrinking the diameters in the densest packing's box and converts
    p, B, G back to units of the small diameter. The command-line pipeline (run_task with
    sensitivity.elasticity, the route of examples/jamming_sweep.yaml) on the script's relaxed
    packing written in those units (diameters 1 and 1.4, its own box) must give the same
    numbers, and --from-sweep must read them back into the same table."""
    from sensitivity import systems
    from sensitivity.systems.config import resolve_config

    module = _load()
    phi, seed = 0.92, 3  # the middle quick packing: diameters shrunk by √(0.92/0.96)
    ours = module.main(["--quick", "--output", str(tmp_path / "script")])
    k = next(k for k, r in enumerate(ours["rows"]) if r["phi"] == phi and r["seed"] == seed)
    row = ours["rows"][k]
    assert row["used"], row["note"]
    data = np.load(ours["tensors"])
    start = systems.random_packing(32, dim=2, phi=phi, seed=seed)
    assert np.allclose(data["box"][k], start.box, rtol=1e-12)  # the units are the same
    relaxed = start.replace(positions=data["positions"][k])

    work = tmp_path / "sweep" / "task-0000"
    work.mkdir(parents=True)
    packing = work.parent / f"phi{phi}-seed{seed}.h5"
    systems.write_packing(packing, relaxed)
    config, errors = resolve_config({
        "system": {"path": str(packing)},
        "potential": {"kind": "soft_sphere", "alpha": 2.0, "epsilon": 1.0},
        "minimizer": {"kind": "fire", "ftol": 1e-12},
        "parameters": [{"name": "shear", "kind": "strain", "component": "xy"}],
        "sensitivity": {"elasticity": True, "tol": 1e-10},
        "output": {"directory": str(work), "plots": False}}, base_dir=work)
    assert not errors, errors
    summary = systems.run_task(config, work)
    assert summary.converged, summary.message
    theirs = module.main(["--from-sweep", str(tmp_path / "sweep"),
                          "--output", str(tmp_path / "collected")])
    assert len(theirs["rows"]) == 1
    other = theirs["rows"][0]
    assert other["used"] and other["seed"] == seed and other["phi"] == pytest.approx(phi)
    for key in ("pressure", "bulk_modulus", "shear_modulus"):
        assert other[key] == pytest.approx(row[key], rel=1e-6), key
    collected = np.load(theirs["tensors"])
    np.testing.assert_allclose(collected["elastic_tensor"][0], data["elastic_tensor"][k],
                               rtol=1e-6, atol=1e-8)


def test_jamming_sweep_config_lists_one_task_per_packing(tmp_path):
    """examples/jamming_sweep.yaml, with the packings its comment says to generate, is a
    valid sweep: 8 tasks, one per packing file, each with the elastic tensor switched on."""
    import re
    import shutil

    from sensitivity import systems
    from sensitivity.systems.config import load_config

    config = tmp_path / "jamming_sweep.yaml"
    shutil.copyfile(SCRIPT.parent / "jamming_sweep.yaml", config)
    names = re.findall(r"jamming/(phi[0-9.]+-seed\d+)\.h5", config.read_text())
    (tmp_path / "jamming").mkdir()
    for name in set(names):
        phi, seed = re.fullmatch(r"phi([0-9.]+)-seed(\d+)", name).groups()
        systems.write_packing(tmp_path / "jamming" / f"{name}.h5",
                              systems.random_packing(8, phi=float(phi), seed=int(seed)))
    tasks = load_config(config).tasks
    assert len(tasks) == 8
    paths = [t.config["system"]["path"] for t in tasks]
    assert len(set(paths)) == 8 and all(Path(p).is_file() for p in paths)
    for t in tasks:
        assert t.config["sensitivity"]["elasticity"] is True
        assert t.config["potential"]["alpha"] == 2.0
