"""Paths or URIs for every stage: a local folder by default, or any pyarrow filesystem URI (``s3://…``, ``gs://…``).

Small helpers so that reports, manifests and markers are written the same way as Ray Data's Parquet shards.

Object storage (``s3://bucket/prefix``) goes through :class:`pyarrow.fs.S3FileSystem`, configured from the
environment only, never from files in the repository (docs/storage.md):

- credentials: the AWS SDK's default chain: ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``),
  or ``AWS_PROFILE`` and ``~/.aws/credentials``, a web identity token, a container or instance role;
- a non-AWS server (MinIO, Ceph, moto): ``AWS_ENDPOINT_URL`` (``http://host:port``; the pinned pyarrow 26.0.1 reads it);
- ``AWS_DEFAULT_REGION`` / ``AWS_REGION`` where the server needs one.

Ray workers resolve URIs themselves (Ray Data tasks, Ray Train workers, Serve replicas), so every node needs the same
variables: an embedded ``ray.init()`` passes the driver's environment on; on a cluster set them on the nodes or in the
job's runtime_env (README, "Object storage"). Buckets are never created: a missing bucket is an error
(:func:`check_access`).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import pyarrow.fs as pafs

from stethoscope.errors import StethoscopeError

#: Environment variables that configure object storage (their names only are ever shown in messages).
CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                        "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                        "AWS_CONTAINER_CREDENTIALS_FULL_URI")
ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL"


class StorageError(StethoscopeError, OSError):
    """A URI whose filesystem cannot be opened, whose bucket does not exist, or that the credentials cannot reach.
    The message names the URI, what it is for, and the environment variables that configure access. An OSError too,
    so code that handles unreadable storage (a registry listing, run discovery) handles it alike."""


def is_uri(path: str | os.PathLike) -> bool:
    """True for a filesystem URI (``s3://…``), False for a local path."""
    return "://" in str(path)


def resolve(uri: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or a URI. Local paths are made absolute.

    Raises:
        StorageError: pyarrow cannot make a filesystem of the URI (unknown scheme, malformed URI).
    """
    uri = str(uri)
    if is_uri(uri):
        try:
            return pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as exc:  # pyarrow.ArrowInvalid is a ValueError
            raise StorageError(f"{uri}: pyarrow cannot open its filesystem: {exc}") from None
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _environment_hint() -> str:
    shown = [f"{v} is {'set' if os.environ.get(v) else 'unset'}"
             for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", ENDPOINT_VARIABLE)]
    return "; ".join(shown)


def _credentials_configured() -> bool | None:
    """True if the environment names AWS credentials (keys, a profile, a credentials file, a web identity or a
    container role); None if none is named but the instance metadata service may still hold a role (it is not
    asked here: off AWS that query hangs for seconds); False if none is named and ``AWS_EC2_METADATA_DISABLED``
    rules the metadata service out."""
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return True
    if any(os.environ.get(v) for v in CREDENTIAL_VARIABLES[3:]):
        return True
    home = os.path.expanduser("~")
    files = [os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials"),
             os.environ.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config")]
    if any(os.path.isfile(f) for f in files):
        return True
    return False if os.environ.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true" else None


def check_access(uri: str | os.PathLike, what: str = "path") -> None:
    """Fail early, before any stage runs, if ``uri`` cannot be used: for an ``s3://`` URI, no credentials in the
    environment (when the instance metadata service is ruled out, see :func:`_credentials_configured`), a bucket
    that does not exist, or a server that refuses the request. A local path is always accepted (its folders are made
    when written).

    Args:
        what: what the URI is for, as the user named it (``--store``, ``--runs``, ``--registry``).
    Raises:
        StorageError: the message names ``what``, the URI, the bucket and which AWS variables are set (never their
            values).
    """
    uri = str(uri)
    if not is_uri(uri):
        return
    fs, path = resolve(uri)
    if fs.type_name != "s3":
        return
    bucket = path.split("/", 1)[0]
    if _credentials_configured() is False:
        raise StorageError(
            f"{what} {uri}: no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            f" in the environment of the driver and of every Ray node ({_environment_hint()})")
    try:
        info = fs.get_file_info(bucket)
    except OSError as exc:
        raise StorageError(f"{what} {uri}: the S3 server refused access to bucket {bucket!r}: {exc} "
                           f"({_environment_hint()})") from None
    if info.type == pafs.FileType.NotFound:
        endpoint = os.environ.get(ENDPOINT_VARIABLE) or "AWS"
        raise StorageError(f"{what} {uri}: bucket {bucket!r} does not exist at {endpoint}; create it first "
                           "(stethoscope never creates buckets)")


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


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to a file or object (its folder is created; an existing one is replaced)."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as fh:
        fh.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as fh:
        return fh.read()


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


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


def copy_tree(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy every file under ``src`` to the same relative path under ``dst`` (either may be a local folder or a URI;
    files already at ``dst`` are overwritten, others are kept). ``pyarrow.fs.copy_files``, multithreaded.

    Raises:
        StorageError: ``src`` does not exist, or a file cannot be read or written (the message names both).
    """
    sfs, spath = resolve(src)
    dfs, dpath = resolve(dst)
    if sfs.get_file_info(spath).type == pafs.FileType.NotFound:
        raise StorageError(f"cannot copy {src}: it does not exist")
    try:
        dfs.create_dir(dpath, recursive=True)
        pafs.copy_files(spath, dpath, source_filesystem=sfs, destination_filesystem=dfs, use_threads=True)
    except OSError as exc:
        raise StorageError(f"copying {src} to {dst} failed: {exc}") from None


def download_tree(uri: str | os.PathLike, local: str | os.PathLike, skip_dirs: tuple[str, ...] = ()) -> None:
    """Copy every file under ``uri`` (a URI or a folder) to the same relative path under the local folder ``local``,
    leaving out files inside any folder named in ``skip_dirs`` (e.g. Ray Train's ``train``).

    Raises:
        StorageError: ``uri`` does not exist or a file cannot be read (the message names the URI).
    """
    fs, path = resolve(uri)
    path = path.rstrip("/")
    try:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise StorageError(f"cannot download {uri}: it does not exist")
        for info in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
            relative = info.path[len(path):].lstrip("/")
            if info.type != pafs.FileType.File or set(relative.split("/")[:-1]) & set(skip_dirs):
                continue
            target = os.path.join(str(local), *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with fs.open_input_stream(info.path) as src, open(target, "wb") as dst:
                dst.write(src.read())
    except StorageError:
        raise
    except OSError as exc:
        raise StorageError(f"downloading {uri} to {local} failed: {exc}") from None


def staging_folder(prefix: str = "stethoscope-") -> str:
    """A new empty local folder under ``$STETHOSCOPE_STAGING`` (default: the system temp folder), where work bound
    for a URI is written before it is uploaded."""
    root = os.environ.get("STETHOSCOPE_STAGING") or None
    if root:
        os.makedirs(root, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=root)
