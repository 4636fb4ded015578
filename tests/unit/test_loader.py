"""Loading: includes merge files and keep each value's own file and line; `${VAR}` stays."""

from __future__ import annotations

from pathlib import Path

from engine.catalog import build_catalog
from engine.loader import load_document

MAIN = """\
version: 1
include: [journeys/*.yaml]
channels: {sms: "${JOURNEYS_SMS_URL}"}
templates:
  hello: {sms: "Hello {{ customer.id }}"}
journeys:
  - id: main_one
    entry: {event: signed_up}
    steps:
      - {id: hi, send: hello, channel: sms}
"""

EXTRA = """\
journeys:
  - id: extra_one
    entry: {event: signed_up}
    steps:
      - id: hi
        send: hello
        chanel: sms
"""


def test_include_merges_journeys_and_points_violations_at_the_included_file(tmp_path: Path) -> None:
    (tmp_path / "journeys").mkdir()
    (tmp_path / "journeys.yaml").write_text(MAIN)
    (tmp_path / "journeys" / "extra.yaml").write_text(EXTRA)
    catalog = build_catalog(tmp_path / "journeys.yaml")
    assert [v.format() for v in catalog.violations] == [
        f"{tmp_path}/journeys/extra.yaml:7:9: extra_one/hi: unknown key 'chanel' (did you mean 'channel'?)"
    ]
    assert list(catalog.plans) == ["main_one"]


def test_include_of_a_missing_file_is_a_violation(tmp_path: Path) -> None:
    (tmp_path / "journeys.yaml").write_text(MAIN)
    catalog = build_catalog(tmp_path / "journeys.yaml")
    assert [v.message for v in catalog.violations] == ["include: 'journeys/*.yaml' matches no file"]
    assert catalog.violations[0].line == 2


def test_duplicate_names_across_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "journeys").mkdir()
    (tmp_path / "journeys.yaml").write_text(MAIN)
    (tmp_path / "journeys" / "more.yaml").write_text('templates:\n  hello: {sms: "again"}\n')
    catalog = build_catalog(tmp_path / "journeys.yaml")
    assert [v.message for v in catalog.violations] == [
        "template 'hello' is already defined in another file"
    ]


def test_env_references_are_kept_verbatim(tmp_path: Path, monkeypatch: object) -> None:
    (tmp_path / "journeys.yaml").write_text(MAIN.replace("include: [journeys/*.yaml]\n", ""))
    loaded = load_document(tmp_path / "journeys.yaml")
    assert loaded.data["channels"] == {"sms": "${JOURNEYS_SMS_URL}"}


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "journeys.yaml"
    big.write_text("version: 1\n# " + "x" * (3 * 1024 * 1024) + "\n")
    loaded = load_document(big)
    assert [v.code for v in loaded.violations] == ["yaml-too-large"]


def test_duplicate_mapping_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "journeys.yaml"
    path.write_text("version: 1\nchannels: {}\nchannels: {}\n")
    loaded = load_document(path)
    assert [(v.code, v.line) for v in loaded.violations] == [("duplicate-key", 3)]


def test_yes_and_no_are_words_not_booleans(tmp_path: Path) -> None:
    path = tmp_path / "journeys.yaml"
    path.write_text("version: 1\nchannels: {yes: a, no: b}\nflag: true\n")
    loaded = load_document(path)
    assert loaded.data["channels"] == {"yes": "a", "no": "b"}
    assert loaded.data["flag"] is True
