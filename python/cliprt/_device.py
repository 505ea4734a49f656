"""CUDA plumbing for cliprt.Index: device names, device arrays and streams.

Device arrays are cupy arrays, torch CUDA tensors, or any object exposing
``__cuda_array_interface__`` or a CUDA ``__dlpack__``; they are handed to the native core
as raw pointers to float32, C-contiguous data on the index's device (converted by their
own library, on the stream the search will run on). Results for device queries are
allocated by the same library (cupy when the input was neither cupy nor torch). cupy and
torch are imported only when such an object or stream is passed in.
"""
from __future__ import annotations

import numbers
from typing import Any, NamedTuple, Optional

import numpy as np

from cliprt import _core

_KDLCUDA = 2  # DLPack device type of CUDA memory


def parse_device(device) -> Optional[int]:
    """None for the CPU, else the CUDA device ordinal. Accepts "cpu", "cuda", "cuda:N",
    torch.device and cupy.cuda.Device objects."""
    if device is None:
        return None
    kind = getattr(device, "type", None)
    if kind is not None and not isinstance(device, str):  # torch.device
        device = f"{kind}:{device.index}" if getattr(device, "index", None) is not None else kind
    elif not isinstance(device, str) and hasattr(device, "id"):  # cupy.cuda.Device
        return int(device.id)
    if not isinstance(device, str):
        raise TypeError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    name = device.strip().lower()
    if name == "cpu":
        return None
    if name == "cuda":
        return 0
    if name.startswith("cuda:") and name[5:].isdigit():
        return int(name[5:])
    raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


def device_name(ordinal: Optional[int]) -> str:
    return "cpu" if ordinal is None else f"cuda:{ordinal}"


def require_cuda(ordinal: int) -> None:
    """Raises RuntimeError unless this build has CUDA and device `ordinal` is visible."""
    if not _core.build_info().get("cuda") or not hasattr(_core, "CudaIndex"):
        raise RuntimeError("cliprt was built without CUDA (CLIPRT_CUDA=OFF or no nvcc at build time): "
                           "device indexes are not available in this build")
    count = _core.cuda_device_count()
    if count == 0:
        raise RuntimeError("no CUDA device is available: cliprt was built with CUDA, but no device is "
                           "visible (driver missing, CUDA_VISIBLE_DEVICES, or no GPU)")
    if ordinal >= count:
        raise RuntimeError(f"CUDA device {ordinal} is not available ({count} visible)")


# ---------------------------------------------------------------------------------------
# array kinds

def _module(x) -> str:
    return type(x).__module__.split(".", 1)[0]


def _is_torch(x) -> bool:
    return _module(x) == "torch" and hasattr(x, "is_cuda")


def _is_cupy(x) -> bool:
    return _module(x) == "cupy" and hasattr(x, "data") and hasattr(x, "device")


def is_device_array(x) -> bool:
    """True for arrays in CUDA device memory."""
    if _is_torch(x):
        return bool(x.is_cuda)
    if _is_cupy(x):
        return True
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dev = getattr(x, "__dlpack_device__", None)
    if dev is not None and not isinstance(x, np.ndarray):
        try:
            return int(dev()[0]) == _KDLCUDA
        except Exception:  # a producer that cannot say: treat as host memory
            return False
    return False


def to_numpy(x):
    """A host numpy view or copy of a torch tensor or device array (anything else is
    returned as is)."""
    if _is_torch(x):
        x = x.detach()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.cpu().numpy()
    if is_device_array(x):
        lib, arr = _wrap(x)
        return arr.get() if lib == "cupy" else to_numpy(arr)
    return x


def _wrap(x):
    """(library, array) for a device array of any producer: itself for cupy and torch;
    otherwise a zero-copy cupy view (CUDA array interface or DLPack), or a torch one when
    cupy is not installed. cupy and torch order their current stream after the producer's
    (CAI v3 / DLPack stream semantics)."""
    if _is_torch(x):
        return "torch", x
    if _is_cupy(x):
        return "cupy", x
    try:
        import cupy
    except ImportError:
        import torch
        if hasattr(x, "__cuda_array_interface__"):
            return "torch", torch.as_tensor(x, device="cuda")
        return "torch", torch.from_dlpack(x)
    if hasattr(x, "__cuda_array_interface__"):
        return "cupy", cupy.asarray(x)
    return "cupy", cupy.from_dlpack(x)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------------------------------
# streams

def stream_handle(stream) -> Optional[int]:
    """A CUDA stream as an integer handle: None, an int, a cupy or torch stream, or an object
    with ``__cuda_stream__``."""
    if stream is None:
        return None
    if isinstance(stream, numbers.Integral) and not isinstance(stream, bool):
        if int(stream) < 0:
            raise ValueError(f"stream handle must be >= 0, got {int(stream)}")
        return int(stream)
    if hasattr(stream, "__cuda_stream__"):
        return int(stream.__cuda_stream__()[1])
    if hasattr(stream, "cuda_stream"):  # torch.cuda.Stream
        return int(stream.cuda_stream)
    if hasattr(stream, "ptr"):  # cupy.cuda.Stream
        return int(stream.ptr)
    raise TypeError(f"stream must be a CUDA stream handle (int), a cupy or torch stream, or None; "
                    f"got {type(stream).__name__}")


class _OnStream:
    """Runs library work (casts, copies, allocations) on the given stream."""

    def __init__(self, lib: str, handle: Optional[int], ordinal: int):
        self.ctx = None
        if handle is None:
            return
        if lib == "torch":
            import torch
            self.ctx = torch.cuda.stream(torch.cuda.ExternalStream(handle, device=f"cuda:{ordinal}"))
        else:
            import cupy
            self.ctx = cupy.cuda.ExternalStream(handle, ordinal)

    def __enter__(self):
        if self.ctx is not None:
            self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False


# ---------------------------------------------------------------------------------------
# device rows

class DeviceRows(NamedTuple):
    """Rows in device memory as the native core takes them (csrc/bindings/index_api.h)."""
    ptr: int             # float32, C-contiguous (n, dim)
    n: int
    single: bool         # the input was one vector
    lib: str             # "cupy" or "torch": who allocates results
    device: int
    array: Any           # keeps the converted array alive
    producer: Optional[int]  # stream the data was produced on (None: nothing to wait for)
    handle: Optional[int]    # the stream the caller asked for (None: the core's choice)

    def outputs(self, k: int):
        """Search results for these queries, allocated by their library on their device:
        (scores float32 (n, k), ids int64 (n, k), scores pointer, ids pointer)."""
        scores = empty(self, (self.n, k), "float32", self.handle)
        ids = empty(self, (self.n, k), "int64", self.handle)
        return scores, ids, data_ptr(scores), data_ptr(ids)


def device_rows(x, dim: int, what: str, ordinal: int, handle: Optional[int]) -> DeviceRows:
    """Validates a device array like cliprt.index._as_float_rows (same messages) and returns
    it as float32, C-contiguous rows on device `ordinal`."""
    producer = None
    lib, x = _wrap(x)
    shape = tuple(x.shape)
    floating = x.dtype.is_floating_point if lib == "torch" else np.dtype(x.dtype).kind == "f"
    if not floating:
        raise TypeError(f"{what} must be floating point (float16, float32 or float64), got dtype {_dtype_name(x.dtype)}")
    single = len(shape) == 1
    if len(shape) not in (1, 2):
        raise ValueError(f"{what} must be 2-D (n, dim) or 1-D (dim,), got shape {shape}")
    if shape[-1] != dim:
        raise ValueError(f"{what} have dim {shape[-1]}, index has dim {dim}")
    dev = x.get_device() if lib == "torch" else int(x.device.id)
    if dev != ordinal:
        raise ValueError(f"{what} are on cuda:{dev}, the index is on cuda:{ordinal}")
    with _OnStream(lib, handle, ordinal):
        if lib == "torch":
            import torch
            x = x.detach().reshape(-1, dim).to(torch.float32).contiguous()
            ptr = x.data_ptr()
            if handle is None:
                producer = int(torch.cuda.current_stream(ordinal).cuda_stream)
        else:
            import cupy
            with cupy.cuda.Device(ordinal):
                x = cupy.ascontiguousarray(x.reshape(-1, dim), dtype=cupy.float32)
                if handle is None:
                    producer = int(cupy.cuda.get_current_stream().ptr)
            ptr = int(x.data.ptr)
    return DeviceRows(ptr=ptr, n=int(x.shape[0]), single=single, lib=lib, device=ordinal, array=x,
                      producer=producer, handle=handle)


def empty(rows: DeviceRows, shape, dtype: str, handle: Optional[int]):
    """An uninitialised device array of the input's library on the input's device."""
    with _OnStream(rows.lib, handle, rows.device):
        if rows.lib == "torch":
            import torch
            return torch.empty(shape, dtype=getattr(torch, dtype), device=f"cuda:{rows.device}")
        import cupy
        with cupy.cuda.Device(rows.device):
            return cupy.empty(shape, dtype=dtype)


def data_ptr(a) -> int:
    return int(a.data_ptr()) if _is_torch(a) else int(a.data.ptr)
