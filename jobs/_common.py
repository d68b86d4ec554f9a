"""Shared by the job scripts: import path, logging, the Ray address (--address), one clear error message."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Under `ray job submit --working-dir .` the package is not installed: use the source root.
if str(ROOT / "platform") not in sys.path:
    sys.path.insert(0, str(ROOT / "platform"))


def setup_logging(verbose: bool = False) -> None:
    """Our log lines at INFO (``--verbose``: DEBUG) on stderr, and Ray's INFO lines off the console unless
    ``--verbose`` (:func:`stethoscope.runtime.quiet_ray_output`), so a job ends with its result table on stdout."""
    from stethoscope.runtime import quiet_ray_output

    quiet_ray_output(verbose)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_main(main) -> None:
    """Run ``main()``; a user error (StethoscopeError) prints one line and exits with status 2."""
    from stethoscope.errors import StethoscopeError

    try:
        code = main()
    except StethoscopeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def parse_overrides(pairs: list[str] | None) -> dict:
    """``["epochs=20", "lr=2e-4"]`` → ``{"epochs": 20, "lr": 0.0002}`` (values parsed as YAML with the package's
    loader, so ``2e-4`` and ``.5`` are floats)."""
    from stethoscope.config import parse_scalar
    from stethoscope.errors import ConfigError

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        out[key.strip()] = parse_scalar(value)
    return out


class _AddressAction(argparse.Action):
    """``--address ADDR`` sets ``RAY_ADDRESS`` as it is parsed, so every later ``init_ray()`` of the job (including
    the ones inside the pipeline stages) joins that cluster."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        os.environ["RAY_ADDRESS"] = values


def add_ray_args(parser) -> None:
    """``--address``: join a running Ray cluster instead of starting an embedded one (stethoscope.runtime.init_ray)."""
    parser.add_argument(
        "--address", action=_AddressAction, default=None, metavar="HOST:PORT|auto",
        help="join the running Ray cluster whose GCS is at HOST:PORT ('auto': the one `ray start` last started on "
             "this host) instead of starting an embedded Ray; same as setting RAY_ADDRESS (default: RAY_ADDRESS, "
             "set by `ray job submit`, else an embedded Ray on 127.0.0.1)")


def add_common(parser) -> None:
    add_ray_args(parser)
    parser.add_argument("--store", default="store", help="feature-cache root: a folder or a pyarrow URI (default: store)")
    parser.add_argument("--seed", type=int, default=0, help="run seed, recorded in every artifact (default: 0)")
    parser.add_argument("--verbose", action="store_true", help="debug logging, and Ray's INFO logs on the console")


def add_scope_arg(parser) -> None:
    """``--scope per_id|per_machine_type|all_machine_types`` (default: the method's ``default_scope``)."""
    parser.add_argument("--scope", choices=["per_id", "per_machine_type", "all_machine_types"], default=None,
                        help="what one model is trained on: each machine ID / section, each machine type, or every "
                             "selected machine type at once (default: the method's default_scope)")


def add_split_args(parser, *, default_fraction: float = 0.5) -> None:
    """The run's one validation split (stethoscope.splits): a file list, 'all', or a seeded stratified split."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--validation-split", default=None, metavar="FILE|all",
                   help="validation clips: a file list (one path or file name per line), or 'all' labelled clips "
                        "(nothing held out: e.g. a development set whose numbers are reported on an evaluation set)")
    g.add_argument("--val-fraction", type=float, default=default_fraction,
                   help=f"otherwise a seeded split stratified by machine type, ID/section, domain and label: this share "
                        f"of the labelled clips validates, the rest is the held-out test part (default {default_fraction})")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the stratified split, independent of --seed so runs with several training seeds "
                             "share one split (default: 0)")


def validation_spec(args):
    from stethoscope.splits import ValidationSpec

    return ValidationSpec(file=args.validation_split, fraction=args.val_fraction, seed=args.split_seed)


def config_overrides(args, method: str) -> tuple[dict, dict | None]:
    """Config overrides from ``--config FILE`` (a tuned best_config.yaml or a flat mapping), then ``--set``, then
    ``--epochs`` (each wins over the one before; a ``--preset`` is applied under all of them). Returns
    ``(overrides, the validation split the config file points to as {"file", "sha256"}, or None)``."""
    from stethoscope.config import load_config_file, config_file_split

    config: dict = {}
    split = None
    if getattr(args, "config", None):
        config.update(load_config_file(args.config, method))
        split = config_file_split(args.config)
    config.update(parse_overrides(args.set))
    if getattr(args, "epochs", None) is not None:
        config["epochs"] = args.epochs
    return config, split
