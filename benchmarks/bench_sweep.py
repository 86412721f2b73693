"""Throughput of a sweep: seconds per task in one process against a single ``sensitivity run``.

For small packings start-up dominates: importing jax and jax-md, then compiling the relaxation
and the linear solves, take longer than relaxing and differentiating one packing. A sweep run in
one process pays the start-up once, and JAX's persistent compilation cache lets separate
processes (Slurm array tasks) skip compilation. This measures all three:

1. ``single, cold cache``: one ``sensitivity run`` in a fresh process with an empty cache;
2. ``single, warm cache``: the same again, the cache now filled (what an array task pays);
3. ``sweep``: ``sensitivity run`` of a sweep of TASKS packings in one process, per task;
   the next tasks are relaxed in threads (one per usable CPU, ``systems.relax_ahead``);
4. ``sweep, one thread``: the same with ``SENSITIVITY_RELAX_THREADS=0`` (each task relaxed in
   turn), the baseline of the threads' gain.

    python benchmarks/bench_sweep.py                 # 32 packings of N = 256 (2D, phi 0.9)
    python benchmarks/bench_sweep.py --n 64 --tasks 8 --json out.json

Each packing has its own seed (the same N, so the same shapes: compiled once). Plots are off;
wall-clock times of whole processes, start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


CPU_S: list[float] = []  # the CPU seconds (user + system) of each run, in order


def sensitivity(*args: str, env: dict, cwd: Path) -> float:
    """Run ``python -m sensitivity.cli ARGS`` in a fresh process; its wall-clock seconds
    (its CPU seconds are appended to :data:`CPU_S`: on a shared machine, steadier)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "sensitivity.cli", *args], cwd=cwd, env=env, capture_output=True,
        text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_S.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    if completed.returncode != 0:
        sys.exit(
            f"`sensitivity {' '.join(args)}` failed ({completed.returncode}):\n"
            f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
        )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="particles per packing")
    parser.add_argument("--tasks", type=int, default=32, help="packings in the sweep")
    parser.add_argument("--phi", type=float, default=0.9)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["SENSITIVITY_CACHE_DIR"] = str(work / "jax-cache")
    env.pop("SLURM_ARRAY_TASK_ID", None)

    print(f"generating {args.tasks} packings of N = {args.n} in {work}", flush=True)
    sys.path.insert(0, str(ROOT))
    from sensitivity.systems import random_packing, write_packing

    names = []
    for seed in range(args.tasks):
        name = f"p{seed:03d}.h5"
        write_packing(work / name, random_packing(args.n, dim=2, phi=args.phi, seed=seed))
        names.append(name)
    (work / "single.yaml").write_text(
        f"system: {{path: {names[0]}}}\n"
        "parameters: [{name: small_diameter, kind: diameter, species: 0}]\n"
        "output: {directory: single, plots: false}\n"
    )
    (work / "sweep.yaml").write_text(
        "system: {path: p000.h5}\n"
        "parameters: [{name: small_diameter, kind: diameter, species: 0}]\n"
        "output: {directory: sweep, plots: false}\n"
        f"sweep:\n  system.path: [{', '.join(names)}]\n"
    )

    print("single run, cold compilation cache ...", flush=True)
    cold = sensitivity("-q", "run", "single.yaml", "--overwrite", env=env, cwd=work)
    print(f"  {cold:.2f} s", flush=True)
    print("single run, warm compilation cache ...", flush=True)
    warm = sensitivity("-q", "run", "single.yaml", "--overwrite", env=env, cwd=work)
    print(f"  {warm:.2f} s", flush=True)
    print(f"sweep of {args.tasks} tasks in one process (warm cache) ...", flush=True)
    total = sensitivity("-q", "run", "sweep.yaml", "--overwrite", env=env, cwd=work)
    per_task = total / args.tasks
    cpu = CPU_S[-1]
    print(f"  {total:.2f} s, {per_task:.3f} s per task (CPU {cpu:.2f} s)", flush=True)
    print(f"sweep of {args.tasks} tasks in one process, one thread ...", flush=True)
    one_thread = dict(env, SENSITIVITY_RELAX_THREADS="0")
    sequential = sensitivity("-q", "run", "sweep.yaml", "--overwrite", "-o", "sweep-seq",
                             env=one_thread, cwd=work)
    cpu_sequential = CPU_S[-1]
    print(f"  {sequential:.2f} s, {sequential / args.tasks:.3f} s per task "
          f"(CPU {cpu_sequential:.2f} s)", flush=True)
    print("start-up alone (what a run imports: jax, the physics, jax-md's space and "
          "partition) ...", flush=True)
    startup_code = (
        "import time; t = time.perf_counter(); import jax; "
        "jax.config.update('jax_enable_x64', True); import sensitivity.systems.pipeline; "
        "from sensitivity.systems._jaxmd import module; module('space'); module('partition'); "
        "print(time.perf_counter() - t)")
    startup = float(
        subprocess.run([sys.executable, "-c", startup_code], env=env, capture_output=True,
                       text=True, cwd=ROOT, check=True).stdout.strip()
    )

    # Per-task times recorded by the run itself (relaxation, solves, compilation).
    from sensitivity.systems import read_result

    inner = [read_result(work / "sweep" / f"task-{i:04d}" / "sensitivity.h5").timings
             for i in range(args.tasks)]

    def mean(key):
        values = [t[key] for t in inner if isinstance(t.get(key), (int, float))]
        return sum(values) / len(values) if values else None

    report = {
        "n": args.n,
        "tasks": args.tasks,
        "phi": args.phi,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "single_run_cold_cache_s": cold,
        "single_run_warm_cache_s": warm,
        "sweep_total_s": total,
        "sweep_per_task_s": per_task,
        "sweep_cpu_s": cpu,
        "sweep_one_thread_cpu_s": cpu_sequential,
        "load_average": os.getloadavg(),
        "sweep_one_thread_total_s": sequential,
        "sweep_one_thread_per_task_s": sequential / args.tasks,
        "speedup_vs_one_thread": sequential / total,
        "speedup_vs_warm_single": warm / per_task,
        "speedup_vs_cold_single": cold / per_task,
        "import_s": startup,
        "import_share_of_sweep": startup / total,
        "mean_time_relax_s": mean("time_relax_s"),
        "mean_time_sensitivity_s": mean("time_sensitivity_s"),
        "mean_time_compile_s": mean("time_compile_s"),
        "first_task_timings": inner[0],
        "last_task_timings": inner[-1],
    }
    print()
    print(f"Sweep of {args.tasks} packings, N = {args.n} (2D, phi {args.phi}), {report['machine']}")
    print(f"  single `run`, cold cache     {cold:8.2f} s")
    print(f"  single `run`, warm cache     {warm:8.2f} s   (a Slurm array task)")
    print(f"  sweep in one process         {per_task:8.3f} s per task  ({total:.1f} s total, "
          f"CPU {cpu / args.tasks:.3f} s per task)")
    print(f"  sweep, one thread            {sequential / args.tasks:8.3f} s per task  "
          f"({sequential:.1f} s total; threads {sequential / total:.2f}x faster; CPU "
          f"{cpu_sequential / args.tasks:.3f} s per task)")
    print(f"  load average (1, 5, 15 min)  {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"  imports of a run             {startup:8.2f} s   ({startup / total:.0%} of the sweep)")
    for key in ("mean_time_relax_s", "mean_time_sensitivity_s", "mean_time_compile_s"):
        if report[key] is not None:
            print(f"  {key:<28} {report[key]:8.3f} s")
    print(f"  speed-up of the sweep: {report['speedup_vs_warm_single']:.1f}x per task against a "
          f"warm single run, {report['speedup_vs_cold_single']:.1f}x against a cold one")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
