// The row catalogue: which id each stored row holds, which rows are deleted, the id -> row
// map, automatic ids, and the rules (and messages) every index applies to ids. One design
// for both indexes: the CPU index (index.h) has one part per segment; the device index
// (kernels/index/device_index.h) has one part, the host mirror of its rows.
//
// A row's location is make_loc(part, row) (id_map.h). The owner stores ids and deletion
// bitmaps (a CPU segment's ids may be a memory-mapped file); the catalogue reads them
// through RowSource and keeps the counts and the map. Locking is the owner's: mutating calls
// run under its exclusive lock, the others under at least its shared lock (the lazily built
// map has its own mutex, so concurrent readers may build it).
#pragma once
#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

#include "cliprt/id_map.h"
#include "cliprt/rw_lock.h"

namespace cliprt {

// One bit per row (bit r of word r / 64), with a count of the bits set. The words are laid out
// as the device scan reads them (as 32-bit words on a little-endian device, the same bits).
class DeletionBitmap {
 public:
  // Room for `rows` rows (one spare word past them); new bits are clear.
  void reserve_rows(int64_t rows) { words_.resize(size_t(rows / 64 + 1), 0); }
  bool test(int64_t r) const { return (words_[size_t(r >> 6)] >> (r & 63)) & 1; }
  void set(int64_t r);    // r must be clear
  void clear(int64_t r);  // r must be set
  // Replaces the bitmap with a stored one over `rows` rows ((rows + 63) / 64 words, or none
  // when `words` is null), keeping room for `capacity_rows`.
  void assign(const void* words, int64_t rows, int64_t capacity_rows);
  int64_t count() const { return count_; }
  const uint64_t* data() const { return words_.data(); }
  size_t num_words() const { return words_.size(); }
  int64_t heap_bytes() const { return int64_t(words_.capacity() * 8); }

 private:
  std::vector<uint64_t> words_;
  int64_t count_ = 0;
};

// A run of rows as its owner stores them.
struct RowPart {
  const int64_t* ids = nullptr;  // (rows)
  int64_t rows = 0;
  DeletionBitmap* deleted = nullptr;
};

// What the catalogue needs of its owner.
class RowSource {
 public:
  virtual ~RowSource() = default;
  virtual int64_t num_parts() const = 0;
  virtual RowPart part(int64_t i) const = 0;
};

class RowCatalog {
 public:
  explicit RowCatalog(const RowSource& source) : src_(source) {}
  RowCatalog(const RowCatalog&) = delete;
  RowCatalog& operator=(const RowCatalog&) = delete;

  // Ids given to an add, checked by the rules that need no state: at most 2**40 - 1 rows,
  // each id in [0, 2**63 - 2], none twice within the call. Returns them, or n zeros when
  // ids is null (assign() fills them in). Raises ValueError. Call before taking any lock.
  static std::vector<int64_t> checked_new_ids(const int64_t* ids, int64_t n);
  // The row-count rule alone (for owners that must check it before other work).
  static void check_add_count(int64_t n);
  // Completes checked_new_ids under the owner's exclusive lock: explicit ids must not be
  // stored already; automatic ids continue from next_id. Changes nothing. Raises ValueError.
  void assign(std::vector<int64_t>& ids, bool explicit_ids) const;
  // Records that rows [row0, row0 + ids.size()) of `part` now hold `ids` (after assign()).
  void added(const std::vector<int64_t>& ids, int64_t part, int64_t row0);
  // Marks the stored ones of `ids` deleted (unknown ids are ignored); returns their
  // locations, in the order of `ids`.
  std::vector<int64_t> remove(const int64_t* ids, int64_t n);
  // Undoes remove() when the owner could not complete it (`locs` as remove() returned them).
  void restore(const std::vector<int64_t>& locs);
  // After a load or a copy: the next automatic id and the live count; the map is rebuilt on
  // first use (from the owner's parts).
  void reset(int64_t next_id, int64_t live);

  int64_t live() const { return live_; }
  int64_t next_id() const { return next_id_; }
  int64_t find(int64_t id) const;    // location, or -1
  int64_t locate(int64_t id) const;  // location; KeyError when the id is not stored
  // Locations of the stored ones of `ids`, sorted, each once.
  std::vector<int64_t> locations(const int64_t* ids, int64_t n) const;
  std::vector<int64_t> ids() const;  // live ids in storage order
  // Builds the map now; FormatError when stored rows hold one id twice.
  void check() const { ensure_map(); }

 private:
  void ensure_map() const;

  const RowSource& src_;
  int64_t next_id_ = 0;
  int64_t live_ = 0;
  mutable std::mutex map_mu_;
  mutable std::atomic<bool> map_ready_{true};
  mutable IdMap map_;
};

// What every index shares around its catalogue: the reader-writer lock that serialises
// add / remove against searches, and the lookups that need nothing else. The CPU index and
// the device index derive from it and supply the parts (RowSource).
class CataloguedIndex : private RowSource {
 public:
  int64_t size() const;  // live (not removed) vectors
  bool contains(int64_t id) const;
  std::vector<int64_t> ids() const;  // live ids in storage order
  // One past the highest id ever stored (removed ones included); saved with the index, so
  // it is a high-water mark no later automatic id goes below.
  int64_t next_id() const;

 protected:
  CataloguedIndex() = default;
  ~CataloguedIndex() override = default;

  mutable RwLock mu_;
  RowCatalog catalog_{*this};
};

}  // namespace cliprt
