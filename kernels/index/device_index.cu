// DeviceIndex: storage management (add, remove, copies to and from the CPU index, lookups).
// Search is in index/device_search.cu.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "cliprt/codec.h"
#include "cliprt/errors.h"
#include "cliprt/index.h"
#include "common/check.h"
#include "common/device.h"
#include "index/device_arrays.h"
#include "index/layout.h"
#include "index/prepare.h"

namespace cliprt {
namespace cuda {

namespace {
constexpr int64_t kMinCapacity = 1024;
constexpr int64_t kMaxRows = (int64_t(1) << 32) - 1;  // rows are 32-bit in candidate lists
constexpr size_t kChunkBytes = size_t(64) << 20;      // staging granularity for host transfers
constexpr unsigned long long kNone = ~0ull;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
cudaStream_t as_stream(StreamHandle h) { return reinterpret_cast<cudaStream_t>(h); }
}  // namespace

DeviceIndex::DeviceIndex(int device, int dim, Metric metric, Storage storage, bool keep_originals)
    : device_(device), dim_(dim), metric_(metric), storage_(storage), keep_(keep_originals),
      layout_(make_layout(storage, dim)), pitch_(round_up(int64_t(layout_.row_bytes()), 16)),
      arrays_(new Arrays) {
  const int n = device_count();
  if (n == 0) throw CudaError("no CUDA device is available");
  if (device < 0 || device >= n)
    throw ValueError("CUDA device " + std::to_string(device) + " is not available (" + std::to_string(n) +
                     " visible)");
  DeviceGuard guard(device_);
  prepare_device(device_);
}

DeviceIndex::~DeviceIndex() {
  int prev = -1;
  const bool switched = cudaGetDevice(&prev) == cudaSuccess && prev != device_ && cudaSetDevice(device_) == cudaSuccess;
  arrays_.reset();
  if (switched) cudaSetDevice(prev);
}

int64_t DeviceIndex::memory_bytes() const {
  std::shared_lock<RwLock> lock(mu_);
  const Arrays& a = *arrays_;
  return int64_t(a.codes.capacity() + a.scales.capacity() + a.ids.capacity() + a.orig.capacity() +
                 a.deleted.capacity());
}

void DeviceIndex::reserve_rows(int64_t rows) {
  if (rows <= cap_rows_) return;
  int64_t cap = std::max({rows, cap_rows_ + cap_rows_ / 2, kMinCapacity});
  cap = std::min(round_up(cap, 64), round_up(kMaxRows, 64));
  DeviceGuard guard(device_);
  Arrays& a = *arrays_;
  a.codes.grow(size_t(cap * pitch_), size_t(rows_ * pitch_));
  if (layout_.has_scale()) a.scales.grow(size_t(cap) * 4, size_t(rows_) * 4);
  a.ids.grow(size_t(cap) * 8, size_t(rows_) * 8);
  if (keep_) a.orig.grow(size_t(cap) * size_t(dim_) * 4, size_t(rows_) * size_t(dim_) * 4);
  a.deleted.grow(size_t(cap / 64) * 8, size_t(cap_rows_ / 64) * 8);
  deleted_.reserve_rows(cap);
  cap_rows_ = cap;
}

void DeviceIndex::upload_deleted(int64_t word0, int64_t word1) {
  if (word1 <= word0) return;
  CLIPRT_CUDA_CHECK(cudaMemcpy(arrays_->deleted.data() + word0 * 8, deleted_.data() + word0, size_t(word1 - word0) * 8,
                               cudaMemcpyHostToDevice));
}

std::vector<uint32_t> DeviceIndex::allowed_rows(const int64_t* allow, int64_t n) const {
  const std::vector<int64_t> locs = catalog_.locations(allow, n);  // part 0: location = row
  return std::vector<uint32_t>(locs.begin(), locs.end());
}

std::vector<int64_t> DeviceIndex::add(const float* x, int64_t n, bool on_device, const int64_t* ids, bool has_stream,
                                      StreamHandle stream_handle) {
  RowCatalog::check_add_count(n);  // before any device work
  DeviceGuard guard(device_);
  cudaStream_t stream = has_stream ? as_stream(stream_handle) : thread_stream(device_);
  const int64_t chunk = std::max<int64_t>(1, int64_t(kChunkBytes / (size_t(dim_) * 4)));
  ScratchBuffer<float> staging;
  if (!on_device && n > 0) staging = ScratchBuffer<float>(size_t(std::min(n, chunk)) * size_t(dim_), stream);
  // Rows [off, off + m) of x on the device: the caller's memory, or a staged copy.
  auto rows_on_device = [&](int64_t off, int64_t m) -> const float* {
    if (on_device) return x + off * dim_;
    CLIPRT_CUDA_CHECK(cudaMemcpyAsync(staging.get(), x + off * dim_, size_t(m) * size_t(dim_) * 4,
                                      cudaMemcpyHostToDevice, stream));
    return staging.get();
  };
  try {
    // 1. Validate every row before anything is stored (the CPU's prepare_rows).
    ScratchBuffer<unsigned long long> flags(2, stream);
    CLIPRT_CUDA_CHECK(cudaMemsetAsync(flags.get(), 0xFF, 2 * sizeof(unsigned long long), stream));
    PrepareParams p;
    p.dim = dim_;
    p.storage = storage_;
    p.cosine = metric_ == Metric::Cosine;
    p.check_range = metric_ == Metric::IP;
    p.max_abs = storage_max_abs(storage_);
    p.first_bad = flags.get();
    p.first_zero = flags.get() + 1;
    for (int64_t off = 0; off < n; off += chunk) {
      const int64_t m = std::min(chunk, n - off);
      p.x = rows_on_device(off, m);
      p.n = m;
      p.row0 = off;
      launch_prepare_rows(p, stream);
    }
    unsigned long long found[2] = {kNone, kNone};
    CLIPRT_CUDA_CHECK(cudaMemcpyAsync(found, flags.get(), sizeof found, cudaMemcpyDeviceToHost, stream));
    CLIPRT_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (found[0] != kNone) {
      const int64_t row = int64_t(found[0] / unsigned(dim_)), col = int64_t(found[0] % unsigned(dim_));
      float v = 0.0f;
      if (on_device)
        CLIPRT_CUDA_CHECK(cudaMemcpy(&v, x + found[0], 4, cudaMemcpyDeviceToHost));
      else
        v = x[found[0]];
      if (!std::isfinite(v))
        throw ValueError("vectors contain NaN or Inf (row " + std::to_string(row) + ", column " + std::to_string(col) + ")");
      throw ValueError(std::string("vectors exceed the range of ") + storage_name(storage_) + " storage (row " +
                       std::to_string(row) + ")");
    }
    if (found[1] != kNone)
      throw ValueError("vector " + std::to_string(found[1]) + " has zero norm and cannot be normalised (metric='cosine')");

    // 2. Ids, by the catalogue's rules.
    std::vector<int64_t> out = RowCatalog::checked_new_ids(ids, n);

    std::unique_lock<RwLock> lock(mu_);
    catalog_.assign(out, ids != nullptr);
    if (n == 0) return out;
    if (rows_ + n > kMaxRows)
      throw ValueError("a device index holds at most " + std::to_string(kMaxRows) + " rows (deleted ones included)");
    reserve_rows(rows_ + n);

    // 3. Encode into the rows past the stored ones (invisible to searches until rows_ moves).
    Arrays& a = *arrays_;
    ScratchBuffer<float> normed;
    if (p.cosine && !keep_) normed = ScratchBuffer<float>(size_t(std::min(n, chunk)) * size_t(dim_), stream);
    p.code_row_bytes = int(layout_.row_bytes());
    p.code_pitch = pitch_;
    p.f32_stride = dim_;
    for (int64_t off = 0; off < n; off += chunk) {
      const int64_t m = std::min(chunk, n - off), r0 = rows_ + off;
      p.x = rows_on_device(off, m);
      p.n = m;
      p.row0 = off;
      p.codes = a.codes.data() + r0 * pitch_;
      p.scales = layout_.has_scale() ? reinterpret_cast<float*>(a.scales.data()) + r0 : nullptr;
      p.f32 = keep_ ? reinterpret_cast<float*>(a.orig.data()) + r0 * dim_ : normed.get();
      launch_prepare_rows(p, stream);
    }
    CLIPRT_CUDA_CHECK(cudaMemcpyAsync(a.ids.data() + rows_ * 8, out.data(), size_t(n) * 8, cudaMemcpyHostToDevice, stream));
    CLIPRT_CUDA_CHECK(cudaStreamSynchronize(stream));

    ids_.insert(ids_.end(), out.begin(), out.end());
    catalog_.added(out, 0, rows_);
    rows_ += n;
    return out;
  } catch (...) {
    cudaStreamSynchronize(stream);
    throw;
  }
}

int64_t DeviceIndex::remove(const int64_t* ids, int64_t n) {
  std::unique_lock<RwLock> lock(mu_);
  const std::vector<int64_t> rows = catalog_.remove(ids, n);  // part 0: location = row
  if (rows.empty()) return 0;
  const auto [lo, hi] = std::minmax_element(rows.begin(), rows.end());
  try {
    DeviceGuard guard(device_);
    upload_deleted(*lo >> 6, (*hi >> 6) + 1);
  } catch (...) {
    catalog_.restore(rows);
    throw;
  }
  return int64_t(rows.size());
}

void DeviceIndex::reconstruct(const int64_t* ids, int64_t n, float* out) const {
  std::shared_lock<RwLock> lock(mu_);
  std::vector<uint32_t> rows(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) rows[size_t(i)] = uint32_t(catalog_.locate(ids[i]));  // part 0: location = row
  if (n == 0) return;
  DeviceGuard guard(device_);
  cudaStream_t stream = thread_stream(device_);
  const int64_t rb = int64_t(layout_.row_bytes());
  std::vector<uint8_t> codes(size_t(n * rb));
  std::vector<float> scales(static_cast<size_t>(n), 1.0f);
  {
    ScratchBuffer<uint32_t> d_rows(size_t(n), stream);
    ScratchBuffer<uint8_t> d_codes(size_t(n * rb), stream);
    ScratchBuffer<float> d_scales(layout_.has_scale() ? size_t(n) : 0, stream);
    try {
      CLIPRT_CUDA_CHECK(cudaMemcpyAsync(d_rows.get(), rows.data(), size_t(n) * 4, cudaMemcpyHostToDevice, stream));
      launch_gather_rows(arrays_->codes_ptr(), pitch_, d_rows.get(), n, rb, d_codes.get(), stream);
      CLIPRT_CUDA_CHECK(cudaMemcpyAsync(codes.data(), d_codes.get(), codes.size(), cudaMemcpyDeviceToHost, stream));
      if (layout_.has_scale()) {
        launch_gather_rows(arrays_->scales.data(), 4, d_rows.get(), n, 4, reinterpret_cast<uint8_t*>(d_scales.get()),
                           stream);
        CLIPRT_CUDA_CHECK(cudaMemcpyAsync(scales.data(), d_scales.get(), size_t(n) * 4, cudaMemcpyDeviceToHost, stream));
      }
      CLIPRT_CUDA_CHECK(cudaStreamSynchronize(stream));
    } catch (...) {
      cudaStreamSynchronize(stream);
      throw;
    }
  }
  for (int64_t i = 0; i < n; ++i)
    decode_row(layout_, codes.data() + i * rb, scales[size_t(i)], out + i * dim_);
}

std::unique_ptr<DeviceIndex> DeviceIndex::from_host(const Index& host, int device) {
  auto d = std::make_unique<DeviceIndex>(device, host.dim(), host.metric(), host.storage(), host.keep_originals());
  DeviceGuard guard(device);
  cudaStream_t stream = thread_stream(device);
  std::unique_lock<RwLock> lock(d->mu_);
  const Layout& L = d->layout_;
  int64_t total = 0;
  host.visit_segments([&](const SegmentView& v) { total += v.rows; });
  if (total > kMaxRows) throw ValueError("a device index holds at most " + std::to_string(kMaxRows) + " rows");
  d->reserve_rows(total);
  Arrays& a = *d->arrays_;
  const int64_t bb = int64_t(L.block_bytes());
  const int64_t blocks_per_chunk = std::max<int64_t>(1, int64_t(kChunkBytes) / bb);
  ScratchBuffer<uint8_t> staging(size_t(blocks_per_chunk * bb), stream);
  try {
    const int64_t next_id = host.visit_segments([&](const SegmentView& v) {
      if (d->rows_ + v.rows > kMaxRows)
        throw ValueError("a device index holds at most " + std::to_string(kMaxRows) + " rows");
      d->reserve_rows(d->rows_ + v.rows);
      const int64_t r0 = d->rows_;
      const int64_t blocks = blocks_for_rows(v.rows);
      for (int64_t b0 = 0; b0 < blocks; b0 += blocks_per_chunk) {
        const int64_t nb = std::min(blocks_per_chunk, blocks - b0);
        CLIPRT_CUDA_CHECK(cudaMemcpyAsync(staging.get(), v.codes + b0 * bb, size_t(nb * bb), cudaMemcpyHostToDevice, stream));
        const int64_t rows_here = std::min(nb * kBlockRows, v.rows - b0 * kBlockRows);
        launch_unpack_rows(L, staging.get(), rows_here, a.codes.data() + (r0 + b0 * kBlockRows) * d->pitch_, d->pitch_,
                           stream);
      }
      CLIPRT_CUDA_CHECK(cudaMemcpyAsync(a.ids.data() + r0 * 8, v.ids, size_t(v.rows) * 8, cudaMemcpyHostToDevice, stream));
      if (v.scale)
        CLIPRT_CUDA_CHECK(cudaMemcpyAsync(a.scales.data() + r0 * 4, v.scale, size_t(v.rows) * 4, cudaMemcpyHostToDevice,
                                          stream));
      if (v.orig)
        CLIPRT_CUDA_CHECK(cudaMemcpyAsync(a.orig.data() + r0 * d->dim_ * 4, v.orig, size_t(v.rows) * size_t(d->dim_) * 4,
                                          cudaMemcpyHostToDevice, stream));
      d->ids_.insert(d->ids_.end(), v.ids, v.ids + v.rows);
      if (v.deleted)
        for (int64_t r = 0; r < v.rows; ++r)
          if ((v.deleted[size_t(r >> 6)] >> (r & 63)) & 1u) d->deleted_.set(r0 + r);
      d->rows_ += v.rows;
    });
    d->upload_deleted(0, (d->rows_ + 63) / 64);
    CLIPRT_CUDA_CHECK(cudaStreamSynchronize(stream));
    d->catalog_.reset(next_id, d->rows_ - d->deleted_.count());
  } catch (...) {
    cudaStreamSynchronize(stream);
    throw;
  }
  return d;
}

std::unique_ptr<Index> DeviceIndex::to_host() const {
  std::shared_lock<RwLock> lock(mu_);
  auto ix = std::make_unique<Index>(dim_, metric_, storage_, keep_);
  SegmentView v;
  v.rows = rows_;
  if (rows_ == 0) {
    ix->append_packed(v, catalog_.next_id());
    return ix;
  }
  DeviceGuard guard(device_);
  cudaStream_t stream = thread_stream(device_);
  const int64_t bb = int64_t(layout_.block_bytes());
  const int64_t blocks = blocks_for_rows(rows_);
  const int64_t blocks_per_chunk = std::max<int64_t>(1, int64_t(kChunkBytes) / bb);
  std::vector<uint8_t> packed(size_t(blocks * bb));
  std::vector<float> scales(layout_.has_scale() ? size_t(rows_) : 0);
  std::vector<float> orig(keep_ ? size_t(rows_) * size_t(dim_) : 0);
  {
    ScratchBuffer<uint8_t> staging(size_t(blocks_per_chunk * bb), stream);
    try {
      for (int64_t b0 = 0; b0 < blocks; b0 += blocks_per_chunk) {
        const int64_t nb = std::min(blocks_per_chunk, blocks - b0);
        const int64_t rows_here = std::min(nb * kBlockRows, rows_ - b0 * kBlockRows);
        CLIPRT_CUDA_CHECK(cudaMemsetAsync(staging.get(), 0, size_t(nb * bb), stream));
        launch_pack_rows(layout_, arrays_->codes_ptr() + b0 * kBlockRows * pitch_, pitch_, rows_here, staging.get(),
                         stream);
        CLIPRT_CUDA_CHECK(
            cudaMemcpyAsync(packed.data() + b0 * bb, staging.get(), size_t(nb * bb), cudaMemcpyDeviceToHost, stream));
      }
      if (!scales.empty())
        CLIPRT_CUDA_CHECK(cudaMemcpyAsync(scales.data(), arrays_->scales.data(), scales.size() * 4, cudaMemcpyDeviceToHost,
                                          stream));
      if (!orig.empty())
        CLIPRT_CUDA_CHECK(
            cudaMemcpyAsync(orig.data(), arrays_->orig.data(), orig.size() * 4, cudaMemcpyDeviceToHost, stream));
      CLIPRT_CUDA_CHECK(cudaStreamSynchronize(stream));
    } catch (...) {
      cudaStreamSynchronize(stream);
      throw;
    }
  }
  v.codes = packed.data();
  v.ids = ids_.data();
  v.scale = scales.empty() ? nullptr : scales.data();
  v.orig = orig.empty() ? nullptr : orig.data();
  v.n_deleted = deleted_.count();
  v.deleted = v.n_deleted ? deleted_.data() : nullptr;
  ix->append_packed(v, catalog_.next_id());
  return ix;
}

}  // namespace cuda
}  // namespace cliprt
