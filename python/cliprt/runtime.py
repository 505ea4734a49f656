"""ONNX Runtime sessions for a package's towers.

One :class:`TowerSession` per tower and precision: it opens the ONNX file with options tuned
for throughput on the chosen device and runs batches through IOBinding (inputs bound in
place, no copy of the batch buffer).

CPU tuning, and why:

* ``intra_op_num_threads`` = the cores the encoder may use, ``inter_op_num_threads`` = 1
  and sequential execution: the towers are single chains of large ops, so parallelism
  inside each op is what pays.
* intra-op spinning off (``session.intra_op.allow_spinning = 0``): the encoder decodes
  images on the same cores while a batch runs; spinning worker threads would take that
  time from the decoders, and idle gaps between batches are short anyway.
* full graph optimisation, except for fp16 graphs, which are opened at the extended level:
  ONNX Runtime's layout transformer crashed on fp16 convolutions at the full level.
* dynamic int8 towers run the same way (MatMulInteger kernels use VNNI where the CPU has it).

On CUDA machines with ``onnxruntime-gpu`` the CUDA (and, when asked, TensorRT) execution
providers are used; the session then pads each batch up to a fixed bucket size so that the
provider sees a handful of shapes (TensorRT builds one engine per profile).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import numpy as np

__all__ = ["TowerSession", "available_providers", "check_providers", "default_threads"]


def default_threads() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("the encoders need ONNX Runtime: pip install 'cliprt[encode]'") from e
    return ort


def available_providers() -> List[str]:
    return list(_ort().get_available_providers())


def check_providers(device: str, backend: str) -> None:
    """Raises if ONNX Runtime cannot run on `device` with `backend` here."""
    _providers(device, backend)


def _providers(device: str, backend: str) -> List:
    have = available_providers()
    if device == "cpu":
        if backend not in ("ort",):
            raise ValueError(f"backend {backend!r} needs device='cuda'")
        return ["CPUExecutionProvider"]
    from ._device import parse_device

    device_id = parse_device(device)
    if "CUDAExecutionProvider" not in have:
        raise RuntimeError(f"device={device!r} needs onnxruntime-gpu (the CUDA execution provider); "
                           f"this onnxruntime has {', '.join(have)}")
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if backend == "tensorrt":
        if "TensorrtExecutionProvider" not in have:
            raise RuntimeError("backend='tensorrt' needs onnxruntime-gpu built with TensorRT and the TensorRT "
                               f"libraries; this onnxruntime has {', '.join(have)}")
        return [("TensorrtExecutionProvider", {"device_id": device_id, "trt_fp16_enable": True,
                                               "trt_engine_cache_enable": True}), cuda, "CPUExecutionProvider"]
    return [cuda, "CPUExecutionProvider"]


def _bucket(n: int, max_batch: int) -> int:
    """Smallest power of two >= n, capped at max_batch (and at least n)."""
    b = 1
    while b < n:
        b *= 2
    return max(n, min(b, max_batch))


class TowerSession:
    """A tower's ONNX Runtime session: ``run(inputs) -> float32 (batch, dim)``."""

    def __init__(self, path: str, *, device: str = "cpu", backend: str = "ort", threads: Optional[int] = None,
                 precision: str = "fp32", output: str = "embedding", max_batch: int = 64):
        ort = _ort()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if precision == "fp16"
                                         else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = int(threads or default_threads())
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.path = path
        self.device = device
        self.precision = precision
        self.session = ort.InferenceSession(path, sess_options=opts, providers=_providers(device, backend))
        self.inputs: Tuple[str, ...] = tuple(i.name for i in self.session.get_inputs())
        outs = [o.name for o in self.session.get_outputs()]
        self.output = output if output in outs else outs[0]
        self.max_batch = max_batch
        self.pad_to_bucket = device != "cpu"
        self._ort = ort

    def run(self, feeds: Dict[str, np.ndarray]) -> np.ndarray:
        """Runs one batch; every array in `feeds` has the batch on axis 0."""
        n = len(next(iter(feeds.values())))
        if n == 0:
            return np.zeros((0, 0), np.float32)
        if self.pad_to_bucket:
            b = _bucket(n, self.max_batch)
            if b != n:
                feeds = {k: np.concatenate([v, np.repeat(v[-1:], b - n, axis=0)]) for k, v in feeds.items()}
        binding = self.session.io_binding()
        for name in self.inputs:
            binding.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
        binding.bind_output(self.output, "cpu")
        self.session.run_with_iobinding(binding)
        out = binding.copy_outputs_to_cpu()[0]
        return np.asarray(out[:n], dtype=np.float32)
