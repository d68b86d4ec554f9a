"""Scoring latency of an ensemble through the endpoint against one of its members alone (issue 16).

python benchmarks/ensemble_latency.py --runs RUN_A RUN_B RUN_C [--machine-type fan] [--section 00]
                                      [--levels 1 8] [--duration 15] [--warmup 3]

From the same trained runs (e.g. SC, WSP-NFCDEE and IMDN on one machine type, all made with one validation split)
it publishes two bundles into temporary registries: the ensemble of every run given (equal weights: the weights do
not change the work a request costs) and the first run alone. It serves each in turn with the application of
serve/config.yaml on 127.0.0.1 (an embedded Ray), keeps N requests in flight for --duration seconds per level from a
separate client process (benchmarks/serve_load.py's client), and prints, side by side, p50 / p99 latency and
clips/s for the ensemble and the single member, and their ratio. The clips are the runs' own scored test clips.
Results go to benchmarks/results/ensemble_latency-<time>.json (git-ignored).

No target: the issue asks for the comparison (what a 3-member ensemble costs over one member on this machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_load import _free_port  # noqa: E402  (benchmarks/ is on sys.path)

log = logging.getLogger("ensemble_latency")


def _measure(registry: str, machine_type: str, section: str, clips: list[str], levels: list[int], duration: float,
             warmup: float, config: str) -> list[dict]:
    """Serve ``registry`` and load it from a client process; returns serve_load's per-level records."""
    import httpx
    from ray import serve

    from serve.app import build_app_from_config

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app_from_config(config, registry=registry), name="stethoscope-ens-bench", route_prefix="/")
        url = f"http://127.0.0.1:{port}/v1/score"
        params = {"machine_type": machine_type, "section": section}
        r = httpx.post(url, params=params, content=Path(clips[0]).read_bytes(),
                       headers={"content-type": "audio/wav"}, timeout=300)  # loads the bundle: not measured
        r.raise_for_status()
        spec = {"url": url, "params": params, "clips": clips, "levels": levels, "duration": duration,
                "warmup": warmup, "health_url": None}
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--client",
                               json.dumps(spec)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"client failed: {proc.stderr[-2000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        serve.shutdown()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="run folders of one machine type (the first is 'one')")
    p.add_argument("--machine-type", default="fan")
    p.add_argument("--section", default="00", help="section of the requests (default: 00)")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 8])
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per level (default: 15)")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--config", default=str(ROOT / "serve" / "config.yaml"))
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "platform"))
    import pandas as pd

    from stethoscope import runs as run_files
    from stethoscope.publishing import publish_runs, read_run
    from stethoscope.runtime import init_ray

    infos = [read_run(r) for r in args.runs]
    scored = pd.read_parquet(infos[0].path / run_files.SCORES)
    clips = sorted(scored.loc[(scored["machine_type"] == args.machine_type)
                              & (scored["section"].astype(str) == args.section), "path"])
    if not clips:
        raise SystemExit(f"no scored clip of {args.machine_type} section {args.section} in {infos[0].path}")
    init_ray(num_cpus=args.num_cpus)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="stethoscope-ens-bench-") as tmp:
        for label, members in (("ensemble", infos), ("one member", infos[:1])):
            registry = str(Path(tmp) / label.replace(" ", "_"))
            (res,) = publish_runs(members, registry, machine_types=[args.machine_type], weights="uniform",
                                  max_members=len(members), out_dir=Path(tmp) / f"eval_{label.replace(' ', '_')}")
            levels = _measure(registry, args.machine_type, args.section, clips, args.levels, args.duration,
                              args.warmup, args.config)
            out[label] = {"members": [m["method"] for m in res.manifest["members"]], "levels": levels}
    head = ["concurrency", "ensemble p50 ms", "one p50 ms", "ensemble p99 ms", "one p99 ms", "ensemble clips/s",
            "one clips/s", "p50 ratio", "errors"]
    rows = []
    for e, o in zip(out["ensemble"]["levels"], out["one member"]["levels"]):
        rows.append([str(e["concurrency"]), f"{e['p50_ms']:.1f}", f"{o['p50_ms']:.1f}", f"{e['p99_ms']:.1f}",
                     f"{o['p99_ms']:.1f}", f"{e['clips_per_s']:.1f}", f"{o['clips_per_s']:.1f}",
                     f"{e['p50_ms'] / o['p50_ms']:.2f}", f"{e['errors']} / {o['errors']}"])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    print()
    print(f"{args.machine_type} section {args.section}: ensemble {out['ensemble']['members']} vs one member "
          f"{out['one member']['members']}; {len(clips)} clips; {os.cpu_count()} CPUs; load average "
          f"{os.getloadavg()[0]:.1f}")
    print("\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [head, *rows]))
    dest = Path(args.out)
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"ensemble_latency-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"runs": args.runs, "machine_type": args.machine_type, "section": args.section,
                                "clips": clips, "results": out, "cpus": os.cpu_count()}, indent=2, default=str) + "\n")
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
