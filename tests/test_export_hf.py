"""Hugging Face CLIP / SigLIP export adapter (cliprt.export.hf) on tiny random models.

The models are built from small configs and saved with save_pretrained into a temporary
directory (no downloads); the adapter loads them the way it loads a real checkpoint."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch = pytest.importorskip("torch", reason="needs the export extra (torch)")
pytest.importorskip("transformers", reason="needs the export extra (transformers)")
pytest.importorskip("sentencepiece", reason="needs the export extra (sentencepiece, for SigLIP)")
from PIL import Image  # noqa: E402

import _hf_tiny  # noqa: E402
from cliprt.export.hf import from_hf, sha256_file  # noqa: E402

TEXTS = ["a photo of a cat", "The DOG, on the sofa!", "a diagram", "",
         "the quick brown fox jumps over the lazy dog " * 4]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    # shortest edge 36, crop 32: resize and crop differ, so a squash would be visible
    return _hf_tiny.make_clip(tmp_path_factory.mktemp("hf_clip") / "tiny-clip", shortest=36, crop=32)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("spm")
    return _hf_tiny.make_siglip(tmp_path_factory.mktemp("hf_siglip") / "tiny-siglip", resample=2,
                                workdir=os.fspath(work))


@pytest.fixture(scope="module")
def clip_src(clip_dir):
    return from_hf(clip_dir)


@pytest.fixture(scope="module")
def siglip_src(siglip_dir):
    return from_hf(siglip_dir)


def _images():
    rng = np.random.default_rng(1)
    out = [Image.fromarray((rng.random((48, 64, 3)) * 255).astype(np.uint8)),
           Image.fromarray((rng.random((80, 30, 3)) * 255).astype(np.uint8))]
    grad = np.zeros((40, 40, 3), np.uint8)
    grad[..., 0] = np.linspace(0, 255, 40)[None, :]
    out.append(Image.fromarray(grad))
    return out


def _cos(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def _ref_model(path, model_type):
    from transformers import CLIPModel, SiglipModel
    cls = CLIPModel if model_type == "clip" else SiglipModel
    return cls.from_pretrained(path, local_files_only=True).eval()


def _feat(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


# ----------------------------------------------------------------------------- specs

def test_clip_specs(clip_src, clip_dir):
    s = clip_src
    assert s.family == "hf-clip" and s.scoring == "softmax" and s.logit_bias == 0.0
    model = _ref_model(clip_dir, "clip")
    assert s.logit_scale == pytest.approx(float(model.logit_scale.exp()), rel=1e-6)
    assert s.embed_dim == 24
    im = s.image_spec
    assert im.resize_mode == "shortest" and im.resize_size == 36 and im.size == (32, 32)
    assert im.interpolation == "bicubic" and im.antialias
    assert im.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    t = s.text_spec
    assert (t.tokenizer, t.pooling, t.context_length, t.lowercase, t.dynamic_length) == \
        ("clip-bpe", "eot", 16, True, False)
    eos = s.tokenize(["x"])["input_ids"][0, -1]
    assert t.pad_id == eos       # HF CLIP pads with <|endoftext|>
    assert s.text_inputs == ("input_ids",)
    assert set(s.tokenizer_files) >= {"tokenizer.json", "tokenizer_config.json"}
    assert all(os.path.isfile(f) for f in s.tokenizer_files.values())
    assert s.provenance["model_type"] == "clip"
    assert s.provenance["weights_sha256"]["model.safetensors"] == \
        sha256_file(os.path.join(clip_dir, "model.safetensors"))
    assert s.provenance["transformers"]


def test_siglip_specs(siglip_src, siglip_dir):
    s = siglip_src
    assert s.family == "hf-siglip" and s.scoring == "sigmoid"
    assert s.logit_scale == pytest.approx(np.exp(2.3), rel=1e-6)
    assert s.logit_bias == pytest.approx(-10.0)
    assert s.embed_dim == 32
    im = s.image_spec
    assert im.resize_mode == "squash" and im.size == (32, 32) and im.interpolation == "bilinear"
    assert im.mean == (0.5, 0.5, 0.5) and im.std == (0.5, 0.5, 0.5)
    t = s.text_spec
    assert (t.tokenizer, t.pooling, t.context_length, t.clean, t.lowercase) == \
        ("sentencepiece", "last", 16, "canonicalize", True)
    ids = s.tokenize(TEXTS)["input_ids"]
    assert ids.shape == (len(TEXTS), 16) and ids.dtype == np.int64     # padding="max_length"
    assert t.pad_id == ids[0, -1]
    assert s.text_inputs == ("input_ids",)
    assert {"tokenizer.json", "spiece.model"} <= set(s.tokenizer_files)


def test_siglip_tokenizer_json_matches_hf_tokenizer(siglip_src, siglip_dir):
    """The shipped tokenizer.json (converted from spiece.model) + canonicalisation gives the
    HF SiglipTokenizer's ids."""
    import tokenizers
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(siglip_dir, local_files_only=True)
    tj = tokenizers.Tokenizer.from_file(siglip_src.tokenizer_files["tokenizer.json"])
    for text in TEXTS + ["Hello,   World ... photo!!", "CAT cat Cat"]:
        want = hf(text)["input_ids"]
        got = tj.encode(hf.canonicalize_text(text)).ids
        assert got == want, text


def test_preprocess_crop_vs_squash(clip_src, siglip_src):
    """CLIP resizes the short side and center-crops; SigLIP squashes the whole image."""
    img = np.full((32, 64, 3), 255, np.uint8)
    img[:, :12] = (255, 0, 0)                      # red band on the left edge
    pil = Image.fromarray(img)
    c = clip_src.preprocess(pil)
    s = siglip_src.preprocess(pil)
    assert c.shape == (3, 32, 32) and s.shape == (3, 32, 32)
    assert c.dtype == np.float32 and s.dtype == np.float32
    # green channel, left column: white (high) after the crop removed the band; red band kept by squash
    assert c[1, :, 0].mean() > 1.0
    assert s[1, :, 0].mean() < -0.9


def test_unsupported_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not supported"):
        from_hf(tmp_path)


def test_unsupported_resample(tmp_path, clip_dir):
    from cliprt.export.hf import image_spec_from_config
    cfg = json.load(open(os.path.join(clip_dir, "preprocessor_config.json")))
    cfg["resample"] = 1
    with pytest.raises(ValueError, match="lanczos"):
        image_spec_from_config(cfg, "clip")


# ----------------------------------------------------------------------------- tower parity

@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_towers_match_reference_model(which, clip_src, siglip_src, clip_dir, siglip_dir):
    from transformers import AutoTokenizer

    src, path = (clip_src, clip_dir) if which == "clip" else (siglip_src, siglip_dir)
    model = _ref_model(path, which)
    pixels = np.stack([src.preprocess(im) for im in _images()])
    with torch.no_grad():
        ref = _feat(model.get_image_features(pixel_values=torch.from_numpy(pixels))).numpy()
        got = src.image_tower(torch.from_numpy(pixels)).numpy()
    assert np.allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
    assert _cos(got, ref).min() >= 0.99999

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    # the reference: the model's own usage (CLIP with its attention mask; SigLIP without)
    enc = tok(TEXTS, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    kwargs = {"input_ids": enc["input_ids"]}
    if which == "clip":
        kwargs["attention_mask"] = enc["attention_mask"]
    ids = src.tokenize(TEXTS)
    assert np.array_equal(ids["input_ids"], enc["input_ids"].numpy())
    with torch.no_grad():
        ref = _feat(model.get_text_features(**kwargs)).numpy()
        got = src.text_tower(torch.from_numpy(ids["input_ids"])).numpy()
    assert np.allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
    cos = _cos(got, ref)
    print(f"{which}: text tower vs reference min cosine {cos.min():.8f}")
    assert cos.min() >= 0.99999

    # scoring reproduces the model's logits
    with torch.no_grad():
        out = model(input_ids=kwargs["input_ids"], attention_mask=kwargs.get("attention_mask"),
                    pixel_values=torch.from_numpy(pixels))
        timg = src.image_tower(torch.from_numpy(pixels)).numpy()
    logits = src.logit_scale * timg @ got.T + src.logit_bias
    assert np.allclose(logits, out.logits_per_image.numpy(), atol=1e-3)


# ----------------------------------------------------------------------------- full export

def _pipeline():
    try:
        from cliprt.export import pipeline
    except ImportError as e:     # pragma: no cover - the pipeline ships beside this adapter
        pytest.skip(f"cliprt.export.pipeline not available: {e}")
    pytest.importorskip("onnxruntime", reason="needs the export extra (onnxruntime)")
    return pipeline


@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_export_package_end_to_end(which, clip_src, siglip_src, tmp_path):
    import onnxruntime as ort
    from cliprt.models import ModelPackage
    from cliprt.export.verify import THRESHOLDS

    pipeline = _pipeline()
    src = clip_src if which == "clip" else siglip_src
    out = tmp_path / which
    report = pipeline.export_package(src, out, precisions=("fp32", "int8"))
    print(report.table())
    assert report.passed
    by = {(r.tower, r.precision): r for r in report.results}
    for (tower, prec), r in by.items():
        assert r.min_cosine >= THRESHOLDS[prec] and r.batch_min_cosine >= THRESHOLDS[prec]
    assert by[("image", "fp32")].min_cosine >= 0.99999 and by[("text", "fp32")].min_cosine >= 0.99999

    pkg = ModelPackage.load(out)
    m = pkg.manifest
    assert m.family == src.family and m.scoring == src.scoring and m.embed_dim == src.embed_dim
    assert m.image == src.image_spec and m.text == src.text_spec
    assert os.path.isfile(pkg.file("tokenizer.json"))

    # dynamic batch straight from the package: 1, 3, 17 rows vs the PyTorch towers
    rng = np.random.default_rng(0)
    h, w = m.image.size
    sess = ort.InferenceSession(pkg.tower_file("image"), providers=["CPUExecutionProvider"])
    tsess = ort.InferenceSession(pkg.tower_file("text"), providers=["CPUExecutionProvider"])
    ids_all = src.tokenize([TEXTS[i % len(TEXTS)] + f" {i}" for i in range(17)])["input_ids"]
    for b in (1, 3, 17):
        x = rng.standard_normal((b, 3, h, w)).astype(np.float32)
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        with torch.no_grad():
            ref = src.image_tower(torch.from_numpy(x)).numpy()
        assert got.shape == (b, m.embed_dim) and _cos(got, ref).min() >= 0.99999
        ids = ids_all[:b]
        got = tsess.run(None, {"input_ids": ids})[0]
        with torch.no_grad():
            ref = src.text_tower(torch.from_numpy(ids)).numpy()
        assert _cos(got, ref).min() >= 0.99999


@pytest.mark.parametrize("which", ["clip", "siglip"])
def test_export_fp16(which, clip_src, siglip_src, tmp_path):
    """fp16 through the pipeline. HF's `pixel_values.to(dtype)` exports as a no-op
    Cast(to=float) on the graph input; the pipeline must keep the fp16 patch-embedding Conv fed
    float16 (ONNX Runtime refuses a Conv whose input and weights differ in type)."""
    pipeline = _pipeline()
    src = clip_src if which == "clip" else siglip_src
    report = pipeline.export_package(src, tmp_path / f"{which}16", precisions=("fp32", "fp16"))
    print(report.table())
    assert report.passed
    by = {(r.tower, r.precision): r for r in report.results}
    assert set(by) == {(t, p) for t in ("image", "text") for p in ("fp32", "fp16")}
    for tower in ("image", "text"):
        r = by[(tower, "fp16")]
        assert r.min_cosine >= 0.999 and r.batch_min_cosine >= 0.999, (tower, r)
