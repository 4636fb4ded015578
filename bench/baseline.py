"""The baseline for bench/throughput.py: the bench journeys hand-written as plain Temporal
workflows, with no interpreter, no plan, no decision records and no runs table.

Each workflow calls the same activities as the engine's run of the matching journey in
bench/journeys.yaml (``send_message``, and ``score_customer``: the model call the engine's
``score_step`` makes, `activities.scoring.score`, registered here as the baseline's own
activity; the same timeouts and retry policies) with equivalent inputs, and makes its
decisions in plain Python inside the workflow. The starter (bench/throughput.py) reads the customer's
profile and passes it in, as a hand-written integration would.

`python -m bench.baseline` runs a worker for these workflows, configured from the
environment like `worker.py` (TEMPORAL_ADDRESS, DATABASE_URL, TEMPORAL_TASK_QUEUE), with
`worker.build_worker`'s settings (captured from its call to `Worker`, so they cannot
drift): cache size, pollers, concurrency limits, the activity thread pool.

Only cheap definitions live at module level: the workflow sandbox re-imports this module
for every run (the engine's workflow module is re-imported the same way).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from sqlalchemy.engine import Engine
    from temporalio.client import Client
    from temporalio.worker import Worker

    import worker as engine_worker
    from activities import scoring
    from activities.messaging import MessagingActivities
    from engine.database import make_engine
    from engine.errors import ErrorType
    from engine.payloads import (
        ActivityName,
        CustomerContext,
        EventMessage,
        ScoreInput,
        ScoreResult,
        SendMessageInput,
        SendMessageResult,
    )
    from engine.settings import RuntimeSettings
    from runtime.temporal import connect

__all__ = [
    "CHANNELS",
    "MODELS",
    "TEMPLATES",
    "WORKFLOWS",
    "BaselineCartWorkflow",
    "BaselineLoginWorkflow",
    "BaselinePaymentWorkflow",
    "BaselineWaitWorkflow",
    "BaselineWelcomeWorkflow",
    "build_baseline_worker",
    "engine_worker_settings",
    "main",
]

log = logging.getLogger("journeys.bench.baseline")

# The templates and model of bench/journeys.yaml, in the compiled form the send and score
# activities take. bench/throughput.py refuses to run when they differ from the plans'.
TEMPLATES: dict[str, dict[str, str]] = {
    "cart_reminder": {
        "email.subject": "You left {{ event.items }} items in your cart",
        "email.text": "Hi {{ profile.first_name | default('there') }}, "
        "your {{ event.items }} items are waiting.",
        "push.body": "Your cart of {{ event.items }} items is saved.",
        "push.title": "Still thinking it over?",
    },
    "grace_offer": {
        "sms": "{{ profile.first_name | default('Hello') }}, we can move your due date to "
        "{{ vars.new_due }}. Reply YES to accept.",
    },
    "payment_reminder": {
        "email.subject": "Your payment of {{ event.amount | money(event.currency) }} is still open",
        "email.text": "Hi {{ profile.first_name | default('there') }}, "
        "your payment did not go through.",
    },
    "welcome": {
        "email.subject": "Welcome aboard, {{ profile.first_name | default('there') }}",
        "email.text": "Hi {{ profile.first_name | default('there') }}, "
        "your {{ event.plan }} plan is ready.",
    },
    "capacity_nudge": {
        "email.subject": "Still there?",
        "email.text": "Hi {{ profile.first_name | default('there') }}, a week has passed.",
    },
    "login_alert": {
        "email.subject": "Failed sign-ins to your account",
        "email.text": "Someone tried to sign in from {{ event.ip }} ({{ event.device }}).",
        "push.body": "Failed sign-ins to your account just now from {{ event.ip }}.",
        "push.title": "Was this you?",
    },
}
MODELS: dict[str, dict[str, Any]] = {
    "default_risk": {
        "timeout": "2s",
        "fallback": 0.5,
        "range": [0.0, 1.0],
        "features": None,
        "example": None,
        "version": None,
        "kind": "python",
        "function": "risk_models.default_risk:predict",
    },
}
CHANNELS: dict[str, dict[str, Any]] = {
    "email": {
        "url": "${JOURNEYS_EMAIL_URL}",
        "retry_initial_seconds": 5,
        "retry_max_seconds": 300,
        "ttl_seconds": 86400,
    },
    "sms": {
        "url": "${JOURNEYS_SMS_URL}",
        "retry_initial_seconds": 5,
        "retry_max_seconds": 300,
        "ttl_seconds": 3600,
    },
    "push": {
        "url": "${JOURNEYS_PUSH_URL}",
        "retry_initial_seconds": 5,
        "retry_max_seconds": 300,
        "ttl_seconds": 3600,
    },
}
"""The plans' channel configuration (URL, retries, time to live) of bench/journeys.yaml."""
TIMEZONE = "Asia/Seoul"

# The interpreter's options for the same activities (workflows/journey_run.py).
_SEND_NON_RETRYABLE = [
    ErrorType.TEMPLATE_ERROR,
    ErrorType.PERMANENT_DELIVERY_FAILURE,
    ErrorType.BAD_CONFIGURATION,
]
_SCORE_RETRY = RetryPolicy(maximum_attempts=3)
SCORE_ACTIVITY = "score_customer"


@activity.defn(name=SCORE_ACTIVITY)
async def score_customer(request: ScoreInput) -> ScoreResult:
    """The model call alone, as a hand-written integration would make it: what the engine's
    `score_step` activity calls after evaluating the features."""
    return await scoring.score(request)


class _Run:
    """What a hand-written journey carries: the customer, the trigger and its variables."""

    def __init__(self, journey_id: str, customer: CustomerContext, trigger: EventMessage) -> None:
        self.journey_id = journey_id
        self.customer = customer
        self.trigger = trigger
        self.vars: dict[str, Any] = {}
        self.scores: dict[str, Any] = {}

    def context(self) -> dict[str, Any]:
        """What templates read: the same names the interpreter gives them."""
        info = workflow.info()
        return {
            "event": self.trigger.properties,
            "trigger": {
                "name": self.trigger.name,
                "timestamp": self.trigger.timestamp.isoformat(),
                "message_id": self.trigger.message_id,
                "properties": self.trigger.properties,
            },
            "profile": self.customer.traits,
            "customer": self.customer.expression_view(),
            "vars": self.vars,
            "scores": self.scores,
            "review": None,
            "journey": {"id": self.journey_id, "version": "baseline", "run_id": info.run_id},
            "now": workflow.now().isoformat(),
        }

    async def send(self, step_id: str, template: str, channel: str) -> SendMessageResult:
        """One send on one channel (no quiet hours, no cap: the bench plans have neither)."""
        info = workflow.info()
        config = CHANNELS[channel]
        result: SendMessageResult = await workflow.execute_activity(
            ActivityName.SEND_MESSAGE,
            SendMessageInput(
                workflow_id=info.workflow_id,
                run_id=info.run_id,
                journey_id=self.journey_id,
                step_id=step_id,
                visit=1,
                template=template,
                forms=TEMPLATES[template],
                context=self.context(),
                timezone=self.customer.timezone or TIMEZONE,
                channel=channel,
                channel_url=config["url"],
            ),
            result_type=SendMessageResult,
            start_to_close_timeout=timedelta(seconds=60),
            schedule_to_close_timeout=timedelta(seconds=config["ttl_seconds"]),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=config["retry_initial_seconds"]),
                maximum_interval=timedelta(seconds=config["retry_max_seconds"]),
                non_retryable_error_types=_SEND_NON_RETRYABLE,
            ),
        )
        if result.status not in ("sent", "captured"):
            raise ApplicationError(f"{step_id}: {result.status} ({result.reason})")
        return result


@workflow.defn(name="BaselineCart")
class BaselineCartWorkflow:
    """bench_cart by hand: wait 1 s, push, email."""

    @workflow.run
    async def run(self, customer: CustomerContext, trigger: EventMessage) -> str:
        run = _Run("bench_cart", customer, trigger)
        await workflow.sleep(timedelta(seconds=1))
        await run.send("push_reminder", "cart_reminder", "push")
        await run.send("email_reminder", "cart_reminder", "email")
        return "completed"


@workflow.defn(name="BaselinePayment")
class BaselinePaymentWorkflow:
    """bench_payment by hand: score, branch on the score, set the date, SMS (or email)."""

    @workflow.run
    async def run(self, customer: CustomerContext, trigger: EventMessage) -> str:
        run = _Run("bench_payment", customer, trigger)
        event, profile = trigger.properties, customer.traits
        features = {
            "amount": event.get("amount"),
            "days_past_due": event.get("days_past_due"),
            "failed_payments_90d": profile.get("failed_payments_90d", 0),
            "tenure_months": profile.get("tenure_months", 0),
        }
        score: ScoreResult = await workflow.execute_activity(
            SCORE_ACTIVITY,
            ScoreInput(
                workflow_id=workflow.info().workflow_id,
                step_id="score_risk",
                model="default_risk",
                spec=MODELS["default_risk"],
                features=features,
            ),
            result_type=ScoreResult,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=_SCORE_RETRY,
        )
        run.scores["default_risk"] = score.model_dump(mode="json")
        if score.fallback_used or score.score >= 0.7:
            await run.send("reminder_email", "payment_reminder", "email")
            return "reminded"
        run.vars["new_due"] = event.get("grace_due_date") or "your next statement date"
        await run.send("grace_sms", "grace_offer", "sms")
        return "offered"


@workflow.defn(name="BaselineLogin")
class BaselineLoginWorkflow:
    """bench_login by hand: count, branch, push, email."""

    @workflow.run
    async def run(self, customer: CustomerContext, trigger: EventMessage) -> str:
        run = _Run("bench_login", customer, trigger)
        run.vars["failures"] = 3
        if run.vars["failures"] < 3:
            return "no_alert"
        await run.send("alert_push", "login_alert", "push")
        await run.send("alert_email", "login_alert", "email")
        return "alerted"


@workflow.defn(name="BaselineWelcome")
class BaselineWelcomeWorkflow:
    """bench_welcome of bench/latency.yaml by hand: one email, then the end."""

    @workflow.run
    async def run(self, customer: CustomerContext, trigger: EventMessage) -> str:
        run = _Run("bench_welcome", customer, trigger)
        await run.send("welcome_email", "welcome", "email")
        return "welcomed"


WAKE_SIGNAL = "wake"
WAIT = timedelta(days=7)


@workflow.defn(name="BaselineWait")
class BaselineWaitWorkflow:
    """bench/capacity.yaml's bench_wait by hand: wait up to 7 days for a wake-up signal."""

    def __init__(self) -> None:
        self.woken = False

    @workflow.signal(name=WAKE_SIGNAL)
    def wake(self) -> None:
        self.woken = True

    @workflow.run
    async def run(self, customer: CustomerContext, trigger: EventMessage) -> str:
        run = _Run("bench_wait", customer, trigger)
        try:
            await workflow.wait_condition(lambda: self.woken, timeout=WAIT)
        except TimeoutError:
            await run.send("nudge", "capacity_nudge", "email")
            return "completed"
        return "woken"


WORKFLOWS: dict[str, str] = {
    "cart": "BaselineCart",
    "payment": "BaselinePayment",
    "login": "BaselineLogin",
    "welcome": "BaselineWelcome",
}
"""Workflow type per journey kind (the kinds of bench/throughput.py)."""


def engine_worker_settings(
    client: Client, *, db: Engine, task_queue: str, workflow_sandbox: bool = False
) -> dict[str, Any]:
    """The keyword arguments `worker.build_worker` gives `Worker` (captured: nothing is built,
    since a second worker on one task queue is refused)."""
    from unittest import mock  # only here: the sandbox re-imports this module for every run

    captured: dict[str, Any] = {}

    def capture(_client: Client, **kwargs: Any) -> None:
        captured.update(kwargs)

    with mock.patch.object(engine_worker, "Worker", capture):
        engine_worker.build_worker(
            client, db=db, task_queue=task_queue, workflow_sandbox=workflow_sandbox
        )
    return captured


def build_baseline_worker(
    client: Client, *, db: Engine, task_queue: str, workflow_sandbox: bool = False
) -> Worker:
    """A worker for the baseline workflows, with `worker.build_worker`'s settings (the
    workflow runner included: sandboxed exactly when the engine's worker is)."""
    settings = engine_worker_settings(
        client, db=db, task_queue=task_queue, workflow_sandbox=workflow_sandbox
    )
    messaging = MessagingActivities(db=db)
    settings["workflows"] = [
        BaselineCartWorkflow,
        BaselinePaymentWorkflow,
        BaselineLoginWorkflow,
        BaselineWelcomeWorkflow,
        BaselineWaitWorkflow,
    ]
    settings["activities"] = [messaging.send_message, score_customer]
    return Worker(client, **settings)


async def main() -> None:
    """Connect, run until SIGINT/SIGTERM, then stop (like `worker.main`)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = RuntimeSettings.from_env()
    db = make_engine(settings.database_url)
    client = await connect(settings)
    worker = build_baseline_worker(
        client, db=db, task_queue=settings.task_queue, workflow_sandbox=settings.workflow_sandbox
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    log.info("baseline worker polling task queue %r", settings.task_queue)
    async with worker:
        await stop.wait()
        log.info("stopping baseline worker")


if __name__ == "__main__":
    asyncio.run(main())
