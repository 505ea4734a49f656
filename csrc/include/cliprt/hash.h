// XXH64 (public algorithm by Yann Collet), used for file and section checksums.
#pragma once
#include <cstddef>
#include <cstdint>

namespace cliprt {
uint64_t xxh64(const void* data, size_t len, uint64_t seed = 0);
}
