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
    """``["epochs=20", "lr=0.001"]`` → ``{"epochs": 20, "lr": 0.001}`` (values parsed as YAML scalars)."""
    import yaml

    from stethoscope.errors import ConfigError

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
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
    parser.add_argument("--verbose", action="store_true", help="debug logging")
