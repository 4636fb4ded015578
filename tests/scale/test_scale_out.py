"""Scale-out, shown working (issue #20): two `python worker.py` processes and two API
processes on one Temporal server and one PostgreSQL database, under a mixed load posted
through the real API, with one worker killed (SIGKILL) midway.

What a user would see, and what is asserted:

- every event stored once and routed, though a tenth of them were delivered twice (the
  same messageId POSTed to both API processes, one after the other or at once);
- every run reached its expected end, on the worker left;
- no customer got the same message twice, except inside the documented at-least-once
  window (docs/architecture.md, "The one window": a worker dies after the provider took
  the message and before its delivery row is marked `sent`; the retry sends it again and
  the row counts two provider calls). So each message arrives at most as many times as
  its delivery row counts attempts;
- the frequency cap (two SMS a day) held for every customer although their four
  promotions ran at once on both workers;
- a review decided concurrently through both API processes is taken once: one 200, the
  other attempts 409, one decision recorded and audited, the run resumed once;
- no process lost a race on the shared database (no unique-key clash, deadlock or
  traceback in the API processes' or the surviving worker's log).

Email goes to a real SMTP server on loopback, SMS to a real HTTP gateway endpoint. No
timing is asserted; every wait is bounded. Run by `make test-scale` (docs/testing.md).
"""

from __future__ import annotations

import asyncio
import base64
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import col, func, select
from temporalio.client import Client

from engine.database import (
    CapReservation,
    Delivery,
    EventRecord,
    ReviewAudit,
    ReviewTask,
    Run,
    make_engine,
    session_scope,
)
from service.users import add_user, change_password, check_password
from tests.e2e.conftest import (
    API_KEY,
    ChildProcess,
    JourneysStack,
    TemporalServer,
    eventually,
    start_stack,
)
from tests.http_endpoint import HttpEndpoint, running_endpoint
from tests.smtp_server import SmtpServer, free_port

pytestmark = pytest.mark.scale

CUSTOMERS = 120  # each places an order: two emails, 3 s apart
PROMO_CUSTOMERS = 40  # each sees four promotions at once: the cap lets two SMS through
PROMOS_EACH = 4
CAP = 2
CASES = 10  # each opens a review case, decided four times at once
DUPLICATE_EVERY = 10  # every tenth track event is POSTed twice, to both API processes
CLICKS = 4  # concurrent decisions per case, two to each API process
SENDERS = 8  # concurrent HTTP senders: bounded, as docs/operations.md advises for bursts

REVIEWER, PASSWORD = "ana", "scale-test-reviewer-Passw0rd"
SMS_TOKEN = "scale-sms-gateway-token"

# A send whose worker was killed is retried after its start_to_close (60 s).
LOAD_TIMEOUT = 300.0

JOURNEYS = """\
version: 1

settings:
  timezone: UTC

events:
  order_placed:
    order_id: string
  promo_seen:
    promo_id: string
  case_opened:
    case_id: string

channels:
  email: {url: "${JOURNEYS_EMAIL_URL}", rate: 500/s}
  sms: {url: "${JOURNEYS_SMS_URL}", rate: 500/s}

templates:
  receipt:
    email:
      subject: "{{ journey.step }} {{ event.order_id }}"
      text: "Order {{ event.order_id }}: step {{ journey.step }}."
  promo:
    sms: "promo {{ event.promo_id }}"
  approved:
    email:
      subject: "{{ journey.step }} {{ event.case_id }}"
      text: "Case {{ event.case_id }} approved by {{ review.reviewer }}."

journeys:
  - id: receipts
    name: Two emails per order, a pause between
    entry:
      event: order_placed
      key: event.order_id
      reentry: always
    steps:
      - {id: receipt, send: receipt, channel: email}
      - {id: pause, wait: 3s}
      - {id: thanks, send: receipt, channel: email}
      - {id: done, exit: thanked}

  - id: promos
    name: One SMS per promotion, at most two a day
    settings:
      frequency_cap: {max: 2, per: 1d}
    entry:
      event: promo_seen
      key: event.promo_id
      reentry: always
    steps:
      - {id: promo, send: promo, channel: sms, on_capped: skip}
      - {id: done, exit: promoted}

  - id: cases
    name: A reviewer approves each case once
    entry:
      event: case_opened
      key: event.case_id
    steps:
      - id: check
        review: support
        title: "Case {{ event.case_id }}"
        decisions: {approve: approved_email, reject: rejected}
        sla: 1h
      - {id: approved_email, send: approved, channel: email}
      - {id: approved, exit: approved}
      - {id: rejected, exit: rejected}
"""


@dataclass
class Load:
    """What the test posted, to check against what the system did."""

    prefix: str
    message_ids: set[str] = field(default_factory=set)
    duplicate_answers: list[tuple[int, int]] = field(default_factory=list)
    deferred: int = 0  # answers whose routing was left to the background loop

    def customer(self, index: int) -> str:
        return f"{self.prefix}-{index:04d}"

    def email(self, index: int) -> str:
        return f"{self.customer(index)}@example.test"

    def phone(self, index: int) -> str:
        return f"+8210{index:08d}"


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(port=free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway() -> Iterator[HttpEndpoint]:
    with running_endpoint() as endpoint:
        endpoint.reply = {"result": {"message_id": "1", "status": "ok"}}
        yield endpoint


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    temporal_server: TemporalServer,
    smtp: SmtpServer,
    gateway: HttpEndpoint,
) -> Iterator[JourneysStack]:
    directory = tmp_path_factory.mktemp("scale")
    journeys = directory / "journeys.yaml"
    journeys.write_text(JOURNEYS, encoding="utf-8")
    env = {
        "JOURNEYS_EMAIL_URL": smtp.url(),
        "JOURNEYS_SMS_URL": f"smseagle://{SMS_TOKEN}@127.0.0.1:{gateway.port}",
        "JOURNEYS_SECRET_KEY": "scale-test-unsubscribe-signing-key",
    }
    with start_stack(directory, temporal_server, journeys, env=env, scale=True) as running:
        yield running


def test_two_workers_and_two_apis_take_a_mixed_load_with_a_worker_killed(
    stack: JourneysStack, smtp: SmtpServer, gateway: HttpEndpoint
) -> None:
    assert len(stack.workers) == 2 and len(stack.apis) == 2
    db = make_engine(stack.database_url)
    apis = [
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60.0)
        for url in stack.api_urls
    ]
    try:
        load = Load(prefix=f"scale-{uuid.uuid4().hex[:6]}")
        _identify_everyone(apis, load)
        tracks = _track_events(load)
        half = len(tracks) // 2

        _post_all(apis, load, tracks[:half])
        killed, survivor = stack.workers
        killed.kill()  # SIGKILL mid-load: runs in flight on it move to the other worker
        assert killed.process.returncode == -9
        _post_all(apis, load, tracks[half:])

        _decide_every_case_once(apis, db, load)
        _wait_for_every_run(db, load)

        assert survivor.running(), survivor.describe()
        _assert_runs_taken_over(stack, db, load, killed, survivor)
        _assert_events_stored_once_and_routed(db, load)
        _assert_runs_ended(db, load)
        _assert_messages_once_beyond_the_window(db, load, smtp, gateway)
        _assert_cap_held(db, load, gateway)
        _assert_reviews_decided_once(db, stack, load, smtp)
        _assert_no_race_in_the_logs([*stack.apis, survivor])
    finally:
        for client in apis:
            client.close()
        db.dispose()


# ----------------------------------------------------------------------------- the load


def _identify_everyone(apis: list[httpx.Client], load: Load) -> None:
    """Every customer with an email, a phone and UTC (no quiet hours), in batches spread
    over both API processes."""
    messages = []
    for index in range(CUSTOMERS):
        message_id = f"{load.customer(index)}-identify"
        load.message_ids.add(message_id)
        messages.append(
            {
                "type": "identify",
                "userId": load.customer(index),
                "messageId": message_id,
                "traits": {
                    "email": load.email(index),
                    "phone": load.phone(index),
                    "timezone": "UTC",
                },
            }
        )
    for number, start in enumerate(range(0, len(messages), 50)):
        answer = apis[number % 2].post("/v1/batch", json={"batch": messages[start : start + 50]})
        assert answer.status_code == 202, answer.text
        assert answer.json()["duplicates"] == 0


def _track_events(load: Load) -> list[dict[str, Any]]:
    """Orders for everyone, four promotions for some, a review case for a few: shuffled."""
    events: list[dict[str, Any]] = []

    def track(index: int, name: str, key: str, value: str) -> None:
        message_id = f"{load.customer(index)}-{value}"
        events.append(
            {
                "type": "track",
                "event": name,
                "userId": load.customer(index),
                "messageId": message_id,
                "properties": {key: value},
            }
        )

    for index in range(CUSTOMERS):
        track(index, "order_placed", "order_id", f"order-{index}")
    for index in range(PROMO_CUSTOMERS):
        for promo in range(PROMOS_EACH):
            track(index, "promo_seen", "promo_id", f"promo-{index}-{promo}")
    for index in range(CASES):
        track(CUSTOMERS - 1 - index, "case_opened", "case_id", f"case-{index}")
    random.Random(20).shuffle(events)
    return events


def _post_all(apis: list[httpx.Client], load: Load, events: list[dict[str, Any]]) -> None:
    """POST each event to one API process, at most SENDERS at a time; every tenth also to
    the other one (half of those afterwards, half at the same moment)."""

    def post(client: httpx.Client, event: dict[str, Any]) -> dict[str, Any]:
        answer = client.post("/v1/track", json=event)
        assert answer.status_code == 202, f"{answer.status_code} {answer.text}"
        body: dict[str, Any] = answer.json()
        # "deferred": stored, and routed by the background loop (checked at the end).
        assert body["routing"] in ("done", "deferred"), body
        if body["routing"] == "deferred":
            load.deferred += 1
        return body

    def deliver(number: int, event: dict[str, Any]) -> None:
        first, other = apis[number % 2], apis[(number + 1) % 2]
        if number % DUPLICATE_EVERY == 0:
            answers = [post(first, event), post(other, event)]
        elif number % DUPLICATE_EVERY == 5:
            with ThreadPoolExecutor(max_workers=2) as both:
                answers = list(both.map(post, [first, other], [event, event]))
        else:
            answers = [post(first, event)]
        for answer in answers:
            assert answer["accepted"] + answer["duplicates"] == 1, answer
        if len(answers) == 2:
            load.duplicate_answers.append(
                (sum(a["accepted"] for a in answers), sum(a["duplicates"] for a in answers))
            )

    for event in events:
        load.message_ids.add(event["messageId"])
    with ThreadPoolExecutor(max_workers=SENDERS) as senders:
        for done in [senders.submit(deliver, n, e) for n, e in enumerate(events)]:
            done.result(timeout=LOAD_TIMEOUT)


def _decide_every_case_once(apis: list[httpx.Client], db: Engine, load: Load) -> None:
    """Once every case is open: CLICKS approvals of each at once, half to each API."""
    first = add_user(db, name=REVIEWER, role="ops")
    user = check_password(db, name=REVIEWER, password=first)
    assert user is not None and user.id is not None
    change_password(db, user_id=user.id, current=first, new=PASSWORD)
    token = base64.b64encode(f"{REVIEWER}:{PASSWORD}".encode()).decode()
    person = {"Authorization": f"Basic {token}"}

    tasks: list[ReviewTask] = eventually(
        lambda: _rows(
            db,
            select(ReviewTask).where(
                ReviewTask.status == "open", col(ReviewTask.customer_id).startswith(load.prefix)
            ),
        ),
        check=lambda open_tasks: len(open_tasks) == CASES,
        timeout=LOAD_TIMEOUT,
        interval=1.0,
        what=f"{CASES} review tasks open",
    )
    clicks = [(task.id, apis[click % 2]) for task in tasks for click in range(CLICKS)]

    def click(task_id: str, client: httpx.Client) -> tuple[str, int]:
        answer = client.post(
            f"/v1/reviews/{task_id}/decision",
            json={"decision": "approve", "note": "fine"},
            headers=person,
        )
        return task_id, answer.status_code

    with ThreadPoolExecutor(max_workers=SENDERS) as clickers:
        answers = list(clickers.map(lambda pair: click(*pair), clicks))
    by_task: dict[str, list[int]] = {}
    for task_id, status in answers:
        by_task.setdefault(task_id, []).append(status)
    assert {task: sorted(codes) for task, codes in by_task.items()} == {
        task.id: [200] + [409] * (CLICKS - 1) for task in tasks
    }


def _wait_for_every_run(db: Engine, load: Load) -> None:
    expected = CUSTOMERS + PROMO_CUSTOMERS * PROMOS_EACH + CASES

    def runs() -> Counter[str]:
        rows = _rows(db, select(Run).where(col(Run.customer_id).startswith(load.prefix)))
        return Counter(row.status for row in rows)

    eventually(
        runs,
        check=lambda statuses: statuses.total() == expected and statuses["running"] == 0,
        timeout=LOAD_TIMEOUT,
        interval=2.0,
        what=f"all {expected} runs ended",
    )


# ----------------------------------------------------------------------------- what a user sees


def _assert_runs_taken_over(
    stack: JourneysStack, db: Engine, load: Load, killed: ChildProcess, survivor: ChildProcess
) -> None:
    """Both workers did work, and runs the killed worker had begun were finished by the
    other: their histories hold workflow tasks completed by each (identity pid@host)."""
    receipts = _rows(
        db,
        select(Run.workflow_id).where(
            col(Run.customer_id).startswith(load.prefix), Run.journey_id == "receipts"
        ),
    )

    async def identities() -> list[set[int]]:
        client = await Client.connect(stack.temporal.address)
        limit = asyncio.Semaphore(8)

        async def pids(workflow_id: str) -> set[int]:
            async with limit:
                history = await client.get_workflow_handle(workflow_id).fetch_history()
            return {
                int(event.workflow_task_completed_event_attributes.identity.split("@")[0])
                for event in history.events
                if event.HasField("workflow_task_completed_event_attributes")
            }

        return list(await asyncio.gather(*(pids(workflow_id) for workflow_id in receipts)))

    workers = asyncio.run(identities())
    assert {pid for pids in workers for pid in pids} == {killed.pid, survivor.pid}
    taken_over = sum(1 for pids in workers if pids == {killed.pid, survivor.pid})
    assert taken_over >= 1, "no run begun on the killed worker was finished by the other"
    print(f"\nscale-out: {taken_over} of {len(workers)} order runs taken over after the kill")


def _assert_events_stored_once_and_routed(db: Engine, load: Load) -> None:
    """Every message id stored once (the primary key) and routed; each duplicate POST
    accepted by one API process and answered "duplicate" by the other."""
    assert load.duplicate_answers, "no event was delivered twice"
    assert set(load.duplicate_answers) == {(1, 1)}, Counter(load.duplicate_answers)

    def stored() -> list[EventRecord]:
        query = select(EventRecord).where(col(EventRecord.customer_id).startswith(load.prefix))
        return _rows(db, query)

    events = eventually(
        stored,
        check=lambda rows: all(row.routed for row in rows),
        timeout=LOAD_TIMEOUT,
        what="every stored event routed",
    )
    assert sorted(row.message_id for row in events) == sorted(load.message_ids)
    print(
        f"\nscale-out: {len(events)} events stored, {len(load.duplicate_answers)} delivered "
        f"twice; {load.deferred} answers left routing to the background loop"
    )


def _assert_runs_ended(db: Engine, load: Load) -> None:
    rows = _rows(db, select(Run).where(col(Run.customer_id).startswith(load.prefix)))
    ends = Counter((row.journey_id, row.status, row.outcome) for row in rows)
    assert ends == {
        ("receipts", "completed", "thanked"): CUSTOMERS,
        ("promos", "completed", "promoted"): PROMO_CUSTOMERS * PROMOS_EACH,
        ("cases", "completed", "approved"): CASES,
    }
    # One run per triggering event: no duplicate delivery started a second one.
    triggers = Counter(row.trigger_message_id for row in rows)
    assert max(triggers.values()) == 1


def _assert_messages_once_beyond_the_window(
    db: Engine, load: Load, smtp: SmtpServer, gateway: HttpEndpoint
) -> None:
    """Each message arrived once, or as many times as its delivery row counts provider
    calls (a retry after the killed worker had handed the message over: the window)."""
    deliveries = _rows(
        db, select(Delivery).where(col(Delivery.customer_id).startswith(load.prefix))
    )
    sent = [row for row in deliveries if row.status == "sent"]
    attempts = {(row.customer_id, row.run_id, row.step_id): row.attempts for row in sent}
    assert len(attempts) == len(sent)

    customer_of_email = {load.email(i): load.customer(i) for i in range(CUSTOMERS)}
    customer_of_phone = {load.phone(i): load.customer(i) for i in range(CUSTOMERS)}
    received = Counter(
        (customer_of_email[str(mail["To"])], str(mail["Subject"])) for mail in smtp.mailbox.messages
    )
    texts = Counter(
        (customer_of_phone[r.json()["params"]["to"]], r.json()["params"]["message"])
        for r in gateway.requests
    )
    # What each customer should have: two emails per order, one per approved case.
    expected_emails = {
        (load.customer(i), f"{step} order-{i}")
        for i in range(CUSTOMERS)
        for step in ("receipt", "thanks")
    } | {(load.customer(CUSTOMERS - 1 - i), f"approved_email case-{i}") for i in range(CASES)}
    assert set(received) == expected_emails
    emails_sent = sum(1 for row in sent if row.channel == "email")
    assert emails_sent == len(expected_emails)
    assert sum(1 for row in sent if row.channel == "sms") == len(texts)

    # Where more than one copy arrived, the delivery row shows the retried provider call.
    allowed_copies = Counter[tuple[str, str]]()
    for row in sent:
        allowed_copies[(row.customer_id, row.channel or "")] += row.attempts
    copies = Counter[tuple[str, str]]()
    for (customer, _), count in received.items():
        copies[(customer, "email")] += count
    for (customer, _), count in texts.items():
        copies[(customer, "sms")] += count
    for key, count in copies.items():
        assert count <= allowed_copies[key], (key, count, allowed_copies[key])
    repeated = {key: n for key, n in (received + texts).items() if n > 1}
    retried = [row for row in sent if row.attempts > 1]
    assert len(repeated) <= len(retried), (repeated, retried)
    print(
        f"\nscale-out: {len(sent)} messages sent; {len(retried)} retried after the kill; "
        f"{len(repeated)} arrived twice (the documented window)"
    )


def _assert_cap_held(db: Engine, load: Load, gateway: HttpEndpoint) -> None:
    """Four promotions at once per customer, on both workers: exactly two SMS, two slots."""
    promos_by_phone = Counter[str]()
    distinct = {(r.json()["params"]["to"], r.json()["params"]["message"]) for r in gateway.requests}
    for phone, _ in distinct:
        promos_by_phone[phone] += 1
    assert promos_by_phone == {load.phone(i): CAP for i in range(PROMO_CUSTOMERS)}

    with session_scope(db) as session:
        slots = session.exec(
            select(CapReservation.customer_id, func.count())
            .where(col(CapReservation.customer_id).startswith(load.prefix))
            .group_by(col(CapReservation.customer_id))
        ).all()
    assert dict(slots) == {load.customer(i): CAP for i in range(PROMO_CUSTOMERS)}


def _assert_reviews_decided_once(
    db: Engine, stack: JourneysStack, load: Load, smtp: SmtpServer
) -> None:
    tasks = _rows(db, select(ReviewTask).where(col(ReviewTask.customer_id).startswith(load.prefix)))
    assert len(tasks) == CASES
    assert {(t.status, t.decision, t.reviewer) for t in tasks} == {("decided", "approve", REVIEWER)}
    audit = _rows(
        db, select(ReviewAudit).where(col(ReviewAudit.task_id).in_([t.id for t in tasks]))
    )
    outcomes = Counter((row.task_id, row.action, row.outcome) for row in audit)
    for task in tasks:
        assert outcomes[(task.id, "decide", "done")] == 1
        assert outcomes[(task.id, "decide", "refused")] == CLICKS - 1
        detail = stack.get(f"/v1/runs/{task.run_id}")
        review = [entry["outcome"] for entry in detail["path"] if entry["step"] == "check"]
        assert review == ["opened", "approve"], detail["path"]
        assert [entry["step"] for entry in detail["path"]][-2:] == ["approved_email", "end"]


def _assert_no_race_in_the_logs(children: list[ChildProcess]) -> None:
    """No process of the shared database lost a race to another: no unique-key clash (the
    first scale run found one: "routing deferred: IntegrityError") and no traceback."""
    for child in children:
        text = child.log.read_text(encoding="utf-8", errors="replace")
        for sign in ("IntegrityError", "UniqueViolation", "deadlock detected", "Traceback"):
            assert sign not in text, f"{sign} in {child.name}'s log:\n{child.output()}"


def _rows(db: Engine, query: Any) -> list[Any]:
    with session_scope(db) as session:
        return list(session.exec(query).all())
