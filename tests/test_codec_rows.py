"""Row codecs: the native CPU codec against the float64 oracle, and the CUDA codec against
the CPU codec bit for bit (same codes for the same input, so an index moves between CPU and
GPU without re-encoding)."""
import numpy as np
import pytest

import reference as ref
from cliprt import _core

STORAGES = ("f32", "f16", "bf16", "i8", "b1")
DIMS = (1, 3, 64, 257, 771)


def special_rows(rng, dim):
    """Random rows plus the values codecs get wrong: ties at .5 after scaling, subnormals,
    tiny vectors (127/max|x| overflows float32), f16 overflow edges, zeros, negative zero."""
    rows = [rng.standard_normal(dim).astype(np.float32),
            (rng.standard_normal(dim) * 1e-3).astype(np.float32),
            np.zeros(dim, np.float32),
            np.full(dim, -0.0, np.float32),
            (rng.standard_normal(dim) * 1e-39).astype(np.float32),
            (rng.integers(-254, 255, dim) / 2.0).astype(np.float32),
            (rng.standard_normal(dim) * 6e4).astype(np.float32),
            np.linspace(-1, 1, dim, dtype=np.float32)]
    return np.stack(rows)


def as_bits(storage, codes, dim):
    """Native row codes -> the oracle's representation."""
    if storage == "f32":
        return codes.view(np.float32)[:, :dim]
    if storage in ("f16", "bf16"):
        return codes.view(np.uint16)[:, :dim]
    if storage == "i8":
        return codes.view(np.int8)[:, :dim]
    return np.unpackbits(codes, axis=1, bitorder="little")[:, :dim]


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("storage", STORAGES)
def test_cpu_codec_matches_oracle(rng, storage, dim):
    x = special_rows(rng, dim)
    codes, scales = _core.encode_rows(x, storage)
    want_codes, want_scales = ref.encode(storage, x)
    if storage == "f16":
        want_codes = want_codes.view(np.uint16)
    got = as_bits(storage, codes, dim)
    np.testing.assert_array_equal(got.view(np.uint8) if storage == "f32" else got,
                                  want_codes.view(np.uint8) if storage == "f32" else want_codes)
    np.testing.assert_array_equal(scales, want_scales)


@pytest.mark.gpu
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("storage", STORAGES)
def test_cuda_codec_matches_cpu_bit_for_bit(rng, storage, dim):
    x = np.concatenate([special_rows(rng, dim), rng.standard_normal((1000, dim)).astype(np.float32)])
    cpu_codes, cpu_scales = _core.encode_rows(x, storage)
    gpu_codes, gpu_scales = _core.cuda_encode_rows(x, storage)
    np.testing.assert_array_equal(gpu_codes, cpu_codes)
    np.testing.assert_array_equal(gpu_scales.view(np.uint32), cpu_scales.view(np.uint32))
