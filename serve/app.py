"""stethoscope's HTTP endpoint: a FastAPI ingress in front of per-machine detector deployments (Ray Serve).

Routes (OpenAPI docs at ``/docs``):

- ``POST /v1/score`` — score one clip. The WAV comes as a multipart file (field ``file``) or as the raw body
  (``Content-Type: audio/wav``); ``machine_type`` plus ``machine_id`` (DCASE 2020 bundles) or ``section`` (2021+)
  come as query parameters or form fields. ``?map=true`` adds each localizing member's anomaly map
  ([n_mels][frames]; for reconstruction methods the reconstruction error per cell).
- ``GET /v1/models`` — the published bundles with their members, threshold and metrics, and the ``broken`` ones
  (machine type, scope and why).
- ``GET /healthz`` — 200 ``ok`` when the registry can be read, 200 ``degraded`` when some bundle is broken (listed
  with why), 503 ``unhealthy`` when the registry cannot be read or is gone. Neither route names the registry's path.

Deployments: ``Ingress`` (HTTP, validation, admission, audio decoding with :func:`stethoscope.data.audio.decode_audio`
in a small thread pool, off the event loop) calls ``Detector``, which loads bundles lazily through
``@serve.multiplexed`` (LRU, one model ID per bundle version) and scores requests in batches through ``@serve.batch``.
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
import logging
import math
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
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

    Defaults not given by any paper are ours: 192 kHz (the highest rate of common recorders), 2**24 values (60 s of
    48 kHz audio in 5 channels), 2 decode threads (the ingress asks for a quarter CPU), 128 admitted requests (twice
    the Detector's max_ongoing_requests), 10 s for a body (a 16 MiB body needs 13 Mbit/s; a 10 s 16 kHz clip,
    256 kbit/s) and 60 s for a request.
    """

    registry: str = "registry"
    max_seconds: float = 60.0
    max_bytes: int = 16 * 1024 * 1024
    max_sample_rate: int = 192_000
    max_decode_samples: int = 2**24
    decode_threads: int = 2
    max_inflight: int = 128
    body_timeout_s: float = 10.0
    request_timeout_s: float = 60.0
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.002
    refresh_s: float = 5.0
    retry_after_s: float = 1.0
    torch_threads: int = 1

    def __post_init__(self) -> None:
        from stethoscope.errors import ConfigError

        if not self.max_seconds > 0 or not self.max_bytes > 0:
            raise ConfigError(f"serve settings: max_seconds and max_bytes must be > 0 ({self.max_seconds}, {self.max_bytes})")
        if (self.max_batch_size < 1 or self.batch_wait_timeout_s < 0 or self.refresh_s < 0 or self.torch_threads < 1
                or self.max_sample_rate < 1 or self.max_decode_samples < 1 or self.decode_threads < 1
                or self.max_inflight < 1 or not self.body_timeout_s > 0 or not self.request_timeout_s > 0):
            raise ConfigError(f"serve settings out of range: {self}")

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
# Detector: per-machine bundles, multiplexed and batched
# ---------------------------------------------------------------------------------------------------------------
@serve.deployment(name="Detector", max_ongoing_requests=64, max_queued_requests=256,
                  ray_actor_options={"num_cpus": 0.5})
class Detector:
    """Loads bundles lazily (``@serve.multiplexed``: model ID ``<machine_type>/<scope>/<version>``) and scores
    batched requests (``@serve.batch``; batches never mix model IDs)."""

    def __init__(self, settings: dict[str, Any]):
        import torch

        self.settings = Settings(**settings)
        torch.set_num_threads(self.settings.torch_threads)
        self._score_batch.set_max_batch_size(self.settings.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(self.settings.batch_wait_timeout_s)
        import stethoscope.publishing  # noqa: F401 - import torch & the methods now, not on the first request
        from stethoscope import methods

        methods.names()

    @serve.multiplexed(max_num_models_per_replica=MAX_BUNDLES_PER_REPLICA)
    async def get_bundle(self, model_id: str):
        from stethoscope.publishing import load_bundle

        machine_type, scope, version = model_id.split("/")
        log.info("loading bundle %s", model_id)
        return await asyncio.to_thread(load_bundle, self.settings.registry, machine_type, scope, version)

    async def score(self, wave: np.ndarray, group: str | None, want_map: bool) -> dict[str, Any]:
        """Score one waveform [samples] float32 at the bundle's sample rate; see ``Bundle.score_waveforms``."""
        return await self._score_batch(wave, group, want_map)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _score_batch(self, waves: list[np.ndarray], groups: list[str | None],
                           want_maps: list[bool]) -> list[dict[str, Any]]:
        bundle = await self.get_bundle(serve.get_multiplexed_model_id())
        t0 = time.perf_counter()
        results: list[dict[str, Any] | None] = [None] * len(waves)
        # one scoring call per (group, map) combination; in practice a batch is one group
        keys: dict[tuple, list[int]] = {}
        for i, (g, m) in enumerate(zip(groups, want_maps)):
            keys.setdefault((g, bool(m)), []).append(i)
        for (g, m), idx in keys.items():
            # Computed on the event loop on purpose: Serve forms batches eagerly (every batch_wait_timeout_s), so
            # requests arriving while a batch is computed must queue here to form the next, bigger batch.
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
            out.append({
                **row,
                "threshold": bundle.threshold.value,
                "version": bundle.version,
                "members": members,
                "batch_size": len(waves),
                "compute_ms": compute_ms,
            })
        return out


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


_SCORE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the clip (WAV)"},
                        "machine_type": {"type": "string"},
                        "machine_id": {"type": "string", "description": "two digits, DCASE 2020 bundles"},
                        "section": {"type": "string", "description": "two digits, DCASE 2021+ bundles"},
                    },
                }
            },
            "audio/wav": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "responses": {
        "404": {"description": "unknown machine (the body lists the published ones)"},
        "413": {"description": "clip longer than max_seconds, or body bigger than max_bytes"},
        "415": {"description": "not audio / unsupported Content-Type"},
        "422": {"description": "missing field, empty, truncated or too short clip"},
        "503": {"description": "overloaded; retry after Retry-After seconds"},
    },
}


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
        self.detector = detector
        self.settings = Settings(**settings)
        self._bundles: dict[str, dict[str, dict[str, Any]]] = {}
        self._broken: dict[str, dict[str, dict[str, Any]]] = {}
        self._listed_at = -math.inf
        self._list_error: str | None = None
        self._inflight = 0
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

    @api.post("/v1/score", summary="score one clip", openapi_extra=_SCORE_BODY)
    async def score(
        self,
        request: Request,
        machine_type: str | None = Query(None, description="e.g. slider"),
        machine_id: str | None = Query(None, description="two digits (DCASE 2020 machine_id)"),
        section: str | None = Query(None, description="two digits (DCASE 2021+ section)"),
        map: bool = Query(False, description="add each localizing member's anomaly map [n_mels][frames]"),
    ) -> JSONResponse:
        t0 = time.perf_counter()
        if self._inflight >= self.settings.max_inflight:
            return HTTPProblem(503, "overloaded", f"{self._inflight} scoring requests are in progress, the most this "
                               "server admits at once; retry later").response(self.settings.retry_after_s)
        self._inflight += 1
        try:
            async with asyncio.timeout(self.settings.request_timeout_s):
                return await self._score(request, t0, machine_type, machine_id, section, map)
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

    async def _score(self, request: Request, t0: float, machine_type: str | None, machine_id: str | None,
                     section: str | None, want_map: bool) -> JSONResponse:
        from stethoscope.data.audio import decode_audio
        from stethoscope.data.labels import group_of
        from stethoscope.errors import AudioError, DataError
        from stethoscope.publishing import RegistryError, validate_name

        body = await self._read_body(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "multipart/form-data":
            data, fields = await self._parse_multipart(request, body)
            machine_type = fields.get("machine_type") or machine_type
            machine_id = fields.get("machine_id") or machine_id
            section = fields.get("section") or section
        elif ctype in RAW_AUDIO_TYPES or ctype.startswith("audio/") or ctype == "":
            data = body
        else:
            raise HTTPProblem(415, "unsupported_media_type",
                              f"Content-Type {ctype!r} is not supported: send the WAV as the raw body "
                              "(Content-Type: audio/wav) or as multipart/form-data with a 'file' field")
        if not machine_type:
            raise HTTPProblem(422, "missing_field", "machine_type is required (query parameter or form field)")
        if machine_id is None and section is None:
            raise HTTPProblem(422, "missing_field", "machine_id or section is required (two digits, e.g. '00')")
        try:
            validate_name(machine_type, "machine_type")
            for name, value in (("machine_id", machine_id), ("section", section)):
                if value is not None:
                    group_of(name, value)
        except (RegistryError, DataError) as exc:
            raise HTTPProblem(422, "invalid_field", str(exc)) from None
        bundle = await self._lookup(machine_type, machine_id, section)
        min_samples = bundle.get("min_samples") or 1
        decode = functools.partial(
            decode_audio, data, int(bundle["sample_rate"]), min_samples=int(min_samples),
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
        try:
            result = await self.detector.options(multiplexed_model_id=model_id).score.remote(
                wave, bundle["group"], want_map)
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
        t_done = time.perf_counter()
        if "error" in result:
            raise HTTPProblem(422, "unscorable", f"bundle {model_id} could not score this clip: {result['error']}")
        members = [
            {**m, "raw_score": r, "standardized_score": z}
            for m, r, z in zip(result["members"], result["raw"], result["standardized"])
        ]
        response: dict[str, Any] = {
            "machine": {"machine_type": bundle["machine_type"], bundle["id_field"]: bundle["id_value"],
                        "bundle": f"{bundle['machine_type']}/{bundle['scope']}"},
            "score": result["score"],
            "threshold": result["threshold"],
            "is_anomaly": result["is_anomaly"],
            "members": members,
            "model_version": result["version"],
            "audio": {
                "sample_rate": int(bundle["sample_rate"]),
                "orig_sample_rate": notes.orig_sample_rate,
                "orig_channels": notes.orig_channels,
                "duration_s": round(wave.shape[0] / int(bundle["sample_rate"]), 6),
                "resampled": notes.orig_sample_rate != int(bundle["sample_rate"]),
                "notes": notes.notes,
            },
        }
        if want_map:
            maps = result.get("maps") or {}
            response["anomaly_maps"] = [
                {"member": name, "shape": list(arr.shape), "values": np.round(arr.astype(np.float64), 4).tolist()}
                for name, arr in maps.items()
            ]
            if not maps:
                response["audio"]["notes"] = [*notes.notes, "no member of this bundle can localize: no anomaly map"]
        response["timings_ms"] = {"decode": round((t_decoded - t0) * 1e3, 3),
                                  "detector": round((t_done - t_decoded) * 1e3, 3),
                                  "detector_compute": round(result["compute_ms"], 3),
                                  "batch_size": result["batch_size"]}
        response["latency_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        return JSONResponse(response)

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

    async def _parse_multipart(self, request: Request, body: bytes) -> tuple[bytes, dict[str, str]]:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await StarletteRequest(request.scope, receive).form(max_files=1, max_fields=16)
        except Exception as exc:  # noqa: BLE001 - malformed multipart bodies are the client's error
            raise HTTPProblem(422, "malformed_form", f"the multipart body could not be parsed: {exc}") from None
        try:
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise HTTPProblem(422, "missing_field", "the multipart form has no 'file' field holding the clip")
            data = await upload.read()
            fields = {k: v for k, v in form.items() if isinstance(v, str) and k != "file"}
        finally:
            await form.close()
        return data, fields


def build_app(args: dict[str, Any] | None = None):
    """Application builder for ``serve run`` / ``serve deploy`` (``import_path: serve.app:build_app``).

    ``args`` are :class:`Settings` fields; unknown keys raise ConfigError.
    """
    settings = asdict(Settings.from_args(args))
    return Ingress.bind(Detector.bind(settings), settings)


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
    detector = Detector.options(**options.get("Detector", {})).bind(settings)
    return Ingress.options(**options.get("Ingress", {})).bind(detector, settings)


__all__ = ["Detector", "Ingress", "Settings", "api", "build_app", "build_app_from_config"]
