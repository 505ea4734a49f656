"""cliprt.Encoder against the PyTorch reference, end to end.

A tiny open_clip CLIP (tests/_tiny_clip.py: ViT image tower, causal text transformer, real
open_clip code paths) is exported once per module; its embeddings from image files / texts
through cliprt's preprocessing, tokenizer, pipeline and ONNX Runtime sessions are compared
with open_clip's own transform + tokenizer + PyTorch model. Needs the `export` extra.
"""
from __future__ import annotations

import io
import os
import pathlib
import threading
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="encoder parity tests need the 'export' extra (torch)")
open_clip = pytest.importorskip("open_clip", reason="encoder parity tests need the 'export' extra (open_clip)")
pytest.importorskip("onnxruntime", reason="the encoder needs onnxruntime")
from PIL import Image  # noqa: E402

import _tiny_clip  # noqa: E402
from cliprt.encode import EncodeWarning, Encoder  # noqa: E402
from cliprt.preprocess import ImageError  # noqa: E402

IMAGENET_SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                               "imagenet-sample")
FP32_COS = 0.99999


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    src, out = _tiny_clip.exported(tmp_path_factory)
    name = _tiny_clip.NAME
    model = src.image_tower.model
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pp = open_clip.get_model_preprocess_cfg(model)
    transform = image_transform_v2(PreprocessCfg(**{k: v for k, v in pp.items()
                                                   if k in PreprocessCfg.__dataclass_fields__}), is_train=False)
    return {"src": src, "model": model, "transform": transform, "dir": str(out),
            "tokenizer": open_clip.get_tokenizer(name), "enc": Encoder.load(str(out), threads=2)}


def _ref_images(tiny, images):
    with torch.no_grad():
        x = torch.stack([tiny["transform"](im) for im in images])
        return tiny["model"].encode_image(x, normalize=True).numpy()


def _ref_texts(tiny, texts):
    with torch.no_grad():
        return tiny["model"].encode_text(tiny["tokenizer"](texts), normalize=True).numpy()


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _jpeg(rng, w, h, mode="RGB", fmt="JPEG") -> bytes:
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def test_images_match_reference_synthetic(tiny, rng, tmp_path):
    shapes = [(64, 64), (65, 64), (300, 41), (17, 200), (1, 1), (640, 480)]
    paths = []
    for i, (w, h) in enumerate(shapes):
        p = tmp_path / f"im{i}.png"
        p.write_bytes(_jpeg(rng, w, h, fmt="PNG"))
        paths.append(str(p))
    got = tiny["enc"].encode_images(paths, batch_size=4)
    ref = _ref_images(tiny, [Image.open(p).convert("RGB") for p in paths])
    assert got.dtype == np.float32 and got.shape == (len(paths), 64)
    assert _cos(got, ref).min() >= FP32_COS
    assert np.abs(np.linalg.norm(got, axis=1) - 1).max() < 1e-5


@pytest.mark.skipif(not os.path.isdir(IMAGENET_SAMPLE), reason=f"no real photos at {IMAGENET_SAMPLE}")
def test_images_match_reference_real_photos(tiny):
    """All 1000 sample photos, end to end from the JPEG files."""
    files = sorted(f for f in os.listdir(IMAGENET_SAMPLE) if f.lower().endswith((".jpeg", ".jpg")))
    paths = [os.path.join(IMAGENET_SAMPLE, f) for f in files]
    got = tiny["enc"].encode_images(paths, batch_size=32)
    ref = np.concatenate([_ref_images(tiny, [Image.open(p).convert("RGB") for p in paths[i:i + 100]])
                          for i in range(0, len(paths), 100)])
    assert len(paths) == 1000
    cos = _cos(got, ref)
    print(f"1000 sample photos, cliprt exact vs open_clip transform + PyTorch: min cosine {cos.min():.8f}")
    assert cos.min() >= FP32_COS


def test_input_kinds_agree(tiny, rng, tmp_path):
    data = _jpeg(rng, 123, 77)
    p = tmp_path / "x.jpg"
    p.write_bytes(data)
    im = Image.open(io.BytesIO(data))
    arr = np.asarray(im.convert("RGB"))
    enc = tiny["enc"]
    out = enc.encode_images([str(p), p, data, bytearray(data), memoryview(data), im, arr])
    assert out.shape == (7, 64)
    assert np.abs(out - out[0]).max() < 1e-6
    single = enc.encode_images(str(p))
    assert single.shape == (1, 64) and np.abs(single[0] - out[0]).max() < 1e-6
    assert enc.encode_images(arr).shape == (1, 64)


def test_batch_size_does_not_change_results(tiny, rng):
    items = [_jpeg(rng, int(rng.integers(20, 200)), int(rng.integers(20, 200))) for _ in range(19)]
    enc = tiny["enc"]
    whole = enc.encode_images(items, batch_size=19)
    for b in (1, 3, 8):
        assert np.abs(enc.encode_images(items, batch_size=b) - whole).max() < 1e-5
    # several batches in flight (ring buffers kept alive while their runs are outstanding)
    for inflight in (1, 2, 3):
        other = Encoder.load(tiny["dir"], inflight=inflight)
        assert other.inflight == inflight
        for b in (1, 4, 19):
            assert np.abs(other.encode_images(items, batch_size=b) - whole).max() < 1e-5
    # a batch larger than MAX_SLICE is cut into several slices per runner
    many = items * 3
    got = Encoder.load(tiny["dir"], inflight=2).encode_images(many, batch_size=len(many))
    assert np.abs(got - np.concatenate([whole] * 3)).max() < 1e-5
    with pytest.raises(ValueError, match="inflight"):
        Encoder.load(tiny["dir"], inflight=-1)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 16, 17, 32, 33, 100])
@pytest.mark.parametrize("runners", [1, 2, 3])
def test_slices_cover_the_batch(n, runners):
    from cliprt.encode import MAX_SLICE, _slices

    s = _slices(n, runners)
    if n == 0:
        assert s == []
        return
    assert [a for a, _ in s] == [0] + [b for _, b in s[:-1]]  # contiguous, in order
    assert s[-1][1] == n
    sizes = [b - a for a, b in s]
    assert 0 < min(sizes) and max(sizes) <= MAX_SLICE and max(sizes) - min(sizes) <= 1
    assert len(s) >= min(n, runners)


def test_bad_items_skip_keeps_the_rest(tiny, rng, tmp_path):
    good = [_jpeg(rng, 90, 60) for _ in range(5)]
    truncated = good[0][: len(good[0]) // 2]
    missing = str(tmp_path / "nope.jpg")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    items = [good[0], truncated, good[1], b"", missing, good[2], str(text_file), good[3],
             np.zeros((0, 5, 3), np.uint8), good[4]]
    enc = tiny["enc"]
    emb, idx, errors = enc.encode_images(items, batch_size=3, on_error="skip", return_errors=True)
    assert idx.tolist() == [0, 2, 5, 7, 9]
    assert [e.index for e in errors] == [1, 3, 4, 6, 8]
    assert "nope.jpg" in errors[2].message and "notes.txt" in errors[3].message
    ref = enc.encode_images(good)
    assert np.abs(emb - ref).max() < 1e-6
    with pytest.warns(EncodeWarning, match="skipped 5 image"):
        assert enc.encode_images(items, on_error="skip").shape == (5, 64)
    with pytest.raises(ImageError, match="item 1"):
        enc.encode_images(items, on_error="raise")
    with pytest.raises(ValueError, match="on_error"):
        enc.encode_images(items, on_error="ignore")


def test_iter_images_streams_with_keys(tiny, rng):
    n = 23
    blobs = [_jpeg(rng, 50 + i, 40) for i in range(n)]
    blobs[7] = b"\xff\xd8broken"

    def stream():  # a generator: no len(), consumed lazily
        yield from blobs

    keys = [f"k{i}" for i in range(n)]
    batches = list(Encoder.load(tiny["dir"], inflight=3).iter_images(stream(), keys=iter(keys), batch_size=5))
    assert [len(b.keys) + len(b.errors) for b in batches] == [5, 5, 5, 5, 3]
    got_keys = [k for b in batches for k in b.keys]
    assert got_keys == [k for i, k in enumerate(keys) if i != 7]
    errs = [e for b in batches for e in b.errors]
    assert len(errs) == 1 and errs[0].key == "k7" and errs[0].index == 7
    keys_, emb, errors = batches[0]
    assert emb.shape == (5, 64) and not errors
    ref = tiny["enc"].encode_images([b for i, b in enumerate(blobs) if i != 7])
    assert np.abs(np.concatenate([b.embeddings for b in batches]) - ref).max() < 1e-6


TEXTS = ["a photo of a dog", "A Diagram!", "", "   ", "naïve café — 東京 🚀", "&amp; quotes &quot;x&quot;",
         "a very long caption " + "that keeps on going " * 30, "x", "12345 !!! ???", "two\nlines\ttabs"]


def test_texts_match_reference(tiny):
    enc = tiny["enc"]
    ids = enc.tokenize(TEXTS)[0]["input_ids"]
    assert np.array_equal(ids, tiny["tokenizer"](TEXTS).numpy())
    ref = _ref_texts(tiny, TEXTS)
    for b in (1, 3, 64):
        got = enc.encode_texts(TEXTS, batch_size=b)
        assert got.shape == (len(TEXTS), 64) and got.dtype == np.float32
        assert _cos(got, ref).min() >= FP32_COS, b
    assert enc.manifest.text.dynamic_length


def test_text_edge_cases(tiny):
    enc = tiny["enc"]
    assert enc.encode_texts([]).shape == (0, 64)
    one = enc.encode_texts("a photo of a dog")
    assert one.shape == (1, 64)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        enc.encode_texts(["ok", 3])
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode_texts(["ok"], batch_size=0)


def test_precision_selection(tiny):
    enc = Encoder.load(tiny["dir"], precision="int8")
    # int8 is taken per tower only where the export verified min cosine >= 0.999
    for tower in ("image", "text"):
        cos = enc.manifest.provenance["verification"]["results"][f"{tower}.int8"]["min_cosine"]
        assert enc.precisions[tower] == ("int8" if cos >= 0.999 else "fp32"), (tower, cos)
        assert tower in enc.precision_notes
    forced = Encoder.load(tiny["dir"], precision={"image": "int8"})
    assert forced.precisions == {"image": enc.precisions["image"], "text": "fp32"}
    fp16 = Encoder.load(tiny["dir"], precision="fp16")
    assert fp16.precisions == {"image": "fp32", "text": "fp32"} and "fp16" in fp16.precision_notes["image"]
    with pytest.raises(ValueError, match="precision"):
        Encoder.load(tiny["dir"], precision="int4")
    with pytest.raises(ValueError, match="towers"):
        Encoder.load(tiny["dir"], precision={"audio": "int8"})
    texts = ["a dog", "a cat on a mat"]
    cos = _cos(enc.encode_texts(texts), tiny["enc"].encode_texts(texts))
    assert cos.min() > 0.99


def test_device_and_backend_errors(tiny):
    with pytest.raises(ValueError, match="device"):
        Encoder.load(tiny["dir"], device="gpu")
    with pytest.raises(ValueError, match="backend"):
        Encoder.load(tiny["dir"], backend="tensorflow")
    with pytest.raises(ValueError, match="tensorrt"):
        Encoder.load(tiny["dir"], backend="tensorrt")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
            Encoder.load(tiny["dir"], device="cuda")
    with pytest.raises(FileNotFoundError):
        Encoder.load(os.path.join(tiny["dir"], "missing"))


def test_concurrent_callers(tiny, rng):
    enc = tiny["enc"]
    items = [_jpeg(rng, 70, 50) for _ in range(6)]
    ref_img = enc.encode_images(items)
    ref_txt = enc.encode_texts(TEXTS)
    failures = []

    def work():
        try:
            for _ in range(3):
                assert np.abs(enc.encode_images(items, batch_size=4) - ref_img).max() < 1e-6
                assert np.abs(enc.encode_texts(TEXTS) - ref_txt).max() < 1e-6
        except Exception as e:  # reported below
            failures.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures


def test_path_like_package(tiny):
    enc = Encoder.load(pathlib.Path(tiny["dir"]))
    assert enc.dim == 64 and set(enc.precisions) == {"image", "text"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert enc.encode_texts(["a"]).shape == (1, 64)
