// DeviceIndex::search, the pipeline of one call, all on one stream:
//   1. prepare the queries (validate, normalise, encode: index/prepare.h), in the forms the
//      scan plan and the rescoring need;
//   2. thresholds: for a large scan, score a strided sample of the rows, keep every sample
//      score, and take each query's kc-th best sample score as its threshold (a valid lower
//      bound of its true kc-th best score, so the threshold never drops a result); a small
//      scan keeps everything (threshold -inf);
//   3. the full scan appends only scores >= threshold (about kc * stride per query);
//   4. top kc of the candidates (block radix select + sort, or CUB past kBlockTopKMax);
//   5. with rescoring: exact float64 scores of those kc from the originals, then top k.
// A list that overflowed its capacity (a sample unlike the rest of the data) is detected
// when the results are read and the call is repeated with room for every candidate. The
// host waits once per query chunk, which also reports invalid queries (NaN, zero norm)
// with the CPU index's messages.
#include <algorithm>
#include <cmath>
#include <string>

#include "cliprt/errors.h"
#include "common/check.h"
#include "index/device_arrays.h"
#include "index/prepare.h"
#include "search/rescore.h"
#include "search/scan.h"
#include "topk/select.h"

namespace cliprt {
namespace cuda {

namespace {

constexpr unsigned long long kNone = ~0ull;
// Candidate-list memory one chunk of queries may use (lists + sample lists).
constexpr int64_t kChunkBudget = int64_t(1) << 30;
// Scans up to this many rows skip the sample: every row is a candidate.
constexpr int64_t kSmallScan = 32768;

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Sampling plan for a scan of n rows keeping kc candidates per query: survivors of the full
// scan number about kc * stride, sample scores about n / stride; 2 sqrt(kc n) sample rows
// balance the two.
struct Sampling {
  bool on = false;
  int64_t stride = 1;
  int64_t rows = 0;  // logical rows of the sample
  int64_t cap = 0;   // candidate capacity per query of the full scan
};

Sampling plan_sampling(int64_t n, int64_t kc, const DebugKnobs& knobs) {
  Sampling s;
  if (!knobs.force_sample && n <= std::max<int64_t>(kSmallScan, 4 * kc)) {
    s.cap = n;
  } else {
    const double target = std::max({2.0 * std::sqrt(double(kc) * double(n)), 16.0 * double(kc), 16384.0});
    const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(int64_t(target), n / 2));
    s.on = true;
    s.stride = std::max<int64_t>(1, n / rows);
    s.rows = (n + s.stride - 1) / s.stride;
    const int64_t expected = kc * s.stride;
    s.cap = std::min<int64_t>(n, std::max<int64_t>(4 * expected, expected + 8192));
  }
  if (knobs.cap_limit > 0) s.cap = std::min(s.cap, std::max<int64_t>(1, knobs.cap_limit));
  return s;
}

}  // namespace

void DeviceIndex::search(const DeviceSearchRequest& r) const {
  const ResolvedSearch rs = resolve_search(r.params, storage_, keep_);
  const int64_t nq = r.nq;
  if (nq == 0) return;
  if (nq >= (int64_t(1) << 31)) throw ValueError("too many queries in one search");
  const int64_t k = rs.k;
  const DebugKnobs knobs = debug_knobs();
  DeviceGuard guard(device_);
  cudaStream_t stream = r.has_stream ? reinterpret_cast<cudaStream_t>(r.stream) : thread_stream(device_);
  try {
    if (!r.has_stream && r.has_producer) stream_wait(stream, reinterpret_cast<cudaStream_t>(r.producer));

    // Validation reports and the overflow flag, read back at every synchronisation.
    struct Flags {
      unsigned long long first_bad, first_zero;
      unsigned int overflow, pad;
    };
    ScratchBuffer<Flags> d_flags(1, stream);
    const Flags init{kNone, kNone, 0u, 0u};
    CLIPRT_CUDA_CHECK(cudaMemcpyAsync(d_flags.get(), &init, sizeof init, cudaMemcpyHostToDevice, stream));
    Flags h_flags = init;
    auto wait_and_check = [&]() {
      CLIPRT_CUDA_CHECK(cudaMemcpyAsync(&h_flags, d_flags.get(), sizeof h_flags, cudaMemcpyDeviceToHost, stream));
      CLIPRT_CUDA_CHECK(cudaStreamSynchronize(stream));
      if (h_flags.first_bad != kNone)
        throw ValueError("queries contain NaN or Inf (row " + std::to_string(h_flags.first_bad / unsigned(dim_)) +
                         ", column " + std::to_string(h_flags.first_bad % unsigned(dim_)) + ")");
      if (h_flags.first_zero != kNone)
        throw ValueError("query " + std::to_string(h_flags.first_zero) +
                         " has zero norm and cannot be normalised (metric='cosine')");
    };

    // 1. Queries.
    const ScanPlan plan = plan_scan(storage_, int(nq));
    const float* qin = r.queries;
    ScratchBuffer<float> q_host_copy;
    if (!r.queries_on_device) {
      q_host_copy = ScratchBuffer<float>(size_t(nq) * size_t(dim_), stream);
      CLIPRT_CUDA_CHECK(cudaMemcpyAsync(q_host_copy.get(), r.queries, size_t(nq) * size_t(dim_) * 4,
                                        cudaMemcpyHostToDevice, stream));
      qin = q_host_copy.get();
    }
    const int64_t qf_stride = round_up(std::max<int64_t>(dim_, pitch_ / 2), 4);  // floats
    const bool want_codes = plan.form == QueryForm::Codes || plan.form == QueryForm::B1Expanded;
    ScratchBuffer<float> qf(size_t(nq) * size_t(qf_stride), stream);
    ScratchBuffer<float> qf_bf16(plan.form == QueryForm::F32Rounded ? size_t(nq) * size_t(qf_stride) : 0, stream);
    ScratchBuffer<uint8_t> qc(want_codes ? size_t(nq) * size_t(pitch_) : 0, stream);
    ScratchBuffer<float> qscale(want_codes ? size_t(nq) : 0, stream);
    ScratchBuffer<int8_t> qx(plan.form == QueryForm::B1Expanded ? size_t(nq) * size_t(pitch_) * 8 : 0, stream);
    {
      PrepareParams p;
      p.x = qin;
      p.n = nq;
      p.dim = dim_;
      p.storage = storage_;
      p.cosine = metric_ == Metric::Cosine;
      p.first_bad = &d_flags.get()->first_bad;
      p.first_zero = &d_flags.get()->first_zero;
      p.f32 = qf.get();
      p.f32_stride = qf_stride;
      p.f32_bf16 = qf_bf16.get();
      if (want_codes) {
        p.codes = qc.get();
        p.code_row_bytes = int(layout_.row_bytes());
        p.code_pitch = pitch_;
        p.scales = qscale.get();
        p.b1x = qx.get();
        p.b1x_pitch = pitch_ * 8;
      }
      launch_prepare_rows(p, stream);
    }
    const uint8_t* q_scan = nullptr;
    int64_t q_pitch = 0;
    switch (plan.form) {
      case QueryForm::F32: q_scan = reinterpret_cast<const uint8_t*>(qf.get()); q_pitch = qf_stride * 4; break;
      case QueryForm::F32Rounded: q_scan = reinterpret_cast<const uint8_t*>(qf_bf16.get()); q_pitch = qf_stride * 4; break;
      case QueryForm::Codes: q_scan = qc.get(); q_pitch = pitch_; break;
      case QueryForm::B1Expanded: q_scan = reinterpret_cast<const uint8_t*>(qx.get()); q_pitch = pitch_ * 8; break;
    }

    std::shared_lock<RwLock> lock(mu_);
    const Arrays& a = *arrays_;
    const int64_t live = catalog_.live();
    const int64_t kc = std::max<int64_t>(1, std::min<int64_t>(rs.candidates(), live));
    std::vector<uint32_t> allow_rows;
    ScratchBuffer<uint32_t> d_allow;
    if (r.params.has_allow) {
      allow_rows = allowed_rows(r.params.allow, r.params.n_allow);
      d_allow = ScratchBuffer<uint32_t>(allow_rows.size(), stream);
      if (!allow_rows.empty())
        CLIPRT_CUDA_CHECK(cudaMemcpyAsync(d_allow.get(), allow_rows.data(), allow_rows.size() * 4,
                                          cudaMemcpyHostToDevice, stream));
    }
    const int64_t n_scan = r.params.has_allow ? int64_t(allow_rows.size()) : rows_;

    // Outputs: the caller's device arrays, or device scratch copied to the host per chunk.
    ScratchBuffer<float> s_scores;
    ScratchBuffer<int64_t> s_ids;
    float* out_scores = r.out_scores;
    int64_t* out_ids = r.out_ids;
    if (!r.out_on_device) {
      s_scores = ScratchBuffer<float>(size_t(nq * k), stream);
      s_ids = ScratchBuffer<int64_t>(size_t(nq * k), stream);
      out_scores = s_scores.get();
      out_ids = s_ids.get();
    } else {
      poison_bytes(out_scores, size_t(nq * k) * 4, stream);
      poison_bytes(out_ids, size_t(nq * k) * 8, stream);
    }
    auto copy_out = [&](int64_t q0, int64_t n) {
      if (r.out_on_device) return;
      CLIPRT_CUDA_CHECK(cudaMemcpyAsync(r.out_scores + q0 * k, out_scores + q0 * k, size_t(n * k) * 4,
                                        cudaMemcpyDeviceToHost, stream));
      CLIPRT_CUDA_CHECK(cudaMemcpyAsync(r.out_ids + q0 * k, out_ids + q0 * k, size_t(n * k) * 8,
                                        cudaMemcpyDeviceToHost, stream));
    };

    if (live == 0 || n_scan == 0) {
      launch_fill_empty(TopKOut{out_scores, out_ids, nullptr, k}, int(nq), k, stream);
      copy_out(0, nq);
      wait_and_check();
      return;
    }

    ScanParams base;
    base.codes = a.codes_ptr();
    base.pitch = pitch_;
    base.xscale = layout_.has_scale() ? a.scales_ptr() : nullptr;
    base.deleted = (!r.params.has_allow && live < rows_) ? a.deleted_ptr() : nullptr;
    base.rows = r.params.has_allow ? d_allow.get() : nullptr;
    base.dim = dim_;
    base.q_pitch = q_pitch;

    const Sampling sampling = plan_sampling(n_scan, kc, knobs);
    const int64_t per_query =
        8 * (sampling.cap + (sampling.on ? sampling.rows : 0)) + 12 * kc + 16;
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>({nq, kChunkBudget / per_query, 65535}));

    for (int64_t c0 = 0; c0 < nq; c0 += chunk) {
      const int nc = int(std::min(chunk, nq - c0));
      ScanParams sp = base;
      sp.q = q_scan + c0 * q_pitch;
      sp.qscale = want_codes ? qscale.get() + c0 : nullptr;
      sp.nq = nc;
      ScratchBuffer<float> thresh(size_t(nc), stream);
      launch_fill_value(thresh.get(), nc, -INFINITY, stream);
      sp.thresh = thresh.get();
      if (sampling.on) {
        ScratchBuffer<unsigned long long> s_cand(size_t(nc) * size_t(sampling.rows), stream);
        ScratchBuffer<unsigned int> s_count(size_t(nc), stream);
        CLIPRT_CUDA_CHECK(cudaMemsetAsync(s_count.get(), 0, size_t(nc) * 4, stream));
        ScanParams ss = sp;
        ss.n = sampling.rows;
        ss.stride = sampling.stride;
        ss.cand = s_cand.get();
        ss.cap = sampling.rows;
        ss.count = s_count.get();
        launch_scan(storage_, plan, ss, device_, stream);
        launch_kth_threshold(CandidateLists{s_cand.get(), sampling.rows, s_count.get(), nc}, kc, thresh.get(), stream);
      }

      float* o_scores = out_scores + c0 * k;
      int64_t* o_ids = out_ids + c0 * k;
      int64_t cap = sampling.cap;
      for (;;) {
        ScratchBuffer<unsigned long long> cand(size_t(nc) * size_t(cap), stream);
        ScratchBuffer<unsigned int> count(size_t(nc), stream);
        CLIPRT_CUDA_CHECK(cudaMemsetAsync(count.get(), 0, size_t(nc) * 4, stream));
        sp.n = n_scan;
        sp.stride = 1;
        sp.cand = cand.get();
        sp.cap = cap;
        sp.count = count.get();
        launch_scan(storage_, plan, sp, device_, stream);
        const CandidateLists lists{cand.get(), cap, count.get(), nc};

        // Host copies of the counts, for the large-k path (which also detects overflow here).
        auto host_counts = [&](const CandidateLists& c, bool* overflow) {
          std::vector<unsigned int> h(static_cast<size_t>(c.nq));
          CLIPRT_CUDA_CHECK(cudaMemcpyAsync(h.data(), c.count, h.size() * 4, cudaMemcpyDeviceToHost, stream));
          wait_and_check();
          unsigned int top = 0;
          for (auto& v : h) {
            top = std::max(top, v);
            v = unsigned(std::min<int64_t>(v, c.cap));
          }
          if (overflow) *overflow = int64_t(top) > c.cap;
          if (overflow && *overflow) cap = int64_t(top);
          return h;
        };
        auto select = [&](const CandidateLists& c, int64_t kk, const TopKOut& out, bool* overflow) {
          if (kk <= kBlockTopKMax) {
            launch_block_topk(c, kk, a.ids_ptr(), out, &d_flags.get()->overflow, stream);
            return true;
          }
          const std::vector<unsigned int> counts = host_counts(c, overflow);
          if (overflow && *overflow) return false;
          large_topk(c, counts, kk, a.ids_ptr(), out, stream);
          return true;
        };

        bool overflow = false;
        const int64_t k_final = std::min(k, kc);
        if (rs.rescore == 0) {
          if (!select(lists, k_final, TopKOut{o_scores, o_ids, nullptr, k}, &overflow)) continue;
        } else {
          ScratchBuffer<uint32_t> sel_rows(size_t(nc) * size_t(kc), stream);
          if (!select(lists, kc, TopKOut{nullptr, nullptr, sel_rows.get(), kc}, &overflow)) continue;
          ScratchBuffer<unsigned long long> r_cand(size_t(nc) * size_t(kc), stream);
          ScratchBuffer<unsigned int> r_count(size_t(nc), stream);
          CLIPRT_CUDA_CHECK(cudaMemsetAsync(r_count.get(), 0, size_t(nc) * 4, stream));
          RescoreParams rp;
          rp.q = qf.get() + c0 * qf_stride;
          rp.q_stride = qf_stride;
          rp.orig = a.orig_ptr();
          rp.dim = dim_;
          rp.rows = sel_rows.get();
          rp.nq = nc;
          rp.kc = kc;
          rp.cand = r_cand.get();
          rp.count = r_count.get();
          launch_rescore(rp, stream);
          select(CandidateLists{r_cand.get(), kc, r_count.get(), nc}, k_final, TopKOut{o_scores, o_ids, nullptr, k},
                 nullptr);
        }
        if (k_final < k)
          launch_fill_empty(TopKOut{o_scores + k_final, o_ids + k_final, nullptr, k}, nc, k - k_final, stream);
        copy_out(c0, nc);
        wait_and_check();
        if (h_flags.overflow == 0) break;
        // Some list overflowed: read the exact counts and repeat with room for all of them.
        const Flags reset = init;
        CLIPRT_CUDA_CHECK(cudaMemcpyAsync(&d_flags.get()->overflow, &reset.overflow, 4, cudaMemcpyHostToDevice, stream));
        host_counts(lists, &overflow);
      }
    }
  } catch (...) {
    cudaStreamSynchronize(stream);
    throw;
  }
}

}  // namespace cuda
}  // namespace cliprt
