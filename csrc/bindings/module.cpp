// pybind11 bindings: the module, exception translation, the CPU index (its shared methods in
// index_api.h), build facts and codec hooks. Argument normalisation (dtype casts, Python
// types) lives in python/cliprt/index.py; argument rules in the C++ entry points.
#include <cstring>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cliprt/build_info.h"
#include "cliprt/dir_lock.h"
#include "cliprt/errors.h"
#include "cliprt/index.h"
#include "cliprt/scan.h"
#include "cliprt/codec.h"
#include "cuda_index.h"
#include "index_api.h"
#if CLIPRT_WITH_CUDA
#include "common/device.h"
#include "quant/encode.h"
#endif

namespace py = pybind11;
using namespace cliprt;
using bind::F32Array;
using bind::I64Array;

namespace cliprt {

// The CPU index's part of index_api.h: host arrays only; stream is not used.
I64Array add_rows(Index& ix, const py::object& vectors, const py::object& ids, bind::Stream) {
  const F32Array x = bind::host_rows(vectors, ix.dim(), "vectors");
  const int64_t n = x.shape(0);
  I64Array id_arr;
  if (!ids.is_none()) id_arr = bind::id_array(ids, n, "ids");
  std::vector<int64_t> out;
  {
    py::gil_scoped_release release;
    out = ix.add(x.data(), n, ids.is_none() ? nullptr : id_arr.data());
  }
  return bind::to_array(out);
}

py::tuple search_rows(const Index& ix, const py::object& queries, const SearchParams& p, bind::Stream) {
  const F32Array q = bind::host_rows(queries, ix.dim(), "queries");
  const ResolvedSearch rs = resolve_search(p, ix.storage(), ix.keep_originals());  // sizes the outputs
  const int64_t nq = q.shape(0);
  F32Array scores({nq, rs.k});
  I64Array ids({nq, rs.k});
  float* ps = scores.mutable_data();
  int64_t* pi = ids.mutable_data();
  {
    py::gil_scoped_release release;
    ix.search(q.data(), nq, p, ps, pi);
  }
  return py::make_tuple(scores, ids);
}

}  // namespace cliprt

PYBIND11_MODULE(_core, m) {
  m.doc() = "cliprt native core";
  static py::exception<FormatError> format_error(m, "FormatError", PyExc_ValueError);
  static py::exception<LockedError> locked_error(m, "LockedError", PyExc_OSError);
  static py::exception<ConflictError> conflict_error(m, "ConflictError", PyExc_OSError);
  // Messages quote paths and file contents, which need not be UTF-8: undecodable bytes are
  // shown escaped rather than turning the error into a UnicodeDecodeError.
  static auto raise = [](PyObject* type, const std::exception& e) {
    const char* w = e.what();
    PyObject* msg = PyUnicode_DecodeUTF8(w, Py_ssize_t(std::strlen(w)), "backslashreplace");
    if (msg) {
      PyErr_SetObject(type, msg);
      Py_DECREF(msg);
    }
  };
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FormatError& e) {
      raise(format_error.ptr(), e);
    } catch (const LockedError& e) {
      raise(locked_error.ptr(), e);
      py::error_already_set err;  // fetched, given its fields, restored
      err.value().attr("pid") = e.pid;
      err.value().attr("path") = py::reinterpret_steal<py::object>(
          PyUnicode_DecodeFSDefaultAndSize(e.path.data(), Py_ssize_t(e.path.size())));
      err.restore();
    } catch (const ConflictError& e) {
      raise(conflict_error.ptr(), e);
    } catch (const ValueError& e) {
      raise(PyExc_ValueError, e);
    } catch (const TypeError& e) {
      raise(PyExc_TypeError, e);
    } catch (const KeyError& e) {
      raise(PyExc_KeyError, e);
    } catch (const IOError& e) {
      raise(PyExc_OSError, e);
    } catch (const CudaError& e) {
      raise(PyExc_RuntimeError, e);
    }
  });

  py::class_<Index> index(m, "Index");
  index
      .def(py::init([](int dim, const std::string& metric, const std::string& storage, bool keep) {
             return std::make_unique<Index>(dim, parse_metric(metric), parse_storage(storage), keep);
           }),
           py::arg("dim"), py::arg("metric"), py::arg("storage"), py::arg("keep_originals"))
      .def("save",
           [](Index& ix, const std::string& path, double timeout) {
             py::gil_scoped_release release;
             ix.save(path, timeout);
           },
           py::arg("path"), py::arg("timeout"))
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
      .def_property_readonly("device", [](const Index&) { return py::none(); })
      .def_property_readonly("num_segments", &Index::num_segments);
  bind::def_index_api<Index>(index);

  m.def(
      "default_rescore",
      [](const std::string& storage, bool keep_originals, int64_t k) {
        return default_rescore(parse_storage(storage), keep_originals, k);
      },
      py::arg("storage"), py::arg("keep_originals"), py::arg("k"),
      "The oversampling R a search uses at this k when rescore is not given (index.h).");
  // The writers' lock of a directory (dir_lock.h), for the Python side's own directories.
  py::class_<DirLock>(m, "DirectoryLock")
      .def(py::init([](const std::string& dir, double timeout, const std::string& what) {
             py::gil_scoped_release release;
             return DirLock::acquire(dir, timeout, what);
           }),
           py::arg("dir"), py::arg("timeout"), py::arg("what"))
      .def_property_readonly("path", &DirLock::path)
      .def_property_readonly("held", &DirLock::held)
      .def("release", &DirLock::release);

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
#if CLIPRT_WITH_CUDA
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
#if CLIPRT_WITH_CUDA
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
