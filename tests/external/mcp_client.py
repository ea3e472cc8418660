"""The official MCP Python SDK as the client of `longrun mcp`: list the
tools, call one the policy allows and one it refuses.

Usage: mcp_client.py stdio LONGRUN_BINARY ARGS...
       mcp_client.py http URL
Prints one JSON line with what the server answered.
"""
import asyncio
import json
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client


async def exercise(session):
    init = await session.initialize()
    listed = await session.list_tools()
    allowed = await session.call_tool("fs_read", {"path": "/workspace/hello.txt"})
    refused = await session.call_tool("fs_write", {"path": "/workspace/new.txt", "content": "x"})
    return {
        "protocol": init.protocol_version,
        "server": init.server_info.name,
        "tools": sorted(t.name for t in listed.tools),
        "allowed": {"is_error": allowed.is_error, "text": allowed.content[0].text},
        "refused": {"is_error": refused.is_error, "text": refused.content[0].text},
    }


async def main():
    if sys.argv[1] == "stdio":
        params = StdioServerParameters(command=sys.argv[2], args=sys.argv[3:])
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                out = await exercise(session)
    else:
        async with streamable_http_client(sys.argv[2]) as streams:
            read, write = streams[0], streams[1]
            async with ClientSession(read, write) as session:
                out = await exercise(session)
    print(json.dumps(out))


asyncio.run(main())
