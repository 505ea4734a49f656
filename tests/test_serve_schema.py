"""The HTTP service against its own OpenAPI schema: schemathesis generates requests for every
route (valid and invalid bodies, multipart uploads, query parameters), calls the app in
process over ASGI, and checks that nothing answers 5xx and that every status code, content
type and body is the one the schema documents. The committed docs/openapi.json must be the
schema the app generates.

The generation is bounded (CLIPRT_SCHEMA_EXAMPLES examples per operation, 25 by default) and
derandomized, so the file runs in well under a minute and a failure replays as is; raise the
count for a deeper search."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (the 'serve-test' extra) is not installed")

from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

sys.path.insert(0, os.path.dirname(__file__))
import _tiny_clip  # noqa: E402
from cliprt.collection import Collection  # noqa: E402
from cliprt.encode import Encoder  # noqa: E402
from cliprt.serve import ServeConfig, create_app  # noqa: E402
from cliprt.serve.openapi import generate_openapi, openapi_text  # noqa: E402

EXAMPLES = int(os.environ.get("CLIPRT_SCHEMA_EXAMPLES", "25"))
ROOT = Path(__file__).resolve().parent.parent
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    enc = Encoder.load(_tiny_clip.exported(tmp_path_factory, precisions=("fp32",))[1])
    rng = np.random.default_rng(11)
    emb = rng.standard_normal((12, enc.dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    d = tmp_path_factory.mktemp("serve-schema") / "col"
    with Collection.create(d, model="tiny", dim=enc.dim) as col:
        col.add(emb, [{"key": f"k{i}", "path": f"/p/{i}.png", "meta": {"label": "dog" if i % 2 else "cat", "n": i}}
                      for i in range(12)])
        col.commit()
    # a short timeout and a small body limit keep pathological generated inputs cheap
    app = create_app(encoder=enc, store=Collection.open(d),
                     config=ServeConfig(max_wait_ms=1, timeout_s=20, max_body_bytes=1 << 20, max_inputs=64))
    yield app
    app.state.service.close()


class _WithoutLifespan:
    """The app with its lifespan answered but not run. The schemathesis plugin starts and stops
    an ASGI app's lifespan around every test item, and the app's shutdown closes its service
    for good (its batchers do not restart); the module fixture closes the service once instead."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            return await self.app(scope, receive, send)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


@pytest.fixture(scope="module")
def asgi(served):
    return _WithoutLifespan(served)


# the schema comes from an app over a stand-in encoder (no model needed at collection time);
# test_committed_openapi_json_is_current shows it is the schema the served app publishes
schema = schemathesis.openapi.from_dict(generate_openapi())


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_every_route_conforms_to_the_schema(case, asgi):
    response = case.call(app=asgi)
    case.validate_response(response, checks=CHECKS)


def test_schema_documents_every_route_and_error(served):
    spec = served.openapi()
    want = {("/health", "get"), ("/ready", "get"), ("/metrics", "get"), ("/v1/models", "get"),
            ("/v1/embeddings", "post"), ("/v1/embed/image", "post"), ("/v1/search", "post"), ("/v1/classify", "post")}
    have = {(p, m) for p, ops in spec["paths"].items() for m in ops}
    assert want <= have, want - have
    for path in ("/v1/embeddings", "/v1/embed/image", "/v1/search", "/v1/classify"):
        codes = set(spec["paths"][path]["post"]["responses"])
        assert {"200", "400", "413", "422", "429", "504"} <= codes, (path, codes)


def test_committed_openapi_json_is_current(served):
    committed = (ROOT / "docs" / "openapi.json").read_text(encoding="utf-8")
    generated = openapi_text(served)
    assert committed == generated, ("docs/openapi.json differs from the schema the app generates; "
                                    "regenerate it with: python -m cliprt.serve.openapi docs/openapi.json")
    assert json.loads(committed) == generate_openapi(served)


def _png(seed: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 28, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _success_cases():
    import base64

    img = base64.b64encode(_png(1)).decode()
    emb = [1.0] + [0.0] * 63
    yield "/v1/embeddings", {"input": "a dog"}
    yield "/v1/embeddings", {"input": ["a dog", "a cat"], "encoding_format": "base64"}
    yield "/v1/embeddings", {"input": [img, "data:image/png;base64," + img], "modality": "image"}
    yield "/v1/search", {"query": {"text": "a dog -cat"}, "k": 3}
    yield "/v1/search", {"query": {"embedding": emb}, "k": 20, "filter": {"where": {"label": "dog"}}}
    yield "/v1/search", {"queries": [{"image": img}, {"composed": {"image": img, "text": "red", "alpha": 0.3}}], "k": 2}
    yield "/v1/classify", {"labels": ["dog", "cat"], "image": img}
    yield "/v1/classify", {"labels": ["dog", "cat", "bird"], "images": [img, img], "templates": ["a photo of a {}."]}


@pytest.mark.parametrize("path,body", list(_success_cases()), ids=lambda x: x if isinstance(x, str) else "")
def test_successful_answers_conform_to_the_schema(asgi, path, body):
    """Generated bodies rarely make a valid search or image; these do, so the 200 bodies
    (single and batched results, float and base64 embeddings) are checked as well."""
    case = schema[path]["POST"].Case(body=body, media_type="application/json")
    response = case.call(app=asgi)
    assert response.status_code == 200, response.text
    case.validate_response(response, checks=CHECKS)


def test_uploaded_images_conform_to_the_schema(asgi):
    case = schema["/v1/embed/image"]["POST"].Case(
        body={"files": [_png(2), _png(3)]}, query={"encoding_format": "base64"}, media_type="multipart/form-data")
    response = case.call(app=asgi)
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == 2
    case.validate_response(response, checks=CHECKS)


def test_framework_refusals_use_the_error_shape(asgi):
    """A body that is not UTF-8 (400) or not JSON (422), an unknown route and a wrong method come back as
    {"error": {...}} like every other refusal (schemathesis found the first as {"detail"})."""
    from fastapi.testclient import TestClient

    c = TestClient(asgi)
    for method, path, kwargs, status in [
            ("post", "/v1/search", {"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}}, 400),
            ("post", "/v1/embeddings", {"content": b'{"input": ', "headers": {"content-type": "application/json"}}, 422),
            ("get", "/v1/nothing", {}, 404),
            ("get", "/v1/search", {}, 405)]:
        r = getattr(c, method)(path, **kwargs)
        assert r.status_code == status, (path, r.text)
        err = r.json()["error"]
        assert err["code"] == str(status) and err["message"] and err["type"], err
    assert c.get("/ready").json()["ready"] is True
