"""Method checkpoints: a folder with ``state.pt`` (torch tensors/containers only) and ``meta.json``.

``meta.json`` holds the method name, its config, its input specs (``inputs``: name → spec, with the log-mel one also
under ``feature_spec`` for readers of single-input checkpoints), the label vocabularies (``vocab``), the seed, the
epoch reached and the per-epoch metric history. ``state.pt`` is loaded with
``torch.load(weights_only=True)``: no pickled Python objects are ever executed from a checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from stethoscope import methods
from stethoscope.data.features import FeatureSpec, input_spec_from_dict, input_spec_to_dict
from stethoscope.data.labels import Vocab
from stethoscope.errors import StethoscopeError

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def save(method: methods.Method, folder: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write ``method``'s state and ``meta`` (plus method, config, inputs, vocab) into ``folder`` (created)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(method.state_dict(), folder / STATE_FILE)
    full = {
        **meta,
        "method": method.name,
        "config": method.config_dict(),
        "inputs": {k: input_spec_to_dict(v) for k, v in method.inputs.items()},
        "vocab": method.vocab.to_dict(),
    }
    try:
        full["feature_spec"] = method.feature_spec.to_dict()
    except AttributeError:
        full.pop("feature_spec", None)
    (folder / META_FILE).write_text(json.dumps(full, indent=2, sort_keys=True, default=str) + "\n")


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise StethoscopeError(f"{folder} is not a stethoscope checkpoint: {META_FILE} is missing")
    return json.loads(path.read_text())


def build(meta: dict[str, Any]) -> methods.Method:
    """A fresh Method from a checkpoint's meta (untrained weights)."""
    cls = methods.get(meta["method"])
    if "inputs" in meta:
        inputs = {k: input_spec_from_dict(v) for k, v in meta["inputs"].items()}
    else:  # a checkpoint from before input specs: one log-mel input
        inputs = FeatureSpec.from_dict(meta["feature_spec"])
    return cls(cls.make_config(meta["config"]), inputs, Vocab.from_dict(meta.get("vocab")))


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
