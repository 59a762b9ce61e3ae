"""The FastAPI application: ``create_app(pipe, config)``. API under ``/api/v1``, the page at ``/``, API docs at
``/docs`` (a local page that renders the OpenAPI document; nothing is fetched from elsewhere).

The request models are built per application from its :class:`ServeConfig` (:func:`request_models`), so the
limits a server applies are the ones its OpenAPI document, ``/docs`` and ``/api/v1/config`` show.
"""

# no ``from __future__ import annotations``: the endpoints' body types are this application's own models
import asyncio
import base64
import binascii
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, File, HTTPException, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.types import Receive, Scope, Send

from unclip.config import config_to_dict
from unclip.pipeline.inpainting import MAX_JUMP_N_SAMPLE
from unclip.pipeline.mixing import MAX_ITEMS as MAX_MIX_ITEMS
from unclip.samplers.registry import SAMPLER_NAMES, SAMPLERS
from unclip.web import actions, errors
from unclip.web.config import MAX_UPLOAD_SIDE, ServeConfig
from unclip.web.jobs import Job, JobManager, QueueFull
from unclip.web.limits import BodyLimitMiddleware, SecurityHeadersMiddleware
from unclip.web.schemas import Health, ImageInfo, ImageRef, JobInfo, ServerConfigInfo, request_models
from unclip.web.store import ImageStore, StoredImage, decode_upload

API = "/api/v1"
STATIC = Path(str(resources.files("unclip.web") / "static"))
KEEPALIVE_S = 15.0
WaitQuery = Annotated[bool, Query(description="Answer when the job has finished (200) instead of at once (202).")]
DownloadQuery = Annotated[bool, Query(description="Serve as an attachment.")]
UploadFileField = Annotated[UploadFile, File(description="An image file (PNG, JPEG, WebP, ...).")]


def image_info(item: StoredImage) -> dict[str, Any]:
    url = f"{API}/images/{item.id}"
    return ImageInfo(
        id=item.id, url=url, download_url=f"{url}?download=1", width=item.width, height=item.height, kind=item.kind,
        seed=item.seed, index=item.index, params=item.params, created=item.created,
    ).model_dump()  # fmt: skip


def job_info(job: Job) -> dict[str, Any]:
    url = f"{API}/jobs/{job.id}"
    progress = dict(zip(("stage", "step", "total"), job.progress)) if job.progress else None
    return JobInfo(
        id=job.id, kind=job.kind, status=job.status, position=job.position, progress=progress, params=job.params,
        images=[image_info(i) for i in job.images], error=job.error, created=job.created, started=job.started,
        finished=job.finished, links={"self": url, "events": f"{url}/events", "cancel": f"{url}/cancel"},
    ).model_dump()  # fmt: skip


def _field_error(loc: tuple, message: str, kind: str = "value_error") -> HTTPException:
    return HTTPException(422, detail=[{"type": kind, "loc": list(loc), "msg": message}])


class CountedStream(StreamingResponse):
    """A streaming response that calls ``release`` once it has ended: finished, failed or disconnected."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def create_app(pipe, config: ServeConfig | None = None) -> FastAPI:
    """The server around a loaded :class:`~unclip.pipeline.UnCLIPPipeline` (one job computes at a time)."""
    config = config or ServeConfig()
    limits = config.limits
    models = request_models(limits)
    store = ImageStore(config.store_images, config.store_bytes)
    manager = JobManager(store, config.max_queue, config.keep_jobs, describe=job_info)
    streams = {"open": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        manager.start(asyncio.get_running_loop())
        yield
        await run_in_threadpool(manager.stop)

    app = FastAPI(
        title="unclip",
        summary="unCLIP text-to-image: generation, variations, interpolations, text diffs, mixing and inpainting",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=f"{API}/openapi.json",
        lifespan=lifespan,
    )
    app.state.manager, app.state.store, app.state.config, app.state.pipe = manager, store, config, pipe
    errors.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    api = APIRouter(prefix=API)

    # ------------------------------------------------------------------ helpers

    async def resolve(
        ref: ImageRef, field: str, loc: tuple[str | int, ...] | None = None, keep_mode: bool = False
    ) -> tuple[Image.Image, dict[str, Any]]:
        """The image ``ref`` names (a stored id or base64 data) and how its PNG records it ({field_id: ...});
        ``loc``: where it is in the body (default ``(field,)``); ``keep_mode``: as :func:`decode_upload`."""
        where = ("body", *(loc or (field,)))
        if ref.id is not None:
            image = await run_in_threadpool(store.image, ref.id)
            if image is None:
                raise _field_error((*where, "id"), f"no stored image with id {ref.id!r} (unknown or dropped)")
            return image, {f"{field}_id": ref.id}
        text = ref.data.split(",", 1)[1] if ref.data.startswith("data:") else ref.data
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _field_error((*where, "data"), "data is not valid base64") from None
        name = ".".join(map(str, where[1:]))
        try:
            image = await run_in_threadpool(decode_upload, raw, MAX_UPLOAD_SIDE, f"{name}.data", keep_mode)
        except ValueError as err:
            raise _field_error((*where, "data"), str(err)) from None
        return image, {f"{field}_id": None}

    async def submit(request: Request, kind: str, build, wait: bool) -> Response:
        try:
            params, run = build()
        except actions.FieldError as err:
            raise _field_error(err.loc, str(err)) from None
        try:
            job = manager.submit(kind, params, run)
        except QueueFull as err:
            return JSONResponse(
                {"detail": f"the server is busy: {manager.stats()['waiting']} jobs wait; retry later"},
                status_code=429,
                headers={"Retry-After": str(err.retry_after)},
            )
        if wait:
            while not job.terminal:
                await manager.wait_for_change(job, len(job.events), 1.0)
                if not job.terminal and await request.is_disconnected():
                    manager.cancel(job)
                    return Response(status_code=499)
            return JSONResponse(job_info(job), status_code=200)
        return JSONResponse(job_info(job), status_code=202, headers={"Location": f"{API}/jobs/{job.id}"})

    def get_job(job_id: str) -> Job:
        job = manager.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job with id {job_id!r} (unknown or forgotten)")
        return job

    queued = {
        202: {"model": JobInfo, "description": "Queued (with ?wait=true: 200 and the finished job)"},
        413: {"description": "Request body too large"},
        429: {"description": "Queue full: retry after Retry-After seconds"},
    }

    # ------------------------------------------------------------------ service

    @api.get("/health", response_model=Health, tags=["service"])
    def health() -> dict[str, Any]:
        """Liveness and the queue's state."""
        return {"status": "ok", "model": config.model, "device": config.device, "queue": manager.stats(),
                "stored_images": len(store)}  # fmt: skip

    @api.get("/config", response_model=ServerConfigInfo, tags=["service"])
    def server_config() -> dict[str, Any]:
        """The model's default settings and this server's limits."""
        shown = {
            "max_images": limits.max_images, "max_frames": limits.max_frames, "max_thetas": limits.max_thetas,
            "max_steps": limits.max_steps, "max_guidance": limits.max_guidance, "max_eta": limits.max_eta,
            "max_best_of": limits.max_best_of, "max_prompt_chars": limits.max_prompt_chars,
            "max_seed": limits.max_seed, "theta_range": limits.theta_range, "max_body_bytes": config.max_body_bytes,
            "max_queue": config.max_queue, "max_upload_side": MAX_UPLOAD_SIDE, "max_streams": config.max_streams,
            "max_mix_items": MAX_MIX_ITEMS, "max_jump_n_sample": MAX_JUMP_N_SAMPLE,
        }  # fmt: skip
        return {"model": config.model, "image_size": pipe.image_size, "samplers": list(SAMPLER_NAMES),
                "sampler_min_steps": {name: spec.min_steps for name, spec in SAMPLERS.items()},
                "defaults": config_to_dict(pipe.defaults), "limits": shown}  # fmt: skip

    # ------------------------------------------------------------------ images

    @api.post("/images/generate", status_code=202, response_model=JobInfo, responses=queued, tags=["images"])
    async def generate(body: models.generate, request: Request, wait: WaitQuery = False) -> Response:
        """Text to image (``pipe(prompt, num_images_per_prompt, seed, ...)``)."""

        def build():
            return actions.generate_job(pipe, body, config.model, config.max_steps)

        return await submit(request, "generate", build, wait)

    @api.post("/images/variations", status_code=202, response_model=JobInfo, responses=queued, tags=["images"])
    async def variations(body: models.variations, request: Request, wait: WaitQuery = False) -> Response:
        """Variations of an image (``pipe.vary``): an earlier result or upload by id, or the image itself."""
        image, source = await resolve(body.image, "image")

        def build():
            return actions.variations_job(pipe, body, image, source, config.model, config.max_steps)

        return await submit(request, "variations", build, wait)

    @api.post("/images/interpolate", status_code=202, response_model=JobInfo, responses=queued, tags=["images"])
    async def interpolate(body: models.interpolate, request: Request, wait: WaitQuery = False) -> Response:
        """Frames between two images (``pipe.interpolate``)."""
        image_a, source_a = await resolve(body.image_a, "image_a")
        image_b, source_b = await resolve(body.image_b, "image_b")

        def build():
            return actions.interpolate_job(
                pipe, body, (image_a, image_b), {**source_a, **source_b}, config.model, config.max_steps
            )

        return await submit(request, "interpolate", build, wait)

    @api.post("/images/text-diff", status_code=202, response_model=JobInfo, responses=queued, tags=["images"])
    async def text_diff(body: models.text_diff, request: Request, wait: WaitQuery = False) -> Response:
        """Text diff (``pipe.edit``): one image per θ in ``thetas`` (each in ``theta_range``, 0 to 1)."""
        image, source = await resolve(body.image, "image")

        def build():
            return actions.text_diff_job(pipe, body, image, source, config.model, config.max_steps)

        return await submit(request, "text-diff", build, wait)

    @api.post("/images/mix", status_code=202, response_model=JobInfo, responses=queued, tags=["images"])
    async def mix(body: models.mix, request: Request, wait: WaitQuery = False) -> Response:
        """A weighted mix of captions and images in CLIP space (``pipe.mix(items, weights)``): each item is
        ``{"text": ...}`` or ``{"image": {"id": ...} | {"data": ...}}``; weights one per item, summing > 0."""
        items: list[str | Image.Image] = []
        sources: list[Any] = []
        for i, item in enumerate(body.items):
            if item.text is not None:
                items.append(item.text)
                sources.append(item.text)
            else:
                image, source = await resolve(item.image, "image", ("items", i, "image"))
                items.append(image)
                sources.append(source)

        def build():
            return actions.mix_job(pipe, body, items, sources, config.model, config.max_steps)

        return await submit(request, "mix", build, wait)

    @api.post("/images/inpaint", status_code=202, response_model=JobInfo, responses=queued, tags=["images"])
    async def inpaint(body: models.inpaint, request: Request, wait: WaitQuery = False) -> Response:
        """Inpainting (``pipe.inpaint(image, mask, prompt)``): the mask has the image's size, white = repaint,
        black = keep; the result equals the image outside the mask."""
        image, source = await resolve(body.image, "image")
        mask, mask_source = await resolve(body.mask, "mask", keep_mode=True)
        try:
            await run_in_threadpool(actions.check_inpaint_inputs, image, mask)
        except actions.FieldError as err:
            raise _field_error(err.loc, str(err)) from None

        def build():
            return actions.inpaint_job(
                pipe, body, image, mask, {**source, **mask_source}, config.model, config.max_steps
            )

        return await submit(request, "inpaint", build, wait)

    @api.post("/uploads", status_code=201, response_model=ImageInfo, tags=["images"])
    async def upload(file: UploadFileField) -> dict[str, Any]:
        """Store an image (validated as the CLI validates images) for use by id in the image requests."""
        data = await file.read()
        try:
            image = await run_in_threadpool(decode_upload, data, MAX_UPLOAD_SIDE, f"upload {file.filename!r}")
        except ValueError as err:
            raise _field_error(("body", "file"), str(err)) from None
        item = await run_in_threadpool(store.add, image, "upload", {"kind": "upload", "filename": file.filename})
        return image_info(item)

    @api.get(
        "/images/{image_id}",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "The PNG (parameters in its text chunks)."}},
        tags=["images"],
    )
    def get_image(image_id: str, download: DownloadQuery = False) -> Response:
        """A stored PNG."""
        item = store.get(image_id)
        if item is None:
            raise HTTPException(404, f"no stored image with id {image_id!r} (unknown or dropped)")
        headers = {"Cache-Control": "private, max-age=86400, immutable"}
        if download:
            headers["Content-Disposition"] = f'attachment; filename="unclip-{item.id}.png"'
        return Response(item.png, media_type="image/png", headers=headers)

    @api.get("/images/{image_id}/info", response_model=ImageInfo, tags=["images"])
    def get_image_info(image_id: str) -> dict[str, Any]:
        """A stored image's parameters and links."""
        item = store.get(image_id)
        if item is None:
            raise HTTPException(404, f"no stored image with id {image_id!r} (unknown or dropped)")
        return image_info(item)

    # ------------------------------------------------------------------ jobs

    @api.get("/jobs/{job_id}", response_model=JobInfo, tags=["jobs"])
    def get_job_info(job_id: str) -> dict[str, Any]:
        """A job's state (and its images once done)."""
        return job_info(get_job(job_id))

    @api.post("/jobs/{job_id}/cancel", response_model=JobInfo, tags=["jobs"])
    def cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel: a waiting job at once, a running one at its next sampling step (watch its events)."""
        job = get_job(job_id)
        manager.cancel(job)
        return job_info(job)

    @api.get(
        "/jobs/{job_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "queued, started, progress, done..."}},
        tags=["jobs"],
    )
    async def job_events(job_id: str, request: Request) -> Response:
        """Server-sent events: ``queued`` {position}, ``started``, ``progress`` {stage, step, total}, then ``done``
        {job}, ``error`` {message} or ``cancelled``. Every event has an id; ``Last-Event-ID`` resumes after it."""
        job = get_job(job_id)
        try:
            start = int(request.headers.get("last-event-id", "-1")) + 1
        except ValueError:
            start = 0
        # checked and counted in one step (no await between): concurrent opens cannot all pass the check
        if streams["open"] >= config.max_streams:
            return JSONResponse(
                {"detail": f"too many open event streams (at most {config.max_streams}); retry later"},
                429, headers={"Retry-After": "5"},
            )  # fmt: skip
        streams["open"] += 1
        slot = {"held": True}

        def release() -> None:  # once, whichever of the stream's end and the response's end comes first
            if slot["held"]:
                slot["held"] = False
                streams["open"] -= 1

        async def events() -> AsyncIterator[str]:
            sent = max(0, start)
            try:
                yield "retry: 1000\n\n"
                while True:
                    while sent < len(job.events):
                        name, data = job.events[sent]
                        yield f"id: {sent}\nevent: {name}\ndata: {json.dumps(data)}\n\n"
                        sent += 1
                        if name in ("done", "error", "cancelled"):
                            return
                    if job.terminal and sent >= len(job.events):
                        return
                    before = len(job.events)
                    await manager.wait_for_change(job, sent, KEEPALIVE_S)
                    if len(job.events) == before and not job.terminal:
                        yield ": keepalive\n\n"
            finally:
                release()

        return CountedStream(
            events(), release, media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )  # fmt: skip

    app.include_router(api)

    # ------------------------------------------------------------------ page and docs

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
