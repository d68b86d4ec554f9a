"""The web page (``GET /``) and the offline API docs (``/docs``) in a real headless browser: Playwright
drives Debian's chromium against Ray Serve on 127.0.0.1, serving a bundle published from a real pipeline run
(``fan_runs``). The page's numbers are checked against the API's answer for the same bytes; no mocks.

Chromium comes from Debian (``make test`` installs it); Playwright never downloads a browser. Without chromium the
tests skip, unless ``STETHOSCOPE_REQUIRE_BROWSER=1`` (set by ``make test``), which makes that a failure."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import soundfile as sf

from serve_helpers import free_port  # tests/ is on sys.path (no __init__.py)

pytestmark = pytest.mark.slow

httpx = pytest.importorskip("httpx")

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 # a fake microphone (a beeping tone) that needs no permission prompt: for the recording test
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
#: viridis's two ends (serve/static/app.js COLOURS): the colour of a map's lowest and highest value
LOW, HIGH = (0x44, 0x01, 0x54), (0xFD, 0xE7, 0x25)


def _shown(x: float) -> float:
    """``x`` rounded as the page shows it (JavaScript's ``toPrecision(6)``: 6 significant digits)."""
    return float(f"{x:.5e}")


@pytest.fixture(scope="session")  # session-scoped, so it is checked before the session's pipeline runs (`server`)
def chromium() -> str:
    """The path of Debian's chromium; skips (or, with STETHOSCOPE_REQUIRE_BROWSER=1, fails) without it or Playwright."""
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        missing = f"Playwright for Python is not installed ({exc})"
    exe = shutil.which("chromium")
    if exe is None:
        missing = "Debian's chromium is not installed (no `chromium` on PATH)"
    if missing:
        why = f"{missing}; `make test` installs it"
        if os.environ.get("STETHOSCOPE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{why} (STETHOSCOPE_REQUIRE_BROWSER=1)")
        pytest.skip(why)
    return exe


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(ray_session, fan_runs, tmp_path_factory):
    """The fan autoencoder run published to a fresh registry and served on a free port of 127.0.0.1."""
    from ray import serve

    from serve.app import build_app
    from stethoscope.publishing import publish_runs

    base = tmp_path_factory.mktemp("web")
    (pub,) = publish_runs([fan_runs[0]], base / "registry", out_dir=base / "publish")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"registry": str(base / "registry")}), name="stethoscope-web", route_prefix="/")
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)
    try:
        yield client, pub.manifest
    finally:
        client.close()
        serve.shutdown()


@pytest.fixture()
def page(browser, server):
    """A fresh page; every URL it requests is recorded in ``page.requested``."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = context.new_page()
    pg.requested = []
    pg.on("request", lambda r: pg.requested.append(r.url))
    pg.set_default_timeout(60_000)
    yield pg
    context.close()


def _assert_local(page, client) -> None:
    """Every http(s) request the page made went to the test server (data:/blob: URLs are made in the page)."""
    origin = urlsplit(str(client.base_url)).netloc
    web = [u for u in page.requested if urlsplit(u).scheme in ("http", "https", "ws", "wss")]
    assert web and all(urlsplit(u).netloc == origin for u in web), [u for u in web if urlsplit(u).netloc != origin]


def _score_api(client, data: bytes, machine_id: str = "00") -> httpx.Response:
    return client.post("/v1/score", params={"machine_type": "fan", "machine_id": machine_id, "map": "true"},
                       content=data, headers={"content-type": "audio/wav"})


def _open(page, client) -> None:
    page.goto(f"{client.base_url}/")
    page.wait_for_selector("#machine-type option[value=fan]", state="attached")
    page.select_option("#machine-type", "fan")
    page.fill("#group", "00")


def _assert_result_matches(page, body: dict) -> None:
    assert float(page.inner_text("#score")) == _shown(body["score"])
    assert float(page.inner_text("#threshold")) == _shown(body["threshold"])
    assert page.inner_text("#decision") == ("anomalous" if body["is_anomaly"] else "normal")
    rows = page.locator("#members tr")
    assert rows.count() == len(body["members"]) >= 1
    for i, m in enumerate(body["members"]):
        cells = rows.nth(i).locator("td").all_inner_texts()
        assert cells[:2] == [m["name"], m["method"]]
        assert [float(c) for c in cells[2:]] == [_shown(m["weight"]), _shown(m["raw_score"]),
                                                 _shown(m["standardized_score"])]


def test_page_scores_an_uploaded_clip_as_the_api_does(page, server, dcase2020_root, tmp_path):
    client, manifest = server
    clip = dcase2020_root / "dev_data" / "slider" / "test" / "anomaly_id_00_00000000.wav"  # a real 10 s, 16 kHz clip
    _open(page, client)
    assert page.inner_text("#group-label") == "machine_id"  # a DCASE 2020 bundle is identified by machine_id
    assert page.locator("#group-options option").evaluate_all("os => os.map(o => o.value)") == ["00"]
    assert manifest["version"] in page.inner_text("#model-info")
    page.set_input_files("#file", str(clip))
    page.check("#map")
    page.click("#submit")
    page.wait_for_selector("#result", state="visible")

    body = _score_api(client, clip.read_bytes()).json()
    assert body["model_version"] == manifest["version"]
    _assert_result_matches(page, body)

    # each anomaly map is drawn: its highest cell in viridis's top colour, its lowest in the bottom one, at the cell's
    # place with time on x and mel bin on y, low bins at the bottom
    assert body["anomaly_maps"] and page.locator("canvas.map").count() == len(body["anomaly_maps"])
    for i, m in enumerate(body["anomaly_maps"]):
        values = np.asarray(m["values"])
        bins, frames = m["shape"]
        assert values.shape == (bins, frames)
        drawn = page.evaluate("""id => {
            const c = document.getElementById(id);
            return {w: c.width, h: c.height, px: Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)};
        }""", f"map-{i}")
        rgba = np.asarray(drawn["px"], dtype=np.uint8).reshape(drawn["h"], drawn["w"], 4)
        assert (rgba[..., 3] == 255).all() and len(np.unique(rgba[..., :3].reshape(-1, 3), axis=0)) > 20

        def pixel(bin_: int, frame: int) -> tuple[int, ...]:
            x = int((frame + 0.5) * drawn["w"] / frames)
            y = int((bins - 1 - bin_ + 0.5) * drawn["h"] / bins)
            return tuple(int(v) for v in rgba[y, x, :3])

        assert pixel(*np.unravel_index(values.argmax(), values.shape)) == HIGH
        assert pixel(*np.unravel_index(values.argmin(), values.shape)) == LOW
    assert page.locator("#scale-0").count() == 1
    _assert_local(page, client)
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_api_errors_are_shown_verbatim(page, server, tmp_path):
    client, _ = server
    text = tmp_path / "notes.wav"
    text.write_text("this is not a recording\n" * 10)
    expected = _score_api(client, text.read_bytes()).json()
    assert expected["error"] == "not_audio"
    _open(page, client)
    page.set_input_files("#file", str(text))
    page.click("#submit")
    page.wait_for_selector("#error", state="visible")
    shown = page.inner_text("#error")
    assert shown == f"415 {expected['error']}: {expected['detail']}"
    assert page.locator("#result").is_hidden()


def test_a_recording_from_the_microphone_is_sent_as_16_bit_wav(page, server):
    client, manifest = server
    page.context.grant_permissions(["microphone"])
    _open(page, client)
    page.click("#record")
    page.wait_for_selector("#stop:not([disabled])")
    page.wait_for_timeout(3500)  # the bundle's clips are 3 s long
    page.click("#stop")
    page.wait_for_selector("#clip-status:has-text('recording.wav')")
    # the clip the page made: mono 16-bit PCM WAV at the bundle's sample rate
    data = bytes(page.evaluate("async () => Array.from(new Uint8Array(await clip.blob.arrayBuffer()))"))
    info = sf.info(io.BytesIO(data))
    assert (info.format, info.subtype, info.channels, info.samplerate) == ("WAV", "PCM_16", 1, manifest["sample_rate"])
    wave, _ = sf.read(io.BytesIO(data))
    assert info.duration > 2.5 and np.abs(wave).max() > 0.01  # Chromium's fake microphone beeps
    page.click("#submit")
    page.wait_for_selector("#result", state="visible")
    _assert_result_matches(page, _score_api(client, data).json())


def test_api_docs_render_offline(page, server):
    client, _ = server
    page.goto(f"{client.base_url}/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path[data-path='/v1/score']")
    assert page.locator(".swagger-ui .opblock").count() >= 3  # score, models, healthz
    _assert_local(page, client)
    assert client.get("/docs/oauth2-redirect").status_code == 200
    assert client.get("/redoc").status_code == 404  # not served: ReDoc loads its logo from the internet


def test_static_files_stay_inside_the_package(server):
    client, _ = server
    assert client.get("/static/app.js").status_code == 200
    assert "Content-Security-Policy" in client.get("/").headers
    for path in ("/static/%2e%2e/web.py", "/static/..%2fweb.py", "/static/%2e%2e/%2e%2e/pyproject.toml"):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"] == "not_found", (path, r.text)
