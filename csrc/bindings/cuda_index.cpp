// pybind11 bindings of the device index: its part of index_api.h (the methods both index
// classes share) and the copies to and from the CPU index. Device arrays arrive as
// python/cliprt/_device.py DeviceRows: raw pointers it extracted (DLPack /
// __cuda_array_interface__), already float32, C-contiguous and on the index's device;
// outputs for device queries are allocated by the queries' library, through DeviceRows.outputs.
#include "cuda_index.h"

#if CLIPRT_WITH_CUDA
#include <optional>

#include "index_api.h"

#include "cliprt/codec.h"
#include "cliprt/errors.h"
#include "cliprt/index.h"
#include "common/cuda_host.h"
#include "index/device_index.h"

namespace py = pybind11;

namespace cliprt {
namespace cuda {

using bind::F32Array;
using bind::I64Array;

namespace {
// Device rows from python/cliprt/_device.py (anything that is not a numpy array).
struct DeviceRowsArg {
  const float* ptr;
  int64_t n;
  std::optional<uintptr_t> producer;  // the stream that produced them, when no stream was given
};

DeviceRowsArg device_rows_arg(const py::object& x) {
  DeviceRowsArg r;
  r.ptr = reinterpret_cast<const float*>(x.attr("ptr").cast<uintptr_t>());
  r.n = x.attr("n").cast<int64_t>();
  r.producer = x.attr("producer").cast<std::optional<uintptr_t>>();
  return r;
}
}  // namespace

// The device index's part of index_api.h: host arrays or device rows.
I64Array add_rows(DeviceIndex& d, const py::object& vectors, const py::object& ids, bind::Stream stream) {
  const bool on_device = !py::isinstance<py::array>(vectors);
  F32Array host;
  DeviceRowsArg dev{};
  if (on_device) {
    dev = device_rows_arg(vectors);
    if (!stream) stream = dev.producer;
  } else {
    host = bind::host_rows(vectors, d.dim(), "vectors");
  }
  const int64_t n = on_device ? dev.n : host.shape(0);
  I64Array id_arr;
  if (!ids.is_none()) id_arr = bind::id_array(ids, n, "ids");
  std::vector<int64_t> out;
  {
    py::gil_scoped_release release;
    out = d.add(on_device ? dev.ptr : host.data(), n, on_device, ids.is_none() ? nullptr : id_arr.data(),
                stream.has_value(), stream.value_or(0));
  }
  return bind::to_array(out);
}

py::tuple search_rows(const DeviceIndex& d, const py::object& queries, const SearchParams& p, bind::Stream stream) {
  DeviceSearchRequest req;
  req.params = p;
  req.has_stream = stream.has_value();
  req.stream = stream.value_or(0);
  const ResolvedSearch rs = resolve_search(p, d.storage(), d.keep_originals());  // sizes the outputs
  py::object scores, ids;
  if (py::isinstance<py::array>(queries)) {
    const F32Array q = bind::host_rows(queries, d.dim(), "queries");
    req.queries = q.data();
    req.nq = q.shape(0);
    F32Array s({req.nq, rs.k});
    I64Array i({req.nq, rs.k});
    req.out_scores = s.mutable_data();
    req.out_ids = i.mutable_data();
    scores = s;
    ids = i;
    py::gil_scoped_release release;
    d.search(req);
  } else {
    const DeviceRowsArg q = device_rows_arg(queries);
    req.queries = q.ptr;
    req.nq = q.n;
    req.queries_on_device = true;
    req.has_producer = !stream && q.producer;
    req.producer = q.producer.value_or(0);
    // (scores, ids, scores_ptr, ids_ptr): arrays of the queries' library on their device
    const py::tuple out = queries.attr("outputs")(rs.k);
    scores = out[0];
    ids = out[1];
    req.out_scores = reinterpret_cast<float*>(out[2].cast<uintptr_t>());
    req.out_ids = reinterpret_cast<int64_t*>(out[3].cast<uintptr_t>());
    req.out_on_device = true;
    py::gil_scoped_release release;
    d.search(req);
  }
  return py::make_tuple(scores, ids);
}

}  // namespace cuda

void register_cuda_index(py::module_& m) {
  using cuda::DeviceIndex;
  py::class_<DeviceIndex> cls(m, "CudaIndex");
  cls.def(py::init([](int device, int dim, const std::string& metric, const std::string& storage, bool keep) {
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
      .def_property_readonly("device", &DeviceIndex::device);
  bind::def_index_api<DeviceIndex>(cls);

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
