"""Shared by the job scripts: import path, logging, and one clear error message instead of a traceback."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Under `ray job submit --working-dir .` the package is not installed: use the source root.
if str(ROOT / "platform") not in sys.path:
    sys.path.insert(0, str(ROOT / "platform"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


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


def add_common(parser) -> None:
    parser.add_argument("--store", default="store", help="feature-cache root: a folder or a pyarrow URI (default: store)")
    parser.add_argument("--seed", type=int, default=0, help="run seed, recorded in every artifact (default: 0)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
