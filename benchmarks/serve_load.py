"""Load benchmark of the serving endpoint (issue 5): real 10 s clips, concurrency 1, 8 and 32.

python benchmarks/serve_load.py [--registry registry] [--machine-type slider] [--duration 20] [--levels 1 8 32] [--probe-health]
    [--batch-clips 8]

Starts Ray and the application of serve/config.yaml (its deployment options, with --registry) on 127.0.0.1 and a free
port, then runs a *separate client process* (this script with --client) that keeps N requests in flight for
--duration seconds per level, after --warmup seconds that are not counted. The clips are the real 10 s test clips of
the machine type under ../shared/data (raw ``audio/wav`` bodies). For each level it prints p50 / p99 latency (client
side), throughput (successful clips per second) and the error count, plus where the time goes: the server's own
latency, decoding in the ingress, the detector call and its compute, and the mean batch size (from each response's
``timings_ms``). With --probe-health it also polls ``/healthz`` every 0.2 s during each level and reports its
latency (issue 11: health must not queue behind scoring). With --batch-clips N every level is run again with
requests of N clips each (``POST /v1/score/batch``), printed beside the single-clip rows. Results go to benchmarks/results/serve_load-<time>.json
(git-ignored).

Targets (issue 18; this 2-core machine, the autoencoder bundle): p50 ≤ 50 ms at concurrency 1 and 8, p99 ≤ 150 ms at
concurrency 8, ≥ 100 clips/s at concurrency 32 with 0 failed requests, and the endpoint's clips/s at 32 ≥ 50 % of
the offline scoring rate of the same model on the same clips (measured first, in this process: decode +
Bundle.score_waveforms in batches of max_batch_size with torch_threads threads). The last columns give the CPU time
each process spent per clip (client, proxy, ingress, detector, other Ray processes): where a request's time goes;
"CPU bound clips/s" divides the machine's cores by the server's CPU time per clip (every role but the client): the
most clips/s the server could give at that cost if the client ran elsewhere and the cores never idled.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLIPS = ROOT.parent / "shared/data/dcase2020_task2_dev_sample/dev_data"
TARGETS = {"p50_ms@1": 50.0, "p50_ms@8": 50.0, "p99_ms@8": 150.0, "clips_per_s@32": 100.0,
           "endpoint_vs_offline_%@32": 50.0}

log = logging.getLogger("serve_load")


# ---------------------------------------------------------------------------------------------------------------
# client process
# ---------------------------------------------------------------------------------------------------------------
#: Which process a CPU second belongs to, from its command line (first match wins; anything else is "ray").
PROCESS_ROLES = (("ProxyActor", "proxy"), (":Ingress", "ingress"), (":Detector", "detector"),
                 ("serve_load.py --client", "client"))


def _cpu_by_role() -> dict[str, float]:
    """CPU seconds (user + system) used so far by this benchmark's processes, by role (:data:`PROCESS_ROLES`):
    the server process (this client's parent, which started Ray) and all its descendants, so that other work on
    the machine is not counted."""
    import psutil

    root = psutil.Process(os.getppid())
    out: dict[str, float] = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            cmd = " ".join(proc.cmdline())
            times = proc.cpu_times()
        except psutil.Error:  # a process that ended meanwhile
            continue
        role = next((r for key, r in PROCESS_ROLES if key in cmd), "ray")
        out[role] = out.get(role, 0.0) + times.user + times.system
    return out


async def _level(url: str, params: dict, bodies: list[bytes], concurrency: int, warmup: float, duration: float,
                 health_url: str | None = None, batch: int = 0) -> dict:
    """One concurrency level: ``concurrency`` requests in flight for ``duration`` s after ``warmup`` s. ``batch`` 0:
    each request is one clip (raw audio/wav body, ``url`` is /v1/score); ``batch`` N: each request carries N clips
    (multipart, ``url`` is /v1/score/batch) and clips/s counts the clips scored."""
    import httpx

    records: list[tuple[float, float, int, dict | None, int]] = []  # (start, latency s, status, timings, clips ok)
    health: list[tuple[float, int]] = []  # (latency s, status) of /healthz probes during the measured window
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        t_start = time.perf_counter()
        t_count, t_end = t_start + warmup, t_start + warmup + duration

        async def worker(k: int) -> None:
            i = k
            while time.perf_counter() < t_end:
                n_ok = 0
                t0 = time.perf_counter()
                try:
                    if batch:
                        files = [("file", (f"{j}.wav", bodies[(i + j) % len(bodies)], "audio/wav"))
                                 for j in range(batch)]
                        i += concurrency * batch
                        r = await client.post(url, params=params, files=files)
                    else:
                        body = bodies[i % len(bodies)]
                        i += concurrency
                        r = await client.post(url, params=params, content=body, headers={"content-type": "audio/wav"})
                    status = r.status_code
                    doc = r.json() if status == 200 else {}
                    if batch:
                        n_ok = sum(1 for x in doc.get("results", []) if x.get("status") == 200)
                        if status == 200 and n_ok < batch:
                            status = 207  # some clips of the batch failed: counted as an error
                        timings = {"server_ms": doc.get("latency_ms")} if status == 200 else None
                    else:
                        n_ok = int(status == 200)
                        timings = doc.get("timings_ms")
                        if timings is not None:
                            timings = {**timings, "server_ms": doc.get("latency_ms")}
                    if status != 200 and len(errors) < 20:
                        errors.append(f"{status}: {r.text[:200]}")
                except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
                    status, timings = -1, None
                    if len(errors) < 20:
                        errors.append(f"{type(exc).__name__}: {exc}")
                if t0 >= t_count:
                    records.append((t0, time.perf_counter() - t0, status, timings, n_ok))

        cpu: dict[str, dict[str, float]] = {}

        async def cpu_sampler() -> None:  # CPU seconds per role over the measured window only
            await asyncio.sleep(max(0.0, t_count - time.perf_counter()))
            cpu["start"] = _cpu_by_role()
            await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
            cpu["end"] = _cpu_by_role()

        async def prober() -> None:  # one /healthz every 0.2 s on its own connection
            async with httpx.AsyncClient(timeout=60) as hc:
                while time.perf_counter() < t_end:
                    t0 = time.perf_counter()
                    try:
                        status = (await hc.get(health_url)).status_code
                    except Exception:  # noqa: BLE001 - counted as a failed probe
                        status = -1
                    if t0 >= t_count:
                        health.append((time.perf_counter() - t0, status))
                    await asyncio.sleep(0.2)

        await asyncio.gather(*(worker(k) for k in range(concurrency)), cpu_sampler(),
                             *([prober()] if health_url else []))
        elapsed = time.perf_counter() - t_count
    import numpy as np

    ok = [r for r in records if r[2] == 200]
    lat = np.array([r[1] for r in ok]) * 1e3
    clips_ok = sum(r[4] for r in records)
    out = {
        "concurrency": concurrency,
        "clips_per_request": max(1, batch),
        "seconds": round(elapsed, 3),
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "error_samples": errors,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "mean_ms": float(lat.mean()) if len(lat) else None,
        "clips_per_s": clips_ok / elapsed if elapsed > 0 else None,
    }
    if health:
        h = np.array([x[0] for x in health]) * 1e3
        out.update(health_probes=len(health), health_failed=sum(1 for x in health if x[1] != 200),
                   health_p50_ms=float(np.percentile(h, 50)), health_p99_ms=float(np.percentile(h, 99)))
    if ok:
        for key in ("server_ms", "decode", "detector", "detector_compute", "batch_size"):
            vals = [r[3][key] for r in ok if r[3] and r[3].get(key) is not None]
            out[f"mean_{key}"] = float(np.mean(vals)) if vals else None
        out["mean_proxy_and_client_ms"] = out["mean_ms"] - (out["mean_server_ms"] or 0.0)
        if "end" in cpu:  # CPU ms per successful clip, by process role: where the machine's time goes
            out["cpu_ms_per_clip"] = {role: round((cpu["end"].get(role, 0.0) - cpu["start"].get(role, 0.0)) * 1e3
                                                  / max(1, clips_ok), 2) for role in sorted(set(cpu["end"]))}
    return out


def client_main(spec: dict) -> None:
    bodies = [Path(p).read_bytes() for p in spec["clips"]]
    results = []
    for batch, url in ((0, spec["url"]), *(((spec["batch"], spec["batch_url"]),) if spec.get("batch") else ())):
        for c in spec["levels"]:
            results.append(asyncio.run(_level(url, spec["params"], bodies, c, spec["warmup"], spec["duration"],
                                              spec.get("health_url"), batch)))
    print(json.dumps(results))


# ---------------------------------------------------------------------------------------------------------------
# server side + report
# ---------------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_rate(registry: str, machine_type: str, group: str, clips: list[str], seconds: float, batch: int,
                 threads: int) -> dict:
    """Clips/s of the offline path on the same clips: decode (``decode_audio``) and ``Bundle.score_waveforms`` in
    batches of ``batch``, in this process with ``threads`` torch threads (the scoring replica's ``torch_threads``)."""
    import torch

    from stethoscope.data.audio import decode_audio
    from stethoscope.publishing import load_bundle, resolve_scope

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        bundle = load_bundle(registry, machine_type, resolve_scope(registry, machine_type, group))
        bodies = [Path(c).read_bytes() for c in clips]
        done, i, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or done == 0:
            chunk = [bodies[(i + k) % len(bodies)] for k in range(batch)]
            i += batch
            waves = [decode_audio(b, bundle.sample_rate, min_samples=bundle.min_samples)[0] for b in chunk]
            bundle.score_waveforms(waves, group)
            done += len(chunk)
        elapsed = time.perf_counter() - t0
    finally:
        torch.set_num_threads(previous)
    return {"clips": done, "seconds": round(elapsed, 3), "clips_per_s": done / elapsed, "batch": batch,
            "torch_threads": threads}


def _table(results: list[dict]) -> str:
    head = ["concurrency", "clips/request", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "clips/s", "server ms", "decode ms",
            "detector ms", "compute ms", "batch", "proxy+client ms"]

    def f(v, d=1):
        return "–" if v is None else f"{v:.{d}f}"

    rows = [[str(r["concurrency"]), str(r.get("clips_per_request", 1)), str(r["requests"]), str(r["errors"]), f(r["p50_ms"]), f(r.get("p95_ms")),
             f(r["p99_ms"]),
             f(r["clips_per_s"]), f(r.get("mean_server_ms")), f(r.get("mean_decode")), f(r.get("mean_detector")),
             f(r.get("mean_detector_compute")), f(r.get("mean_batch_size"), 2), f(r.get("mean_proxy_and_client_ms"))]
            for r in results]
    if any("health_p50_ms" in r for r in results):
        head += ["healthz p50 ms", "healthz p99 ms", "healthz failed"]
        for row, r in zip(rows, results):
            row += [f(r.get("health_p50_ms")), f(r.get("health_p99_ms")), str(r.get("health_failed", "–"))]
    roles = sorted({k for r in results for k in (r.get("cpu_ms_per_clip") or {})})
    if roles:
        head += [f"cpu {role}" for role in roles] + ["cpu total", "CPU bound clips/s"]
        cpus = os.cpu_count() or 1
        for row, r in zip(rows, results):
            c = r.get("cpu_ms_per_clip") or {}
            server = sum(v for k, v in c.items() if k != "client")
            # the most clips/s this machine's cores could give at this CPU cost per clip, the client elsewhere
            row += [f(c.get(role)) for role in roles] + [f(sum(c.values()) if c else None),
                                                         f(1e3 * cpus / server if server else None)]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in [head, *rows])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", default="registry", help="registry with the bundle to serve (default: registry)")
    p.add_argument("--machine-type", default="slider")
    p.add_argument("--machine-id", default="00")
    p.add_argument("--clips", default=None, help="glob of WAV clips (default: the machine's real test clips)")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds per level (default: 20)")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each level (default: 3)")
    p.add_argument("--config", default=str(ROOT / "serve" / "config.yaml"))
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config args, e.g. max_batch_size=32")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    p.add_argument("--probe-health", action="store_true",
                   help="also poll /healthz every 0.2 s during each level and report its latency (off by default, "
                        "so runs compare with runs made without it)")
    p.add_argument("--batch-clips", type=int, default=0, metavar="N",
                   help="also run every level with requests of N clips each to POST /v1/score/batch (default: off); "
                        "the targets are judged on single-clip requests, the batch rows are printed beside them")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--client", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        client_main(json.loads(args.client))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "platform"))
    import yaml

    from stethoscope.publishing import read_manifest, resolve_scope
    from stethoscope.runtime import init_ray

    scope = resolve_scope(args.registry, args.machine_type, f"id_{args.machine_id}")
    manifest = read_manifest(args.registry, args.machine_type, scope)
    clips = sorted(glob.glob(args.clips)) if args.clips else sorted(
        glob.glob(str(DEFAULT_CLIPS / args.machine_type / "test" / "*.wav")))
    if not clips:
        raise SystemExit(f"no clips found ({args.clips or DEFAULT_CLIPS / args.machine_type / 'test'})")
    overrides = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}

    settings = {**(yaml.safe_load(Path(args.config).read_text())["applications"][0].get("args") or {}), **overrides}
    offline = offline_rate(args.registry, args.machine_type, f"id_{args.machine_id}", clips,
                           max(5.0, args.duration / 2), int(settings.get("max_batch_size", 16)),
                           int(settings.get("torch_threads", 1)))
    init_ray(num_cpus=args.num_cpus)
    from ray import serve

    from serve.app import build_app_from_config

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app_from_config(args.config, registry=str(Path(args.registry).resolve()) if "://" not in args.registry
                                    else args.registry, **overrides), name="stethoscope-bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}/v1/score"
    params = {"machine_type": args.machine_type, "machine_id": args.machine_id}
    # first request loads the bundle (not measured)
    import httpx

    r = httpx.post(url, params=params, content=Path(clips[0]).read_bytes(), headers={"content-type": "audio/wav"},
                   timeout=120)
    r.raise_for_status()
    spec = {"url": url, "params": params, "clips": clips, "levels": args.levels, "duration": args.duration,
            "warmup": args.warmup, "batch": args.batch_clips, "batch_url": f"{url}/batch",
            "health_url": f"http://127.0.0.1:{port}/healthz" if args.probe_health else None}
    load_before = os.getloadavg()
    proc = subprocess.run([sys.executable, __file__, "--client", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    load_after = os.getloadavg()
    serve.shutdown()
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    by_c = {r["concurrency"]: r for r in results if r.get("clips_per_request", 1) == 1}
    checks = {
        "p50_ms@1": (by_c.get(1, {}).get("p50_ms"), "<="),
        "p50_ms@8": (by_c.get(8, {}).get("p50_ms"), "<="),
        "p99_ms@8": (by_c.get(8, {}).get("p99_ms"), "<="),
        "clips_per_s@32": (by_c.get(32, {}).get("clips_per_s"), ">="),
        "errors": (sum(r["errors"] for r in results if r.get("clips_per_request", 1) == 1), "=="),
        "endpoint_vs_offline_%@32": (None if by_c.get(32, {}).get("clips_per_s") is None else
                                     100.0 * by_c[32]["clips_per_s"] / offline["clips_per_s"], ">="),
    }
    verdict = {}
    for k, (v, op) in checks.items():
        target = TARGETS.get(k, 0)
        verdict[k] = {"value": v, "target": f"{op} {target:g}",
                      "met": None if v is None else (v <= target if op == "<=" else v >= target if op == ">=" else v == target)}
    print()
    print(f"registry {args.registry}: {args.machine_type}/{scope} version {manifest['version']}, members "
          f"{[m['name'] for m in manifest['members']]}; {len(clips)} clips; {os.cpu_count()} CPUs; "
          f"load average {load_before[0]:.1f} → {load_after[0]:.1f}")
    print(_table(results))
    print(f"offline scoring of the same clips (decode + Bundle.score_waveforms, batches of {offline['batch']}, "
          f"{offline['torch_threads']} torch thread(s), this process): {offline['clips_per_s']:.1f} clips/s")
    print("targets (single-clip requests to /v1/score):")
    for k, v in verdict.items():
        print(f"  {k}: {v['value'] if v['value'] is None else round(v['value'], 2)} (target {v['target']}) "
              f"{'met' if v['met'] else 'MISSED' if v['met'] is False else 'not measured'}")
    batched = [r for r in results if r.get("clips_per_request", 1) > 1]
    if batched:
        print(f"batch requests ({args.batch_clips} clips each, /v1/score/batch; not what the targets are judged on):")
        for r in batched:
            rate = r["clips_per_s"]
            share = "" if rate is None else f" = {100.0 * rate / offline['clips_per_s']:.0f} % of offline"
            shown = "–" if rate is None else f"{rate:.1f}"
            print(f"  concurrency {r['concurrency']}: {shown} clips/s{share}, {r['errors']} failed request(s)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"serve_load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({
        "registry": args.registry, "machine_type": args.machine_type, "scope": scope, "version": manifest["version"],
        "members": manifest["members"], "clips": clips, "duration_s": args.duration, "warmup_s": args.warmup,
        "config": args.config, "overrides": overrides, "cpus": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": load_after,
        "results": results, "offline": offline, "targets": verdict,
    }, indent=2, default=str) + "\n")
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
