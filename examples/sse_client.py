"""Drive deskvm over the legacy HTTP+SSE transport with the official MCP Python SDK.

    pip install mcp
    deskvm serve --http 127.0.0.1:8765 &
    python examples/sse_client.py http://127.0.0.1:8765
"""

import asyncio
import sys

from mcp import ClientSession
from mcp.client.sse import sse_client


async def main(base: str) -> None:
    async with sse_client(f"{base}/sse") as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            started = await session.call_tool("session_start", {})
            sid = started.structured_content["session_id"]
            shot = await session.call_tool("screenshot", {"session_id": sid})
            print("screenshot:", [c.type for c in shot.content])
            await session.call_tool("session_stop", {"session_id": sid})


asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8765"))
