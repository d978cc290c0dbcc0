"""The HTTP server behind ``effnet-serve``: an exported model behind FastAPI, scored in dynamic batches.

    POST /v1/predict   multipart ``file`` fields (JPEG, PNG, DICOM) -> {"model": identity, "records": [...]}
                       (``?gradcam=true`` adds each image's Grad-CAM overlay as a PNG data URL)
    GET  /v1/model     model.json's public facts, the serving limits, the intended-use note
    GET  /healthz      {"status": "ok", ...}: the batcher's counters (uvicorn listens once start-up is done)
    GET  /             the review page (static/, shipped with the package)

Records have effnet-predict's fields (``prediction_output.COLUMNS``). Nothing about a request
outlives it: uploads are read, prepared, scored and dropped; the only state is the model and
the batcher's counters.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import math
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from effnet_jax.inference.gradcam import overlay, weighted_by_probability
from effnet_jax.labels import class_record
from effnet_jax.reporting.model_card import INTENDED_USE
from effnet_jax.server import batching, uploads
from effnet_jax.serving import bundle

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
log = logging.getLogger("effnet_jax.server")


@dataclass(frozen=True)
class Settings:
    """The server's batching and budgets (``effnet-serve --help`` names each flag)."""

    max_batch: int = 16  # images per call of the exported function
    max_wait_ms: float = 5.0  # how long the first image of a batch waits for others
    max_queue: int = 256  # images waiting to be scored; a request that does not fit gets 503
    max_files: int = 16  # files in one request
    max_file_bytes: int = 32 << 20  # bytes of one uploaded file
    max_pixels: int = 50_000_000  # pixels a JPEG or PNG header may declare
    # Seconds from a request's headers to the end of its body: a client that sends its body slower
    # (or stops half-way, "slowloris") gets 408 and its connection closed, not a task held forever.
    body_timeout_s: float = 60.0
    max_preparing: int = 4  # requests whose uploads are read into memory and decoded at once
    prepare_wait_s: float = 10.0  # how long a request waits for one of those slots before its 503
    # Bytes of request bodies being received and held at once (their Content-Lengths): the parser
    # spools each to disk past 1 MiB until its request is answered, so this bounds that disk.
    max_receiving_bytes: int = 2 << 30

    def __post_init__(self):
        for name, value in asdict(self).items():
            if name == "body_timeout_s":
                ok, expected = value > 0 and math.isfinite(value), "a positive number of seconds"
            elif name in ("max_wait_ms", "prepare_wait_s"):
                ok, expected = value >= 0 and math.isfinite(value), ">= 0"
            else:
                ok, expected = value >= 1, "at least 1"
            if not ok:
                raise ValueError(f"{name}={value}: expected {expected}")
        if self.max_batch > self.max_queue:  # a batch is taken from the queue: a larger one is never filled
            raise ValueError(
                f"max_batch={self.max_batch}: expected at most max_queue={self.max_queue} (the start-up "
                "compiles and runs every batch size up to it)"
            )
        if self.max_receiving_bytes < self.max_request_bytes:
            raise ValueError(
                f"max_receiving_bytes={self.max_receiving_bytes}: expected at least one largest request "
                f"(max_files x max_file_bytes + 1 MiB = {self.max_request_bytes})"
            )

    @property
    def max_request_bytes(self) -> int:
        """The largest request body accepted: every file at its limit, plus room for the multipart framing."""
        return self.max_files * self.max_file_bytes + (1 << 20)


def model_identity(model) -> dict:
    """What every answer carries about the model: model.json's SHA-256, class names, threshold and temperature."""
    text = bundle.read_limited(os.path.join(model.directory, bundle.MODEL_JSON), bundle.MAX_JSON_BYTES)
    return {
        "model_json_sha256": bundle.sha256(text),
        "class_names": list(model.class_names),
        "threshold": model.threshold,
        "threshold_rule": model.info["threshold"]["rule"],
        "temperature": model.temperature,
    }


def json_safe(value):
    """``value`` (parsed JSON, nested at most ``limits.MAX_NESTING`` deep) with NaN and infinities as None.

    Python's json reads ``NaN`` and ``Infinity`` in a model.json, but an answer holding one cannot be
    sent as JSON: GET /v1/model would fail with a 500 every time.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def public_facts(model, settings: Settings) -> dict:
    """GET /v1/model: model.json without the exporting host's paths, plus the serving limits."""
    info = model.info
    facts = {k: info[k] for k in ("format", "class_names", "positive_class", "output", "input") if k in info}
    facts.update({k: info.get(k) for k in ("threshold", "temperature", "calibration", "metrics", "platforms")})
    facts["model"] = {k: v for k, v in info.get("model", {}).items() if k not in ("workdir", "checkpoint")}
    facts["training"] = {k: v for k, v in info.get("training", {}).items() if k not in ("manual_dir", "external")}
    facts.update(versions=info.get("versions"), created=info.get("created"), files=info.get("files"))
    facts = json_safe(facts)  # model.json's informative keys are the file's word: NaN is not JSON
    facts["identity"] = model_identity(model)
    facts["gradcam"] = model.has_gradcam
    facts["intended_use"] = INTENDED_USE
    facts["serving"] = {**asdict(settings), "max_request_bytes": settings.max_request_bytes}
    return facts


def overlay_png(pixels: np.ndarray, heatmap: np.ndarray, prob: float) -> str:
    """The Grad-CAM overlay effnet-predict draws (map times P, one scale for all images) as a PNG data URL."""
    buffer = io.BytesIO()
    Image.fromarray(overlay(pixels, weighted_by_probability(heatmap, prob)), mode="RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _refuse(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


def query_problem(errors) -> str:
    """One line naming the query parameter FastAPI refused (``?gradcam=maybe``), not its list of pydantic errors."""
    first = errors[0] if errors else {}
    name = ".".join(str(part) for part in first.get("loc", ())[1:]) or "the request"
    value = "".join(c if c.isprintable() else "?" for c in str(first.get("input", ""))[:60])  # echoed back
    return f"{name}={value}: {first.get('msg', 'not valid')}"


class Busy(RuntimeError):
    """No preparation slot freed within ``prepare_wait_s``; the message says so (503 with Retry-After)."""


class PreparationSlots:
    """At most ``size`` requests' uploads held in memory and decoded at once; others wait up to ``wait_s``.

    Each preparing request holds one of its files' bytes and that file's decoding (up to the
    decoded-size budget) at a time, so the server's memory for uploads is about ``size`` x
    (``max_file_bytes`` + the budget), whatever the number of requests. A request over it waits
    (in arrival order) rather than being refused at once: its body has already been received and
    spooled (to disk past 1 MiB), so waiting costs no decoding memory, and a short burst is
    absorbed instead of failing. The wait is bounded, as production inference servers bound
    theirs (Triton's queue policy timeout, TorchServe's and TF Serving's bounded queues): past
    ``wait_s`` the request gets 503 with Retry-After, a prompt answer a client or load balancer
    retries elsewhere, not a backlog that grows until clients time out on their own. The waiters
    themselves are bounded by uvicorn's ``limit_concurrency`` (``--max_connections``).
    """

    def __init__(self, size: int, wait_s: float):
        self.size, self.wait_s = size, wait_s
        self._semaphore: asyncio.Semaphore | None = None  # made on the serving loop (``start``)
        self.preparing = 0

    def start(self) -> None:
        self._semaphore = asyncio.Semaphore(self.size)

    @contextlib.asynccontextmanager
    async def slot(self):
        if self._semaphore is None:  # an app driven without its lifespan
            self.start()
        semaphore = self._semaphore
        if semaphore.locked():
            try:
                await asyncio.wait_for(semaphore.acquire(), self.wait_s)
            except asyncio.TimeoutError:
                raise Busy(
                    f"busy: {self.size} request(s) already preparing their uploads and no slot freed within "
                    f"{self.wait_s:g} s (effnet-serve --max_preparing, --prepare_wait_s); retry shortly"
                ) from None
        else:
            await semaphore.acquire()  # free: returns at once
        self.preparing += 1
        try:
            yield
        finally:
            self.preparing -= 1
            semaphore.release()


class BodyAllowance:
    """The request bodies being received and held at once, counted by their Content-Length.

    A body is spooled by the multipart parser (to disk past 1 MiB) until its request is
    answered; without a bound, many clients each sending a largest request would fill the
    disk. A request that would pass the allowance gets 503 with Retry-After before its body is
    read. The serving loop is one thread, so a plain counter is enough.
    """

    def __init__(self, limit: int):
        self.limit, self.held = limit, 0

    @contextlib.contextmanager
    def hold(self, length: int):
        if self.held + length > self.limit:
            raise Busy(
                f"busy: {self.held:,} bytes of request bodies already being received and held; this request's "
                f"{length:,} would pass the {self.limit:,} allowed (effnet-serve --max_receiving_mib); retry shortly"
            )
        self.held += length
        try:
            yield
        finally:
            self.held -= length


def create_app(model, settings: Settings = Settings()) -> FastAPI:
    """The FastAPI app serving ``model`` (an ``effnet_jax.serving.ExportedModel``)."""
    buckets = batching.batch_buckets(settings.max_batch)
    batcher = batching.Batcher(
        batching.bucketed_scorer(model, buckets), settings.max_batch, settings.max_wait_ms / 1000, settings.max_queue
    )
    slots = PreparationSlots(settings.max_preparing, settings.prepare_wait_s)
    bodies = BodyAllowance(settings.max_receiving_bytes)
    identity = model_identity(model)
    facts = public_facts(model, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        slots.start()
        await batcher.start()
        # Every batch size compiled before the first request, so no request waits for a compilation;
        # the Grad-CAM function (asked for by the review page, not by the API's clients) compiles on first use.
        await run_in_threadpool(batching.warm_up, model, buckets)
        log.info("effnet-serve: %s ready (batch sizes %s)", model.directory, ",".join(map(str, buckets)))
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="effnet_jax", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.state.slots = slots
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, error: RequestValidationError):
        return _refuse(422, query_problem(error.errors()))

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    @app.get("/healthz")
    async def healthz():
        return {
            "status": "ok",
            "waiting": batcher.waiting,
            "batches": batcher.batches,
            "images": batcher.images,
            "preparing": slots.preparing,
            "receiving_bytes": bodies.held,
        }

    @app.get("/v1/model")
    async def model_facts():
        return facts

    @app.post("/v1/predict")
    async def predict(request: Request, gradcam: bool = False):
        if gradcam and not model.has_gradcam:
            # The server's folders are its operator's business, not a client's (GET /v1/model shows no path either).
            return _refuse(422, "gradcam=true: this model was exported without Grad-CAM; ask for gradcam=false")
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return _refuse(411, "a Content-Length header is required (the body's size is checked before it is read)")
        if int(length) > settings.max_request_bytes:
            return _refuse(
                413, f"request of {int(length):,} bytes, over the {settings.max_request_bytes:,} one request may have"
            )
        try:
            with bodies.hold(int(length)):
                return await answer(request, gradcam, int(length))
        except Busy as e:
            return _refuse(503, str(e), **{"Retry-After": "1"})

    async def answer(request: Request, gradcam: bool, length: int):
        """The answer to a request whose body (``length`` bytes announced) is within every bound."""

        async def read_form():
            return await request.form(max_files=settings.max_files, max_fields=settings.max_files + 8)

        try:
            # uvicorn bounds the time between requests (timeout_keep_alive), not a body's arrival, and
            # starlette's parser waits for each chunk as long as it takes: the whole body gets a deadline.
            # On expiry the parser is cancelled (it closes its spooled files) and the connection closed.
            form = await asyncio.wait_for(read_form(), settings.body_timeout_s)
        except asyncio.TimeoutError:
            log.info(
                "effnet-serve: a %s-byte body did not arrive within %g s; answered 408", length, settings.body_timeout_s
            )
            return _refuse(
                408,
                f"the request body ({int(length):,} bytes announced) did not arrive within {settings.body_timeout_s:g} s "
                "(effnet-serve --body_timeout_s)",
                Connection="close",
            )
        except ClientDisconnect:
            # The client left before sending the body its Content-Length announced: no one reads an
            # answer, and the server's log gets a line, not an ASGI traceback per such client.
            log.info("effnet-serve: a client disconnected before its %s-byte body was read", length)
            return _refuse(400, "the connection closed before the whole body arrived")
        except HTTPException as e:
            if "Too many files" in str(e.detail):
                return _refuse(413, f"more than {settings.max_files} files in one request")
            return _refuse(400, f"not a readable multipart/form-data body ({e.detail})")
        except UnicodeError as e:
            # The body's charset names a codec that fails on a part's name (``charset=idna``): the
            # parser decodes names with it and catches only UnicodeDecodeError, so this came out as a 500.
            return _refuse(400, f"not a readable multipart/form-data body (a part's name: {type(e).__name__})")
        try:
            files = form.getlist("file")
            if not files or not all(isinstance(f, UploadFile) for f in files):
                return _refuse(422, "expected one or more multipart 'file' fields holding image or DICOM files")
            names = [uploads.display_name(f.filename, i) for i, f in enumerate(files)]
            # One file's bytes in memory at a time, read from the parser's spool, in a preparation slot.
            pixels = []
            async with slots.slot():
                for f, name in zip(files, names):
                    data = await f.read(settings.max_file_bytes + 1)
                    pixels.append(
                        await run_in_threadpool(
                            uploads.prepare, model, data, name, settings.max_file_bytes, settings.max_pixels
                        )
                    )
                    del data
        except Busy as e:
            return _refuse(503, str(e), **{"Retry-After": "1"})
        except uploads.UploadError as e:
            return _refuse(e.status, str(e))
        finally:
            await form.close()
        try:
            futures = batcher.submit([batching.Item(p, gradcam) for p in pixels])
        except batching.Overloaded as e:
            return _refuse(503, f"overloaded: {e}", **{"Retry-After": "1"})
        try:
            scored = await asyncio.gather(*futures)
        except batching.Overloaded as e:
            return _refuse(503, str(e), **{"Retry-After": "1"})
        except bundle.ExportedModelError as e:  # the function returned no probabilities (a hand-made one)
            log.error("effnet-serve: scoring failed: %s", e)
            return _refuse(
                500, "scoring failed: the model returned no usable probabilities (the server's log says why)"
            )
        except Exception as e:  # the model failed on the batch this request was in
            log.exception("effnet-serve: scoring failed")
            return _refuse(500, f"scoring failed ({type(e).__name__}; the server's log says why)")
        records = []
        for name, image, result in zip(names, pixels, scored):
            if model.threshold is None:  # more than two classes: one probability each, the most probable wins
                record = {
                    "file": name,
                    **class_record(result.prob, model.class_names),
                    "temperature": model.temperature,
                }
                shown = record["probs"][record["label"]]
            else:
                record = {
                    "file": name,
                    "prob_pneumonia": result.prob,
                    "label": model.class_names[int(result.prob >= model.threshold)],
                    "threshold": model.threshold,
                    "temperature": model.temperature,
                }
                shown = result.prob
            if result.heatmap is not None:
                record["gradcam"] = await run_in_threadpool(overlay_png, image, result.heatmap, shown)
            records.append(record)
        return {"model": identity, "records": records}

    return app


def serve(model, host: str = "127.0.0.1", port: int = 8000, settings: Settings = Settings(), **uvicorn_kw) -> None:
    """Runs the app with uvicorn until interrupted; connections beyond ``limit_concurrency`` get 503."""
    import uvicorn

    uvicorn_kw.setdefault("limit_concurrency", 4 * settings.max_queue)
    uvicorn.run(create_app(model, settings), host=host, port=port, log_level="info", **uvicorn_kw)


class BackgroundServer:
    """``app`` served by uvicorn on a thread, on a port the OS picks: for tests, benchmarks and notebooks.

    with BackgroundServer(create_app(model)) as url:   # http://127.0.0.1:PORT
        ...
    """

    def __init__(self, app, host: str = "127.0.0.1", **uvicorn_kw):
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, 0))
        self.url = f"http://{host}:{self._socket.getsockname()[1]}"
        uvicorn_kw.setdefault("log_level", "warning")
        self._server = uvicorn.Server(uvicorn.Config(app, **uvicorn_kw))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, name="effnet-serve", daemon=True
        )

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 300  # start-up compiles every batch size
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"effnet-serve did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc):
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()
