"""The validator names every problem with its line, journey, step and a hint."""

from __future__ import annotations

import pytest

from tests.unit.journey_docs import (
    HEAD,
    Refusal,
    assert_refused,
    check,
    errors,
    journey_doc,
    line_of,
    only_error,
)


def test_clean_document_has_no_violations() -> None:
    text = journey_doc(
        """
        - id: hello
          send: offer
          channel: sms
        """
    )
    catalog = check(text)
    assert catalog.violations == []
    assert list(catalog.plans) == ["j"]


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    text = "version: 1\n" + "\n".join(lines) + "\n"
    violation = only_error(check(text))
    assert violation.code == "yaml-too-large"
    assert "more than 200000 values" in violation.message


REFUSALS = [
    pytest.param(
        Refusal(
            HEAD + "journeys: !!python/object/apply:os.system ['touch /tmp/pwned-by-yaml']\n",
            code="unsafe-yaml",
            message=(
                "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed: "
                "journeys files hold plain data only"
            ),
            at="!!python",
            hint="remove the tag",
            journey=None,
        ),
        id="python-object-tag-refused-without-running-it",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: hello
                  send: offer
                  channel: sms
                - id: hello  # the second
                  exit: done
                """
            ),
            code="duplicate-id",
            message="step id 'hello' is used twice in journey 'j'",
            at="# the second",
            hint="step ids must be unique within a journey",
            step="hello",
        ),
        id="duplicate-step-id-at-the-second",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: route
                  branch:
                    - when: event.amount > 10
                      goto: send_ofer
                - id: send_offer
                  send: offer
                  channel: sms
                """
            ),
            code="unknown-step",
            message="goto names step 'send_ofer', which journey 'j' does not have",
            hint="did you mean 'send_offer'?",
            at="goto: send_ofer",
            step="route",
        ),
        id="goto-to-a-missing-step-names-the-closest",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: first
                  exit: done
                - id: orphan
                  send: offer
                  channel: sms
                """
            ),
            code="unreachable",
            message="step 'orphan' can never be reached",
            at="id: orphan",
            hint="point a next:, goto:, paths: or decisions: at it, or remove it",
            step="orphan",
        ),
        id="unreachable-step",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: bump
                  set:
                    vars.n: coalesce(vars.n, 0) + 1
                - id: again
                  branch:
                    - when: vars.n < 5
                      goto: bump
                """
            ),
            code="loop-without-wait",
            message="steps bump, again form a loop with no wait: it would spin forever",
            at="goto: bump",
            hint="add a wait step inside the loop",
            step="again",
        ),
        id="loop-without-a-wait",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: hello
                  send: offer
                  chanel: sms
                """
            ),
            code="unknown-key",
            message="unknown key 'chanel'",
            hint="did you mean 'channel'?",
            at="chanel",
            step="hello",
            column=9,
        ),
        id="typo-in-a-step-key",
    ),
    pytest.param(
        Refusal(
            journey_doc("- {id: done, exit: ok}", extra="exit_onn: []"),
            code="unknown-key",
            message="unknown key 'exit_onn'",
            hint="did you mean 'exit_on'?",
            at="exit_onn",
        ),
        id="typo-in-a-journey-key",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: hello
                  send: offer
                  channel: smss
                """
            ),
            code="unknown-channel",
            message="channel 'smss' is not declared under channels:",
            hint="did you mean 'sms'?",
            at="channel: smss",
            step="hello",
        ),
        id="unknown-channel",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: risk
                  score: defualt_risk
                """
            ),
            code="unknown-model",
            message="model 'defualt_risk' is not declared under models:",
            hint="did you mean 'default_risk'?",
            at="score: defualt_risk",
            step="risk",
        ),
        id="unknown-model",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: hello
                  send: ofer
                  channel: sms
                """
            ),
            code="unknown-template",
            message="template 'ofer' is not declared under templates:",
            hint="did you mean 'offer'?",
            at="send: ofer",
            step="hello",
        ),
        id="unknown-template",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: route
                  branch:
                    - when: event.amout > 100
                      goto: done
                - id: done
                  exit: ok
                """
            ),
            code="event-property",
            message=(
                "expression 'event.amout > 100': event 'payment_failed' has no property 'amout'"
            ),
            hint="did you mean 'amount'?",
            at="event.amout",
            step="route",
        ),
        id="event-property-missing-from-the-schema",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: pay
                  wait: {event: payment_received, within: 3d}
                - id: route
                  branch:
                    - when: event.currency == "KRW"
                      goto: done
                - id: done
                  exit: ok
                """
            ),
            code="event-property",
            message=(
                "expression 'event.currency == \"KRW\"': "
                "event 'payment_received' has no property 'currency'"
            ),
            at="event.currency",
            hint="valid: amount",
            step="route",
        ),
        id="event-after-a-wait-is-the-awaited-event",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: pause
                  wait: 3 days
                """
            ),
            code="duration",
            message=(
                "'3 days' is not a duration: use a number and a unit, s m h d w, "
                "such as '30s', '15m', '4h', '3d', '2w' or '1d12h'"
            ),
            at="wait: 3 days",
            step="pause",
        ),
        id="bad-duration",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: ab
                  split: {a: 50, b: 40}
                  paths: {a: done, b: done}
                - id: done
                  exit: ok
                """
            ),
            code="split",
            message="split weights add up to 90, not 100",
            at="split:",
            hint="weights are percentages",
            step="ab",
        ),
        id="split-weights-must-sum-to-100",
    ),
    pytest.param(
        Refusal(
            "version: 2\njourneys: []\n",
            code="version",
            message="language version 2 is not supported: this engine reads version 1",
            at="version: 2",
            hint="set version: 1",
            journey=None,
        ),
        id="wrong-language-version",
    ),
    pytest.param(
        Refusal(
            journey_doc(
                """
                - id: hello
                  sned: offer
                """
            ),
            code="step-type",
            message=(
                "a step needs one type key: "
                "send, wait, branch, split, score, review, set, call, exit, decide"
            ),
            hint="did you mean 'send'?",
            at="sned: offer",
            step="hello",
            column=9,
        ),
        id="step-with-no-type-key-suggests-one",
    ),
]


@pytest.mark.parametrize("case", REFUSALS)
def test_a_broken_document_is_refused_with_one_precise_error(case: Refusal) -> None:
    assert_refused(case)


def test_loop_with_a_wait_is_accepted() -> None:
    text = journey_doc(
        """
        - id: bump
          set:
            vars.n: coalesce(vars.n, 0) + 1
        - id: pause
          wait: 1h
        - id: again
          branch:
            - when: vars.n < 5
              goto: bump
        """
    )
    assert errors(check(text)) == []


def test_every_violation_is_reported_not_just_the_first() -> None:
    text = journey_doc(
        """
        - id: hello
          send: ofer
          channel: smss
        - id: pause
          wait: 3x
        - id: hello
          exit: done
        """
    )
    codes = sorted(v.code for v in errors(check(text)))
    assert codes == ["duplicate-id", "duration", "unknown-channel", "unknown-template"]


def test_yaml_syntax_error_has_a_position() -> None:
    text = "version: 1\njourneys:\n  - id: [unclosed\n"
    violation = only_error(check(text))
    assert violation.code == "yaml"
    assert violation.line >= 3
    assert violation.message.startswith("YAML syntax error")


def test_violation_formats_as_file_line_col() -> None:
    text = journey_doc(
        """
        - id: hello
          send: offer
          chanel: sms
        """
    )
    line = line_of(text, "chanel")
    assert only_error(check(text)).format() == (
        f"j.yaml:{line}:9: j/hello: unknown key 'chanel' (did you mean 'channel'?)"
    )
