"""OpenAI-compatible vision-language client for visual autointerp.

Any chat-completions endpoint that takes images (OpenRouter / Gemini, vLLM, Ollama, OpenAI) is reached
through the official `openai` client, with its own retries switched off so that ours are the ones that run
(and are tested):

- cache first: one JSON file per request under `cache_dir`, named by the sha256 of the canonical request
  (model, endpoint, prompts, image hashes, schema, sampling settings; never the API key). Only successful
  replies are cached, so a rerun sends exactly the requests that failed or never ran;
- retries with exponential backoff and jitter on 429, 5xx, timeouts and connection errors; none on other
  4xx. A refused key (401/403) or an exhausted account (402, 429 `insufficient_quota`) stops the whole run
  at once with `VLMAuthError` / `VLMFatalError`; an unreachable endpoint marks the remaining requests failed
  without calling it again. The first uncached request is sent alone, so a wrong key costs one call;
- a malformed reply (not JSON, no choices, no content, unparseable structured output) is a failed result
  with the reason, never a made-up answer;
- bounded concurrency (threads), a JSONL ledger of tokens and cost per request, and `dry_run`, which
  counts calls, tokens and cost without touching the network or needing a key.

The key is read from the environment variable named by `VLMConfig.api_key_env`; it is kept in memory only
and scrubbed from every error message this module produces.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from difflens.atomic import atomic_write_json
from difflens.outputs import note
from difflens.reading import CorruptFileError, read_json

log = logging.getLogger(__name__)

CACHE_VERSION = 1
NO_KEY = "no-key"  # sent when `api_key_env` is empty (local vLLM / Ollama servers ignore the key)
_RETRY_AFTER_CAP_S = 120.0  # never sleep longer than this on a server's Retry-After


@dataclass
class VLMConfig:
    """Where and how to call the vision-language model; every field becomes a CLI flag."""

    base_url: str = "https://openrouter.ai/api/v1"
    """OpenAI-compatible endpoint, up to `/v1` (OpenRouter, vLLM `http://host:8000/v1`, Ollama `http://localhost:11434/v1`)."""
    model: str = "google/gemini-2.5-flash"
    """Model id as the endpoint names it; it must accept images."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (never the key itself); empty for keyless local servers."""
    max_concurrency: int = 4
    """Requests in flight at once."""
    max_retries: int = 5
    """Retries per request after 429, 5xx, timeouts and connection errors (0: one try only)."""
    timeout_s: float = 60.0
    """Seconds to wait for a reply before counting the try as timed out."""
    temperature: float = 0.0
    """Sampling temperature."""
    max_tokens: int = 1024
    """Most tokens the model may write per reply."""
    cache_dir: str | None = None
    """Reply cache folder; default: the folder the caller passes (e.g. <index>/autointerp/cache)."""
    price_in_per_mtok: float | None = None
    """USD per million input tokens, for the ledger and dry-run cost (unknown if unset)."""
    price_out_per_mtok: float | None = None
    """USD per million output tokens, for the ledger and dry-run cost (unknown if unset)."""
    retry_base_s: float = 1.0
    """First backoff delay in seconds; doubled per retry, with jitter."""
    retry_max_s: float = 30.0
    """Longest backoff delay in seconds."""


@dataclass
class VLMRequest:
    """One chat call: a system prompt, a user text, images, and optionally a JSON schema for the reply.

    `images` may hold PNG bytes, uint8 arrays (HW, HW3 or HW4) or PIL images; they are stored as PNG bytes.
    """

    key: str
    """The caller's id for bookkeeping, e.g. "explain/latent-17" (not part of the cache key)."""
    system: str
    """System prompt: the task and the answer format."""
    text: str
    """User text sent before the images."""
    images: list = field(default_factory=list)
    """Images in order, sent as PNG data URLs."""
    json_schema: dict | None = None
    """Ask for structured output: `response_format` json_schema where the endpoint takes it, else JSON parsed from text."""

    def __post_init__(self):
        self.images = [to_png(im) for im in self.images]


@dataclass
class VLMResult:
    """What came back for one request; `ok=False` means failed (with `error`), never a low score."""

    key: str
    ok: bool
    content: str | None
    parsed: dict | None
    error: str | None
    cached: bool
    input_tokens: int
    output_tokens: int
    cost_usd: float | None = None
    """Cost of this call in USD when known (0 for cache hits)."""
    attempts: int = 0
    """Calls made to the endpoint for this result (0 for cache hits and skipped requests)."""


class VLMFatalError(ValueError):
    """The endpoint refuses every request (bad key, no credit): the run stops; `results` holds what finished."""

    def __init__(self, message: str, results: list[VLMResult] | None = None):
        super().__init__(message)
        self.results = results or []


class VLMAuthError(VLMFatalError):
    """The endpoint refused the API key (401/403)."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, unreachable: bool = False):
        super().__init__(reason)
        self.reason, self.retry_after, self.unreachable = reason, retry_after, unreachable


class _Failed(Exception):
    """A definite failure of this one request (no retry)."""


class _SchemaRejected(Exception):
    """The endpoint answered 400 to a request carrying `response_format`."""


# ---------------------------------------------------------------------------------------------- images


def to_png(image) -> bytes:
    """PNG bytes from PNG bytes, a uint8 array (HW, HW3, HW4) or a PIL image."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ValueError("image bytes are not a PNG")
        return data
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise ValueError(f"image arrays must be uint8 HW, HW1, HW3 or HW4, got {image.dtype} {image.shape}")
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise TypeError(f"unsupported image type {type(image).__name__}")


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG header, or None."""
    if len(data) >= 24 and data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def image_tokens(data: bytes) -> int:
    """Rough input tokens for one image (OpenAI's high-detail tiling: 85 + 170 per 512 px tile, after
    fitting into 2048 px and scaling the short side to 768 px); a generous bound for Gemini-style counts."""
    size = png_size(data)
    if size is None:
        return 765
    w, h = size
    s = min(1.0, 2048 / max(w, h, 1))
    w, h = w * s, h * s
    s = min(1.0, 768 / max(min(w, h), 1))
    w, h = w * s, h * s
    return 85 + 170 * math.ceil(w / 512) * math.ceil(h / 512)


# ---------------------------------------------------------------------------------------------- helpers


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _public_url(url: str) -> str:
    """The endpoint without credentials or query string, safe for files and logs."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def parse_json_reply(text: str) -> dict:
    """The JSON object in a model's reply: the whole text, a ```json fence, or the outermost {...}."""
    text = text.strip()
    candidates = [text]
    candidates += re.findall(r"```(?:json)?\s*(.*?)```", text, flags=re.S)
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for c in candidates:
        try:
            obj = json.loads(c)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return obj
    raise ValueError("no JSON object in the reply")


def _check_schema(obj: dict, schema: dict) -> None:
    """Light check: the required top-level keys are there (a full validator is not worth a dependency)."""
    missing = [k for k in schema.get("required", []) if k not in obj]
    if missing:
        raise ValueError(f"reply JSON lacks required keys {missing}")


# ---------------------------------------------------------------------------------------------- client


class VLMClient:
    """Sends `VLMRequest`s to one OpenAI-compatible endpoint: cache, retries, concurrency, ledger."""

    def __init__(self, config: VLMConfig, cache_dir: str | Path | None = None, ledger_path: str | Path | None = None):
        """Reads the key from `config.api_key_env` now; a missing key is reported by `run` (before any call)
        only when something is not cached, so dry runs and fully cached reruns need none."""
        self.config = config
        folder = config.cache_dir or cache_dir
        if folder is None:
            raise ValueError("VLMClient needs a cache folder (cache_dir or VLMConfig.cache_dir)")
        self.cache_dir = Path(folder)
        self.ledger_path = Path(ledger_path) if ledger_path is not None else None
        self.ledger: list[dict] = []  # this client's ledger rows, also appended to `ledger_path`
        env = config.api_key_env
        self.__key = (os.environ.get(env) or None) if env else NO_KEY
        self._client = None
        self._lock = threading.Lock()
        self._schema_supported = True  # cleared when the endpoint answers 400 to response_format

    def __repr__(self) -> str:
        c = self.config
        return f"VLMClient(model={c.model!r}, base_url={_public_url(c.base_url)!r}, api_key_env={c.api_key_env!r})"

    # -- bookkeeping -------------------------------------------------------------------------------------

    def _scrub(self, message: str) -> str:
        key = self.__key
        if key and key != NO_KEY:
            message = message.replace(key, "***")
        return message

    def request_hash(self, request: VLMRequest) -> str:
        """sha256 of the canonical request: what decides the reply, not the caller's key nor the API key."""
        c = self.config
        canonical = {
            "v": CACHE_VERSION,
            "base_url": _public_url(c.base_url),
            "model": c.model,
            "system": request.system,
            "text": request.text,
            "images": [_sha256(im) for im in request.images],
            "json_schema": request.json_schema,
            "temperature": c.temperature,
            "max_tokens": c.max_tokens,
        }
        return _sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode())

    def cache_path(self, request: VLMRequest) -> Path:
        return self.cache_dir / f"{self.request_hash(request)}.json"

    def _read_cache(self, request: VLMRequest) -> dict | None:
        """The cached reply to `request`, or None: not cached, or a corrupt entry (said on stderr; asked again and
        rewritten)."""
        path = self.cache_path(request)
        if not path.exists():
            return None
        try:
            entry = read_json(path, "autointerp cache entry", expect=dict)
            if "content" not in entry:
                raise CorruptFileError(path, "autointerp cache entry", "no 'content'")
        except CorruptFileError as err:
            note(f"ignoring a corrupt autointerp cache entry {err.path} ({err.problem}): asking again")
            return None
        return entry

    def cost(self, input_tokens: int, output_tokens: int) -> float | None:
        """USD for these tokens at the configured prices, or None when a price is unset."""
        c = self.config
        if c.price_in_per_mtok is None or c.price_out_per_mtok is None:
            return None
        return (input_tokens * c.price_in_per_mtok + output_tokens * c.price_out_per_mtok) / 1e6

    def _record(self, result: VLMResult) -> None:
        row = {
            "time": round(time.time(), 3),
            "key": result.key,
            "model": self.config.model,
            "base_url": _public_url(self.config.base_url),
            "input_tokens": 0 if result.cached else result.input_tokens,
            "output_tokens": 0 if result.cached else result.output_tokens,
            "cost_usd": 0.0 if result.cached else result.cost_usd,
            "cached": result.cached,
            "ok": result.ok,
            "attempts": result.attempts,
            "error": result.error,
        }
        with self._lock:
            self.ledger.append(row)
            if self.ledger_path is not None:
                self.ledger_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.ledger_path, "a") as f:
                    f.write(json.dumps(row) + "\n")

    def totals(self) -> dict:
        """This client's spend so far: calls, tokens, cost (None if any billed call's cost is unknown)."""
        return ledger_totals(self.ledger)

    # -- estimates ---------------------------------------------------------------------------------------

    def estimate_tokens(self, request: VLMRequest) -> int:
        """Rough input tokens: characters / 4 for the text (and schema), plus per-image tokens."""
        chars = len(request.system) + len(request.text)
        if request.json_schema is not None:
            chars += len(json.dumps(request.json_schema))
        return 8 + math.ceil(chars / 4) + sum(image_tokens(im) for im in request.images)

    def dry_run(self, requests: list[VLMRequest]) -> dict:
        """What `run` would send, without network or key: calls, cache hits, estimated tokens and cost."""
        rows, seen = [], set()
        for r in requests:
            h = self.request_hash(r)
            cached = h in seen or self._read_cache(r) is not None
            seen.add(h)
            rows.append({"key": r.key, "images": len(r.images), "input_tokens_est": self.estimate_tokens(r), "cached": cached})
        todo = [row for row in rows if not row["cached"]]
        tokens_in = sum(row["input_tokens_est"] for row in todo)
        tokens_out = len(todo) * self.config.max_tokens
        return {
            "model": self.config.model,
            "base_url": _public_url(self.config.base_url),
            "requests": len(rows),
            "cached": len(rows) - len(todo),
            "calls": len(todo),
            "input_tokens_est": tokens_in,
            "output_tokens_max": tokens_out,
            "cost_usd_max": self.cost(tokens_in, tokens_out),
            "per_request": rows,
        }

    # -- calling -----------------------------------------------------------------------------------------

    def _openai(self):
        if self._client is None:
            import openai

            c = self.config
            self._client = openai.OpenAI(base_url=c.base_url, api_key=self.__key, timeout=c.timeout_s, max_retries=0)
        return self._client

    def _messages(self, request: VLMRequest) -> list[dict]:
        """System prompt (plus the schema, which also serves endpoints without response_format) and the
        user turn: text, then each image as a PNG data URL."""
        system = request.system
        if request.json_schema is not None:
            system += "\n\nAnswer with one JSON object only, matching this JSON schema:\n" + json.dumps(request.json_schema)
        content: list[dict] = [{"type": "text", "text": request.text}]
        for im in request.images:
            url = "data:image/png;base64," + base64.b64encode(im).decode()
            content.append({"type": "image_url", "image_url": {"url": url}})
        return [{"role": "system", "content": system}, {"role": "user", "content": content}]

    def _call_once(self, request: VLMRequest, use_schema: bool) -> tuple[str, dict | None, int, int, float | None]:
        """One HTTP call; returns (content, parsed, input tokens, output tokens, reported cost) or raises
        `_Retryable`, `_Failed`, `_SchemaRejected` or `VLMFatalError`."""
        import openai

        c = self.config
        kwargs = {}
        if request.json_schema is not None and use_schema:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": request.json_schema},
            }
        env = c.api_key_env or "(no key)"
        try:
            resp = self._openai().chat.completions.create(
                model=c.model,
                messages=self._messages(request),
                temperature=c.temperature,
                max_tokens=c.max_tokens,
                **kwargs,
            )
        except openai.APITimeoutError as e:
            connect = type(e.__cause__).__name__ == "ConnectTimeout"  # no server answering at all
            what = "connecting" if connect else "waiting for the reply"
            raise _Retryable(f"timeout after {c.timeout_s:g} s {what}", unreachable=connect) from None
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise _Retryable(f"connection error: {self._scrub(str(cause))}", unreachable=True) from None
        except openai.APIStatusError as e:
            status = e.status_code
            detail = self._scrub(str(e.message))[:300]
            code = e.code if isinstance(getattr(e, "code", None), str) else None
            if status in (401, 403):
                raise VLMAuthError(f"the endpoint refused the API key from ${env} ({status}): {detail}") from None
            if status == 402 or code == "insufficient_quota":
                raise VLMFatalError(f"the account behind ${env} has no credit left ({status}): {detail}") from None
            if status == 429 or status >= 500 or status == 408:
                raise _Retryable(f"HTTP {status}: {detail}", retry_after=_retry_after(e.response)) from None
            if status == 400 and "response_format" in kwargs:
                raise _SchemaRejected(detail) from None
            raise _Failed(f"HTTP {status}: {detail}") from None
        except (ValueError, openai.APIResponseValidationError) as e:  # body is not JSON, or not a completion
            raise _Failed(f"malformed reply: {self._scrub(str(e))[:300]}") from None
        except openai.OpenAIError as e:  # anything else the client raises: this request fails, the run goes on
            raise _Failed(f"{type(e).__name__}: {self._scrub(str(e))[:300]}") from None

        extra = resp.model_extra or {}
        if extra.get("error"):  # some routers answer 200 with an error object
            raise _Retryable(f"endpoint error: {self._scrub(json.dumps(extra['error']))[:300]}")
        if not resp.choices:
            raise _Failed("malformed reply: no choices")
        message = resp.choices[0].message
        text = getattr(message, "content", None) if message is not None else None
        if not isinstance(text, str) or not text.strip():
            refusal = getattr(message, "refusal", None)
            raise _Failed(f"model refused: {refusal}" if refusal else "malformed reply: empty content")
        usage = resp.usage
        n_in = int(getattr(usage, "prompt_tokens", 0) or 0) if usage else 0
        n_out = int(getattr(usage, "completion_tokens", 0) or 0) if usage else 0
        if usage is None:  # endpoint reports no usage: fall back to estimates
            n_in, n_out = self.estimate_tokens(request), math.ceil(len(text) / 4)
        reported = (usage.model_extra or {}).get("cost") if usage is not None else None
        parsed = None
        if request.json_schema is not None:
            try:
                parsed = parse_json_reply(text)
                _check_schema(parsed, request.json_schema)
            except ValueError as e:
                truncated = resp.choices[0].finish_reason == "length"
                why = f"cut at max_tokens={c.max_tokens}" if truncated else str(e)
                raise _Failed(f"malformed reply: {why}") from None
        return text, parsed, n_in, n_out, reported if isinstance(reported, (int, float)) else None

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        c = self.config
        delay = min(c.retry_max_s, c.retry_base_s * 2**attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, _RETRY_AFTER_CAP_S))
        return delay

    def _fetch(self, request: VLMRequest, stop: threading.Event, state: dict) -> VLMResult:
        """Send one request with retries; a success is cached. A refused key or account sets `state["fatal"]`;
        that, or an endpoint still unreachable after every retry, sets `stop` so the rest are skipped."""
        c = self.config
        attempts, last = 0, "not attempted"
        use_schema = self._schema_supported
        for retry in range(c.max_retries + 1):
            if stop.is_set():
                return _fail(request, f"skipped: {state.get('stop_reason', 'run stopped')}", attempts)
            attempts += 1
            try:
                try:
                    text, parsed, n_in, n_out, reported = self._call_once(request, use_schema)
                except _SchemaRejected as e:  # endpoint does not take response_format: ask in the prompt instead
                    log.info("endpoint rejected response_format (%s); asking for JSON in the prompt", e)
                    use_schema = self._schema_supported = False
                    attempts += 1
                    text, parsed, n_in, n_out, reported = self._call_once(request, use_schema)
            except VLMFatalError as e:
                state.setdefault("fatal", e)
                state.setdefault("stop_reason", str(e))
                stop.set()
                return _fail(request, str(e), attempts)
            except _Failed as e:
                return _fail(request, str(e), attempts)
            except _Retryable as e:
                last = e.reason
                if retry == c.max_retries:
                    if e.unreachable:
                        state.setdefault("stop_reason", f"endpoint unreachable ({e.reason})")
                        stop.set()
                    break
                delay = self._backoff(retry, e.retry_after)
                log.warning("%s: %s; retry %d/%d in %.2f s", request.key, e.reason, retry + 1, c.max_retries, delay)
                if stop.wait(delay):
                    break
                continue
            cost = self.cost(n_in, n_out)
            if cost is None:
                cost = reported
            entry = {
                "request_hash": self.request_hash(request),
                "model": c.model,
                "base_url": _public_url(c.base_url),
                "content": text,
                "input_tokens": n_in,
                "output_tokens": n_out,
                "cost_usd": cost,
                "created": round(time.time(), 3),
            }
            atomic_write_json(self.cache_path(request), entry, what="autointerp cache entry")  # makes the folder
            return VLMResult(request.key, True, text, parsed, None, False, n_in, n_out, cost, attempts)
        return _fail(request, f"failed after {attempts} tries: {last}", attempts)

    def _from_cache(self, request: VLMRequest, entry: dict) -> VLMResult | None:
        parsed = None
        if request.json_schema is not None:
            try:
                parsed = parse_json_reply(entry["content"])
            except ValueError:
                return None
        return VLMResult(
            request.key, True, entry["content"], parsed, None, True,
            int(entry.get("input_tokens", 0)), int(entry.get("output_tokens", 0)), 0.0, 0,
        )  # fmt: skip

    def run(self, requests: list[VLMRequest]) -> list[VLMResult]:
        """Results in request order: cache hits first, then the rest at most `max_concurrency` at a time.

        The first uncached request goes alone, so a refused key or a dead endpoint is found with one
        request's tries. Raises `VLMAuthError` / `VLMFatalError` (with `.results`) when the endpoint refuses
        the key or the account; every finished reply is cached and in the ledger by then.
        """
        results: list[VLMResult | None] = [None] * len(requests)
        pending: dict[str, list[int]] = {}  # request hash -> indices (identical requests are sent once)
        for i, r in enumerate(requests):
            entry = self._read_cache(r)
            hit = self._from_cache(r, entry) if entry is not None else None
            if hit is not None:
                results[i] = hit
                self._record(hit)
            else:
                pending.setdefault(self.request_hash(r), []).append(i)
        if pending and self.__key is None:
            raise ValueError(
                f"no API key: set the environment variable {self.config.api_key_env} "
                f"({len(pending)} requests to {_public_url(self.config.base_url)} are not cached)"
            )

        stop, state = threading.Event(), {}

        def work(indices: list[int]) -> None:
            first = requests[indices[0]]
            res = self._fetch(first, stop, state)
            for n, i in enumerate(indices):
                if n == 0:
                    out = res
                elif res.ok:  # a duplicate of an answered request: served from that answer
                    out = VLMResult(requests[i].key, True, res.content, res.parsed, None, True, res.input_tokens, res.output_tokens, 0.0, 0)
                else:
                    out = VLMResult(requests[i].key, False, None, None, res.error, False, 0, 0, None, 0)
                results[i] = out
                self._record(out)

        groups = list(pending.values())
        if groups:
            work(groups[0])
            rest = groups[1:]
            if rest:
                with ThreadPoolExecutor(max_workers=max(1, self.config.max_concurrency)) as pool:
                    for f in [pool.submit(work, g) for g in rest]:
                        f.result()
        final = [r for r in results if r is not None]
        assert len(final) == len(requests)
        if "fatal" in state:
            err = state["fatal"]
            raise type(err)(str(err), final)
        return final


def _fail(request: VLMRequest, error: str, attempts: int) -> VLMResult:
    return VLMResult(request.key, False, None, None, error, False, 0, 0, None, attempts)


def _retry_after(response) -> float | None:
    """Seconds from a Retry-After (or retry-after-ms) header, when numeric."""
    headers = getattr(response, "headers", None) or {}
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000
        if headers.get("retry-after") is not None:
            return float(headers["retry-after"])
    except (TypeError, ValueError):
        return None
    return None


# ---------------------------------------------------------------------------------------------- ledger


def read_ledger(path: str | Path) -> list[dict]:
    """Rows of a JSONL ledger; a torn last line (killed writer) is skipped."""
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def ledger_totals(rows: list[dict]) -> dict:
    """Sum of ledger rows: requests, calls billed, cache hits, failures, tokens, cost (None if unknown)."""
    billed = [r for r in rows if not r.get("cached")]
    costs = [r.get("cost_usd") for r in billed if r.get("ok")]
    return {
        "requests": len(rows),
        "cached": len(rows) - len(billed),
        "failed": sum(1 for r in rows if not r.get("ok")),
        "attempts": sum(int(r.get("attempts") or 0) for r in rows),
        "input_tokens": sum(int(r.get("input_tokens") or 0) for r in billed),
        "output_tokens": sum(int(r.get("output_tokens") or 0) for r in billed),
        "cost_usd": None if any(c is None for c in costs) else round(sum(costs), 6),
    }


def format_dry_run(summary: dict, limit: int = 20) -> str:
    """Human-readable dry-run report: one line per call to be made (first `limit`), then the totals."""
    lines = [f"dry run: {summary['model']} at {summary['base_url']}"]
    todo = [r for r in summary["per_request"] if not r["cached"]]
    for r in todo[:limit]:
        lines.append(f"  call {r['key']}: {r['images']} images, ~{r['input_tokens_est']} input tokens")
    if len(todo) > limit:
        lines.append(f"  ... and {len(todo) - limit} more calls")
    cost = summary["cost_usd_max"]
    lines.append(
        f"{summary['calls']} calls ({summary['cached']} of {summary['requests']} requests cached), "
        f"~{summary['input_tokens_est']} input tokens, at most {summary['output_tokens_max']} output tokens, "
        + (f"at most ${cost:.4f}" if cost is not None else "cost unknown (no prices set)")
    )
    return "\n".join(lines)


__all__ = [
    "VLMAuthError", "VLMClient", "VLMConfig", "VLMFatalError", "VLMRequest", "VLMResult",
    "format_dry_run", "image_tokens", "ledger_totals", "parse_json_reply", "read_ledger", "to_png",
]  # fmt: skip
