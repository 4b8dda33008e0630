"""The live feature browser: a Starlette app over a run folder.

    app = create_app("runs/demo")          # then: uvicorn.run(app, host="127.0.0.1", port=8000)

The routes, grouped by page (index, feature table, feature page, image page, images, steering API, run files,
static), and the error handlers are in `routes.py`; unknown dictionaries, latents and images are 404 pages,
malformed queries 400; no response carries a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .run import Run
from .steering import SteeringLimits, SteeringService

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]


def create_app(run: str | Path | Run, limits: SteeringLimits | None = None, generate=None,
               allowed_hosts: list[str] | None = None):
    """The browser's ASGI app over ``run``; ``generate`` replaces the steering call (tests)."""
    from starlette.applications import Starlette

    from .routes import PAGES, Site, error_handlers

    run = run if isinstance(run, Run) else Run(run)
    steering = SteeringService(run, limits, generate=generate)
    site = Site(run, steering)
    app = Starlette(routes=[route for page in PAGES for route in page(site)], exception_handlers=error_handlers(site))
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
