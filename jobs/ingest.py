"""Ingest stage: index a DCASE tree and featurize one machine type (or all) into the Parquet feature cache.

python jobs/ingest.py [--data-root ROOT] [--machine-type slider] [--method autoencoder] [--store store]
Prints the cache folder and the ingest report (every entry under the data root that was not ingested, with its
reason; resampled clips).
"""

from __future__ import annotations

import argparse
import json

import _common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(_common.ROOT.parent / "shared/data/dcase2020_task2_dev_sample"))
    p.add_argument("--machine-type", default=None, help="one machine type (default: every machine type)")
    p.add_argument("--ids", nargs="*", default=None)
    p.add_argument("--method", default="autoencoder", help="its paper's FeatureSpec is used")
    p.add_argument("--feature", nargs="*", default=[], metavar="KEY=VALUE", help="FeatureSpec overrides, e.g. n_mels=64")
    p.add_argument("--lenient", action="store_true")
    _common.add_common(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)

    from stethoscope import methods
    from stethoscope.data.index import index, select, select_ids
    from stethoscope.data.ingest import ingest
    from stethoscope.runtime import init_ray
    from stethoscope.stages.ingest import input_specs_for

    cls = methods.get(args.method)
    spec = input_specs_for(args.method, cls.make_config({}), _common.parse_overrides(args.feature))
    idx = index(args.data_root, lenient=args.lenient)
    table = idx.table
    if args.machine_type:
        table = select_ids(select(table, machine_type=args.machine_type), args.ids)
    init_ray()
    res = ingest(table, args.store, spec, not_indexed=idx.skipped)
    summary = {k: res.report[k] for k in ("n_input", "n_ingested", "n_skipped", "n_not_indexed", "input_columns")}
    print(json.dumps({**summary, "cached": res.cached, "features": res.features_path}, indent=2))
    for s in res.skipped:
        print(f"skipped ({s['stage']}) {s['path']}: {s['reason']} {s.get('detail', '')}")
    print(f"report: {res.root}/ingest_report.json")
    return 0


if __name__ == "__main__":
    _common.run_main(main)
