// pybind11 bindings of the device index: array checks, GIL release, exception translation
// (module.cpp's translator). Device arrays arrive as raw pointers that python/cliprt/_device.py
// extracted (DLPack / __cuda_array_interface__), already float32, C-contiguous and on the
// index's device; outputs for device queries are allocated there too.
#include "cuda_index.h"

#if defined(CLIPRT_WITH_CUDA)
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <optional>

#include "cliprt/codec.h"
#include "cliprt/errors.h"
#include "cliprt/index.h"
#include "common/runtime.h"
#include "index/device_index.h"

namespace py = pybind11;

namespace cliprt {
namespace {

using cuda::DeviceIndex;
using F32Array = py::array_t<float, py::array::c_style>;
using I64Array = py::array_t<int64_t, py::array::c_style>;

void require_rows(const py::array& a, int64_t dim, const char* what) {
  if (a.ndim() != 2)
    throw ValueError(std::string(what) + " must be 2-D (n, dim), got " + std::to_string(a.ndim()) + "-D");
  if (a.shape(1) != dim)
    throw ValueError(std::string(what) + " have dim " + std::to_string(a.shape(1)) + ", index has dim " +
                     std::to_string(dim));
}

I64Array optional_ids(const py::object& ids, int64_t n, const char* what) {
  I64Array arr = ids.cast<I64Array>();
  if (arr.ndim() != 1 || (n >= 0 && arr.shape(0) != n))
    throw ValueError(std::string(what) + " must be a 1-D array" +
                     (n >= 0 ? " with one id per vector (" + std::to_string(n) + ")" : std::string(" of ids")));
  return arr;
}

I64Array to_array(const std::vector<int64_t>& v) {
  I64Array r(int64_t(v.size()));
  std::copy(v.begin(), v.end(), r.mutable_data());
  return r;
}

void set_allow(cuda::DeviceSearchRequest& req, const py::object& allow, I64Array* keep) {
  if (allow.is_none()) return;
  *keep = optional_ids(allow, -1, "allow");
  req.allow = keep->data();
  req.n_allow = keep->shape(0);
  req.has_allow = true;
}

}  // namespace

void register_cuda_index(py::module_& m) {
  py::class_<DeviceIndex>(m, "CudaIndex")
      .def(py::init([](int device, int dim, const std::string& metric, const std::string& storage, bool keep) {
             return std::make_unique<DeviceIndex>(device, dim, parse_metric(metric), parse_storage(storage), keep);
           }),
           py::arg("device"), py::arg("dim"), py::arg("metric"), py::arg("storage"), py::arg("keep_originals"))
      .def_static(
          "from_index",
          [](const Index& ix, int device) {
            py::gil_scoped_release release;
            return DeviceIndex::from_host(ix, device);
          },
          py::arg("index"), py::arg("device"))
      .def("to_index",
           [](const DeviceIndex& d) {
             py::gil_scoped_release release;
             return d.to_host();
           })
      .def(
          "add_host",
          [](DeviceIndex& d, const F32Array& x, py::object ids) {
            require_rows(x, d.dim(), "vectors");
            const int64_t n = x.shape(0);
            I64Array id_arr;
            if (!ids.is_none()) id_arr = optional_ids(ids, n, "ids");
            std::vector<int64_t> out;
            {
              py::gil_scoped_release release;
              out = d.add(x.data(), n, false, ids.is_none() ? nullptr : id_arr.data(), false, 0);
            }
            return to_array(out);
          },
          py::arg("vectors"), py::arg("ids") = py::none())
      .def(
          "add_device",
          [](DeviceIndex& d, uintptr_t x, int64_t n, py::object ids, std::optional<uintptr_t> stream) {
            I64Array id_arr;
            if (!ids.is_none()) id_arr = optional_ids(ids, n, "ids");
            std::vector<int64_t> out;
            {
              py::gil_scoped_release release;
              out = d.add(reinterpret_cast<const float*>(x), n, true, ids.is_none() ? nullptr : id_arr.data(),
                          stream.has_value(), stream.value_or(0));
            }
            return to_array(out);
          },
          py::arg("vectors_ptr"), py::arg("n"), py::arg("ids"), py::arg("stream"))
      .def(
          "search_host",
          [](const DeviceIndex& d, const F32Array& q, int64_t k, int rescore, py::object allow,
             std::optional<uintptr_t> stream) {
            require_rows(q, d.dim(), "queries");
            if (k <= 0) throw ValueError("k must be positive, got " + std::to_string(k));
            const int64_t nq = q.shape(0);
            cuda::DeviceSearchRequest req;
            req.queries = q.data();
            req.nq = nq;
            req.k = k;
            req.rescore = rescore;
            I64Array allow_arr;
            set_allow(req, allow, &allow_arr);
            req.has_stream = stream.has_value();
            req.stream = stream.value_or(0);
            F32Array scores({nq, k});
            I64Array ids({nq, k});
            req.out_scores = scores.mutable_data();
            req.out_ids = ids.mutable_data();
            {
              py::gil_scoped_release release;
              d.search(req);
            }
            return py::make_tuple(scores, ids);
          },
          py::arg("queries"), py::arg("k"), py::arg("rescore"), py::arg("allow"), py::arg("stream"))
      .def(
          "search_device",
          [](const DeviceIndex& d, uintptr_t q, int64_t nq, int64_t k, int rescore, py::object allow,
             std::optional<uintptr_t> stream, std::optional<uintptr_t> producer, uintptr_t out_scores,
             uintptr_t out_ids) {
            if (k <= 0) throw ValueError("k must be positive, got " + std::to_string(k));
            cuda::DeviceSearchRequest req;
            req.queries = reinterpret_cast<const float*>(q);
            req.nq = nq;
            req.queries_on_device = true;
            req.k = k;
            req.rescore = rescore;
            I64Array allow_arr;
            set_allow(req, allow, &allow_arr);
            req.has_stream = stream.has_value();
            req.stream = stream.value_or(0);
            req.has_producer = producer.has_value();
            req.producer = producer.value_or(0);
            req.out_scores = reinterpret_cast<float*>(out_scores);
            req.out_ids = reinterpret_cast<int64_t*>(out_ids);
            req.out_on_device = true;
            py::gil_scoped_release release;
            d.search(req);
          },
          py::arg("queries_ptr"), py::arg("nq"), py::arg("k"), py::arg("rescore"), py::arg("allow"),
          py::arg("stream"), py::arg("producer"), py::arg("out_scores_ptr"), py::arg("out_ids_ptr"))
      .def("remove",
           [](DeviceIndex& d, const I64Array& ids) {
             py::gil_scoped_release release;
             return d.remove(ids.data(), ids.size());
           })
      .def("contains", &DeviceIndex::contains)
      .def("ids", [](const DeviceIndex& d) { return to_array(d.ids()); })
      .def("reconstruct",
           [](const DeviceIndex& d, const I64Array& ids) {
             F32Array out({int64_t(ids.size()), int64_t(d.dim())});
             float* po = out.mutable_data();
             {
               py::gil_scoped_release release;
               d.reconstruct(ids.data(), ids.size(), po);
             }
             return out;
           })
      .def("__len__", &DeviceIndex::size)
      .def_property_readonly("device", &DeviceIndex::device)
      .def_property_readonly("dim", &DeviceIndex::dim)
      .def_property_readonly("metric", [](const DeviceIndex& d) { return std::string(metric_name(d.metric())); })
      .def_property_readonly("storage", [](const DeviceIndex& d) { return std::string(storage_name(d.storage())); })
      .def_property_readonly("keep_originals", &DeviceIndex::keep_originals)
      .def_property_readonly("memory_bytes", &DeviceIndex::memory_bytes);

  m.def(
      "cuda_set_debug",
      [](bool poison, int64_t cap_limit, bool force_sample) {
        cuda::DebugKnobs k;
        k.poison = poison;
        k.cap_limit = cap_limit;
        k.force_sample = force_sample;
        cuda::set_debug_knobs(k);
      },
      py::arg("poison") = false, py::arg("cap_limit") = 0, py::arg("force_sample") = false,
      "Test hooks for the device index: poison scratch and outputs with 0xFF before every launch, cap the "
      "candidate lists (exercises the overflow retry), force the sampled-threshold path.");
}

}  // namespace cliprt

#else

namespace cliprt {
void register_cuda_index(pybind11::module_&) {}
}  // namespace cliprt

#endif
