"""The console's journeys list and template preview over HTTP: the active journeys with
the templates their sends use, linked from the navigation for designers and admins only;
a template's preview form (a POST with the session's CSRF token) and each channel's
rendering, the email's HTML escaped into a sandboxed iframe's srcdoc under the console's
unchanged security policy."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import pytest
from sqlalchemy.engine import Engine
from temporalio.client import Client

from engine.catalog import build_catalog_from_text
from engine.deploy import deploy_catalog
from service.api.app import create_app
from service.api.middleware import CONTENT_SECURITY_POLICY
from service.users import add_user, change_password, check_password
from tests.api.conftest import api_settings, running_api

pytestmark = pytest.mark.asyncio(loop_scope="session")

PASSWORD = "a-good-long-password"

CATALOGUE = """\
version: 1
events:
  payment_failed: {amount: number, currency: string}
channels:
  sms: "${JOURNEYS_SMS_URL}"
  email: "${JOURNEYS_EMAIL_URL}"
templates:
  offer:
    sms: "Hi {{ profile.first_name }}, {{ event.amount | money(event.currency) }} is due."
    email:
      subject: "About {{ event.amount | money(event.currency) }}"
      html: "<p class=\\"x\\">Hi {{ profile.first_name }} & \\"friends\\"</p><script>alert(1)</script>"
      text: "Hi {{ profile.first_name }}"
journeys:
  - id: payment_recovery
    name: Payment failure recovery
    entry: {event: payment_failed}
    steps:
      - {id: grace_sms, send: offer, channel: sms}
      - {id: mail, send: offer, channel: email}
"""

PREVIEW = "/console/journeys/payment_recovery/templates/offer/preview"


def deploy(db: Engine) -> None:
    catalog = build_catalog_from_text(CATALOGUE, file="journeys.yaml")
    assert catalog.ok, [v.format() for v in catalog.violations]
    deploy_catalog(catalog, engine=db, source_text=CATALOGUE)


@asynccontextmanager
async def signed_in(database_url: str, db: Engine, role: str) -> AsyncIterator[httpx.AsyncClient]:
    name = f"user-{role}"
    first = add_user(db, name=name, role=role)
    user = check_password(db, name=name, password=first)
    assert user is not None and user.id is not None
    change_password(db, user_id=user.id, current=first, new=PASSWORD)
    settings = api_settings(database_url=database_url, task_queue="unused").model_copy(
        update={"secret_key": "console-secret-for-tests"}
    )
    async with running_api(create_app(settings, client=cast(Client, None))) as running:
        page = await running.http.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        answer = await running.http.post(
            "/console/login", data={"name": name, "password": PASSWORD, "csrf": csrf.group(1)}
        )
        assert answer.status_code == 303
        yield running.http


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def text_of(page: httpx.Response) -> str:
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", page.text, flags=re.S)
    body = re.sub(r"<[^>]+>", " ", body)
    return re.sub(r"\s+", " ", html.unescape(body)).strip()


async def test_a_designer_finds_the_journeys_templates_from_the_navigation(
    database_url: str, db: Engine
) -> None:
    deploy(db)
    async with signed_in(database_url, db, "designer") as http:
        page = await http.get("/console/runs")
        assert '<a href="/console/journeys"' in page.text
        journeys = await http.get("/console/journeys")
        assert journeys.status_code == 200
        assert "payment_recovery" in journeys.text and "Payment failure recovery" in journeys.text
        assert f'href="{PREVIEW}"' in journeys.text


async def test_the_preview_renders_every_channel(database_url: str, db: Engine) -> None:
    deploy(db)
    async with signed_in(database_url, db, "designer") as http:
        form = await http.get(PREVIEW)
        assert form.status_code == 200
        assert 'method="post"' in form.text and "data-channel" not in form.text
        answer = await http.post(
            PREVIEW,
            data={
                "profile": "first_name=Minji\n# a comment\n",
                "event": "amount=25000\ncurrency=KRW",
                "variables": "",
                "csrf": csrf_of(form),
            },
        )
        assert answer.status_code == 200, answer.text
        shown = text_of(answer)
        assert "Subject About ₩25,000" in shown
        assert "Hi Minji, ₩25,000 is due." in shown
        assert "Segments 1 (UCS-2, 25 characters)" in shown
        # The HTML part: escaped into srcdoc (no quote or tag of it breaks out), sandboxed.
        frame = re.search(r"<iframe [^>]*>", answer.text)
        assert frame is not None
        tag = frame.group(0)
        assert 'sandbox=""' in tag
        srcdoc = re.search(r'srcdoc="([^"]*)"', tag)
        assert srcdoc is not None
        assert html.unescape(srcdoc.group(1)) == (
            '<p class="x">Hi Minji & "friends"</p><script>alert(1)</script>'
        )
        assert "<script>alert(1)" not in answer.text
        # The console's policy is the one every page has.
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert answer.headers["x-frame-options"] == "DENY"


async def test_a_missing_value_and_a_bad_line_are_said(database_url: str, db: Engine) -> None:
    deploy(db)
    async with signed_in(database_url, db, "admin") as http:
        form = await http.get(PREVIEW)
        missing = await http.post(
            PREVIEW,
            data={"profile": "", "event": "amount=1\ncurrency=KRW", "csrf": csrf_of(form)},
        )
        assert missing.status_code == 200
        assert "sms: template needs profile.first_name, which is missing (sms, line 1)" in (
            text_of(missing)
        )
        bad = await http.post(
            PREVIEW, data={"profile": "first_name", "event": "", "csrf": csrf_of(form)}
        )
        assert bad.status_code == 422
        assert "profile line 1: 'first_name' is not NAME=VALUE" in text_of(bad)
        # What was typed stays in the form.
        assert ">first_name</textarea>" in bad.text


async def test_the_form_needs_the_sessions_csrf_token(database_url: str, db: Engine) -> None:
    deploy(db)
    async with signed_in(database_url, db, "designer") as http:
        answer = await http.post(PREVIEW, data={"profile": "first_name=A", "csrf": "forged"})
        assert answer.status_code == 403
        assert "data-channel" not in answer.text


@pytest.mark.parametrize("role", ["ops", "supervisor", "auditor"])
async def test_other_roles_neither_see_nor_open_the_pages(
    database_url: str, db: Engine, role: str
) -> None:
    deploy(db)
    async with signed_in(database_url, db, role) as http:
        page = await http.get("/console/runs")
        assert 'href="/console/journeys"' not in page.text
        for path in ("/console/journeys", PREVIEW):
            refused = await http.get(path)
            assert refused.status_code == 403
        form = await http.get("/console/runs")
        posted = await http.post(PREVIEW, data={"csrf": csrf_of(form)})
        assert posted.status_code == 403


async def test_signed_out_goes_to_sign_in_and_unknown_names_are_404(
    database_url: str, db: Engine
) -> None:
    deploy(db)
    settings = api_settings(database_url=database_url, task_queue="unused").model_copy(
        update={"secret_key": "console-secret-for-tests"}
    )
    async with running_api(create_app(settings, client=cast(Any, None))) as running:
        answer = await running.http.get(PREVIEW)
        assert answer.status_code == 303 and "/console/login" in answer.headers["location"]
    async with signed_in(database_url, db, "designer") as http:
        assert (await http.get("/console/journeys/nope/templates/offer/preview")).status_code == 404
        unknown = await http.get("/console/journeys/payment_recovery/templates/nope/preview")
        assert unknown.status_code == 404
