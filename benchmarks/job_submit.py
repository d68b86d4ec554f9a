"""Job-submit overhead (issue 17): the wall time of a small pipeline submitted with `ray job submit` to a running
Ray head, next to the same pipeline run directly, in one run.

python benchmarks/job_submit.py [--data-root ../shared/data/dcase2020_task2_dev_sample] [--epochs 2] [--repeat 2]
                                [--out benchmarks/results/job_submit.json]

The pipeline: ``jobs/pipeline.py --machine-type slider --ids 00 --epochs E --registry none`` on the real clips, each
run with a fresh feature store and run folder (so every run ingests, trains, scores and evaluates the same work).
Three ways, alternating, ``--repeat`` times each:

- ``direct``: ``python jobs/pipeline.py ...``: the job starts its own embedded Ray (127.0.0.1) and stops it;
- ``direct --address``: the same command joining the running head (no Ray start-up);
- ``ray job submit``: ``ray job submit --working-dir . -- python jobs/pipeline.py ...`` to that head (working-dir
  upload, the job supervisor actor, the driver joining through RAY_ADDRESS), timed until the CLI returns.

The head is started as the README starts a local one (``python -m stethoscope.runtime ray start --head``: 127.0.0.1
only, token authentication, its own temp dir and free ports, 2 CPUs) before the timers and killed afterwards (its
process tree only; never ``ray stop``). Prints the median and every wall time per way, and the overheads against
``direct --address`` (the same work on the same cluster); writes them with the load average as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stethoscope.runtime import free_port, kill_tree, wait_port

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def _timed(cmd: list[str], env: dict, log: Path) -> float:
    t0 = time.perf_counter()
    with log.open("a") as f:
        rc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed (exit {rc}); see {log}")
    return wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data" / "dcase2020_task2_dev_sample"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "job_submit.json"))
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="jsub-"))  # short: Ray's socket paths live under the temp dir
    (work / "home").mkdir()
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(HOME=str(work / "home"), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token,
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    gcs_port, dash_port = free_port(), free_port()
    head = subprocess.Popen(
        [sys.executable, "-m", "stethoscope.runtime", str(VENV_BIN / "ray"), "start", "--head", "--block",
         "--num-cpus", "2", "--port", str(gcs_port), "--temp-dir", str(work / "t"), "--include-dashboard", "true",
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port), "--dashboard-agent-listen-port",
         str(free_port()), "--ray-client-server-port", str(free_port()), "--disable-usage-stats"],
        env={**env, "PYTHONPATH": str(ROOT / "platform")}, cwd=work, stdout=(work / "head.log").open("w"),
        stderr=subprocess.STDOUT, start_new_session=True)
    log = work / "runs.log"
    walls: dict[str, list[float]] = {"direct": [], "direct --address": [], "ray job submit": []}
    try:
        wait_port(gcs_port, head)
        wait_port(dash_port, head)
        for i in range(args.repeat):
            for way in walls:
                out = work / f"{way.replace(' ', '_').replace('-', '')}_{i}"
                pipeline = ["jobs/pipeline.py", "--data-root", args.data_root, "--machine-type", "slider", "--ids",
                            "00", "--epochs", str(args.epochs), "--registry", "none", "--runs", str(out / "runs"),
                            "--store", str(out / "store")]
                if way == "direct":
                    cmd, run_env = [sys.executable, *pipeline], {k: v for k, v in env.items()
                                                                  if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
                elif way == "direct --address":
                    cmd, run_env = [sys.executable, *pipeline, "--address", f"127.0.0.1:{gcs_port}"], env
                else:
                    cmd = [str(VENV_BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dash_port}",
                           "--working-dir", str(ROOT), "--", "python", *pipeline]
                    run_env = env
                walls[way].append(_timed(cmd, run_env, log))
                print(f"{way:18s} run {i + 1}: {walls[way][-1]:6.1f} s", flush=True)
    finally:
        kill_tree(head)
    med = {k: statistics.median(v) for k, v in walls.items()}
    base = med["direct --address"]
    print()
    print(f"{'way':18s} {'median s':>9s} {'vs joined':>10s}  every run (s)")
    for way, values in walls.items():
        print(f"{way:18s} {med[way]:9.1f} {med[way] - base:+9.1f}s  {', '.join(f'{v:.1f}' for v in values)}")
    result = {"walls_s": walls, "median_s": med, "submit_overhead_s": med["ray job submit"] - base,
              "embedded_start_overhead_s": med["direct"] - base, "epochs": args.epochs, "repeat": args.repeat,
              "loadavg_after": os.getloadavg(), "cpus": os.cpu_count(),
              "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nray job submit costs {result['submit_overhead_s']:+.1f} s over the same pipeline joining the head "
          f"directly; an embedded Ray start costs {result['embedded_start_overhead_s']:+.1f} s (written to {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
