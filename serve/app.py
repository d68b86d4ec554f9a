"""stethoscope's HTTP endpoint: a FastAPI ingress in front of per-machine detector deployments (Ray Serve).

Routes (OpenAPI docs at ``/docs``):

- ``POST /v1/score`` — score one clip. The WAV comes as a multipart file (field ``file``) or as the raw body
  (``Content-Type: audio/wav``); ``machine_type`` plus ``machine_id`` (DCASE 2020 bundles) or ``section`` (2021+)
  come as query parameters or form fields. ``?map=true`` adds each localizing member's anomaly map
  ([n_mels][frames]; for reconstruction methods the reconstruction error per cell).
  A recording longer than ``long_after_s`` (or any request with ``window_s`` / ``hop_s``) is scored per window
  (``windows`` in the answer: each window's score, the max and mean, the windows over the threshold).
- ``WS /v1/stream`` — mono PCM chunks in, each window's score out as soon as the window is complete.
- ``GET /`` — the web page (serve/static, :mod:`serve.web`); ``/docs`` — Swagger UI served from the package.
- ``GET /v1/models`` — the published bundles with their members, threshold and metrics, and the ``broken`` ones
  (machine type, scope and why).
- ``GET /healthz`` — 200 ``ok`` when the registry can be read, 200 ``degraded`` when some bundle is broken (listed
  with why), 503 ``unhealthy`` when the registry cannot be read or is gone. Neither route names the registry's path.

Deployments: ``Ingress`` (HTTP, API keys and CORS, validation, admission, audio decoding with
:func:`stethoscope.data.audio.decode_audio` in a small thread pool, off the event loop) scores itself
(``scoring: inline``) or calls ``Detector`` (``scoring: detector``); the scoring replica loads bundles lazily through
``@serve.multiplexed`` (LRU, one model ID per bundle version) and scores requests in batches through ``@serve.batch``
(computed in a worker thread while the event loop collects the next batch).
The ingress admits at most ``max_inflight`` scoring requests at once, counted from their first byte, and answers
the others 503 + ``Retry-After`` at once; its Ray ``max_ongoing_requests`` (serve/config.yaml) is set well above that,
so ``/healthz`` and ``/v1/models`` never queue behind scoring requests or stalled uploads. A body that is not complete
within ``body_timeout_s`` gets 408, a request not answered within ``request_timeout_s`` gets 503, and a detector that
pushes back is answered 503 + ``Retry-After`` too.

Every error body is ``{"error": <snake_case code>, "detail": <message>}`` and never a stack trace, including
FastAPI's own validation errors, unknown routes and unexpected failures (500 ``internal_error``): see
:data:`AUDIO_STATUS` and the README's bad-input table. Another sample rate is resampled (soxr) and a multi-channel
clip keeps channel 0; the response's ``audio.notes`` says so.

Run: ``serve run serve/config.yaml`` (from the repository root), or ``serve deploy serve/config.yaml`` on a cluster.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the route signatures' annotations at runtime.
import asyncio
import functools
import hmac
import logging
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as StarletteRequest

from . import web

log = logging.getLogger("stethoscope.serve")

#: Bundles a Detector replica keeps loaded (least recently used ones are dropped).
MAX_BUNDLES_PER_REPLICA = int(os.environ.get("STETHOSCOPE_MAX_BUNDLES_PER_REPLICA", "8"))

RAW_AUDIO_TYPES = {"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "application/octet-stream"}
#: AudioError reason → HTTP status.
AUDIO_STATUS = {
    "not_audio": 415,
    "empty_file": 422,
    "truncated": 422,
    "too_short": 422,
    "non_finite_samples": 422,
    "unsupported_sample_rate": 422,
    "decode_failed": 422,
    "too_long": 413,
    "too_many_samples": 413,
}


#: ``/v1/stream`` PCM formats: numpy dtype and bytes per sample.
PCM_FORMATS = {"s16le": ("<i2", 2), "f32le": ("<f4", 4)}
#: ``Settings.scoring`` values.
SCORING_MODES = ("inline", "detector")


@dataclass(frozen=True)
class Settings:
    """Server options: the ``args`` of ``serve/config.yaml``.

    registry: registry root, a folder or a pyarrow-filesystem URI (a relative folder is made absolute where the
        application is built). max_seconds: longest clip accepted (s, read from the header). max_bytes: largest
        request body (bytes). max_batch_size / batch_wait_timeout_s: ``@serve.batch`` of the Detector.
    max_sample_rate: highest sample rate accepted (Hz). max_decode_samples: most values (frames × channels) one
        clip may decode to. Both are checked from the header before decoding (:func:`stethoscope.data.audio.decode_audio`).
    decode_threads: threads of the ingress's decode pool (decoding never runs on its event loop).
    max_inflight: scoring requests the ingress admits at once (from their first byte to their answer); more get 503.
    body_timeout_s: deadline for receiving a whole request body (s); a stalled upload gets 408.
    request_timeout_s: deadline for answering a scoring request, body included (s); past it, 503.
    refresh_s: how long the ingress trusts its list of published bundles before reading the registry again.
    retry_after_s: the ``Retry-After`` (s) sent with 503s. torch_threads: intra-op threads per Detector replica.

    scoring: where clips are scored: ``inline`` (in the Ingress replica itself, batched with ``@serve.batch``:
        one Ray hop less, the fastest on a small CPU machine) or ``detector`` (in a separate ``Detector``
        deployment that scales on its own, e.g. one replica per GPU). window_s / hop_s: window and hop (s) of a long
        recording's per-window scores (a bundle whose manifest has ``clip_seconds`` uses that as its window).
        long_after_s: a recording longer than this (s) is scored per window unless the request sets ``window_s``.
        stream_idle_s: a ``/v1/stream`` WebSocket that sends nothing for this long is closed.
        max_batch_clips: most clips one ``POST /v1/score/batch`` may carry.
    api_keys_file: a file of API keys, one per line (``#`` comments); the keys in the ``STETHOSCOPE_API_KEYS``
        environment variable (comma-separated) are added. With any key set, every route but ``/healthz`` and the
        static web page needs ``Authorization: Bearer <key>``. cors_origins: origins allowed by CORS (none: CORS off).

    Defaults not given by any paper are ours, and equal serve/config.yaml's: 600 s and 32 MiB (a 10-minute 16 kHz
    16-bit mono recording is 19 MiB), 192 kHz (the highest rate of common recorders), 2**24 values (60 s of 48 kHz
    audio in 5 channels), 2 decode threads, 128 admitted requests (twice the Detector's max_ongoing_requests), 60 s
    for a body (a 32 MiB body needs 4.5 Mbit/s; a 10 s 16 kHz clip, 43 kbit/s) and 120 s for a request.
    """

    registry: str = "registry"
    max_seconds: float = 600.0
    max_bytes: int = 32 * 1024 * 1024
    max_sample_rate: int = 192_000
    max_decode_samples: int = 2**24
    decode_threads: int = 2
    max_inflight: int = 128
    body_timeout_s: float = 60.0
    request_timeout_s: float = 120.0
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.002
    refresh_s: float = 5.0
    retry_after_s: float = 1.0
    torch_threads: int = 1
    scoring: str = "inline"
    window_s: float = 10.0
    hop_s: float = 5.0
    long_after_s: float = 15.0
    stream_idle_s: float = 30.0
    max_windows: int = 1000
    max_streams: int = 32
    max_batch_clips: int = 64
    api_keys_file: str | None = None
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from stethoscope.errors import ConfigError

        if not self.max_seconds > 0 or not self.max_bytes > 0:
            raise ConfigError(f"serve settings: max_seconds and max_bytes must be > 0 ({self.max_seconds}, {self.max_bytes})")
        if (self.max_batch_size < 1 or self.batch_wait_timeout_s < 0 or self.refresh_s < 0 or self.torch_threads < 1
                or self.max_sample_rate < 1 or self.max_decode_samples < 1 or self.decode_threads < 1
                or self.max_inflight < 1 or not self.body_timeout_s > 0 or not self.request_timeout_s > 0):
            raise ConfigError(f"serve settings out of range: {self}")
        if self.scoring not in SCORING_MODES:
            raise ConfigError(f"serve settings: scoring = {self.scoring!r}; expected one of {list(SCORING_MODES)}")
        if not (0 < self.hop_s <= self.window_s) or not self.long_after_s >= self.window_s or not self.stream_idle_s > 0 \
                or self.max_windows < 1 or self.max_streams < 1 or self.max_batch_clips < 1:
            raise ConfigError(f"serve settings: need 0 < hop_s <= window_s <= long_after_s, stream_idle_s > 0 and "
                              f"max_windows, max_streams, max_batch_clips >= 1 (hop_s {self.hop_s}, window_s "
                              f"{self.window_s}, long_after_s {self.long_after_s}, stream_idle_s {self.stream_idle_s}, "
                              f"max_windows {self.max_windows}, max_streams {self.max_streams}, max_batch_clips "
                              f"{self.max_batch_clips})")
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins or ()))

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> "Settings":
        """From config-file ``args`` (unknown keys → ConfigError); a relative local registry is made absolute."""
        from stethoscope.config import from_dict

        s = from_dict(cls, dict(args or {}), "serve/config.yaml args")
        if "://" not in s.registry and not os.path.isabs(s.registry):
            s = cls(**{**asdict(s), "registry": os.path.abspath(s.registry)})
        return s


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status, headers=headers)


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class HTTPProblem(Exception):
    """A request that gets a 4xx/5xx answer (turned into :func:`_error` by the route)."""

    def __init__(self, status: int, code: str, detail: str, **extra: Any):
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra

    def response(self, retry_after: float | None = None) -> JSONResponse:
        headers = _retry_after(retry_after) if retry_after is not None else None
        return _error(self.status, self.code, self.detail, headers, **self.extra)


# ---------------------------------------------------------------------------------------------------------------
# Scoring: per-machine bundles, multiplexed and batched (in the Ingress itself, or in a Detector deployment)
# ---------------------------------------------------------------------------------------------------------------
def _prepare_torch(settings: Settings) -> None:
    """Set the replica's torch threads and import the methods now, not on the first request."""
    import torch

    torch.set_num_threads(settings.torch_threads)
    import stethoscope.publishing  # noqa: F401
    from stethoscope import methods

    methods.names()


async def _load_bundle(settings: Settings, model_id: str):
    """The bundle of ``model_id`` (``<machine_type>/<scope>/<version>``), loaded in a thread (off the event loop)."""
    from stethoscope.publishing import load_bundle

    machine_type, scope, version = model_id.split("/")
    log.info("loading bundle %s", model_id)
    return await asyncio.to_thread(load_bundle, settings.registry, machine_type, scope, version)


def _machine(bundle: dict[str, Any]) -> dict[str, Any]:
    """The ``machine`` of a response: machine_type, machine_id or section, and the bundle."""
    return {"machine_type": bundle["machine_type"], bundle["id_field"]: bundle["id_value"],
            "bundle": f"{bundle['machine_type']}/{bundle['scope']}"}


def _member_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each member of a scored bundle with its raw and standardized score (the ``members`` of a response)."""
    return [{**m, "raw_score": r, "standardized_score": z}
            for m, r, z in zip(result["members"], result["raw"], result["standardized"])]


def _score_items(bundle, waves: list[np.ndarray], groups: list[str | None], want_maps: list[bool]) -> list[dict[str, Any]]:
    """Score a batch of waveforms with one bundle (``Bundle.score_waveforms``, one call per (group, map) pair).

    Runs in a worker thread: the replica's event loop goes on receiving requests (they form the next batch, as
    ``@serve.batch`` runs one batch at a time). One clip that cannot be scored gets ``{"error": ...}`` and never
    fails the others. Each row gets the threshold, version, members, batch size and the batch's compute time (ms).
    """
    t0 = time.perf_counter()
    results: list[dict[str, Any] | None] = [None] * len(waves)
    keys: dict[tuple, list[int]] = {}
    for i, (g, m) in enumerate(zip(groups, want_maps)):
        keys.setdefault((g, bool(m)), []).append(i)
    for (g, m), idx in keys.items():
        try:
            rows = bundle.score_waveforms([waves[i] for i in idx], g, want_map=m)
        except Exception:  # noqa: BLE001 - one bad clip must not fail the others: score them one by one
            rows = []
            for i in idx:
                try:
                    rows.append(bundle.score_waveforms([waves[i]], g, want_map=m)[0])
                except Exception as exc:  # noqa: BLE001 - reported to this request's client as a 422
                    rows.append({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})
        for i, row in zip(idx, rows):
            results[i] = row
    compute_ms = (time.perf_counter() - t0) * 1e3
    members = [{"name": x.name, "method": x.method.name, "weight": x.weight} for x in bundle.members]
    out = []
    for row in results:
        assert row is not None
        if "error" in row:
            out.append(row)
            continue
        out.append({**row, "threshold": bundle.threshold.value, "version": bundle.version, "members": members,
                    "batch_size": len(waves), "compute_ms": compute_ms})
    return out


@serve.deployment(name="Detector", max_ongoing_requests=64, max_queued_requests=256,
                  ray_actor_options={"num_cpus": 0.5})
class Detector:
    """``scoring: detector``: loads bundles lazily (``@serve.multiplexed``: model ID
    ``<machine_type>/<scope>/<version>``) and scores batched requests (``@serve.batch``; batches never mix model
    IDs). Scales apart from the Ingress (e.g. one replica per GPU)."""

    def __init__(self, settings: dict[str, Any]):
        self.settings = Settings(**settings)
        self._score_batch.set_max_batch_size(self.settings.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        _prepare_torch(self.settings)

    @serve.multiplexed(max_num_models_per_replica=MAX_BUNDLES_PER_REPLICA)
    async def get_bundle(self, model_id: str):
        return await _load_bundle(self.settings, model_id)

    async def score(self, wave: np.ndarray, group: str | None, want_map: bool) -> dict[str, Any]:
        """Score one waveform [samples] float32 at the bundle's sample rate; see ``Bundle.score_waveforms``."""
        return await self._score_batch(wave, group, want_map)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _score_batch(self, waves: list[np.ndarray], groups: list[str | None],
                           want_maps: list[bool]) -> list[dict[str, Any]]:
        bundle = await self.get_bundle(serve.get_multiplexed_model_id())
        return await asyncio.to_thread(_score_items, bundle, waves, groups, want_maps)


# ---------------------------------------------------------------------------------------------------------------
# Ingress: HTTP
# ---------------------------------------------------------------------------------------------------------------
# FastAPIOffline: FastAPI whose /docs (Swagger UI) is served from assets inside that package, not from a CDN. No
# /redoc: ReDoc still fetches its logo from the internet.
api: FastAPI = FastAPIOffline(
    redoc_url=None,
    title="stethoscope",
    version="1",
    description="Unsupervised anomalous sound detection (DCASE Task 2): one detector ensemble per machine type.",
)
web.install(api)  # GET / (the web page) and /static/*


# ---------------------------------------------------------------------------------------------------------------
# Access: API keys and CORS (pure ASGI middleware, configured by the Ingress replica from its Settings)
# ---------------------------------------------------------------------------------------------------------------
#: Paths that never need an API key: the health check, and the web page with its static assets and the API docs
#: page (they hold no data; every call they make to /v1 sends the key).
PUBLIC_PATHS = ("/healthz", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json")
PUBLIC_PREFIXES = ("/static/", "/static-offline-docs/")


def read_api_keys(settings: Settings, environ: Mapping[str, str] | None = None) -> tuple[bytes, ...]:
    """The API keys in force: ``STETHOSCOPE_API_KEYS`` (comma-separated) plus the lines of ``settings.api_keys_file``
    (blank lines and ``#`` comments skipped). None at all: the API is open.

    Raises:
        ConfigError: ``api_keys_file`` cannot be read, or holds no key (a file that was meant to lock the API must
            not silently leave it open).
    """
    from stethoscope.errors import ConfigError

    environ = os.environ if environ is None else environ
    keys = [k.strip() for k in environ.get("STETHOSCOPE_API_KEYS", "").split(",") if k.strip()]
    if settings.api_keys_file:
        try:
            with open(settings.api_keys_file, encoding="utf-8") as fh:
                from_file = [ln.strip() for ln in fh if ln.strip() and not ln.strip().startswith("#")]
        except OSError as exc:
            raise ConfigError(f"serve settings: api_keys_file {settings.api_keys_file!r} cannot be read "
                              f"({type(exc).__name__}: {exc.strerror or exc})") from None
        if not from_file:
            raise ConfigError(f"serve settings: api_keys_file {settings.api_keys_file!r} holds no key "
                              "(one key per line; '#' starts a comment)")
        keys += from_file
    return tuple(k.encode() for k in keys)


def key_allowed(header: str | None, keys: tuple[bytes, ...]) -> bool:
    """Whether an ``Authorization`` header carries one of ``keys`` as a bearer token. Every key is compared, each
    with :func:`hmac.compare_digest` (constant time), so the answer's timing does not tell which key nearly matched."""
    if not keys:
        return True
    scheme, _, token = (header or "").partition(" ")
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token.strip().encode(), key)
    return ok and scheme.lower() == "bearer"


class AccessMiddleware:
    """API keys and CORS for HTTP and WebSocket requests, from the Ingress replica's :class:`Settings`.

    Serve freezes the FastAPI app when ``@serve.ingress`` decorates the class, before the settings are known, so the
    middleware is registered here and reads its configuration from :attr:`config`, which the Ingress replica sets
    in its ``__init__`` (one Ingress per replica process). CORS is Starlette's ``CORSMiddleware``, built only when
    ``cors_origins`` is set. A request without a valid key gets 401 ``unauthorized`` (HTTP) or a WebSocket close
    with code 1008 before the handshake completes.
    """

    config: dict[str, Any] = {"keys": (), "cors_origins": ()}

    def __init__(self, app):
        self.app = app
        self._cors = None
        self._cors_for: tuple | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        keys = self.config["keys"]
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):  # an application under a route prefix (e.g. /locked/healthz)
            path = path[len(root):] or "/"
        public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
        if keys and not public and not (scope["type"] == "http" and scope.get("method") == "OPTIONS"):
            header = dict(scope.get("headers") or ()).get(b"authorization", b"").decode("latin-1")
            if not key_allowed(header, keys):
                if scope["type"] == "websocket":
                    return await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
                detail = ("a valid API key is required: send 'Authorization: Bearer <key>'" if not header else
                          "the API key is not valid (send 'Authorization: Bearer <key>')")
                response = _error(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        origins = self.config["cors_origins"]
        if origins and scope["type"] == "http":
            if self._cors_for != origins:
                from starlette.middleware.cors import CORSMiddleware

                self._cors = CORSMiddleware(self.app, allow_origins=list(origins), allow_methods=["GET", "POST"],
                                            allow_headers=["Authorization", "Content-Type"])
                self._cors_for = origins
            return await self._cors(scope, receive, send)
        return await self.app(scope, receive, send)


api.add_middleware(AccessMiddleware)

# Exception handlers are registered here, before ``@serve.ingress(api)`` below: Serve freezes (pickles) the app when
# the class is decorated, so handlers added after it never reach the replicas.
@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own validation errors (e.g. ``map=maybe``) in the documented shape."""
    parts = []
    for e in exc.errors():
        loc = [str(x) for x in e.get("loc", ())]
        where = f"{loc[0]} parameter {'.'.join(loc[1:])!r}" if len(loc) > 1 else (loc[0] if loc else "request")
        parts.append(f"{where}: {e.get('msg', 'invalid')} (got {e.get('input')!r})")
    return _error(422, "invalid_field", "; ".join(parts) or "the request is not valid")


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own answers (unknown route, wrong method) in the documented shape."""
    code = _HTTP_CODES.get(exc.status_code) or re.sub(r"[^a-z0-9]+", "_", str(exc.detail).lower()).strip("_") or "error"
    detail = {404: f"no route {request.url.path!r}; see /docs",
              405: f"{request.method} is not allowed on {request.url.path!r}; see /docs"}.get(exc.status_code, str(exc.detail))
    return _error(exc.status_code, code, detail, headers=getattr(exc, "headers", None))


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:  # last resort; routes catch their own
    log.exception("unhandled error on %s", request.url.path)
    return _error(500, "internal_error", f"{type(exc).__name__}; see the server log")


@dataclass
class ScoreQuery:
    """The query parameters of ``POST /v1/score`` and ``/v1/score/batch`` (a FastAPI class dependency). The machine
    fields may come as form fields of a multipart body instead."""

    machine_type: str | None = Query(None, description="e.g. slider")
    machine_id: str | None = Query(None, description="two digits (DCASE 2020 machine_id)")
    section: str | None = Query(None, description="two digits (DCASE 2021+ section)")
    map: bool = Query(False, description="add each localizing member's anomaly map [n_mels][frames]")
    window_s: float | None = Query(None, gt=0, description="score per window of this many seconds")
    hop_s: float | None = Query(None, gt=0, description="hop between windows (s)")


def _openapi_body(file_schema: dict[str, Any], raw_audio: bool, responses: dict[str, str]) -> dict[str, Any]:
    """The ``openapi_extra`` of a scoring route: a multipart form (``file`` + the machine fields), optionally a raw
    audio/wav body, and the route's documented error statuses besides the shared 404 and 503."""
    form = {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": file_schema,
        "machine_type": {"type": "string"},
        "machine_id": {"type": "string", "description": "two digits, DCASE 2020 bundles"},
        "section": {"type": "string", "description": "two digits, DCASE 2021+ bundles"},
    }}}
    content = {"multipart/form-data": form}
    if raw_audio:
        content["audio/wav"] = {"schema": {"type": "string", "format": "binary"}}
    shared = {"404": "unknown machine (the body lists the published ones)",
              "503": "overloaded; retry after Retry-After seconds"}
    return {"requestBody": {"required": True, "content": content},
            "responses": {code: {"description": text} for code, text in sorted({**shared, **responses}.items())}}


_SCORE_BODY = _openapi_body(
    {"type": "string", "format": "binary", "description": "the clip (WAV)"}, raw_audio=True,
    responses={"413": "clip longer than max_seconds, or body bigger than max_bytes",
               "415": "not audio / unsupported Content-Type",
               "422": "missing field, empty, truncated or too short clip"})
_BATCH_BODY = _openapi_body(
    {"type": "array", "items": {"type": "string", "format": "binary"},
     "description": "the clips (WAV), one 'file' field each, at most max_batch_clips"}, raw_audio=False,
    responses={"200": "one result per clip: a score, or that clip's 4xx status, error and detail",
               "413": "more than max_batch_clips files, or body bigger than max_bytes",
               "415": "not multipart/form-data", "422": "missing field or no 'file' part"})


@serve.deployment(
    name="Ingress",
    max_ongoing_requests=512,
    max_queued_requests=256,
    backpressure_config={"status_code": 503, "retry_after_s": 1},
    ray_actor_options={"num_cpus": 0.25},
)
@serve.ingress(api)
class Ingress:
    """HTTP front: validates requests, decodes audio, routes each clip to its bundle on the Detector."""

    def __init__(self, detector, settings: dict[str, Any]):
        self.detector = detector  # None with ``scoring: inline``
        self.settings = Settings(**settings)
        AccessMiddleware.config = {"keys": read_api_keys(self.settings), "cors_origins": self.settings.cors_origins}
        if self.detector is None:
            self._inline_batch.set_max_batch_size(self.settings.max_batch_size)
            self._inline_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
            _prepare_torch(self.settings)
        self._bundles: dict[str, dict[str, dict[str, Any]]] = {}
        self._broken: dict[str, dict[str, dict[str, Any]]] = {}
        self._listed_at = -math.inf
        self._list_error: str | None = None
        self._inflight = 0
        self._streams = 0
        self._decode_pool = ThreadPoolExecutor(self.settings.decode_threads, thread_name_prefix="decode")
        import soxr  # noqa: F401 - import the heavy modules now, not on the first request
        import stethoscope.data.audio  # noqa: F401
        import stethoscope.publishing  # noqa: F401

    def _public(self, text: str) -> str:
        """``text`` with the registry's location replaced by ``<registry>``: answers never disclose server paths."""
        return text.replace(self.settings.registry, "<registry>")

    # -- registry listing (cached) -----------------------------------------------------------------------------
    async def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._listed_at < self.settings.refresh_s:
            return
        if force and now - self._listed_at < 0.5:  # at most two forced re-reads a second
            return
        from stethoscope.publishing import list_bundles

        try:
            listing = await asyncio.to_thread(list_bundles, self.settings.registry)
            self._list_error = None
        except Exception as exc:  # noqa: BLE001 - an unreadable or vanished registry is reported by /healthz
            self._list_error = self._public(f"{type(exc).__name__}: {exc}")
            listing = []
        bundles: dict[str, dict[str, dict[str, Any]]] = {}
        broken: dict[str, dict[str, dict[str, Any]]] = {}
        for b in listing:
            if "error" in b:
                broken.setdefault(b["machine_type"], {})[b["scope"]] = {
                    "machine_type": b["machine_type"], "scope": b["scope"], "detail": self._public(b["error"])}
            else:
                bundles.setdefault(b["machine_type"], {})[b["scope"]] = b
        self._bundles, self._broken = bundles, broken
        self._listed_at = time.monotonic()

    def _broken_list(self) -> list[dict[str, Any]]:
        return [b for mt in sorted(self._broken) for _, b in sorted(self._broken[mt].items())]

    async def _lookup(self, machine_type: str, machine_id: str | None, section: str | None) -> dict[str, Any]:
        """The published bundle summary that serves the request, plus ``group`` / ``id_field`` / ``id_value``.

        The request's group comes from :func:`stethoscope.data.labels.request_group` (machine_id for DCASE 2020
        bundles, section for 2021+), the scope that serves it from :func:`stethoscope.publishing.scope_for` (the
        group's own bundle, else the machine-wide one), both over the cached listing. Raises HTTPProblem: 503 when
        the registry or the serving bundle is broken, 404 for an unknown machine / group, 422 for a missing or
        invalid machine_id / section.
        """
        from stethoscope.data.labels import MissingGroupError, parse_group, request_group
        from stethoscope.errors import DataError
        from stethoscope.publishing import scope_for

        await self._refresh()
        if machine_type not in self._bundles:
            await self._refresh(force=True)
        if self._list_error:
            raise HTTPProblem(503, "registry_unavailable", f"the registry cannot be read: {self._list_error}")
        known = sorted(set(self._bundles) | set(self._broken))
        if machine_type not in self._bundles and machine_type in self._broken:
            raise HTTPProblem(503, "bundle_unavailable", self._broken_detail(machine_type, list(self._broken[machine_type])))
        if machine_type not in self._bundles:
            raise HTTPProblem(404, "unknown_machine",
                              f"no detector is published for machine_type {machine_type!r}; published: {known}",
                              known_machines=known)
        scopes = self._bundles[machine_type]
        id_field = next(iter(scopes.values()))["id_field"]  # list_bundles checked it: machine_id or section
        try:
            group = request_group(machine_type, id_field, machine_id, section)
        except MissingGroupError as exc:
            raise HTTPProblem(422, "missing_field", str(exc)) from None
        except DataError as exc:
            raise HTTPProblem(422, "invalid_field", str(exc)) from None
        value = parse_group(group)[1]
        broken = self._broken.get(machine_type, {})
        scope = scope_for([*scopes, *broken], group)  # a broken bundle that would serve the group is not skipped
        if scope in broken:
            raise HTTPProblem(503, "bundle_unavailable", self._broken_detail(machine_type, [scope]))
        if scope is None:
            raise HTTPProblem(404, "unknown_machine",
                              f"machine_type {machine_type!r} has no detector for {id_field} {value!r}; "
                              f"published scopes: {sorted(scopes)}", known_machines=known)
        return {**scopes[scope], "group": group, "id_field": id_field, "id_value": value}

    def _broken_detail(self, machine_type: str, scopes: list[str]) -> str:
        why = "; ".join(f"{machine_type}/{sc}: {self._broken[machine_type][sc]['detail']}" for sc in scopes)
        return f"the published bundle for machine_type {machine_type!r} is broken and cannot serve ({why})"

    # -- routes ------------------------------------------------------------------------------------------------
    @api.get("/healthz", summary="health")
    async def healthz(self) -> JSONResponse:
        """200 ``ok``; 200 ``degraded`` with the ``broken`` bundles and why; 503 ``unhealthy`` when the registry
        cannot be read (e.g. its folder is gone). Never queued behind scoring requests (no admission slot)."""
        await self._refresh(force=True)
        broken = self._broken_list()
        status = "unhealthy" if self._list_error else "degraded" if broken else "ok"
        body: dict[str, Any] = {"status": status, "bundles": sum(len(v) for v in self._bundles.values()),
                                "machines": sorted(self._bundles), "broken": broken,
                                "inflight": self._inflight, "max_inflight": self.settings.max_inflight}
        if self._list_error:
            body["detail"] = self._list_error
        return JSONResponse(body, status_code=503 if self._list_error else 200)

    @api.get("/v1/models", summary="published machines, their ensemble members and metrics")
    async def models(self) -> JSONResponse:
        await self._refresh(force=True)
        if self._list_error:
            return _error(503, "registry_unavailable", f"the registry cannot be read: {self._list_error}")
        return JSONResponse({
            "models": [b for mt in sorted(self._bundles) for _, b in sorted(self._bundles[mt].items())],
            "broken": self._broken_list(),
        })

    @api.post("/v1/score", summary="score one clip or a long recording (per window)", openapi_extra=_SCORE_BODY)
    async def score(self, request: Request, q: Annotated[ScoreQuery, Depends()]) -> JSONResponse:
        return await self._admitted(lambda t0: self._score(request, t0, q))

    @api.post("/v1/score/batch", summary="score several clips of one machine in one request",
              openapi_extra=_BATCH_BODY)
    async def score_batch(self, request: Request, q: Annotated[ScoreQuery, Depends()]) -> JSONResponse:
        """Up to ``max_batch_clips`` clips of one machine as multipart ``file`` fields: one result per clip, in the
        order sent, each the fields of a ``/v1/score`` answer with ``file`` and ``status`` 200, or ``file``,
        ``status`` (4xx), ``error`` and ``detail`` for a clip that cannot be scored (the others are still scored).
        The request itself fails (4xx/5xx with the usual JSON) only for what concerns all its clips: machine,
        Content-Type, body size, too many files, overload."""
        return await self._admitted(lambda t0: self._score_many(request, t0, q))

    async def _admitted(self, work) -> JSONResponse:
        """Run ``work(t0)`` (a scoring request) under admission control (``max_inflight``, else 503 with
        Retry-After) and the ``request_timeout_s`` deadline; an HTTPProblem becomes its JSON answer, a bug a 500."""
        t0 = time.perf_counter()
        if self._inflight >= self.settings.max_inflight:
            return HTTPProblem(503, "overloaded", f"{self._inflight} scoring requests are in progress, the most this "
                               "server admits at once; retry later").response(self.settings.retry_after_s)
        self._inflight += 1
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await work(t0)
        except HTTPProblem as p:
            return p.response(self.settings.retry_after_s if p.status == 503 else None)
        except TimeoutError:
            return HTTPProblem(503, "request_timeout", f"the request was not answered within "
                               f"{self.settings.request_timeout_s:g} s; retry later").response(self.settings.retry_after_s)
        except Exception as exc:  # noqa: BLE001 - the documented JSON shape even for a bug, never a stack trace
            log.exception("unexpected error while scoring")
            return _error(500, "internal_error", f"{type(exc).__name__}; see the server log")
        finally:
            self._inflight -= 1

    # -- scoring: inline (this replica) or on the Detector deployment --------------------------------------------
    @serve.multiplexed(max_num_models_per_replica=MAX_BUNDLES_PER_REPLICA)
    async def get_bundle(self, model_id: str):
        """``scoring: inline``: the bundle of ``model_id``, loaded once per replica (LRU over bundle versions)."""
        return await _load_bundle(self.settings, model_id)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _inline_batch(self, model_ids: list[str], waves: list[np.ndarray], groups: list[str | None],
                            want_maps: list[bool]) -> list[dict[str, Any]]:
        out: list[dict[str, Any] | None] = [None] * len(waves)
        by_model: dict[str, list[int]] = {}
        for i, model_id in enumerate(model_ids):
            by_model.setdefault(model_id, []).append(i)
        for model_id, idx in by_model.items():
            try:
                bundle = await self.get_bundle(model_id)
            except Exception as exc:  # noqa: BLE001 - answered 500 detector_failed, with the cause
                for i in idx:
                    out[i] = {"load_error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
                continue
            rows = await asyncio.to_thread(_score_items, bundle, [waves[i] for i in idx], [groups[i] for i in idx],
                                           [want_maps[i] for i in idx])
            for i, row in zip(idx, rows):
                out[i] = row
        return out  # type: ignore[return-value]

    async def _score_wave(self, model_id: str, wave: np.ndarray, group: str | None, want_map: bool) -> dict[str, Any]:
        """One waveform [samples] float32 at the bundle's rate, scored inline or by the Detector deployment.

        Raises:
            HTTPProblem: 503 (detector overloaded or restarting), 500 ``detector_failed`` (the bundle cannot be
                loaded or scores nothing). A clip the bundle refuses comes back as ``{"error": ...}``.
        """
        if self.detector is None:
            result = await self._inline_batch(model_id, wave, group, want_map)
            if "load_error" in result:
                log.error("bundle %s cannot be loaded: %s", model_id, result["load_error"])
                raise HTTPProblem(500, "detector_failed", self._public(
                    f"bundle {model_id} could not score the clip: {result['load_error']}"))
            return result
        try:
            return await self.detector.options(multiplexed_model_id=model_id).score.remote(wave, group, want_map)
        except BackPressureError as exc:
            raise HTTPProblem(503, "overloaded", f"the detector is overloaded ({exc}); retry later") from None
        except Exception as exc:  # noqa: BLE001 - a broken bundle must give a clear answer, not a stack trace
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, BackPressureError):
                raise HTTPProblem(503, "overloaded", "the detector is overloaded; retry later") from None
            if isinstance(exc, RayActorError) or isinstance(cause, RayActorError):
                # the Detector replica died with this request in flight (killed, out of memory, node lost): Ray
                # Serve starts a new one; the request itself is lost, later ones are served by the new replica
                log.warning("detector replica died while scoring for %s: %s", model_id, type(cause).__name__)
                raise HTTPProblem(503, "detector_restarting", self._public(
                    f"the detector replica scoring bundle {model_id} died while this request was in flight "
                    f"({type(cause).__name__}); Ray Serve is starting a new one: retry the request")) from None
            log.exception("detector failed for %s", model_id)
            raise HTTPProblem(500, "detector_failed", self._public(
                f"bundle {model_id} could not score the clip: {type(cause).__name__}: "
                f"{str(cause).splitlines()[0] if str(cause) else ''}")) from None

    def _window_params(self, bundle: dict[str, Any], window_s: float | None, hop_s: float | None) -> tuple[float, float]:
        """(window_s, hop_s) of per-window scoring: the request's, else the bundle's ``clip_seconds`` (if its manifest
        has one) or the settings' ``window_s``, and the settings' ``hop_s`` (at most the window).

        Raises:
            HTTPProblem: 422 ``invalid_field`` for a window shorter than the bundle's shortest scorable clip or a
                hop longer than the window.
        """
        window = float(window_s or bundle.get("clip_seconds") or self.settings.window_s)
        hop = float(hop_s or min(self.settings.hop_s, window))
        min_s = int(bundle.get("min_samples") or 1) / int(bundle["sample_rate"])
        if window < min_s or hop > window:
            raise HTTPProblem(422, "invalid_field", f"window_s {window:g} must be >= {min_s:g} s (the bundle's shortest "
                              f"scorable clip) and hop_s {hop:g} must be <= window_s")
        return window, hop

    def _windowing(self, bundle: dict[str, Any], n_samples: int, window_s: float | None,
                   hop_s: float | None) -> tuple[float, float] | None:
        """(window_s, hop_s) when a recording of ``n_samples`` is scored per window, else None.

        Per window when the request sets ``window_s`` or ``hop_s`` (and the recording is longer than the window) or
        when the recording is longer than ``long_after_s``; window and hop from :meth:`_window_params`.

        Raises:
            HTTPProblem: 422 ``invalid_field``: see :meth:`_window_params`, or more than ``max_windows`` windows.
        """
        duration = n_samples / int(bundle["sample_rate"])
        if window_s is None and hop_s is None and duration <= self.settings.long_after_s:
            return None
        window, hop = self._window_params(bundle, window_s, hop_s)
        if duration <= window:
            return None
        count = 1 + math.ceil(max(0.0, duration - window) / hop - 1e-9)
        if count > self.settings.max_windows:
            raise HTTPProblem(422, "invalid_field", f"{duration:.1f} s with window_s {window:g} and hop_s {hop:g} gives "
                              f"{count} windows; the most one request may ask for is {self.settings.max_windows} "
                              "(use a longer hop_s)")
        return window, hop

    async def _machine_bundle(self, machine_type: str | None, machine_id: str | None, section: str | None,
                              where: str) -> dict[str, Any]:
        """The bundle serving one machine, after checking the request's machine fields (``where``: how the client
        sends them, for the message). Raises HTTPProblem 422 missing_field / invalid_field, and what
        :meth:`_lookup` raises (404 unknown machine ...)."""
        from stethoscope.data.labels import group_of
        from stethoscope.errors import DataError
        from stethoscope.publishing import RegistryError, validate_name

        if not machine_type:
            raise HTTPProblem(422, "missing_field", f"machine_type is required ({where})")
        if machine_id is None and section is None:
            raise HTTPProblem(422, "missing_field", f"machine_id or section is required ({where}; two digits, "
                              "e.g. '00')")
        try:
            validate_name(machine_type, "machine_type")
            for name, value in (("machine_id", machine_id), ("section", section)):
                if value is not None:
                    group_of(name, value)
        except (RegistryError, DataError) as exc:
            raise HTTPProblem(422, "invalid_field", str(exc)) from None
        return await self._lookup(machine_type, machine_id, section)

    async def _request_bundle(self, request: Request, q: "ScoreQuery",
                              max_files: int) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
        """The bundle a scoring request names (query or form fields) and its clips (see :meth:`_request_clips`)."""
        body = await self._read_body(request)
        clips, fields = await self._request_clips(request, body, max_files)
        bundle = await self._machine_bundle(fields.get("machine_type") or q.machine_type,
                                            fields.get("machine_id") or q.machine_id,
                                            fields.get("section") or q.section, "query parameter or form field")
        self._check_map(bundle, q.map)
        return bundle, clips

    async def _score(self, request: Request, t0: float, q: "ScoreQuery") -> JSONResponse:
        bundle, clips = await self._request_bundle(request, q, max_files=1)
        item = await self._score_clip(bundle, clips[0][1], q.map, q.window_s, q.hop_s, t0)
        response = {"machine": _machine(bundle), **item}
        response["latency_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        return JSONResponse(response)

    async def _score_many(self, request: Request, t0: float, q: "ScoreQuery") -> JSONResponse:
        bundle, clips = await self._request_bundle(request, q, max_files=self.settings.max_batch_clips)

        async def one(name: str, data: bytes) -> dict[str, Any]:
            try:
                item = await self._score_clip(bundle, data, q.map, q.window_s, q.hop_s, time.perf_counter())
            except HTTPProblem as p:
                if p.status >= 500:  # the server's failure, not the clip's: the whole request is answered with it
                    raise
                return {"file": name, "status": p.status, "error": p.code, "detail": p.detail}
            return {"file": name, "status": 200, **item}

        # every clip decoded in the pool and scored through the same @serve.batch queue: one request's clips are
        # batched together (and with other requests' clips of the same bundle)
        results = await asyncio.gather(*(one(name, data) for name, data in clips))
        failed = sum(r["status"] != 200 for r in results)
        return JSONResponse({"machine": _machine(bundle), "clips": len(results), "failed": failed,
                             "results": results, "latency_ms": round((time.perf_counter() - t0) * 1e3, 3)})

    def _check_map(self, bundle: dict[str, Any], want_map: bool) -> None:
        """Raises HTTPProblem 400 ``no_anomaly_map`` when a map is asked of a bundle none of whose members localize."""
        if want_map and not any(m.get("can_localize") for m in bundle.get("members") or []):
            raise HTTPProblem(400, "no_anomaly_map", f"no member of bundle {bundle['machine_type']}/{bundle['scope']} "
                              f"can localize ({', '.join(m['method'] for m in bundle['members'])}): it gives no "
                              "anomaly map; ask without map=true")

    async def _score_clip(self, bundle: dict[str, Any], data: bytes, want_map: bool, window_s: float | None,
                          hop_s: float | None, t0: float) -> dict[str, Any]:
        """One uploaded clip or recording (encoded audio bytes) scored with ``bundle``: the response fields
        ``score``, ``threshold``, ``is_anomaly``, ``members``, ``model_version``, ``audio``, ``timings_ms``, and
        ``windows`` (per-window scoring, see :meth:`_windowing`) and ``anomaly_maps`` (``want_map``) when asked.

        Raises:
            HTTPProblem: 413 / 415 / 422 for audio the server cannot take (:data:`AUDIO_STATUS`), 422 ``invalid_field``
                for bad windows, 422 ``unscorable`` when the bundle refuses the clip, 5xx from :meth:`_score_wave`.
        """
        from stethoscope.data.audio import decode_audio, frame_windows
        from stethoscope.errors import AudioError

        sr = int(bundle["sample_rate"])
        decode = functools.partial(
            decode_audio, data, sr, min_samples=int(bundle.get("min_samples") or 1),
            max_seconds=self.settings.max_seconds, max_sample_rate=self.settings.max_sample_rate,
            max_samples=self.settings.max_decode_samples, name="the uploaded clip")
        try:
            # in the decode pool, never on the event loop: health checks and other clients go on meanwhile
            wave, notes = await asyncio.get_running_loop().run_in_executor(self._decode_pool, decode)
        except AudioError as exc:
            status = AUDIO_STATUS.get(exc.reason, 422)
            raise HTTPProblem(status, exc.reason, str(exc)) from None
        t_decoded = time.perf_counter()
        model_id = f"{bundle['machine_type']}/{bundle['scope']}/{bundle['version']}"
        windowing = self._windowing(bundle, wave.shape[0], window_s, hop_s)
        starts = frame_windows(wave.shape[0], round(windowing[0] * sr), round(windowing[1] * sr)) if windowing else [0]
        size = round(windowing[0] * sr) if windowing else wave.shape[0]
        results = await asyncio.gather(*(self._score_wave(model_id, wave[a:a + size], bundle["group"], want_map)
                                         for a in starts))
        t_done = time.perf_counter()
        for r in results:
            if "error" in r:
                raise HTTPProblem(422, "unscorable", f"bundle {model_id} could not score this clip: {r['error']}")
        scores = [r["score"] for r in results]
        top = int(np.argmax(scores))
        result = results[top]
        item: dict[str, Any] = {
            "score": result["score"],
            "threshold": result["threshold"],
            "is_anomaly": result["is_anomaly"],
            "members": _member_rows(result),
            "model_version": result["version"],
            "audio": {
                "sample_rate": sr,
                "orig_sample_rate": notes.orig_sample_rate,
                "orig_channels": notes.orig_channels,
                "duration_s": round(wave.shape[0] / sr, 6),
                "resampled": notes.orig_sample_rate != sr,
                "notes": notes.notes,
            },
        }
        if windowing:
            threshold = result["threshold"]
            spans = [(a / sr, (a + size) / sr) for a in starts]
            item["windows"] = {
                "window_s": windowing[0], "hop_s": windowing[1], "count": len(starts),
                "start_s": [round(a, 6) for a, _ in spans], "end_s": [round(b, 6) for _, b in spans],
                "scores": scores, "is_anomaly": [r["is_anomaly"] for r in results],
                "max": max(scores), "mean": float(np.mean(scores)), "max_index": top,
                "over_threshold": [{"index": i, "start_s": round(spans[i][0], 6), "end_s": round(spans[i][1], 6),
                                    "score": scores[i]} for i in range(len(starts)) if scores[i] > threshold],
            }
        if want_map:
            item["anomaly_maps"] = [
                {"member": name, **({"window": i, "start_s": round(starts[i] / sr, 6)} if windowing else {}),
                 "shape": list(arr.shape), "values": np.round(arr.astype(np.float64), 4).tolist()}
                for i, r in enumerate(results) for name, arr in (r.get("maps") or {}).items()
            ]
        item["timings_ms"] = {"decode": round((t_decoded - t0) * 1e3, 3),
                              "detector": round((t_done - t_decoded) * 1e3, 3),
                              "detector_compute": round(result["compute_ms"], 3),
                              "batch_size": result["batch_size"]}
        return item

    # -- streaming ---------------------------------------------------------------------------------------------
    @api.websocket("/v1/stream")
    async def stream(
        self,
        websocket: WebSocket,
        machine_type: str | None = Query(None),
        machine_id: str | None = Query(None),
        section: str | None = Query(None),
        sample_rate: int | None = Query(None, description="Hz of the PCM sent (default: the bundle's)"),
        format: str = Query("s16le", description="s16le (16-bit signed little-endian) or f32le (32-bit float)"),
        window_s: float | None = Query(None, gt=0),
        hop_s: float | None = Query(None, gt=0),
    ) -> None:
        """Score a live recording window by window: binary messages carry mono PCM (``format`` at ``sample_rate``,
        split anywhere, even inside a sample); each window's score is sent as soon as the window is complete.

        Messages from the server (JSON text): ``{"event": "ready", ...}`` once, ``{"event": "window", "index",
        "start_s", "end_s", "score", "threshold", "is_anomaly", "members"}`` per window, and ``{"event": "end",
        "windows", "received_s", "unscored_s", "reason"}`` after the client sends the text ``end`` (or
        ``{"event": "end"}``), or after ``stream_idle_s`` without data. Errors: ``{"error", "detail"}`` then a
        close: 4000 + the HTTP status of the same error on ``/v1/score`` (e.g. 4404 unknown machine, 4422 bad
        field), 1003 for a text message that is not ``end``, 1007 for non-finite samples, 1009 for a message over
        ``max_bytes``, 1008 for a missing or wrong API key (before the handshake completes).
        """
        from stethoscope.data.audio import resample

        await websocket.accept()

        async def fail(code: int, error: str, detail: str) -> None:
            await websocket.send_json({"error": error, "detail": detail})
            await websocket.close(code)

        if self._streams >= self.settings.max_streams:
            return await fail(4503, "overloaded", f"{self._streams} streams are open, the most this server takes; "
                              "retry later")
        self._streams += 1
        try:
            try:
                if format not in PCM_FORMATS:
                    raise HTTPProblem(422, "invalid_field", f"format {format!r}; expected one of {list(PCM_FORMATS)}")
                bundle = await self._machine_bundle(machine_type, machine_id, section, "query parameter")
                sr = int(bundle["sample_rate"])
                rate = int(sample_rate or sr)
                if not 0 < rate <= self.settings.max_sample_rate:
                    raise HTTPProblem(422, "unsupported_sample_rate", f"sample_rate {rate} Hz; expected 1 .. "
                                      f"{self.settings.max_sample_rate} Hz")
                window, hop = self._window_params(bundle, window_s, hop_s)
            except HTTPProblem as p:
                return await fail(4000 + p.status, p.code, p.detail)
            model_id = f"{bundle['machine_type']}/{bundle['scope']}/{bundle['version']}"
            size, step = round(window * rate), round(hop * rate)
            dtype, width = PCM_FORMATS[format]
            await websocket.send_json({"event": "ready", "machine_type": bundle["machine_type"],
                                       bundle["id_field"]: bundle["id_value"], "window_s": window, "hop_s": hop,
                                       "sample_rate": rate, "format": format, "threshold": bundle.get("threshold")})
            buf = np.zeros(0, dtype=np.float32)
            start = 0  # absolute sample index of buf[0]
            received = index = 0
            carry = b""
            reason = "client ended the stream"
            while True:
                try:
                    async with asyncio.timeout(self.settings.stream_idle_s):
                        message = await websocket.receive()
                except TimeoutError:
                    reason = f"no data for {self.settings.stream_idle_s:g} s"
                    break
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    text = message["text"].strip()
                    if text == "end" or text.replace(" ", "") == '{"event":"end"}':
                        break
                    return await fail(1003, "bad_message", f"text message {text[:40]!r}: the only text this route "
                                      "takes is 'end'; send audio as binary messages of PCM")
                data = carry + (message.get("bytes") or b"")
                if len(data) > self.settings.max_bytes:
                    return await fail(1009, "too_large", f"a message of {len(data)} bytes; the limit is "
                                      f"{self.settings.max_bytes}")
                cut = len(data) - len(data) % width
                carry = data[cut:]
                chunk = np.frombuffer(data[:cut], dtype=dtype)
                chunk = chunk.astype(np.float32) / 32768.0 if dtype == "<i2" else chunk.astype(np.float32)
                if not np.isfinite(chunk).all():
                    return await fail(1007, "non_finite_samples", "the stream holds NaN or infinite samples")
                received += chunk.shape[0]
                buf = np.concatenate([buf, chunk])
                while buf.shape[0] >= size:
                    wave = buf[:size] if rate == sr else resample(buf[:size], rate, sr)
                    try:
                        result = await self._score_wave(model_id, np.ascontiguousarray(wave), bundle["group"], False)
                    except HTTPProblem as p:
                        return await fail(4000 + p.status, p.code, p.detail)
                    if "error" in result:
                        return await fail(4422, "unscorable", f"bundle {model_id} could not score window {index}: "
                                          f"{result['error']}")
                    await websocket.send_json({
                        "event": "window", "index": index, "start_s": round(start / rate, 6),
                        "end_s": round((start + size) / rate, 6), "score": result["score"],
                        "threshold": result["threshold"], "is_anomaly": result["is_anomaly"],
                        "members": _member_rows(result)})
                    index += 1
                    buf, start = buf[step:], start + step
            scored_to = (start - step + size) if index else 0
            await websocket.send_json({"event": "end", "windows": index, "received_s": round(received / rate, 6),
                                       "unscored_s": round((received - scored_to) / rate, 6), "reason": reason})
            await websocket.close(1000)
        except WebSocketDisconnect:
            return
        finally:
            self._streams -= 1

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HTTPProblem(413, "too_large", f"the request body is {int(declared)} bytes; the limit is {limit}")
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise HTTPProblem(413, "too_large", f"the request body exceeds the limit of {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            of = f" of the {declared} declared" if declared is not None else ""
            raise HTTPProblem(408, "body_timeout", f"the request body did not arrive within "
                              f"{self.settings.body_timeout_s:g} s ({size} bytes{of} received)") from None
        return b"".join(chunks)

    async def _request_clips(self, request: Request, body: bytes,
                             max_files: int) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
        """The clips of a scoring request, as (file name, bytes), and its form fields: a raw audio body is one clip
        (``max_files`` 1 only); multipart/form-data holds up to ``max_files`` ``file`` parts.

        Raises:
            HTTPProblem: 415 ``unsupported_media_type`` (another Content-Type, or a raw body on the batch route),
                422 ``malformed_form`` / ``missing_field`` (no ``file`` part), 413 ``too_many_files``.
        """
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            return await self._parse_multipart(request, body, max_files)
        if max_files == 1 and (ctype in RAW_AUDIO_TYPES or ctype.startswith("audio/") or ctype == ""):
            return [("", body)], {}
        if max_files == 1:
            detail = (f"Content-Type {ctype!r} is not supported: send the WAV as the raw body (Content-Type: "
                      "audio/wav) or as multipart/form-data with a 'file' field")
        else:
            detail = (f"Content-Type {ctype!r} is not supported here: send the clips as multipart/form-data, one "
                      "'file' field per clip")
        raise HTTPProblem(415, "unsupported_media_type", detail)

    async def _parse_multipart(self, request: Request, body: bytes,
                               max_files: int) -> tuple[list[tuple[str, bytes]], dict[str, str]]:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await StarletteRequest(request.scope, receive).form(max_files=max_files, max_fields=16)
        except Exception as exc:  # noqa: BLE001 - malformed multipart bodies are the client's error
            if "Too many files" in str(exc):
                raise HTTPProblem(413, "too_many_files", f"the form holds more than {max_files} file(s), the most "
                                  "one request may carry" + ("; score several clips with POST /v1/score/batch"
                                                             if max_files == 1 else "")) from None
            raise HTTPProblem(422, "malformed_form", f"the multipart body could not be parsed: {exc}") from None
        try:
            uploads = [u for u in form.getlist("file") if not isinstance(u, str)]
            if not uploads:
                raise HTTPProblem(422, "missing_field", "the multipart form has no 'file' field holding the clip")
            clips = [(u.filename or f"file {i}", await u.read()) for i, u in enumerate(uploads)]
            fields = {k: v for k, v in form.items() if isinstance(v, str) and k != "file"}
        finally:
            await form.close()
        return clips, fields


def build_app(args: dict[str, Any] | None = None):
    """Application builder for ``serve run`` / ``serve deploy`` (``import_path: serve.app:build_app``).

    ``args`` are :class:`Settings` fields; unknown keys raise ConfigError.
    """
    settings = asdict(Settings.from_args(args))
    return Ingress.bind(Detector.bind(settings) if settings["scoring"] == "detector" else None, settings)


def build_app_from_config(path: str | os.PathLike = os.path.join(os.path.dirname(__file__), "config.yaml"),
                          deployment_overrides: dict[str, dict[str, Any]] | None = None, **arg_overrides: Any):
    """The application ``serve run <path>`` would deploy, with the file's deployment options applied and
    ``arg_overrides`` replacing its ``args`` (e.g. ``registry=...``). For scripts and benchmarks that call
    ``serve.run`` themselves. ``deployment_overrides`` (``{"Ingress": {...}, "Detector": {...}}``) replace options
    of the file's deployments (e.g. ``ray_actor_options`` to fit several applications on a small machine).
    Raises ConfigError for unknown args; the file must hold one application."""
    import yaml

    from stethoscope.errors import ConfigError

    with open(path) as fh:
        config = yaml.safe_load(fh)
    apps = config.get("applications") or []
    if len(apps) != 1:
        raise ConfigError(f"{path}: expected exactly one application, found {len(apps)}")
    app = apps[0]
    settings = asdict(Settings.from_args({**(app.get("args") or {}), **arg_overrides}))
    options = {d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app.get("deployments") or []}
    for name, extra in (deployment_overrides or {}).items():
        options[name] = {**options.get(name, {}), **extra}
    unknown = sorted(set(options) - {"Ingress", "Detector"})
    if unknown:
        raise ConfigError(f"{path}: unknown deployment(s) {unknown}; this application has Ingress and Detector")
    detector = Detector.options(**options.get("Detector", {})).bind(settings) \
        if settings["scoring"] == "detector" else None
    return Ingress.options(**options.get("Ingress", {})).bind(detector, settings)


__all__ = ["Detector", "Ingress", "Settings", "api", "build_app", "build_app_from_config"]
