"""ExportSource -> verified model package directory.

`export_package` exports each tower with `torch.onnx.export` (eval mode, no grad, dynamic
batch axis, dynamic sequence axis for dynamic-length text towers), derives fp16 and int8
variants on request, copies the tokenizer files, writes manifest.json, verifies parity
against PyTorch (`cliprt.export.verify`) and only then renames the package into place: the
whole package is built in a temporary sibling directory, so a refused or failed export
leaves nothing at `out_dir`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from cliprt.models import PRECISIONS, Manifest, ModelPackage, TowerSpec, variant_file, write_manifest

from .source import ExportSource
from .verify import VerifyReport, verify_package

IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"
IMAGE_INPUT = "pixels"
OUTPUT = "embedding"
_EXTERNAL_DATA_BYTES = 1_800_000_000     # protobuf's limit is 2 GiB: larger models keep weights beside


class ExportError(RuntimeError):
    """The source cannot be exported as asked."""


# one list of precisions for every tower, or a list per tower ({"image": [...], "text": [...]})
Precisions = Union[Sequence[str], Mapping[str, Sequence[str]]]


def exporter_versions() -> Dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    import cliprt

    versions = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                "cliprt": getattr(cliprt, "__version__", "unknown")}
    try:
        import onnxconverter_common

        versions["onnxconverter_common"] = onnxconverter_common.__version__
    except ImportError:
        pass
    return versions


def tower_precisions(source: ExportSource, precisions: Precisions) -> Dict[str, Tuple[str, ...]]:
    """Precisions per tower of ``source``, in PRECISIONS order, fp32 always first: from one
    list for every tower, or from a mapping ``{"image": [...], "text": [...]}`` (a tower
    not named gets fp32 alone)."""
    present = [t for t, m in (("image", source.image_tower), ("text", source.text_tower)) if m is not None]
    for t, ps in (precisions.items() if isinstance(precisions, Mapping) else [("every", precisions)]):
        if isinstance(ps, str):
            raise ExportError(f"precisions ({t} tower) must be a list such as ['fp32', 'int8'], got {ps!r}")
    if isinstance(precisions, Mapping):
        unknown = sorted(set(precisions) - {"image", "text"})
        if unknown:
            raise ExportError(f"precisions name unknown towers {unknown}; expected 'image' and/or 'text'")
        absent = sorted(set(precisions) - set(present))
        if absent:
            raise ExportError(f"precisions name towers the source has not: {absent}")
        wanted = {t: tuple(precisions.get(t, ())) for t in present}
    else:
        wanted = {t: tuple(precisions or ()) for t in present}
    out: Dict[str, Tuple[str, ...]] = {}
    for t, ps in wanted.items():
        bad = [p for p in ps if p not in PRECISIONS]
        if bad:
            raise ExportError(f"unknown precision(s) {bad}; expected some of {PRECISIONS}")
        out[t] = tuple(p for p in PRECISIONS if p == "fp32" or p in ps)
    return out


def _check_source(source: ExportSource, optional: Sequence[str]) -> None:
    if source.image_tower is None and source.text_tower is None:
        raise ExportError(f"export source {source.name!r} has neither an image nor a text tower")
    if source.image_tower is not None and source.image_spec is None:
        raise ExportError(f"export source {source.name!r} has an image tower but no image_spec")
    if source.text_tower is not None:
        if source.text_spec is None:
            raise ExportError(f"export source {source.name!r} has a text tower but no text_spec")
        if not source.text_inputs:
            raise ExportError(f"export source {source.name!r} names no text tower inputs")
        if source.text_spec.tokenizer_file not in source.tokenizer_files:
            raise ExportError(f"text_spec.tokenizer_file {source.text_spec.tokenizer_file!r} is not among "
                              f"the tokenizer files to copy ({sorted(source.tokenizer_files)})")
    for name, path in source.tokenizer_files.items():
        if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            raise ExportError(f"tokenizer file name {name!r} must be a relative path inside the package")
        if not os.path.isfile(path):
            raise ExportError(f"tokenizer file {path!r} does not exist")
    if isinstance(optional, str):
        raise ExportError(f"optional must be a list of precisions such as ['int8'], got {optional!r}")
    bad = [p for p in optional if p not in PRECISIONS or p == "fp32"]
    if bad:
        raise ExportError(f"optional precision(s) {bad}: only reduced precisions ({PRECISIONS[1:]}) can be optional; "
                          "fp32 is the reference variant every package holds")


@contextlib.contextmanager
def _export_mode():
    """No autograd and no fused MultiheadAttention fast path (aten::_native_multi_head_attention
    has no ONNX symbolic; the fast path only runs in eval + no-grad, i.e. exactly here)."""
    import torch

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _eval(module, what: str):
    module.eval()
    still = [n for n, m in module.named_modules() if m.training]
    if still:
        raise ExportError(f"{what} tower has modules in train mode after eval(): {still[:5]}")
    return module


def _save_onnx(model, path: str) -> None:
    import onnx

    if model.ByteSize() > _EXTERNAL_DATA_BYTES:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data")
    else:
        onnx.save_model(model, path)


def _torch_export(module, args, path: str, input_names, dynamic_axes, opset: int) -> None:
    import onnx
    import torch

    with _export_mode():
        torch.onnx.export(module, tuple(args), path, input_names=list(input_names), output_names=[OUTPUT],
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True,
                          dynamo=False)
    onnx.checker.check_model(path)


def _example_text(source: ExportSource):
    import torch

    spec = source.text_spec
    if source.tokenize is not None:
        tok = source.tokenize(["a photo of a dog", "a diagram"])
        arrays = [np.asarray(tok[k], dtype=np.int64) for k in source.text_inputs]
    else:
        arrays = [np.full((2, spec.context_length), spec.pad_id, np.int64) for _ in source.text_inputs]
    return [torch.from_numpy(a) for a in arrays]


def _export_image(source: ExportSource, path: str, opset: int) -> None:
    import torch

    tower = _eval(source.image_tower, "image")
    h, w = source.image_spec.size
    example = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, h, w)).astype(np.float32))
    _torch_export(tower, [example], path, [IMAGE_INPUT],
                  {IMAGE_INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset)


def _export_text(source: ExportSource, path: str, opset: int) -> None:
    tower = _eval(source.text_tower, "text")
    axes: Dict[str, Dict[int, str]] = {}
    for name in source.text_inputs:
        axes[name] = {0: "batch", 1: "sequence"} if source.text_spec.dynamic_length else {0: "batch"}
    axes[OUTPUT] = {0: "batch"}
    _torch_export(tower, _example_text(source), path, source.text_inputs, axes, opset)


def _to_fp16(fp32_path: str, out_path: str) -> None:
    import onnx
    from onnx import shape_inference
    from onnxconverter_common import float16

    model = shape_inference.infer_shapes(onnx.load(fp32_path))
    _noop_casts_to_identity(model)
    # inputs/outputs stay float32 (callers feed the same pixels); weights and math in fp16
    converted = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    _fix_fp16_casts(converted)
    _save_onnx(converted, out_path)


def _noop_casts_to_identity(model) -> int:
    """Turns the float32 model's own no-op casts (Cast(to=T) of a tensor already of type T, e.g.
    Hugging Face's `pixel_values.to(dtype)`) into Identity, before the fp16 conversion.

    The converter's clean-up (remove_unnecessary_cast_node) treats any Cast(to=float16) feeding
    a Cast(to=float) as a round trip of its own making and deletes the pair, rewiring the
    consumer to the pair's input. When the second Cast is the model's own (its output already
    retyped float16, the case `_fix_fp16_casts` repairs) and the first one the converter's cast
    of a float32 graph input (keep_io_types) or of a block-listed op's output, the consumer ends
    up reading the float32 tensor while its weights are float16, and ONNX Runtime refuses the
    model ("Type parameter (T) of Optype (Conv) bound to different types"). An Identity keeps
    the names and the types, is left alone by that clean-up and is removed by ORT's optimiser."""
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(graph.input) + list(graph.value_info) + list(graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    changed = 0
    for node in graph.node:
        if node.op_type != "Cast" or not node.input or not node.input[0]:
            continue
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if to is not None and types.get(node.input[0]) == to:
            node.op_type = "Identity"
            del node.attribute[:]
            changed += 1
    return changed


def _fix_fp16_casts(model) -> int:
    """onnxconverter-common retypes the outputs of the model's own Cast-to-float nodes as
    float16 but leaves their `to` attribute at float, which ONNX Runtime rejects at load
    ("Type (tensor(float16)) of output arg ... does not match"): make them cast to float16."""
    from onnx import TensorProto

    declared = {v.name: v.type.tensor_type.elem_type
                for v in list(model.graph.value_info) + list(model.graph.output)}
    fixed = 0
    for node in model.graph.node:
        if node.op_type != "Cast":
            continue
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.FLOAT and declared.get(node.output[0]) == TensorProto.FLOAT16:
                attr.i = TensorProto.FLOAT16
                fixed += 1
    return fixed


def _to_int8(fp32_path: str, out_path: str) -> None:
    """Dynamic int8 for MatMul: activations quantized to uint8 at run time, weights to signed
    7-bit codes (|q| <= 64), one scale per output column.

    The 7-bit weights make the result the same on every CPU. ONNX Runtime multiplies uint8
    activations by int8 weights; with VNNI (vpdpbusd) or Arm's dot products the products are
    summed exactly, but the AVX2 kernel without VNNI adds pairs of products into int16 with
    saturation (vpmaddubsw), and 2 x 255 x 127 overflows it: full-range weights lost parity
    there (tiny SigLIP min cosine 0.89, ViT-B-32 image tower 0.984). With |q| <= 64 a pair
    is at most 2 x 255 x 64 = 32640 < 32767, so every kernel path computes the same exact
    integer dot products, and VNNI machines keep their fast kernel (uint8 x uint8 weights
    would also be exact, but run a slower kernel everywhere). Per-column scales give back
    the bit that the 7-bit range costs (ViT-B-32 image tower: min cosine 0.99950 per tensor,
    0.99968 per column).

    MatMul only: ONNX Runtime's CPU ConvInteger has no int8-weight kernel, and CNN towers
    want static QDQ quantization anyway (measured slower with dynamic int8)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(fp32_path, out_path, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                     per_channel=True, reduce_range=True,
                     use_external_data_format=os.path.getsize(fp32_path) > _EXTERNAL_DATA_BYTES)


def build_manifest(source: ExportSource, precisions: Precisions, opset: int,
                   verification: Optional[Dict[str, Any]] = None) -> Manifest:
    per_tower = tower_precisions(source, precisions)
    towers: Dict[str, TowerSpec] = {}
    if source.image_tower is not None:
        towers["image"] = TowerSpec(file=IMAGE_FILE, precisions=per_tower["image"], inputs=(IMAGE_INPUT,),
                                    output=OUTPUT)
    if source.text_tower is not None:
        towers["text"] = TowerSpec(file=TEXT_FILE, precisions=per_tower["text"],
                                   inputs=tuple(source.text_inputs), output=OUTPUT)
    provenance = dict(source.provenance)
    provenance["exporter"] = dict(exporter_versions(), opset=opset)
    if verification is not None:
        provenance["verification"] = verification
    return Manifest(
        name=source.name, family=source.family, embed_dim=int(source.embed_dim), normalized=True,
        scoring=source.scoring, logit_scale=float(source.logit_scale), logit_bias=float(source.logit_bias),
        provenance=provenance, towers=towers,
        image=source.image_spec if "image" in towers else None,
        text=source.text_spec if "text" in towers else None,
        description=source.description)


def export_package(source: ExportSource, out_dir, precisions: Precisions = ("fp32",), verify: bool = True,
                   verify_images: Optional[str] = None, opset: int = 17, overwrite: bool = False,
                   optional: Sequence[str] = (), progress: Optional[Callable[[str], None]] = None) -> VerifyReport:
    """Exports `source` as a model package at `out_dir` and returns the verification report.

    `precisions`: the variants to write, for every tower (``("fp32", "int8")``) or per tower
    (``{"image": ["fp32"], "text": ["fp32", "int8"]}``); fp32 is always written. `optional`:
    reduced precisions (e.g. ``("int8",)``) kept only on the towers where they verify: a
    tower's optional variant that fails is removed from the package (its record stays in the
    manifest's verification) instead of refusing the export. `progress(stage)` is called as
    the stages "export" and "verify" begin.

    Raises `ParityError` (from cliprt.export.verify) when an exported tower does not match
    PyTorch within the thresholds, `ExportError` when the source cannot be exported; in
    either case nothing is left at `out_dir`. `out_dir` must not exist unless `overwrite`."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    per_tower = tower_precisions(source, precisions)
    _check_source(source, optional)
    optional_names = [f"{t}.{p}" for t, ps in per_tower.items() for p in ps if p in optional]
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir!r} already exists (pass overwrite=True / --overwrite to replace it)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
    try:
        if progress is not None:
            progress("export")
        files = {"image": IMAGE_FILE, "text": TEXT_FILE}
        if source.image_tower is not None:
            _export_image(source, os.path.join(tmp, IMAGE_FILE), opset)
        if source.text_tower is not None:
            _export_text(source, os.path.join(tmp, TEXT_FILE), opset)
        for t, ps in per_tower.items():
            fp32 = os.path.join(tmp, files[t])
            if "fp16" in ps:
                _to_fp16(fp32, os.path.join(tmp, variant_file(files[t], "fp16")))
            if "int8" in ps:
                _to_int8(fp32, os.path.join(tmp, variant_file(files[t], "int8")))
        for name, src in source.tokenizer_files.items():
            dst = os.path.join(tmp, name)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst)
        write_manifest(tmp, build_manifest(source, per_tower, opset))
        ModelPackage.load(tmp)      # the package must read back before anything else
        if verify:
            if progress is not None:
                progress("verify")
            report = verify_package(source, tmp, images=verify_images, optional=optional_names)
            report.check()
            for r in report.dropped():
                os.remove(os.path.join(tmp, variant_file(files[r.tower], r.precision)))
                per_tower[r.tower] = tuple(p for p in per_tower[r.tower] if p != r.precision)
            write_manifest(tmp, build_manifest(source, per_tower, opset, report.summary()))
        else:
            report = VerifyReport(name=source.name, images="-", verified=False)
        ModelPackage.load(tmp)
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "pkg"))
            os.rename(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out_dir)
        return report
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
