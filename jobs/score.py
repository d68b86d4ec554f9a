"""Bulk scoring: score every WAV under a folder or bucket with the published bundles (Ray Data actor pool).

python jobs/score.py --registry registry --input DIR_OR_URI --output OUT [--machine-type fan --machine-id 00]
                     [--actors N] [--batch-size 16] [--num-cpus 1] [--glob '**/*.wav']

Each file goes to a bundle by its path (<machine_type>/<split>/<DCASE 2020 or 2021+ name>.wav), or by --machine-type
and --machine-id / --section for folders of arbitrarily named files: the group's own bundle if published, else the
machine-wide one. Writes under --output (a folder or a pyarrow URI): scores.parquet (one row per file: score,
threshold, decision, each member's raw and standardized score, the bundle scope and version, error), the DCASE CSVs
anomaly_score_* / decision_result_* per machine type and ID / section, and report.json (counts, unroutable and
unreadable files with their reasons, clips/s). A bad file is reported, never fatal: the job exits non-zero only when
the registry is unusable or nothing could be scored. docs/score.md.
"""

from __future__ import annotations

import argparse
import logging

import _common


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", default="registry", help="registry root: a folder or pyarrow URI (default: registry)")
    p.add_argument("--input", required=True, help="folder, pyarrow URI (s3://bucket/prefix) or one file to score")
    p.add_argument("--output", required=True, help="folder or pyarrow URI for the outputs")
    p.add_argument("--machine-type", default=None,
                   help="score every file as this machine type (for files whose paths do not name it)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--machine-id", default=None,
                   help="with --machine-type: the files' machine_id (DCASE 2020), e.g. 00")
    g.add_argument("--section", default=None, help="with --machine-type: the files' section (DCASE 2021+), e.g. 00")
    p.add_argument("--glob", default="**/*.wav",
                   help="which files under --input, relative to it (fsspec glob: ** spans folders; default **/*.wav)")
    p.add_argument("--actors", type=int, default=None,
                   help="actor pool size, one model load per actor per bundle (default: CPUs / --num-cpus)")
    p.add_argument("--batch-size", type=int, default=16, help="clips per actor call (default: 16)")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs per actor, its torch threads (default: 1)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="refuse clips longer than this (s; default: only the decoder's sample limit)")
    p.add_argument("--verbose", action="store_true", help="debug logging, and Ray's INFO logs on the console")
    _common.add_ray_args(p)
    args = p.parse_args()
    _common.setup_logging(args.verbose)

    from stethoscope.errors import ConfigError
    from stethoscope.publishing.bulk import Routing, bulk_score, format_summary
    from stethoscope.runtime import init_ray

    if args.batch_size < 1 or (args.actors is not None and args.actors < 1) or args.num_cpus <= 0:
        raise ConfigError("--batch-size and --actors must be >= 1 and --num-cpus > 0")
    routing = Routing(args.machine_type, args.machine_id, args.section)
    init_ray()
    result = bulk_score(args.registry, args.input, args.output, routing=routing, glob=args.glob, actors=args.actors,
                        batch_size=args.batch_size, num_cpus=args.num_cpus, max_seconds=args.max_seconds)
    logging.getLogger("score").info("wrote %s", ", ".join(["scores.parquet", "report.json"] + result.csv_files))
    print()
    print(format_summary(result))
    return 0 if result.n_scored else 1


if __name__ == "__main__":
    _common.run_main(main)
