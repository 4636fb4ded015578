"""The console's case page as a reviewer reads it (issue #16): claim first, where each
decision leads, the rule that sent the case here as written, one way to write a score,
features that took a default marked, the customer by name with personal traits left out,
local times, no Python words; plus the favicon and the password page's confirmation and
server-side minimum.

Against real runs: the real interpreter on the dev server opens the review task.
"""

from __future__ import annotations

import asyncio
import html
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
import pytest_asyncio
from sqlalchemy.engine import Engine
from sqlmodel import select
from temporalio.client import Client

from engine.database import ReviewAudit, ReviewTask, session_scope, upsert_profile
from engine.payloads import WORKFLOW_NAME, EventMessage, JourneyRunInput, RunState
from engine.plan import Plan
from service.api.app import create_app
from service.users import check_password
from tests.api.conftest import RunningApi, api_settings, running_api
from tests.api.test_reviews_api import PASSWORD, SECRET, form_token, make_user, sign_in
from tests.database import deploy
from worker import build_worker

pytestmark = pytest.mark.asyncio(loop_scope="session")

JOURNEYS = """
version: 1
settings: {timezone: Asia/Seoul}
events:
  payment_failed: {amount: number}
profile:
  legal_name: pii
  national_id: secret
channels: {sms: "${JOURNEYS_SMS_URL}", email: "${JOURNEYS_EMAIL_URL}"}
models:
  default_risk: {kind: python, function: "risk_models.default_risk:predict", fallback: 0.5}
templates:
  offer: {sms: "We can move your due date."}
  reminder: {email: {subject: "Still open", text: "Your payment is still open."}}
journeys:
  - id: recovery
    entry: {event: payment_failed}
    steps:
      - id: risk
        score: default_risk
        features:
          amount: event.amount
          days_past_due: 30
          failed_payments_90d: coalesce(profile.failed_payments_90d, 0)
          tenure_months: coalesce(profile.tenure_months, 0)
      - id: route
        branch:
          - {when: scores.default_risk.fallback_used, goto: ops_review}
          - {when: scores.default_risk.score >= 0.7, goto: ops_review}
        else: offer
      - id: ops_review
        review: collections
        title: "Grace offer for {{ customer.id }}: risk {{ scores.default_risk.score | round(2) }}"
        details: "Default-risk score {{ scores.default_risk.score | round(2) }}."
        decisions: {approve: morning, reject: reminder}
        sla: 4h
        on_timeout: reminder
      - {id: morning, wait: {until: "09:00"}}
      - {id: offer, send: offer, channel: sms}
      - {id: offered, exit: offered}
      - {id: reminder, send: reminder, channel: email}
      - {id: final_wait, wait: 4d}
      - {id: handed_over, exit: handed_to_collections}
"""

TRAITS = {
    "first_name": "Mina",
    "last_name": "Park",
    "phone": "+821055501234",
    "date_of_birth": "1990-04-01",
    "legal_name": "Park Mina-Legal",
    "national_id": "900401-1234567",
    "failed_payments_90d": 3,
    "email_opt_out": False,
    "timezone": "Asia/Seoul",
}


class Desk:
    def __init__(self, api: RunningApi, db: Engine, client: Client, queue: str, plan: Plan):
        self.api, self.db, self.client, self.task_queue, self.plan = api, db, client, queue, plan

    @property
    def http(self) -> httpx.AsyncClient:
        return self.api.http

    async def open_case(self) -> ReviewTask:
        customer = f"c-{uuid.uuid4().hex[:8]}"
        with session_scope(self.db) as session:
            upsert_profile(session, customer_id=customer, traits=dict(TRAITS))
        trigger = EventMessage(
            name="payment_failed",
            customer_id=customer,
            message_id=uuid.uuid4().hex,
            timestamp=datetime.now(UTC),
            properties={"amount": 900000},
        )
        await self.client.start_workflow(
            WORKFLOW_NAME,
            JourneyRunInput(plan=self.plan, customer_id=customer, trigger=trigger),
            id=f"journey/recovery/{customer}",
            task_queue=self.task_queue,
            result_type=RunState,
        )
        for _ in range(200):
            with session_scope(self.db) as session:
                task = session.exec(
                    select(ReviewTask).where(ReviewTask.customer_id == customer)
                ).first()
            if task is not None:
                return task
            await asyncio.sleep(0.05)
        raise AssertionError("the run opened no review task")

    async def page(self, task: ReviewTask) -> httpx.Response:
        answer = await self.http.get(f"/console/reviews/{task.id}")
        assert answer.status_code == 200, answer.text
        return answer


@pytest_asyncio.fixture
async def desk(
    database_url: str, task_queue: str, temporal_client: Client, db: Engine
) -> AsyncIterator[Desk]:
    plans = deploy(db, JOURNEYS)
    for name, role in (("ana", "ops"), ("bob", "ops"), ("aud", "auditor")):
        make_user(db, name, role)
    settings = api_settings(database_url=database_url, task_queue=task_queue).model_copy(
        update={"secret_key": SECRET}
    )
    async with (
        build_worker(temporal_client, db=db, task_queue=task_queue, workflow_sandbox=True),
        running_api(create_app(settings, client=temporal_client)) as api,
    ):
        yield Desk(api, db, temporal_client, task_queue, plans["recovery"])


def text_of(page: httpx.Response) -> str:
    """The page's text as a person reads it: tags dropped, spaces collapsed."""
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", page.text, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)).strip())


def element(page: httpx.Response, pattern: str) -> str:
    found = re.search(pattern, page.text, flags=re.S)
    assert found is not None, pattern
    return found.group(0)


def buttons(page: httpx.Response) -> dict[str, str]:
    """Each decision button's tag, by decision."""
    return {
        m.group(1): m.group(0)
        for m in re.finditer(r'<button[^>]*name="decision" value="([^"]+)"[^>]*>', page.text)
    }


async def claim(desk: Desk, task: ReviewTask, page: httpx.Response) -> httpx.Response:
    answer = await desk.http.post(
        f"/console/reviews/{task.id}/claim", data={"csrf": form_token(page)}
    )
    assert answer.status_code == 303, answer.text
    return await desk.page(task)


async def test_the_decisions_wait_for_the_claim_which_comes_first(desk: Desk) -> None:
    task = await desk.open_case()
    await sign_in(desk.http, "ana")
    page = await desk.page(task)
    shown = buttons(page)
    assert set(shown) == {"approve", "reject"}
    assert all("disabled" in tag for tag in shown.values())
    assert "Claim this case to decide it" in text_of(page)
    assert page.text.index('id="claim"') < page.text.index('value="approve"')  # above them
    assert "open, not claimed" in element(page, r'id="status">[^<]*')
    # A decision posted without the claim (a stale page, a script) is refused.
    refused = await desk.http.post(
        f"/console/reviews/{task.id}/decide",
        data={"decision": "approve", "note": "ok", "csrf": form_token(page)},
    )
    assert refused.status_code == 409 and "claim this case first" in refused.text

    page = await claim(desk, task, page)
    assert not any("disabled" in tag for tag in buttons(page).values())
    assert "claimed by you" in element(page, r'id="status">[^<]*')
    assert "Claim this case to decide it" not in text_of(page)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=desk.api.app), base_url="http://api.test"
    ) as bob:
        await sign_in(bob, "bob")
        theirs = await bob.get(f"/console/reviews/{task.id}")
        assert "claimed by ana" in element(theirs, r'id="status">[^<]*')

    answer = await desk.http.post(
        f"/console/reviews/{task.id}/decide",
        data={"decision": "approve", "note": "fine", "csrf": form_token(page)},
    )
    assert answer.status_code == 303, answer.text
    done = await desk.http.get(answer.headers["location"])
    words = text_of(done)
    assert "Decided approve by ana" in words
    assert "decided" in element(done, r'id="status">[^<]*')
    assert "SLA" not in words  # an SLA means nothing once decided
    with session_scope(desk.db) as session:
        audit = [(a.actor, a.action, a.outcome) for a in session.exec(select(ReviewAudit)).all()]
    assert ("ana", "decide", "refused") in audit and ("ana", "decide", "done") in audit


async def test_each_decision_says_where_it_leads(desk: Desk) -> None:
    task = await desk.open_case()
    await sign_in(desk.http, "ana")
    words = text_of(await desk.page(task))
    assert "Approve → wait until 09:00 (customer's time), then SMS offer, then end: offered" in (
        words
    )
    assert "Reject → email reminder, then wait 4 days, then end: handed_to_collections" in words


async def test_the_rule_is_shown_as_written_with_the_values_it_read(desk: Desk) -> None:
    task = await desk.open_case()
    path = (task.case or {})["path"]
    [branch] = [entry for entry in path if entry["type"] == "branch"]
    assert branch["detail"]["rule"] == 1  # the data: the second rule, counted from 0
    await sign_in(desk.http, "ana")
    words = text_of(await desk.page(task))
    assert "Branch route went to ops_review by rule 1: scores.default_risk.score >= 0.7" in (words)
    assert "Rules are numbered from 0, as the run's path records them; this step has 2" in words
    assert "scores.default_risk.score 0.998" in words  # what it read, written as a score
    assert "scores.default_risk.fallback_used no" in words


async def test_a_score_is_written_one_way_everywhere(desk: Desk) -> None:
    task = await desk.open_case()
    score = (task.case or {})["scores"]["default_risk"]["score"]
    assert score == pytest.approx(0.9986)  # the model's answer; round(2) makes it 1.0
    assert "risk 1.0" in task.title
    await sign_in(desk.http, "ana")
    page = await desk.page(task)
    words = text_of(page)
    assert f"Grace offer for {task.customer_id}: risk 0.998" in words  # the title, restated
    assert "Default-risk score 0.998." in words  # the details too
    assert "scored 0.998" in words
    numbers = set(re.findall(r"\b0\.\d+\b", words))
    assert numbers == {"0.998", "0.7"}, numbers  # the score, and the rule's own 0.7
    assert "1.0" not in words and "0.9986" not in words

    queue = await desk.http.get("/console/reviews")
    cell = re.search(r'<span class="risk [a-z]+">([^<]*)</span>', queue.text)
    assert cell is not None and cell.group(1) == "0.998", queue.text  # the queue says it too


async def test_features_that_took_their_default_are_marked(desk: Desk) -> None:
    task = await desk.open_case()
    [scored] = [entry for entry in (task.case or {})["path"] if entry["type"] == "score"]
    assert scored["detail"]["defaulted"] == ["tenure_months"]  # the run recorded it
    await sign_in(desk.http, "ana")
    page = await desk.page(task)
    words = text_of(page)
    assert "tenure_months not known (default 0)" in words
    assert "failed_payments_90d 3" in words  # a trait the profile has is a real value
    assert 'data-defaulted="tenure_months"' in page.text


async def test_the_customer_card_names_the_customer_and_hides_personal_traits(
    desk: Desk,
) -> None:
    task = await desk.open_case()
    await sign_in(desk.http, "ana")
    page = await desk.page(task)
    card = text_of(httpx.Response(200, text=element(page, r'id="customer">.*?</div>')))
    assert "Mina Park" in card
    assert "Failed payments 90d 3" in card and "Email opt out no" in card
    assert "+82******1234" in card  # the phone masked
    assert "3 personal traits not shown" in card  # date of birth, legal name, national id
    for secret in ("1990-04-01", "Park Mina-Legal", "900401-1234567", "+821055501234"):
        assert secret not in page.text
    assert "date_of_birth" not in page.text and "failed_payments_90d 3" not in card


async def test_times_are_local_and_relative_and_no_python_words_show(desk: Desk) -> None:
    task = await desk.open_case()
    await sign_in(desk.http, "ana")
    page = await desk.page(task)
    words = text_of(page)
    assert re.search(r"opened (just now|\d+ min ago), \d\d:\d\d KST", words), words
    assert re.search(r"SLA due in 3 h \d+ min, \d\d:\d\d KST", words), words
    assert "Times on this page are the customer's (Asia/Seoul)" in words
    for python in ("False", "True", "None"):
        assert not re.search(rf"\b{python}\b", words), python
    assert "UTC" not in words


async def test_every_console_page_links_a_favicon_that_is_served(desk: Desk) -> None:
    login = await desk.http.get("/console/login")
    [icon] = re.findall(r'<link rel="icon"[^>]*href="([^"]+)"', login.text)
    answer = await desk.http.get(icon)
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/svg+xml"
    assert answer.text.startswith("<svg")
    assert answer.headers["x-content-type-options"] == "nosniff"


async def test_a_changed_password_is_confirmed_and_a_short_one_refused_by_the_server(
    desk: Desk,
) -> None:
    await sign_in(desk.http, "ana")
    page = await desk.http.get("/console/password")
    short = await desk.http.post(
        "/console/password",
        data={"current": PASSWORD, "new": "short-1", "repeat": "short-1", "csrf": form_token(page)},
    )
    assert short.status_code == 422
    assert "too short: it needs at least 10 characters (this one has 7)" in short.text
    assert check_password(desk.db, name="ana", password=PASSWORD) is not None
    changed = await desk.http.post(
        "/console/password",
        data={
            "current": PASSWORD,
            "new": "a-newer-password",
            "repeat": "a-newer-password",
            "csrf": form_token(page),
        },
    )
    assert changed.status_code == 303
    confirmed = await desk.http.get(changed.headers["location"])
    assert confirmed.url.path == "/console/reviews"
    assert "Your password was changed" in text_of(confirmed)
    # The confirmation is the console's own text: the query only picks it.
    forged = await desk.http.get("/console/reviews?notice=<b>you won</b>")
    assert "you won" not in forged.text
    assert check_password(desk.db, name="ana", password="a-newer-password") is not None
