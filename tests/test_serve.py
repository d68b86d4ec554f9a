"""The HTTP endpoint end to end: real pipeline runs publish two machines, Ray Serve serves them on 127.0.0.1, and
every answer is checked against the offline scores (real HTTP through Serve's proxy; no mocks)."""

from __future__ import annotations

import concurrent.futures
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from serve_helpers import free_port, wav_bytes as _wav  # tests/ is on sys.path (no __init__.py)

pytestmark = pytest.mark.slow

httpx = pytest.importorskip("httpx")

MAX_BYTES = 12 * 1024 * 1024  # the test server's byte limit
MAX_SECONDS = 301  # the test server's duration limit: a 5-minute recording passes


@pytest.fixture(scope="module")
def published(ray_session, dcase2020_root, fan_runs, tmp_path_factory):
    """Two machines published to one registry: slider, a real pipeline run (3 epochs on the real clips) that publishes
    itself, and fan, the session's autoencoder run on synthetic clips (``fan_runs``; only slider has training data in
    ../shared/data) published with publish_runs, as jobs/publish.py does."""
    import torch

    from stethoscope.pipeline import run
    from stethoscope.publishing import publish_runs

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("serve")
    reg = base / "registry"
    slider = run(dcase2020_root, machine_type="slider", config={"epochs": 3}, store=str(base / "store"),
                 runs_root=str(base / "runs"), registry=str(reg))
    (fan_pub,) = publish_runs([fan_runs[0]], reg, out_dir=base / "fan_publish")
    fan = SimpleNamespace(extra={"publish": fan_pub}, scores=pd.read_parquet(fan_runs[0] / "scores.parquet"))
    return reg, {"slider": slider, "fan": fan}


@pytest.fixture(scope="module")
def server(published):
    from ray import serve

    from serve.app import build_app

    reg, runs = published
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"registry": str(reg), "max_bytes": MAX_BYTES, "max_seconds": MAX_SECONDS}),
              name="stethoscope-test", route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    try:
        yield client, runs, port, reg
    finally:
        client.close()
        serve.shutdown()


def _post(client, data: bytes, machine_type: str | None = "slider", machine_id: str | None = "00",
          multipart: bool = False, map: bool = False, params_extra: dict | None = None, **kw):
    params = {k: v for k, v in {"machine_type": machine_type, "machine_id": machine_id}.items() if v is not None}
    params.update(params_extra or {})
    if map:
        params["map"] = "true"
    if multipart:
        return client.post("/v1/score", params={"map": "true"} if map else None, data=params,
                           files={"file": ("clip.wav", data, "audio/wav")}, **kw)
    return client.post("/v1/score", params=params, content=data, headers={"content-type": "audio/wav"}, **kw)


def _offline(runs, machine_type: str) -> tuple[pd.DataFrame, dict]:
    pub = runs[machine_type].extra["publish"]
    return pub.scores, pub.manifest


def _assert_matches_offline(body: dict, row: pd.Series, manifest: dict, machine_scores: pd.DataFrame) -> None:
    assert body["model_version"] == manifest["version"]
    assert body["threshold"] == manifest["threshold"]["value"]
    assert abs(body["score"] - row["score"]) <= 1e-5
    assert body["is_anomaly"] == bool(body["score"] > body["threshold"]) == bool(row["decision"])
    # each member's raw score equals the pipeline's own offline score (scores.parquet) of the clip
    offline_raw = machine_scores.set_index("path").loc[row["path"], "score"]
    (member,) = body["members"]
    assert member["raw_score"] == pytest.approx(offline_raw, rel=1e-5)
    assert member["standardized_score"] == pytest.approx(body["score"], abs=1e-9)  # one member, weight 1


def test_every_slider_test_clip_scores_over_http_as_offline(server):
    client, runs, *_ = server
    table, manifest = _offline(runs, "slider")
    assert len(table) == 11  # every slider test clip in ../shared/data (IDs 00, 04, 06)
    for i, row in table.iterrows():
        data = Path(row["path"]).read_bytes()
        r = _post(client, data, "slider", row["machine_id"], multipart=bool(i % 2))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["machine"] == {"machine_type": "slider", "machine_id": row["machine_id"], "bundle": "slider/all"}
        _assert_matches_offline(body, row, manifest, runs["slider"].scores)
        assert body["latency_ms"] > 0 and body["audio"]["resampled"] is False


def test_two_machines_are_answered_by_their_own_bundle(server):
    client, runs, *_ = server
    fan, fan_manifest = _offline(runs, "fan")
    slider, slider_manifest = _offline(runs, "slider")
    assert fan_manifest["version"] != slider_manifest["version"]
    for _, row in fan.iloc[::3].iterrows():
        r = _post(client, Path(row["path"]).read_bytes(), "fan", row["machine_id"])
        assert r.status_code == 200, r.text
        _assert_matches_offline(r.json(), row, fan_manifest, runs["fan"].scores)
    # the same clip sent to both machines gets each machine's own score
    for path in (fan["path"].iloc[0], slider["path"].iloc[0]):
        data = Path(path).read_bytes()
        a, b = _post(client, data, "fan", "00").json(), _post(client, data, "slider", "00").json()
        assert a["model_version"] == fan_manifest["version"] and b["model_version"] == slider_manifest["version"]
        assert a["members"][0]["raw_score"] != pytest.approx(b["members"][0]["raw_score"], rel=1e-3)
        assert a["score"] != pytest.approx(b["score"], rel=1e-3)


@pytest.fixture(scope="module")
def good(server):
    """A slider clip, its bytes and its served score."""
    client, runs, *_ = server
    row = _offline(runs, "slider")[0].iloc[0]
    data = Path(row["path"]).read_bytes()
    return data, row


def _bad_cases(data: bytes) -> dict:
    wave, sr = sf.read(io.BytesIO(data), dtype="int16")
    long = np.tile(wave, 31)[: (MAX_SECONDS + 1) * sr]
    return {
        # name: (kwargs for _post or a raw request, expected status, expected error code)
        "not a WAV": (dict(data=b"this is not audio\n" * 64), 415, "not_audio"),
        "corrupt (truncated) WAV": (dict(data=data[: len(data) // 3]), 422, "truncated"),
        "empty body": (dict(data=b""), 422, "empty_file"),
        "recording over the duration limit": (dict(data=_wav(long, sr)), 413, "too_long"),
        "clip shorter than 5 frames": (dict(data=_wav(wave[:1500], sr)), 422, "too_short"),
        "body over the byte limit": (dict(data=data * 40), 413, "too_large"),
        "unknown machine": (dict(data=data, machine_type="pump"), 404, "unknown_machine"),
        "missing machine_type": (dict(data=data, machine_type=None), 422, "missing_field"),
        "missing machine_id": (dict(data=data, machine_id=None), 422, "missing_field"),
        "machine_id not two digits": (dict(data=data, machine_id="7"), 422, "invalid_field"),
        "multipart without a file": ("form-no-file", 422, "missing_field"),
        "JSON instead of audio": ("json", 415, "unsupported_media_type"),
    }


CASES = ["not a WAV", "corrupt (truncated) WAV", "empty body", "recording over the duration limit",
         "clip shorter than 5 frames",
         "body over the byte limit",
         "unknown machine", "missing machine_type", "missing machine_id", "machine_id not two digits",
         "multipart without a file", "JSON instead of audio"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_a_4xx_that_explains_itself_and_the_server_keeps_serving(server, good, case):
    client, runs, *_ = server
    data, row = good
    request, status, code = _bad_cases(data)[case]
    if request == "form-no-file":
        r = client.post("/v1/score", data={"machine_type": "slider", "machine_id": "00"},
                        files={"other": ("x.txt", b"hello", "text/plain")})
    elif request == "json":
        r = client.post("/v1/score", params={"machine_type": "slider", "machine_id": "00"}, json={"audio": "x"})
    else:
        r = _post(client, **request)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and len(body["detail"]) > 10
    assert "Traceback" not in r.text and 'File "' not in r.text
    if code == "unknown_machine":
        assert body["known_machines"] == ["fan", "slider"] and "slider" in body["detail"]
    # ... and a good request right after still succeeds, with the same answer as before
    ok = _post(client, data)
    assert ok.status_code == 200
    assert abs(ok.json()["score"] - row["score"]) <= 1e-5


def test_a_batch_scores_every_clip_as_offline_and_reports_a_bad_clip_without_failing_the_others(server, good):
    """POST /v1/score/batch: the slider clips of machine 00 plus a truncated and an empty clip in one multipart
    request get one result each, in the order sent; the good ones equal the offline scores, the bad ones carry the
    same status and error code /v1/score gives them alone."""
    client, runs, *_ = server
    table, manifest = _offline(runs, "slider")
    rows = table[table["machine_id"] == "00"]
    assert len(rows) >= 3
    data, _ = good
    files = [("file", (Path(p).name, Path(p).read_bytes(), "audio/wav")) for p in rows["path"]]
    files.insert(1, ("file", ("truncated.wav", data[: len(data) // 3], "audio/wav")))
    files.append(("file", ("empty.wav", b"", "audio/wav")))
    r = client.post("/v1/score/batch", params={"machine_type": "slider", "machine_id": "00"}, files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["machine"] == {"machine_type": "slider", "machine_id": "00", "bundle": "slider/all"}
    assert body["clips"] == len(rows) + 2 and body["failed"] == 2
    assert [x["file"] for x in body["results"]] == [name for _, (name, *_) in files]
    bad = {x["file"]: x for x in body["results"] if x["status"] != 200}
    assert (bad["truncated.wav"]["status"], bad["truncated.wav"]["error"]) == (422, "truncated")
    assert (bad["empty.wav"]["status"], bad["empty.wav"]["error"]) == (422, "empty_file")
    good_results = [x for x in body["results"] if x["status"] == 200]
    for x, (_, row) in zip(good_results, rows.iterrows()):
        _assert_matches_offline(x, row, manifest, runs["slider"].scores)


def test_a_batch_that_is_not_a_form_or_holds_too_many_clips_is_refused_and_the_server_keeps_serving(server, good):
    client, _, *_ = server
    data, row = good
    params = {"machine_type": "slider", "machine_id": "00"}
    raw = client.post("/v1/score/batch", params=params, content=data, headers={"content-type": "audio/wav"})
    assert raw.status_code == 415 and "multipart/form-data" in raw.json()["detail"], raw.text
    many = client.post("/v1/score/batch", params=params,
                       files=[("file", (f"{i}.wav", b"RIFF", "audio/wav")) for i in range(65)])  # default: 64
    assert many.status_code == 413 and many.json()["error"] == "too_many_files", many.text
    assert "64" in many.json()["detail"]
    two = client.post("/v1/score", params=params, files=[("file", ("a.wav", data, "audio/wav"))] * 2)
    assert two.status_code == 413 and "/v1/score/batch" in two.json()["detail"], two.text
    unknown = client.post("/v1/score/batch", params={**params, "machine_type": "pump"},
                          files=[("file", ("a.wav", data, "audio/wav"))])
    assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_machine"
    ok = _post(client, data)
    assert ok.status_code == 200 and abs(ok.json()["score"] - row["score"]) <= 1e-5


def test_other_sample_rates_are_resampled_and_stereo_keeps_channel_0(server, good):
    import torch
    import torchaudio

    client, runs, *_ = server
    data, row = good
    wave, sr = sf.read(io.BytesIO(data), dtype="int16")
    # stereo: channel 0 is the clip, channel 1 something else entirely → the clip's own score, exactly
    stereo = np.stack([wave, wave[::-1]], axis=1)
    r = _post(client, _wav(stereo, sr))
    assert r.status_code == 200, r.text
    body = r.json()
    assert abs(body["score"] - row["score"]) <= 1e-5
    assert body["audio"]["orig_channels"] == 2 and body["audio"]["notes"] == ["kept channel 0 of 2"]
    # 44.1 kHz: resampled to the bundle's 16 kHz, and the response says so
    up = torchaudio.functional.resample(torch.from_numpy(wave.astype(np.float32) / 32768), sr, 44100).numpy()
    r = _post(client, _wav(up, 44100))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["audio"]["resampled"] is True and body["audio"]["orig_sample_rate"] == 44100
    assert body["audio"]["notes"] == ["resampled from 44100 Hz to 16000 Hz"]
    assert body["audio"]["duration_s"] == pytest.approx(10.0, abs=1e-3)
    assert np.isfinite(body["score"])


def test_anomaly_map_is_the_reconstruction_error_per_cell(server, good, published):
    from stethoscope.data.audio import decode_audio
    from stethoscope.publishing import load_bundle

    client, runs, *_ = server
    data, _ = good
    r = _post(client, data, map=True, multipart=True)
    assert r.status_code == 200, r.text
    (amap,) = r.json()["anomaly_maps"]
    values = np.asarray(amap["values"])
    assert amap["shape"] == [128, 313] and values.shape == (128, 313)
    bundle = load_bundle(published[0], "slider")
    wave, _ = decode_audio(data, 16000)
    offline = bundle.score_waveforms([wave], "id_00", want_map=True)[0]["maps"][amap["member"]]
    assert np.abs(values - offline).max() <= 1e-3  # the response rounds to 4 decimals
    assert (values >= 0).all() and values.mean() > 0
    assert "anomaly_maps" not in _post(client, data).json()


def test_models_health_and_docs(server):
    client, runs, port, reg = server
    listing = client.get("/v1/models")
    assert "registry" not in listing.json() and str(reg) not in listing.text and listing.json()["broken"] == []
    models = listing.json()["models"]
    assert [(m["machine_type"], m["scope"]) for m in models] == [("fan", "all"), ("slider", "all")]
    for m in models:
        manifest = _offline(runs, m["machine_type"])[1]
        assert m["version"] == manifest["version"]
        assert [x["name"] for x in m["members"]] == [x["name"] for x in manifest["members"]]
        assert m["metrics"]["validation"] == manifest["metrics"]["validation"]
        assert m["threshold"] == manifest["threshold"]["value"]
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["bundles"] == 2
    assert "registry" not in health.json() and str(reg) not in health.text
    assert client.get("/docs").status_code == 200
    assert "/v1/score" in client.get("/openapi.json").json()["paths"]


def test_overload_gives_503_with_retry_after_and_then_recovers(server, good):
    """A second, deliberately tiny application: one scoring request admitted at a time; a burst must give 200s and
    JSON 503s with Retry-After, nothing else."""
    from ray import serve

    from serve.app import build_app

    client, runs, port, reg = server
    data, row = good
    tiny = build_app({"registry": str(reg), "max_inflight": 1})
    serve.run(tiny, name="tiny", route_prefix="/tiny")
    try:
        url = f"http://127.0.0.1:{port}/tiny/v1/score"

        def one(_):
            with httpx.Client(timeout=120) as c:
                return c.post(url, params={"machine_type": "slider", "machine_id": "00"}, content=data,
                              headers={"content-type": "audio/wav"})

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(16)))
        codes = sorted(a.status_code for a in answers)
        assert set(codes) == {200, 503}, codes
        for a in answers:
            if a.status_code == 503:
                assert a.headers.get("retry-after") == "1"
                assert a.json()["error"] == "overloaded" and "retry" in a.json()["detail"]
        assert one(0).status_code == 200
    finally:
        serve.delete("tiny")


def test_endpoint_scores_are_bit_identical_to_offline_bundle_scores(server, published):
    """All 9 real slider id_00 test clips, one request at a time: the served score and member score equal, bit for
    bit, what the bundle computes offline from the same file (load_audio → Bundle.score_waveforms)."""
    from stethoscope.data.audio import load_audio
    from stethoscope.publishing import load_bundle

    client, runs, *_ = server
    bundle = load_bundle(published[0], "slider")
    table = _offline(runs, "slider")[0]
    clips = table[table["machine_id"] == "00"]["path"].tolist()
    assert len(clips) == 9
    for path in clips:
        wave, _ = load_audio(path, bundle.sample_rate)
        (offline,) = bundle.score_waveforms([wave], "id_00")
        body = _post(client, Path(path).read_bytes()).json()
        assert body["score"] == offline["score"] and body["members"][0]["raw_score"] == offline["raw"][0], path
        assert body["is_anomaly"] == offline["is_anomaly"]


def test_serve_config_yaml_is_a_valid_serve_config():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from serve.app import Detector, Settings, build_app
    from stethoscope.errors import ConfigError

    root = Path(__file__).resolve().parents[1]
    raw = yaml.safe_load((root / "serve" / "config.yaml").read_text())
    config = ServeDeploySchema.model_validate(raw)
    (app,) = config.applications
    assert app.import_path == "serve.app:build_app" and app.route_prefix == "/"
    settings = Settings.from_args(app.args)
    assert settings.max_seconds == 600 and settings.scoring == "inline" and Path(settings.registry).is_absolute()
    names = {d.name: d for d in app.deployments}
    # scoring: inline deploys the Ingress alone, and Serve refuses options for a deployment the app does not have
    assert list(names) == ["Ingress"] and names["Ingress"].max_ongoing_requests > 0
    # admission (args.max_inflight) answers over-capacity requests before Ray's slots run out, keeping room for
    # /healthz; with scoring: detector, the Detector's queue (its decorator's defaults) holds every admitted request
    assert names["Ingress"].max_ongoing_requests >= 2 * settings.max_inflight
    opts = Detector._deployment_config
    assert opts.max_ongoing_requests + opts.max_queued_requests >= settings.max_inflight
    assert raw["http_options"]["host"] == "127.0.0.1"
    assert names["Ingress"].backpressure_config.retry_after_s > 0
    build_app(app.args)  # the builder accepts the file's args
    with pytest.raises(ConfigError, match="unknown key"):
        build_app({"regsitry": "x"})


# ---------------------------------------------------------------------------------------------------------------
# long recordings and streams (issue 18)
# ---------------------------------------------------------------------------------------------------------------
ANOMALY_AT_S = 150


@pytest.fixture(scope="module")
def long_recording():
    """A 5-minute fan recording at 16 kHz: 100 synthetic normal 3 s fan id_00 clips one after another (the fan
    bundle was trained on such clips, so its window is 3 s), the one at [150 s, 153 s) with clicks (the anomaly, at a
    known time)."""
    from stethoscope.data.synthetic import synthesize_clip

    rng = np.random.default_rng(11)
    sr = 16000
    clips = [synthesize_clip("fan", "00", anomaly="clicks" if 3 * i == ANOMALY_AT_S else None, duration_s=3.0,
                             sample_rate=sr, rng=rng) for i in range(100)]
    return np.concatenate(clips), sr


def test_a_5_minute_recording_gets_a_score_per_window_and_its_highest_at_the_anomaly(server, long_recording, published):
    from stethoscope.data.audio import decode_audio
    from stethoscope.publishing import load_bundle

    client, *_ = server
    wave, sr = long_recording
    data = _wav(wave, sr)
    r = _post(client, data, "fan")
    assert r.status_code == 200, r.text
    body = r.json()
    win = body["windows"]
    # the window is the bundle's clip length (clip_seconds, 3 s), the hop the server's 5 s capped at the window
    assert (win["window_s"], win["hop_s"], win["count"]) == (3.0, 3.0, 100)
    assert win["start_s"] == [3.0 * i for i in range(100)] and win["end_s"][-1] == 300.0
    top = int(np.argmax(win["scores"]))
    assert win["start_s"][top] == ANOMALY_AT_S and win["max_index"] == top, win["scores"]
    assert body["score"] == win["max"] == max(win["scores"]) and win["mean"] == pytest.approx(np.mean(win["scores"]))
    assert win["max"] > body["threshold"] and body["is_anomaly"] is True
    assert any(w["start_s"] == ANOMALY_AT_S for w in win["over_threshold"])
    assert all(w["score"] > body["threshold"] for w in win["over_threshold"])
    # each window's score is the bundle's offline score of that slice
    bundle = load_bundle(published[0], "fan")
    decoded, _ = decode_audio(data, sr)
    for i in (0, top, 99):
        a = int(win["start_s"][i] * sr)
        (offline,) = bundle.score_waveforms([decoded[a:a + 3 * sr]], "id_00")
        assert win["scores"][i] == pytest.approx(offline["score"], abs=1e-6), i
    # a request may set its own window and hop; with map=true each window has its own map
    r = _post(client, _wav(wave[: 20 * sr], sr), "fan", map=True, params_extra={"window_s": 8, "hop_s": 6})
    assert r.status_code == 200, r.text
    maps, win = r.json()["anomaly_maps"], r.json()["windows"]
    assert win["start_s"] == [0.0, 6.0, 12.0] and win["end_s"] == [8.0, 14.0, 20.0]
    assert [m["window"] for m in maps] == [0, 1, 2] and [m["start_s"] for m in maps] == [0.0, 6.0, 12.0]
    assert all(m["shape"][1] == 1 + 8 * sr // 512 for m in maps)
    assert _post(client, _wav(wave[: 20 * sr], sr), "fan", params_extra={"window_s": 5, "hop_s": 6}).status_code == 422
    r = _post(client, _wav(wave[: 20 * sr], sr), "fan", params_extra={"window_s": 0.01})
    assert r.json()["error"] == "invalid_field" and "shortest scorable clip" in r.json()["detail"]


def _ws(port: int, **params):
    from websockets.sync.client import connect

    q = "&".join(f"{k}={v}" for k, v in {"machine_type": "slider", "machine_id": "00", **params}.items())
    return connect(f"ws://127.0.0.1:{port}/v1/stream?{q}", open_timeout=60, max_size=2**24)


def _recv(ws) -> dict:
    import json

    return json.loads(ws.recv(timeout=60))


def test_a_stream_gets_each_window_as_soon_as_it_is_complete(server, long_recording):
    client, _, port, _ = server
    wave, sr = long_recording
    part = wave[(ANOMALY_AT_S - 12) * sr:(ANOMALY_AT_S + 9) * sr]  # 21 s, the clicks at 12-15 s
    pcm = _wav(part, sr)[44:]  # the WAV's 16-bit PCM samples (after its 44-byte header)
    offline = _post(client, _wav(part, sr), "fan").json()["windows"]
    with _ws(port, machine_type="fan") as ws:
        ready = _recv(ws)
        assert ready["event"] == "ready" and (ready["window_s"], ready["hop_s"], ready["sample_rate"]) == (3.0, 3.0, sr)
        ws.send(pcm[: 2 * 3 * sr + 1])  # 3 s and one byte (half a sample)
        first = _recv(ws)  # answered before any more audio is sent
        assert (first["event"], first["index"], first["start_s"], first["end_s"]) == ("window", 0, 0.0, 3.0)
        rest, step = pcm[2 * 3 * sr + 1:], 16001  # odd chunks: samples split across messages
        for i in range(0, len(rest), step):
            ws.send(rest[i:i + step])
        ws.send("end")
        got = [first]
        while (m := _recv(ws))["event"] == "window":
            got.append(m)
        assert m == {"event": "end", "windows": 7, "received_s": 21.0, "unscored_s": 0.0,
                     "reason": "client ended the stream"}
    assert [g["start_s"] for g in got] == offline["start_s"]
    assert [g["score"] for g in got] == pytest.approx(offline["scores"], abs=1e-6)
    assert int(np.argmax([g["score"] for g in got])) == 4  # the window at 12-15 s
    assert got[4]["is_anomaly"] is True and got[4]["threshold"] == ready["threshold"]


def test_a_stream_that_stops_mid_window_or_sends_garbage_gets_a_clear_end_and_the_server_stays_healthy(server, good):
    from websockets.exceptions import ConnectionClosed

    client, _, port, _ = server
    data, _ = good
    with _ws(port) as ws:  # 7 s, then end: no window is complete
        assert _recv(ws)["event"] == "ready"
        ws.send(data[44:44 + 2 * 7 * 16000])
        ws.send('{"event": "end"}')
        assert _recv(ws) == {"event": "end", "windows": 0, "received_s": 7.0, "unscored_s": 7.0,
                             "reason": "client ended the stream"}
    cases = [({}, "hello", 1003, "bad_message"),
             ({"format": "f32le"}, np.array([np.nan] * 8, "<f4").tobytes(), 1007, "non_finite_samples"),
             ({"machine_type": "pump"}, None, 4404, "unknown_machine"),
             ({"machine_id": "7"}, None, 4422, "invalid_field"),
             ({"format": "mp3"}, None, 4422, "invalid_field")]
    for params, message, code, error in cases:
        with _ws(port, **params) as ws:
            if message is not None:
                assert _recv(ws)["event"] == "ready"
                ws.send(message)
            answer = _recv(ws)
            assert answer["error"] == error and len(answer["detail"]) > 10, answer
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
            assert closed.value.rcvd.code == code, params
    assert client.get("/healthz").json()["status"] == "ok"
    assert _post(client, data).status_code == 200
