// Core vocabulary shared by the C++ core and the Python package.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace cliprt {

// Storage codec of the database vectors. Values are part of the on-disk format.
enum class Storage : uint32_t { F32 = 0, F16 = 1, BF16 = 2, I8 = 3, B1 = 4 };
// Similarity: "cosine" L2-normalises stored vectors and queries; "ip" uses them as given.
enum class Metric : uint32_t { Cosine = 0, IP = 1 };

constexpr int kNumStorages = 5;
// Database rows are packed in blocks of kBlockRows rows so a SIMD register holds one
// "group" of bytes for every row of a block (see Layout).
constexpr int kBlockRows = 16;

// Packed block layout, identical for every storage:
//   a row's code is ngroups groups of group_bytes bytes;
//   block b holds rows [16b, 16b+16) as [ngroups][16 rows][group_bytes].
//   f32: group = 1 dim (4 B)    f16: 1 dim (2 B)    bf16: 2 dims (4 B)
//   i8:  group = 4 dims (4 B)   b1: 64 dims (8 B, bit i of the word = dim 64g+i)
// Dims past `dim` in the last group are zero.
struct Layout {
  Storage storage = Storage::F32;
  int dim = 0;
  int group_bytes = 4;
  int ngroups = 0;
  int dims_per_group = 1;
  size_t row_bytes() const { return size_t(group_bytes) * size_t(ngroups); }
  size_t block_bytes() const { return row_bytes() * kBlockRows; }
  // Whether the codec keeps a per-row scale (i8 absmax/127, b1 ||x||/sqrt(D)).
  bool has_scale() const { return storage == Storage::I8 || storage == Storage::B1; }
};

Layout make_layout(Storage storage, int dim);

const char* storage_name(Storage s);
const char* metric_name(Metric m);
Storage parse_storage(const std::string& name);  // throws ValueError
Metric parse_metric(const std::string& name);    // throws ValueError

inline int64_t blocks_for_rows(int64_t rows) { return (rows + kBlockRows - 1) / kBlockRows; }

}  // namespace cliprt
