"""Python SDK listen client for the interop suite (2026-07-28).

usage: python py/listen.py URL kept|lost

Opens `subscriptions/listen` (tools list changes) and prints `acked`; the
suite then kills the server behind URL and starts it again on the same port.

- `kept` (through Shadowcat): the subscription must survive. The first
  event must arrive without `SubscriptionLost` (Shadowcat's refresh signal
  after it listened again); then the client calls `touch`, and the server's
  own notification must arrive on the same subscription. Prints
  `events N` and exits 0.
- `lost` (direct): the SDK must raise `SubscriptionLost` when the server
  dies, which is what a client sees without Shadowcat. Prints `lost` and
  exits 0.

Anything else exits 1 with the reason.
"""

from __future__ import annotations

import asyncio
import sys

from mcp import Client
from mcp.client.subscriptions import SubscriptionLost, ToolsListChanged

WAIT = 45.0


async def run(url: str, expect: str) -> str:
    async with Client(url, read_timeout_seconds=20) as client:
        async with client.listen(tools_list_changed=True) as sub:
            print("acked", flush=True)
            events = aiter(sub)
            try:
                first = await asyncio.wait_for(anext(events), WAIT)
            except SubscriptionLost as lost:
                if expect == "lost":
                    return "lost"
                raise AssertionError(f"the subscription was lost through Shadowcat: {lost}") from lost
            if expect == "lost":
                raise AssertionError(f"expected SubscriptionLost directly, got {first!r}")
            if not isinstance(first, ToolsListChanged):
                raise AssertionError(f"expected ToolsListChanged after the server restart, got {first!r}")
            print("event 1 (after the restart)", flush=True)
            touched = await client.call_tool("touch", {})
            if touched.is_error:
                raise AssertionError(f"touch failed: {touched}")
            second = await asyncio.wait_for(anext(events), WAIT)
            if not isinstance(second, ToolsListChanged):
                raise AssertionError(f"expected ToolsListChanged from touch, got {second!r}")
            return "events 2"


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[2] not in ("kept", "lost"):
        print("usage: python py/listen.py URL kept|lost", file=sys.stderr)
        sys.exit(2)
    try:
        print(asyncio.run(run(sys.argv[1], sys.argv[2])), flush=True)
    except Exception as e:  # noqa: BLE001 - the suite reads the reason
        print(f"FAIL: {type(e).__name__}: {e}", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
