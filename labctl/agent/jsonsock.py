"""The control socket both lab processes serve: one JSON request line in, one JSON reply
line out, on a unix socket only root can open (mode 0600).

A handler's refusal is a LabctlError (or any exception with a `notfound` attribute,
e.g. the agent's RequestError): it becomes {"ok": false, "error": …}. An unexpected
exception is logged and answered too, so a client never waits on a closed socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

from labctl.errors import LabctlError

READ_TIMEOUT = 5.0

Handler = Callable[[Any], Awaitable[dict[str, Any]]]


async def serve(path: str, handle: Handler, log: logging.Logger,
                logfile: str = "") -> asyncio.Server:
    """Listen on `path` (replacing a stale socket file) and answer with `handle`."""

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT)
            try:
                reply = await handle(json.loads(line or b"null"))
            except ValueError as e:
                reply = {"ok": False, "error": f"bad request: {e}"}
            except LabctlError as e:
                reply = {"ok": False, "error": str(e)}
            except Exception as e:  # noqa: BLE001 - a refusal or a bug: answer either way
                if hasattr(e, "notfound"):
                    reply = {"ok": False, "error": str(e), "notfound": bool(e.notfound)}
                else:
                    log.exception("request %s failed", line[:200])
                    where = f" (see {logfile})" if logfile else ""
                    reply = {"ok": False, "error": f"internal error: "
                                                  f"{type(e).__name__}: {e}{where}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server = await asyncio.start_unix_server(one, path=path)
    os.chmod(path, 0o600)
    return server
