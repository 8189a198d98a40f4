"""LLM backend for an OpenAI-compatible chat server on this machine (`vllm serve`, llama.cpp server, ...).

Standard library only (urllib), no proxies, loopback hosts only unless `allow_remote`: the toolkit
must never reach the network by accident.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence
from urllib.parse import urlsplit

from offline_seg.errors import InvalidInputError, OfflineSegError
from offline_seg.llm.base import ChatMessage, Choice, Constraint, LabelList, LLMStats, resolve_constraint
from offline_seg.llm.constraints import constraint_gbnf, constraint_regex, validate

logger = logging.getLogger(__name__)

# How a server is told the constraint: vLLM's `structured_outputs`, llama.cpp's GBNF `grammar`, or
# nothing (answers are only validated here).
DIALECTS = ("auto", "vllm", "gbnf", "none")
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class LLMServerError(OfflineSegError):
    """The LLM server cannot be reached or keeps failing."""


def _start_hint(url: str) -> str:
    port = urlsplit(url).port or 8000
    return (
        f"start one with `offline-seg llm serve --model DIR --port {port}` (prints the vLLM command with "
        "--dry-run), or point --llm at a running server"
    )


@dataclass(frozen=True)
class _Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    truncated: bool


class OpenAILLM:
    """Chat completions over HTTP, `concurrency` requests at a time, each with a timeout and retries.

    Constraints are sent in the server's dialect (`constraint="auto"` asks `/models` who serves) and
    every constrained answer is validated here as well: an invalid one is returned as it came, counted
    in `stats.invalid`, and dropped by the refiner's parser.
    """

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        constraint: str = "auto",
        concurrency: int = 8,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 0.5,
        allow_remote: bool = False,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInputError(f"not an http(s) URL: {base_url!r} (e.g. openai:http://127.0.0.1:8000/v1)")
        if not allow_remote and not _is_loopback(parts.hostname):
            raise InvalidInputError(
                f"refusing LLM server {parts.hostname!r}: not this machine. The toolkit stays offline; "
                "add ?allow_remote=1 to the spec to allow a host on your own network."
            )
        if constraint not in DIALECTS:
            raise InvalidInputError(f"constraint dialect must be one of {', '.join(DIALECTS)}, not {constraint!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.dialect = constraint
        self.concurrency = max(1, concurrency)
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.stats = LLMStats()
        # Never through a proxy and never along a redirect: the server is local, and either would be a way
        # out of the machine.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
        self._probed = False

    @property
    def identity(self) -> str:
        """The URL and the model the server serves (asked once), so two models behind one URL differ."""
        self._probe()
        return f"openai:{self.base_url}:{self.model or ''}"

    # --- HTTP ---------------------------------------------------------------------------------
    def _request(self, path: str, body: dict[str, Any] | None = None, *, timeout: float | None = None) -> dict:
        url = f"{self.base_url}{path}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
        request.add_header("Content-Type", "application/json")
        attempt = 0
        while True:
            try:
                with self._opener.open(request, timeout=timeout or self.timeout) as response:
                    raw = response.read()
                try:
                    return json.loads(raw.decode())
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise LLMServerError(f"LLM server {url} answered something that is not JSON: "
                                         f"{raw[:200]!r}") from error
            except urllib.error.HTTPError as error:
                if 300 <= error.code < 400:
                    raise LLMServerError(f"LLM server {url} redirected to {error.headers.get('Location')!r}; "
                                         "redirects are not followed (the toolkit stays on this machine)") from error
                detail = error.read().decode(errors="replace")[:500]
                if error.code not in _RETRY_STATUS or attempt >= self.retries:
                    raise LLMServerError(f"LLM server {url} answered HTTP {error.code}: {detail}") from error
                reason = f"HTTP {error.code}"
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError) as error:
                cause = getattr(error, "reason", error)
                if isinstance(cause, ConnectionRefusedError):  # nobody listening: retrying will not help
                    raise LLMServerError(
                        f"no LLM server at {self.base_url} (connection refused); {_start_hint(self.base_url)}"
                    ) from error
                if attempt >= self.retries:
                    raise LLMServerError(
                        f"LLM server {url} failed after {attempt + 1} tries ({cause}); timeout {self.timeout:g} s"
                    ) from error
                reason = str(cause)
            delay = self.backoff * 2**attempt
            attempt += 1
            logger.warning("LLM request to %s failed (%s); retry %d in %.1f s", url, reason, attempt, delay)
            time.sleep(delay)

    def _probe(self) -> None:
        """Check the server once (one quick, clear error if it is down), pick the model and dialect."""
        if self._probed:
            return
        listing = self._request("/models", timeout=min(self.timeout, 10.0))
        models = listing.get("data") or []
        if self.model is None:
            if not models:
                raise LLMServerError(f"LLM server {self.base_url} lists no models")
            self.model = str(models[0]["id"])
        if self.dialect == "auto":
            owner = str(models[0].get("owned_by", "")).lower() if models else ""
            self.dialect = "vllm" if owner == "vllm" else ("gbnf" if "llama" in owner else "none")
        logger.info("LLM server %s: model %s, constraint dialect %s", self.base_url, self.model, self.dialect)
        self._probed = True

    # --- completion ---------------------------------------------------------------------------
    def _body(self, conversation: Sequence[ChatMessage], constraint: Constraint | None, max_tokens: int) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(message) for message in conversation],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        if constraint is not None:
            if self.dialect == "vllm":
                key = "choice" if isinstance(constraint, Choice) else "regex"
                value = list(constraint.options) if isinstance(constraint, Choice) else constraint_regex(constraint)
                body["structured_outputs"] = {key: value}
            elif self.dialect == "gbnf":
                body["grammar"] = constraint_gbnf(constraint)
        return body

    def _one(self, conversation: Sequence[ChatMessage], constraint: Constraint | None, max_tokens: int) -> _Reply:
        data = self._request("/chat/completions", self._body(conversation, constraint, max_tokens))
        try:
            choice = data["choices"][0]
            text = (choice["message"].get("content") or "").strip()
        except (KeyError, IndexError, TypeError, AttributeError) as error:
            raise LLMServerError(f"LLM server {self.base_url} answered without a chat completion: "
                                 f"{json.dumps(data)[:200]}") from error
        usage = data.get("usage") or {}
        truncated = choice.get("finish_reason") == "length"
        return _Reply(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)), truncated)

    def complete(
        self,
        conversations: Sequence[Sequence[ChatMessage]],
        *,
        choices: Sequence[str] | None = None,
        constraint: Constraint | None = None,
        max_new_tokens: int = 200,
    ) -> list[str]:
        constraint = resolve_constraint(choices, constraint)
        if not conversations:
            return []
        self._probe()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            replies = list(pool.map(lambda c: self._one(c, constraint, max_new_tokens), conversations))
        self.stats.add(
            calls=1,
            requests=len(replies),
            prompt_tokens=sum(r.prompt_tokens for r in replies),
            completion_tokens=sum(r.completion_tokens for r in replies),
        )
        answers = [reply.text for reply in replies]
        if constraint is None:
            return answers
        valid = [validate(reply.text, constraint, truncated=reply.truncated) for reply in replies]
        invalid = sum(v is None for v in valid)
        if invalid:
            logger.warning("%d of %d constrained answers from %s were not valid", invalid, len(valid), self.base_url)
            self.stats.add(invalid=invalid)
        if isinstance(constraint, LabelList):  # a cut-off tail loses its partial label, like elsewhere
            return [v if v is not None else _list_prefix(a, constraint) for v, a in zip(valid, answers)]
        return [v if v is not None else a for v, a in zip(valid, answers)]


def _list_prefix(answer: str, constraint: LabelList) -> str:
    members = constraint.split(answer)
    return constraint.separator.join(members) if members else answer


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect: the 3xx answer surfaces as an HTTPError instead of a request elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None


def _is_loopback(host: str) -> bool:
    """An IP literal on loopback, or `localhost` when this machine resolves it to loopback only (a hosts
    file can point it anywhere)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    if host.lower() != "localhost":
        return False
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)
