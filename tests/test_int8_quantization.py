"""The int8 towers compute exact integer dot products on every CPU.

ONNX Runtime's dynamic int8 MatMul multiplies uint8 activations by int8 weights. Its AVX2
kernel without VNNI adds each pair of products into int16 with saturation, the VNNI and Arm
kernels do not saturate; cliprt's quantization (``cliprt.export.pipeline._to_int8``) keeps
the weights within +-64 so that no pair can overflow and every kernel path gives the exact
result. These tests run a MatMul whose inputs make full-range weights overflow, on this
machine's kernel, against the exact integer arithmetic in numpy.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="int8 export tests need the 'export' extra (onnx)")
ort = pytest.importorskip("onnxruntime", reason="int8 export tests need onnxruntime")
pytest.importorskip("onnxruntime.quantization", reason="int8 export tests need onnxruntime.quantization")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cliprt.export.pipeline import _to_int8  # noqa: E402

K, N = 257, 37          # odd sizes: K not a multiple of the kernels' blocking, N not of the vector width
PAIR_LIMIT = 32767      # int16


def _weights(rng) -> np.ndarray:
    """Columns of one sign and near-equal magnitude (every product of a pair has the same
    sign and near-maximal size), and a few mixed columns."""
    w = rng.uniform(0.95, 1.0, (K, N)).astype(np.float32)
    w *= np.where(np.arange(N) % 2 == 0, 1.0, -1.0).astype(np.float32)
    w[:, -5:] = rng.standard_normal((K, 5)).astype(np.float32)
    return w


def _activations(rng, n: int) -> np.ndarray:
    """Non-negative rows (zero point 0) near the maximum: uint8 codes close to 255."""
    x = rng.uniform(0.9, 1.0, (n, K)).astype(np.float32)
    x[0, :] = 1.0
    return x


def _matmul_model(path, w: np.ndarray) -> None:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", N])],
        [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _quantized_weights(model):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "MatMulInteger")
    return inits[node.input[1]].astype(np.int64), inits[node.input[3]].astype(np.int64), inits["w_scale"]


def _expose_activation_codes(model):
    """The same model with the DynamicQuantizeLinear outputs as graph outputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dql = next(n for n in m.graph.node if n.op_type == "DynamicQuantizeLinear")
    types = (TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8)
    for name, t in zip(dql.output, types):
        m.graph.output.append(helper.make_tensor_value_info(name, t, None))
    return m


def _session(model_bytes: bytes, level):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    opts.log_severity_level = 3
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def _pairwise_saturating(xc: np.ndarray, wc: np.ndarray) -> np.ndarray:
    """x @ w with every pair of adjacent products summed into int16 with saturation (the
    AVX2 kernel without VNNI), for the check that the inputs do provoke it."""
    kk = xc.shape[1] - xc.shape[1] % 2
    prods = xc[:, :kk, None] * wc[None, :kk, :]
    pairs = np.clip(prods[:, 0::2] + prods[:, 1::2], -PAIR_LIMIT - 1, PAIR_LIMIT).sum(1)
    if kk < xc.shape[1]:
        pairs = pairs + xc[:, kk:] @ wc[kk:]
    return pairs


@pytest.mark.parametrize("seed", [0, 1])
def test_int8_matmul_exact_on_this_cpu(tmp_path, seed):
    rng = np.random.default_rng(seed)
    print(f"seed {seed}")
    w = _weights(rng)
    _matmul_model(tmp_path / "fp32.onnx", w)
    _to_int8(str(tmp_path / "fp32.onnx"), str(tmp_path / "int8.onnx"))
    model = onnx.load(str(tmp_path / "int8.onnx"))
    wq, wzp, wscale = _quantized_weights(model)
    # the bound that keeps a pair of uint8 x int8 products inside int16
    assert wscale.shape == (N,) and not wzp.any()
    assert np.abs(wq).max() <= 64 and 2 * 255 * np.abs(wq).max() <= PAIR_LIMIT

    x = _activations(rng, 19)
    exposed = _session(_expose_activation_codes(model).SerializeToString(), ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    y_plain, xq, xscale, xzp = exposed.run(None, {"x": x})
    xc = xq.astype(np.int64) - int(xzp)
    exact = (xc @ wq).astype(np.float64) * (float(xscale) * wscale.astype(np.float64))
    tol = 1e-5 * np.abs(exact).max()

    # the inputs are ones that overflow int16 pairs with full-range (8-bit) weights
    full = np.rint(w / (np.abs(w).max(0) / 127)).astype(np.int64)
    assert np.abs(_pairwise_saturating(xc, full) - xc @ full).max() > 1000

    fused = _session(model.SerializeToString(), ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    y_fused = fused.run(None, {"x": x})[0]
    for name, y in (("MatMulInteger", y_plain), ("fused DynamicQuantizeMatMul", y_fused)):
        err = np.abs(y.astype(np.float64) - exact).max()
        assert err <= tol, f"{name}: max |int8 - exact integer result| {err:.3g} > {tol:.3g}"
    # and the quantized product is close to the float product
    ref = x.astype(np.float64) @ w.astype(np.float64)
    assert np.abs(y_fused - ref).max() <= 0.02 * np.abs(ref).max()
