"""All stages in order: index → ingest (Ray Data) → train (Ray Train) → score → evaluate → publish.

Local:    python jobs/pipeline.py [--data-root ../shared/data/dcase2020_task2_dev_sample] [--machine-type slider]
Cluster:  ray job submit --working-dir . -- python jobs/pipeline.py ...   (RAY_ADDRESS set)
Prints a per-ID AUC/pAUC table and the run folder; writes metrics.json, results.md, score CSVs and plots there,
then publishes the model to the registry (--registry, default: registry) so `serve run serve/config.yaml` can serve it.
"""

from __future__ import annotations

import argparse

import _common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(_common.ROOT.parent / "shared/data/dcase2020_task2_dev_sample"),
                   help="DCASE tree (2020 or 2021-2024 layout); default: ../shared/data/dcase2020_task2_dev_sample")
    p.add_argument("--machine-type", default="slider")
    p.add_argument("--ids", nargs="*", default=None, help="machine_ids (2020) or sections (2021+), e.g. 00 02")
    p.add_argument("--method", default="autoencoder")
    p.add_argument("--epochs", type=int, default=None, help="override the method's epochs (paper default otherwise)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="Config overrides, e.g. lr=0.001")
    p.add_argument("--config", default=None, help="YAML Config file (e.g. a tuned best config)")
    p.add_argument("--runs", default="runs", help="parent folder of the run folder (default: runs)")
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers")
    p.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto")
    p.add_argument("--lenient", action="store_true", help="skip unparseable file names and report them")
    p.add_argument("--registry", default="registry",
                   help="publish the trained model to this registry (folder or URI; default: registry); "
                        "'none' skips publishing")
    _common.add_common(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)

    from stethoscope.pipeline import run
    from stethoscope.config import load_config_file

    config = load_config_file(args.config, args.method) if args.config else {}
    config.update(_common.parse_overrides(args.set))
    if args.epochs is not None:
        config["epochs"] = args.epochs
    res = run(
        args.data_root,
        machine_type=args.machine_type,
        machine_ids=args.ids,
        method=args.method,
        config=config,
        store=args.store,
        runs_root=args.runs,
        seed=args.seed,
        num_workers=args.num_workers,
        use_gpu={"auto": None, "yes": True, "no": False}[args.gpu],
        lenient=args.lenient,
        registry=None if args.registry.lower() in ("", "none") else args.registry,
    )
    print()
    print(res.table)
    print(f"\nrun folder: {res.run_dir}")
    return 0


if __name__ == "__main__":
    _common.run_main(main)
