"""Paths or URIs for every stage: a local folder by default, or any pyarrow filesystem URI (``s3://…``, ``gs://…``).

Small helpers so that reports, manifests and markers are written the same way as Ray Data's Parquet shards.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow.fs as pafs


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or a URI. Local paths are made absolute."""
    uri = str(uri)
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(base: str | os.PathLike, *parts: str) -> str:
    base = str(base)
    if "://" in base:
        return "/".join([base.rstrip("/"), *parts])
    return os.path.join(os.path.abspath(base), *parts)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def write_text(uri: str, text: str) -> None:
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(text.encode())


def read_text(uri: str) -> str:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as fh:
        return fh.read().decode()


def write_json(uri: str, obj: Any) -> None:
    write_text(uri, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def listdir(uri: str) -> list[str]:
    """Base names of the entries directly under ``uri`` (empty if it does not exist)."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))
