// pybind11 bindings: array checks, GIL release around compute, exception translation.
// Argument normalisation (dtype casts, defaults) lives in python/cliprt/index.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cliprt/build_info.h"
#include "cliprt/errors.h"
#include "cliprt/index.h"
#include "cliprt/scan.h"
#include "cliprt/codec.h"
#include "cuda_index.h"
#if defined(CLIPRT_WITH_CUDA)
#include "common/device.h"
#include "quant/encode.h"
#endif

namespace py = pybind11;
using namespace cliprt;

namespace {

using F32Array = py::array_t<float, py::array::c_style>;
using I64Array = py::array_t<int64_t, py::array::c_style>;

void require_2d(const py::array& a, int64_t dim, const char* what) {
  if (a.ndim() != 2)
    throw ValueError(std::string(what) + " must be 2-D (n, dim), got " + std::to_string(a.ndim()) + "-D");
  if (a.shape(1) != dim)
    throw ValueError(std::string(what) + " have dim " + std::to_string(a.shape(1)) + ", index has dim " +
                     std::to_string(dim));
}

py::tuple search(const Index& ix, const F32Array& q, int64_t k, int rescore, py::object allow, int threads) {
  require_2d(q, ix.dim(), "queries");
  SearchParams p;
  p.k = k;
  p.rescore = rescore;
  p.threads = threads;
  I64Array allow_arr;
  if (!allow.is_none()) {
    allow_arr = allow.cast<I64Array>();
    if (allow_arr.ndim() != 1) throw ValueError("allow must be a 1-D array of ids");
    p.allow = allow_arr.data();
    p.n_allow = allow_arr.shape(0);
    p.has_allow = true;
  }
  if (k <= 0) throw ValueError("k must be positive, got " + std::to_string(k));
  const int64_t nq = q.shape(0);
  F32Array scores({nq, k});
  I64Array ids({nq, k});
  float* ps = scores.mutable_data();
  int64_t* pi = ids.mutable_data();
  {
    py::gil_scoped_release release;
    ix.search(q.data(), nq, p, ps, pi);
  }
  return py::make_tuple(scores, ids);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "cliprt native core";
  static py::exception<FormatError> format_error(m, "FormatError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FormatError& e) {
      py::set_error(format_error, e.what());
    } catch (const ValueError& e) {
      py::set_error(PyExc_ValueError, e.what());
    } catch (const TypeError& e) {
      py::set_error(PyExc_TypeError, e.what());
    } catch (const KeyError& e) {
      py::set_error(PyExc_KeyError, e.what());
    } catch (const IOError& e) {
      py::set_error(PyExc_OSError, e.what());
    } catch (const CudaError& e) {
      py::set_error(PyExc_RuntimeError, e.what());
    }
  });

  py::class_<Index>(m, "Index")
      .def(py::init([](int dim, const std::string& metric, const std::string& storage, bool keep) {
             return std::make_unique<Index>(dim, parse_metric(metric), parse_storage(storage), keep);
           }),
           py::arg("dim"), py::arg("metric"), py::arg("storage"), py::arg("keep_originals"))
      .def("add",
           [](Index& ix, const F32Array& x, py::object ids) {
             require_2d(x, ix.dim(), "vectors");
             const int64_t n = x.shape(0);
             I64Array id_arr;
             const int64_t* idp = nullptr;
             if (!ids.is_none()) {
               id_arr = ids.cast<I64Array>();
               if (id_arr.ndim() != 1 || id_arr.shape(0) != n)
                 throw ValueError("ids must be a 1-D array with one id per vector (" + std::to_string(n) + ")");
               idp = id_arr.data();
             }
             std::vector<int64_t> out;
             {
               py::gil_scoped_release release;
               out = ix.add(x.data(), n, idp);
             }
             I64Array r(int64_t(out.size()));
             std::copy(out.begin(), out.end(), r.mutable_data());
             return r;
           },
           py::arg("vectors"), py::arg("ids") = py::none())
      .def("search", &search, py::arg("queries"), py::arg("k"), py::arg("rescore"), py::arg("allow"),
           py::arg("threads"))
      .def("remove",
           [](Index& ix, const I64Array& ids) {
             py::gil_scoped_release release;
             return ix.remove(ids.data(), ids.size());
           })
      .def("reconstruct",
           [](const Index& ix, const I64Array& ids) {
             F32Array out({int64_t(ids.size()), int64_t(ix.dim())});
             float* po = out.mutable_data();
             {
               py::gil_scoped_release release;
               ix.reconstruct(ids.data(), ids.size(), po);
             }
             return out;
           })
      .def("contains", &Index::contains)
      .def("ids",
           [](const Index& ix) {
             auto v = ix.ids();
             I64Array r(int64_t(v.size()));
             std::copy(v.begin(), v.end(), r.mutable_data());
             return r;
           })
      .def("save",
           [](Index& ix, const std::string& path) {
             py::gil_scoped_release release;
             ix.save(path);
           })
      .def_static("load",
                  [](const std::string& path, bool mmap, bool verify) {
                    py::gil_scoped_release release;
                    LoadOptions o;
                    o.mmap = mmap;
                    o.verify = verify;
                    return Index::load(path, o);
                  },
                  py::arg("path"), py::arg("mmap"), py::arg("verify"))
      .def("verify",
           [](const Index& ix) {
             py::gil_scoped_release release;
             ix.verify();
           })
      .def("__len__", &Index::size)
      .def_property_readonly("dim", &Index::dim)
      .def_property_readonly("metric", [](const Index& ix) { return std::string(metric_name(ix.metric())); })
      .def_property_readonly("storage", [](const Index& ix) { return std::string(storage_name(ix.storage())); })
      .def_property_readonly("keep_originals", &Index::keep_originals)
      .def_property_readonly("num_segments", &Index::num_segments)
      .def_property_readonly("memory_bytes", &Index::memory_bytes);

  m.def("build_info", [] {
    BuildInfo b = build_info();
    py::dict d;
    d["version"] = b.version;
    d["compiler"] = b.compiler;
    d["simd_compiled"] = b.simd_compiled;
    d["simd_available"] = b.simd_available;
    d["simd_selected"] = b.simd_selected;
    d["cuda"] = b.cuda;
    d["cuda_archs"] = b.cuda_archs;
    return d;
  });
  m.def("cuda_device_count", [] {
#if defined(CLIPRT_WITH_CUDA)
    return cuda::device_count();
#else
    return 0;
#endif
  }, "CUDA devices visible to this build (0 for a CPU-only build).");
  // Row codecs exposed for tests and tools: (n, dim) float32 -> (codes uint8 (n, row_bytes),
  // scales float32 (n)), contiguous row codes in group order (codec.h).
  m.def("encode_rows",
        [](const F32Array& x, const std::string& storage) {
          if (x.ndim() != 2) throw ValueError("x must be 2-D (n, dim)");
          const Layout L = make_layout(parse_storage(storage), int(x.shape(1)));
          const int64_t n = x.shape(0);
          py::array_t<uint8_t> codes({n, int64_t(L.row_bytes())});
          F32Array scales(n);
          for (int64_t i = 0; i < n; ++i)
            encode_row(L, x.data() + i * L.dim, codes.mutable_data() + i * int64_t(L.row_bytes()),
                       scales.mutable_data() + i);
          return py::make_tuple(codes, scales);
        },
        py::arg("x"), py::arg("storage"));
  m.def("cuda_encode_rows",
        [](const F32Array& x, const std::string& storage) {
#if defined(CLIPRT_WITH_CUDA)
          if (x.ndim() != 2) throw ValueError("x must be 2-D (n, dim)");
          const Layout L = make_layout(parse_storage(storage), int(x.shape(1)));
          std::vector<uint8_t> codes;
          std::vector<float> scales;
          {
            py::gil_scoped_release release;
            cuda::encode_rows(L, x.data(), x.shape(0), &codes, &scales);
          }
          py::array_t<uint8_t> c({int64_t(x.shape(0)), int64_t(L.row_bytes())});
          std::copy(codes.begin(), codes.end(), c.mutable_data());
          F32Array s(int64_t(scales.size()));
          std::copy(scales.begin(), scales.end(), s.mutable_data());
          return py::make_tuple(c, s);
#else
          throw ValueError("this build of cliprt has no CUDA kernels (built with CLIPRT_CUDA=OFF or without nvcc)");
#endif
        },
        py::arg("x"), py::arg("storage"), "The device codecs (device 0); same output as encode_rows.");
  register_cuda_index(m);
  m.def("set_simd_variant", &set_active_variant, py::arg("name"),
        "Force a SIMD variant (tests); the CLIPRT_SIMD environment variable does the same at start-up.");
  m.def("simd_variant", [] { return std::string(active_kernels().name); });
  m.def("measure_read_bandwidth",
        [](size_t bytes, int threads, int repeats) {
          py::gil_scoped_release release;
          return measure_read_bandwidth(bytes, threads, repeats);
        },
        py::arg("bytes"), py::arg("threads"), py::arg("repeats") = 5,
        "Sustained memory read bandwidth (bytes/s) measured with the same threads as a scan.");
}
