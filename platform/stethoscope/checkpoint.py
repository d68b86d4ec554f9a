"""Method checkpoints: a folder with ``state.pt`` (torch tensors/containers only) and ``meta.json``.

``meta.json`` holds the method name, its config, the FeatureSpec, the seed, the epoch reached, the class names
(machine_ids or sections) and the per-epoch metric history. ``state.pt`` is loaded with
``torch.load(weights_only=True)``: no pickled Python objects are ever executed from a checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from stethoscope import methods
from stethoscope.data.features import FeatureSpec
from stethoscope.errors import StethoscopeError

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def save(method: methods.Method, folder: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write ``method``'s state and ``meta`` (plus method/config/feature_spec) into ``folder`` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(method.state_dict(), folder / STATE_FILE)
    full = {
        **meta,
        "method": method.name,
        "config": method.config_dict(),
        "feature_spec": method.feature_spec.to_dict(),
        "num_classes": method.num_classes,
    }
    (folder / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True, default=str) + "\n")


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise StethoscopeError(f"{folder} is not a stethoscope checkpoint: {META_FILE} is missing")
    return json.loads(path.read_text())


def build(meta: dict[str, Any]) -> methods.Method:
    """A fresh Method from a checkpoint's meta (untrained weights)."""
    cls = methods.get(meta["method"])
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    return cls(cls.make_config(meta["config"]), spec, int(meta.get("num_classes", 1)))


def load(folder: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[methods.Method, dict[str, Any]]:
    """Rebuild the Method saved in ``folder`` and load its state. Returns ``(method, meta)``.

    Raises:
        StethoscopeError: the folder is not a checkpoint or its files are missing.
    """
    meta = read_meta(folder)
    state_path = Path(folder) / STATE_FILE
    if not state_path.is_file():
        raise StethoscopeError(f"{folder} is not a complete checkpoint: {STATE_FILE} is missing")
    method = build(meta)
    state = torch.load(state_path, map_location=device, weights_only=True)
    method.load_state_dict(state)
    method.to(device)
    method.eval()
    return method, meta
