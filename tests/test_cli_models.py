"""The model commands of the CLI (embed, search, classify, eval, models) on the tiny
exported open_clip model: results, incremental runs, JSON output, and clear errors with a
non-zero exit (never a traceback)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch", reason="needs the 'export' extra to build the test model")
pytest.importorskip("open_clip", reason="needs the 'export' extra to build the test model")
from PIL import Image  # noqa: E402

import _tiny_clip  # noqa: E402
from cliprt import cli  # noqa: E402
from cliprt.encode import Encoder  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return _tiny_clip.exported(tmp_path_factory)[1]


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(7)
    root = tmp_path / "photos"
    for cls in ("dog", "cat"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (40 + i, 50, 3), dtype=np.uint8)).save(root / cls / f"{i}.jpg")
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (root / "notes.txt").write_text("ignored: not an image extension")
    return root


def run(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_embed_incremental_and_search(model, photos, tmp_path, capsys):
    col = tmp_path / "col"
    rc, out, _ = run(capsys, "embed", photos, "--model", model, "--index", col, "--json", "--batch-size", "4")
    assert rc == 0, out
    s = json.loads(out)
    assert (s["embedded"], s["failed"], s["skipped"], s["total"]) == (6, 1, 0, 6)
    assert "broken.jpg" in s["failures"][0]["path"] and s["failures"][0]["error"]
    # a second run skips everything done (and the known failure); a new file is picked up
    Image.new("RGB", (30, 30), (200, 10, 10)).save(photos / "dog" / "new.png")
    rc, out, _ = run(capsys, "embed", photos, "--model", model, "--index", col, "--json")
    s = json.loads(out)
    assert (s["embedded"], s["skipped"], s["failed"], s["total"]) == (1, 7, 0, 7)
    # search by image: the photo itself comes first
    query = photos / "dog" / "1.jpg"
    rc, out, _ = run(capsys, "search", col, "--image", query, "-k", "3", "--json")
    res = json.loads(out)["results"]
    assert rc == 0 and res[0]["path"] == str(query) and res[0]["score"] > 0.999
    rc, out, _ = run(capsys, "search", col, "a photo -cat", "-k", "2", "--path-like", "%/dog/%", "--json")
    res = json.loads(out)["results"]
    assert rc == 0 and len(res) == 2 and all("/dog/" in r["path"] for r in res)
    rc, out, _ = run(capsys, "search", col, "a photo", "--image", query, "--alpha", "0.3")
    assert rc == 0 and "+ text 'a photo' (alpha 0.3)" in out and out.count("\n  ") == 7
    rc, out2, _ = run(capsys, "search", col, "--image", query, "--text", "a photo", "--weights", "0.7,0.3")
    assert rc == 0 and out2 == out
    enc = Encoder.load(model)
    ref = enc.encode_images([str(query)])
    rc, out, _ = run(capsys, "search", col, "--image", query, "-k", "1", "--json")
    assert abs(json.loads(out)["results"][0]["score"] - float(ref[0] @ ref[0])) < 1e-4


def test_classify_and_eval(model, photos, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("dog\ncat\ncar\n")
    imgs = [photos / "dog" / "0.jpg", photos / "cat" / "1.jpg"]
    rc, out, _ = run(capsys, "classify", *imgs, "--model", model, "--labels", labels, "-k", "2", "--json")
    res = json.loads(out)["results"]
    assert rc == 0 and len(res) == 2 and len(res[0]["top"]) == 2
    assert abs(sum(t["p"] for t in res[0]["top"])) <= 1.0 + 1e-6
    os.remove(photos / "cat" / "broken.jpg")
    rc, out, _ = run(capsys, "eval", "zeroshot", "--model", model, "--data", photos, "--storage", "f32,i8,b1",
                     "--json")
    r = json.loads(out)
    assert rc == 0 and set(r["storage"]) == {"f32", "i8", "b1"}
    for s in r["storage"].values():
        assert s["images"] == 6 and s["classes"] == 2 and 0 <= s["top1"] <= s["top5"] == 1.0
    caps = tmp_path / "caps.csv"
    rows = ["image,caption"] + [f"{p},a photo number {i}" for i, p in enumerate(sorted(photos.rglob("*.jpg")))]
    caps.write_text("\n".join(rows) + "\n")
    rc, out, _ = run(capsys, "eval", "retrieval", "--model", model, "--data", caps, "--json")
    r = json.loads(out)["storage"]["f32"]
    assert rc == 0 and r["text_to_image_r@10"] == 1.0 and 0 <= r["text_to_image_r@1"] <= 1


def test_errors_are_one_line_messages(model, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run(capsys, "embed", empty, "--model", model, "--index", tmp_path / "c")
    assert rc == 2 and "no images found" in err
    rc, _, err = run(capsys, "embed", tmp_path / "missing", "--model", model, "--index", tmp_path / "c")
    assert rc == 2 and "does not exist" in err
    rc, _, err = run(capsys, "classify", tmp_path / "x.jpg", "--model", tmp_path / "nomodel", "--labels", "imagenet")
    assert rc == 2 and "no model package" in err
    rc, _, err = run(capsys, "search", tmp_path / "nocol", "dog")
    assert rc == 2 and "no collection" in err
    env = dict(os.environ, CLIPRT_HOME=str(tmp_path / "home"))
    proc = subprocess.run([sys.executable, "-m", "cliprt.cli", "classify", "a.jpg", "--labels", "imagenet"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cliprt models build-default" in proc.stderr


def test_tar_shards_and_bench(model, photos, tmp_path, capsys):
    import tarfile

    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tf:
        for p in sorted((photos / "dog").glob("*.jpg")):
            tf.add(p, arcname=f"sample/{p.name}")
        tf.add(photos / "notes.txt", arcname="sample/notes.txt")
    rc, out, _ = run(capsys, "embed", shard, "--model", model, "--index", tmp_path / "tcol", "--json")
    s = json.loads(out)
    assert rc == 0 and (s["embedded"], s["failed"]) == (3, 0)
    rc, out, _ = run(capsys, "search", tmp_path / "tcol", "--image", photos / "dog" / "2.jpg", "-k", "1", "--json")
    hit = json.loads(out)["results"][0]
    assert hit["path"] == f"{shard}::sample/2.jpg" and hit["score"] > 0.999
    rc, out, _ = run(capsys, "bench", "--model", model, "--images", photos, "--repeats", "1", "--batch-size", "4",
                     "--json")
    b = json.loads(out)
    assert rc == 0 and b["images"] == 7 and b["failed"] == 1 and b["images_per_s"] > 0 and b["texts_per_s"] > 0
