"""ZeroShotClassifier, Collection (index + SQLite metadata) and Retriever.

The math is checked against float64 numpy on the tiny exported open_clip model
(tests/_tiny_clip.py); the collection's crash rule (index saved before metadata, orphans
dropped on open) is checked by writing an index without its metadata commit.
"""
from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the 'export' extra to build the test model")
pytest.importorskip("open_clip", reason="needs the 'export' extra to build the test model")
from PIL import Image  # noqa: E402

import _tiny_clip  # noqa: E402
import cliprt  # noqa: E402
from cliprt.collection import Collection, CollectionError  # noqa: E402
from cliprt.encode import Encoder  # noqa: E402
from cliprt.retrieval import Retriever, parse_query  # noqa: E402
from cliprt.zeroshot import ZeroShotClassifier  # noqa: E402


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    _, out = _tiny_clip.exported(tmp_path_factory)
    return Encoder.load(out)


def _png(rng, w=48, h=40) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _unit64(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_zero_shot_matches_float64_reference(enc, rng):
    classes = ["dog", "cat", "red car", "tree"]
    templates = ["a photo of a {}.", "{}", "a drawing of the {}"]
    weights = [2.0, 1.0, 0.5]
    clf = ZeroShotClassifier(enc, classes, templates=templates, template_weights=weights)
    prompts = _unit64(enc.encode_texts([t.format(c) for c in classes for t in templates])).reshape(4, 3, -1)
    ref_cls = _unit64((prompts * (np.array(weights) / sum(weights))[None, :, None]).sum(1))
    assert np.abs(clf.class_embeddings - ref_cls).max() < 1e-6
    images = [_png(rng) for _ in range(5)]
    img = _unit64(enc.encode_images(images))
    logits = img @ ref_cls.T * enc.manifest.logit_scale
    p_ref = np.exp(logits - logits.max(1, keepdims=True))
    p_ref /= p_ref.sum(1, keepdims=True)
    p = clf.predict_proba(images)
    assert p.dtype == np.float32 and p.shape == (5, 4)
    assert np.abs(p - p_ref).max() < 1e-5 and np.abs(p.sum(1) - 1).max() < 1e-5
    assert np.array_equal(clf.predict(images), np.argmax(img @ ref_cls.T, axis=1))
    idx, top = clf.topk(embeddings=img.astype(np.float32), k=10)
    assert idx.shape == (5, 4) and np.all(np.diff(top, axis=1) <= 0)
    assert np.array_equal(clf.predict(embeddings=img.astype(np.float32)), clf.predict(images))


def test_zero_shot_sigmoid_scoring(enc, rng):
    manifest = dataclasses.replace(enc.manifest, scoring="sigmoid", logit_scale=10.0, logit_bias=-3.0)

    class SiglipLike:
        dim = enc.dim

        def __init__(self):
            self.manifest = manifest

        def encode_texts(self, texts, batch_size=None):
            return enc.encode_texts(texts)

    clf = ZeroShotClassifier(SiglipLike(), ["a", "b"], templates=["{}"])
    e = _unit64(rng.standard_normal((3, enc.dim))).astype(np.float32)
    p = clf.predict_proba(embeddings=e)
    ref = 1 / (1 + np.exp(-(10.0 * (e.astype(np.float64) @ clf.class_embeddings.T.astype(np.float64)) - 3.0)))
    assert np.abs(p - ref).max() < 1e-5


def test_zero_shot_bad_arguments(enc):
    with pytest.raises(ValueError, match="empty"):
        ZeroShotClassifier(enc, [])
    # ImageNet has two classes named "missile" (and two "sunglasses"): same names are allowed
    assert ZeroShotClassifier(enc, ["a", "a"], templates=["{}"]).predict(embeddings=np.ones((1, enc.dim))).shape == (1,)
    with pytest.raises(ValueError, match="template"):
        ZeroShotClassifier(enc, ["a"], templates=["no placeholder"])
    clf = ZeroShotClassifier(enc, ["a", "b"], templates=["{}"], template_weights=[0.0])
    with pytest.raises(ValueError, match="template_weights"):
        clf.class_embeddings
    clf = ZeroShotClassifier(enc, ["a", "b"])
    with pytest.raises(ValueError, match="embeddings"):
        clf.predict(embeddings=np.zeros((2, enc.dim + 1), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        clf.predict(embeddings=np.full((1, enc.dim), np.nan, np.float32))
    with pytest.raises(ValueError, match="either"):
        clf.predict()


def test_parse_query():
    assert parse_query("beach") == [("beach", 1.0)]
    assert parse_query('sunny beach -people -"parked cars" well-known') == [
        ("sunny beach well-known", 1.0), ("people", -0.5), ("parked cars", -0.5)]
    with pytest.raises(ValueError, match="only negative"):
        parse_query("-people")
    with pytest.raises(ValueError):
        parse_query("   ")


@pytest.fixture
def collection(enc, rng, tmp_path):
    images = [_png(rng, 40 + i, 30 + 2 * i) for i in range(12)]
    col = Collection.create(tmp_path / "col", model="tiny", dim=enc.dim)
    emb = enc.encode_images(images)
    records = [{"key": f"img{i}", "path": f"/photos/{'dogs' if i % 3 == 0 else 'misc'}/img{i}.png", "size": i,
                "meta": {"label": "dog" if i % 3 == 0 else "other", "n": i}} for i in range(12)]
    ids = col.add(emb, records)
    col.commit()
    return col, images, emb, ids


def test_collection_roundtrip_and_filters(collection, enc):
    col, images, emb, ids = collection
    assert ids.tolist() == list(range(12)) and len(col) == 12
    col2 = Collection.open(col.path)
    assert len(col2) == 12
    meta = col2.metadata([0, 5, -1])
    assert set(meta) == {0, 5} and meta[5]["meta"] == {"label": "other", "n": 5}
    assert sorted(col2.select({"label": "dog"}).tolist()) == [0, 3, 6, 9]
    assert sorted(col2.select({"n": [1, 2]}).tolist()) == [1, 2]
    assert sorted(col2.select(path_like="%/dogs/%").tolist()) == [0, 3, 6, 9]
    with pytest.raises(ValueError, match="field"):
        col2.select({"x'); DROP TABLE items; --": 1})
    # One writer at a time: while the creator holds the collection, a second writer is refused.
    with pytest.raises(cliprt.LockedError, match=str(os.getpid())):
        Collection.open(col.path, timeout=0).begin_writing()
    col.close()
    # replacing a key gives it a new id and removes the old vector
    new = col2.add(emb[:1], [{"key": "img0", "path": "/photos/dogs/img0.png", "meta": {"label": "dog"}}])
    col2.commit()
    assert new.tolist() == [12] and 0 not in col2.index and len(col2) == 12
    with pytest.raises(CollectionError, match="model"):
        Collection.open_or_create(col.path, model="other", dim=enc.dim)
    with pytest.raises(CollectionError, match="no collection"):
        Collection.open(os.path.join(col.path, "nope"))


def test_collection_orphans_hidden_by_readers_removed_by_the_next_writer(collection, enc, rng):
    col, images, emb, _ = collection
    extra = enc.encode_images([_png(rng)])
    col.index.add(extra, np.array([100]))
    col.index.save(os.path.join(col.path, "vectors"))     # index written, metadata never committed
    col.close()
    files = {n: os.stat(os.path.join(col.path, "vectors", n)).st_mtime_ns
             for n in os.listdir(os.path.join(col.path, "vectors"))}
    reader = Collection.open(col.path)
    assert len(reader) == 12 and 100 in reader.index           # hidden, not removed: readers never write
    hits = Retriever(enc, reader).search_vector(extra[0], k=13)
    assert [h.id for h in hits if h.id == 100] == [] and len(hits) == 12
    assert {n: os.stat(os.path.join(col.path, "vectors", n)).st_mtime_ns
            for n in os.listdir(os.path.join(col.path, "vectors"))} == files
    writer = Collection.open(col.path)
    writer.begin_writing()
    assert 100 not in writer.index and len(writer) == 12
    writer.close()
    assert 100 not in Collection.open(col.path).index
    # The orphan's id is never handed out again.
    writer = Collection.open(col.path)
    new = writer.add(extra, [{"key": "new"}])
    assert new.tolist() == [101]
    writer.close()


def test_retriever(collection, enc):
    col, images, emb, ids = collection
    r = Retriever(enc, col)
    hits = r.search_image(images[4], k=3)
    assert hits[0].id == 4 and abs(hits[0].score - 1.0) < 1e-4 and hits[0].path.endswith("img4.png")
    assert hits[0].metadata["meta"]["n"] == 4
    filtered = r.search_image(images[4], k=20, where={"label": "dog"})
    assert sorted(h.id for h in filtered) == [0, 3, 6, 9]
    # composed search: alpha = 0 is image search, alpha = 1 is text search
    assert [h.id for h in r.search_composed(images[4], "a dog", alpha=0.0, k=5)] == [h.id for h in
                                                                                     r.search_image(images[4], k=5)]
    assert [h.id for h in r.search_composed(images[4], "a dog", alpha=1.0, k=5)] == [h.id for h in
                                                                                     r.search_text("a dog", k=5)]
    # a negative term: the query is normalise(t(pos) - 0.5 t(neg)), scored by cosine
    t = _unit64(enc.encode_texts(["a beach", "people"]))
    q = _unit64(t[0] - 0.5 * t[1])
    ref = np.argsort(-(_unit64(emb) @ q), kind="stable")[:5]
    got = [h.id for h in r.search_text("a beach -people", k=5)]
    assert got[:3] == ref[:3].tolist()
    with pytest.raises(ValueError, match="alpha"):
        r.search_composed(images[0], "x", alpha=1.5)
    bare = Retriever(enc, col.index)
    assert bare.search_image(images[2], k=1)[0].metadata == {}
    with pytest.raises(ValueError, match="Collection"):
        bare.search_image(images[2], where={"label": "dog"})
    with pytest.raises(ValueError, match="65-d vectors"):
        Retriever(enc, cliprt.Index(enc.dim + 1))


def test_retriever_search_takes_text_image_or_both(collection, enc):
    col, images, _, _ = collection
    r = Retriever(enc, col)
    ids = lambda hits: [(h.id, round(h.score, 5)) for h in hits]  # noqa: E731
    assert ids(r.search("a dog", k=4)) == ids(r.search_text("a dog", k=4))
    assert ids(r.search(image=images[7], k=4)) == ids(r.search_image(images[7], k=4))
    assert ids(r.search("a dog", images[7], k=4, alpha=0.3)) == ids(r.search_composed(images[7], "a dog", 0.3, k=4))
    assert ids(r.search("a dog", k=20, where={"label": "dog"})) == ids(r.search_text("a dog", k=20,
                                                                                    where={"label": "dog"}))
    with pytest.raises(ValueError, match="text query, an image, or both"):
        r.search()
    with pytest.raises(ValueError, match="text query, an image, or both"):
        r.search("", None)
