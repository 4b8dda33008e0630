"""The browser's routes, grouped by page: each group is a function of the shared `Site` that returns its routes.

    index page      /                                   the run: dictionaries with their metrics, plots
    feature table   /d/<dictionary>                     (sort, order, page, per_page, min_freq, max_freq, min_max,
                                                        max_max, min_score, min_auroc, concept, q, dead)
    feature page    /d/<dictionary>/f/<latent>          + /api/map/<d>/<latent>/<id>/<step> (an image's token
                                                        activations, JSON)
    image page      /image/<id>?step=S                  + /api/token/<id>?step=S&token=T (latents on one token, JSON)
    images          /img/<id>.png, /overlay/<d>/<latent>/<id>/<step>.png, /errmap/<d>/<id>/<step>.png
    steering API    /api/steer (POST), /api/steer/<job>  queue a live steering request (429 when the queue is full),
                                                        poll it (GET), cancel it (DELETE: the page is closed)
    run files       /run/<path>                         the run's plot files (PNG/JSON inside the run only)
    static          /static/...

Errors (`error_handlers`): unknown things are 404 pages, malformed queries 400, JSON under /api/; no response
carries a traceback.
"""

from __future__ import annotations

import json
import sys
import traceback

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .pages import HERE, Links, error_png, feature_context, image_context, overlay_png, render, run_context
from .pages import dictionary_context, token_latents
from .run import BadRequest, FeatureQuery, NotFound, Run, parse_int
from .steering import QueueFull, Refused, SteeringService

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
}
MAX_BODY_BYTES = 16 * 1024  # a steering request is a few hundred bytes of JSON; larger bodies are refused unread


class Site:
    """What every route shares: the run, the links between pages, live steering, and how a response is made
    (every one carries the security headers)."""

    def __init__(self, run: Run, steering: SteeringService):
        self.run, self.steering, self.links = run, steering, Links()

    def page(self, template: str, status: int = 200, **context) -> HTMLResponse:
        return HTMLResponse(render(template, links=self.links, run_name=self.run.root.name, **context),
                            status_code=status, headers=SECURITY_HEADERS)

    def error_page(self, status: int, message: str, request=None) -> Response:
        if request is not None and request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)
        title = {400: "Bad request", 404: "Not found", 405: "Method not allowed"}.get(status, "Error")
        return self.page("error.html", status=status, title=title, message=message, code=status)

    def png(self, data: bytes) -> Response:
        return Response(data, media_type="image/png", headers={**SECURITY_HEADERS, "Cache-Control": "max-age=3600"})

    def json(self, data, status: int = 200, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(data, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})

    def dictionary(self, request: Request):
        return self.run.dictionary(request.path_params["name"])


def no_unknown_query(request: Request, allowed: set[str]) -> None:
    unknown = set(request.query_params.keys()) - allowed
    if unknown:
        raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")


# ---- index page -----------------------------------------------------------------------------------------------
def index_routes(site: Site) -> list[Route]:
    def home(request: Request):
        if request.query_params:
            raise BadRequest(f"the index page takes no query parameters (got {', '.join(request.query_params.keys())})")
        return site.page("index.html", **run_context(site.run))

    return [Route("/", home)]


# ---- feature table --------------------------------------------------------------------------------------------
def feature_table_routes(site: Site) -> list[Route]:
    def dictionary_page(request: Request):
        d = site.dictionary(request)
        q = FeatureQuery.parse(request.query_params)
        ctx = dictionary_context(d, q, site.links)
        if d.index is not None and q.page > ctx["pages"] and ctx["total"]:
            raise NotFound(f"page {q.page} is past the last page ({ctx['pages']})")
        return site.page("dictionary.html", export=False, **ctx)

    return [Route("/d/{name}", dictionary_page)]


# ---- feature page ---------------------------------------------------------------------------------------------
def feature_page_routes(site: Site) -> list[Route]:
    steering = site.steering

    def feature_page(request: Request):
        d = site.dictionary(request)
        if d.index is None:
            raise NotFound(f"dictionary {d.name} has no feature index (build it with `difflens features index "
                           f"--run {d.folder}`)")
        if request.query_params:
            raise BadRequest("the feature page takes no query parameters")
        latent = request.path_params["latent"]
        ctx = feature_context(site.run, d, latent, site.links)
        ctx["steering"] = {"available": steering.available, "reason": steering.reason, "limits": steering.limits,
                           **steering.defaults()}
        return site.page("feature.html", export=False, **ctx)

    def api_map(request: Request):
        d = site.dictionary(request)
        p = request.path_params
        values = site.run.activation_map(d, p["latent"], p["image_id"], p["step"])
        return site.json({"grid": list(values.shape), "values": [round(float(v), 5) for v in values.reshape(-1)],
                          "max": float(d.table.max[p["latent"]])})

    return [Route("/d/{name}/f/{latent:int}", feature_page),
            Route("/api/map/{name}/{latent:int}/{image_id:int}/{step:int}", api_map)]


# ---- image page -----------------------------------------------------------------------------------------------
def image_page_routes(site: Site) -> list[Route]:
    def image_page(request: Request):
        image_id = request.path_params["image_id"]
        no_unknown_query(request, {"step"})
        step = request.query_params.get("step")
        step = parse_int(step, "step", 0, 10**6) if step is not None else None
        ctx = image_context(site.run, image_id, step, site.links)
        if step is not None and step not in ctx["steps"]:
            raise NotFound(f"step {step} is not indexed (steps {ctx['steps']})")
        return site.page("image.html", **ctx)

    def api_token(request: Request):
        no_unknown_query(request, {"step", "token"})
        step = parse_int(request.query_params.get("step"), "step", 0, 10**6)
        token = parse_int(request.query_params.get("token"), "token", 0, 10**7)
        return site.json(token_latents(site.run, request.path_params["image_id"], step, token, site.links))

    return [Route("/image/{image_id:int}", image_page), Route("/api/token/{image_id:int}", api_token)]


# ---- images ---------------------------------------------------------------------------------------------------
def image_file_routes(site: Site) -> list[Route]:
    run = site.run

    def stored_image(request: Request):
        return site.png(run.image_path(request.path_params["image_id"]).read_bytes())

    def overlay(request: Request):
        d = site.dictionary(request)
        p = request.path_params
        return site.png(overlay_png(run, d, p["latent"], p["image_id"], p["step"]))

    def errmap(request: Request):
        d = site.dictionary(request)
        p = request.path_params
        data, _stats = error_png(run, d, p["image_id"], p["step"])
        return site.png(data)

    return [Route("/img/{image_id:int}.png", stored_image),
            Route("/overlay/{name}/{latent:int}/{image_id:int}/{step:int}.png", overlay),
            Route("/errmap/{name}/{image_id:int}/{step:int}.png", errmap)]


# ---- steering API ---------------------------------------------------------------------------------------------
def steering_routes(site: Site) -> list[Route]:
    steering = site.steering

    async def api_steer(request: Request):
        # JSON only: a cross-site form or text/plain POST (no CORS preflight) cannot queue generations
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return site.json({"error": "refused: send the request as application/json"}, status=415)
        try:
            raw = await _read_body(request)
        except ClientDisconnect:  # the client left while sending: nothing is queued, and it is no server error
            return site.json({"error": "refused: the client disconnected before the request was sent"}, status=400)
        if raw is None:
            return site.json({"error": f"refused: the request body is larger than {MAX_BODY_BYTES} bytes"}, status=413)
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return site.json({"error": "refused: the request body must be JSON"}, status=400)
        try:
            steering.check_room()  # on the loop: a full queue answers at once, however busy the thread pool is
            job = await run_in_threadpool(steering.submit, body)  # its checks may load an index: not on the loop
        except QueueFull as err:  # refused at once, to be tried again shortly
            return site.json({"error": f"refused: {err}"}, status=429, headers={"Retry-After": "1"})
        except Refused as err:
            return site.json({"error": f"refused: {err}"}, status=400)
        return site.json(steering.status(job.id), status=202)

    def api_steer_job(request: Request):
        job = request.path_params["job"]
        status = steering.cancel(job) if request.method == "DELETE" else steering.status(job)
        if status is None:
            raise NotFound("no such steering job")
        return site.json(status)

    return [Route("/api/steer", api_steer, methods=["POST"]),
            Route("/api/steer/{job}", api_steer_job, methods=["GET", "DELETE"])]


async def _read_body(request: Request) -> bytes | None:
    """The request body, or None when it is larger than MAX_BODY_BYTES (declared, or counted as it arrives: a
    chunked body declares no length)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        return None
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            return None
    return raw


# ---- run files and static files -------------------------------------------------------------------------------
def run_file_routes(site: Site) -> list[Route]:
    def run_file(request: Request):
        path = site.run.safe_file(request.path_params["path"])
        media = "image/png" if path.suffix == ".png" else "application/json" if path.suffix == ".json" else "text/plain"
        return Response(path.read_bytes(), media_type=media, headers=SECURITY_HEADERS)

    return [Route("/run/{path:path}", run_file)]


def static_routes(site: Site) -> list[Mount]:
    return [Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static")]


PAGES = (index_routes, feature_table_routes, feature_page_routes, image_page_routes, image_file_routes,
         steering_routes, run_file_routes, static_routes)


# ---- errors: a page (or JSON under /api/), never a traceback ----------------------------------------------------
def error_handlers(site: Site) -> dict:
    async def on_not_found(request, exc):
        return site.error_page(404, str(exc), request)

    async def on_bad_request(request, exc):
        return site.error_page(400, str(exc), request)

    async def on_http(request, exc):
        message = {404: "no such page", 405: "method not allowed"}.get(exc.status_code, exc.detail or "error")
        return site.error_page(exc.status_code, message, request)

    async def on_error(request, exc):
        print(f"difflens browse: error on {request.url.path}", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
        return site.error_page(500, "internal error (details are in the server's log)", request)

    return {NotFound: on_not_found, BadRequest: on_bad_request, HTTPException: on_http, Exception: on_error}
