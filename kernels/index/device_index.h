// An exact similarity index resident on one CUDA device: the same contract as cliprt::Index
// (index.h) for add / search / remove / contains / ids / reconstruct, with codes kept on the
// device in a row-major layout (pitch bytes per row, the CPU's row codes padded with zeros)
// and the same codes as the CPU index bit for bit, so copies in either direction
// (from_host / to_host) move codes without re-encoding. Ids and the deletion bitmap are
// mirrored on the host and catalogued by the same RowCatalog as the CPU index's segments
// (row_catalog.h: one part, location = row); the bitmap's words are uploaded as they are.
// Float32 originals, when kept, live on the device for exact rescoring.
//
// Shapes at the boundary (row-major, C-contiguous float32 / int64):
//   add:    x (n, dim) on the host or on this device, ids (n) on the host or null
//   search: queries (nq, dim) on the host or on this device -> scores (nq, k), ids (nq, k)
//           written to host or device memory
// Streams are CUDA stream handles as integers (0: the legacy default stream). A search runs
// on the caller's stream when given, else on a stream owned by the calling thread, and
// returns when its results are complete. Thread safety as for cliprt::Index: concurrent
// searches, add / remove serialised against them.
//
// This header is free of CUDA types so the bindings can include it.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "cliprt/index.h"
#include "cliprt/row_catalog.h"
#include "cliprt/rw_lock.h"
#include "cliprt/types.h"

namespace cliprt {
namespace cuda {

using StreamHandle = uintptr_t;

struct DeviceSearchRequest {
  const float* queries = nullptr;  // (nq, dim)
  int64_t nq = 0;
  bool queries_on_device = false;
  SearchParams params;  // k, rescore, allow-list (host ids); threads are not used
  bool has_stream = false;  // run on `stream`
  StreamHandle stream = 0;
  bool has_producer = false;  // first wait for the work queued on `producer` (device queries)
  StreamHandle producer = 0;
  float* out_scores = nullptr;  // (nq, k)
  int64_t* out_ids = nullptr;   // (nq, k)
  bool out_on_device = false;
};

class DeviceIndex : public CataloguedIndex {
 public:
  DeviceIndex(int device, int dim, Metric metric, Storage storage, bool keep_originals);
  ~DeviceIndex();
  DeviceIndex(const DeviceIndex&) = delete;
  DeviceIndex& operator=(const DeviceIndex&) = delete;

  // Copies of a CPU index (a consistent snapshot of it) and back to a new CPU index.
  static std::unique_ptr<DeviceIndex> from_host(const Index& host, int device);
  std::unique_ptr<Index> to_host() const;

  std::vector<int64_t> add(const float* x, int64_t n, bool on_device, const int64_t* ids, bool has_stream,
                           StreamHandle stream);
  void search(const DeviceSearchRequest& r) const;
  int64_t remove(const int64_t* ids, int64_t n);
  void reconstruct(const int64_t* ids, int64_t n, float* out) const;

  int device() const { return device_; }
  int dim() const { return dim_; }
  Metric metric() const { return metric_; }
  Storage storage() const { return storage_; }
  bool keep_originals() const { return keep_; }
  int64_t memory_bytes() const;  // device bytes held

  struct Arrays;  // device memory (common/cuda_host.h), defined in device_index.cu

 private:
  int64_t num_parts() const override { return 1; }
  RowPart part(int64_t) const override { return {ids_.data(), rows_, &deleted_}; }
  void reserve_rows(int64_t rows);  // caller holds mu_ exclusively
  void upload_deleted(int64_t word0, int64_t word1);  // 64-bit words [word0, word1)
  // Allowed live rows, sorted (caller holds mu_).
  std::vector<uint32_t> allowed_rows(const int64_t* allow, int64_t n) const;

  int device_;
  int dim_;
  Metric metric_;
  Storage storage_;
  bool keep_;
  Layout layout_;
  int64_t pitch_;  // device bytes per row

  int64_t rows_ = 0;                 // rows stored, deleted ones included
  int64_t cap_rows_ = 0;
  std::vector<int64_t> ids_;         // host mirror, by row
  mutable DeletionBitmap deleted_;   // host mirror of the device bitmap (the catalogue marks it)
  std::unique_ptr<Arrays> arrays_;
};

}  // namespace cuda
}  // namespace cliprt
