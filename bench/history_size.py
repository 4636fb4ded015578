"""History bytes per run with and without the history codec (runtime/codec.py), and the
codec's CPU per run. No server: it reads the recorded histories (tests/histories/*.json,
the example catalogue's journeys run by the real worker), seals every payload in them as
the codec now does when the product writes them, and compares.

    .venv/bin/python -m bench.history_size            # a table, ~10 s
    .venv/bin/python -m bench.history_size --json /tmp/history_size.json

Measured per history: its size as the server stores it (the events' protobuf bytes), the
start event's (the plan travels in it), and the CPU the codec spends sealing every payload
once and opening it once (a run's payloads are sealed by whoever writes them and opened by
the worker; replays and the Web UI open them again). A new random key ring is made for the
run and dropped; no key is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.history.v1 import History
from temporalio.client import WorkflowHistory

from runtime.codec import HistoryCodec, KeyRing, new_key_ring_text

HISTORIES = Path(__file__).resolve().parents[1] / "tests" / "histories"


@dataclass(frozen=True)
class Measured:
    name: str
    payloads: int
    history_bytes: int
    sealed_bytes: int
    start_bytes: int
    sealed_start_bytes: int
    seal_us: float
    open_us: float


def _payloads(message: Message) -> Iterator[Payload]:
    """Every Payload in ``message``, depth first, except search attributes: Temporal indexes
    them as they are, so the SDK writes them with the plain converter and no codec."""
    for field, value in message.ListFields():
        kind = field.message_type
        if kind is None or kind.full_name == "temporal.api.common.v1.SearchAttributes":
            continue
        items: list[Any]
        if kind.GetOptions().map_entry:
            if kind.fields_by_name["value"].message_type is None:
                continue
            items = list(value.values())
        elif field.is_repeated:
            items = list(value)
        else:
            items = [value]
        if field.name == "details" and message.DESCRIPTOR.name == "MarkerRecordedEventAttributes":
            # The SDK core writes a marker's own fields (a local activity's type and
            # attempt, a patch's id) plainly; only a local activity's result is the SDK's.
            items = [value["result"]] if "result" in value else []
        for item in items:
            if isinstance(item, Payload):
                yield item
            else:
                yield from _payloads(item)


def measure(path: Path, codec: HistoryCodec, repeat: int) -> Measured:
    text = path.read_text(encoding="utf-8")
    history = WorkflowHistory.from_json(path.stem, text)
    proto = History(events=list(history.events))
    before = proto.ByteSize()
    start_before = proto.events[0].ByteSize()
    payloads = list(_payloads(proto))
    originals = [Payload.FromString(p.SerializeToString()) for p in payloads]
    seal_times: list[float] = []
    open_times: list[float] = []
    sealed: list[Payload] = []
    for _ in range(repeat):
        began = time.process_time()
        sealed = [codec.seal(p) for p in originals]
        seal_times.append(time.process_time() - began)
        began = time.process_time()
        opened = [codec.open(p) for p in sealed]
        open_times.append(time.process_time() - began)
        assert opened == originals
    for payload, replacement in zip(payloads, sealed, strict=True):
        payload.CopyFrom(replacement)
    return Measured(
        name=path.stem,
        payloads=len(payloads),
        history_bytes=before,
        sealed_bytes=proto.ByteSize(),
        start_bytes=start_before,
        sealed_start_bytes=proto.events[0].ByteSize(),
        seal_us=statistics.median(seal_times) * 1e6,
        open_us=statistics.median(open_times) * 1e6,
    )


def _table(rows: Sequence[Measured]) -> str:
    lines = [
        "history                                          payloads  KB before  KB sealed   "
        "start KB before  start KB sealed  seal us  open us",
    ]
    for row in rows:
        lines.append(
            f"{row.name[:48]:48} {row.payloads:8} {row.history_bytes / 1024:10.1f} "
            f"{row.sealed_bytes / 1024:10.1f} {row.start_bytes / 1024:16.1f} "
            f"{row.sealed_start_bytes / 1024:16.1f} {row.seal_us:8.0f} {row.open_us:8.0f}"
        )
    return "\n".join(lines)


def summary(rows: Sequence[Measured]) -> dict[str, float]:
    def mean(values: list[float]) -> float:
        return round(statistics.fmean(values), 2)

    return {
        "histories": len(rows),
        "history_kb_before": mean([r.history_bytes / 1024 for r in rows]),
        "history_kb_sealed": mean([r.sealed_bytes / 1024 for r in rows]),
        "history_ratio": mean([r.sealed_bytes / r.history_bytes for r in rows]),
        "start_kb_before": mean([r.start_bytes / 1024 for r in rows]),
        "start_kb_sealed": mean([r.sealed_start_bytes / 1024 for r in rows]),
        "start_ratio": mean([r.sealed_start_bytes / r.start_bytes for r in rows]),
        "seal_ms_per_run": mean([r.seal_us / 1000 for r in rows]),
        "open_ms_per_run": mean([r.open_us / 1000 for r in rows]),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=20, help="timed passes per history")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    options = parser.parse_args(argv)
    codec = HistoryCodec(KeyRing.parse(new_key_ring_text("bench")))
    # Untagged files: one per scenario, the interpreter's baseline shapes.
    paths = sorted(p for p in HISTORIES.glob("*.json") if p.stem.count(".") == 0)
    rows = [measure(path, codec, options.repeat) for path in paths]
    totals = summary(rows)
    print(_table(rows))
    print(json.dumps(totals, indent=2))
    if options.json:
        options.json.write_text(
            json.dumps({"summary": totals, "histories": [asdict(r) for r in rows]}, indent=2),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
