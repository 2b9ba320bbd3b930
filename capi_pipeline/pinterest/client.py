"""An httpx client for Pinterest's `POST /v5/ad_accounts/{id}/events`.

The same client talks to api.pinterest.com and to the emulator; only the base URL differs.
It sends one batch at a time, retries what can pass (429, 5xx, timeouts, dropped connections)
with backoff that honours `Retry-After`, and returns what happened to each attempt, so the
caller can write the ledger. It never logs or returns the token.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

import httpx
import orjson
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_result,
    stop_after_attempt,
    wait_random_exponential,
)

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
# Answers about the request's credentials or address, not its events: no event is at fault.
REFUSING_STATUS = frozenset({401, 403, 404, 405})
MAX_BACKOFF_SECONDS = 60.0


class PinterestAuthError(Exception):
    """Pinterest refused the token (401), the ad account (403) or the address (404, 405).

    Retrying cannot help and no event is to blame, so the run stops and marks nothing.
    """

    def __init__(self, message: str, status_code: int, attempt: Attempt | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.attempt = attempt


@dataclass(frozen=True)
class Attempt:
    """One HTTP request, as the ledger records it."""

    request_id: str
    attempt: int
    events: int
    status_code: int | None
    latency_ms: float
    error: str | None


@dataclass
class BatchResponse:
    """The last answer to a batch, with every attempt it took."""

    status_code: int | None
    body: dict | None
    error: str | None
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def request_id(self) -> str | None:
        return self.attempts[-1].request_id if self.attempts else None


class ConversionsClient:
    """Sends batches of already-serialized events to one ad account."""

    def __init__(
        self,
        base_url: str,
        ad_account_id: str,
        access_token: str,
        *,
        test_mode: bool = False,
        timeout_seconds: float = 30.0,
        max_attempts: int = 5,
        calls_per_minute: int = 5000,
        max_concurrency: int = 4,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/v5/ad_accounts/{ad_account_id}/events"
        self.params = {"test": "true"} if test_mode else {}
        self.max_attempts = max_attempts
        self._headers = {
            "Authorization": f"Bearer {access_token}",
            "Content-Type": "application/json",
        }
        self._timeout = httpx.Timeout(timeout_seconds)
        self._limits = httpx.Limits(max_connections=max_concurrency,
                                    max_keepalive_connections=max_concurrency)
        # Pinterest counts calls per minute; spreading them evenly avoids bursts that a
        # minute-long bucket would allow and Pinterest's shorter windows might refuse.
        self._limiter = AsyncLimiter(max(calls_per_minute / 60.0, 1e-3), 1)
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> ConversionsClient:
        self._client = httpx.AsyncClient(timeout=self._timeout, limits=self._limits,
                                         headers=self._headers)
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def send(self, events: list[bytes]) -> BatchResponse:
        """POST one batch, retrying transient failures; raises PinterestAuthError on 401/403."""
        assert self._client is not None, "use the client as an async context manager"
        body = b'{"data":[' + b",".join(events) + b"]}"
        response = BatchResponse(status_code=None, body=None, error=None)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            wait=_wait,
            retry=retry_if_result(lambda outcome: outcome.retryable),
            retry_error_callback=lambda state: state.outcome.result(),
        )
        async for attempt in retrying:
            with attempt:
                outcome = await self._post(body, len(events), attempt.retry_state.attempt_number)
            if not attempt.retry_state.outcome.failed:
                attempt.retry_state.set_result(outcome)
            response.status_code, response.body = outcome.status_code, outcome.body
            response.error = outcome.attempt.error
            response.attempts.append(outcome.attempt)
            if outcome.status_code in REFUSING_STATUS:
                raise PinterestAuthError(outcome.attempt.error, outcome.status_code,
                                         outcome.attempt)
        return response

    async def _post(self, body: bytes, events: int, number: int) -> _Outcome:
        request_id = str(uuid.uuid4())
        async with self._limiter:
            started = time.perf_counter()
            try:
                http = await self._client.post(self.url, params=self.params, content=body)
            except httpx.TransportError as error:
                latency = (time.perf_counter() - started) * 1000
                attempt = Attempt(request_id, number, events, None, latency,
                                  f"{type(error).__name__} talking to Pinterest")
                return _Outcome(attempt, None, None, None, retryable=True)
            latency = (time.perf_counter() - started) * 1000
        body_json = _json(http)
        error = None if http.status_code == 200 else _message(body_json, http)
        attempt = Attempt(request_id, number, events, http.status_code, latency, error)
        return _Outcome(attempt, http.status_code, body_json, http.headers.get("Retry-After"),
                        retryable=http.status_code in RETRYABLE_STATUS)


@dataclass(frozen=True)
class _Outcome:
    attempt: Attempt
    status_code: int | None
    body: dict | None
    retry_after: str | None
    retryable: bool


def _wait(state: RetryCallState) -> float:
    """Seconds to wait: Pinterest's Retry-After when it gave one, else exponential with jitter."""
    outcome = state.outcome.result() if state.outcome and not state.outcome.failed else None
    if outcome is not None and outcome.retry_after:
        try:
            return min(max(float(outcome.retry_after), 0.0), MAX_BACKOFF_SECONDS)
        except ValueError:
            pass
    return _jitter(state)


_jitter = wait_random_exponential(multiplier=0.5, max=MAX_BACKOFF_SECONDS)


def _json(http: httpx.Response) -> dict | None:
    try:
        value = orjson.loads(http.content)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _message(body: dict | None, http: httpx.Response) -> str:
    if body and isinstance(body.get("message"), str):
        return f"HTTP {http.status_code}: {body['message'][:500]}"
    return f"HTTP {http.status_code}"
