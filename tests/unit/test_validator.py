"""The validator names every problem with its line, journey, step and a hint."""

from __future__ import annotations

import pytest

from tests.unit.journey_docs import HEAD, check, errors, journey_doc, line_of, only_error


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


def test_python_object_tag_is_refused_without_running_it(tmp_path: pytest.TempPathFactory) -> None:
    text = HEAD + "journeys: !!python/object/apply:os.system ['touch /tmp/pwned-by-yaml']\n"
    violation = only_error(check(text))
    assert violation.code == "unsafe-yaml"
    assert violation.line == line_of(text, "!!python")
    assert violation.message == (
        "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed: "
        "journeys files hold plain data only"
    )


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev = f"*a{i - 1}"
        lines.append(f"a{i}: &a{i} [{', '.join([prev] * 10)}]")
    text = "version: 1\n" + "\n".join(lines) + "\n"
    violation = only_error(check(text))
    assert violation.code == "yaml-too-large"
    assert "more than 200000 values" in violation.message


def test_duplicate_step_ids_are_reported_at_the_second() -> None:
    text = journey_doc(
        """
        - id: hello
          send: offer
          channel: sms
        - id: hello
          exit: done
        """
    )
    violation = only_error(check(text))
    assert violation.code == "duplicate-id"
    assert violation.message == "step id 'hello' is used twice in journey 'j'"
    assert violation.line == len(text.splitlines()) - 1
    assert (violation.journey, violation.step) == ("j", "hello")


def test_goto_to_a_missing_step_names_the_closest_step() -> None:
    text = journey_doc(
        """
        - id: route
          branch:
            - when: event.amount > 10
              goto: send_ofer
        - id: send_offer
          send: offer
          channel: sms
        """
    )
    violation = only_error(check(text))
    assert violation.code == "unknown-step"
    assert violation.message == "goto names step 'send_ofer', which journey 'j' does not have"
    assert violation.hint == "did you mean 'send_offer'?"
    assert violation.line == line_of(text, "goto: send_ofer")
    assert violation.step == "route"


def test_unreachable_step_is_reported() -> None:
    text = journey_doc(
        """
        - id: first
          exit: done
        - id: orphan
          send: offer
          channel: sms
        """
    )
    violation = only_error(check(text))
    assert violation.code == "unreachable"
    assert violation.message == "step 'orphan' can never be reached"
    assert violation.line == line_of(text, "id: orphan")


def test_loop_without_a_wait_is_rejected() -> None:
    text = journey_doc(
        """
        - id: bump
          set:
            vars.n: coalesce(vars.n, 0) + 1
        - id: again
          branch:
            - when: vars.n < 5
              goto: bump
        """
    )
    violation = only_error(check(text))
    assert violation.code == "loop-without-wait"
    assert violation.message == "steps bump, again form a loop with no wait: it would spin forever"
    assert violation.line == line_of(text, "goto: bump")


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


def test_typo_in_a_key_suggests_the_right_one() -> None:
    text = journey_doc(
        """
        - id: hello
          send: offer
          chanel: sms
        """
    )
    violation = only_error(check(text))
    assert violation.code == "unknown-key"
    assert violation.message == "unknown key 'chanel'"
    assert violation.hint == "did you mean 'channel'?"
    assert (violation.line, violation.column) == (line_of(text, "chanel"), 9)


def test_typo_in_a_journey_key_suggests_the_right_one() -> None:
    text = journey_doc("- {id: done, exit: ok}", extra="exit_onn: []")
    violation = only_error(check(text))
    assert violation.message == "unknown key 'exit_onn'"
    assert violation.hint == "did you mean 'exit_on'?"
    assert violation.journey == "j"


def test_unknown_channel() -> None:
    text = journey_doc(
        """
        - id: hello
          send: offer
          channel: smss
        """
    )
    violation = only_error(check(text))
    assert violation.code == "unknown-channel"
    assert violation.message == "channel 'smss' is not declared under channels:"
    assert violation.hint == "did you mean 'sms'?"
    assert violation.line == line_of(text, "channel: smss")


def test_unknown_model() -> None:
    text = journey_doc(
        """
        - id: risk
          score: defualt_risk
        """
    )
    violation = only_error(check(text))
    assert violation.code == "unknown-model"
    assert violation.message == "model 'defualt_risk' is not declared under models:"
    assert violation.hint == "did you mean 'default_risk'?"


def test_unknown_template() -> None:
    text = journey_doc(
        """
        - id: hello
          send: ofer
          channel: sms
        """
    )
    violation = only_error(check(text))
    assert violation.code == "unknown-template"
    assert violation.message == "template 'ofer' is not declared under templates:"
    assert violation.hint == "did you mean 'offer'?"
    assert violation.line == line_of(text, "send: ofer")


def test_event_property_missing_from_the_schema() -> None:
    text = journey_doc(
        """
        - id: route
          branch:
            - when: event.amout > 100
              goto: done
        - id: done
          exit: ok
        """
    )
    violation = only_error(check(text))
    assert violation.code == "event-property"
    assert (
        violation.message
        == "expression 'event.amout > 100': event 'payment_failed' has no property 'amout'"
    )
    assert violation.hint == "did you mean 'amount'?"
    assert violation.line == line_of(text, "event.amout")


def test_event_after_a_wait_is_the_awaited_event() -> None:
    text = journey_doc(
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
    )
    violation = only_error(check(text))
    assert (
        violation.message
        == "expression 'event.currency == \"KRW\"': event 'payment_received' has no property 'currency'"
    )


def test_bad_duration() -> None:
    text = journey_doc(
        """
        - id: pause
          wait: 3 days
        """
    )
    violation = only_error(check(text))
    assert violation.code == "duration"
    assert violation.message == (
        "'3 days' is not a duration: use a number and a unit, s m h d w, "
        "such as '30s', '15m', '4h', '3d', '2w' or '1d12h'"
    )
    assert violation.line == line_of(text, "wait: 3 days")


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


def test_split_weights_must_sum_to_100() -> None:
    text = journey_doc(
        """
        - id: ab
          split: {a: 50, b: 40}
          paths: {a: done, b: done}
        - id: done
          exit: ok
        """
    )
    violation = only_error(check(text))
    assert violation.message == "split weights add up to 90, not 100"


def test_wrong_language_version() -> None:
    text = "version: 2\njourneys: []\n"
    violation = only_error(check(text))
    assert violation.code == "version"
    assert violation.message == "language version 2 is not supported: this engine reads version 1"


def test_step_with_no_type_key_suggests_one() -> None:
    text = journey_doc(
        """
        - id: hello
          sned: offer
        """
    )
    violation = only_error(check(text))
    assert violation.code == "step-type"
    assert violation.hint == "did you mean 'send'?"


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
