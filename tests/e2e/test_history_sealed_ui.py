"""Sealed histories, read from outside: the issue's two "done when" points about the codec.

The module runs one stack with a history key ring (`JOURNEYS_HISTORY_KEYS`, a ring made by
`runtime.codec.new_key_ring_text`, given to the worker and the API) on a dev server of its
own, started as `journeys up` starts it: with `--ui-codec-endpoint` set to the stack's
`/codec` (so the API's port is picked before the stack starts). On it, the README's quick
start for one customer, through the `journeys` CLI and the console's forms: the customer
identified with a first name, a phone number and an email address; a failed payment with
a distinctive amount and invoice id, which the demo model sends to ops review; an ops
reviewer (`ana`) claims the case and approves it with a distinctive note.

- `temporal workflow show -o json` (the real CLI, no codec) prints the run's history with
  every payload of the application sealed (`encoding: binary/encrypted`): none of the
  name, the phone (as written or its digits), the email, the amount, the invoice id
  (outside the workflow id, which holds it as the run's key) or the note is in it, every
  payload's data decoded from base64 too. The same command with `--codec-endpoint` and an
  auditor's HTTP Basic shows the note, the amount and the invoice id (so the search above
  would have found them); the name and the addresses are masked before they reach a
  history at all, so even opened it holds only their masks.
- The Temporal Web UI (Debian's Chromium, driven by Playwright): an auditor signed in to
  the console sets the UI's codec server settings as docs/security.md says (the browser's
  setting over the cluster's, the API's endpoint, "include cross-origin credentials") and
  opens the run from the console's link: the run's input and the review decision's
  arguments show decoded, the reviewer's note in them. A browser with the same settings
  but no console session is refused (401) and sees the payloads sealed, the note nowhere.
  Screenshots of both are saved under test-artifacts/ (not committed).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import tests.e2e.conftest as e2e
from runtime.codec import new_key_ring_text
from runtime.devserver import dev_server_command, dev_server_ready
from tests.e2e.conftest import (
    BIN,
    JOURNEYS_CLI,
    ROOT,
    RUN_TIMEOUT,
    SERVER_START_TIMEOUT,
    ChildProcess,
    JourneysStack,
    TemporalServer,
    eventually,
    free_ports,
    holdout_customer,
    start_stack,
)

pytestmark = pytest.mark.e2e

CATALOGUE = ROOT / "journeys.yaml"
TEMPORAL_CLI = BIN / "temporal"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT = 45.0

# The customer's data: each value distinctive enough that finding it is no accident (a
# short one could turn up by chance in a long run of base64).
FIRST_NAME = "Quintessaria"
PHONE = "+821079354826"
PHONE_DIGITS = PHONE.removeprefix("+")
EMAIL = "quintessaria.vale@example.com"
AMOUNT = "73917.53"  # its whole units alone could turn up in a timestamp's nanoseconds
NOTE = "Zephyrine-4471 confirmed the hardship by phone"
ENCRYPTED = "binary/encrypted"

OPS_PASSWORD = "sealed-ops-password-1"
AUDITOR_PASSWORD = "sealed-auditor-password-1"

playwright_sync = pytest.importorskip("playwright.sync_api")


# ----------------------------------------------------------------------------- the stack


@dataclass(frozen=True)
class QuickStartRun:
    """The customer's payment-recovery run, its case approved with `NOTE`."""

    customer: str
    invoice: str
    run: dict[str, Any]

    @property
    def workflow_id(self) -> str:
        return str(self.run["workflow_id"])


@pytest.fixture(scope="module")
def ring() -> str:
    return new_key_ring_text("k1").strip()


def _ready(address: str) -> bool:
    """One readiness probe of the dev server, in a thread of its own: Playwright's sync API
    may already run an event loop in this one."""
    with ThreadPoolExecutor(max_workers=1) as probe:
        return probe.submit(asyncio.run, dev_server_ready(address, timeout=3.0)).result()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, ring: str) -> Iterator[JourneysStack]:
    """A dev server whose Web UI decodes through the stack's API, and the stack on it, its
    worker and API given the key ring."""
    directory = tmp_path_factory.mktemp("sealed")
    port, ui_port, api_port = free_ports(3)
    codec_endpoint = f"http://127.0.0.1:{api_port}/codec"
    state = directory / "temporal"
    state.mkdir()
    (directory / "stack").mkdir()
    child = ChildProcess.start(
        "temporal",
        dev_server_command(
            state_dir=state, port=port, ui_port=ui_port, codec_endpoint=codec_endpoint
        ),
        env=dict(os.environ),
        log=state / "temporal.log",
    )
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not _ready(address):
            if not child.running() or time.monotonic() > deadline:
                pytest.fail(f"the Temporal dev server did not start: {child.describe()}")
            time.sleep(0.5)
        server = TemporalServer(address=address, ui_url=f"http://127.0.0.1:{ui_port}", child=child)

        # `JourneysStack.start` picks its API's port itself (`free_ports(1)`): have it pick
        # the one the UI was given, and check it did.
        def the_api_port(count: int) -> list[int]:
            assert count == 1, "JourneysStack.start changed how it picks ports: update this"
            return [api_port]

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(e2e, "free_ports", the_api_port)
            with start_stack(
                directory / "stack", server, CATALOGUE, env={"JOURNEYS_HISTORY_KEYS": ring}
            ) as running:
                patch.undo()
                assert f"{running.api_url}/codec" == codec_endpoint
                yield running
    finally:
        child.stop()


def _cli(stack: JourneysStack, *args: str) -> str:
    """A `journeys` client command, as the README runs it; what it printed."""
    done = subprocess.run(
        [str(JOURNEYS_CLI), *args],
        cwd=ROOT,
        env={**stack.env(), "JOURNEYS_API_URL": stack.api_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"journeys {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None, page[:500]
    return found.group(1)


def console_user(stack: JourneysStack, name: str, role: str, password: str) -> httpx.Client:
    """`journeys user add NAME --role ROLE`, then the first sign-in through the console's
    forms with the one-time password replaced by ``password``; the signed-in client."""
    found = re.search(r"one-time password: (\S+)", _cli(stack, "user", "add", name, "--role", role))
    assert found is not None
    one_time = found.group(1)
    console = httpx.Client(base_url=stack.api_url, timeout=30.0, follow_redirects=True)
    login = console.get("/console/login")
    answer = console.post(
        "/console/login", data={"name": name, "password": one_time, "csrf": _csrf(login.text)}
    )
    assert answer.url.path == "/console/password", answer.text[:500]
    answer = console.post(
        "/console/password",
        data={"current": one_time, "new": password, "repeat": password, "csrf": _csrf(answer.text)},
    )
    assert answer.url.path != "/console/password", answer.text[:500]
    return console


@pytest.fixture(scope="module")
def auditor(stack: JourneysStack) -> str:
    """An auditor's name, their password chosen (`AUDITOR_PASSWORD`)."""
    console_user(stack, "audrey", "auditor", AUDITOR_PASSWORD).close()
    return "audrey"


@pytest.fixture(scope="module")
def quick_start(stack: JourneysStack) -> QuickStartRun:
    """The README's customer steps: identify, the failed payment, the ops review approved
    with a note through the console's forms; the run once the decision is in it."""
    customer = holdout_customer(CATALOGUE, "payment_recovery", prefix="sealed")
    invoice = f"inv-{uuid.uuid4().hex[:12]}"
    _cli(
        stack,
        "identify",
        customer,
        "--trait",
        f"first_name={FIRST_NAME}",
        "--trait",
        f"phone={PHONE}",
        "--trait",
        f"email={EMAIL}",
        "--timezone-at-noon",
    )
    _cli(
        stack,
        "emit",
        "payment_failed",
        "--customer",
        customer,
        "--prop",
        f"amount={AMOUNT}",
        "--prop",
        "currency=KRW",
        "--prop",
        "days_past_due=3",
        "--prop",
        f"invoice_id={invoice}",
    )
    run = stack.only_run(customer, "payment_recovery")
    reviews = eventually(
        lambda: stack.get("/v1/reviews", customer=customer)["reviews"],
        check=lambda found: len(found) == 1,
        timeout=RUN_TIMEOUT,
        what="the ops review of the quick start's case",
    )
    task = reviews[0]["id"]
    console = console_user(stack, "ana", "ops", OPS_PASSWORD)
    try:
        case = console.get(f"/console/reviews/{task}")
        claimed = console.post(f"/console/reviews/{task}/claim", data={"csrf": _csrf(case.text)})
        assert claimed.status_code == 200, claimed.text[:500]
        decided = console.post(
            f"/console/reviews/{task}/decide",
            data={"decision": "approve", "note": NOTE, "csrf": _csrf(claimed.text)},
        )
        assert decided.status_code == 200 and "Decided: approve" in decided.text
    finally:
        console.close()
    detail = eventually(
        lambda: stack.run(run["run_id"]),
        check=lambda found: found["step"] != "ops_review",
        timeout=RUN_TIMEOUT,
        what="the run past its review",
    )
    return QuickStartRun(customer=customer, invoice=invoice, run=detail)


# ----------------------------------------------------------------------------- the CLI


def workflow_show(stack: JourneysStack, workflow_id: str, *codec: str) -> str:
    """`temporal workflow show -w ID -o json` against the stack's server (no TEMPORAL_*
    setting or CLI profile of this machine applies); its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    env["HOME"] = str(stack.directory)  # no ~/.config/temporalio profile
    done = subprocess.run(
        [
            str(TEMPORAL_CLI),
            "workflow",
            "show",
            "-w",
            workflow_id,
            "--address",
            stack.temporal.address,
            "-o",
            "json",
            *codec,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"temporal workflow show:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass(frozen=True)
class ShownPayload:
    """A payload as `temporal workflow show -o json` prints it: where, its encoding, and
    its data as text (the JSON shows both metadata and data in base64)."""

    where: str
    encoding: str
    text: str


def shown_payloads(document: Any, path: str = "") -> list[ShownPayload]:
    found: list[ShownPayload] = []
    if isinstance(document, dict):
        metadata = document.get("metadata")
        if isinstance(metadata, dict) and "encoding" in metadata:
            data = base64.b64decode(str(document.get("data", "")))
            found.append(
                ShownPayload(
                    where=path,
                    encoding=base64.b64decode(metadata["encoding"]).decode("utf-8", "replace"),
                    text=data.decode("utf-8", "replace"),
                )
            )
        for key, value in document.items():
            found += shown_payloads(value, f"{path}.{key}")
    elif isinstance(document, list):
        for index, item in enumerate(document):
            found += shown_payloads(item, f"{path}[{index}]")
    return found


def searchable(output: str) -> tuple[str, list[ShownPayload]]:
    """The command's output with every payload's data decoded to text appended (as
    `tests.history_text` does: base64 would hide a value from a plain search), and the
    payloads."""
    payloads = shown_payloads(json.loads(output))
    return output + "\n" + "\n".join(p.text for p in payloads), payloads


# Payloads that are not the application's, so never go through a codec: search attributes
# (Temporal indexes them; docs/security.md lists what they hold) and the SDK's own
# bookkeeping in its markers (a local activity's sequence number and type, a patch's id).
# The local activity's result, in the same marker, is sealed.
NOT_SEALED = re.compile(
    r"\.searchAttributes\.indexedFields\.\w+$"
    r"|\.markerRecordedEventAttributes\.details\.(data|patch-data)\.payloads\[0\]$"
)


def test_the_history_without_the_key_holds_no_customer_data(
    stack: JourneysStack, quick_start: QuickStartRun, auditor: str, ring: str
) -> None:
    # The worker and the API both run with the ring: neither warns of its absence.
    assert stack.env()["JOURNEYS_HISTORY_KEYS"] == ring
    for child in [*stack.workers, stack.api]:
        assert child is not None
        logged = child.output(last=1000)
        assert "no history key ring" not in logged and ring not in logged, child.describe()

    sealed, payloads = searchable(workflow_show(stack, quick_start.workflow_id))
    plain = [p for p in payloads if p.encoding != ENCRYPTED]
    assert all(NOT_SEALED.search(p.where) for p in plain), [(p.where, p.text) for p in plain]
    # The application's payloads are there, all sealed: the run's input (written by the
    # API's client), activities' inputs and results (the worker), the review decision (an
    # update, through the API): the search below searches something.
    sealed_at = [p.where for p in payloads if p.encoding == ENCRYPTED]
    for kind in (
        "workflowExecutionStartedEventAttributes.input",
        "activityTaskScheduledEventAttributes.input",
        "activityTaskCompletedEventAttributes.result",
        "markerRecordedEventAttributes.details.result",
        "workflowExecutionUpdateAcceptedEventAttributes",
    ):
        assert any(kind in where for where in sealed_at), (kind, sealed_at)
    assert base64.b64encode(ENCRYPTED.encode()).decode() in sealed  # as the JSON shows it

    # The workflow id is this customer's run; it holds the customer id and the run's key,
    # the invoice id (ids, by design: docs/security.md), and no other value of the event.
    assert quick_start.workflow_id.endswith(f"/{quick_start.customer}/{quick_start.invoice}")
    outside_the_id = sealed.replace(quick_start.workflow_id, "<workflow id>")
    secrets = {
        "first name": FIRST_NAME,
        "phone": PHONE,
        "phone (digits)": PHONE_DIGITS,
        "phone (local digits)": PHONE_DIGITS[-8:],
        "email": EMAIL,
        "email (local part)": EMAIL.split("@")[0],
        "amount": AMOUNT,
        "invoice id (outside the workflow id)": quick_start.invoice,
        "note": NOTE,
        "note (its distinctive word)": "Zephyrine",
    }
    found = [what for what, value in secrets.items() if value in outside_the_id]
    assert not found, f"in the history read without the key: {found}"

    # The positive control: through the codec server, as the auditor, the same command
    # shows the note, the amount and the invoice id in the payloads, so the search above
    # would have found them.
    basic = base64.b64encode(f"{auditor}:{AUDITOR_PASSWORD}".encode()).decode()
    opened, opened_payloads = searchable(
        workflow_show(
            stack,
            quick_start.workflow_id,
            "--codec-endpoint",
            f"{stack.api_url}/codec",
            "--codec-auth",
            f"Basic {basic}",
        )
    )
    assert ENCRYPTED not in {p.encoding for p in opened_payloads}  # all opened
    in_payloads = "\n".join(p.text for p in opened_payloads)
    assert NOTE in in_payloads and f'"amount":{AMOUNT}' in in_payloads
    assert f'"invoice_id":"{quick_start.invoice}"' in in_payloads
    # The name and the addresses are masked before they reach a history: even opened, the
    # history holds their masks only (`first_name` is personal by its name).
    masked_phone = f"{PHONE[:3]}{'*' * 6}{PHONE[-4:]}"
    assert '"first_name":"***"' in in_payloads and f'"phone":"{masked_phone}"' in in_payloads
    for value in (FIRST_NAME, PHONE, PHONE_DIGITS, EMAIL):
        assert value not in opened


# ----------------------------------------------------------------------------- the Web UI


@pytest.fixture
def _end_open_runs() -> None:
    """Replaces tests/conftest.py's autouse fixture of that name for this module: that one
    is async, and pytest-asyncio cannot run it while the module's Playwright loop runs
    (Playwright's sync API keeps its loop running in this thread from the first test to
    the last). It ends the runs a test left on the time-skipping server; these tests
    start none there (their runs are on the module's own stack)."""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, for the module's tests."""
    assert CHROMIUM.exists(), "Debian's chromium is missing: `make test` installs it"
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_sync.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            launched.close()


def sign_in(page: Any, stack: JourneysStack, name: str, password: str) -> None:
    page.goto(f"{stack.api_url}/console/login")
    page.fill("#name", name)
    page.fill("#password", password)
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/(?!login).*"))


def use_codec_with_credentials(page: Any, stack: JourneysStack) -> None:
    """The UI's codec server settings, as docs/security.md says: the browser's setting
    over the cluster's, the API's endpoint, cross-origin credentials included."""
    page.locator("[data-testid^='data-encoder-status']").first.click()
    dialog = page.locator("dialog[open]")
    dialog.get_by_test_id("use-local-endpoint-input").check()
    dialog.get_by_test_id("data-encoder-endpoint-input").fill(f"{stack.api_url}/codec")
    dialog.get_by_text("Include cross-origin credentials").click()
    assert dialog.locator("#pass-access-credentials").is_checked()
    dialog.get_by_test_id("confirm-modal-button").click()
    dialog.wait_for(state="hidden")


_DECODE_ANSWER = re.compile(r'"POST /codec/decode\S* HTTP/[0-9.]+" (\d{3})')


def decode_answers(stack: JourneysStack) -> list[str]:
    """The status of every `POST /codec/decode` the API has answered, from its access log.

    (Not from the browser: in this headless Chromium a credentialed request answered 401
    never completes for the page, nor for Playwright's events; the UI gives up on it and
    shows the payloads as they are.)"""
    assert stack.api is not None
    return _DECODE_ANSWER.findall(stack.api.output(last=100_000))


def opened_decision(page: Any) -> None:
    """Opens the history's row of the review decision (an update to the run)."""
    page.locator("tr", has_text="Workflow Execution Update Accepted").first.click()


def test_the_web_ui_decodes_the_history_for_a_signed_in_auditor(
    browser: Any, stack: JourneysStack, quick_start: QuickStartRun, auditor: str
) -> None:
    # The console's link to the run in Temporal's Web UI (the run page's "open in Temporal").
    link = str(quick_start.run["temporal_ui"])
    assert link.startswith(f"{stack.temporal.ui_url}/namespaces/default/workflows/"), link
    sealed_encoding = base64.b64encode(ENCRYPTED.encode()).decode()  # as the UI shows it

    signed_in = browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        page = signed_in.new_page()
        sign_in(page, stack, auditor, AUDITOR_PASSWORD)
        page.goto(f"{stack.temporal.ui_url}/namespaces/default/workflows")
        use_codec_with_credentials(page, stack)
        before = len(decode_answers(stack))
        page.goto(link)
        opened_decision(page)
        # The decision's arguments, decoded: the reviewer's note, as ana typed it.
        text = eventually(
            lambda: page.inner_text("body"),
            check=lambda shown: NOTE in shown and '"plan"' in shown,
            timeout=UI_TIMEOUT,
            interval=0.5,
            what="the reviewer's note (and the run's input) on the decoded history page",
        )
        assert '"reviewer": "ana"' in text and '"decision": "approve"' in text
        assert sealed_encoding not in text and ENCRYPTED not in text
        answered = decode_answers(stack)[before:]
        assert answered and set(answered) == {"200"}, answered
        page.screenshot(path=str(ARTIFACTS / "temporal-ui-decoded.png"))
    finally:
        signed_in.close()

    # The same settings in a browser not signed in to the console: the codec refuses each
    # request (401), and the UI shows the payloads sealed, the note nowhere.
    stranger = browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        page = stranger.new_page()
        page.goto(f"{stack.temporal.ui_url}/namespaces/default/workflows")
        use_codec_with_credentials(page, stack)
        before = len(decode_answers(stack))
        page.goto(link)
        shown = eventually(
            lambda: page.inner_text("body"),
            check=lambda text: sealed_encoding in text,
            timeout=UI_TIMEOUT,
            interval=0.5,
            what="the run's input shown sealed",
        )
        opened_decision(page)
        page.wait_for_timeout(2000)
        shown = page.inner_text("body")
        assert NOTE not in shown and "Zephyrine" not in shown and '"plan"' not in shown
        answered = decode_answers(stack)[before:]
        assert answered and set(answered) == {"401"}, answered
        page.screenshot(path=str(ARTIFACTS / "temporal-ui-not-signed-in.png"))
    finally:
        stranger.close()
