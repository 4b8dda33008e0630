"""The live feature browser: a Starlette app over a run folder.

    app = create_app("runs/demo")          # then: uvicorn.run(app, host="127.0.0.1", port=8000)

Routes (HTML pages, then images and JSON):
    /                                     the run: dictionaries with their metrics, the run's plots
    /d/<dictionary>                       feature table (sort, order, page, per_page, min_freq, max_freq, min_max,
                                          max_max, min_score, min_auroc, concept, q, dead)
    /d/<dictionary>/f/<latent>            feature page (+ live steering)
    /image/<id>?step=S                    a stored image: click a token for its latents; reconstruction error
    /img/<id>.png, /overlay/<d>/<latent>/<id>/<step>.png, /errmap/<d>/<id>/<step>.png
    /api/map/<d>/<latent>/<id>/<step>     token activations of one image (JSON)
    /api/token/<id>?step=S&token=T        latents active on one token, per dictionary (JSON)
    /api/steer (POST), /api/steer/<job>   live steering: queue a request, poll it
    /run/<path>                           the run's plot files (PNG/JSON inside the run only)

Unknown dictionaries, latents and images are 404 pages, malformed queries 400; no response carries a traceback.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

from .pages import HERE, Links, error_png, feature_context, image_context, overlay_png, render, run_context
from .pages import dictionary_context, token_latents
from .run import BadRequest, FeatureQuery, NotFound, Run, parse_int
from .steering import Refused, SteeringLimits, SteeringService

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
}


LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
MAX_BODY_BYTES = 16 * 1024  # a steering request is a few hundred bytes of JSON; larger bodies are refused unread


def create_app(run: str | Path | Run, limits: SteeringLimits | None = None, generate=None,
               allowed_hosts: list[str] | None = None):
    """The browser's ASGI app over ``run``; ``generate`` replaces the steering call (tests)."""
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    run = run if isinstance(run, Run) else Run(run)
    steering = SteeringService(run, limits, generate=generate)
    links = Links()

    def page(template: str, status: int = 200, **context) -> HTMLResponse:
        return HTMLResponse(render(template, links=links, run_name=run.root.name, **context), status_code=status,
                            headers=SECURITY_HEADERS)

    def error_page(status: int, message: str, request=None) -> Response:
        if request is not None and request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)
        title = {400: "Bad request", 404: "Not found", 405: "Method not allowed"}.get(status, "Error")
        return page("error.html", status=status, title=title, message=message, code=status)

    def png(data: bytes) -> Response:
        return Response(data, media_type="image/png", headers={**SECURITY_HEADERS, "Cache-Control": "max-age=3600"})

    def dictionary(request) -> object:
        return run.dictionary(request.path_params["name"])

    # ---- pages ---------------------------------------------------------------------------------------------
    def home(request: Request):
        if request.query_params:
            raise BadRequest(f"the index page takes no query parameters (got {', '.join(request.query_params.keys())})")
        return page("index.html", **run_context(run))

    def dictionary_page(request: Request):
        d = dictionary(request)
        q = FeatureQuery.parse(request.query_params)
        ctx = dictionary_context(d, q, links)
        if d.index is not None and q.page > ctx["pages"] and ctx["total"]:
            raise NotFound(f"page {q.page} is past the last page ({ctx['pages']})")
        return page("dictionary.html", export=False, **ctx)

    def feature_page(request: Request):
        d = dictionary(request)
        if d.index is None:
            raise NotFound(f"dictionary {d.name} has no feature index (build it with `difflens features build "
                           f"--run {d.folder}`)")
        if request.query_params:
            raise BadRequest("the feature page takes no query parameters")
        latent = request.path_params["latent"]
        ctx = feature_context(run, d, latent, links)
        ctx["steering"] = {"available": steering.available, "reason": steering.reason, "limits": steering.limits,
                           **steering.defaults()}
        return page("feature.html", export=False, **ctx)

    def image_page(request: Request):
        image_id = request.path_params["image_id"]
        unknown = set(request.query_params.keys()) - {"step"}
        if unknown:
            raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        step = request.query_params.get("step")
        step = parse_int(step, "step", 0, 10**6) if step is not None else None
        ctx = image_context(run, image_id, step, links)
        if step is not None and step not in ctx["steps"]:
            raise NotFound(f"step {step} is not indexed (steps {ctx['steps']})")
        return page("image.html", **ctx)

    # ---- images ---------------------------------------------------------------------------------------------
    def stored_image(request: Request):
        return png(run.image_path(request.path_params["image_id"]).read_bytes())

    def overlay(request: Request):
        d = dictionary(request)
        p = request.path_params
        return png(overlay_png(run, d, p["latent"], p["image_id"], p["step"]))

    def errmap(request: Request):
        d = dictionary(request)
        p = request.path_params
        data, _stats = error_png(run, d, p["image_id"], p["step"])
        return png(data)

    def run_file(request: Request):
        path = run.safe_file(request.path_params["path"])
        media = "image/png" if path.suffix == ".png" else "application/json" if path.suffix == ".json" else "text/plain"
        return Response(path.read_bytes(), media_type=media, headers=SECURITY_HEADERS)

    # ---- JSON ------------------------------------------------------------------------------------------------
    def api_map(request: Request):
        d = dictionary(request)
        p = request.path_params
        values = run.activation_map(d, p["latent"], p["image_id"], p["step"])
        return JSONResponse({"grid": list(values.shape), "values": [round(float(v), 5) for v in values.reshape(-1)],
                             "max": float(d.table.max[p["latent"]])}, headers=SECURITY_HEADERS)

    def api_token(request: Request):
        unknown = set(request.query_params.keys()) - {"step", "token"}
        if unknown:
            raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        step = parse_int(request.query_params.get("step"), "step", 0, 10**6)
        token = parse_int(request.query_params.get("token"), "token", 0, 10**7)
        return JSONResponse(token_latents(run, request.path_params["image_id"], step, token, links),
                            headers=SECURITY_HEADERS)

    async def api_steer(request: Request):
        # JSON only: a cross-site form or text/plain POST (no CORS preflight) cannot queue generations
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return JSONResponse({"error": "refused: send the request as application/json"}, status_code=415,
                                headers=SECURITY_HEADERS)
        too_big = JSONResponse({"error": f"refused: the request body is larger than {MAX_BODY_BYTES} bytes"},
                               status_code=413, headers=SECURITY_HEADERS)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return too_big
        raw = b""
        async for chunk in request.stream():  # a chunked body declares no length: count what arrives
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                return too_big
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return JSONResponse({"error": "refused: the request body must be JSON"}, status_code=400,
                                headers=SECURITY_HEADERS)
        try:
            job = steering.submit(body)
        except Refused as err:
            return JSONResponse({"error": f"refused: {err}"}, status_code=400, headers=SECURITY_HEADERS)
        return JSONResponse(steering.status(job.id), status_code=202, headers=SECURITY_HEADERS)

    def api_steer_status(request: Request):
        status = steering.status(request.path_params["job"])
        if status is None:
            raise NotFound("no such steering job")
        return JSONResponse(status, headers=SECURITY_HEADERS)

    # ---- errors: a page (or JSON under /api/), never a traceback ----------------------------------------------
    async def on_not_found(request, exc):
        return error_page(404, str(exc), request)

    async def on_bad_request(request, exc):
        return error_page(400, str(exc), request)

    async def on_http(request, exc):
        message = {404: "no such page", 405: "method not allowed"}.get(exc.status_code, exc.detail or "error")
        return error_page(exc.status_code, message, request)

    async def on_error(request, exc):
        print(f"difflens browse: error on {request.url.path}", file=sys.stderr)
        traceback.print_exception(exc, file=sys.stderr)
        return error_page(500, "internal error (details are in the server's log)", request)

    routes = [
        Route("/", home),
        Route("/d/{name}", dictionary_page),
        Route("/d/{name}/f/{latent:int}", feature_page),
        Route("/image/{image_id:int}", image_page),
        Route("/img/{image_id:int}.png", stored_image),
        Route("/overlay/{name}/{latent:int}/{image_id:int}/{step:int}.png", overlay),
        Route("/errmap/{name}/{image_id:int}/{step:int}.png", errmap),
        Route("/api/map/{name}/{latent:int}/{image_id:int}/{step:int}", api_map),
        Route("/api/token/{image_id:int}", api_token),
        Route("/api/steer", api_steer, methods=["POST"]),
        Route("/api/steer/{job}", api_steer_status),
        Route("/run/{path:path}", run_file),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={NotFound: on_not_found, BadRequest: on_bad_request,
                                                       HTTPException: on_http, Exception: on_error})
    if allowed_hosts is not None:  # a page on another site cannot reach a loopback server by rebinding its DNS name
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.state.run = run
    app.state.steering = steering
    return app


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, limits: SteeringLimits | None = None) -> None:
    import uvicorn

    loopback = host in LOOPBACK_HOSTS
    app = create_app(run, limits, allowed_hosts=LOOPBACK_HOSTS if loopback else None)
    if not loopback:
        print(f"difflens browse: warning: listening on {host}, reachable from other machines; the browser has no "
              f"authentication, so live steering (which runs the model on this machine) is open to anyone on the "
              f"network: keep the default 127.0.0.1, or put it behind a firewall", file=sys.stderr)
    print(f"difflens browse: {app.state.run.root} at http://{host}:{port}/  (Ctrl-C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["create_app", "serve"]
