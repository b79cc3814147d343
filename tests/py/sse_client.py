"""An independent MCP client: the official MCP Python SDK over the legacy HTTP+SSE transport.

Usage: sse_client.py BASE_URL SESSION_ID ROUNDS [TOKEN]
Lists the tools, then takes ROUNDS screenshots and clicks on the given desktop session, and
prints one JSON line: {"tools": [...], "screenshots": n, "clicks": n, "png_bytes": [...]}.
"""

import asyncio
import base64
import json
import sys

from mcp import ClientSession
from mcp.client.sse import sse_client


async def main() -> None:
    base, session_id, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    headers = {"Authorization": f"Bearer {sys.argv[4]}"} if len(sys.argv) > 4 else None
    out = {"tools": [], "screenshots": 0, "clicks": 0, "png_bytes": []}
    async with sse_client(f"{base}/sse", headers=headers) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            for i in range(rounds):
                shot = await session.call_tool("screenshot", {"session_id": session_id})
                if shot.is_error:
                    raise SystemExit(f"screenshot failed: {shot.content}")
                images = [c for c in shot.content if c.type == "image"]
                png = base64.b64decode(images[0].data)
                if not png.startswith(b"\x89PNG"):
                    raise SystemExit("screenshot is not a PNG")
                out["png_bytes"].append(len(png))
                out["screenshots"] += 1
                click = await session.call_tool(
                    "click", {"session_id": session_id, "x": 600 + i * 7, "y": 500}
                )
                if click.is_error:
                    raise SystemExit(f"click failed: {click.content}")
                out["clicks"] += 1
    print(json.dumps(out))


asyncio.run(main())
