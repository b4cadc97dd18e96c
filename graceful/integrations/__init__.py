"""Drive real servers from the runtime's phases: asyncio streams, uvicorn (ASGI), aiohttp.

Import the one you use (``from graceful.integrations import asgi``); each imports its server
library, which is an optional dependency.
"""
