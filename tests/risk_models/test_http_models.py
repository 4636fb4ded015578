"""The http adapter for real: the Open Inference Protocol v2 against MLServer (its
scikit-learn runtime, a separate process on loopback), and both protocols against a local
HTTP service. A model that times out, answers HTTP 500, NaN or text yields the fallback,
recorded with the reason; secrets never show in what is recorded."""

from __future__ import annotations

from typing import Any

import pytest

from activities.scoring import score_with_model
from tests.risk_models.conftest import HIGH_RISK_ROW, LOW_RISK_ROW
from tests.risk_models.servers import MLServer, ModelService

FEATURES = ["amount", "days_past_due", "failed_payments_90d", "tenure_months"]
JSON_BODY = '{"amount": {{ features.amount }}, "days_past_due": {{ features.days_past_due }}}'


def as_features(row: list[float]) -> dict[str, float]:
    return dict(zip(FEATURES, row, strict=True))


def oip_model(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "http",
        "url": url,
        "features": FEATURES,
        "timeout": "2s",
        "retries": 0,
        "fallback": 0.5,
        "range": [0, 1],
        **extra,
    }


def json_model(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "http",
        "protocol": "json",
        "url": url,
        "body": JSON_BODY,
        "score": "result.probability",
        "timeout": "1s",
        "retries": 0,
        "fallback": 0.5,
        "range": [0, 1],
        **extra,
    }


# ----------------------------------------------------------------------------- MLServer


async def test_mlserver_scores_the_positive_class_probability_of_its_sklearn_model(
    served: MLServer,
) -> None:
    declaration = oip_model(served.infer_url, output="predict_proba")
    high = await score_with_model("default_risk", declaration, as_features(HIGH_RISK_ROW))
    low = await score_with_model("default_risk", declaration, as_features(LOW_RISK_ROW))
    assert high.fallback_used is False, high.error
    assert low.fallback_used is False, low.error
    assert high.score == pytest.approx(served.expected[0], abs=1e-12)
    assert low.score == pytest.approx(served.expected[1], abs=1e-12)
    assert high.score >= 0.7 > low.score
    assert high.model_version == "v1"  # as MLServer reports it


async def test_mlserver_gets_the_features_in_declared_order_whatever_the_steps_order(
    served: MLServer,
) -> None:
    declaration = oip_model(served.infer_url, output="predict_proba")
    reversed_step = dict(reversed(list(as_features(HIGH_RISK_ROW).items())))
    result = await score_with_model("default_risk", declaration, reversed_step)
    assert result.score == pytest.approx(served.expected[0], abs=1e-12)


async def test_mlserver_refusing_an_unknown_output_falls_back_with_its_answer(
    served: MLServer,
) -> None:
    declaration = oip_model(served.infer_url, output="decision_function", retries=2)
    result = await score_with_model("default_risk", declaration, as_features(HIGH_RISK_ROW))
    assert (result.score, result.fallback_used) == (0.5, True)
    assert result.error is not None
    assert result.error.startswith("the model answered HTTP 400: "), result.error
    assert "predict_proba" in result.error  # MLServer says which outputs it supports


async def test_a_model_name_mlserver_does_not_serve_falls_back(served: MLServer) -> None:
    url = served.infer_url.replace("/default_risk/", "/churn/")
    result = await score_with_model("churn", oip_model(url), as_features(LOW_RISK_ROW))
    assert result.fallback_used is True
    assert result.error is not None and result.error.startswith("the model answered HTTP 404")


async def test_mlserver_default_output_is_the_predicted_label(served: MLServer) -> None:
    result = await score_with_model(
        "default_risk", oip_model(served.infer_url), as_features(HIGH_RISK_ROW)
    )
    assert (result.score, result.fallback_used) == (1.0, False)


# ----------------------------------------------------------------------------- OIP, local


async def test_an_oip_request_is_one_fp64_tensor_of_the_features(service: ModelService) -> None:
    result = await score_with_model(
        "risk", oip_model(service.url("/v2/models/risk/infer")), as_features(HIGH_RISK_ROW)
    )
    assert (result.score, result.model_version, result.fallback_used) == (0.9, "7", False)
    sent = [r for r in service.received if r.path == "/v2/models/risk/infer"][-1]
    assert sent.body == {
        "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": HIGH_RISK_ROW}]
    }
    assert sent.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("error", "the model answered HTTP 500"),
        ("nan", "the model's output 'predict_proba' answered nan, not a finite number"),
        ("text", "the model's output 'predict_proba' is text ('high'), not a number"),
        ("slow", "the model did not answer within 1s"),
    ],
)
async def test_an_oip_model_that_fails_yields_the_fallback_and_says_why(
    service: ModelService, model: str, error: str
) -> None:
    declaration = oip_model(service.url(f"/v2/models/{model}/infer"), timeout="1s", fallback=0.9)
    result = await score_with_model(model, declaration, as_features(LOW_RISK_ROW))
    assert (result.score, result.fallback_used) == (0.9, True)
    assert result.error == error


async def test_a_server_that_cannot_be_reached_falls_back(service: ModelService) -> None:
    closed = "http://127.0.0.1:9/v2/models/risk/infer"  # the discard port: nothing listens
    result = await score_with_model("risk", oip_model(closed), as_features(LOW_RISK_ROW))
    assert result.fallback_used is True
    assert result.error is not None and result.error.startswith("cannot reach the model (")


# ----------------------------------------------------------------------------- plain JSON


async def test_a_json_model_gets_the_rendered_body_and_scores_the_path(
    service: ModelService,
) -> None:
    result = await score_with_model(
        "risk", json_model(service.url("/json/score")), {"amount": 250000, "days_past_due": 4}
    )
    assert (result.score, result.fallback_used) == (0.25, False)
    sent = [r for r in service.received if r.path == "/json/score"][-1]
    assert sent.body == {"amount": 250000, "days_past_due": 4}


async def test_a_json_score_path_can_index_a_list(service: ModelService) -> None:
    declaration = json_model(service.url("/json/list"), score="predictions.0.score")
    result = await score_with_model("risk", declaration, {"amount": 100000, "days_past_due": 1})
    assert (result.score, result.fallback_used) == (0.1, False)


@pytest.mark.parametrize(
    ("path", "extra", "error"),
    [
        ("/json/error", {}, "the model answered HTTP 500"),
        ("/json/nan", {}, "the model's result.probability answered nan, not a finite number"),
        ("/json/text", {}, "the model's result.probability answered text ('high'), not a number"),
        ("/json/slow", {}, "the model did not answer within 1s"),
        ("/json/score", {"score": "result.risk"}, "the reply has no result.risk"),
        (
            "/json/bad-request",
            {},
            'the model answered HTTP 422: {"detail": "amount is required"}',
        ),
        (
            "/json/score",
            {"body": '{"amount": {{ features.amount }},}'},
            "the body did not render as JSON: Expecting property name enclosed in double quotes",
        ),
    ],
    ids=["500", "nan", "text", "timeout", "no-path", "422", "bad-body"],
)
async def test_a_json_model_that_fails_yields_the_fallback_and_says_why(
    service: ModelService, path: str, extra: dict[str, Any], error: str
) -> None:
    declaration = json_model(service.url(path), fallback=0.9, **extra)
    result = await score_with_model("risk", declaration, {"amount": 1000, "days_past_due": 2})
    assert (result.score, result.fallback_used) == (0.9, True)
    assert result.error is not None and result.error.startswith(error), result.error


async def test_5xx_is_retried_and_the_error_counts_the_tries(service: ModelService) -> None:
    before = service.hits("/json/error")
    declaration = json_model(service.url("/json/error"), retries=2)
    result = await score_with_model("risk", declaration, {"amount": 1, "days_past_due": 2})
    assert result.error == "the model answered HTTP 500 (3 tries)"
    assert service.hits("/json/error") - before == 3


async def test_a_4xx_answer_is_not_retried(service: ModelService) -> None:
    before = service.hits("/json/bad-request")
    declaration = json_model(service.url("/json/bad-request"), retries=3)
    await score_with_model("risk", declaration, {"amount": 1, "days_past_due": 2})
    assert service.hits("/json/bad-request") - before == 1


async def test_a_model_that_answers_after_a_503_scores_on_the_retry(
    service: ModelService,
) -> None:
    declaration = json_model(service.url("/json/flaky"), retries=1)
    result = await score_with_model("risk", declaration, {"amount": 500000, "days_past_due": 2})
    assert (result.score, result.fallback_used) == (0.5, False)
    assert service.hits("/json/flaky") == 2


# ----------------------------------------------------------------------------- secrets


async def test_the_bearer_token_comes_from_the_environment_and_is_never_recorded(
    service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISK_TOKEN", service.token)
    monkeypatch.setenv("RISK_HOST", f"127.0.0.1:{service.port}")
    declaration = json_model("http://${RISK_HOST}/json/auth", token="${RISK_TOKEN}")
    result = await score_with_model("risk", declaration, {"amount": 300000, "days_past_due": 2})
    assert (result.score, result.fallback_used) == (0.3, False)
    sent = [r for r in service.received if r.path == "/json/auth"][-1]
    assert sent.headers["authorization"] == f"Bearer {service.token}"
    assert service.token not in result.model_dump_json()


async def test_a_refused_token_falls_back_without_showing_it_or_the_url(
    service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RISK_TOKEN", "wrong-token-8d2c")
    monkeypatch.setenv("RISK_URL", service.url("/json/auth"))
    declaration = json_model("${RISK_URL}", token="${RISK_TOKEN}")
    result = await score_with_model("risk", declaration, {"amount": 1, "days_past_due": 2})
    assert result.fallback_used is True
    recorded = result.model_dump_json()
    assert result.error == 'the model answered HTTP 401: {"error": "unauthorised"}'
    assert "wrong-token-8d2c" not in recorded and str(service.port) not in recorded


async def test_an_unset_token_variable_falls_back_naming_only_the_variable(
    service: ModelService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RISK_TOKEN_UNSET", raising=False)
    before = service.hits("/json/auth")
    declaration = json_model(service.url("/json/auth"), token="${RISK_TOKEN_UNSET}")
    result = await score_with_model("risk", declaration, {"amount": 1, "days_past_due": 2})
    assert result.error == "environment variable RISK_TOKEN_UNSET is not set"
    assert service.hits("/json/auth") == before, "nothing is sent without the token"
