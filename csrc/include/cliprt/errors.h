// Error channels: user errors are typed exceptions carrying a fix-it message, translated to
// Python exceptions by the bindings; internal invariants use CLIPRT_ASSERT.
#pragma once
#include <stdexcept>
#include <string>

namespace cliprt {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct ValueError : Error { using Error::Error; };
struct TypeError : Error { using Error::Error; };
struct KeyError : Error { using Error::Error; };
// Corrupt, truncated or foreign index files. Python: cliprt.FormatError (a ValueError).
struct FormatError : Error { using Error::Error; };
// CUDA runtime failures (file:line, expression, CUDA error string). Python: RuntimeError.
struct CudaError : Error { using Error::Error; };
// Operating-system failures (open, write, fsync, rename, mmap) with errno text.
struct IOError : Error { using Error::Error; };
// A save that would overwrite another writer's newer state. Python: cliprt.ConflictError
// (an OSError).
struct ConflictError : IOError { using IOError::IOError; };

[[noreturn]] void throw_errno(const std::string& what, const std::string& path);

}  // namespace cliprt

#define CLIPRT_ASSERT(cond)                                                              \
  do {                                                                                   \
    if (!(cond))                                                                         \
      throw ::cliprt::Error(std::string("internal error: ") + #cond + " at " + __FILE__ + \
                            ":" + std::to_string(__LINE__));                             \
  } while (0)
