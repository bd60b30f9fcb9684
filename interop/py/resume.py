"""Python SDK resumption checks for the interop suite.

usage: python py/resume.py URL [steps=60] [delay_ms=25] [cut_after=5]

Against ts/server.mjs through Shadowcat, two tools/call with progress in one
session, each with its SSE stream cut after `cut_after` events by an httpx
transport (the connection is closed, as a dropped network would):

1. automatic: the SDK's Streamable HTTP transport reconnects with GET +
   Last-Event-ID after its default delay (1 s: Shadowcat sends no
   `retry:`), so the events of that second are replayed from Shadowcat's
   buffer and the rest come live; ids reach `on_resumption_token_update`.
2. by token: the transport also refuses the SDK's reconnects until it
   gives up and fails the call; the application then resumes it with
   `ClientMessageMetadata(resumption_token=<last id>)` (a GET with that
   Last-Event-ID), which returns the result. Progress notifications are
   counted through `message_handler`, since the resumed request has a new
   id while the replayed notifications carry the first one's token.

Each asserts every progress notification and the result arrive exactly
once, in order, and that every resume carried the id of the last event
before the cut. Exits 0 when every assertion held, else prints why and
exits 1.
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
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ClientMessageMetadata
from mcp.types import CallToolRequest, CallToolRequestParams, CallToolResult, ProgressNotification

ID_LINE = re.compile(rb"^id: ?(.*)$", re.MULTILINE)
# A message: a data line with content (a priming event has empty data).
DATA_LINE = re.compile(rb"^data: ?\S", re.MULTILINE)


def describe(e: BaseException) -> str:
    """An exception, with the leaves of an exception group spelled out."""
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(describe(inner) for inner in e.exceptions)
    return f"{type(e).__name__}: {e}"


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


class Cut:
    """One planned cut of a tools/call stream, and what happened."""

    def __init__(self, cut_after: int, refuse: int) -> None:
        self.cut_after = cut_after
        # Resume GETs to fail (connection refused) before letting one through.
        self.refuse = refuse
        self.refused = 0
        self.cut_at = 0
        self.last_id_before_cut: str | None = None
        self.cut_time = 0.0
        self.resumed_from: list[str] = []
        self.resumed_time: float | None = None

    def resume_ms(self) -> float:
        return (self.resumed_time - self.cut_time) * 1000 if self.resumed_time else float("nan")


class CutStream(httpx2.AsyncByteStream):
    """Passes whole SSE events on; after `cut_after` of them closes the
    connection and raises, so the cut lands between events."""

    def __init__(self, inner: Any, cut: Cut) -> None:
        self.inner = inner
        self.cut = cut

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
                    self.cut.last_id_before_cut = m.group(1).decode()
                if seen >= self.cut.cut_after:
                    self.cut.cut_at = seen
                    self.cut.cut_time = time.monotonic()
                    await self.inner.aclose()
                    raise httpx2.ReadError("connection cut by the interop test")

    async def aclose(self) -> None:
        await self.inner.aclose()


class CuttingTransport(httpx2.AsyncBaseTransport):
    """Applies the planned cuts to the tools/call streams, in order; resume
    GETs count toward the latest cut."""

    def __init__(self, plan: list[Cut]) -> None:
        self.inner = httpx2.AsyncHTTPTransport()
        self.plan = list(plan)
        self.current: Cut | None = None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        last_event_id = request.headers.get("last-event-id")
        resuming = request.method == "GET" and last_event_id is not None and self.current is not None
        if resuming:
            self.current.resumed_from.append(last_event_id)
            if self.current.refused < self.current.refuse:
                self.current.refused += 1
                raise httpx2.ConnectError("resume refused by the interop test")
        response = await self.inner.handle_async_request(request)
        if resuming and response.status_code == 200:
            self.current.resumed_time = self.current.resumed_time or time.monotonic()
        is_call = request.method == "POST" and b'"tools/call"' in request.content
        if not is_call or not self.plan:
            return response
        self.current = self.plan.pop(0)
        check(
            response.headers.get("content-type", "").startswith("text/event-stream"),
            f"tools/call answered with an SSE stream, got {response.status_code} {response.headers.get('content-type')}",
        )
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=CutStream(response.stream, self.current),
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


def check_call(label: str, cut: Cut, result: CallToolResult, progress: list[float], tokens: list[str], steps: int) -> None:
    check(cut.cut_at == cut.cut_after, f"{label}: the stream was cut after {cut.cut_after} events (cut at {cut.cut_at})")
    check(
        len(cut.resumed_from) > cut.refuse and all(i == cut.last_id_before_cut for i in cut.resumed_from),
        f"{label}: every resume carried the Last-Event-ID of the last event before the cut "
        f"({cut.last_id_before_cut}), got {cut.resumed_from}",
    )
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    check(texts == [f"counted to {steps}"], f"{label}: count result after the cut, got {result}")
    expected = [float(i) for i in range(1, steps + 1)]
    check(progress == expected, f"{label}: progress 1..{steps} exactly once, in order, got {progress}")
    check(len(set(tokens)) == len(tokens), f"{label}: event ids never repeat, got {tokens}")
    check(cut.last_id_before_cut in tokens, f"{label}: the last id before the cut was reported as a resumption token")


async def run(url: str, steps: int, delay_ms: int, cut_after: int) -> str:
    auto = Cut(cut_after, refuse=0)
    # The SDK makes 2 reconnection attempts before it gives up.
    by_token = Cut(cut_after, refuse=2)
    http = httpx2.AsyncClient(transport=CuttingTransport([auto, by_token]), timeout=httpx2.Timeout(30, read=300))
    # Progress values per progress token, as `message_handler` sees them.
    seen: dict[Any, list[float]] = {}

    async def on_message(message: Any) -> None:
        if isinstance(message, ProgressNotification):
            seen.setdefault(message.params.progress_token, []).append(message.params.progress)

    request = CallToolRequest(params=CallToolRequestParams(name="count", arguments={"steps": steps, "delayMs": delay_ms}))
    transport = streamable_http_client(url, http_client=http)
    async with http, Client(transport, mode="legacy", read_timeout_seconds=20, message_handler=on_message) as client:
        # 1. The SDK's own reconnection.
        progress: list[float] = []
        tokens: list[str] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress.append(value)

        async def on_token(token: str) -> None:
            tokens.append(token)

        result = await client.session.send_request(
            request,
            CallToolResult,
            metadata=ClientMessageMetadata(on_resumption_token_update=on_token),
            progress_callback=on_progress,
        )
        check_call("automatic", auto, result, progress, tokens, steps)

        # 2. The SDK gives up; the application resumes with the last token.
        # A late handler task of call 1 only adds to call 1's token.
        earlier = set(seen)
        tokens2: list[str] = []

        async def on_token2(token: str) -> None:
            tokens2.append(token)

        before_cut: list[float] = []

        async def on_progress2(value: float, total: float | None, message: str | None) -> None:
            before_cut.append(value)

        try:
            # A progress callback makes the SDK send a progress token.
            await client.session.send_request(
                request,
                CallToolResult,
                metadata=ClientMessageMetadata(on_resumption_token_update=on_token2),
                progress_callback=on_progress2,
            )
            raise AssertionError("by token: the SDK should have given up reconnecting")
        except MCPError as e:
            gave_up = str(e)
        check(by_token.refused == by_token.refuse, f"by token: {by_token.refuse} resumes refused, got {by_token.refused}")
        check(bool(tokens2), "by token: the SDK reported resumption tokens before the cut")
        resumed = await client.session.send_request(
            request,
            CallToolResult,
            metadata=ClientMessageMetadata(resumption_token=tokens2[-1], on_resumption_token_update=on_token2),
        )
        fresh = [values for token, values in seen.items() if token not in earlier]
        check(len(fresh) == 1, f"by token: progress for one new token, got {len(fresh)}")
        progress2 = fresh[0]
        check(
            before_cut == progress2[: len(before_cut)] and len(before_cut) == cut_after,
            f"by token: the first call saw progress 1..{cut_after}, got {before_cut}",
        )
        check_call("by token", by_token, resumed, progress2, tokens2, steps)

    return (
        f"python resume: automatic after a cut at {auto.cut_at}: resumed {auto.resume_ms():.0f} ms later, "
        f"{len(progress)} progress, {len(tokens)} tokens; by token after the SDK gave up ({gave_up}): "
        f"resumed {by_token.resume_ms():.0f} ms after the cut, {len(progress2)} progress, {len(tokens2)} tokens"
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
