// Exact similarity index over quantized embedding storage.
//
// Shapes at the boundary (row-major, C-contiguous):
//   add:         x float32 (n, dim), ids int64 (n) or null       -> int64 (n) assigned ids
//   search:      q float32 (nq, dim), k > 0                       -> scores float32 (nq, k),
//                                                                    ids int64 (nq, k)
//   reconstruct: ids int64 (n)                                    -> float32 (n, dim)
// Results are sorted by score descending, ties by smaller id; slots past the number of
// candidates hold score -inf and id -1.
//
// Thread safety: any number of concurrent searches; add/remove/save are serialised with
// them by a reader-writer lock, so a search sees the index before or after an add.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "cliprt/mapped_file.h"
#include "cliprt/row_catalog.h"
#include "cliprt/rw_lock.h"
#include "cliprt/types.h"

namespace cliprt {

// Rows of one segment. In-memory segments own growable buffers; loaded segments view a
// (usually memory-mapped) segment file and are immutable except for their deletion bitmap.
struct Segment {
  Layout layout;
  bool has_originals = false;
  int64_t rows = 0;
  int64_t capacity = 0;
  const uint8_t* codes = nullptr;  // packed blocks
  const int64_t* ids = nullptr;    // (rows)
  const float* scale = nullptr;    // (rows) for i8 and b1
  const float* orig = nullptr;     // (rows, dim) float32 originals, when kept
  AlignedBytes codes_buf, ids_buf, scale_buf, orig_buf;
  std::shared_ptr<MappedFile> file;
  DeletionBitmap deleted;          // over rows (row_catalog.h)
  bool sealed = false;             // no more rows may be appended
  // Persistence bookkeeping: where this segment is already stored, and its deletion file.
  std::string saved_dir, file_name, del_file;
  uint64_t file_hash = 0, del_hash = 0;
  bool del_dirty = false;
};

// One segment as stored, for copying an index to or from another device. Valid only inside
// Index::visit_segments (or for the duration of Index::append_packed).
struct SegmentView {
  int64_t rows = 0;
  const uint8_t* codes = nullptr;     // packed blocks: blocks_for_rows(rows) * block_bytes()
  const int64_t* ids = nullptr;       // (rows)
  const float* scale = nullptr;       // (rows) for i8 and b1, else null
  const float* orig = nullptr;        // (rows, dim) when originals are kept, else null
  const uint64_t* deleted = nullptr;  // bitmap, (rows + 63) / 64 words; null when none deleted
  int64_t n_deleted = 0;
};

struct SearchParams {
  int64_t k = 10;
  // Candidates = k * rescore, rescored exactly with the float32 originals; 0 = off; unset =
  // the storage's default (default_rescore).
  std::optional<int> rescore;
  const int64_t* allow = nullptr;       // optional allow-list of ids
  int64_t n_allow = 0;
  bool has_allow = false;
  std::optional<int> threads;           // unset = all cores (CLIPRT_NUM_THREADS); CPU only
};

// SearchParams checked (k >= 1; rescore >= 0, and > 0 only with originals; threads >= 1) with
// the defaults filled in. Every index's search starts here. Raises ValueError.
struct ResolvedSearch {
  int64_t k;
  int rescore;
  int threads;  // 0 = all cores
  // Candidates the code scan keeps per query: k * rescore (k without rescoring), saturated.
  int64_t candidates() const {
    if (rescore <= 0) return k;
    return k > INT64_MAX / rescore ? INT64_MAX : k * rescore;
  }
};
ResolvedSearch resolve_search(const SearchParams& p, Storage storage, bool keep_originals);

// The oversampling R a search uses by default at this k: 0 without originals; for b1 a
// candidate pool of max(640, 4 k) rows (R = max(4, ceil(640 / k))); else the storage's
// factor (i8, f16, bf16: 2; f32: 0). Chosen from the recall tables in
// benchmarks/results/search_cpu.md and b1_scoring.md. Raises ValueError for k < 1.
int default_rescore(Storage storage, bool keep_originals, int64_t k);

struct LoadOptions {
  bool mmap = true;
  bool verify = true;            // verify checksums of everything but the originals
  bool verify_originals = false;
};

class Index : public CataloguedIndex {
 public:
  Index(int dim, Metric metric, Storage storage, bool keep_originals);

  std::vector<int64_t> add(const float* x, int64_t n, const int64_t* ids);
  void search(const float* q, int64_t nq, const SearchParams& p, float* out_scores,
              int64_t* out_ids) const;
  int64_t remove(const int64_t* ids, int64_t n);
  void reconstruct(const int64_t* ids, int64_t n, float* out) const;

  // Saves into `dir` as its one writer (DIR/LOCK, waiting up to lock_timeout_s; LockedError
  // past it). Throws ConflictError when this index was loaded from or saved to `dir` and
  // another writer has saved there since: writing would drop that writer's rows.
  void save(const std::string& dir, double lock_timeout_s);
  // Takes no lock and writes nothing (see persist.h for how it coexists with a writer).
  static std::unique_ptr<Index> load(const std::string& dir, const LoadOptions& opt);
  // Verifies every checksum, originals included; throws FormatError.
  void verify() const;

  // Device copies. visit_segments calls fn for every non-empty segment in storage order
  // under the shared lock (one consistent snapshot) and returns the next automatic id.
  int64_t visit_segments(const std::function<void(const SegmentView&)>& fn) const;
  // Appends rows given in the packed block layout as a new segment (codes are copied, not
  // re-encoded); the index must hold no rows yet. Automatic ids continue from next_id.
  void append_packed(const SegmentView& s, int64_t next_id);

  int dim() const { return dim_; }
  Metric metric() const { return metric_; }
  Storage storage() const { return storage_; }
  bool keep_originals() const { return keep_originals_; }
  int64_t num_segments() const;
  int64_t memory_bytes() const;    // heap bytes owned (mapped files excluded)

 private:
  friend class IndexSearcher;
  static std::unique_ptr<Index> load_manifest(const std::string& dir, const std::string& text,
                                              const LoadOptions& opt);
  int64_t num_parts() const override { return int64_t(segments_.size()); }
  RowPart part(int64_t i) const override;
  Segment& writable_segment(int64_t extra_rows);
  // Rejects NaN/Inf (and, for stored ip vectors, values the storage cannot hold); for cosine
  // returns L2-normalised rows in *normed, else x itself.
  const float* prepare_rows(const float* x, int64_t n, bool stored, std::vector<float>* normed) const;

  int dim_;
  Metric metric_;
  Storage storage_;
  bool keep_originals_;
  Layout layout_;
  uint64_t generation_ = 0;
  std::string home_dir_;  // the directory loaded from or last saved to (generation_ is its)
  std::vector<std::shared_ptr<Segment>> segments_;
  std::mutex save_mu_;
};

}  // namespace cliprt
