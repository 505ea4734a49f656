"""Export of open_clip models (random-init, seeded) to verified cliprt model packages.

Needs the `export` extra (torch, open_clip, onnx, onnxruntime, onnxconverter-common);
skipped with a reason without it. Each model is exported once per module (~1.5 min on
2 cores for the whole file).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export tests need the 'export' extra (torch)")
open_clip = pytest.importorskip("open_clip", reason="export tests need the 'export' extra (open_clip_torch)")
pytest.importorskip("onnx", reason="export tests need the 'export' extra (onnx)")
ort = pytest.importorskip("onnxruntime", reason="export tests need the 'export' extra (onnxruntime)")
pytest.importorskip("onnxconverter_common", reason="export tests need the 'export' extra (onnxconverter-common)")

from cliprt.export.open_clip_family import OpenClipError, from_open_clip  # noqa: E402
from cliprt.export.pipeline import export_package  # noqa: E402
from cliprt.export.source import ExportSource  # noqa: E402
from cliprt.export.verify import CAPTIONS, THRESHOLDS, ParityError, verify_package  # noqa: E402
from cliprt.models import ImageSpec, ModelPackage  # noqa: E402

IMAGENET_SAMPLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data",
                               "imagenet-sample")


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    src = from_open_clip("ViT-B-32", seed=0)
    out = tmp_path_factory.mktemp("vit") / "vit-b-32"
    report = export_package(src, out, precisions=("fp32", "int8"))
    return src, str(out), report


@pytest.fixture(scope="module")
def mobileclip(tmp_path_factory):
    """Exported through the CLI (end to end), MobileCLIP-S1 random-init, eval() + reparameterised."""
    out = tmp_path_factory.mktemp("mc") / "mobileclip-s1"
    proc = subprocess.run([sys.executable, "-m", "cliprt.cli", "export", "open_clip:MobileCLIP-S1", "--out", str(out),
                           "--precision", "fp32,fp16", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(out), json.loads(proc.stdout)


def _by_key(results):
    return {(r["tower"], r["precision"]): r for r in results}


def test_vit_parity(vit):
    _, _, report = vit
    assert report.passed
    got = {(r.tower, r.precision): r for r in report.results}
    assert set(got) == {("image", "fp32"), ("text", "fp32"), ("image", "int8"), ("text", "int8")}
    for (tower, prec), r in got.items():
        assert r.min_cosine >= THRESHOLDS[prec], (tower, prec, r)
        assert r.batch_min_cosine >= THRESHOLDS[prec], (tower, prec, r)
    assert got[("image", "fp32")].top1_agreement == 1.0
    assert got[("text", "fp32")].n == len(CAPTIONS)


def test_vit_manifest(vit):
    src, out, _ = vit
    pkg = ModelPackage.load(out)
    m = pkg.manifest
    assert m.family == "open_clip" and m.embed_dim == 512 and m.normalized
    assert m.scoring == "softmax" and m.logit_bias == 0.0
    assert abs(m.logit_scale - src.logit_scale) < 1e-4
    assert m.image.resize_mode == "shortest" and m.image.size == (224, 224) and m.image.interpolation == "bicubic"
    assert m.text.tokenizer == "clip-bpe" and m.text.context_length == 77 and m.text.pooling == "eot"
    assert m.text.lowercase and m.text.dynamic_length
    assert m.towers["image"].precisions == ("fp32", "int8")
    assert m.towers["text"].inputs == ("input_ids",)
    assert os.path.isfile(pkg.file(m.text.tokenizer_file))
    prov = m.provenance
    assert prov["config"] == "ViT-B-32" and prov["weights"] == "random-init"
    assert {"torch", "onnx", "onnxruntime", "cliprt"} <= set(prov["exporter"])
    assert prov["verification"]["passed"] is True
    assert not [f for f in os.listdir(os.path.dirname(out)) if ".partial-" in f]


def test_vit_package_runs_without_torch(vit, tmp_path):
    """The package loads and its ONNX towers run in a process where `import torch` fails."""
    src, out, _ = vit
    rng = np.random.default_rng(1)
    pixels = rng.standard_normal((3, 3, 224, 224)).astype(np.float32)
    ids = src.tokenize(["a photo of a dog", "a cat", "diagram"])["input_ids"]
    with torch.no_grad():
        ref_img = src.image_tower(torch.from_numpy(pixels)).numpy()
        ref_txt = src.text_tower(torch.from_numpy(ids)).numpy()
    np.savez(tmp_path / "io.npz", pixels=pixels, ids=ids, ref_img=ref_img, ref_txt=ref_txt)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        import numpy as np, onnxruntime as ort
        from cliprt.models import ModelPackage
        try:
            import torch
            raise SystemExit("torch importable")
        except ImportError:
            pass
        pkg = ModelPackage.load({out!r})
        d = np.load({str(tmp_path / "io.npz")!r})
        for tower, x, ref in (("image", d["pixels"], d["ref_img"]), ("text", d["ids"], d["ref_txt"])):
            spec = pkg.manifest.towers[tower]
            for prec in spec.precisions:
                s = ort.InferenceSession(pkg.tower_file(tower, prec), providers=["CPUExecutionProvider"])
                y = s.run([spec.output], {{spec.inputs[0]: x}})[0]
                cos = (y * ref).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)
                assert cos.min() > (0.99999 if prec == "fp32" else 0.99), (tower, prec, cos)
        assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
        print("OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_vit_text_runs_to_longest_caption(vit):
    """The causal text tower fed only up to the batch's longest caption gives the reference
    model's embeddings (open_clip encode_text over all 77 positions), in PyTorch and in ONNX."""
    src, out, _ = vit
    captions = ["a photo of a dog", "a cat", "an extremely long caption about " + "many things " * 12, ""]
    ids = src.tokenize(captions)["input_ids"]
    longest = int((ids != 0).sum(axis=1).max())
    assert longest < ids.shape[1]
    with torch.no_grad():
        ref = src.text_tower.model.encode_text(torch.from_numpy(ids), normalize=True).numpy()
        trimmed = src.text_tower(torch.from_numpy(ids[:, :longest])).numpy()
    assert np.abs(trimmed - ref).max() < 1e-5
    pkg = ModelPackage.load(out)
    sess = ort.InferenceSession(pkg.tower_file("text"), providers=["CPUExecutionProvider"])
    for length in (longest, longest + 3, ids.shape[1]):
        y = sess.run(None, {"input_ids": ids[:, :length]})[0]
        cos = (y * ref).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= THRESHOLDS["fp32"], (length, cos)
    with pytest.raises(Exception):
        sess.run(None, {"input_ids": np.zeros((1, ids.shape[1] + 1), np.int64)})


@pytest.mark.skipif(not os.path.isdir(IMAGENET_SAMPLE), reason=f"no real images at {IMAGENET_SAMPLE}")
def test_vit_parity_real_images(vit, tmp_path):
    src, out, _ = vit
    jpegs = sorted(f for f in os.listdir(IMAGENET_SAMPLE) if f.lower().endswith((".jpeg", ".jpg")))[:16]
    assert len(jpegs) == 16
    folder = tmp_path / "images"
    folder.mkdir()
    for f in jpegs:
        os.symlink(os.path.join(os.path.abspath(IMAGENET_SAMPLE), f), folder / f)
    report = verify_package(src, out, ("fp32",), images=str(folder)).check()
    img = [r for r in report.results if r.tower == "image"][0]
    assert img.n == 16 and img.min_cosine >= THRESHOLDS["fp32"] and img.batch_min_cosine >= THRESHOLDS["fp32"]


def test_mobileclip_parity_via_cli(mobileclip):
    out, report = mobileclip
    assert report["passed"] and report["verified"]
    got = _by_key(report["results"])
    assert set(got) == {(t, p) for t in ("image", "text") for p in ("fp32", "fp16")}
    for (tower, prec), r in got.items():
        assert r["min_cosine"] >= THRESHOLDS[prec] and r["batch_min_cosine"] >= THRESHOLDS[prec], r
    m = ModelPackage.load(out).manifest
    assert m.provenance.get("reparameterized") is True
    # MobileCLIP's pretrained tags normalise with mean 0 / std 1 and bilinear resize: random init keeps them
    assert m.image.mean == (0.0, 0.0, 0.0) and m.image.std == (1.0, 1.0, 1.0)
    assert m.image.interpolation == "bilinear" and m.image.size == (256, 256)


class _Drifting(torch.nn.Module):
    """Exports something other than what PyTorch computes (as a buggy wrapper would)."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 8)

    def forward(self, pixels):
        x = self.proj(pixels.mean(dim=(2, 3)))
        if torch.onnx.is_in_onnx_export():
            x = x + 0.5 * torch.ones_like(x)
        return torch.nn.functional.normalize(x, dim=-1)


def _tiny_source():
    torch.manual_seed(0)
    spec = ImageSpec(size=(32, 32), resize_mode="squash", resize_size=32, interpolation="bilinear",
                     antialias=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return ExportSource(name="drifting", family="test", provenance={}, embed_dim=8, scoring="sigmoid",
                        logit_scale=10.0, logit_bias=-10.0, image_tower=_Drifting().eval(), image_spec=spec)


def test_refused_export_leaves_nothing(tmp_path):
    out = tmp_path / "pkg"
    with pytest.raises(ParityError, match="refused"):
        export_package(_tiny_source(), out)
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_no_verify_writes_package(tmp_path):
    out = tmp_path / "pkg"
    report = export_package(_tiny_source(), out, verify=False)
    assert not report.verified
    m = ModelPackage.load(out).manifest
    assert set(m.towers) == {"image"} and m.text is None and m.scoring == "sigmoid"
    with pytest.raises(FileExistsError):
        export_package(_tiny_source(), out, verify=False)


def test_siglip_text_tower_needs_hub_tokenizer():
    with pytest.raises(OpenClipError, match="Hugging Face tokenizer"):
        from_open_clip("ViT-B-16-SigLIP")


def test_cli_help_and_missing_extra():
    proc = subprocess.run([sys.executable, "-m", "cliprt.cli", "export", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for word in ("open_clip:CONFIG", "hf:PATH", "st:PATH", "--precision", "--verify-images", "--no-verify",
                 "--checkpoint", "--pretrained"):
        assert word in proc.stdout
    script = ("import sys; sys.modules['torch'] = None; from cliprt.cli import main; "
              "sys.exit(main(['export', 'open_clip:ViT-B-32', '--out', '/nonexistent/x']))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 2 and "export" in proc.stderr and "extra" in proc.stderr
