"""A tiny CLIP (ViT image tower + causal text transformer) registered with open_clip under
the name "cliprt-tiny-vit", for tests that need a real open_clip architecture that
exports in seconds. Same code paths as ViT-B-32, smaller widths."""
from __future__ import annotations

import json
import os
import tempfile

NAME = "cliprt-tiny-vit"
CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register() -> str:
    import open_clip

    if open_clip.get_model_config(NAME) is None:
        folder = tempfile.mkdtemp(prefix="cliprt-open-clip-cfg-")
        with open(os.path.join(folder, NAME + ".json"), "w") as f:
            json.dump(CONFIG, f)
        open_clip.add_model_config(folder)
    return NAME


_EXPORTED = {}


def exported(tmp_path_factory, precisions=("fp32", "int8")) -> tuple:
    """(ExportSource, package dir) of the tiny model, exported once per test session."""
    key = tuple(precisions)
    if key not in _EXPORTED:
        from cliprt.export.open_clip_family import from_open_clip
        from cliprt.export.pipeline import export_package

        src = from_open_clip(register(), seed=0)
        out = tmp_path_factory.mktemp("tiny-clip") / "tiny"
        export_package(src, out, precisions=precisions)
        _EXPORTED[key] = (src, str(out))
    return _EXPORTED[key]
