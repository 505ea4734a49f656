// The Python methods every index class has (cliprt._core.Index and, with CUDA, CudaIndex):
// the same names, arguments and checks, so python/cliprt/index.py has one call path whatever
// the device. Each class supplies two functions that this template calls:
//   add_rows(ix, vectors, ids, stream)            -> int64 ids (n)
//   search_rows(ix, queries, params, stream)      -> (scores (nq, k), ids (nq, k))
// `vectors` / `queries` are float32 C-contiguous numpy arrays (n, dim), or for a device
// index device rows (python/cliprt/_device.py DeviceRows: ptr, n, producer, outputs(k)).
// Argument rules (k, rescore, threads, ids) are checked by the C++ entry points (index.h,
// row_catalog.h); this layer only converts types and releases the GIL around the work.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "cliprt/errors.h"
#include "cliprt/index.h"

namespace cliprt {
namespace bind {

namespace py = pybind11;
using F32Array = py::array_t<float, py::array::c_style>;
using I64Array = py::array_t<int64_t, py::array::c_style>;
using Stream = std::optional<uintptr_t>;

// Host rows (n, dim) of an index with this dim.
inline F32Array host_rows(const py::object& x, int64_t dim, const char* what) {
  if (!py::isinstance<py::array>(x))
    throw TypeError(std::string(what) + " must be a float32 numpy array here (device arrays need a device index)");
  F32Array a = x.cast<F32Array>();
  if (a.ndim() != 2)
    throw ValueError(std::string(what) + " must be 2-D (n, dim), got " + std::to_string(a.ndim()) + "-D");
  if (a.shape(1) != dim)
    throw ValueError(std::string(what) + " have dim " + std::to_string(a.shape(1)) + ", index has dim " +
                     std::to_string(dim));
  return a;
}

// Optional 1-D int64 ids; with n >= 0, exactly n of them.
inline I64Array id_array(const py::object& ids, int64_t n, const char* what) {
  I64Array arr = ids.cast<I64Array>();
  if (arr.ndim() != 1 || (n >= 0 && arr.shape(0) != n))
    throw ValueError(std::string(what) + " must be a 1-D array" +
                     (n >= 0 ? " with one id per vector (" + std::to_string(n) + ")" : std::string(" of ids")));
  return arr;
}

inline I64Array to_array(const std::vector<int64_t>& v) {
  I64Array r(int64_t(v.size()));
  std::copy(v.begin(), v.end(), r.mutable_data());
  return r;
}

// Search arguments as SearchParams; `keep` holds the allow-list alive.
inline SearchParams search_params(int64_t k, std::optional<int> rescore, const py::object& allow,
                                  std::optional<int> threads, I64Array* keep) {
  SearchParams p;
  p.k = k;
  p.rescore = rescore;
  p.threads = threads;
  if (!allow.is_none()) {
    *keep = id_array(allow, -1, "allow");
    p.allow = keep->data();
    p.n_allow = keep->shape(0);
    p.has_allow = true;
  }
  return p;
}

template <class Ix, class Cls>
void def_index_api(Cls& c) {
  c.def(
       "add",
       [](Ix& ix, const py::object& vectors, const py::object& ids, Stream stream) {
         return add_rows(ix, vectors, ids, stream);
       },
       py::arg("vectors"), py::arg("ids") = py::none(), py::arg("stream") = py::none())
      .def(
          "search",
          [](const Ix& ix, const py::object& queries, int64_t k, std::optional<int> rescore, const py::object& allow,
             std::optional<int> threads, Stream stream) {
            I64Array allow_arr;
            const SearchParams p = search_params(k, rescore, allow, threads, &allow_arr);
            return search_rows(ix, queries, p, stream);
          },
          py::arg("queries"), py::arg("k"), py::arg("rescore") = py::none(), py::arg("allow") = py::none(),
          py::arg("threads") = py::none(), py::arg("stream") = py::none())
      .def("remove",
           [](Ix& ix, const py::object& ids) {
             const I64Array a = id_array(ids, -1, "ids");
             py::gil_scoped_release release;
             return ix.remove(a.data(), a.shape(0));
           })
      .def("reconstruct",
           [](const Ix& ix, const py::object& ids) {
             const I64Array a = id_array(ids, -1, "ids");
             F32Array out({int64_t(a.shape(0)), int64_t(ix.dim())});
             float* po = out.mutable_data();
             {
               py::gil_scoped_release release;
               ix.reconstruct(a.data(), a.shape(0), po);
             }
             return out;
           })
      .def("contains", &Ix::contains)
      .def("ids", [](const Ix& ix) { return to_array(ix.ids()); })
      .def("__len__", &Ix::size)
      .def_property_readonly("next_id", &Ix::next_id)
      .def_property_readonly("dim", &Ix::dim)
      .def_property_readonly("metric", [](const Ix& ix) { return std::string(metric_name(ix.metric())); })
      .def_property_readonly("storage", [](const Ix& ix) { return std::string(storage_name(ix.storage())); })
      .def_property_readonly("keep_originals", &Ix::keep_originals)
      .def_property_readonly("memory_bytes", &Ix::memory_bytes);
}

}  // namespace bind
}  // namespace cliprt
