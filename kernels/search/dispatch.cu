// The one place where run-time values become template parameters: storage and batch size
// pick the kernel family and its query tile. Small batches stream the database on CUDA
// cores (memory-bound: QT = 1 for single queries, 8 up to 8 queries); larger bf16, i8 and
// b1 batches run on tensor cores with the smallest tile that holds them (BM = 32, 64, else
// 128), since padding rows cost MMAs where a batch is still near memory-bound. f32 and f16
// stay on CUDA cores at every size: their scores are float32 products of a float32 query.
// k and the metric stay run-time values: the scans filter by a per-query threshold, and
// queries arrive already normalised.
#include "common/check.h"
#include "search/scan_kernels.h"

namespace cliprt {
namespace cuda {

ScanPlan plan_scan(Storage storage, int nq) {
  ScanPlan plan;
  const int simt_tile = nq <= 1 ? 1 : 8;
  switch (storage) {
    case Storage::F32:
    case Storage::F16:
      plan.tile = nq <= 1 ? 1 : (nq <= 8 ? 8 : 32);
      plan.form = QueryForm::F32;
      plan.q_ratio = storage == Storage::F16 ? 2 : 1;
      return plan;
    case Storage::BF16:
    case Storage::I8:
    case Storage::B1:
      if (nq <= 8) {
        plan.tile = simt_tile;
        plan.form = storage == Storage::BF16 ? QueryForm::F32Rounded : QueryForm::Codes;
        plan.q_ratio = storage == Storage::BF16 ? 2 : 1;
      } else {
        plan.mma = true;
        plan.tile = nq <= 32 ? 32 : (nq <= 64 ? 64 : 128);
        plan.form = storage == Storage::B1 ? QueryForm::B1Expanded : QueryForm::Codes;
        plan.q_ratio = storage == Storage::B1 ? 8 : 1;
      }
      return plan;
  }
  throw Error("internal error: unknown storage");
}

void launch_scan(Storage storage, const ScanPlan& plan, const ScanParams& p, int device, cudaStream_t stream) {
#define CLIPRT_SCAN_INSTANCE(family, S, T)                                        \
  if (plan.mma == family::kTensorCores && storage == Storage::S && plan.tile == T) { \
    family::run<Storage::S, T>(p, device, stream);                                  \
    return;                                                                         \
  }
#include "search/scan_instances.def"
  throw Error("internal error: no scan kernel for this plan");
}

}  // namespace cuda
}  // namespace cliprt
