"""Dataset download against a real loopback HTTP server that speaks the Zenodo REST API's record format.

The server (http.server in a thread, port 0) serves ``/api/records/<id>`` (record JSON: files[].key, size,
checksum "md5:...", links.self) and ``/api/records/<id>/files/<key>/content`` (the bytes, with Range support). It can
drop the connection after N bytes, corrupt a file, ignore Range, hold a response mid-file, or answer an error
status. The archives are zips of synthetic clips written by stethoscope.data.synthetic. The HTTP client is not mocked.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import runpy
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from stethoscope.data.index import counts, index
from stethoscope.data.download import (
    BASE_URL_ENV,
    ChecksumError,
    DownloadConfig,
    DownloadError,
    catalog,
    download,
    resolve,
)
from stethoscope.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEV2020 = "3678171"  # the DCASE 2020 Task 2 development set's record (given by the issue)
FAST = dict(progress=False, retry_wait_s=0.0, timeout_s=30.0)


# --------------------------------------------------------------------------------------------------------------------
# the loopback Zenodo server


class ZenodoServer:
    """A real HTTP server on 127.0.0.1:<free port> holding ``records = {record_id: {key: bytes}}``.

    ``behaviour[key]`` may hold: ``drop_after`` (send that many body bytes once, then close the socket),
    ``corrupt`` (serve the bytes with one byte flipped; the record keeps the true MD5), ``ignore_range`` (answer 200
    to Range requests), ``hold_after`` (send that many bytes, set ``held``, then wait for ``release``), ``status``
    (answer that HTTP status). ``log`` records ``(path, Range header or None, status)`` of every request.
    """

    def __init__(self, records: dict[str, dict[str, bytes]]):
        self.records = records
        self.behaviour: dict[str, dict] = {}
        self.log: list[tuple[str, str | None, int]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean; requests go to server.log
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json", headers: dict | None = None):
                server.log.append((self.path, self.headers.get("Range"), status))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                m = re.fullmatch(r"/api/records/(\d+)", self.path)
                if m:
                    files = server.records.get(m.group(1))
                    if files is None:
                        return self._send(404, b'{"status": 404, "message": "The persistent identifier does not exist."}')
                    return self._send(200, json.dumps(server.record_json(m.group(1))).encode())
                m = re.fullmatch(r"/api/records/(\d+)/files/([^/]+)/content", self.path)
                if not m or m.group(2) not in server.records.get(m.group(1), {}):
                    return self._send(404, b'{"status": 404, "message": "not found"}')
                key = m.group(2)
                data = server.records[m.group(1)][key]
                how = server.behaviour.get(key, {})
                if how.get("status"):
                    return self._send(how["status"], b"the server says no", "text/plain")
                if how.get("corrupt"):
                    data = data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 0xFF]) + data[len(data) // 2 + 1 :]
                start, status, extra = 0, 200, {}
                rng = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if rng and not how.get("ignore_range"):
                    start = int(rng.group(1))
                    if start >= len(data):
                        return self._send(416, b"", headers={"Content-Range": f"bytes */{len(data)}"})
                    status, extra = 206, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                body = data[start:]
                cut = how.pop("drop_after", None)
                hold = how.pop("hold_after", None)
                if cut is None and hold is None:
                    return self._send(status, body, "application/zip", extra)
                # send the headers for the whole body, then only part of it, then drop the connection
                server.log.append((self.path, self.headers.get("Range"), status))
                self.send_response(status)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body[: cut if cut is not None else hold])
                self.wfile.flush()
                if hold is not None:
                    how["held"].set()
                    how["release"].wait(120)
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def record_json(self, record_id: str) -> dict:
        return {
            "id": int(record_id),
            "files": [
                {
                    "key": key,
                    "size": len(data),
                    "checksum": "md5:" + hashlib.md5(data).hexdigest(),
                    "links": {"self": f"{self.url}/api/records/{record_id}/files/{key}/content"},
                }
                for key, data in self.records[record_id].items()
            ],
        }

    def content_requests(self, key: str) -> list[tuple[str | None, int]]:
        """``[(Range header, status)]`` of every request for ``key``'s bytes."""
        return [(rng, st) for path, rng, st in self.log if path.endswith(f"/files/{key}/content")]

    def close(self):
        for how in self.behaviour.values():
            if "release" in how:
                how["release"].set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _zip(files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> bytes:
    """A zip archive (bytes) of ``{member name: content}``."""
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in {**files, **(extra or {})}.items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """Synthetic DCASE 2020 clips: ``{machine_type: {"<split>/<file name>": wav bytes}}`` for fan and valve id_00
    (2 train normals, 1 test normal, 1 test anomaly each, 0.5 s)."""
    from stethoscope.data.synthetic import make_dcase2020_tree

    dev = make_dcase2020_tree(
        tmp_path_factory.mktemp("synthetic"), machine_types=("fan", "valve"), machine_ids=("00",),
        n_train=2, n_test_normal=1, n_test_anomaly=1, duration_s=0.5, seed=3,
    )
    return {
        mt: {f"{p.parent.name}/{p.name}": p.read_bytes() for p in sorted((dev / mt).rglob("*.wav"))}
        for mt in ("fan", "valve")
    }


@pytest.fixture()
def dev2020(clips):
    """The 2020 development record with fan, valve and pump archives. The valve archive wraps its folder in
    ``dev_data/`` and carries macOS metadata, which must be dropped (and reported)."""
    records = {
        DEV2020: {
            "dev_data_fan.zip": _zip({f"fan/{k}": v for k, v in clips["fan"].items()}),
            "dev_data_valve.zip": _zip(
                {f"dev_data/valve/{k}": v for k, v in clips["valve"].items()},
                {"__MACOSX/dev_data/valve/._train": b"\x00\x05\x16\x07"},
            ),
            "dev_data_pump.zip": b"never requested",
        }
    }
    server = ZenodoServer(records)
    yield server
    server.close()


def _expected_counts(machine_type: str) -> dict:
    return {(machine_type, "train", "normal"): 2, (machine_type, "test", "normal"): 1, (machine_type, "test", "anomaly"): 1}


# --------------------------------------------------------------------------------------------------------------------
# the catalog


def test_catalog_entries_are_complete_and_cited():
    entries = catalog()
    years = {"2020", "2022", "2023", "2024"}
    for year in years:
        for part in ("dev", "additional", "eval"):
            assert f"dcase{year}-{part}" in entries, f"dcase{year}-{part} missing from zenodo_records.yaml"
    assert entries["dcase2020-dev"].record_id == DEV2020
    assert entries["dcase2020-dev"].files["fan"] == "dev_data_fan.zip"
    for name, e in entries.items():
        year = re.match(r"dcase(\d{4})-", name).group(1)
        assert f"challenge{year}/" in e.task_page, name
        assert e.task == f"DCASE {year} Task 2" and name.endswith(e.part)
        assert e.root.startswith(f"dcase{year}t2/") and e.root.endswith(("dev_data/raw", "eval_data/raw"))
        assert ("dev_data" in e.root) == (e.part == "dev"), name
        # every record ID is cited: the sources name it, or (2020 dev) the issue does
        assert any(e.record_id in s for s in e.sources), f"{name}: no source cites record {e.record_id}"
    ids = [e.record_id for e in entries.values()]
    assert len(ids) == len(set(ids)), "two dataset parts share a Zenodo record"
    # the additional and eval parts of one year cover the same machine types
    for year in years:
        assert entries[f"dcase{year}-additional"].files.keys() == entries[f"dcase{year}-eval"].files.keys()


def test_unknown_dataset_and_machine_type_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown dataset 'dcase2019-dev'; expected one of: .*dcase2020-dev.*2024-eval"):
        resolve("dcase2019-dev")
    with pytest.raises(ConfigError, match=r"has no machine type 'bearing'; .*ToyCar ToyConveyor fan pump slider valve"):
        resolve("dcase2020-dev", ["fan", "bearing"])
    entry, types = resolve("dcase2023-additional")
    assert entry.record_id == "7830345" and "bandsaw" in types and len(types) == 7


def test_catalog_rejects_unknown_fields(tmp_path):
    bad = tmp_path / "records.yaml"
    bad.write_text(
        "format: 1\ndatasets:\n  x-dev:\n    task: T\n    part: dev\n"
        "    task_page: https://dcase.community/challenge2020/task-x\n    record_id: '1'\n    verified: false\n"
        "    sources: [s]\n    root: a/b\n    files: {fan: f.zip}\n    md5: abc\n"
    )
    with pytest.raises(ConfigError, match=r"(?s)x-dev.*md5.*Extra inputs are not permitted"):
        catalog(bad)


# --------------------------------------------------------------------------------------------------------------------
# download, check, unpack, index


def test_download_unpacks_the_official_layout_and_it_indexes(dev2020, tmp_path):
    res = download("dcase2020-dev", tmp_path, ["fan", "valve"], DownloadConfig(base_url=dev2020.url, progress=True))
    assert res.root == tmp_path / "dcase2020t2" / "dev_data" / "raw"
    # only the requested archives were fetched, each once and in full
    assert dev2020.content_requests("dev_data_fan.zip") == [(None, 200)]
    assert dev2020.content_requests("dev_data_valve.zip") == [(None, 200)]
    assert dev2020.content_requests("dev_data_pump.zip") == []
    # the tree indexes with the DCASE 2020 grammar, clip for clip
    table = index(res.root).table
    assert set(table.column("dataset").to_pylist()) == {"dcase2020"}
    assert counts(table) == {**_expected_counts("fan"), **_expected_counts("valve")}
    assert (res.root / "valve" / "train").is_dir() and not (res.root / "dev_data").exists()
    assert not list(res.root.rglob("*.tmp")) and not list(tmp_path.rglob("*.part"))
    # archives are kept, with their MD5 recorded beside them
    for key in ("dev_data_fan.zip", "dev_data_valve.zip"):
        archive = tmp_path / "archives" / DEV2020 / key
        assert hashlib.md5(archive.read_bytes()).hexdigest() == hashlib.md5(dev2020.records[DEV2020][key]).hexdigest()
        sidecar = json.loads((tmp_path / "archives" / DEV2020 / f"{key}.extracted.json").read_text())
        assert len(sidecar["members"]) == 4
    # the manifest
    manifest = json.loads(res.manifest.read_text())
    assert res.manifest == tmp_path / "manifests" / "dcase2020-dev.json"
    assert manifest["record_id"] == DEV2020 and manifest["base_url"] == dev2020.url
    assert manifest["task_page"].startswith("https://dcase.community/challenge2020/")
    assert set(manifest["archives"]) == {"fan", "valve"}
    fan = manifest["archives"]["fan"]
    assert fan["status"] == "downloaded" and fan["range_requests"] == 0
    assert fan["md5"] == hashlib.md5(dev2020.records[DEV2020]["dev_data_fan.zip"]).hexdigest()
    assert fan["size"] == len(dev2020.records[DEV2020]["dev_data_fan.zip"])
    assert fan["clips"] == {"test/anomaly": 1, "test/normal": 1, "train/normal": 2}
    assert fan["extracted_to"] == "dcase2020t2/dev_data/raw/fan" and fan["unparsed"] == []
    assert manifest["archives"]["valve"]["skipped_members"] == [["__MACOSX/dev_data/valve/._train", "macOS metadata"]]


def test_dropped_connection_resumes_with_range(dev2020, tmp_path):
    cut = 20_000
    data = dev2020.records[DEV2020]["dev_data_fan.zip"]
    assert len(data) > 2 * cut
    dev2020.behaviour["dev_data_fan.zip"] = {"drop_after": cut}
    res = download("dcase2020-dev", tmp_path, ["fan"], DownloadConfig(base_url=dev2020.url, **FAST))
    # the first request got `cut` bytes and a closed socket; the second asked for the rest
    assert dev2020.content_requests("dev_data_fan.zip") == [(None, 200), (f"bytes={cut}-", 206)]
    assert (tmp_path / "archives" / DEV2020 / "dev_data_fan.zip").read_bytes() == data
    a = res.archives[0]
    assert (a.status, a.range_requests) == ("resumed", 1)
    assert counts(index(res.root).table) == _expected_counts("fan")


def test_server_that_ignores_range_makes_the_download_start_over(dev2020, tmp_path):
    dev2020.behaviour["dev_data_fan.zip"] = {"drop_after": 20_000, "ignore_range": True}
    res = download("dcase2020-dev", tmp_path, ["fan"], DownloadConfig(base_url=dev2020.url, **FAST))
    assert dev2020.content_requests("dev_data_fan.zip") == [(None, 200), ("bytes=20000-", 200)]
    assert (tmp_path / "archives" / DEV2020 / "dev_data_fan.zip").read_bytes() == dev2020.records[DEV2020]["dev_data_fan.zip"]
    assert (res.archives[0].status, res.archives[0].range_requests) == ("downloaded", 0)


def test_checksum_mismatch_deletes_the_file_and_is_an_error(dev2020, tmp_path):
    dev2020.behaviour["dev_data_valve.zip"] = {"corrupt": True}
    expected = hashlib.md5(dev2020.records[DEV2020]["dev_data_valve.zip"]).hexdigest()
    with pytest.raises(ChecksumError, match=rf"dev_data_valve.zip.*record says {expected}") as err:
        download("dcase2020-dev", tmp_path, ["fan", "valve"], DownloadConfig(base_url=dev2020.url, **FAST))
    assert err.value.expected == expected and err.value.actual != expected
    archives = tmp_path / "archives" / DEV2020
    assert not (archives / "dev_data_valve.zip").exists() and not (archives / "dev_data_valve.zip.part").exists()
    assert not (tmp_path / "dcase2020t2" / "dev_data" / "raw" / "valve").exists()
    # fan, done before valve, is complete and in the manifest; valve is not
    manifest = json.loads((tmp_path / "manifests" / "dcase2020-dev.json").read_text())
    assert set(manifest["archives"]) == {"fan"}
    # the server is fixed: the rerun fetches valve only
    dev2020.behaviour.clear()
    dev2020.log.clear()
    res = download("dcase2020-dev", tmp_path, ["fan", "valve"], DownloadConfig(base_url=dev2020.url, **FAST))
    assert [a.status for a in res.archives] == ["up-to-date", "downloaded"]
    assert dev2020.content_requests("dev_data_fan.zip") == []


def test_rerun_skips_complete_archives_after_checking_them(dev2020, tmp_path):
    cfg = DownloadConfig(base_url=dev2020.url, **FAST)
    download("dcase2020-dev", tmp_path, ["fan", "valve"], cfg)
    root = tmp_path / "dcase2020t2" / "dev_data" / "raw"
    archives = tmp_path / "archives" / DEV2020

    dev2020.log.clear()  # 1. everything unpacked and complete: only the record is read
    res = download("dcase2020-dev", tmp_path, ["fan", "valve"], cfg)
    assert [a.status for a in res.archives] == ["up-to-date", "up-to-date"]
    assert [p for p, _, _ in dev2020.log] == [f"/api/records/{DEV2020}"]

    shutil.rmtree(root / "valve")  # 2. a clip tree is gone but its archive is there: MD5 checked, unpacked again
    dev2020.log.clear()
    res = download("dcase2020-dev", tmp_path, ["valve"], cfg)
    assert res.archives[0].status == "verified" and dev2020.content_requests("dev_data_valve.zip") == []
    assert counts(index(root / "valve").table) == _expected_counts("valve")

    # 3. the archive on disk is damaged and one clip was truncated: the MD5 check catches it, it is fetched again
    (archives / "dev_data_fan.zip").write_bytes(b"PK\x03\x04 damaged")
    clip = next((root / "fan" / "train").glob("*.wav"))
    clip.write_bytes(clip.read_bytes()[:100])
    dev2020.log.clear()
    res = download("dcase2020-dev", tmp_path, ["fan"], cfg)
    assert res.archives[0].status == "downloaded" and dev2020.content_requests("dev_data_fan.zip") == [(None, 200)]
    assert clip.stat().st_size > 100

    # 4. with delete_archives the archive goes, and a rerun trusts the recorded unpacked files
    res = download("dcase2020-dev", tmp_path, ["fan"], DownloadConfig(base_url=dev2020.url, delete_archives=True, **FAST))
    assert res.archives[0].archive is None and not (archives / "dev_data_fan.zip").exists()
    dev2020.log.clear()
    assert download("dcase2020-dev", tmp_path, ["fan"], cfg).archives[0].status == "up-to-date"
    assert dev2020.content_requests("dev_data_fan.zip") == []
    manifest = json.loads((tmp_path / "manifests" / "dcase2020-dev.json").read_text())
    assert set(manifest["archives"]) == {"fan", "valve"}  # earlier machine types stay in the manifest


def test_interrupted_run_resumes_from_the_partial_file(dev2020, tmp_path):
    """A real interruption: the job runs in its own process, which is killed mid-file; the next run resumes."""
    held = 30_000
    how = {"hold_after": held, "held": threading.Event(), "release": threading.Event()}
    dev2020.behaviour["dev_data_fan.zip"] = how
    env = {**os.environ, BASE_URL_ENV: dev2020.url}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "download.py"), "--dataset", "dcase2020-dev", "--machine-types", "fan",
         "--dest", str(tmp_path), "--no-progress"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    part = tmp_path / "archives" / DEV2020 / "dev_data_fan.zip.part"
    try:
        assert how["held"].wait(120), "the job never reached the server"
        deadline = time.monotonic() + 60
        while not (part.exists() and part.stat().st_size == held) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert part.exists() and part.stat().st_size == held, "the partial file does not hold the bytes sent"
    finally:
        proc.kill()
        proc.wait(30)
        how["release"].set()
    assert proc.returncode != 0
    assert not (tmp_path / "archives" / DEV2020 / "dev_data_fan.zip").exists()

    res = download("dcase2020-dev", tmp_path, ["fan"], DownloadConfig(base_url=dev2020.url, **FAST))
    assert dev2020.content_requests("dev_data_fan.zip") == [(None, 200), (f"bytes={held}-", 206)]
    assert (res.archives[0].status, res.archives[0].range_requests) == ("resumed", 1)
    assert (tmp_path / "archives" / DEV2020 / "dev_data_fan.zip").read_bytes() == dev2020.records[DEV2020]["dev_data_fan.zip"]
    assert not part.exists()


# --------------------------------------------------------------------------------------------------------------------
# errors


def test_file_missing_from_the_record_lists_what_it_has(dev2020, tmp_path):
    del dev2020.records[DEV2020]["dev_data_valve.zip"]
    with pytest.raises(DownloadError, match=r"no file 'dev_data_valve.zip'; it has: dev_data_fan.zip, dev_data_pump.zip"):
        download("dcase2020-dev", tmp_path, ["fan", "valve"], DownloadConfig(base_url=dev2020.url, **FAST))
    assert dev2020.content_requests("dev_data_fan.zip") == []  # checked before anything is fetched


def test_http_error_statuses_are_clear_errors(dev2020, tmp_path):
    cfg = DownloadConfig(base_url=dev2020.url, max_retries=2, **FAST)
    records = dev2020.records
    dev2020.records = {}  # the record does not exist: 404
    with pytest.raises(DownloadError, match=rf"record {DEV2020} not found .*HTTP 404 Not Found: .*does not exist"):
        download("dcase2020-dev", tmp_path, ["fan"], cfg)
    dev2020.records = records
    dev2020.behaviour["dev_data_fan.zip"] = {"status": 403}  # a client error: no retry
    with pytest.raises(DownloadError, match=r"dev_data_fan.zip: GET .*/content answered HTTP 403 Forbidden: the server"):
        download("dcase2020-dev", tmp_path, ["fan"], cfg)
    assert dev2020.content_requests("dev_data_fan.zip") == [(None, 403)]
    dev2020.behaviour["dev_data_fan.zip"] = {"status": 503}  # a server error: retried, then given up
    with pytest.raises(DownloadError, match=r"dev_data_fan.zip: 3 failed attempts in a row, last: HTTP 503"):
        download("dcase2020-dev", tmp_path, ["fan"], cfg)
    assert dev2020.content_requests("dev_data_fan.zip")[1:] == [(None, 503)] * 3


def test_job_lists_datasets_and_reports_bad_input(dev2020, tmp_path, monkeypatch, capsys):
    def job(*args) -> int:
        monkeypatch.setattr(sys, "argv", ["download.py", *args])
        monkeypatch.syspath_prepend(str(ROOT / "jobs"))
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(str(ROOT / "jobs" / "download.py"), run_name="__main__")
        return exit_.value.code

    assert job("--list") == 0
    out = capsys.readouterr().out
    assert re.search(r"dcase2020-dev\s+DCASE 2020 Task 2\s+dev\s+3678171\s+no \(cited\)\s+ToyCar ToyConveyor fan", out)
    assert job("--dataset", "dcase2020-dev", "nope", "--dest", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown dataset 'nope'; expected one of: dcase2020-dev, dcase2020-additional")
    assert job("--dataset", "dcase2020-dev", "--machine-types", "fan", "gearbox", "--dest", str(tmp_path)) == 2
    assert "has no machine type 'gearbox'" in capsys.readouterr().err
    assert dev2020.log == []  # nothing was requested for bad input

    monkeypatch.setenv(BASE_URL_ENV, dev2020.url)  # the base URL from the environment
    assert job("--dataset", "dcase2020-dev", "--machine-types", "fan", "--dest", str(tmp_path), "--no-progress") == 0
    out = capsys.readouterr().out
    assert re.search(
        r"dcase2020-dev\s+fan\s+dev_data_fan.zip\s+[\d.]+\s+downloaded\s+test/anomaly=1 test/normal=1 train/normal=2", out
    )
    assert f"manifest {tmp_path / 'manifests' / 'dcase2020-dev.json'}" in out


# --------------------------------------------------------------------------------------------------------------------
# 2021+ naming: the additional (train) and eval (test) parts share one tree


def test_additional_and_eval_parts_unpack_into_one_tree(clips, tmp_path):
    wavs = list(clips["fan"].values())
    train = {f"bandsaw/train/section_00_source_train_normal_{i:04d}_vel_{6 + i}.wav": w for i, w in enumerate(wavs[:2])}
    test = {f"bandsaw/test/section_00_{i:04d}.wav": w for i, w in enumerate(wavs[2:])}
    server = ZenodoServer({
        "7830345": {"eval_data_bandsaw_train.zip": _zip(train)},
        "7860847": {"eval_data_bandsaw_test.zip": _zip(test)},
    })
    try:
        cfg = DownloadConfig(base_url=server.url, **FAST)
        add = download("dcase2023-additional", tmp_path, ["bandsaw"], cfg)
        ev = download("dcase2023-eval", tmp_path, ["bandsaw"], cfg)
    finally:
        server.close()
    assert add.root == ev.root == tmp_path / "dcase2023t2" / "eval_data" / "raw"
    assert add.archives[0].clips == {"train/normal": 2} and ev.archives[0].clips == {"test/unlabelled": 2}
    table = index(ev.root).table
    assert table.num_rows == 4 and set(table.column("dataset").to_pylist()) == {"dcase2021+"}
    rows = sorted(table.to_pylist(), key=lambda r: r["file_name"])
    assert [(r["split"], r["label"], r["domain"]) for r in rows] == [
        ("test", None, None), ("test", None, None), ("train", "normal", "source"), ("train", "normal", "source")
    ]
    assert rows[2]["attributes"] == [("vel", "6")]
