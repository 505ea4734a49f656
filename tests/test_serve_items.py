"""The item routes of the service (cliprt.serve.items): adds by image, embedding and text
that are on disk when answered, get, delete, thumbnails only of recorded files (never of
another file), bad input as 4xx with the service still ready, one writer at a time, the
Python client, and kill -9 at random moments losing nothing answered."""
from __future__ import annotations

import base64
import concurrent.futures as cf
import io
import os
import sys
import time

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the 'serve' extra is not installed")
pytest.importorskip("httpx", reason="httpx (FastAPI's TestClient) is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import _cliprt_process  # noqa: E402
import _live_server  # noqa: E402
import _serve_kill  # noqa: E402
import _tiny_clip  # noqa: E402
import cliprt  # noqa: E402
from cliprt.collection import Collection  # noqa: E402
from cliprt.encode import Encoder  # noqa: E402
from cliprt.index import Index  # noqa: E402
from cliprt.serve import ServeConfig, create_app  # noqa: E402

SECRET = b"top-secret-marker-7f3a"


def _png(rng, w=40, h=30, alpha=False) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 4 if alpha else 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _ready(client) -> None:
    r = client.get("/ready")
    assert r.status_code == 200 and r.json()["ready"] is True, r.text


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _tiny_clip.exported(tmp_path_factory, precisions=("fp32",))[1]


@pytest.fixture(scope="module")
def enc(model):
    return Encoder.load(model)


@pytest.fixture(scope="module")
def world(enc, tmp_path_factory):
    """A collection of items "ingested" from files: under root/ the images, outside it a
    secret image and a secret text, and items whose paths lead outside or nowhere."""
    rng = np.random.default_rng(11)
    base = tmp_path_factory.mktemp("items")
    root, outside = base / "root", base / "outside"
    (root / "imgs").mkdir(parents=True)
    outside.mkdir()
    big = _png(rng, 640, 400)
    (root / "imgs" / "big.png").write_bytes(big)
    (root / "imgs" / "clear.png").write_bytes(_png(rng, 300, 200, alpha=True))
    secret_png = _png(rng, 50, 50)
    (outside / "secret.png").write_bytes(secret_png)
    (outside / "secret.txt").write_bytes(SECRET)
    (root / "imgs" / "note.txt").write_bytes(b"not an image " + SECRET)
    os.symlink(outside / "secret.png", root / "imgs" / "link.png")
    paths = {
        "big": str(root / "imgs" / "big.png"),
        "clear": str(root / "imgs" / "clear.png"),
        "outside": str(outside / "secret.png"),
        "missing": str(root / "imgs" / "gone.png"),
        "symlink": str(root / "imgs" / "link.png"),
        "dotdot": str(root / "imgs" / ".." / ".." / "outside" / "secret.png"),
        "relative": "imgs/big.png",
        "text": str(root / "imgs" / "note.txt"),
        "directory": str(root / "imgs"),
        "none": None,
    }
    d = base / "col"
    names = list(paths)
    with Collection.create(d, model="tiny", dim=enc.dim) as col:
        ids = col.add(enc.encode_images([big] * len(names)),
                      [{"key": f"file:{n}", "path": p, "meta": {"name": n}} for n, p in paths.items()])
        col.commit()
    by_name = dict(zip(names, (int(i) for i in ids)))
    app = create_app(encoder=enc, store=Collection.open(d, timeout=0.5),
                     config=ServeConfig(max_wait_ms=2, timeout_s=60, thumbnail_roots=(str(root),)))
    with TestClient(app) as client:
        yield {"client": client, "app": app, "path": str(d), "ids": by_name, "rng": rng, "secret_png": secret_png,
               "root": str(root)}


# ------------------------------------------------------------------------- add, get, delete
def test_add_by_image_embedding_and_text_get_search_delete(world, enc):
    c, rng = world["client"], world["rng"]
    imgs = [_png(rng, 33, 21), _png(rng, 20, 44)]
    vec = rng.standard_normal(enc.dim)
    r = c.post("/v1/items", json={"items": [
        {"image": _b64(imgs[0]), "key": "photo-a", "metadata": {"album": "x", "n": 1}},
        {"image": "data:image/png;base64," + _b64(imgs[1]), "metadata": {"album": "y", "nested": {"k": [1, 2]}}},
        {"embedding": vec.tolist(), "key": "vec-1", "metadata": {"kind": "vector"}},
        {"text": "a red bicycle", "metadata": {"kind": "text"}},
    ]})
    assert r.status_code == 200, r.text
    ids, keys = r.json()["ids"], r.json()["keys"]
    assert len(set(ids)) == 4 and not set(ids) & set(world["ids"].values())
    assert keys[0] == "photo-a" and keys[2] == "vec-1" and keys[1].startswith("api:") and keys[3].startswith("api:")
    got = c.get(f"/v1/items/{ids[1]}").json()
    assert got == {"id": ids[1], "key": keys[1], "path": None, "size": None, "mtime": None,
                   "metadata": {"album": "y", "nested": {"k": [1, 2]}}}
    # on disk when answered: a fresh reader of the directory sees the items and their metadata
    with Collection.open(world["path"]) as reader:
        meta = reader.metadata(ids)
        assert [meta[i]["meta"] for i in ids] == [{"album": "x", "n": 1}, {"album": "y", "nested": {"k": [1, 2]}},
                                                  {"kind": "vector"}, {"kind": "text"}]
        np.testing.assert_allclose(reader.index.reconstruct(ids[0]), enc.encode_images([imgs[0]])[0], atol=1e-5)
        np.testing.assert_allclose(reader.index.reconstruct(ids[3]), enc.encode_texts(["a red bicycle"])[0],
                                   atol=1e-5)
    # searches see answered items
    hits = c.post("/v1/search", json={"query": {"embedding": vec.tolist()}, "k": 1}).json()["results"]
    assert hits[0]["id"] == ids[2] and hits[0]["metadata"]["meta"] == {"kind": "vector"}
    hits = c.post("/v1/search", json={"query": {"image": _b64(imgs[0])}, "k": 3,
                                      "filter": {"where": {"album": "x"}}}).json()["results"]
    assert [h["id"] for h in hits] == [ids[0]]
    # the same key again replaces the item: a new id, the old one gone
    r = c.post("/v1/items", json={"items": [{"embedding": vec.tolist(), "key": "vec-1", "metadata": {"v": 2}}]})
    assert r.status_code == 200, r.text
    new = r.json()["ids"][0]
    assert new > max(ids) and c.get(f"/v1/items/{ids[2]}").status_code == 404
    assert c.get(f"/v1/items/{new}").json()["metadata"] == {"v": 2}
    # delete, then 404 everywhere
    r = c.delete(f"/v1/items/{new}")
    assert r.status_code == 200 and r.json() == {"id": new, "deleted": True}
    for resp in (c.get(f"/v1/items/{new}"), c.delete(f"/v1/items/{new}"), c.get(f"/v1/items/{new}/thumbnail")):
        assert resp.status_code == 404 and f"no item with id {new}" in resp.json()["error"]["message"], resp.text
    hits = c.post("/v1/search", json={"query": {"embedding": vec.tolist()}, "k": 50}).json()["results"]
    assert new not in [h["id"] for h in hits]
    with Collection.open(world["path"]) as reader:
        assert reader.metadata([new]) == {} and new not in reader.index
    assert c.get("/v1/items/999999").status_code == 404
    _ready(c)


def test_concurrent_adds_share_commits(world, enc):
    c, app = world["client"], world["app"]
    writer = app.state.items
    before = writer.commits
    n = 24
    vecs = np.random.default_rng(3).standard_normal((n, enc.dim))

    def add(i):
        return c.post("/v1/items", json={"items": [{"embedding": vecs[i].tolist(), "metadata": {"i": i}}]})

    with cf.ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(add, range(n)))
    assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
    ids = [r.json()["ids"][0] for r in rs]
    assert len(set(ids)) == n
    assert writer.commits - before < n, "concurrent adds did not share a commit"
    with Collection.open(world["path"]) as reader:
        assert {i: reader.metadata([ids[i]])[ids[i]]["meta"]["i"] for i in range(n)} == {i: i for i in range(n)}


# ------------------------------------------------------------------------- thumbnails
def test_thumbnail_is_a_small_image_with_cache_headers(world):
    c, ids = world["client"], world["ids"]
    r = c.get(f"/v1/items/{ids['big']}/thumbnail")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg" and "max-age" in r.headers["cache-control"]
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "JPEG" and max(im.size) <= 256 and max(im.size) == 256 and im.size[0] > im.size[1]
    r2 = c.get(f"/v1/items/{ids['big']}/thumbnail", params={"size": 64})
    im2 = Image.open(io.BytesIO(r2.content))
    assert max(im2.size) == 64
    r3 = c.get(f"/v1/items/{ids['big']}/thumbnail", headers={"If-None-Match": r.headers["etag"]})
    assert r3.status_code == 304 and r3.content == b""
    assert r2.headers["etag"] != r.headers["etag"]
    r = c.get(f"/v1/items/{ids['clear']}/thumbnail")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 256
    for size in (0, 8, 5000, "x"):
        r = c.get(f"/v1/items/{ids['big']}/thumbnail", params={"size": size})
        assert r.status_code == 422 and "size" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("name, phrase", [
    ("outside", "outside the directories"), ("symlink", "outside the directories"),
    ("dotdot", "outside the directories"), ("missing", "cannot be read"), ("relative", "not an absolute path"),
    ("text", "not a readable image"), ("directory", "not a regular file"), ("none", "no recorded file"),
])
def test_thumbnail_of_a_file_outside_missing_or_unreadable_is_404(world, name, phrase):
    c = world["client"]
    r = c.get(f"/v1/items/{world['ids'][name]}/thumbnail")
    assert r.status_code == 404, (name, r.status_code, r.text[:200])
    assert phrase in r.json()["error"]["message"], r.text
    assert SECRET not in r.content
    _ready(c)


def test_path_traversal_in_the_url_reads_no_file(world):
    c = world["client"]
    root = world["root"]
    for url in ["/v1/items/..%2F..%2Fetc%2Fpasswd/thumbnail", "/v1/items/../../etc/passwd",
                f"/v1/items/{world['ids']['big']}/thumbnail/../../../outside/secret.txt",
                "/v1/items/%2e%2e/thumbnail", f"/v1/items/{root}/imgs/big.png/thumbnail",
                "/v1/items/-1/thumbnail", f"/v1/items/{1 << 63}/thumbnail", "/v1/items/1e3/thumbnail",
                "/v1/items/0x1/thumbnail"]:
        r = c.get(url)
        assert r.status_code in (404, 405, 422), (url, r.status_code)
        assert SECRET not in r.content and b"root:" not in r.content
        assert not r.headers.get("content-type", "").startswith("image/"), url
    _ready(c)


# ------------------------------------------------------------------------- bad input
def test_bad_items_are_4xx_naming_the_problem_and_the_service_stays_ready(world, enc):
    c, rng = world["client"], world["rng"]
    good = [0.1] * enc.dim
    nums = ",".join(["0.5"] * (enc.dim - 1))
    raw = [  # bodies that JSON libraries refuse to write, sent as text
        ('{"items": [{"embedding": [NaN,' + nums + ']}]}', 400, "NaN or Inf"),
        ('{"items": [{"embedding": [Infinity,' + nums + ']}]}', 400, "NaN or Inf"),
        ('{"items": [{"embedding": [1e39,' + nums + ']}]}', 400, "float32"),
        ('{"items": [{"embedding": [' + nums + ',1], "metadata": {"x": NaN}}]}', 400, "metadata is not storable"),
        ('{"items": [{"embedding": [' + nums + ',1], "key": "\\ud800"}]}', 400, "lone surrogate"),
        ('{"items": [', 422, ""),
    ]
    cases = [
        ({"items": []}, 400, "no items"),
        ({"items": [{"metadata": {"a": 1}}]}, 400, "exactly one of image, embedding, text"),
        ({"items": [{"embedding": good, "text": "x"}]}, 400, "got embedding, text"),
        ({"items": [{"image": "***"}]}, 400, "items[0].image is not valid base64"),
        ({"items": [{"embedding": good}, {"image": _b64(b"hello, not an image")}]}, 400, "items[1].image"),
        ({"items": [{"embedding": good[:-1]}]}, 400, f"has {enc.dim - 1} values"),
        ({"items": [{"embedding": [0.0] * enc.dim}]}, 400, "all zeros"),
        ({"items": [{"embedding": good, "key": "dup"}, {"embedding": good, "key": "dup"}]}, 400,
         "also the key of items[0]"),
        ({"items": [{"embedding": good, "key": ""}]}, 400, "non-empty"),
        ({"items": [{"embedding": good, "key": "a\u0000b"}]}, 400, "NUL"),
        ({"items": [{"embedding": good, "metadata": {"big": "x" * 70000}}]}, 400, "bytes as JSON"),
        ({"items": [{"text": "   "}]}, 400, "non-empty"),
        ({"items": [{"text": "data:image/png;base64," + _b64(_png(rng))}]}, 400, "data URI"),
        ({"items": [{"embedding": good}] * 257}, 400, "limit"),
        ({"items": [{"embedding": good, "metadata": [1, 2]}]}, 422, "metadata"),
        ({"items": [{"embedding": ["a"] * enc.dim}]}, 422, "embedding"),
        ({"items": [{"embedding": good, "path": "/etc/passwd"}]}, 422, "path"),
        ({"items": {"embedding": good}}, 422, "items"),
        ({}, 422, "items"),
    ]
    before = len(Collection.open(world["path"]))
    for body, status, phrase in cases:
        r = c.post("/v1/items", json=body)
        assert r.status_code == status and phrase in r.json()["error"]["message"], (str(body)[:80], r.text[:300])
        _ready(c)
    for text, status, phrase in raw:
        r = c.post("/v1/items", content=text, headers={"content-type": "application/json"})
        assert r.status_code == status and phrase in r.json()["error"]["message"], (text[:60], r.text[:300])
        _ready(c)
    for bad in ("abc", "1.5", str(1 << 63), "-3"):
        for r in (c.get(f"/v1/items/{bad}"), c.delete(f"/v1/items/{bad}")):
            assert r.status_code == 422 and "item_id" in r.json()["error"]["message"], (bad, r.text)
    with Collection.open(world["path"]) as reader:
        assert len(reader) == before, "a refused add changed the collection"
    _ready(c)


def test_items_need_a_collection_and_read_only_refuses_changes(enc, world, tmp_path):
    ix = Index(enc.dim)
    ix.add(np.random.default_rng(0).standard_normal((3, enc.dim)).astype(np.float32))
    with TestClient(create_app(encoder=enc, store=ix)) as c:
        for r in (c.post("/v1/items", json={"items": [{"text": "x"}]}), c.get("/v1/items/0"),
                  c.delete("/v1/items/0"), c.get("/v1/items/0/thumbnail")):
            assert r.status_code == 400 and "need a collection" in r.json()["error"]["message"]
            assert "bare index" in r.json()["error"]["message"]
        _ready(c)
    with TestClient(create_app(encoder=enc)) as c:
        r = c.post("/v1/items", json={"items": [{"text": "x"}]})
        assert r.status_code == 400 and "need a collection" in r.json()["error"]["message"]
    with TestClient(create_app(encoder=enc, store=Collection.open(world["path"]),
                               config=ServeConfig(write="never"))) as c:
        r = c.post("/v1/items", json={"items": [{"text": "x"}]})
        assert r.status_code == 403 and "read-only" in r.json()["error"]["message"]
        assert c.delete(f"/v1/items/{world['ids']['big']}").status_code == 403
        assert c.get(f"/v1/items/{world['ids']['big']}").json()["metadata"] == {"name": "big"}
        _ready(c)


# ------------------------------------------------------------------------- one writer
def test_a_second_writer_is_refused(enc, model, tmp_path):
    d = tmp_path / "col"
    Collection.create(d, model="tiny", dim=enc.dim).close()
    store = Collection.open(d)
    app = create_app(encoder=enc, store=store, config=ServeConfig(write="start"))
    with TestClient(app) as c:
        assert app.state.service.collection.writing
        # another process: the library and the serve command both get LockedError
        code = ("import sys, cliprt\nfrom cliprt.collection import Collection\n"
                "col = Collection.open(sys.argv[1], timeout=0.2)\n"
                "try:\n    col.add([[1.0] * %d], [{'key': 'x'}])\n"
                "except cliprt.LockedError as e:\n    print('LOCKED', e); sys.exit(3)\n" % enc.dim)
        p = _cliprt_process.subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True,
                                           timeout=60, env=dict(os.environ, PYTHONPATH=os.path.dirname(
                                               os.path.dirname(os.path.realpath(cliprt.__file__)))))
        assert p.returncode == 3 and "LOCKED" in p.stdout and str(os.getpid()) in p.stdout, (p.stdout, p.stderr)
        p = _cliprt_process.run_cliprt("serve", "--model", model, "--collection", d, "--port",
                                       str(_serve_kill.free_port()), "--writable", timeout=60)
        assert p.returncode == 2 and "lock" in p.stderr.lower() and str(os.getpid()) in p.stderr, p.stderr
        # adds still work here
        r = c.post("/v1/items", json={"items": [{"text": "still the writer"}]})
        assert r.status_code == 200, r.text
    store.close()       # a store passed in is the caller's to close (and its writer lock with it)
    # a service whose first add finds another writer answers 409, and stays ready
    with Collection.open(d) as other:
        other.begin_writing()
        with TestClient(create_app(encoder=enc, store=Collection.open(d, timeout=0.2))) as c:
            r = c.post("/v1/items", json={"items": [{"text": "x"}]})
            assert r.status_code == 409 and "another process is writing" in r.json()["error"]["message"], r.text
            _ready(c)
            assert c.post("/v1/search", json={"query": {"text": "x"}, "k": 1}).status_code == 200


# ------------------------------------------------------------------------- the client
def test_python_client_add_get_delete_thumbnail(world, enc):
    with _live_server.serving(world["app"]) as url:
        c = cliprt.Client(url)
        rng = np.random.default_rng(9)
        emb = rng.standard_normal((3, enc.dim)).astype(np.float32)
        ids = c.add(embeddings=emb, metadata=[{"i": i} for i in range(3)], keys=["c0", "c1", "c2"])
        assert ids.dtype == np.int64 and ids.shape == (3,) and len(set(ids.tolist())) == 3
        assert c.get_item(ids[1]) == {"id": int(ids[1]), "key": "c1", "path": None, "size": None, "mtime": None,
                                      "metadata": {"i": 1}}
        img = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
        (iid,) = c.add(images=[img], metadata=[{"from": "pil"}])
        np.testing.assert_allclose(c.search(embedding=enc.encode_images([img])[0], k=1)[0].id, iid)
        (tid,) = c.add(texts="a green door")
        assert c.get_item(tid)["key"].startswith("api:")
        c.delete(ids[0])
        with pytest.raises(cliprt.serve.client.ServiceError, match="404"):
            c.get_item(ids[0])
        with pytest.raises(cliprt.serve.client.ServiceError, match="404"):
            c.delete(ids[0])
        thumb = c.thumbnail(world["ids"]["big"], size=100)
        assert max(Image.open(io.BytesIO(thumb)).size) == 100
        with pytest.raises(cliprt.serve.client.ServiceError, match="400"):
            c.add(embeddings=[[float("nan")] * enc.dim])
        with pytest.raises(ValueError, match="one of"):
            c.add()


# ------------------------------------------------------------------------- kill -9
def test_kill_9_at_random_moments_loses_no_answered_add(model, enc, tmp_path):
    d = str(tmp_path / "col")
    Collection.create(d, model="tiny", dim=enc.dim).close()
    t0 = time.monotonic()
    result = _serve_kill.run(model, d, enc.dim, kills=20, threads=3, window=(0.1, 0.8), seed=1234)
    assert result.kills == 20
    assert result.acknowledged >= 100, f"too few adds were answered to test anything: {result}"
    assert result.lost == 0 and result.duplicates == 0 and result.problems == [], result
    assert time.monotonic() - t0 < 120
    # and a server started on it afterwards serves every answered item
    port = _serve_kill.free_port()
    p = _serve_kill.start_server(model, d, port)
    try:
        _serve_kill.wait_ready(p, f"http://127.0.0.1:{port}")
        c = cliprt.Client(f"http://127.0.0.1:{port}")
        with Collection.open(d) as col:
            n = len(col)
        assert c.models()["index"]["rows"] == n >= result.acknowledged
    finally:
        p.kill()
        p.wait(30)
