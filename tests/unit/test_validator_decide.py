"""Decision tables (`decide:` steps) at design time: cells that are not unary tests,
overlapping rules under `hit: unique` and numeric gaps without `else`, each reported at
the rule's line, in the journeys file or in the rules CSV beside it."""

from __future__ import annotations

from pathlib import Path

from engine import plan as p
from engine.catalog import build_catalog
from engine.graph import to_mermaid
from engine.schema import json_schema
from tests.unit.journey_docs import check, errors, journey_doc, line_of, only_error

TABLE = """
- id: choose
  decide:
    inputs: {risk: event.amount / 1000, currency: event.currency}
    hit: {hit}
    rules:
      - {when: {risk: "< 0.3"}, set: {offer: '"reminder"'}, goto: low}
      - {when: {risk: "[0.3..0.7)", currency: '"EUR", "USD"'}, set: {offer: '"grace"'}, goto: mid}
      - {when: {risk: "{third}"}, set: {offer: '"plan"'}, goto: high}
{else_}
- id: low
  exit: low
- id: mid
  exit: mid
- id: high
  exit: high
- id: other
  exit: other
"""


def table(hit: str = "first", third: str = ">= 0.7", else_: str = "    else: other") -> str:
    steps = TABLE.replace("{hit}", hit).replace("{third}", third).replace("{else_}", else_)
    return journey_doc(steps)


def test_a_complete_table_compiles_to_its_rules_and_else() -> None:
    catalog = check(table())
    assert catalog.ok, [v.format() for v in catalog.violations]
    step = catalog.plans["j"].steps["choose"]
    assert isinstance(step, p.DecidePlan)
    assert [r.goto for r in step.rules] == ["low", "mid", "high"]
    assert step.rules[1].when == {"risk": "[0.3..0.7)", "currency": '"EUR", "USD"'}
    assert step.otherwise == "other"


def test_overlapping_rules_under_unique_are_reported_at_the_later_rule() -> None:
    text = table(hit="unique", third=">= 0.6")
    error = only_error(check(text))
    assert error.code == "decide-overlap"
    assert error.line == line_of(text, '"plan"')
    assert error.message.startswith("rule 3 overlaps rule 2")


def test_the_same_overlap_is_fine_under_first() -> None:
    assert check(table(hit="first", third=">= 0.6")).ok


def test_a_numeric_gap_without_else_is_a_warning_at_the_nearest_rule() -> None:
    text = table(third="> 0.8", else_="").replace("- id: other\n        exit: other\n", "")
    catalog = check(text)
    assert not errors(catalog), [v.format() for v in catalog.violations]
    found = [v for v in catalog.violations if v.code == "decide-gap"]
    assert [(v.message.split(";")[0], v.severity) for v in found] == [
        ("no rule matches risk in [0.7..0.8]", "warning")
    ]
    assert found[0].line == line_of(text, '"grace"')


def test_gaps_in_two_numeric_inputs_name_both() -> None:
    text = journey_doc(
        """
        - id: choose
          decide:
            inputs: {risk: event.amount / 1000, late: event.amount}
            rules:
              - {when: {risk: "< 0.5", late: "< 30"}, goto: done}
              - {when: {risk: ">= 0.5"}, goto: done}
              - {when: {risk: "< 0.4", late: ">= 30"}, goto: done}
        - id: done
          exit: done
        """
    )
    found = [v for v in check(text).violations if v.code == "decide-gap"]
    assert [v.message.split(";")[0] for v in found] == [
        "no rule matches risk = 0.4, late = 30",
        "no rule matches risk in (0.4..0.5), late = 30",
    ]


def test_a_gap_is_not_reported_when_the_table_has_an_else() -> None:
    catalog = check(table(third="> 0.8"))
    assert not [v for v in catalog.violations if v.code == "decide-gap"]


def test_a_cell_that_is_no_unary_test_is_an_error_at_its_line() -> None:
    text = table(third="about 0.7")
    error = only_error(check(text))
    assert error.code == "decide"
    assert error.line == line_of(text, "about 0.7")
    assert "'about 0.7' is not a unary test" in error.message


def test_a_cell_for_an_unknown_input_names_the_inputs() -> None:
    text = journey_doc(
        """
        - id: choose
          decide:
            inputs: {risk: event.amount}
            rules:
              - {when: {rsik: "< 1"}, goto: done}
        - id: done
          exit: done
        """
    )
    error = only_error(check(text))
    assert error.message == "'rsik' is not one of the table's inputs"
    assert error.line == line_of(text, "rsik")
    assert error.hint is not None and "risk" in error.hint


CSV_DOC = """
- id: choose
  decide:
    inputs: {risk: event.amount / 1000, late: event.amount}
    hit: unique
    rules_csv: offers.csv
    else: other
- id: low
  exit: low
- id: mid
  exit: mid
- id: other
  exit: other
"""


def test_rules_from_a_csv_beside_the_journeys_file_are_in_the_plan(tmp_path: Path) -> None:
    (tmp_path / "offers.csv").write_text(
        "risk,late,offer,goto\n< 0.3,-,'reminder',low\n\"[0.3..0.7)\",< 30,'grace',mid\n"
    )
    (tmp_path / "journeys.yaml").write_text(journey_doc(CSV_DOC))
    catalog = build_catalog(tmp_path / "journeys.yaml")
    assert catalog.ok, [v.format() for v in catalog.violations]
    step = catalog.plans["j"].steps["choose"]
    assert isinstance(step, p.DecidePlan)
    assert [(r.when, r.set, r.goto) for r in step.rules] == [
        ({"risk": "< 0.3", "late": "-"}, {"offer": "'reminder'"}, "low"),
        ({"risk": "[0.3..0.7)", "late": "< 30"}, {"offer": "'grace'"}, "mid"),
    ]


def test_an_overlap_in_a_csv_is_reported_at_its_file_and_row(tmp_path: Path) -> None:
    (tmp_path / "offers.csv").write_text(
        "risk,late,offer,goto\n< 0.3,-,'reminder',low\n\n\"[0.2..0.7)\",< 30,'grace',mid\n"
    )
    (tmp_path / "journeys.yaml").write_text(journey_doc(CSV_DOC))
    error = only_error(build_catalog(tmp_path / "journeys.yaml"))
    assert (error.code, Path(error.file).name, error.line) == ("decide-overlap", "offers.csv", 4)
    assert error.step == "choose"


def test_a_bad_csv_cell_is_reported_at_its_row_and_column(tmp_path: Path) -> None:
    (tmp_path / "offers.csv").write_text(
        "risk,late,offer,goto\n< 0.3,soon,'reminder',low\n-,-,'grace',mid\n"
    )
    (tmp_path / "journeys.yaml").write_text(journey_doc(CSV_DOC))
    error = only_error(build_catalog(tmp_path / "journeys.yaml"))
    assert (Path(error.file).name, error.line, error.column) == ("offers.csv", 2, 2)
    assert "'soon' is not a unary test" in error.message


def test_a_missing_csv_is_an_error_at_rules_csv(tmp_path: Path) -> None:
    text = journey_doc(CSV_DOC)
    (tmp_path / "journeys.yaml").write_text(text)
    catalog = build_catalog(tmp_path / "journeys.yaml")
    found = [v for v in catalog.violations if v.code == "decide"]
    assert found and found[0].line == line_of(text, "rules_csv")
    assert "cannot read" in found[0].message


def test_the_json_schema_offers_decide_with_its_hit_policies() -> None:
    defs = json_schema()["$defs"]
    table = defs["DecideTable"]["properties"]
    assert table["hit"]["enum"] == ["first", "unique", "collect"]
    assert {"inputs", "rules", "rules_csv", "else"} <= set(table)
    assert "decide" in defs["DecideStep"]["properties"]


def test_the_catalogue_decides_a_collections_strategy_by_risk_and_days_late() -> None:
    catalog = build_catalog(Path(__file__).parents[2] / "journeys.yaml")
    assert catalog.ok, [v.format() for v in catalog.violations]
    step = catalog.plans["payment_recovery"].steps["choose_strategy"]
    assert isinstance(step, p.DecidePlan) and step.hit == "unique"
    assert not [v for v in catalog.violations if v.code.startswith("decide")]


def test_the_map_draws_a_rule_edge_per_rule_and_the_else() -> None:
    text = to_mermaid(check(table(hit="unique")).plans["j"])
    assert (
        'choose -->|"rule 2: risk [0.3..0.7), currency #quot;EUR#quot;, #quot;USD#quot;"| mid'
        in text
    )
    assert 'choose -->|"else"| other' in text
