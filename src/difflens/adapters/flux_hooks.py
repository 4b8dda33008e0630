"""Hook sites of a diffusers FluxTransformer2DModel, shared by the FLUX.1 and embedded adapters.

Both block output conventions are handled:
  * diffusers >= 0.35: double and single blocks take (hidden_states=img, encoder_hidden_states=txt)
    as keyword arguments and return (encoder_hidden_states, hidden_states) -- text first;
  * diffusers 0.31-0.34: single blocks take one concatenated `hidden_states` (text tokens first)
    and return one concatenated tensor; the text length comes from the transformer call.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from difflens.adapters.base import HookPlan, SiteInfo

_SITE_RE = re.compile(r"(double|single)\.(0|[1-9][0-9]*)\.(img|txt)\.(out|update|mlp)")  # one spelling a name
_STREAM = {"img": "image", "txt": "text"}


def parse_site(name: str) -> tuple[str, int, str, str]:
    """'double.18.img.out' -> ('double', 18, 'img', 'out'); bad names raise ValueError."""
    m = _SITE_RE.fullmatch(name) if isinstance(name, str) else None
    if not m:
        raise ValueError(f"bad FLUX site name {name!r}: expected (double|single).<block>.(img|txt).(out|update|mlp)")
    return m.group(1), int(m.group(2)), m.group(3), m.group(4)


def _blocks(transformer, kind: str):
    return transformer.transformer_blocks if kind == "double" else transformer.single_transformer_blocks


def list_sites(transformer, grid: tuple[int, int], text_len: int) -> list[SiteInfo]:
    """Every site of `transformer` for an image grid (grid_h, grid_w) and `text_len` text tokens."""
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    out = []
    for kind in ("double", "single"):
        for i, block in enumerate(_blocks(transformer, kind)):
            mlp = block.ff.net[0].proj.out_features if kind == "double" else block.proj_mlp.out_features
            for stream in ("img", "txt"):
                tokens = grid[0] * grid[1] if stream == "img" else text_len
                g = grid if stream == "img" else None
                for what in ("out", "update", "mlp"):
                    out.append(SiteInfo(f"{kind}.{i}.{stream}.{what}", _STREAM[stream], what, tokens,
                                        mlp if what == "mlp" else width, g))
    return out


def split_block_io(args: tuple, kwargs: dict, output, text_len: int | None):
    """A block call's tensors as (in_txt, in_img, out_txt, out_img, pack) in either convention.

    pack(out_txt, out_img) rebuilds an output in the block's own convention.
    """
    if isinstance(output, tuple):
        in_img = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        in_txt = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1]
        rest = tuple(output[2:])
        return in_txt, in_img, output[0], output[1], lambda t, i: (t, i, *rest)
    if text_len is None:
        raise RuntimeError("FLUX single block with a concatenated stream, but the text length is unknown")
    joint = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    L = text_len
    return joint[:, :L], joint[:, L:], output[:, :L], output[:, L:], lambda t, i: torch.cat([t, i], dim=1)


def _block_hook(plan: HookPlan, prefix: str, names: set[str]) -> Callable:
    def hook(_module, args, kwargs, output):
        if not any(plan.capturing(n) or plan.intervening(n) for n in names):
            return None
        in_txt, in_img, out_txt, out_img, pack = split_block_io(args, kwargs, output, plan.text_len)
        io = {"img": [in_img, out_img], "txt": [in_txt, out_txt]}
        changed = False
        for stream, pair in io.items():
            here = [n for n in (f"{prefix}.{stream}.out", f"{prefix}.{stream}.update") if n in names]
            # out and update are one point of the stream: every intervention there lands before any capture
            for n in here:
                if plan.intervening(n):  # adding to the update adds to the output
                    pair[1] = plan.intervene(n, pair[1], pair[0] if n.endswith(".update") else None)
                    changed = True
            for n in here:
                if plan.capturing(n):
                    plan.capture(n, pair[1] if n.endswith(".out") else pair[1] - pair[0])
        return pack(io["txt"][1], io["img"][1]) if changed else None

    return hook


def _mlp_hook(plan: HookPlan, by_stream: dict[str, str], joint: bool) -> Callable:
    """MLP hidden (B, T, H) after GELU. joint=True: one tensor over [text; image] tokens (single blocks)."""

    def hook(_module, _args, output):
        if not any(plan.capturing(n) or plan.intervening(n) for n in by_stream.values()):
            return None
        if joint:
            L = plan.text_len
            parts = {"txt": output[:, :L], "img": output[:, L:]}
        else:
            parts = {stream: output for stream in by_stream}
        changed = False
        for stream, n in by_stream.items():
            if plan.intervening(n):
                parts[stream] = plan.intervene(n, parts[stream])
                changed = True
            if plan.capturing(n):
                plan.capture(n, parts[stream])
        if not changed:
            return None
        return torch.cat([parts["txt"], parts["img"]], dim=1) if joint else parts[next(iter(by_stream))]

    return hook


def install(transformer, plan: HookPlan, sites: list[str]) -> list:
    """Register the hooks serving `sites` (validated names) on `transformer`; returns the handles."""
    per_block: dict[tuple[str, int], set[str]] = {}
    for n in sites:
        kind, i, _stream, _what = parse_site(n)
        per_block.setdefault((kind, i), set()).add(n)
    handles = []
    for (kind, i), names in sorted(per_block.items()):
        block = _blocks(transformer, kind)[i]
        prefix = f"{kind}.{i}"
        if any(not n.endswith(".mlp") for n in names):
            handles.append(block.register_forward_hook(_block_hook(plan, prefix, names), with_kwargs=True))
        mlp = {n.split(".")[2]: n for n in names if n.endswith(".mlp")}
        if kind == "double":
            for stream, n in mlp.items():
                module = (block.ff if stream == "img" else block.ff_context).net[0]
                handles.append(module.register_forward_hook(_mlp_hook(plan, {stream: n}, joint=False)))
        elif mlp:
            handles.append(block.act_mlp.register_forward_hook(_mlp_hook(plan, mlp, joint=True)))
    return handles
