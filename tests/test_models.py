"""Model package manifest: round trip and clear errors for missing/partial/inconsistent packages."""
import copy
import json
import os

import pytest

from cliprt.models import MANIFEST, ModelPackage, PackageError, parse_manifest, write_manifest

GOOD = {
    "format": "cliprt-model",
    "format_version": 1,
    "name": "tiny",
    "family": "open_clip",
    "embed_dim": 8,
    "normalized": True,
    "scoring": "softmax",
    "logit_scale": 100.0,
    "logit_bias": 0.0,
    "provenance": {"source": "open_clip:ViT-B-32", "checkpoint_sha256": None},
    "towers": {
        "image": {"file": "image.onnx", "precisions": ["fp32", "fp16"], "inputs": ["pixels"], "output": "embedding"},
        "text": {"file": "text.onnx", "precisions": ["fp32"], "inputs": ["input_ids"], "output": "embedding"},
    },
    "image": {"size": [224, 224], "resize_mode": "shortest", "resize_size": 224, "interpolation": "bicubic",
              "antialias": True, "mean": [0.48145466, 0.4578275, 0.40821073],
              "std": [0.26862954, 0.26130258, 0.27577711]},
    "text": {"tokenizer": "clip-bpe", "tokenizer_file": "tokenizer.json", "context_length": 77, "pad_id": 0,
             "pooling": "eot", "lowercase": True},
}
FILES = ("image.onnx", "image.fp16.onnx", "text.onnx", "tokenizer.json")


def make_package(tmp_path, manifest=GOOD, files=FILES):
    d = tmp_path / "pkg"
    d.mkdir()
    for f in files:
        (d / f).write_bytes(b"x")
    (d / MANIFEST).write_text(json.dumps(manifest))
    return d


def test_load_good_package(tmp_path):
    pkg = ModelPackage.load(make_package(tmp_path))
    m = pkg.manifest
    assert m.embed_dim == 8 and m.scoring == "softmax" and m.image.size == (224, 224)
    assert m.text.context_length == 77 and m.towers["image"].precisions == ("fp32", "fp16")
    assert pkg.tower_file("image", "fp16").endswith("image.fp16.onnx")
    with pytest.raises(ValueError, match="no int8 variant"):
        pkg.tower_file("image", "int8")


def test_manifest_round_trip(tmp_path):
    d = make_package(tmp_path)
    pkg = ModelPackage.load(d)
    write_manifest(str(d), pkg.manifest)
    assert ModelPackage.load(d).manifest == pkg.manifest
    assert not os.path.exists(d / (MANIFEST + ".tmp"))


def test_text_only_package(tmp_path):
    m = copy.deepcopy(GOOD)
    del m["towers"]["image"], m["image"]
    pkg = ModelPackage.load(make_package(tmp_path, m, ("text.onnx", "tokenizer.json")))
    assert pkg.manifest.image is None and set(pkg.manifest.towers) == {"text"}


@pytest.mark.parametrize("missing", FILES)
def test_missing_file_is_named(tmp_path, missing):
    d = make_package(tmp_path, files=[f for f in FILES if f != missing])
    with pytest.raises(PackageError, match=missing.replace(".", r"\.")):
        ModelPackage.load(d)


def test_missing_manifest_and_dir(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(PackageError, match="manifest.json is missing"):
        ModelPackage.load(d)
    with pytest.raises(FileNotFoundError):
        ModelPackage.load(tmp_path / "nowhere")


def test_corrupt_json(tmp_path):
    d = make_package(tmp_path)
    (d / MANIFEST).write_text('{"format": "cliprt-model", ')
    with pytest.raises(PackageError, match="not valid JSON"):
        ModelPackage.load(d)


def _set(path, value):
    def edit(m):
        node = m
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


@pytest.mark.parametrize("edit,match", [
    (_set(["format_version"], 2), "unsupported format_version 2"),
    (_set(["format"], "onnx"), "format is 'onnx'"),
    (_set(["embed_dim"], 0), "embed_dim must be positive"),
    (_set(["embed_dim"], "8"), "embed_dim has type str"),
    (_set(["scoring"], "cosine"), "scoring is 'cosine'"),
    (_set(["normalized"], KeyError), "normalized is missing"),
    (_set(["image", "resize_mode"], "crop"), "image.resize_mode"),
    (_set(["image", "size"], [224]), "image.size"),
    (_set(["image", "std"], [0.1, 0.0, 0.1]), "image.std must be positive"),
    (_set(["image", "resize_size"], 200), "smaller than the crop"),
    (_set(["image", "antialias"], "yes"), "image.antialias has type str"),
    (_set(["text", "pooling"], "max"), "text.pooling"),
    (_set(["text", "context_length"], 0), "context_length must be positive"),
    (_set(["text"], KeyError), "manifest.text is missing"),
    (_set(["towers", "image", "precisions"], ["fp16"]), "must include fp32"),
    (_set(["towers", "image", "precisions"], ["fp32", "fp8"]), "precisions is 'fp8'"),
    (_set(["towers"], {}), "towers must name"),
    (_set(["towers", "audio"], {"file": "a.onnx", "precisions": ["fp32"], "inputs": ["x"], "output": "y"}),
     "towers must name"),
    (_set(["towers", "text", "file"], "../text.onnx"), "inside the package"),
])
def test_invalid_manifest_is_rejected_with_the_field(tmp_path, edit, match):
    m = copy.deepcopy(GOOD)
    edit(m)
    with pytest.raises(PackageError, match=match):
        ModelPackage.load(make_package(tmp_path, m))


def test_package_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_manifest([])


def test_export_source_specs_are_checked_before_any_import():
    from cliprt.export.source import load_source

    for bad, match in (("ViT-B-32", "must be open_clip:CONFIG"), ("open_clip:", "must be open_clip:CONFIG"),
                       ("tf:model", "unknown source kind"), ("hf:x", "apply to open_clip")):
        with pytest.raises(ValueError, match=match):
            load_source(bad, checkpoint="w.pt" if bad.startswith("hf:") else None)
    with pytest.raises(ValueError, match="not both"):
        load_source("open_clip:ViT-B-32", checkpoint="w.pt", pretrained="openai")


def test_export_precisions_per_tower():
    from cliprt.export.pipeline import ExportError, tower_precisions
    from cliprt.export.source import ExportSource

    both = ExportSource(name="x", family="open_clip", provenance={}, embed_dim=4, scoring="softmax",
                        logit_scale=1.0, logit_bias=0.0, image_tower=object(), text_tower=object())
    text_only = ExportSource(name="t", family="sentence-transformers", provenance={}, embed_dim=4,
                             scoring="softmax", logit_scale=1.0, logit_bias=0.0, text_tower=object())
    assert tower_precisions(both, ("int8",)) == {"image": ("fp32", "int8"), "text": ("fp32", "int8")}
    assert tower_precisions(both, ()) == {"image": ("fp32",), "text": ("fp32",)}
    assert tower_precisions(both, {"text": ["int8", "fp16", "fp32"]}) == {"image": ("fp32",),
                                                                          "text": ("fp32", "fp16", "int8")}
    assert tower_precisions(text_only, ["fp16"]) == {"text": ("fp32", "fp16")}
    for bad, match in ((["int4"], "unknown precision"), ({"audio": ["fp32"]}, "unknown towers"),
                       ({"text": "int8"}, "must be a list"), ("int8", "must be a list")):
        with pytest.raises(ExportError, match=match):
            tower_precisions(both, bad)
    with pytest.raises(ExportError, match="has not"):
        tower_precisions(text_only, {"image": ["fp32"]})
