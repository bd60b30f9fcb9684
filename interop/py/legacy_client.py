"""Python SDK client against a legacy HTTP+SSE (2024-11-05) server behind
Shadowcat, for the interop suite.

usage: python py/legacy_client.py URL

URL is Shadowcat's Streamable HTTP endpoint in front of
ts/legacy-server.mjs (which serves only GET /sse + POST /messages). The
SDK client connects (its default `auto` mode, then a forced `legacy`
handshake), lists tools, calls echo and count with progress notifications.
Exits 0 when every assertion held, else prints why and exits 1.
"""

from __future__ import annotations

import asyncio
import sys

from mcp import Client


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def first_text(result) -> str | None:
    for item in result.content:
        if getattr(item, "type", None) == "text":
            return item.text
    return None


async def run(url: str, mode: str) -> str:
    async with Client(url, mode=mode, read_timeout_seconds=20) as client:
        tools = await client.list_tools()
        names = sorted(t.name for t in tools.tools)
        check(names == ["ask", "count", "drop", "echo"], f"{mode}: tools/list, got {names}")

        echoed = await client.call_tool("echo", {"text": "from python ✓"})
        check(first_text(echoed) == "from python ✓", f"{mode}: echo, got {echoed}")

        seen: list[float] = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append(progress)

        steps = 6
        counted = await client.call_tool("count", {"steps": steps, "delayMs": 5}, progress_callback=on_progress)
        check(first_text(counted) == f"counted to {steps}", f"{mode}: count, got {counted}")
        check(seen == [float(i) for i in range(1, steps + 1)], f"{mode}: progress 1..{steps} in order, got {seen}")
        return f"{mode}: protocol {client.protocol_version}, {len(names)} tools, {len(seen)} progress"


async def main() -> int:
    if len(sys.argv) != 2:
        print("usage: python py/legacy_client.py URL", file=sys.stderr)
        return 2
    url = sys.argv[1]
    try:
        lines = [await run(url, "auto"), await run(url, "legacy")]
    except BaseException as e:  # noqa: BLE001 - report anything, then fail
        print(f"python client: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print("; ".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
