// Batched exact search: every thread streams its share of the database blocks once, in
// L2-sized chunks; each chunk is scored against all queries, a group at a time, into a small
// score tile that is filtered against each query's running top-k threshold. The full
// (queries x rows) score matrix never exists.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <thread>

#include "cliprt/codec.h"
#include "cliprt/errors.h"
#include "cliprt/index.h"
#include "cliprt/scan.h"
#include "cliprt/topk.h"

namespace cliprt {

namespace {

constexpr int kQueryGroup = 48;           // queries per kernel call
constexpr size_t kChunkBytes = 160 << 10; // database bytes per chunk (stays in L2)
constexpr int64_t kMaxChunkRows = 512;
// Below this much work (bytes of codes x query groups) a search runs on the calling thread.
constexpr double kParallelBytes = 6.0e6;

// Read once: hardware_concurrency() reads sysfs on every call.
int default_threads() {
  static const int n = [] {
    if (const char* env = std::getenv("CLIPRT_NUM_THREADS")) {
      int t = std::atoi(env);
      if (t > 0) return t;
    }
    unsigned hc = std::thread::hardware_concurrency();
    return hc ? int(hc) : 1;
  }();
  return n;
}

// A run of blocks to scan. `locs` (optional) gives each row's location when the rows were
// gathered from elsewhere; otherwise location = make_loc(seg_idx, row).
struct ScanSource {
  const uint8_t* codes;
  const float* scale;
  const int64_t* ids;
  const int64_t* locs;
  const uint64_t* skip;  // rows to skip (bitmap), or null
  int64_t seg_idx;
  int64_t rows;          // rows in the whole source
  int64_t block0, nblocks;
};

void scan_sources(const Layout& L, const ScanKernels& K, const PreparedQueries& Q,
                  const std::vector<ScanSource>& work, std::vector<TopK>& heaps) {
  const int nq = Q.nq;
  const size_t bb = L.block_bytes();
  int64_t cb = std::max<int64_t>(1, int64_t(kChunkBytes / bb));
  cb = std::min<int64_t>(cb, kMaxChunkRows / kBlockRows);
  const int qg = std::min(nq, kQueryGroup);
  std::vector<float> buf(static_cast<size_t>(qg) * size_t(cb) * kBlockRows);
  std::vector<uint32_t> idx(static_cast<size_t>(cb * kBlockRows + kSelectSlack));
  const ScoreFn score = K.score[int(L.storage)];
  for (const ScanSource& src : work) {
    for (int64_t c = 0; c < src.nblocks; c += cb) {
      const int64_t nb = std::min(cb, src.nblocks - c);
      const int64_t blk = src.block0 + c;
      BlockSpan span{src.codes + size_t(blk) * bb, src.scale ? src.scale + blk * kBlockRows : nullptr, nb};
      const int64_t row0 = blk * kBlockRows;
      const int64_t nrows = std::min<int64_t>(nb * kBlockRows, src.rows - row0);
      const int64_t ld = nb * kBlockRows;
      for (int q0 = 0; q0 < nq; q0 += qg) {
        const int n = std::min(qg, nq - q0);
        score(Q, q0, n, span, buf.data(), ld);
        for (int i = 0; i < n; ++i) {
          TopK& h = heaps[size_t(q0 + i)];
          const float* s = buf.data() + size_t(i) * size_t(ld);
          const int64_t m = K.select(s, nrows, h.threshold(), idx.data());
          for (int64_t j = 0; j < m; ++j) {
            const int64_t r = row0 + idx[size_t(j)];
            if (src.skip && ((src.skip[r >> 6] >> (r & 63)) & 1)) continue;
            h.push(s[idx[size_t(j)]], src.ids[r], src.locs ? src.locs[r] : make_loc(src.seg_idx, r));
          }
        }
      }
    }
  }
}

// Runs fn(0..n-1), fn(0) on the calling thread; rethrows the first exception.
template <class Fn>
void parallel_for(int n, const Fn& fn) {
  if (n <= 1) {
    fn(0);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
  for (int t = 1; t < n; ++t)
    pool.emplace_back([&, t] {
      try {
        fn(t);
      } catch (...) {
        errors[size_t(t)] = std::current_exception();
      }
    });
  try {
    fn(0);
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

// Splits the sources into `parts` runs of roughly equal block counts.
std::vector<std::vector<ScanSource>> split_work(const std::vector<ScanSource>& all, int parts) {
  int64_t total = 0;
  for (auto& s : all) total += s.nblocks;
  std::vector<std::vector<ScanSource>> out(static_cast<size_t>(parts));
  const int64_t per = (total + parts - 1) / parts;
  int p = 0;
  int64_t filled = 0;
  for (ScanSource s : all) {
    while (s.nblocks > 0) {
      const int64_t take = std::min(s.nblocks, per - filled);
      ScanSource piece = s;
      piece.nblocks = take;
      out[size_t(p)].push_back(piece);
      s.block0 += take;
      s.nblocks -= take;
      filled += take;
      if (filled >= per && p + 1 < parts) { ++p; filled = 0; }
    }
  }
  return out;
}

}  // namespace

// The default oversampling per storage at k = 10 (b1's grows as the pool floor / k); where
// these come from: benchmarks/results/search_cpu.md and b1_scoring.md.
int default_rescore(Storage storage, bool keep_originals, int64_t k) {
  if (k < 1) throw ValueError("k must be >= 1, got " + std::to_string(k));
  if (!keep_originals) return 0;
  switch (storage) {
    case Storage::F32: return 0;
    case Storage::F16:
    case Storage::BF16:
    case Storage::I8: return 2;
    case Storage::B1: {
      constexpr int64_t kB1Pool = 640;  // candidates kept at least
      return int(std::max<int64_t>(4, (kB1Pool + k - 1) / k));
    }
  }
  return 0;
}

ResolvedSearch resolve_search(const SearchParams& p, Storage storage, bool keep_originals) {
  ResolvedSearch r;
  if (p.k < 1) throw ValueError("k must be >= 1, got " + std::to_string(p.k));
  r.k = p.k;
  if (p.rescore) {
    if (*p.rescore < 0) throw ValueError("rescore must be >= 0, got " + std::to_string(*p.rescore));
    if (*p.rescore > 0 && !keep_originals)
      throw ValueError("rescore needs the original vectors: create the index with keep_originals=True");
    r.rescore = *p.rescore;
  } else {
    r.rescore = default_rescore(storage, keep_originals, p.k);
  }
  if (p.threads && *p.threads < 1) throw ValueError("threads must be >= 1, got " + std::to_string(*p.threads));
  r.threads = p.threads.value_or(0);
  return r;
}

// One search of the CPU index, in steps: the work list (whole segments, or the allowed rows
// only), the scan of that list by parallel threads into per-thread candidate heaps, then per
// query the merge of the heaps, the exact rescoring and the output. Holds the index's shared
// lock from the work list to the output.
class IndexSearcher {
 public:
  IndexSearcher(const Index& ix, const ResolvedSearch& rs) : ix_(ix), L_(ix.layout_), rs_(rs) {}
  void run(const float* q, int64_t nq, const SearchParams& p, float* out_scores, int64_t* out_ids);

 private:
  void plan_segments();
  void plan_allowed(const int64_t* allow, int64_t n);
  int pick_threads(int64_t nq) const;
  void finish(const float* q, int64_t i, float* out_scores, int64_t* out_ids);

  const Index& ix_;
  const Layout& L_;
  const ResolvedSearch rs_;
  int64_t kc_ = 0;  // candidates kept per query
  std::vector<ScanSource> work_;
  std::vector<std::vector<uint64_t>> masks_;  // per segment: rows not allowed
  Segment gathered_;                          // the allowed rows, packed, when few
  std::vector<int64_t> gathered_locs_;
  int threads_ = 1;
  std::vector<std::vector<TopK>> heaps_;      // per thread, per query
};

// Every segment with live rows; deleted rows are skipped inside the scan.
void IndexSearcher::plan_segments() {
  for (size_t si = 0; si < ix_.segments_.size(); ++si) {
    const Segment& s = *ix_.segments_[si];
    if (s.rows == 0 || s.deleted.count() == s.rows) continue;
    work_.push_back({s.codes, s.scale, s.ids, nullptr, s.deleted.count() ? s.deleted.data() : nullptr,
                     int64_t(si), s.rows, 0, blocks_for_rows(s.rows)});
  }
}

// Only the allowed rows: gathered into a compact packed run when they are few (under 1/8 of
// the live rows), else whole segments with a mask of the rows to skip.
void IndexSearcher::plan_allowed(const int64_t* allow, int64_t n_allow) {
  std::vector<int64_t> locs = ix_.catalog_.locations(allow, n_allow);
  if (int64_t(locs.size()) * 8 < ix_.catalog_.live()) {
    const int64_t n = int64_t(locs.size());
    gathered_.layout = L_;
    gathered_.codes_buf.grow(size_t(blocks_for_rows(n)) * L_.block_bytes(), 0);
    gathered_.ids_buf.grow(size_t(n) * 8 + 8, 0);
    if (L_.has_scale()) gathered_.scale_buf.grow(size_t(blocks_for_rows(n)) * kBlockRows * 4, 0);
    std::vector<uint8_t> code(L_.row_bytes());
    auto* gids = reinterpret_cast<int64_t*>(gathered_.ids_buf.data());
    auto* gscale = reinterpret_cast<float*>(gathered_.scale_buf.data());
    for (int64_t i = 0; i < n; ++i) {
      const Segment& s = *ix_.segments_[size_t(loc_segment(locs[size_t(i)]))];
      const int64_t r = loc_row(locs[size_t(i)]);
      gather_row(L_, s.codes, r, code.data());
      scatter_row(L_, code.data(), gathered_.codes_buf.data(), i);
      gids[i] = s.ids[r];
      if (gscale) gscale[i] = s.scale[r];
    }
    gathered_locs_ = std::move(locs);
    if (n > 0)
      work_.push_back({gathered_.codes_buf.data(), gscale, gids, gathered_locs_.data(), nullptr, 0, n, 0,
                       blocks_for_rows(n)});
    return;
  }
  masks_.resize(ix_.segments_.size());
  for (size_t si = 0; si < ix_.segments_.size(); ++si)
    masks_[si].assign((size_t(ix_.segments_[si]->rows) + 63) / 64 + 1, ~uint64_t(0));
  for (int64_t loc : locs) {
    const int64_t r = loc_row(loc);
    masks_[size_t(loc_segment(loc))][size_t(r >> 6)] &= ~(uint64_t(1) << (r & 63));
  }
  for (size_t si = 0; si < ix_.segments_.size(); ++si) {
    const Segment& s = *ix_.segments_[si];
    if (s.rows > 0)
      work_.push_back({s.codes, s.scale, s.ids, nullptr, masks_[si].data(), int64_t(si), s.rows, 0,
                       blocks_for_rows(s.rows)});
  }
}

// Threads only when the work is large enough to pay for the hand-off.
int IndexSearcher::pick_threads(int64_t nq) const {
  int64_t total_blocks = 0;
  for (auto& w : work_) total_blocks += w.nblocks;
  int threads = rs_.threads > 0 ? rs_.threads : default_threads();
  const double bytes = double(total_blocks) * double(L_.block_bytes()) * double((nq + kQueryGroup - 1) / kQueryGroup);
  if (bytes < kParallelBytes) threads = 1;
  return int(std::min<int64_t>(threads, std::max<int64_t>(1, total_blocks / 4)));
}

// Query i: merge the threads' candidates, rescore them exactly when asked, write the row.
void IndexSearcher::finish(const float* q, int64_t i, float* out_scores, int64_t* out_ids) {
  const int D = ix_.dim_;
  const ScanKernels& K = active_kernels();
  TopK& merged = heaps_[0][size_t(i)];
  for (int t = 1; t < threads_; ++t)
    for (const Hit& h : heaps_[size_t(t)][size_t(i)].items()) merged.push(h.score, h.id, h.loc);
  std::vector<Hit> hits = merged.take_sorted();
  if (rs_.rescore > 0) {
    const float* qi = q + size_t(i) * D;
    TopK best(rs_.k);
    auto orig = [&](const Hit& h) {
      return ix_.segments_[size_t(loc_segment(h.loc))]->orig + size_t(loc_row(h.loc)) * size_t(D);
    };
    auto prefetch = [&](size_t j) {
      if (j >= hits.size()) return;
      const float* row = orig(hits[j]);
      for (int d = 0; d < D; d += 16) __builtin_prefetch(row + d);
    };
    // Originals are touched only here, scattered rows: keep kRescoreAhead rows in flight.
    constexpr size_t kRescoreAhead = 16;
    for (size_t j = 0; j < kRescoreAhead; ++j) prefetch(j);
    for (size_t j = 0; j < hits.size(); ++j) {
      prefetch(j + kRescoreAhead);
      best.push(float(K.dot_f64(qi, orig(hits[j]), D)), hits[j].id, hits[j].loc);
    }
    hits = best.take_sorted();
  }
  const int64_t k = rs_.k;
  float* os = out_scores + size_t(i) * size_t(k);
  int64_t* oi = out_ids + size_t(i) * size_t(k);
  const int64_t m = std::min<int64_t>(k, int64_t(hits.size()));
  for (int64_t j = 0; j < m; ++j) { os[j] = hits[size_t(j)].score; oi[j] = hits[size_t(j)].id; }
  for (int64_t j = m; j < k; ++j) { os[j] = -std::numeric_limits<float>::infinity(); oi[j] = -1; }
}

void IndexSearcher::run(const float* qin, int64_t nq, const SearchParams& p, float* out_scores, int64_t* out_ids) {
  std::vector<float> qn;
  const float* q = ix_.prepare_rows(qin, nq, false, &qn);
  if (nq == 0) return;

  std::shared_lock<RwLock> lock(ix_.mu_);
  kc_ = std::max<int64_t>(1, std::min<int64_t>(rs_.candidates(), ix_.catalog_.live()));
  if (p.has_allow)
    plan_allowed(p.allow, p.n_allow);
  else
    plan_segments();

  PreparedQueries Q;
  prepare_queries(L_, q, int(nq), &Q);
  threads_ = pick_threads(nq);
  heaps_.assign(size_t(threads_), std::vector<TopK>(static_cast<size_t>(nq), TopK(kc_)));
  auto parts = split_work(work_, threads_);
  const ScanKernels& K = active_kernels();
  parallel_for(threads_, [&](int t) { scan_sources(L_, K, Q, parts[size_t(t)], heaps_[size_t(t)]); });

  const int fthreads = int(std::min<int64_t>(threads_, nq));
  parallel_for(fthreads, [&](int t) {
    for (int64_t i = t; i < nq; i += fthreads) finish(q, i, out_scores, out_ids);
  });
}

void Index::search(const float* q, int64_t nq, const SearchParams& p, float* out_scores,
                   int64_t* out_ids) const {
  const ResolvedSearch rs = resolve_search(p, storage_, keep_originals_);
  IndexSearcher(*this, rs).run(q, nq, p, out_scores, out_ids);
}

}  // namespace cliprt
