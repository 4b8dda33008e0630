"""`difflens browse RUN`: the feature browser over a run folder (live, or written out as a static site)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from difflens.configs import add_config_arguments, config_from_args

from .steering import SteeringLimits


@dataclass
class BrowseCommand:
    """`difflens browse`: where the browser listens, or where a static export goes."""

    run: str
    """run folder (what `difflens demo` writes: dictionaries/, store/, summary.json) or one dictionary folder"""
    host: str = "127.0.0.1"
    """address to listen on (127.0.0.1: this machine only; the browser has no authentication)"""
    port: int = 8000
    """port to listen on"""
    export: str | None = None
    """write a static site to this folder instead of serving (steering disabled; serve it with any file server)"""
    export_features: str = "all"
    """latents per dictionary in an export: all (every alive latent), N (N alive latents drawn at random, seeded) or
    a list such as 1,5,9 (=7: latent 7), as autointerp's --features"""


def register(subparsers) -> None:
    p = subparsers.add_parser("browse", help="feature browser: dictionaries, feature pages, images, live steering",
                              description="Serve the feature browser over a run folder on http://HOST:PORT/, or "
                                          "write a static site with --export DIR.")
    p.add_argument("run", help="run folder (what `difflens demo` writes) or one dictionary folder")
    add_config_arguments(p.add_argument_group("browser"), BrowseCommand, exclude=("run",))
    add_config_arguments(p.add_argument_group("live steering"), SteeringLimits)
    p.set_defaults(func=cmd_browse)


def cmd_browse(args) -> int:
    cmd = config_from_args(BrowseCommand, args)
    limits = config_from_args(SteeringLimits, args)
    if not 0 < cmd.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {cmd.port}")
    for name in ("max_steps", "max_queue", "max_prompt_chars", "max_resolution"):
        if getattr(limits, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("max_strength", "abandon_seconds"):
        if not getattr(limits, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if cmd.export:
        from .export import export_site

        out = export_site(cmd.run, cmd.export, features=cmd.export_features, progress=True)
        print(f"wrote a static site to {out}; serve it with: python -m http.server -d {out} 8001")
        return 0
    missing = [name for name in ("starlette", "uvicorn", "jinja2") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"the browser needs its extra: pip install 'difflens[browser]' ({', '.join(missing)} missing)")
    from .app import serve

    serve(cmd.run, host=cmd.host, port=cmd.port, limits=limits)
    return 0
