"""The README's quick start, run as written (issue #16): every command of its fenced ``sh``
blocks, in order, against a real `journeys up` this test starts, and every output it shows
checked against what the commands print. If the README drifts, this fails.

How the README is read: the quick start is the text from ``## Quick start`` to
``### Designing journeys``. Each ``sh`` block is a list of commands (a trailing ``\\``
continues a line); a plain fenced block right after it (prose in between is fine) is what
the block's last command prints. In a shown output, ``...`` stands for any text and runs
of spaces count as one (the runs table aligns its columns to its contents); every shown
line must be printed, in order, and the command may print more lines.

What is substituted, and nothing else:

- ``make up`` is `.venv/bin/journeys up` (what the Makefile's `up` target runs once its
  install steps are done; the test checks that) with ``--state-dir``/``--port``/
  ``--temporal-port``/``--ui-port`` for a tmp state directory and free ports, and the
  output shown after its block is the banner it prints; ``make test`` (the whole suite)
  is not run here.
- The default addresses ``http://127.0.0.1:8000`` and ``:8233`` become the free ports and
  ``state/`` the tmp state directory, in commands and shown outputs; the client commands
  get ``JOURNEYS_API_URL`` and ``JOURNEYS_STATE_DIR`` for the same (as the banner says).
- What the README asks a person to do in the browser (sign in, choose a password, claim
  and approve the case) the test does through the console's own forms, as a browser does.

A command whose shown output is a read (`journeys runs`) is re-run for up to
``SETTLE_TIMEOUT`` seconds until it prints what the README shows: a run reaches its review
step a moment after the event is accepted.

The same `journeys up` checks docs/operations.md's examples of it (same ``...`` and
whitespace convention):

- the banner shown after "waits for `/healthz`, and prints:", with the README's port
  substitutions, the doc's ``/path/to/state`` (an absolute state directory) as the tmp
  state directory, and the `try:` command prefixed with the ``JOURNEYS_API_URL=...
  JOURNEYS_STATE_DIR=...`` the banner adds for a non-default port and state directory;
- the ``state/`` tree: while `up` runs (``supervisor.json`` exists only then), every entry
  it lists exists in the state directory (a ``*`` pattern matches at least one file), so
  does every ``state/logs/*.log`` the doc's process table names, and everything in the
  state directory is listed (``supervisor.log`` is only written once `up` has something
  to say after the banner, restarts: it is not required);
- the stop messages: the test ends by stopping `up` with SIGTERM, the signal the doc's
  block shows (Ctrl-C, SIGINT, prints the same lines with ``SIGINT``), and checks the lines
  printed, each child's stop time (``(0.3 s)``) being any time, and the exit code 0.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
OPERATIONS = ROOT / "docs" / "operations.md"
START_TIMEOUT = 120.0  # the dev server on two shared cores
STOP_TIMEOUT = 45.0
SETTLE_TIMEOUT = 60.0
SMS_TIMEOUT = 120.0  # the promise: the SMS within two minutes
DEFAULT_API = "http://127.0.0.1:8000"
DEFAULT_UI = "http://127.0.0.1:8233"
CUSTOMER = "c1"


# ----------------------------------------------------------------------------- the README


@dataclass
class Block:
    commands: list[str]
    shown: list[str] | None = None  # what the last command prints, if the README shows it


def quick_start(text: str) -> str:
    start = text.index("## Quick start")
    return text[start : text.index("### Designing journeys", start)]


def fenced(text: str) -> list[tuple[str, str]]:
    """Every fenced block as (language, body), in order."""
    return [(lang, body) for lang, body in re.findall(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S)]


def blocks(text: str) -> list[Block]:
    """The quick start's command blocks, each with the output shown after it."""
    found: list[Block] = []
    for lang, body in fenced(text):
        if lang == "sh":
            joined = re.sub(r"\\\n\s*", "", body)
            found.append(Block([line for line in joined.splitlines() if line.strip()]))
        elif lang == "":
            assert found and found[-1].shown is None, f"output with no command: {body!r}"
            found[-1].shown = body.splitlines()
        else:
            raise AssertionError(f"a {lang!r} block in the quick start: teach this test")
    return found


def _squash(line: str) -> str:
    return " ".join(line.split())


def _pattern(shown: str) -> re.Pattern[str]:
    return re.compile(".*?".join(re.escape(part) for part in _squash(shown).split("...")))


def mismatch(shown: list[str], printed: str) -> str | None:
    """None when every shown line is printed, in order; else what is missing."""
    lines = [_squash(line) for line in printed.splitlines()]
    at = 0
    for want in shown:
        pattern = _pattern(want)
        while at < len(lines) and not pattern.fullmatch(lines[at]):
            at += 1
        if at == len(lines):
            return f"shown {want!r} not printed (in order); printed:\n{printed}"
        at += 1
    return None


def test_the_quick_start_is_parsed_as_this_test_expects() -> None:
    """The parse itself, so a README edit cannot make the e2e test below check nothing."""
    steps = blocks(quick_start(README.read_text(encoding="utf-8")))
    commands = [command for block in steps for command in block.commands]
    assert commands[0].startswith("make up") and commands[1].startswith("make test")
    assert steps[0].shown is not None and steps[0].shown[0] == "journeys is up"
    assert sum("journeys emit" in c for c in commands) == 2
    assert any("journeys user add ana --role ops" in c for c in commands)
    assert any("journeys identify c1" in c for c in commands)
    assert [b.shown is not None for b in steps].count(True) >= 5
    assert mismatch(["a ... c", "d"], "x\na b  c\nd\n") is None
    assert mismatch(["d", "a ... c"], "a b c\nd\n") is not None
    assert mismatch(["a"], "ab\n") is not None  # a whole line, not a part of one


def test_the_quick_start_customer_is_outside_the_holdout() -> None:
    """`payment_recovery` holds 5% out by a stable hash of journey and customer: the
    README's customer must get the whole journey, or its SMS never comes."""
    from engine.catalog import build_catalog
    from engine.decisions import bucket_of
    from engine.plan import bucket_salt

    text = quick_start(README.read_text(encoding="utf-8"))
    assert set(re.findall(r"--customer (\S+)", text)) == {CUSTOMER}
    plan = build_catalog(ROOT / "journeys.yaml").plans["payment_recovery"]
    assert plan.holdout_percent > 0
    weights = [plan.holdout_percent, 100 - plan.holdout_percent]
    assert bucket_of(bucket_salt(plan, CUSTOMER, "holdout"), weights) == 1  # 0: held out


# ----------------------------------------------------------------------------- operations.md


def plain_block_after(text: str, marker: str) -> list[str]:
    """The first plain fenced block (an example output) after ``marker`` in ``text``."""
    at = text.index(marker)
    for found in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S):
        if found.start() > at and not found.group(1):
            return found.group(2).splitlines()
    raise AssertionError(f"no example output after {marker!r}")


def operations_banner(text: str) -> list[str]:
    return plain_block_after(text, "waits for `/healthz`, and prints:")


def operations_state_tree(text: str) -> list[str]:
    """The entries of the doc's ``state/`` tree (``logs/`` for a folder, ``*.db-wal``)."""
    lines = plain_block_after(text, "The state directory is everything")
    assert lines[0] == "state/", lines
    return [name for line in lines[1:] for name in re.split(r"\s{2,}", line.strip())[0].split(", ")]


def operations_stop(text: str) -> list[str]:
    """The stop messages, each child's stop time any time."""
    lines = plain_block_after(text, "### Stopping")
    return [re.sub(r" stopped \(\d+(\.\d+)? s\)$", " stopped (... s)", line) for line in lines]


def banner_moved(shown: list[str], place: Place) -> list[str]:
    state = str(place.state.resolve())
    prefix = f"JOURNEYS_API_URL={place.api} JOURNEYS_STATE_DIR={shlex.quote(state)} "
    moved: list[str] = []
    for line in shown:
        line = line.replace(DEFAULT_API, place.api).replace(DEFAULT_UI, place.ui)
        line = line.replace("/path/to/state", state)
        line = re.sub(r"^(\s+)(\.venv/bin/journeys emit )", rf"\g<1>{prefix}\g<2>", line)
        moved.append(line)
    return moved


def process_logs(text: str) -> list[str]:
    """The logs the doc's table of `up`'s processes names (``logs/worker.log``...)."""
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    return sorted({log for row in rows for log in re.findall(r"`state/(logs/\w+\.log)`", row)})


def state_problems(entries: list[str], state: Path, text: str) -> list[str]:
    """The doc's state entries (and the process logs its table names) missing from
    ``state``, and what ``state`` holds that the doc does not list."""
    problems: list[str] = []
    for path in sorted(state.iterdir()):
        name = f"{path.name}/" if path.is_dir() else path.name
        if not any(fnmatch.fnmatchcase(name, entry) for entry in entries):
            problems.append(f"{name} is not listed")
    for entry in entries:
        if entry.endswith("/"):
            if not (state / entry).is_dir():
                problems.append(f"no folder {entry}")
        elif "*" in entry:
            if not list(state.glob(entry)):
                problems.append(f"nothing matches {entry}")
        elif not (state / entry).is_file():
            problems.append(f"no file {entry}")
    for log in process_logs(text):
        if not (state / log).is_file():
            problems.append(f"no {log}")
    key = state / "api_key"
    if key.is_file() and key.stat().st_mode & 0o777 != 0o600:
        problems.append(f"api_key has mode {key.stat().st_mode & 0o777:o}, not 600")
    return problems


def test_operations_md_is_parsed_as_this_test_expects() -> None:
    """The parse, so an edit of docs/operations.md cannot make the e2e test check nothing."""
    text = OPERATIONS.read_text(encoding="utf-8")
    banner = operations_banner(text)
    assert banner[0] == "journeys is up" and banner[-1] == "Ctrl-C stops everything."
    assert any(line.strip().startswith(".venv/bin/journeys emit ") for line in banner)
    place = Place(Path("/tmp/s"), "http://127.0.0.1:1", "http://127.0.0.1:2", {})
    moved = banner_moved(banner, place)
    assert "  API          http://127.0.0.1:1" in moved
    assert "  logs         /tmp/s/logs" in moved
    assert any(
        "JOURNEYS_API_URL=http://127.0.0.1:1 JOURNEYS_STATE_DIR=/tmp/s .venv/bin/journeys emit"
        in line
        for line in moved
    )
    entries = operations_state_tree(text)
    assert {"api_key", "journeys.db", "*.db-wal", "*.db-shm", "logs/"} <= set(entries), entries
    assert process_logs(text) == ["logs/api.log", "logs/temporal.log", "logs/worker.log"]
    stop = operations_stop(text)
    assert stop[0].startswith("journeys up: SIGTERM received; stopping api, worker, temporal")
    assert "journeys up: worker stopped (... s)" in stop and stop[-1] == "stopped"


# ----------------------------------------------------------------------------- the system


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for probe in sockets:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in sockets]
    finally:
        for probe in sockets:
            probe.close()


@dataclass
class Up:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output(), re.M):
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} from journeys up:\n{self.output()}")
            time.sleep(0.25)


@dataclass
class Place:
    """Where this test's system is, and how README text is moved there."""

    state: Path
    api: str
    ui: str
    ports: dict[str, int]

    def moved(self, text: str) -> str:
        return (
            text.replace(DEFAULT_API, self.api)
            .replace(DEFAULT_UI, self.ui)
            .replace("state/", f"{self.state}/")
        )

    def env(self) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("JOURNEYS_") and name != "DATABASE_URL"
        }
        env.update(
            JOURNEYS_API_URL=self.api, JOURNEYS_STATE_DIR=str(self.state), PYTHONUNBUFFERED="1"
        )
        return env


@pytest.fixture
def place(tmp_path: Path) -> Place:
    api, temporal, ui = _free_ports(3)
    return Place(
        state=tmp_path / "state",
        api=f"http://127.0.0.1:{api}",
        ui=f"http://127.0.0.1:{ui}",
        ports={"api": api, "temporal": temporal, "ui": ui},
    )


@pytest.fixture
def started() -> Iterator[list[Up]]:
    ups: list[Up] = []
    yield ups
    for up in ups:
        if up.process.poll() is None:
            up.process.send_signal(signal.SIGINT)
            try:
                up.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                up.process.kill()


def make_up(place: Place) -> Up:
    """What `make up` runs after installing: the Makefile's `up` recipe, on free ports."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^up: \$\(STAMP\)\n\t(.+)$", makefile, re.M)
    assert recipe is not None and recipe.group(1) == "$(BIN)/journeys up", "make up changed"
    argv = [
        ".venv/bin/journeys",
        "up",
        "--state-dir",
        str(place.state),
        "--port",
        str(place.ports["api"]),
        "--temporal-port",
        str(place.ports["temporal"]),
        "--ui-port",
        str(place.ports["ui"]),
    ]
    env = place.env()
    env.pop("JOURNEYS_API_URL")  # `up` gets its ports from its options
    process = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    up = Up(process)

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            up.lines.append(line)

    threading.Thread(target=read, daemon=True).start()
    return up


def run(place: Place, command: str) -> str:
    """One README command, through bash, from the repository root; it must succeed."""
    done = subprocess.run(
        ["bash", "-c", place.moved(command)],
        cwd=ROOT,
        env=place.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 0, f"{command!r} exited {done.returncode}:\n{printed}"
    return printed


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, page[:500]
    return found.group(1)


def _text(page: str) -> str:
    """A page's main text, as a person reads it."""
    main = page[page.find("<main") :]
    return " ".join(re.sub(r"<[^>]+>", " ", main).split())


def approve_in_console(place: Place, name: str, one_time: str) -> tuple[httpx.Client, str]:
    """The README's browser steps, through the console's forms: sign in, choose a
    password, find the case in the queue, claim it, approve it with a note."""
    console = httpx.Client(base_url=place.api, timeout=30.0, follow_redirects=True)
    login = console.get("/console/login")
    answer = console.post(
        "/console/login", data={"name": name, "password": one_time, "csrf": _csrf(login.text)}
    )
    assert answer.url.path == "/console/password", answer.text[:500]
    password = "a long passphrase of ana's own"
    answer = console.post(
        "/console/password",
        data={"current": one_time, "new": password, "repeat": password, "csrf": _csrf(answer.text)},
    )
    assert answer.url.path != "/console/password", answer.text[:500]
    queue = console.get("/console/reviews")
    tasks = re.findall(r'<tr data-task="([^"]+)"', queue.text)
    assert len(tasks) == 1, queue.text[:2000]
    [task] = tasks
    case = console.get(f"/console/reviews/{task}")
    shown = _text(case.text)
    assert f"id {CUSTOMER}" in shown and "Model default_risk scored" in shown, shown
    claimed = console.post(f"/console/reviews/{task}/claim", data={"csrf": _csrf(case.text)})
    assert claimed.status_code == 200, claimed.text[:500]
    decided = console.post(
        f"/console/reviews/{task}/decide",
        data={"decision": "approve", "note": "Grace agreed by phone.", "csrf": _csrf(claimed.text)},
    )
    assert decided.status_code == 200 and "Decided: approve" in decided.text, decided.text[:500]
    return console, task


def wait_for_sms(place: Place, console: httpx.Client) -> float:
    """Seconds until the grace-offer SMS is in the outbox, by the API and in the console."""
    key = (place.state / "api_key").read_text(encoding="utf-8").strip()
    started = time.monotonic()
    messages: list[dict[str, object]] = []
    while time.monotonic() - started < SMS_TIMEOUT:
        answer = httpx.get(
            f"{place.api}/v1/outbox",
            params={"customer": CUSTOMER},
            headers={"Authorization": f"Bearer {key}"},
            timeout=15.0,
        )
        messages = [m for m in answer.json()["messages"] if m["step_id"] == "grace_sms"]
        if messages:
            break
        time.sleep(1.0)
    waited = time.monotonic() - started
    assert messages, f"no grace-offer SMS within {SMS_TIMEOUT:.0f} s of the approval"
    [sms] = messages
    assert sms["channel"] == "sms" and sms["recipient"] != "+821055501234"  # masked
    assert str(sms["body"]).startswith("Mina, we can move your due date")
    page = console.get("/console/outbox").text
    assert "payment_recovery</a> · grace_sms" in page and "<td>sms</td>" in page, page[:2000]
    return waited


@pytest.mark.e2e
def test_the_quick_start_runs_as_written_and_prints_what_it_shows(
    place: Place, started: list[Up]
) -> None:
    steps = blocks(quick_start(README.read_text(encoding="utf-8")))
    problems: list[str] = []  # every difference, so one drift does not hide the next
    timings: dict[str, float] = {}
    began = time.monotonic()
    for block in steps:
        for index, command in enumerate(block.commands):
            last = index == len(block.commands) - 1
            word = shlex.split(command, comments=True)
            if word[:2] == ["make", "test"]:
                continue
            if word[:2] == ["make", "up"]:
                up = make_up(place)
                started.append(up)
                up.wait_for(r"^Ctrl-C stops everything\.$", START_TIMEOUT)
                timings["up"] = time.monotonic() - began
                # The block's output is the banner `make up` prints (`make test`, its last
                # command, is not run).
                if block.shown is not None:
                    shown = [place.moved(line) for line in block.shown]
                    if (problem := mismatch(shown, up.output())) is not None:
                        problems.append(f"make up: {problem}")
                continue
            settle = last and block.shown is not None and "journeys runs" in command
            deadline = time.monotonic() + (SETTLE_TIMEOUT if settle else 0)
            while True:
                printed = run(place, command)
                problem = None
                if last and block.shown is not None:
                    problem = mismatch([place.moved(line) for line in block.shown], printed)
                if problem is None or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            if problem is not None:
                problems.append(f"{command}: {problem}")
            if "journeys user add ana --role ops" in command:
                found = re.search(r"^one-time password: (\S+)$", printed, re.M)
                assert found is not None, printed
                console, _ = approve_in_console(place, "ana", found.group(1))
                approved = time.monotonic()
                timings["sms after approval"] = wait_for_sms(place, console)
                timings["sms after up"] = time.monotonic() - began - timings["up"]
                assert time.monotonic() - approved < SMS_TIMEOUT
    print(f"timings (s): {', '.join(f'{k} {v:.1f}' for k, v in timings.items())}")
    assert "sms after approval" in timings, "the quick start never approved the case"

    # docs/operations.md's examples of the same `journeys up`: its banner, its state
    # directory while it runs, and what it prints when stopped by SIGTERM.
    operations = OPERATIONS.read_text(encoding="utf-8")
    [up] = started
    banner = banner_moved(operations_banner(operations), place)
    if (problem := mismatch(banner, up.output())) is not None:
        problems.append(f"the banner: {problem}")
    missing = state_problems(operations_state_tree(operations), place.state, operations)
    if missing:
        problems.append(
            f"the state directory {sorted(p.name for p in place.state.iterdir())}: {missing}"
        )
    up.process.send_signal(signal.SIGTERM)
    try:
        code = up.process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        up.process.kill()
        pytest.fail(f"journeys up did not stop within {STOP_TIMEOUT:.0f} s:\n{up.output()}")
    deadline = time.monotonic() + 5  # the reader thread takes the last lines
    while not up.output().endswith("stopped\n") and time.monotonic() < deadline:
        time.sleep(0.1)
    if code != 0:
        problems.append(f"journeys up exited {code} after SIGTERM, not 0")
    if (problem := mismatch(operations_stop(operations), up.output())) is not None:
        problems.append(f"the stop: {problem}")
    assert not problems, "the README's quick start or docs/operations.md drifted:\n\n" + (
        "\n\n".join(problems)
    )
