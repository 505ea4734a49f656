"""cliprt.ingest (Collection.ingest), the library ingest that `cliprt embed` calls: what
it embeds, skips, retries and records, its commits, the sources it takes, and its errors."""
from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the 'export' extra to build the test model")
pytest.importorskip("open_clip", reason="needs the 'export' extra to build the test model")
from PIL import Image  # noqa: E402

import _tiny_clip  # noqa: E402
import cliprt  # noqa: E402
from cliprt.collection import Collection  # noqa: E402
from cliprt.encode import Encoder  # noqa: E402
from cliprt.sources import SourceError, SourceItem  # noqa: E402


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return Encoder.load(_tiny_clip.exported(tmp_path_factory)[1])


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(11)
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(7):
        Image.fromarray(rng.integers(0, 256, (33 + i, 41, 3), dtype=np.uint8)).save(root / f"{i}.jpg")
    (root / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def _collection(tmp_path, encoder, name="col"):
    return Collection.create(tmp_path / name, model="tiny", dim=encoder.dim)


def test_ingest_embeds_records_and_resumes(encoder, photos, tmp_path):
    col = _collection(tmp_path, encoder)
    seen = []
    report = cliprt.ingest(col, photos, encoder, batch_size=3, progress=seen.append)
    assert (report.embedded, report.failed, report.skipped, report.total) == (7, 1, 0, 7)
    assert sum(seen) == 8 and report.seconds > 0 and report.images_per_s > 0
    assert report.failures[0]["path"].endswith("bad.jpg") and report.failures[0]["error"]
    assert report.to_json()["failures"] == [{"path": report.failures[0]["path"],
                                             "error": report.failures[0]["error"]}]
    # the embeddings are the encoder's, under the ids the metadata names
    ids = col.index.ids()
    meta = col.metadata(ids)
    paths = [meta[int(i)]["path"] for i in ids]
    want = encoder.encode_images(paths)
    np.testing.assert_allclose(col.index.reconstruct(ids), want, atol=1e-5)
    col.close()

    # reopened: nothing new -> everything skipped, the failure included; a changed file is redone
    col = Collection.open(tmp_path / "col")
    report = col.ingest(photos, encoder)
    assert (report.embedded, report.failed, report.skipped, report.total) == (0, 0, 8, 7)
    Image.new("RGB", (20, 24), (0, 90, 200)).save(photos / "3.jpg")
    os.utime(photos / "3.jpg", (1e9, 1e9))
    report = col.ingest(photos, encoder)
    assert (report.embedded, report.skipped, report.total) == (1, 7, 7)
    # retry_failed tries the failure again (still broken: still one failure, nothing lost)
    report = col.ingest(photos, encoder, retry_failed=True)
    assert (report.embedded, report.failed, report.skipped, report.total) == (0, 1, 7, 7)
    assert len(col.failures()) == 1
    col.close()


def test_ingest_commits_every_n_items(encoder, photos, tmp_path, monkeypatch):
    col = _collection(tmp_path, encoder)
    commits = []
    real = Collection.commit
    monkeypatch.setattr(Collection, "commit", lambda self: (commits.append(len(self)), real(self))[1])
    col.ingest(photos, encoder, batch_size=2, commit_every=3)
    # batches of 2 (+ the failure): commits once 3 items are done since the last one, and at the end
    assert len(commits) >= 3 and commits[-1] == 7
    col.close()


def test_ingest_takes_source_items_and_lists(encoder, photos, tmp_path):
    col = _collection(tmp_path, encoder)
    data = (photos / "0.jpg").read_bytes()
    items = [SourceItem("mem::a", data, "mem::a", len(data), 1.0),
             SourceItem("mem::a", data, "mem::a", len(data), 1.0),     # listed twice: embedded once
             SourceItem("mem::b", b"not an image", "mem::b", 12, 1.0)]
    report = col.ingest(items, encoder)
    assert (report.embedded, report.failed, report.total) == (1, 1, 1)
    report = col.ingest([os.fspath(photos / "1.jpg"), os.fspath(photos / "2.jpg")], encoder)
    assert (report.embedded, report.total) == (2, 3)
    col.close()


def test_ingest_errors(encoder, photos, tmp_path):
    col = _collection(tmp_path, encoder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no images found"):
        col.ingest(empty, encoder)
    with pytest.raises(SourceError, match="does not exist"):
        col.ingest(tmp_path / "missing", encoder)
    with pytest.raises(ValueError, match="commit_every"):
        col.ingest(photos, encoder, commit_every=0)
    other = Collection.create(tmp_path / "other", model="tiny", dim=encoder.dim + 1)
    with pytest.raises(ValueError, match="-d embeddings"):
        other.ingest(photos, encoder)
    assert len(col) == 0 and len(other) == 0
    col.close()
    other.close()
