"""Running a coroutine from a synchronous test."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Like asyncio.run, on a private loop that is never made the thread's current one:
    asyncio.run replaces the current loop (set_event_loop), and the loop pytest-asyncio
    left there is then collected unclosed, a ResourceWarning that older pytest versions
    blame on whichever test runs next."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
