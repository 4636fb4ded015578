"""`include:` as a catalogue author meets it: includes stay inside the catalogue's folder
(the folder of the root journeys file, links followed), a file outside is never opened nor
quoted, and include cycles are errors naming the chain; a diamond is merged once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.catalog import build_catalog
from service.cli.design import app

runner = CliRunner()

SECRET = "SECRET_7F3A_root_x_0_0"
# Were it opened, this file would be quoted back: its key is not allowed in an included file.
FOREIGN = f"{SECRET}: /root:/bin/bash\n"
TEMPLATE = 'templates:\n  {name}: {{sms: "Hello"}}\n'


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """The catalogue folder and, beside it, a folder with a secret the catalogue must not see."""
    catalogue = (tmp_path / "catalogue").resolve()
    outside = (tmp_path / "outside").resolve()
    catalogue.mkdir()
    outside.mkdir()
    (outside / "secret.yaml").write_text(FOREIGN)
    return catalogue, outside


def _write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder / "journeys.yaml"


def _violations(root_file: Path) -> list[str]:
    """What `journeys validate` says, each line; and no output of any form has the secret."""
    catalog = build_catalog(root_file)
    text = runner.invoke(app, ["validate", str(root_file)])
    as_json = runner.invoke(app, ["validate", str(root_file), "--format", "json"])
    lines = [v.format() for v in catalog.violations]
    for output in (text.output, as_json.output, "\n".join(lines)):
        assert SECRET not in output
    if lines:
        assert text.output.splitlines()[:-1] == lines
    assert (text.exit_code, as_json.exit_code) == ((1, 1) if lines else (0, 0))
    assert [v["message"] for v in json.loads(as_json.output)["violations"]] == [
        v.message for v in catalog.violations
    ]
    return lines


def _outside(catalogue: Path, at: str, pattern: str, detail: str = "") -> str:
    return (
        f"{catalogue}/journeys.yaml:{at}: -: include: '{pattern}' is outside the journeys "
        f"folder{detail} (includes must stay inside {catalogue})"
    )


def test_an_absolute_include_is_refused_without_opening_the_file(
    folders: tuple[Path, Path],
) -> None:
    catalogue, outside = folders
    pattern = str(outside / "secret.yaml")
    root = _write(catalogue, {"journeys.yaml": f"version: 1\ninclude:\n  - {pattern}\n"})
    assert _violations(root) == [_outside(catalogue, "3:5", pattern)]


def test_an_absolute_include_is_refused_even_inside_the_folder(
    folders: tuple[Path, Path],
) -> None:
    catalogue, _ = folders
    pattern = str(catalogue / "a.yaml")
    files = {"journeys.yaml": f"version: 1\ninclude: [{pattern}]\n", "a.yaml": ""}
    assert _violations(_write(catalogue, files)) == [_outside(catalogue, "2:11", pattern)]


def test_a_parent_folder_escape_is_refused(folders: tuple[Path, Path]) -> None:
    catalogue, _ = folders
    root = _write(catalogue, {"journeys.yaml": "version: 1\ninclude: [../outside/secret.yaml]\n"})
    assert _violations(root) == [_outside(catalogue, "2:11", "../outside/secret.yaml")]


def test_an_escape_to_a_missing_file_says_outside_not_missing(
    folders: tuple[Path, Path],
) -> None:
    catalogue, _ = folders
    root = _write(catalogue, {"journeys.yaml": "version: 1\ninclude: [../outside/nope.yaml]\n"})
    assert _violations(root) == [_outside(catalogue, "2:11", "../outside/nope.yaml")]


def test_an_escape_from_an_included_file_is_refused_at_its_line(
    folders: tuple[Path, Path],
) -> None:
    catalogue, _ = folders
    files = {
        "journeys.yaml": "version: 1\ninclude: [parts/a.yaml]\n",
        "parts/a.yaml": "# a part\ninclude:\n  - ../../outside/secret.yaml\n",
    }
    assert _violations(_write(catalogue, files)) == [
        f"{catalogue}/parts/a.yaml:3:5: -: include: '../../outside/secret.yaml' is outside "
        f"the journeys folder (includes must stay inside {catalogue})"
    ]


def test_a_symlink_out_of_the_folder_is_refused(folders: tuple[Path, Path]) -> None:
    catalogue, outside = folders
    (catalogue / "link.yaml").symlink_to(outside / "secret.yaml")
    root = _write(catalogue, {"journeys.yaml": "version: 1\ninclude: [link.yaml]\n"})
    assert _violations(root) == [
        _outside(catalogue, "2:11", "link.yaml", ": 'link.yaml' links out of it")
    ]


def test_a_symlinked_folder_out_of_the_folder_is_refused(folders: tuple[Path, Path]) -> None:
    catalogue, outside = folders
    (catalogue / "shared").symlink_to(outside, target_is_directory=True)
    root = _write(catalogue, {"journeys.yaml": "version: 1\ninclude: [shared/*.yaml]\n"})
    assert _violations(root) == [_outside(catalogue, "2:11", "shared/*.yaml")]


def test_a_glob_through_a_symlinked_folder_is_refused(folders: tuple[Path, Path]) -> None:
    catalogue, outside = folders
    (catalogue / "shared").symlink_to(outside, target_is_directory=True)
    root = _write(catalogue, {"journeys.yaml": "version: 1\ninclude: ['*/secret.yaml']\n"})
    assert _violations(root) == [
        _outside(catalogue, "2:11", "*/secret.yaml", ": 'shared/secret.yaml' links out of it")
    ]


def test_a_glob_reaching_out_is_refused(folders: tuple[Path, Path]) -> None:
    catalogue, _ = folders
    root = _write(catalogue, {"journeys.yaml": "version: 1\ninclude: ['../*/*.yaml']\n"})
    assert _violations(root) == [_outside(catalogue, "2:11", "../*/*.yaml")]


def test_a_parent_step_that_stays_inside_is_fine(folders: tuple[Path, Path]) -> None:
    catalogue, _ = folders
    files = {
        "journeys.yaml": "version: 1\ninclude: [parts/a.yaml]\n",
        "parts/a.yaml": "include: [../common.yaml]\n",
        "common.yaml": TEMPLATE.format(name="hello"),
    }
    root = _write(catalogue, files)
    assert _violations(root) == []
    assert list(build_catalog(root).checked.loaded.data["templates"]) == ["hello"]


def test_a_file_that_includes_itself_is_a_cycle(folders: tuple[Path, Path]) -> None:
    catalogue, _ = folders
    root = _write(catalogue, {"journeys.yaml": "version: 1\ninclude:\n  - journeys.yaml\n"})
    assert _violations(root) == [
        f"{catalogue}/journeys.yaml:3:5: -: include: 'journeys.yaml' closes a cycle: "
        "journeys.yaml -> journeys.yaml (a file may not include itself, directly or through "
        "other files)"
    ]


def test_an_included_file_that_includes_itself_is_a_cycle(folders: tuple[Path, Path]) -> None:
    catalogue, _ = folders
    files = {
        "journeys.yaml": "version: 1\ninclude: [a.yaml]\n",
        "a.yaml": TEMPLATE.format(name="hello") + "include: [./a.yaml]\n",
    }
    assert _violations(_write(catalogue, files)) == [
        f"{catalogue}/a.yaml:3:11: -: include: './a.yaml' closes a cycle: a.yaml -> a.yaml "
        "(a file may not include itself, directly or through other files)"
    ]


def test_two_files_including_each_other_are_a_cycle(folders: tuple[Path, Path]) -> None:
    catalogue, _ = folders
    files = {
        "journeys.yaml": "version: 1\ninclude: [parts/a.yaml]\n",
        "parts/a.yaml": "include: [b.yaml]\n" + TEMPLATE.format(name="a"),
        "parts/b.yaml": TEMPLATE.format(name="b") + "include:\n  - a.yaml\n",
    }
    assert _violations(_write(catalogue, files)) == [
        f"{catalogue}/parts/b.yaml:4:5: -: include: 'a.yaml' closes a cycle: "
        "parts/a.yaml -> parts/b.yaml -> parts/a.yaml "
        "(a file may not include itself, directly or through other files)"
    ]


def test_an_include_back_to_the_root_file_is_a_cycle(folders: tuple[Path, Path]) -> None:
    catalogue, _ = folders
    files = {
        "journeys.yaml": "version: 1\ninclude: [parts/*.yaml]\n",
        "parts/a.yaml": "include: ['../*.yaml']\n",
    }
    assert _violations(_write(catalogue, files)) == [
        f"{catalogue}/parts/a.yaml:1:11: -: include: '../*.yaml' closes a cycle: "
        "journeys.yaml -> parts/a.yaml -> journeys.yaml "
        "(a file may not include itself, directly or through other files)"
    ]


def test_a_cycle_through_a_symlink_is_a_cycle(folders: tuple[Path, Path]) -> None:
    catalogue, _ = folders
    (catalogue / "alias.yaml").symlink_to(catalogue / "journeys.yaml")
    root = _write(catalogue, {"journeys.yaml": "version: 1\ninclude: [alias.yaml]\n"})
    assert _violations(root) == [
        f"{catalogue}/journeys.yaml:2:11: -: include: 'alias.yaml' closes a cycle: "
        "journeys.yaml -> alias.yaml "
        "(a file may not include itself, directly or through other files)"
    ]


def test_a_diamond_is_merged_once_and_is_fine(folders: tuple[Path, Path]) -> None:
    catalogue, _ = folders
    files = {
        "journeys.yaml": "version: 1\ninclude: [a.yaml, b.yaml]\n",
        "a.yaml": "include: [common.yaml]\n" + TEMPLATE.format(name="a"),
        "b.yaml": "include: [common.yaml]\n" + TEMPLATE.format(name="b"),
        "common.yaml": TEMPLATE.format(name="common"),
    }
    root = _write(catalogue, files)
    assert _violations(root) == []
    loaded = build_catalog(root).checked.loaded
    assert list(loaded.data["templates"]) == ["a", "common", "b"]
    assert [Path(f).name for f in loaded.files] == [
        "journeys.yaml",
        "a.yaml",
        "common.yaml",
        "b.yaml",
    ]


def test_a_glob_over_its_own_folder_skips_the_file_that_holds_it(
    folders: tuple[Path, Path],
) -> None:
    catalogue, _ = folders
    files = {
        "journeys.yaml": "version: 1\ninclude: ['*.yaml']\n",
        "a.yaml": TEMPLATE.format(name="a"),
    }
    root = _write(catalogue, files)
    assert _violations(root) == []
    assert list(build_catalog(root).checked.loaded.data["templates"]) == ["a"]


def test_a_rules_csv_linked_out_of_the_folder_is_refused_unread(
    folders: tuple[Path, Path],
) -> None:
    catalogue, outside = folders
    (outside / "offers.csv").write_text(f"score,goto\n{SECRET},done\n")
    (catalogue / "offers.csv").symlink_to(outside / "offers.csv")
    root = _write(
        catalogue,
        {
            "journeys.yaml": (
                "version: 1\n"
                "events:\n  paid: {score: number}\n"
                "journeys:\n"
                "  - id: j\n"
                "    entry: {event: paid}\n"
                "    steps:\n"
                "      - id: pick\n"
                "        decide: {inputs: {score: event.score}, rules_csv: offers.csv}\n"
                "      - {id: done, exit: done}\n"
            )
        },
    )
    lines = _violations(root)
    assert any(
        line.startswith(f"{catalogue}/journeys.yaml:9:")
        and "rules_csv 'offers.csv' links out of the journeys folder" in line
        for line in lines
    ), lines
