// Top-k without a ceiling on k: the candidate lists are flattened, sorted by id with a
// stable radix sort, then stably by (query, score key descending); each query's first k
// entries are then its top k in (score desc, id asc) order. CUB's radix sort is stable,
// which is what makes the two-pass order exact.
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cmath>

#include "common/check.h"
#include "common/keys.cuh"
#include "common/cuda_host.h"
#include "topk/select.h"

namespace cliprt {
namespace cuda {
namespace {

constexpr uint32_t kNoRow = 0xffffffffu;

// Blocks along x stride over a query's list; blockIdx.y is the query.
__global__ void flatten_kernel(const CandidateLists c, const int64_t* offsets, const int64_t* ids,
                               uint32_t* key, uint32_t* row, uint32_t* query, unsigned long long* id_key,
                               uint32_t* index) {
  const int q = blockIdx.y;
  const int64_t m = offsets[q + 1] - offsets[q];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m; i += int64_t(gridDim.x) * blockDim.x) {
    const unsigned long long e = c.cand[int64_t(q) * c.cap + i];
    const int64_t pos = offsets[q] + i;
    key[pos] = candidate_key(e);
    row[pos] = candidate_row(e);
    query[pos] = uint32_t(q);
    id_key[pos] = (unsigned long long)ids[candidate_row(e)];
    index[pos] = uint32_t(pos);
  }
}

__global__ void score_keys_kernel(int64_t total, const uint32_t* by_id, const uint32_t* key, const uint32_t* query,
                                  unsigned long long* out) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < total; j += int64_t(gridDim.x) * blockDim.x) {
    const uint32_t p = by_id[j];
    out[j] = ((unsigned long long)query[p] << 32) | (unsigned long long)(~key[p]);
  }
}

__global__ void write_kernel(const int64_t* offsets, const uint32_t* order, const uint32_t* key, const uint32_t* row,
                             const int64_t* ids, int64_t k, const TopKOut out) {
  const int q = blockIdx.y;
  const int64_t off = offsets[q], m = offsets[q + 1] - off;
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < k; j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = int64_t(q) * out.ld + j;
    if (j < m) {
      const uint32_t p = order[off + j];
      if (out.scores) out.scores[o] = key_score(key[p]);
      if (out.ids) out.ids[o] = ids[row[p]];
      if (out.rows) out.rows[o] = row[p];
    } else {
      if (out.scores) out.scores[o] = -INFINITY;
      if (out.ids) out.ids[o] = -1;
      if (out.rows) out.rows[o] = kNoRow;
    }
  }
}

unsigned blocks_for(int64_t n) { return unsigned(std::max<int64_t>(1, std::min<int64_t>((n + 255) / 256, 1024))); }

}  // namespace

void large_topk(const CandidateLists& c, const std::vector<unsigned int>& counts, int64_t k, const int64_t* ids,
                const TopKOut& out, cudaStream_t stream) {
  const int nq = c.nq;
  if (nq == 0) return;
  CLIPRT_ASSERT(nq <= 65535 && int(counts.size()) == nq);
  std::vector<int64_t> offsets(size_t(nq) + 1, 0);
  int64_t max_m = 0;
  for (int q = 0; q < nq; ++q) {
    offsets[size_t(q) + 1] = offsets[size_t(q)] + counts[size_t(q)];
    max_m = std::max<int64_t>(max_m, counts[size_t(q)]);
  }
  const int64_t total = offsets.back();
  CLIPRT_ASSERT(total < (int64_t(1) << 32));
  ScratchBuffer<int64_t> d_off(offsets.size(), stream);
  CLIPRT_CUDA_CHECK(cudaMemcpyAsync(d_off.get(), offsets.data(), offsets.size() * sizeof(int64_t),
                                    cudaMemcpyHostToDevice, stream));
  if (total > 0) {
    const size_t n = size_t(total);
    ScratchBuffer<uint32_t> key(n, stream), row(n, stream), query(n, stream), index(n, stream), order(n, stream);
    ScratchBuffer<unsigned long long> id_key(n, stream), sorted_keys(n, stream);
    flatten_kernel<<<dim3(blocks_for(max_m), unsigned(nq)), 256, 0, stream>>>(
        c, d_off.get(), ids, key.get(), row.get(), query.get(), id_key.get(), index.get());
    CLIPRT_CUDA_CHECK_LAUNCH();

    int query_bits = 1;
    while ((int64_t(1) << query_bits) < nq) ++query_bits;
    size_t temp_bytes = 0, need = 0;
    CLIPRT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, need, id_key.get(), sorted_keys.get(), index.get(),
                                                      order.get(), total, 0, 63, stream));
    temp_bytes = need;
    CLIPRT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, need, id_key.get(), sorted_keys.get(), index.get(),
                                                      order.get(), total, 0, 32 + query_bits, stream));
    temp_bytes = std::max(temp_bytes, need);
    ScratchBuffer<uint8_t> temp(std::max<size_t>(temp_bytes, 1), stream);

    // 1. by id ascending (ids are < 2^63)
    CLIPRT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.get(), temp_bytes, id_key.get(), sorted_keys.get(),
                                                      index.get(), order.get(), total, 0, 63, stream));
    // 2. stably by (query, score descending): reuse id_key / index as the second pass's input
    score_keys_kernel<<<blocks_for(total), 256, 0, stream>>>(total, order.get(), key.get(), query.get(), id_key.get());
    CLIPRT_CUDA_CHECK_LAUNCH();
    CLIPRT_CUDA_CHECK(cudaMemcpyAsync(index.get(), order.get(), n * sizeof(uint32_t), cudaMemcpyDeviceToDevice, stream));
    temp_bytes = temp.size();
    CLIPRT_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.get(), temp_bytes, id_key.get(), sorted_keys.get(),
                                                      index.get(), order.get(), total, 0, 32 + query_bits, stream));
    write_kernel<<<dim3(blocks_for(k), unsigned(nq)), 256, 0, stream>>>(d_off.get(), order.get(), key.get(), row.get(),
                                                                         ids, k, out);
    CLIPRT_CUDA_CHECK_LAUNCH();
  } else {
    launch_fill_empty(out, nq, k, stream);
  }
}

}  // namespace cuda
}  // namespace cliprt
