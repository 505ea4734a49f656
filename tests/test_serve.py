"""The HTTP service (cliprt.serve): the OpenAI embeddings shape, search parity with the
in-process Retriever, classification, bad input (4xx naming the problem, still ready),
limits (413, 429, 504), the API key, metrics, the batcher, the Python client and the
official openai client against a live server."""
from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import os
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
pytest.importorskip("httpx", reason="httpx (FastAPI's TestClient) is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import _live_server  # noqa: E402
import _tiny_clip  # noqa: E402
from cliprt.collection import Collection  # noqa: E402
from cliprt.encode import Encoder  # noqa: E402
from cliprt.retrieval import Retriever  # noqa: E402
from cliprt.serve import Batcher, QueueFull, ServeConfig, create_app  # noqa: E402
from cliprt.zeroshot import ZeroShotClassifier  # noqa: E402


def _png(rng, w=40, h=30) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    return Encoder.load(_tiny_clip.exported(tmp_path_factory, precisions=("fp32",))[1])


@pytest.fixture(scope="module")
def world(enc, tmp_path_factory):
    rng = np.random.default_rng(5)
    images = [_png(rng, 30 + i, 24 + 2 * i) for i in range(23)]
    d = tmp_path_factory.mktemp("serve") / "col"
    with Collection.create(d, model="tiny", dim=enc.dim) as col:
        col.add(enc.encode_images(images), [{"key": f"k{i}", "path": f"/p/{'dog' if i % 3 == 0 else 'x'}/{i}.png",
                                             "meta": {"label": "dog" if i % 3 == 0 else "other", "n": i}}
                                            for i in range(23)])
        col.commit()
    reader = Collection.open(d)
    app = create_app(encoder=enc, store=reader, config=ServeConfig(max_wait_ms=2, timeout_s=60))
    with TestClient(app) as client:
        yield {"client": client, "app": app, "images": images, "reader": reader, "retriever": Retriever(enc, reader),
               "rng": rng, "path": str(d)}


def _ready(client) -> None:
    r = client.get("/ready")
    assert r.status_code == 200 and r.json()["ready"] is True, r.text


# ------------------------------------------------------------------------- embeddings
def test_text_embeddings_openai_shape(world, enc):
    c = world["client"]
    texts = ["a photo of a dog", "a cat", "x" * 300]
    r = c.post("/v1/embeddings", json={"model": "whatever", "input": texts})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == enc.manifest.name
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and all(d["object"] == "embedding" for d in body["data"])
    got = np.array([d["embedding"] for d in body["data"]], np.float32)
    np.testing.assert_allclose(got, enc.encode_texts(texts), atol=1e-6)
    _, lengths = enc.tokenize(texts)
    assert body["usage"] == {"prompt_tokens": int(np.sum(lengths)), "total_tokens": int(np.sum(lengths))}
    r = c.post("/v1/embeddings", json={"input": "a cat", "encoding_format": "base64"})
    row = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(row, enc.encode_texts(["a cat"])[0], atol=1e-6)


def test_image_embeddings_base64_data_uri_and_upload(world, enc):
    c, images = world["client"], world["images"]
    want = enc.encode_images(images[:3])
    inputs = [_b64(images[0]), "data:image/png;base64," + _b64(images[1]), _b64(images[2])]
    r = c.post("/v1/embeddings", json={"input": inputs, "modality": "image"})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array([d["embedding"] for d in r.json()["data"]], np.float32), want, atol=1e-6)
    files = [("files", (f"{i}.png", images[i], "image/png")) for i in range(3)]
    r = c.post("/v1/embed/image", files=files)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array([d["embedding"] for d in r.json()["data"]], np.float32), want, atol=1e-6)


def test_data_uri_sent_as_text_is_refused(world):
    c = world["client"]
    r = c.post("/v1/embeddings", json={"input": ["fine", "data:image/png;base64," + _b64(world["images"][0])]})
    assert r.status_code == 400 and "modality" in r.json()["error"]["message"]
    _ready(c)


# ------------------------------------------------------------------------- search
def _same_hits(got, want):
    assert [h["id"] for h in got] == [h.id for h in want]
    np.testing.assert_allclose([h["score"] for h in got], [h.score for h in want], atol=1e-6)
    for g, w in zip(got, want):
        assert g["metadata"]["path"] == w.metadata["path"]


def test_search_matches_the_in_process_retriever(world, enc):
    c, r, images = world["client"], world["retriever"], world["images"]
    cases = [
        ({"text": "a dog -cat"}, {}, r.search_text("a dog -cat", k=7)),
        ({"image": _b64(images[4])}, {}, r.search_image(images[4], k=7)),
        ({"composed": {"image": _b64(images[5]), "text": "at night", "alpha": 0.3}}, {},
         r.search_composed(images[5], "at night", alpha=0.3, k=7)),
        ({"embedding": enc.encode_texts(["zebra"])[0].tolist()}, {},
         r.search_vector(enc.encode_texts(["zebra"])[0], k=7)),
        ({"text": "a dog"}, {"where": {"label": "dog"}}, r.search_text("a dog", k=7, where={"label": "dog"})),
        ({"text": "a dog"}, {"path_like": "/p/x/%"}, r.search_text("a dog", k=7, path_like="/p/x/%")),
    ]
    for query, filt, want in cases:
        body = {"query": query, "k": 7}
        if filt:
            body["filter"] = filt
        resp = c.post("/v1/search", json=body)
        assert resp.status_code == 200, (query, resp.text)
        _same_hits(resp.json()["results"], want)
    # a batch of queries, and k larger than the collection
    resp = c.post("/v1/search", json={"queries": [{"text": "a dog"}, {"image": _b64(images[1])}], "k": 50})
    assert resp.status_code == 200, resp.text
    res = resp.json()["results"]
    _same_hits(res[0], r.search_text("a dog", k=50))
    _same_hits(res[1], r.search_image(images[1], k=50))
    assert len(res[0]) == 23


def test_concurrent_searches_coalesce_and_stay_exact(world, enc):
    c, r = world["client"], world["retriever"]
    words = ["dog", "cat", "tree", "car", "boat", "sky", "house", "bird"] * 3
    service = world["app"].state.service
    before = service.batchers["search"].batches
    with cf.ThreadPoolExecutor(12) as pool:
        outs = list(pool.map(lambda w: c.post("/v1/search", json={"query": {"text": w}, "k": 5}), words))
    for w, resp in zip(words, outs):
        assert resp.status_code == 200
        _same_hits(resp.json()["results"], r.search_text(w, k=5))
    assert service.batchers["search"].batches - before < len(words)     # some shared a scan


# ------------------------------------------------------------------------- classify
def test_classify(world, enc):
    c, images = world["client"], world["images"]
    labels = ["a dog", "a cat", "a tree"]
    want = ZeroShotClassifier(enc, labels).predict_proba(images[:2])
    r = c.post("/v1/classify", json={"labels": labels, "images": [_b64(images[0]), _b64(images[1])]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["probabilities"], want, atol=1e-5)
    r = c.post("/v1/classify", json={"labels": labels, "image": _b64(images[0])})
    np.testing.assert_allclose(r.json()["probabilities"], want[0], atol=1e-5)


# ------------------------------------------------------------------------- bad input
def _bomb() -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_bad_requests_are_4xx_naming_the_problem_and_the_service_stays_ready(world, enc):
    c, images = world["client"], world["images"]
    one_by_one = io.BytesIO()
    Image.new("RGB", (1, 1)).save(one_by_one, format="PNG")
    tiff_cmyk = io.BytesIO()
    Image.new("CMYK", (4, 4)).save(tiff_cmyk, format="TIFF")
    cases = [
        ("/v1/embeddings", {"input": [_b64(images[1]), _b64(images[0][:50])], "modality": "image"}, 400,
         "truncated|cannot"),
        ("/v1/embeddings", {"input": [_b64(b"not an image at all")], "modality": "image"}, 400, "format"),
        ("/v1/embeddings", {"input": [_b64(_bomb())], "modality": "image"}, 400, "bomb|max_pixels"),
        ("/v1/embeddings", {"input": ["%%% not base64"], "modality": "image"}, 400, "base64"),
        ("/v1/embeddings", {"input": [], "modality": "text"}, 400, "no inputs"),
        ("/v1/embeddings", {"input": [1, 2]}, 422, "input"),
        ("/v1/embeddings", {"input": "a", "dimensions": enc.dim + 1}, 400, "dimensions"),
        ("/v1/embeddings", {"input": "a", "encoding_format": "int8"}, 422, "encoding_format"),
        ("/v1/embeddings", {"input": "a", "surprise": 1}, 422, "surprise"),
        ("/v1/embeddings", {"input": ["x"] * 300}, 400, "limit"),
        ("/v1/search", {"query": {"embedding": [0.1] * (enc.dim - 1)}}, 400, "-d vectors"),
        ("/v1/search", ('{"query": {"embedding": [%s]}}' % ", ".join(["NaN"] * enc.dim)).encode(), 400, "NaN"),
        ("/v1/search", {"query": {"text": "dog"}, "filter": {"where": {"bad'field": 1}}}, 400, "field"),
        ("/v1/search", {"query": {"text": "dog"}, "filter": {"where": {"label": {"a": 1}}}}, 400, "label"),
        ("/v1/search", {"query": {"text": "dog"}, "k": 0}, 400, "k must be"),
        ("/v1/search", {"query": {"text": "dog"}, "k": 10**6}, 400, "k must be"),
        ("/v1/search", {"query": {"sound": "woof"}}, 400, "unknown query kind"),
        ("/v1/search", {"query": {"text": "dog", "image": "x"}}, 400, "one of"),
        ("/v1/search", {}, 400, "query"),
        ("/v1/search", {"query": {"image": _b64(b"GIF89a broken")}}, 400, "image"),
        ("/v1/search", {"query": {"composed": {"image": _b64(images[0]), "text": "x", "alpha": 2}}}, 400, "alpha"),
        ("/v1/classify", {"labels": [], "image": _b64(images[0])}, 400, "labels"),
        ("/v1/classify", {"labels": ["a"], "image": _b64(images[0]), "templates": ["no placeholder"]}, 400, "{}"),
    ]
    for path, body, status, pattern in cases:
        if isinstance(body, bytes):     # JSON the client library would not write (NaN)
            r = c.post(path, content=body, headers={"content-type": "application/json"})
        else:
            r = c.post(path, json=body)
        assert r.status_code == status, (path, body if len(str(body)) < 200 else "...", r.status_code, r.text)
        msg = r.json()["error"]["message"]
        import re

        assert re.search(pattern, msg, re.I), (path, pattern, msg)
        _ready(c)
    # a 1x1 image and a CMYK TIFF are valid images: embedded, not refused
    r = c.post("/v1/embeddings", json={"input": [_b64(one_by_one.getvalue()), _b64(tiff_cmyk.getvalue())],
                                       "modality": "image"})
    assert r.status_code == 200, r.text
    # not JSON at all
    r = c.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    _ready(c)


def test_body_over_the_limit_is_413(enc):
    app = create_app(encoder=enc, config=ServeConfig(max_body_bytes=1000))
    with TestClient(app) as c:
        r = c.post("/v1/embeddings", json={"input": "x" * 2000})
        assert r.status_code == 413 and "1000 bytes" in r.json()["error"]["message"]
        r = c.post("/v1/embeddings", json={"input": "small"})
        assert r.status_code == 200


def test_full_queue_is_429_and_timeout_504(enc):
    app = create_app(encoder=enc, config=ServeConfig(queue=2, max_batch=1, max_wait_ms=0, timeout_s=0.5))
    service = app.state.service
    gate = threading.Event()
    real = service.batchers["text"]._fn

    def slow(items):
        gate.wait(5)
        return real(items)

    service.batchers["text"]._fn = slow
    with TestClient(app) as c:
        with cf.ThreadPoolExecutor(6) as pool:
            futs = [pool.submit(c.post, "/v1/embeddings", json={"input": f"t{i}"}) for i in range(6)]
            time.sleep(0.3)
            gate_timer = threading.Timer(1.0, gate.set)
            gate_timer.start()
            results = [f.result() for f in futs]
        codes = sorted(r.status_code for r in results)
        assert 429 in codes and 504 in codes, codes
        for r in results:
            if r.status_code == 429:
                assert r.headers["retry-after"] == "1" and "queue is full" in r.json()["error"]["message"]
        service.batchers["text"]._fn = real
        gate_timer.join()
        deadline = time.monotonic() + 10
        while service.batchers["text"].depth and time.monotonic() < deadline:    # the queue drains
            time.sleep(0.01)
        assert c.post("/v1/embeddings", json={"input": "after"}).status_code == 200
        _ready(c)


def test_api_key(enc):
    app = create_app(encoder=enc, api_key="s3cret")
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        assert c.get("/ready").status_code == 200
        assert c.get("/metrics").status_code == 200
        r = c.post("/v1/embeddings", json={"input": "a"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert c.post("/v1/embeddings", json={"input": "a"}, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.get("/v1/models").status_code == 401
        ok = c.post("/v1/embeddings", json={"input": "a"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_models_metrics_and_health(world, enc):
    c = world["client"]
    m = c.get("/v1/models").json()["data"][0]
    assert m["dim"] == enc.dim and m["towers"] == ["image", "text"] and m["index"]["rows"] == 23
    c.post("/v1/embeddings", json={"input": "metrics please"})
    text = c.get("/metrics").text
    assert 'cliprt_requests_total{route="/v1/embeddings",status="200"}' in text
    assert "cliprt_batch_size_bucket" in text and "cliprt_queue_depth" in text
    assert c.get("/health").json() == {"status": "ok"}


def test_ready_reports_a_wedged_tower(enc):
    app = create_app(encoder=enc)
    service = app.state.service

    def broken(items):
        raise RuntimeError("the tower is wedged")

    with TestClient(app, raise_server_exceptions=False) as c:
        real = service.batchers["text"]._fn
        service.batchers["text"]._fn = broken
        r = c.post("/v1/embeddings", json={"input": "a"})
        assert r.status_code == 500 and "wedged" in r.json()["error"]["message"]
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["text"] == "last batch failed"
        service.batchers["text"]._fn = real
        assert c.post("/v1/embeddings", json={"input": "a"}).status_code == 200
        assert c.get("/ready").status_code == 200


# ------------------------------------------------------------------------- batcher
def test_batcher_coalesces_isolates_errors_and_bounds_its_queue():
    sizes = []

    def fn(items):
        sizes.append(len(items))
        time.sleep(0.02)
        return [ValueError(f"bad {x}") if x == 13 else x * 2 for x in items]

    b = Batcher("t", fn, max_batch=8, max_wait=0.05, max_queue=64)
    futs = [b.submit([i]) for i in range(20)] + [b.submit([100, 101, 102])]
    for i, f in enumerate(futs[:20]):
        if i == 13:
            with pytest.raises(ValueError, match="bad 13"):
                f.result(5)
        else:
            assert f.result(5) == [2 * i]
    assert futs[20].result(5) == [200, 202, 204]
    assert max(sizes) <= 8 and len(sizes) < 21 and sum(sizes) == 23
    with pytest.raises(QueueFull):
        b.submit(list(range(65)))
    b.close()


# ------------------------------------------------------------------------- live server
@pytest.fixture(scope="module")
def live(world):
    with _live_server.serving(world["app"]) as url:
        yield url


def test_official_openai_client(live, enc):
    openai = pytest.importorskip("openai", reason="the openai package is not installed")
    client = openai.OpenAI(base_url=live + "/v1", api_key="unused")
    texts = ["a photo of a dog", "a red car"]
    r = client.embeddings.create(model="cliprt", input=texts)
    got = np.array([d.embedding for d in r.data], np.float32)
    np.testing.assert_allclose(got, enc.encode_texts(texts), atol=1e-6)
    r = client.embeddings.create(model="cliprt", input="one", encoding_format="float")
    np.testing.assert_allclose(r.data[0].embedding, enc.encode_texts(["one"])[0], atol=1e-6)


def test_python_client(live, world, enc):
    import cliprt

    c = cliprt.Client(live)
    assert c.ready() and c.models()["dim"] == enc.dim
    np.testing.assert_allclose(c.embed_texts(["a", "b"]), enc.encode_texts(["a", "b"]), atol=1e-6)
    np.testing.assert_allclose(c.embed_images(world["images"][:2]), enc.encode_images(world["images"][:2]), atol=1e-6)
    hits = c.search(text="a dog", k=4, where={"label": "dog"})
    want = world["retriever"].search_text("a dog", k=4, where={"label": "dog"})
    assert [h.id for h in hits] == [h.id for h in want]
    np.testing.assert_allclose([h.score for h in hits], [h.score for h in want], atol=1e-6)
    probs = c.classify(world["images"][:1], ["a dog", "a cat"])
    np.testing.assert_allclose(probs, ZeroShotClassifier(enc, ["a dog", "a cat"]).predict_proba(world["images"][:1]),
                               atol=1e-5)
    with pytest.raises(cliprt.serve.client.ServiceError, match="400"):
        c.search(embedding=[0.0] * (enc.dim + 1))


def test_cli_serve_answers_and_requires_its_key(world, tmp_path_factory):
    import json
    import subprocess
    import urllib.error
    import urllib.request

    model = _tiny_clip.exported(tmp_path_factory, precisions=("fp32",))[1]
    port = _live_server.free_port()
    env = dict(os.environ, CLIPRT_TEST_KEY="k3y")
    p = subprocess.Popen([sys.executable, "-m", "cliprt", "serve", "--model", model, "--collection", world["path"],
                          "--port", str(port), "--api-key-env", "CLIPRT_TEST_KEY"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/ready", timeout=2) as r:
                    assert json.loads(r.read())["ready"] is True
                    break
            except (urllib.error.URLError, ConnectionError):
                assert p.poll() is None, p.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        req = urllib.request.Request(url + "/v1/search", data=json.dumps({"query": {"text": "a dog"}, "k": 3}).encode(),
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 401
        req.add_header("Authorization", "Bearer k3y")
        with urllib.request.urlopen(req, timeout=30) as r:
            hits = json.loads(r.read())["results"]
        want = world["retriever"].search_text("a dog", k=3)
        assert [h["id"] for h in hits] == [h.id for h in want]
    finally:
        p.terminate()
        p.wait(30)


def test_shutdown_closes_only_what_the_app_opened(world, enc):
    path = world["path"]
    mine = Collection.open(path)
    with TestClient(create_app(encoder=enc, store=mine)) as c:
        assert c.get("/ready").status_code == 200
    assert len(mine.select({"label": "dog"})) == 8          # still open for its owner
    mine.close()
    app = create_app(encoder=enc, collection=path)
    with TestClient(app) as c:
        assert c.get("/ready").status_code == 200
    with pytest.raises(AttributeError):                       # the app's own collection is closed
        app.state.service.collection.select({"label": "dog"})
