"""The feature browser: `difflens browse RUN` serves a run folder's dictionaries, feature pages, images and live
steering on http://127.0.0.1:8000/; `--export DIR` writes the same pages as a static site.

    run.py       what the browser reads from a run folder (files stages wrote), with light cached look-ups
    pages.py     page contexts and Jinja2 rendering shared by the app and the export
    app.py       the Starlette app and `serve`
    routes.py    the routes, grouped by page (HTML pages, images, JSON endpoints), 404/400 pages
    steering.py  live steering: request limits, one generation at a time through difflens.steering
    export.py    the static site
    cli.py       `difflens browse`
"""

from .app import create_app, serve
from .run import Run

__all__ = ["Run", "create_app", "serve"]
