"""Python SDK resumption check for the interop suite.

usage: python py/resume.py URL [steps=60] [delay_ms=25] [cut_after=5]

Against ts/server.mjs through Shadowcat: a tools/call with progress whose
SSE stream is cut after `cut_after` events by an httpx transport (the
connection is closed, as a dropped network would). The SDK's Streamable
HTTP transport reconnects with GET + Last-Event-ID after its default delay
(1 s: Shadowcat sends no `retry:`), so with the defaults the events of that
second are replayed from Shadowcat's buffer and the rest come live. The SDK
reports every event id through `on_resumption_token_update`. Asserts every
progress notification and the result arrive exactly once, in order, and
that the resume carried the id of the last event before the cut. Exits 0
when every assertion held, else prints why and exits 1.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import ClientMessageMetadata
from mcp.types import CallToolRequest, CallToolRequestParams, CallToolResult

ID_LINE = re.compile(rb"^id: ?(.*)$", re.MULTILINE)
DATA_LINE = re.compile(rb"^data:", re.MULTILINE)


def describe(e: BaseException) -> str:
    """An exception, with the leaves of an exception group spelled out."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in e.exceptions)
    return f"{type(e).__name__}: {e}"


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


class CutState:
    """What the cutting transport saw."""

    def __init__(self, cut_after: int) -> None:
        self.cut_after = cut_after
        self.cut = False
        self.cut_at = 0
        self.last_id_before_cut: str | None = None
        self.cut_time = 0.0
        self.resumed_from: list[str] = []
        self.resumed_time: float | None = None


class CutStream(httpx2.AsyncByteStream):
    """Passes whole SSE events on; after `cut_after` of them closes the
    connection and raises, so the cut lands between events."""

    def __init__(self, inner: Any, state: CutState) -> None:
        self.inner = inner
        self.state = state

    async def __aiter__(self) -> AsyncIterator[bytes]:
        buffered = b""
        seen = 0
        async for chunk in self.inner:
            buffered += chunk.replace(b"\r\n", b"\n")
            while (end := buffered.find(b"\n\n")) != -1:
                event, buffered = buffered[: end + 2], buffered[end + 2 :]
                yield event
                if DATA_LINE.search(event):
                    seen += 1
                if (m := ID_LINE.search(event)) is not None:
                    self.state.last_id_before_cut = m.group(1).decode()
                if seen >= self.state.cut_after:
                    self.state.cut_at = seen
                    self.state.cut_time = time.monotonic()
                    await self.inner.aclose()
                    raise httpx2.ReadError("connection cut by the interop test")

    async def aclose(self) -> None:
        await self.inner.aclose()


class CuttingTransport(httpx2.AsyncBaseTransport):
    """Cuts the first tools/call response stream; records resume GETs."""

    def __init__(self, state: CutState) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.state = state

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        last_event_id = request.headers.get("last-event-id")
        if request.method == "GET" and last_event_id:
            self.state.resumed_from.append(last_event_id)
        response = await self.inner.handle_async_request(request)
        if request.method == "GET" and last_event_id and response.status_code == 200:
            self.state.resumed_time = self.state.resumed_time or time.monotonic()
        is_call = request.method == "POST" and b'"tools/call"' in request.content
        if not is_call or self.state.cut:
            return response
        self.state.cut = True
        check(
            response.headers.get("content-type", "").startswith("text/event-stream"),
            f"tools/call answered with an SSE stream, got {response.status_code} {response.headers.get('content-type')}",
        )
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=CutStream(response.stream, self.state),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


def settings(args: list[str]) -> dict[str, int]:
    out = {"steps": 60, "delay_ms": 25, "cut_after": 5}
    for arg in args:
        name, _, value = arg.partition("=")
        if name not in out or not value.isdigit():
            raise SystemExit(f"bad setting {arg!r} (takes {', '.join(out)})")
        out[name] = int(value)
    return out


async def run(url: str, steps: int, delay_ms: int, cut_after: int) -> str:
    state = CutState(cut_after)
    http = httpx2.AsyncClient(
        transport=CuttingTransport(state),
        timeout=httpx2.Timeout(30, read=300),
    )
    progress: list[float] = []
    tokens: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async def on_token(token: str) -> None:
        tokens.append(token)

    async with http, Client(streamable_http_client(url, http_client=http), mode="legacy", read_timeout_seconds=20) as client:
        request = CallToolRequest(
            params=CallToolRequestParams(name="count", arguments={"steps": steps, "delayMs": delay_ms})
        )
        result = await client.session.send_request(
            request,
            CallToolResult,
            metadata=ClientMessageMetadata(on_resumption_token_update=on_token),
            progress_callback=on_progress,
        )

    check(state.cut and state.cut_at == cut_after, f"the stream was cut after {cut_after} events (cut at {state.cut_at})")
    check(
        len(state.resumed_from) >= 1 and state.resumed_from[0] == state.last_id_before_cut,
        f"resumed with GET + Last-Event-ID of the last event before the cut ({state.last_id_before_cut}), "
        f"got {state.resumed_from}",
    )
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    check(texts == [f"counted to {steps}"], f"count result after the cut, got {result}")
    expected = [float(i) for i in range(1, steps + 1)]
    check(progress == expected, f"progress 1..{steps} exactly once, in order, got {progress}")
    check(len(set(tokens)) == len(tokens), f"event ids never repeat, got {tokens}")
    check(state.last_id_before_cut in tokens, "the last id before the cut was reported as a resumption token")
    resume_ms = (state.resumed_time - state.cut_time) * 1000 if state.resumed_time else float("nan")
    return (
        f"python resume: cut after {state.cut_at} events, resumed {len(state.resumed_from)}x with Last-Event-ID "
        f"{resume_ms:.0f} ms after the cut, {len(progress)} progress, {len(tokens)} resumption tokens"
    )


async def main() -> int:
    if len(sys.argv) < 2:
        print("usage: python py/resume.py URL [steps=N] [delay_ms=N] [cut_after=N]", file=sys.stderr)
        return 2
    url = sys.argv[1]
    s = settings(sys.argv[2:])
    try:
        line = await run(url, s["steps"], s["delay_ms"], s["cut_after"])
    except BaseException as e:  # noqa: BLE001 - report anything, then fail
        print(f"python resume: {describe(e)}", file=sys.stderr)
        return 1
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
