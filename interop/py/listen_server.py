"""A 2026-07-28 MCP server on the Python SDK, for the listen interop scenario.

usage: python py/listen_server.py PORT

Serves Streamable HTTP on 127.0.0.1:PORT/mcp; the SDK's own handler serves
`subscriptions/listen`. Its tool `touch` announces a tool list change to
every open listen stream (`notifications/tools/list_changed`).
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import Context, MCPServer


def main() -> None:
    if len(sys.argv) != 2 or not sys.argv[1].isdigit():
        print("usage: python py/listen_server.py PORT", file=sys.stderr)
        sys.exit(2)
    port = int(sys.argv[1])
    server = MCPServer("shadowcat-interop-listen")

    @server.tool()
    async def touch(ctx: Context) -> str:
        """Tells every listen stream that the tool list changed."""
        await ctx.notify_tools_changed()
        return "touched"

    server.run(transport="streamable-http", host="127.0.0.1", port=port, stateless_http=True)


if __name__ == "__main__":
    main()
