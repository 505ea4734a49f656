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

class IndexSearcher {
 public:
  static void run(const Index& ix, const float* q, int64_t nq, const SearchParams& p,
                  float* out_scores, int64_t* out_ids);
};

void IndexSearcher::run(const Index& ix, const float* qin, int64_t nq, const SearchParams& p,
                        float* out_scores, int64_t* out_ids) {
  const int D = ix.dim_;
  const Layout& L = ix.layout_;
  if (p.k <= 0) throw ValueError("k must be positive, got " + std::to_string(p.k));
  if (p.rescore < 0) throw ValueError("rescore must be >= 0");
  if (p.rescore > 0 && !ix.keep_originals_)
    throw ValueError("rescore needs the original vectors: create the index with keep_originals=True");
  std::vector<float> qn;
  const float* q = ix.prepare_rows(qin, nq, false, &qn);
  if (nq == 0) return;

  std::shared_lock<RwLock> lock(ix.mu_);
  const ScanKernels& K = active_kernels();
  const int64_t live = ix.live_;
  const int64_t kc_raw = p.rescore > 0 ? p.k * p.rescore : p.k;
  const int64_t kc = std::max<int64_t>(1, std::min<int64_t>(kc_raw, live));

  // Build the work list: whole segments (deleted rows skipped inside the scan), or the
  // allowed rows only.
  std::vector<ScanSource> work;
  std::vector<std::vector<uint64_t>> masks;
  Segment gathered;
  std::vector<int64_t> gathered_locs;
  if (p.has_allow) {
    ix.ensure_id_map();
    std::vector<int64_t> locs;
    locs.reserve(size_t(std::min<int64_t>(p.n_allow, live)));
    for (int64_t i = 0; i < p.n_allow; ++i) {
      const int64_t loc = ix.id_map_.find(p.allow[i]);
      if (loc >= 0) locs.push_back(loc);
    }
    std::sort(locs.begin(), locs.end());
    locs.erase(std::unique(locs.begin(), locs.end()), locs.end());
    if (int64_t(locs.size()) * 8 < live) {
      // Selective filter: gather the allowed rows into a compact packed run.
      const int64_t n = int64_t(locs.size());
      gathered.layout = L;
      gathered.codes_buf.grow(size_t(blocks_for_rows(n)) * L.block_bytes(), 0);
      gathered.ids_buf.grow(size_t(n) * 8 + 8, 0);
      if (L.has_scale()) gathered.scale_buf.grow(size_t(blocks_for_rows(n)) * kBlockRows * 4, 0);
      std::vector<uint8_t> code(L.row_bytes());
      auto* gids = reinterpret_cast<int64_t*>(gathered.ids_buf.data());
      auto* gscale = reinterpret_cast<float*>(gathered.scale_buf.data());
      for (int64_t i = 0; i < n; ++i) {
        const Segment& s = *ix.segments_[size_t(loc_segment(locs[size_t(i)]))];
        const int64_t r = loc_row(locs[size_t(i)]);
        gather_row(L, s.codes, r, code.data());
        scatter_row(L, code.data(), gathered.codes_buf.data(), i);
        gids[i] = s.ids[r];
        if (gscale) gscale[i] = s.scale[r];
      }
      gathered_locs = std::move(locs);
      if (n > 0)
        work.push_back({gathered.codes_buf.data(), gscale, gids, gathered_locs.data(), nullptr, 0, n, 0,
                        blocks_for_rows(n)});
    } else {
      masks.resize(ix.segments_.size());
      for (size_t si = 0; si < ix.segments_.size(); ++si)
        masks[si].assign((size_t(ix.segments_[si]->rows) + 63) / 64 + 1, ~uint64_t(0));
      for (int64_t loc : locs) {
        const int64_t r = loc_row(loc);
        masks[size_t(loc_segment(loc))][size_t(r >> 6)] &= ~(uint64_t(1) << (r & 63));
      }
      for (size_t si = 0; si < ix.segments_.size(); ++si) {
        const Segment& s = *ix.segments_[si];
        if (s.rows > 0)
          work.push_back({s.codes, s.scale, s.ids, nullptr, masks[si].data(), int64_t(si), s.rows, 0,
                          blocks_for_rows(s.rows)});
      }
    }
  } else {
    for (size_t si = 0; si < ix.segments_.size(); ++si) {
      const Segment& s = *ix.segments_[si];
      if (s.rows == 0 || s.n_deleted == s.rows) continue;
      work.push_back({s.codes, s.scale, s.ids, nullptr, s.n_deleted ? s.deleted.data() : nullptr,
                      int64_t(si), s.rows, 0, blocks_for_rows(s.rows)});
    }
  }

  int64_t total_blocks = 0;
  for (auto& w : work) total_blocks += w.nblocks;

  PreparedQueries Q;
  prepare_queries(L, q, int(nq), &Q);

  // Threads: only when the work is large enough to pay for the hand-off.
  int threads = p.threads > 0 ? p.threads : default_threads();
  const double bytes = double(total_blocks) * double(L.block_bytes()) *
                       double((nq + kQueryGroup - 1) / kQueryGroup);
  if (bytes < kParallelBytes) threads = 1;
  threads = int(std::min<int64_t>(threads, std::max<int64_t>(1, total_blocks / 4)));

  std::vector<std::vector<TopK>> heaps(static_cast<size_t>(threads), std::vector<TopK>(static_cast<size_t>(nq), TopK(kc)));
  auto parts = split_work(work, threads);
  parallel_for(threads, [&](int t) { scan_sources(L, K, Q, parts[size_t(t)], heaps[size_t(t)]); });

  // Per query: merge the threads' candidates, rescore them exactly when asked, write out.
  auto finish = [&](int64_t i) {
    TopK& merged = heaps[0][size_t(i)];
    for (int t = 1; t < threads; ++t)
      for (const Hit& h : heaps[size_t(t)][size_t(i)].items()) merged.push(h.score, h.id, h.loc);
    std::vector<Hit> hits = merged.take_sorted();
    if (p.rescore > 0) {
      const float* qi = q + size_t(i) * D;
      TopK best(p.k);
      auto orig = [&](const Hit& h) {
        return ix.segments_[size_t(loc_segment(h.loc))]->orig + size_t(loc_row(h.loc)) * size_t(D);
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
    float* os = out_scores + size_t(i) * size_t(p.k);
    int64_t* oi = out_ids + size_t(i) * size_t(p.k);
    const int64_t m = std::min<int64_t>(p.k, int64_t(hits.size()));
    for (int64_t j = 0; j < m; ++j) { os[j] = hits[size_t(j)].score; oi[j] = hits[size_t(j)].id; }
    for (int64_t j = m; j < p.k; ++j) { os[j] = -std::numeric_limits<float>::infinity(); oi[j] = -1; }
  };
  const int fthreads = int(std::min<int64_t>(threads, nq));
  parallel_for(fthreads, [&](int t) {
    for (int64_t i = t; i < nq; i += fthreads) finish(i);
  });
}

void Index::search(const float* q, int64_t nq, const SearchParams& p, float* out_scores,
                   int64_t* out_ids) const {
  IndexSearcher::run(*this, q, nq, p, out_scores, out_ids);
}

}  // namespace cliprt
