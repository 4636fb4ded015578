"""`journeys preview TEMPLATE`: every channel's rendering of a template for the profile and
event values given, by the renderer sends use (`channels.rendering`): the email's subject
and text with its HTML written to a file, an SMS's segments and encoding, a push's lengths
against its limits; a template error, or a value the template needs and was not given,
at its file:line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from channels.preview import PairError, parse_pairs, preview_template
from service.cli.main import app

runner = CliRunner()

DOC = """\
version: 1
events:
  payment_failed: {amount: number, currency: string}
channels:
  sms: "${JOURNEYS_SMS_URL}"
  email: "${JOURNEYS_EMAIL_URL}"
  push: "${JOURNEYS_PUSH_URL}"
templates:
  offer:
    sms: "Hi {{ profile.first_name }}, we can move {{ event.amount | money(event.currency) }}."
    push: {title: "Payment", body: "{{ profile.first_name }}, tap to see your options"}
    email:
      subject: "About {{ event.amount | money(event.currency) }}"
      html_file: offer.html
      text: |
        Hi {{ profile.first_name }},
        we can move your due date to {{ vars.new_due }}.
  broken:
    sms: "Hi {{ profile.first_name | shout }}"
journeys:
  - id: j
    entry: {event: payment_failed}
    steps:
      - {id: hi, send: offer, channel: sms}
"""

HTML = """\
<html><body>
<p>Hi {{ profile.first_name }},</p>
<p>Due: {{ vars.new_due }}</p>
</body></html>
"""


def _files(tmp_path: Path) -> Path:
    (tmp_path / "offer.html").write_text(HTML, encoding="utf-8")
    path = tmp_path / "journeys.yaml"
    path.write_text(DOC, encoding="utf-8")
    return path


def _line(text: str, marker: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if marker in line)


VALUES = [
    "--profile",
    "first_name=Minji",
    "--event",
    "amount=25000",
    "--event",
    "currency=KRW",
    "--var",
    "new_due=2026-12-10",
]


def test_every_channel_renders_and_the_html_goes_to_the_file_given(tmp_path: Path) -> None:
    path = _files(tmp_path)
    out = tmp_path / "out" / "offer.html"
    out.parent.mkdir()

    result = runner.invoke(
        app, ["preview", "offer", "-f", str(path), *VALUES, "--html-out", str(out)]
    )

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "template offer (time zone UTC)"
    assert "  subject: About ₩25,000" in lines
    assert "    Hi Minji," in lines and "    we can move your due date to 2026-12-10." in lines
    assert f"  html: {out} ({len(out.read_text(encoding='utf-8'))} characters)" in lines
    assert "<p>Hi Minji,</p>" in out.read_text(encoding="utf-8")
    assert "  1 segment, UCS-2, 30 characters" in lines  # ₩ is not in GSM-7
    assert "    Hi Minji, we can move ₩25,000." in lines
    assert "  title: Payment" in lines
    assert "  characters: title 7/200, body 30/1000" in lines


def test_without_html_out_the_html_goes_to_a_temp_file_it_names(tmp_path: Path) -> None:
    path = _files(tmp_path)
    result = runner.invoke(app, ["preview", "offer", "-f", str(path), *VALUES])
    assert result.exit_code == 0, result.output
    shown = next(line for line in result.output.splitlines() if line.startswith("  html: "))
    written = Path(shown.removeprefix("  html: ").split(" (")[0])
    try:
        assert "<p>Due: 2026-12-10</p>" in written.read_text(encoding="utf-8")
    finally:
        written.unlink()


def test_sms_segments_and_encoding() -> None:
    forms = {"sms": "{{ event.text }}"}

    def sms(text: str) -> tuple[int | None, str | None]:
        channel = preview_template("t", forms, profile={}, event={"text": text}).channels[0]
        assert channel.error is None, channel.error
        return channel.sms_segments, channel.sms_encoding

    assert sms("a" * 160) == (1, "GSM-7")
    assert sms("a" * 161) == (2, "GSM-7")
    assert sms("€" * 80) == (1, "GSM-7")  # two septets each: 160
    assert sms("민" * 70) == (1, "UCS-2")
    assert sms("민" * 71) == (2, "UCS-2")
    long = preview_template("t", forms, profile={}, event={"text": "민" * 700}).channels[0]
    assert long.sms_segments == 11
    assert long.warnings == ("SMS would be 11 segments (max 10): a send refuses it",)


def test_a_missing_profile_value_is_an_error_at_its_line_naming_the_option(
    tmp_path: Path,
) -> None:
    path = _files(tmp_path)
    result = runner.invoke(
        app, ["preview", "offer", "-f", str(path), "--event", "amount=1", "--event", "currency=KRW"]
    )

    assert result.exit_code == 1
    sms_line = _line(DOC, "    sms: ")
    text_line = _line(DOC, "        Hi {{ profile.first_name }},")
    assert (
        f"  error: {path}:{sms_line}: sms: template needs profile.first_name, which is missing "
        "(give it with --profile first_name=...)"
    ) in result.output.splitlines()
    assert (
        f"  error: {path}:{text_line}: email.text: template needs profile.first_name, "
        "which is missing (give it with --profile first_name=...)"
    ) in result.output.splitlines()


def test_a_missing_value_in_an_html_file_is_at_the_html_files_line(tmp_path: Path) -> None:
    path = _files(tmp_path)
    (tmp_path / "offer.html").write_text(HTML.replace("{{ vars.new_due }}", "{{ vars.due }}"))
    result = runner.invoke(app, ["preview", "offer", "-f", str(path), *VALUES])
    assert result.exit_code == 1
    assert (
        f"  error: {tmp_path / 'offer.html'}:3: email.html: template needs vars.due, which is "
        "missing (give it with --var due=...)"
    ) in result.output.splitlines()


def test_a_template_error_is_shown_at_its_file_and_line(tmp_path: Path) -> None:
    path = _files(tmp_path)
    result = runner.invoke(app, ["preview", "broken", "-f", str(path)])
    assert result.exit_code == 1
    line = _line(DOC, "shout")
    assert f"  error: {path}:{line}: sms: unknown filter 'shout'" in result.output


def test_json_output(tmp_path: Path) -> None:
    path = _files(tmp_path)
    out = tmp_path / "x.html"
    result = runner.invoke(
        app,
        ["preview", "offer", "-f", str(path), *VALUES, "--format", "json", "--html-out", str(out)],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["ok"] is True and payload["html_file"] == str(out)
    sms = next(c for c in payload["channels"] if c["channel"] == "sms")
    assert sms["segments"] == 1 and sms["encoding"] == "UCS-2"


def test_bad_input_exits_2_naming_what_and_where(tmp_path: Path) -> None:
    path = _files(tmp_path)
    unknown = runner.invoke(app, ["preview", "nope", "-f", str(path)])
    assert unknown.exit_code == 2
    assert (
        "no template 'nope' in" in unknown.output and "templates: broken, offer" in unknown.output
    )

    pair = runner.invoke(app, ["preview", "offer", "-f", str(path), "--event", "amount"])
    assert pair.exit_code == 2
    assert "--event value 1: 'amount' is not NAME=VALUE" in pair.output

    missing = runner.invoke(app, ["preview", "offer", "-f", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 2
    assert "no such journeys file" in missing.output


def test_parse_pairs_reads_json_values_and_skips_comments() -> None:
    assert parse_pairs(["amount=25000", "", "# a note", "ok=true", "name = Minji "], what="x") == {
        "amount": 25000,
        "ok": True,
        "name": "Minji",
    }
    try:
        parse_pairs(["=1"], what="profile line")
    except PairError as error:
        assert str(error) == "profile line 1: '=1' is not NAME=VALUE"
    else:
        raise AssertionError("no error")


SCENARIOS = """\
scenarios:
  - name: first
    journey: j
    profile: {first_name: Ann}
    start: 2026-05-11T13:00:00+09:00
    timeline:
      - {at: 0s, event: payment_failed, properties: {amount: 300, currency: USD}}
    expect: {outcome: completed}
  - name: second
    journey: j
    profile: {first_name: Bo}
    start: 2026-05-11T13:00:00+09:00
    timeline:
      - {at: 0s, event: payment_failed, properties: {amount: 9000, currency: KRW}}
    expect: {outcome: completed}
"""


def test_a_scenario_gives_the_profile_and_the_entry_event_and_options_add_to_them(
    tmp_path: Path,
) -> None:
    path = _files(tmp_path)
    scenarios = tmp_path / "scenarios.yaml"
    scenarios.write_text(SCENARIOS, encoding="utf-8")
    base = ["preview", "offer", "-f", str(path), "--scenario", str(scenarios)]

    first = runner.invoke(app, [*base, "--var", "new_due=soon"])
    second = runner.invoke(app, [*base, "--scenario-name", "second", "--event", "amount=1"])

    assert first.exit_code == 0, first.output
    assert "    Hi Ann, we can move $300.00." in first.output.splitlines()
    assert second.exit_code == 1, second.output  # vars.new_due missing in the email text
    assert "    Hi Bo, we can move ₩1." in second.output.splitlines()


def test_a_scenario_that_is_not_there_or_is_broken_is_an_error_naming_it(tmp_path: Path) -> None:
    path = _files(tmp_path)
    scenarios = tmp_path / "scenarios.yaml"
    scenarios.write_text(SCENARIOS, encoding="utf-8")
    base = ["preview", "offer", "-f", str(path), "--scenario", str(scenarios)]

    unknown = runner.invoke(app, [*base, "--scenario-name", "third"])
    scenarios.write_text(SCENARIOS.replace("profile:", "profil:", 1), encoding="utf-8")
    broken = runner.invoke(app, base)

    assert unknown.exit_code == 2
    assert f"{scenarios}: no scenario named 'third' (scenarios: first; second)" in unknown.output
    assert broken.exit_code == 2
    assert f"{scenarios}:4:5: " in broken.output and "profil" in broken.output
