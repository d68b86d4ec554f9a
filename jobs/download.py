"""Download stage: fetch the official DCASE Task 2 archives from Zenodo, check their MD5s, unpack them.

python jobs/download.py --dataset dcase2020-dev [dcase2020-additional ...] [--machine-types fan valve] --dest DIR
python jobs/download.py --list                      # every dataset part, its Zenodo record and machine types

Each archive's MD5 comes from the Zenodo record's metadata. A partial download (an interrupted run, or a dropped
connection) is resumed with HTTP Range requests. Archives that are already complete are checked and not fetched
again. The clips land in the official baseline's layout, e.g. DIR/dcase2020t2/dev_data/raw/<machine_type>/{train,test}/,
which jobs/ingest.py and jobs/pipeline.py read with --data-root. A manifest is written to DIR/manifests/<dataset>.json.
--base-url (or $STETHOSCOPE_ZENODO_URL) points at another Zenodo-compatible server.
"""

from __future__ import annotations

import argparse

import _common


def _table(header: tuple, rows: list[tuple]) -> None:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def _list(catalog) -> int:
    _table(
        ("dataset", "task", "part", "zenodo record", "verified", "machine types"),
        [(name, e.task, e.part, e.record_id, "yes" if e.verified else "no (cited)", " ".join(e.machine_types))
         for name, e in catalog.items()],
    )
    print("task pages and record sources: platform/stethoscope/data/zenodo_records.yaml")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", nargs="+", metavar="NAME", help="one or more dataset parts, e.g. dcase2020-dev")
    p.add_argument("--machine-types", nargs="+", default=None, metavar="TYPE", help="default: all of the part's")
    p.add_argument("--dest", help="local folder to download and unpack into (created if missing)")
    p.add_argument("--base-url", default=None,
                   help="Zenodo server (default: $STETHOSCOPE_ZENODO_URL or https://zenodo.org)")
    p.add_argument("--retries", type=int, default=5,
                   help="consecutive failed attempts per file before giving up (default: 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default: 60)")
    p.add_argument("--delete-archives", action="store_true", help="delete each archive after unpacking it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--list", action="store_true", help="list the dataset parts and exit")
    p.add_argument("--verbose", action="store_true", help="debug logging, and Ray's INFO logs on the console")
    args = p.parse_args()
    _common.setup_logging(args.verbose)

    from stethoscope.data.download import DownloadConfig, catalog, download, resolve
    from stethoscope.errors import ConfigError

    if args.list:
        return _list(catalog())
    if not args.dataset or not args.dest:
        raise ConfigError("--dataset and --dest are required (or --list); e.g. --dataset dcase2020-dev --dest data")
    for name in args.dataset:  # every name and machine type is checked before anything is fetched
        resolve(name, args.machine_types)
    config = DownloadConfig(
        base_url=args.base_url, timeout_s=args.timeout, max_retries=args.retries,
        progress=not args.no_progress, delete_archives=args.delete_archives,
    )
    results = [download(name, args.dest, args.machine_types, config) for name in args.dataset]

    _table(
        ("dataset", "machine_type", "archive", "MB", "status", "clips", "folder"),
        [(r.dataset, a.machine_type, a.key, f"{a.size / 1e6:.1f}", a.status,
          " ".join(f"{k}={v}" for k, v in a.clips.items()), a.extracted_to)
         for r in results for a in r.archives],
    )
    for r in results:
        print(f"{r.dataset}: data root {r.root}  manifest {r.manifest}")
        for a in r.archives:
            for name in a.unparsed:
                print(f"unparsed {r.root / name}")
    return 0


if __name__ == "__main__":
    _common.run_main(main)
