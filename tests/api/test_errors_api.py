"""Every error the JSON API answers has one body, ``{"detail": str, "errors": [...]}``,
whoever raises it (FastAPI's validation, a route, the body limit, the review desk), and
the OpenAPI document says so."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.api.conftest import AUTH, RunningApi

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def refusals(http: httpx.AsyncClient) -> dict[str, httpx.Response]:
    big = {"userId": "c", "event": "e", "properties": {"note": "x" * (300 * 1024)}}
    return {
        "no key": await http.get("/v1/runs"),
        "unknown run": await http.get("/v1/runs/no-such-run", headers=AUTH),
        "unknown path": await http.get("/v1/nothing-here", headers=AUTH),
        "too large": await http.post("/v1/track", json=big, headers=AUTH),
        "invalid message": await http.post("/v1/track", json={"event": "e"}, headers=AUTH),
        "invalid sms": await http.post("/v1/inbound/sms", json={"text": "STOP"}, headers=AUTH),
        "key acting on a review": await http.post("/v1/reviews/t1/claim", headers=AUTH),
    }


async def test_every_refusal_has_the_same_body(api: RunningApi) -> None:
    answers = await refusals(api.http)

    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "no key": 401,
        "unknown run": 404,
        "unknown path": 404,
        "too large": 413,
        "invalid message": 422,
        "invalid sms": 422,
        "key acting on a review": 403,
    }
    for name, answer in answers.items():
        body: dict[str, Any] = answer.json()
        assert set(body) == {"detail", "errors"}, name
        assert isinstance(body["detail"], str) and body["detail"], name
    assert answers["no key"].headers["WWW-Authenticate"] == "Bearer"
    assert answers["invalid message"].json()["errors"] == [
        {"field": "userId", "message": "field required"}
    ]
    assert answers["invalid sms"].json()["errors"] == [
        {"field": "from", "message": "field required"}
    ]


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch", "/v1/identify"])
async def test_a_body_too_deep_to_parse_is_refused_naming_the_body(
    api: RunningApi, path: str
) -> None:
    """Deeper than Python's JSON parser recurses: FastAPI's own answer was a bare 400
    "There was an error parsing the body"."""
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    body = f'{{"type":"track","event":"e","userId":"c1","properties":{{"x":{deep}}}}}'
    headers = {**AUTH, "Content-Type": "application/json"}

    answer = await api.http.post(path, content=body, headers=headers)

    assert answer.status_code == 422
    assert answer.json() == {
        "detail": "body: JSON nested too deeply to read (at most 32 levels in properties and traits)",
        "errors": [
            {
                "field": "body",
                "message": "JSON nested too deeply to read (at most 32 levels in properties and traits)",
            }
        ],
    }
    # Without a valid key, nothing about the input.
    anonymous = await api.http.post(
        path, content=body, headers={"Content-Type": "application/json"}
    )
    assert anonymous.status_code == 401


async def test_the_openapi_document_names_the_error_body(api: RunningApi) -> None:
    document = (await api.http.get("/openapi.json")).json()

    def error_schema(path: str, method: str, status: str) -> str:
        answer = document["paths"][path][method]["responses"][status]
        return str(answer["content"]["application/json"]["schema"]["$ref"])

    expected = "#/components/schemas/ErrorResponse"
    assert error_schema("/v1/track", "post", "401") == expected
    assert error_schema("/v1/track", "post", "413") == expected
    assert error_schema("/v1/runs/{run_id}", "get", "404") == expected
    assert error_schema("/v1/inbound/sms", "post", "422") == expected
    assert error_schema("/v1/reviews/{task_id}/decision", "post", "409") == expected
    assert set(document["components"]["schemas"]["ErrorResponse"]["properties"]) == {
        "detail",
        "errors",
    }
