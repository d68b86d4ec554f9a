"""Download the official DCASE Task 2 archives from Zenodo, check them and unpack them into the official layout.

The record IDs and archive names come from ``zenodo_records.yaml``, next to this module. Each entry cites the DCASE
task page and the sources of its record ID. Nothing else is stored there. Each archive's size, MD5 and link come
from the record's metadata in the Zenodo REST API (``GET <base_url>/api/records/<record_id>``, fields
``files[].key``, ``files[].size``, ``files[].checksum`` = ``"md5:<hex>"`` and ``files[].links.self``), and they are
read again on every run.

What :func:`download` does, for each requested machine type:

1. If the archive was unpacked before and every unpacked file is still there at its recorded size, nothing is
   fetched. The archive's MD5 was checked when it was unpacked and is recorded beside it.
2. Else, if the archive is on disk, its MD5 is checked. If it matches, it is not downloaded again; if not, it is
   deleted and downloaded again.
3. Else it is downloaded to ``<name>.part`` with a tqdm progress bar. A partial file left by an interrupted run is
   resumed with an HTTP ``Range`` request. So is a connection that drops mid-file, up to ``max_retries`` times in
   a row without progress. A server that ignores ``Range`` (answers 200) makes the download start over. The MD5 of
   the complete file must equal the record's. If it does not, the file is deleted and :class:`ChecksumError` is raised.
4. The archive is unpacked into ``<dest>/<root>/<machine_type>/...``. That is the official baseline's layout,
   which :func:`stethoscope.data.index.index` reads. Every ``.wav`` member is parsed with the index grammars, and the
   clip counts and any unparsed names go into the manifest.
5. ``<dest>/manifests/<dataset>.json`` is rewritten (atomically) after each archive, so an interrupted run keeps
   what it finished.

Layout under ``dest``::

    archives/<record_id>/<archive>                 the checked archive (removed after unpacking with delete_archives)
    archives/<record_id>/<archive>.part            a partial download, resumed by the next run
    archives/<record_id>/<archive>.extracted.json  the archive's MD5 and every unpacked file with its size
    <root>/<machine_type>/{train,test}/*.wav       e.g. dcase2020t2/dev_data/raw/fan/train/normal_id_00_00000000.wav
    manifests/<dataset>.json                       the manifest (see :func:`download`)

Sources: Koizumi et al., "Description and discussion on DCASE2020 Challenge Task2", arXiv:2006.05822 (data, §3),
and the later task descriptions. The task pages and record sources are cited per entry in ``zenodo_records.yaml``.
The layout is that of the official baseline (github.com/nttcslab/dcase2023_task2_baseline_ae, data_download_*.sh).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urljoin

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from stethoscope.data.index import parse_path
from stethoscope.errors import ConfigError, DataError

__all__ = [
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "ArchiveResult",
    "ChecksumError",
    "DatasetEntry",
    "DownloadConfig",
    "DownloadError",
    "DownloadResult",
    "RemoteFile",
    "catalog",
    "download",
    "download_file",
    "extract_archive",
    "fetch_record",
    "record_files",
    "resolve",
]

logger = logging.getLogger(__name__)

#: Where the Zenodo REST API lives unless ``DownloadConfig.base_url`` or the environment variable says otherwise.
DEFAULT_BASE_URL = "https://zenodo.org"
#: Environment variable that overrides :data:`DEFAULT_BASE_URL` (a mirror, or a local server in tests).
BASE_URL_ENV = "STETHOSCOPE_ZENODO_URL"
MANIFEST_FORMAT = 1
_CATALOG_FILE = "zenodo_records.yaml"
_RETRY_STATUS = {429, 500, 502, 503, 504}
_MAX_RETRY_AFTER_S = 60.0
_HASH_CHUNK = 1 << 20


class DownloadError(DataError):
    """A download failed: HTTP error status, a file missing from the record, a bad archive, dropped connections."""


class ChecksumError(DownloadError):
    """A downloaded file's MD5 differs from the record's; the file has been deleted.

    Attributes:
        path: the deleted file. expected / actual: hex MD5 digests.
    """

    def __init__(self, path: Path, expected: str, actual: str, url: str):
        self.path, self.expected, self.actual = Path(path), expected, actual
        super().__init__(
            f"MD5 mismatch for {self.path.name} from {url}: the record says {expected}, the downloaded file has "
            f"{actual}. The file was deleted; run again to download it afresh"
        )


# --------------------------------------------------------------------------------------------------------------------
# the catalog (zenodo_records.yaml)


class DatasetEntry(BaseModel):
    """One dataset part in ``zenodo_records.yaml`` (see that file's header for the fields)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = ""
    task: str
    part: Literal["dev", "additional", "eval"]
    task_page: str = Field(pattern=r"^https://dcase\.community/challenge20\d\d/task-[a-z0-9-]+$")
    record_id: str = Field(pattern=r"^[0-9]+$")
    verified: bool
    sources: list[str] = Field(min_length=1)
    root: str
    files: dict[str, str] = Field(min_length=1)

    @field_validator("root")
    @classmethod
    def _relative_root(cls, v: str) -> str:
        p = PurePosixPath(v)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise ValueError(f"root {v!r} must be a relative folder without '..'")
        return v

    @field_validator("files")
    @classmethod
    def _archive_names(cls, v: dict[str, str]) -> dict[str, str]:
        for machine_type, key in v.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", str(machine_type)):
                raise ValueError(f"machine type {machine_type!r} is not a plain folder name")
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.zip", key):
                raise ValueError(f"archive name {key!r} (machine type {machine_type}) is not a plain .zip name")
        return v

    @property
    def machine_types(self) -> list[str]:
        return list(self.files)


def catalog(path: str | os.PathLike | None = None) -> dict[str, DatasetEntry]:
    """Load and validate the dataset catalog.

    Args:
        path: a YAML file in the ``zenodo_records.yaml`` format (default: the one shipped with this module).
    Returns:
        ``{dataset name: DatasetEntry}``, e.g. ``"dcase2020-dev"``.
    Raises:
        ConfigError: the file is missing, is not YAML, or an entry has an unknown or invalid field (named).
    """
    try:
        source = Path(path) if path else resources.files("stethoscope.data").joinpath(_CATALOG_FILE)
        text = source.read_text()
    except OSError as exc:
        raise ConfigError(f"dataset catalog {path or _CATALOG_FILE!r} cannot be read: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"dataset catalog {path or _CATALOG_FILE!r} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != 1 or not isinstance(raw.get("datasets"), dict):
        raise ConfigError(f"dataset catalog {path or _CATALOG_FILE!r}: expected 'format: 1' and a 'datasets' mapping")
    out = {}
    for name, fields in raw["datasets"].items():
        if not isinstance(fields, dict):
            raise ConfigError(f"dataset catalog entry {name!r}: expected a mapping of fields")
        try:
            out[name] = DatasetEntry(name=name, **fields)
        except ValidationError as exc:
            raise ConfigError(f"dataset catalog entry {name!r} is invalid:\n{exc}") from exc
    return out


def resolve(dataset: str, machine_types: Sequence[str] | None = None) -> tuple[DatasetEntry, list[str]]:
    """The catalog entry of ``dataset`` and the machine types to fetch (all of them when ``machine_types`` is None).

    Raises:
        ConfigError: an unknown dataset (the message lists every known one) or a machine type the dataset does not
            have (the message lists the dataset's machine types).
    """
    entries = catalog()
    if dataset not in entries:
        raise ConfigError(f"unknown dataset {dataset!r}; expected one of: {', '.join(entries)}")
    entry = entries[dataset]
    if not machine_types:
        return entry, entry.machine_types
    unknown = [m for m in machine_types if m not in entry.files]
    if unknown:
        raise ConfigError(
            f"dataset {dataset!r} has no machine type {', '.join(map(repr, unknown))}; "
            f"expected one or more of: {' '.join(entry.machine_types)}"
        )
    return entry, list(dict.fromkeys(machine_types))


# --------------------------------------------------------------------------------------------------------------------
# configuration and results


@dataclasses.dataclass(frozen=True)
class DownloadConfig:
    """How to download. All values are ours (no paper gives them).

    Fields:
        base_url: the Zenodo server; None = ``$STETHOSCOPE_ZENODO_URL`` or :data:`DEFAULT_BASE_URL`. The record is
            ``<base_url>/api/records/<record_id>``; the files come from the links the record gives.
        timeout_s: seconds to wait for a connection or for the next bytes of a response.
        max_retries: consecutive failed attempts per file (dropped connection, timeout, HTTP 429/5xx) before
            giving up; an attempt that receives any bytes resets the count.
        retry_wait_s: wait before retry k is ``k * retry_wait_s`` seconds (or the server's Retry-After, max 60 s).
        progress: show a tqdm progress bar per file.
        delete_archives: delete each archive once it is unpacked (a later run then relies on the unpacked files).
    """

    base_url: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 5
    retry_wait_s: float = 2.0
    progress: bool = True
    delete_archives: bool = False

    def __post_init__(self):
        if self.base_url is not None and not re.match(r"^https?://[^/]+", self.base_url):
            raise ConfigError(f"base_url = {self.base_url!r}; expected an http(s) URL such as {DEFAULT_BASE_URL}")
        if not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise ConfigError(f"timeout_s = {self.timeout_s!r}; expected a positive number of seconds")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ConfigError(f"max_retries = {self.max_retries!r}; expected an integer >= 0")
        if not (isinstance(self.retry_wait_s, (int, float)) and self.retry_wait_s >= 0):
            raise ConfigError(f"retry_wait_s = {self.retry_wait_s!r}; expected a number of seconds >= 0")

    def resolved_base_url(self) -> str:
        url = self.base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
        if not re.match(r"^https?://[^/]+", url):
            raise ConfigError(f"{BASE_URL_ENV} = {url!r}; expected an http(s) URL such as {DEFAULT_BASE_URL}")
        return url.rstrip("/")


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file of a Zenodo record: ``key`` (file name), ``size`` (bytes), ``md5`` (hex) and ``url`` (download)."""

    key: str
    size: int
    md5: str
    url: str


@dataclasses.dataclass
class ArchiveResult:
    """What happened to one machine type's archive (also its entry in the manifest).

    ``status``: ``downloaded`` (fetched in full by this run), ``resumed`` (this run continued a partial file or a
    dropped connection with Range requests), ``verified`` (already on disk, MD5 checked, not fetched) or
    ``up-to-date`` (unpacked before; nothing fetched or unpacked). ``range_requests``: Range requests answered 206.
    ``clips``: ``{"<split>/<label>": n}`` of the unpacked ``.wav`` files (label ``unlabelled`` for evaluation clips).
    ``unparsed``: ``.wav`` members whose names match no index grammar. ``skipped_members``: archive members not
    unpacked, with the reason (e.g. macOS metadata).
    """

    machine_type: str
    key: str
    url: str
    size: int
    md5: str
    status: str
    range_requests: int
    archive: str | None
    extracted_to: str
    n_files: int
    clips: dict[str, int]
    unparsed: list[str]
    skipped_members: list[list[str]]


@dataclasses.dataclass
class DownloadResult:
    """``root``: the unpacked tree (``<dest>/<entry.root>``, pass it to ``index``); ``manifest``: its path."""

    dataset: str
    root: Path
    manifest: Path
    archives: list[ArchiveResult]


# --------------------------------------------------------------------------------------------------------------------
# HTTP


def _client(config: DownloadConfig) -> httpx.Client:
    from stethoscope import __version__

    return httpx.Client(
        timeout=httpx.Timeout(config.timeout_s),
        follow_redirects=True,
        headers={"User-Agent": f"stethoscope/{__version__} (dataset download)", "Accept-Encoding": "identity"},
    )


class _Retry(Exception):
    """A failure worth retrying: a retryable HTTP status or a stream that ended early."""

    def __init__(self, message: str, wait_s: float | None = None):
        super().__init__(message)
        self.wait_s = wait_s


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("Retry-After", "")
    return min(float(value), _MAX_RETRY_AFTER_S) if value.isdigit() else None


def _status_error(resp: httpx.Response, what: str) -> DownloadError:
    try:
        body = resp.read().decode("utf-8", "replace").strip().replace("\n", " ")
    except httpx.HTTPError:
        body = ""
    detail = f": {body[:300]}" if body else ""
    status = f"HTTP {resp.status_code} {resp.reason_phrase}"
    return DownloadError(f"{what}: GET {resp.request.url} answered {status}{detail}")


def _wait(config: DownloadConfig, attempt: int, exc: Exception) -> None:
    wait_s = getattr(exc, "wait_s", None)
    time.sleep(wait_s if wait_s is not None else config.retry_wait_s * attempt)


def fetch_record(client: httpx.Client, base_url: str, record_id: str, config: DownloadConfig) -> tuple[str, dict]:
    """GET the record's metadata from the Zenodo REST API.

    Returns:
        ``(record_url, record_json)`` with ``record_url = <base_url>/api/records/<record_id>``.
    Raises:
        DownloadError: an HTTP error status (a 404 names the record ID as possibly wrong), a body that is not JSON,
            or ``max_retries`` + 1 failed attempts (connection errors, HTTP 429/5xx).
    """
    url = f"{base_url}/api/records/{record_id}"
    attempt = 0
    while True:
        try:
            resp = client.get(url, headers={"Accept": "application/json"})
            if resp.status_code in _RETRY_STATUS:
                raise _Retry(f"HTTP {resp.status_code} {resp.reason_phrase}", _retry_after(resp))
            if resp.status_code == 404:
                what = f"Zenodo record {record_id} not found (is the record ID in {_CATALOG_FILE} right?)"
                raise _status_error(resp, what)
            if resp.status_code >= 400:
                raise _status_error(resp, f"Zenodo record {record_id}")
            try:
                return url, resp.json()
            except ValueError as exc:
                raise DownloadError(f"Zenodo record {record_id}: {url} did not return JSON ({exc})") from exc
        except (httpx.TransportError, _Retry) as exc:
            attempt += 1
            if attempt > config.max_retries:
                raise DownloadError(
                    f"Zenodo record {record_id}: GET {url} failed {attempt} times, last: {exc}"
                ) from exc
            logger.warning("GET %s failed (%s); retry %d of %d", url, exc, attempt, config.max_retries)
            _wait(config, attempt, exc)


def record_files(record: dict, record_url: str) -> dict[str, RemoteFile]:
    """``{key: RemoteFile}`` from a Zenodo record JSON (``files[].key / size / checksum / links.self``).

    A relative ``links.self`` is resolved against ``record_url``.

    Raises:
        DownloadError: ``files`` is missing or empty (e.g. a restricted record), or an entry lacks a field or has a
            checksum that is not ``md5:<32 hex digits>`` (the message names the file and field).
    """
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, list) or not files:
        raise DownloadError(f"{record_url}: the record lists no files (restricted or embargoed record?)")
    out = {}
    for i, f in enumerate(files):
        key = f.get("key") if isinstance(f, dict) else None
        if not isinstance(key, str) or not key:
            raise DownloadError(f"{record_url}: files[{i}] has no 'key'")
        size, checksum = f.get("size"), f.get("checksum")
        link = (f.get("links") or {}).get("self")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise DownloadError(f"{record_url}: file {key!r} has no valid 'size' (got {size!r})")
        m = re.fullmatch(r"md5:([0-9a-fA-F]{32})", checksum or "")
        if not m:
            raise DownloadError(
                f"{record_url}: file {key!r} has checksum {checksum!r}; expected 'md5:<32 hex digits>'"
            )
        if not isinstance(link, str) or not link:
            raise DownloadError(f"{record_url}: file {key!r} has no 'links.self'")
        out[key] = RemoteFile(key=key, size=size, md5=m.group(1).lower(), url=urljoin(record_url, link))
    return out


def _md5_of(path: Path):
    """A running ``hashlib.md5`` over the whole file (so a resumed download can go on updating it)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_CHUNK):
            h.update(block)
    return h


def download_file(client: httpx.Client, remote: RemoteFile, path: Path, config: DownloadConfig) -> tuple[str, int]:
    """Download ``remote`` to ``path``, resuming ``path.part`` if present, and check its MD5.

    Each network read is appended to ``<path>.part`` and flushed at once, so a killed process keeps every byte it
    had received. When the connection drops or the stream ends early, the next attempt sends ``Range: bytes=<n>-``.
    A 206 answer must start at byte n (its Content-Range is checked), and a 200 answer restarts from byte 0.

    Returns:
        ``(status, range_requests)``: status ``"downloaded"`` or ``"resumed"`` (some bytes came from a Range request).
    Raises:
        ChecksumError: the complete file's MD5 is not the record's (the file has been deleted).
        DownloadError: an HTTP error status (4xx other than 429), more bytes than the record's size, a bad
            Content-Range, or ``max_retries`` + 1 consecutive failed attempts (the partial file is kept for a rerun).
    """
    part = path.with_name(path.name + ".part")
    path.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if offset > remote.size:
        logger.warning(
            "%s: partial file is larger than the record's size (%d > %d); starting over", part, offset, remote.size
        )
        part.unlink()
        offset = 0
    hasher = _md5_of(part) if offset else hashlib.md5(usedforsecurity=False)
    if offset:
        logger.info("%s: resuming at byte %d of %d", remote.key, offset, remote.size)
    range_requests = 0
    failures = 0
    bar = tqdm(
        total=remote.size, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=remote.key,
        disable=not config.progress, dynamic_ncols=True,
    )
    with open(part, "ab") as fh, bar:
        while offset < remote.size:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            try:
                with client.stream("GET", remote.url, headers=headers) as resp:
                    if resp.status_code in _RETRY_STATUS:
                        raise _Retry(f"HTTP {resp.status_code} {resp.reason_phrase}", _retry_after(resp))
                    if resp.status_code >= 400:
                        raise _status_error(resp, f"{remote.key}")
                    if offset and resp.status_code == 206:
                        m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
                        if not m or int(m.group(1)) != offset:
                            raise DownloadError(
                                f"{remote.key}: asked for bytes {offset}- but the server sent Content-Range "
                                f"{resp.headers.get('Content-Range')!r}"
                            )
                        range_requests += 1
                    elif resp.status_code != 200:
                        raise DownloadError(f"{remote.key}: unexpected HTTP {resp.status_code} from {remote.url}")
                    elif offset:
                        logger.warning("%s: the server ignored the Range request; downloading from byte 0", remote.key)
                        fh.truncate(0)
                        fh.seek(0)
                        hasher, offset = hashlib.md5(usedforsecurity=False), 0
                        bar.reset(total=remote.size)
                    for chunk in resp.iter_raw():  # every network read as it arrives, so a drop loses nothing received
                        if offset + len(chunk) > remote.size:
                            raise DownloadError(
                                f"{remote.key}: the server sent more than the record's {remote.size} bytes"
                            )
                        fh.write(chunk)
                        fh.flush()
                        hasher.update(chunk)
                        offset += len(chunk)
                        bar.update(len(chunk))
                        failures = 0
                    if offset < remote.size:
                        raise _Retry(f"the response ended at byte {offset} of {remote.size}")
            except (httpx.TransportError, _Retry) as exc:
                failures += 1
                if failures > config.max_retries:
                    raise DownloadError(
                        f"{remote.key}: {failures} failed attempts in a row, last: {exc}. {offset} of {remote.size} "
                        f"bytes are kept in {part}; run again to resume"
                    ) from exc
                logger.warning(
                    "%s: download interrupted at byte %d of %d (%s); resuming with a Range request (retry %d of %d)",
                    remote.key, offset, remote.size, exc, failures, config.max_retries,
                )
                _wait(config, failures, exc)
    actual = hasher.hexdigest()
    if actual != remote.md5:
        part.unlink()
        raise ChecksumError(path, remote.md5, actual, remote.url)
    os.replace(part, path)
    return ("resumed" if range_requests else "downloaded"), range_requests


# --------------------------------------------------------------------------------------------------------------------
# unpacking


def extract_archive(zip_path: Path, root: Path, machine_type: str) -> tuple[dict[str, int], list[list[str]]]:
    """Unpack ``zip_path`` into ``root`` so that its files land in ``root/<machine_type>/...``.

    Official archives hold ``<machine_type>/<split>/<clip>.wav``. Any folders above ``<machine_type>/`` in a member
    path are dropped. Members outside a ``<machine_type>/`` folder are not unpacked; they are returned with the
    reason. Each file is written to a temporary name and then renamed, so an interrupted run never leaves a
    truncated clip.

    Returns:
        ``(members, skipped)``: ``{path relative to root (posix): size in bytes}`` and ``[[member, reason]]``.
    Raises:
        DownloadError: not a zip file, a corrupt member (CRC error), or an unsafe member path (absolute or '..').
    """
    members: dict[str, int] = {}
    skipped: list[list[str]] = []
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                name = info.filename.replace("\\", "/")
                parts = PurePosixPath(name).parts
                if name.startswith("/") or ".." in parts or (parts and re.match(r"^[A-Za-z]:", parts[0])):
                    raise DownloadError(f"{zip_path.name}: member {info.filename!r} has an unsafe path; not unpacking")
                if "__MACOSX" in parts or parts[-1] == ".DS_Store":
                    skipped.append([info.filename, "macOS metadata"])
                    continue
                if machine_type not in parts:
                    skipped.append([info.filename, f"not under a {machine_type}/ folder"])
                    continue
                rel = PurePosixPath(*parts[parts.index(machine_type):])
                out = root.joinpath(*rel.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_name(out.name + ".tmp")
                with zf.open(info) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, _HASH_CHUNK)
                os.replace(tmp, out)
                members[rel.as_posix()] = info.file_size
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{zip_path}: not a valid zip archive or a corrupt member ({exc})") from exc
    if skipped:
        logger.warning("%s: %d member(s) not unpacked (listed in the manifest)", zip_path.name, len(skipped))
    return members, skipped


def _clip_counts(root: Path, members: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Parse every unpacked .wav with the index grammars: ``({"<split>/<label>": n}, [unparsed paths])``."""
    clips: dict[str, int] = {}
    unparsed = []
    for rel in sorted(members):
        if not rel.lower().endswith(".wav"):
            continue
        row = parse_path(root / rel)
        if row is None:
            unparsed.append(rel)
            continue
        k = f"{row['split']}/{row['label'] or 'unlabelled'}"
        clips[k] = clips.get(k, 0) + 1
    return dict(sorted(clips.items())), unparsed


def _up_to_date(sidecar: Path, root: Path, md5: str) -> dict | None:
    """The sidecar's content if it records ``md5`` and every unpacked file is present at its size, else None."""
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if info.get("md5") != md5 or not isinstance(info.get("members"), dict) or not info["members"]:
        return None
    for rel, size in info["members"].items():
        try:
            if (root / rel).stat().st_size != size:
                return None
        except OSError:
            return None
    return info


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------------------
# the whole download


def _fetch(client: httpx.Client, rf: RemoteFile, path: Path, config: DownloadConfig) -> tuple[str, int]:
    """Make ``path`` hold ``rf`` with its MD5 checked: keep a matching file on disk, else (re)download it.

    Returns ``(status, range_requests)`` with status ``verified`` (kept), ``downloaded`` or ``resumed``.
    """
    if path.exists():
        actual = _md5_of(path).hexdigest()
        if actual == rf.md5:
            logger.info("%s: already downloaded, MD5 %s matches the record", rf.key, actual)
            return "verified", 0
        logger.warning("%s: on disk with MD5 %s, the record says %s; downloading again", rf.key, actual, rf.md5)
        path.unlink()
    status, range_requests = download_file(client, rf, path, config)
    logger.info("%s: %s, %d bytes, MD5 %s checked", rf.key, status, rf.size, rf.md5)
    return status, range_requests


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _load_manifest(path: Path) -> dict:
    try:
        old = json.loads(path.read_text())
        return old if isinstance(old, dict) and isinstance(old.get("archives"), dict) else {"archives": {}}
    except FileNotFoundError:
        return {"archives": {}}
    except (OSError, ValueError) as exc:
        logger.warning("%s is unreadable (%s); writing a new manifest", path, exc)
        return {"archives": {}}


def _check_space(dest: Path, need_bytes: int) -> None:
    free = shutil.disk_usage(dest).free
    if free < need_bytes:
        raise DownloadError(
            f"{dest}: {need_bytes / 1e9:.2f} GB still to download but only {free / 1e9:.2f} GB free on that disk"
        )
    if free < 2 * need_bytes:
        logger.warning(
            "%s: %.2f GB free; downloading %.2f GB and unpacking about as much again may not fit",
            dest, free / 1e9, need_bytes / 1e9,
        )


def download(
    dataset: str,
    dest: str | os.PathLike,
    machine_types: Sequence[str] | None = None,
    config: DownloadConfig | None = None,
) -> DownloadResult:
    """Fetch, check and unpack one dataset part (e.g. ``"dcase2020-dev"``) for some or all machine types.

    Args:
        dataset: a name in ``zenodo_records.yaml`` (``dcase20XX-dev`` / ``-additional`` / ``-eval``).
        dest: a local folder (created if missing). Several parts can share it: additional and eval parts both
            unpack into ``<year>/eval_data/raw/<machine_type>/`` (train and test), as in the official baseline.
        machine_types: the machine types to fetch; None = every machine type of the part.
        config: :class:`DownloadConfig` (base URL, retries, progress bars ...).
    Returns:
        :class:`DownloadResult`. The manifest ``<dest>/manifests/<dataset>.json`` holds the dataset, its task page,
        record ID and sources, whether the record ID was verified, the base URL, the time, and per machine type an
        :class:`ArchiveResult` (archive name, URL, size in bytes, MD5, status, Range requests, unpacked folder,
        file count, clip counts per split/label, unparsed names). Machine types fetched by earlier runs stay in it.
    Raises:
        ConfigError: unknown dataset or machine type (lists the valid ones), bad config.
        DownloadError: a requested archive is missing from the record (lists what the record has), an HTTP error
            status, too little disk space, repeated connection failures, a bad archive, or an archive that holds
            no ``.wav`` files under ``<machine_type>/``.
        ChecksumError: an MD5 mismatch (the bad file has been deleted).
    """
    config = config or DownloadConfig()
    entry, wanted = resolve(dataset, machine_types)
    base_url = config.resolved_base_url()
    dest = Path(dest).expanduser().resolve()
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"--dest {str(dest)!r} exists and is not a folder")
    root = dest.joinpath(*PurePosixPath(entry.root).parts)
    archives = dest / "archives" / entry.record_id
    for folder in (root, archives, dest / "manifests"):
        folder.mkdir(parents=True, exist_ok=True)
    manifest_path = dest / "manifests" / f"{dataset}.json"
    manifest = _load_manifest(manifest_path)
    if not entry.verified:
        logger.info(
            "%s: Zenodo record %s is cited from %s (not verified against zenodo.org when it was written)",
            dataset, entry.record_id, entry.sources[0],
        )

    # log lines go above the progress bars instead of through them
    with _client(config) as client, (logging_redirect_tqdm() if config.progress else contextlib.nullcontext()):
        record_url, record = fetch_record(client, base_url, entry.record_id, config)
        remote = record_files(record, record_url)
        missing = [entry.files[m] for m in wanted if entry.files[m] not in remote]
        if missing:
            raise DownloadError(
                f"Zenodo record {entry.record_id} ({record_url}) has no file {', '.join(map(repr, missing))}; "
                f"it has: {', '.join(sorted(remote))}"
            )
        # plan: what is already unpacked, what is on disk, what must be fetched
        plan = {}
        need = 0
        for m in wanted:
            rf = remote[entry.files[m]]
            sidecar = archives / f"{rf.key}.extracted.json"
            done = _up_to_date(sidecar, root, rf.md5)
            plan[m] = (rf, sidecar, done)
            if done is None and not (archives / rf.key).exists():
                part = archives / f"{rf.key}.part"
                need += rf.size - (part.stat().st_size if part.exists() else 0)
        total = sum(plan[m][0].size for m in wanted)
        logger.info(
            "%s: %d archive(s), %.2f GB in all, %.2f GB still to download, into %s",
            dataset, len(wanted), total / 1e9, need / 1e9, root,
        )
        if need:
            _check_space(dest, need)

        results = []
        for m in wanted:
            rf, sidecar, done = plan[m]
            path = archives / rf.key
            if done is not None:
                logger.info("%s: unpacked before and complete (%d files); skipped", rf.key, len(done["members"]))
                status, range_requests, members, skipped = "up-to-date", 0, done["members"], done.get("skipped", [])
            else:
                status, range_requests = _fetch(client, rf, path, config)
                members, skipped = extract_archive(path, root, m)
                _write_json(sidecar, {"key": rf.key, "md5": rf.md5, "root": entry.root, "members": members,
                                      "skipped": skipped, "extracted": _now()})
            if config.delete_archives and path.exists():
                path.unlink()
            clips, unparsed = _clip_counts(root, members)
            if not clips and not unparsed:
                raise DownloadError(
                    f"{rf.key}: unpacked no .wav files under {root / m}; expected <machine_type>/<split>/*.wav"
                )
            if unparsed:
                logger.warning(
                    "%s: %d .wav name(s) match no index grammar (listed in the manifest), e.g. %s",
                    rf.key, len(unparsed), unparsed[0],
                )
            result = ArchiveResult(
                machine_type=m, key=rf.key, url=rf.url, size=rf.size, md5=rf.md5, status=status,
                range_requests=range_requests, archive=str(path.relative_to(dest)) if path.exists() else None,
                extracted_to=str(PurePosixPath(entry.root, m)), n_files=len(members), clips=clips,
                unparsed=unparsed, skipped_members=skipped,
            )
            manifest["archives"][m] = {**dataclasses.asdict(result), "checked": _now()}
            header = _manifest_header(entry, base_url, record_url)
            _write_json(manifest_path, {**header, "archives": dict(sorted(manifest["archives"].items()))})
            results.append(result)
    return DownloadResult(dataset=dataset, root=root, manifest=manifest_path, archives=results)


def _manifest_header(entry: DatasetEntry, base_url: str, record_url: str) -> dict:
    from stethoscope import __version__

    return {
        "format": MANIFEST_FORMAT,
        "dataset": entry.name,
        "task": entry.task,
        "part": entry.part,
        "task_page": entry.task_page,
        "record_id": entry.record_id,
        "record_url": record_url,
        "record_id_verified_in_catalog": entry.verified,
        "record_sources": list(entry.sources),
        "base_url": base_url,
        "root": entry.root,
        "updated": _now(),
        "stethoscope_version": __version__,
    }
