"""The example outputs in docs/ are what the commands print (issue #16): each test here
builds what the doc describes, runs the command in-process, and checks the doc's fenced
output block against what it printed. If a doc or the code drifts, one of these fails.

How a doc is read: a block is found as the first plain fenced block (an example output,
no language) after a marker, a piece of the doc's prose or its heading, so an edit around
it does not silently point a test at another block. A shown line must be printed whole.

What may differ, and nothing else: each test names the variable parts of its lines as
regular expressions (``VARIABLE``-style tuples), found in the doc's line (the illustrative
value there must have the shape) and matched against the printed one (the printed value
must have it too): timings, digests, versions, machine paths. The rest of the line,
names, kinds, counts and wording, must be as printed.

Checked elsewhere: the README's quick start and docs/operations.md's `journeys up`
banner, state directory and stop messages (tests/e2e/test_readme.py); the restart lines
of docs/operations.md (tests/e2e/test_supervisor_heals.py); the `/v1/batch` answers of
docs/security.md (tests/api/test_doc_examples_api.py); the README's and docs/journeys.md's
`journeys validate` examples (tests/unit/test_designer_cli.py).
"""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from engine.database import Run, make_engine, session_scope
from service.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
runner = CliRunner()

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)
TIMING = r"\d+\.\d(?= ms)"  # "3.1 ms": milliseconds, one decimal
DIGEST = r"sha256:[0-9a-f]{12}"  # a model file's digest, as `models check` shortens it
VERSION = r"\b[0-9a-f]{12}\b"  # a journey version: the plan's hash, shortened


# ----------------------------------------------------------------------------- reading docs


def fenced(text: str) -> list[tuple[str, str]]:
    """Every fenced block of a markdown text as (language, body), in order."""
    return [(lang, body) for lang, body in FENCE.findall(text)]


def fenced_with_offsets(text: str) -> list[tuple[int, str, str]]:
    """Every fenced block as (offset of its opening fence, language, body), in order."""
    return [(found.start(), found.group(1), found.group(2)) for found in FENCE.finditer(text)]


def block_after(markdown: Path, marker: str, *, lang: str = "") -> list[str]:
    """The lines of the first fenced block in ``lang`` (plain: an example output) after the
    first occurrence of ``marker`` in ``markdown``."""
    text = markdown.read_text(encoding="utf-8")
    at = text.index(marker)
    for offset, found, body in fenced_with_offsets(text):
        if offset > at and found == lang:
            return body.splitlines()
    raise AssertionError(f"{markdown.name}: no {lang or 'plain'} block after {marker!r}")


def line_pattern(shown: str, variable: Sequence[str] = ()) -> re.Pattern[str]:
    """A pattern for a printed line equal to ``shown`` except where ``shown`` matches one
    of the ``variable`` regular expressions: there the printed line must match it too."""
    spans = sorted(
        (found.start(), found.end(), pattern)
        for pattern in variable
        for found in re.finditer(pattern, shown)
    )
    parts: list[str] = []
    at = 0
    for start, end, pattern in spans:
        if start < at:
            continue
        parts += [re.escape(shown[at:start]), f"(?:{pattern})"]
        at = end
    parts.append(re.escape(shown[at:]))
    return re.compile("".join(parts))


def unprinted(shown: Sequence[str], printed: str, variable: Sequence[str] = ()) -> list[str]:
    """The shown lines not printed, in order (each shown line a whole printed line; the
    command may print more lines in between)."""
    lines = printed.splitlines()
    missing: list[str] = []
    at = 0
    for want in shown:
        pattern = line_pattern(want, variable)
        hit = next((i for i in range(at, len(lines)) if pattern.fullmatch(lines[i])), None)
        if hit is None:
            missing.append(want)
        else:
            at = hit + 1
    return missing


def test_the_helpers_read_and_match_as_documented(tmp_path: Path) -> None:
    """The parse and the match themselves, so no test below can check nothing."""
    doc = tmp_path / "doc.md"
    doc.write_text("# A\n\n```sh\nrun\n```\n\n```\nout 1\n```\n\n# B\n\n```\nout 2\n```\n")
    assert block_after(doc, "# A") == ["out 1"]
    assert block_after(doc, "# B") == ["out 2"]
    assert block_after(doc, "# A", lang="sh") == ["run"]
    assert unprinted(["took 3.1 ms"], "x\ntook 12.0 ms\n", [TIMING]) == []
    assert unprinted(["took 3.1 ms"], "took 12 ms\n", [TIMING]) == ["took 3.1 ms"]
    assert unprinted(["took 3.1 ms"], "took 3.1 ms!\n", [TIMING]) == ["took 3.1 ms"]
    assert unprinted(["b", "a"], "a\nb\n") == ["a"]  # in order
    assert unprinted(["a"], "ab\n") == ["a"]  # a whole line, not a part of one


# ----------------------------------------------------------------------------- journeys.md


def _validate(folder: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(folder)
    result = runner.invoke(app, ["validate"])
    assert result.exit_code == 1, result.output
    return result.output


def test_journeys_md_include_outside_the_folder_example_is_real_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/journeys.md: `include: ['../shared.yaml']` at line 3 of the root journeys file
    in /srv/catalogue. The folder is this test's (the doc's /srv/catalogue is replaced by
    it, the only difference); the file outside exists, and is still never opened."""
    [shown] = block_after(DOCS / "journeys.md", "is an error at that include")
    catalogue = tmp_path / "catalogue"
    catalogue.mkdir()
    (catalogue / "journeys.yaml").write_text(
        "version: 1\ninclude:\n  - ../shared.yaml\n", encoding="utf-8"
    )
    (tmp_path / "shared.yaml").write_text("version: 1\n", encoding="utf-8")
    printed = _validate(catalogue, monkeypatch)
    assert "/srv/catalogue" in shown
    moved = shown.replace("/srv/catalogue", str(catalogue.resolve()))
    assert unprinted([moved], printed) == [], f"docs/journeys.md shows {shown!r}:\n{printed}"


def test_journeys_md_include_cycle_example_is_real_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/journeys.md: journeys.yaml includes parts/a.yaml, which includes b.yaml, whose
    include of a.yaml (at line 4) closes the cycle. Printed as shown, nothing replaced."""
    [shown] = block_after(DOCS / "journeys.md", "the include that closes the\ncycle is the error")
    (tmp_path / "parts").mkdir()
    (tmp_path / "journeys.yaml").write_text(
        "version: 1\ninclude:\n  - parts/a.yaml\n", encoding="utf-8"
    )
    (tmp_path / "parts/a.yaml").write_text("version: 1\ninclude:\n  - b.yaml\n", encoding="utf-8")
    (tmp_path / "parts/b.yaml").write_text("version: 1\n\ninclude:\n  - a.yaml\n", encoding="utf-8")
    printed = _validate(tmp_path, monkeypatch)
    assert unprinted([shown], printed) == [], f"docs/journeys.md shows {shown!r}:\n{printed}"


# ----------------------------------------------------------------------------- models.md


@pytest.fixture
def unavailable_model() -> Iterator[str]:
    """The URL of a model service on loopback that answers every request HTTP 503."""

    class Unavailable(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b'{"error": "overloaded"}'
            self.send_response(503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_models_md_models_check_example_is_real_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unavailable_model: str
) -> None:
    """docs/models.md's `journeys models check` output, for the three models it names:
    `default_risk` as the example catalogue declares it (the demo ONNX model, copied
    beside the checked file), `fraud` as docs/models.md declares it (its yaml block) with
    an example, its `${FRAUD_API_URL}` a local service answering 503 to every call (no
    model server needed: that is the failure the doc shows), and `churn`, a python model
    with no example. Timings and the model file's digest may differ; names, kinds, ok/FAIL,
    the demo model's score, the reasons and the summary must be as printed."""
    shown = block_after(DOCS / "models.md", "## `journeys models check`")
    catalogue = yaml.safe_load((ROOT / "journeys.yaml").read_text(encoding="utf-8"))
    [fraud_block] = [
        body
        for lang, body in fenced((DOCS / "models.md").read_text(encoding="utf-8"))
        if lang == "yaml" and body.startswith("  fraud:")
    ]
    fraud = yaml.safe_load(fraud_block)["fraud"]
    models = {
        "default_risk": catalogue["models"]["default_risk"],
        "fraud": fraud | {"example": {"amount": 250000}},
        "churn": {
            "kind": "python",
            "function": "risk_models.default_risk:predict",
            "fallback": 0.5,
        },
    }
    (tmp_path / "risk_models").mkdir()
    shutil.copy(ROOT / "risk_models/default_risk.onnx", tmp_path / "risk_models")
    file = tmp_path / "journeys.yaml"
    file.write_text(
        yaml.safe_dump({"version": 1, "models": models}, sort_keys=False), encoding="utf-8"
    )
    monkeypatch.setenv("FRAUD_API_URL", unavailable_model)

    result = runner.invoke(app, ["models", "check", str(file)])

    assert result.exit_code == 1, result.output
    assert len(shown) == len(result.output.splitlines()), result.output
    missing = unprinted(shown, result.output, [TIMING, DIGEST])
    assert missing == [], f"docs/models.md shows {missing}, printed:\n{result.output}"


# ----------------------------------------------------------------------------- operations.md


def _deploy(file: Path) -> str:
    result = runner.invoke(app, ["deploy", str(file)])
    assert result.exit_code == 0, result.output
    return result.output


def test_operations_md_deploy_example_is_real_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/operations.md's `journeys deploy journeys.yaml` output: the example catalogue
    deployed over its previous version, in which `onboarding` differed (12 of its runs
    still in flight) and `old_promo` existed (3 runs in flight), and `welcome_back` did
    not. Each line shown is printed, in order (the catalogue's other journeys print
    `unchanged` lines too); the versions, hashes of the compiled plans, may differ, so
    the doc's need not be today's. The same file deployed again is `unchanged`."""
    shown = block_after(DOCS / "operations.md", "## Deploying journey changes")
    database = tmp_path / "state" / "journeys.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
    monkeypatch.delenv("JOURNEYS_STATE_DIR", raising=False)
    for folder in ("templates", "risk_models"):  # what the catalogue names relative to itself
        shutil.copytree(ROOT / folder, tmp_path / folder)
    text = (ROOT / "journeys.yaml").read_text(encoding="utf-8")
    assert text.count("    holdout: 10%\n") == 1 and "\n  - id: onboarding\n" in text
    assert text.rstrip().splitlines()[-1].startswith("        ")  # `journeys:` comes last
    old_promo = (
        "\n  - id: old_promo\n    entry: {event: signed_up}\n    steps:\n"
        "      - {id: promo, send: welcome, channel: email}\n"
    )
    welcome_back = old_promo.replace("old_promo", "welcome_back").replace(
        "signed_up", "login_succeeded"
    )
    before = tmp_path / "before.yaml"
    before.write_text(text.replace("holdout: 10%", "holdout: 5%") + old_promo, encoding="utf-8")
    after = tmp_path / "journeys.yaml"
    after.write_text(text + welcome_back, encoding="utf-8")

    first = _deploy(before)
    versions = dict(re.findall(r"^(\w+): new version (\w+)$", first, re.M))
    engine = make_engine(f"sqlite:///{database}")
    with session_scope(engine) as session:
        for journey, count in (("onboarding", 12), ("old_promo", 3)):
            for number in range(count):
                customer = f"c{number}"
                session.add(
                    Run(
                        run_id=f"{journey}-{number}",
                        workflow_id=f"journey/{journey}/{customer}",
                        journey_id=journey,
                        version=versions[journey],
                        customer_id=customer,
                        status="running",
                    )
                )
    engine.dispose()

    printed = _deploy(after)
    missing = unprinted(shown, printed, [VERSION])
    assert missing == [], f"docs/operations.md shows {missing}, printed:\n{printed}"
    again = _deploy(after)
    assert unprinted(shown[:1], again, [VERSION]) == [], again
    assert all(": unchanged (version " in line for line in again.splitlines()), again


def test_journeys_md_preview_example_is_real_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/journeys.md's `journeys preview` example, run on the repository's catalogue."""
    shown = block_after(ROOT / "docs/journeys.md", "as a send would fail:")
    command = shown[0].removeprefix("$ ").split()
    assert command[:2] == ["journeys", "preview"], shown[0]
    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, command[1:])
    assert result.exit_code == 1, result.output
    assert unprinted(shown[1:], result.output) == [], result.output
