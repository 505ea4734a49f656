// One writer per directory, across processes: an exclusive flock(2) on DIR/LOCK, held for as
// long as the DirLock lives. Readers take no lock. The holder writes its pid into the file so
// a refused writer can name it. The file itself is never removed (removing a lock file lets
// two processes hold locks on two different inodes of the same name).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "cliprt/errors.h"

namespace cliprt {

// Raised when another process (or another open handle in this one) holds the lock past the
// timeout. Python: cliprt.LockedError, an OSError with `pid` (0 when unknown) and `path`.
struct LockedError : IOError {
  LockedError(const std::string& msg, int64_t pid_, std::string path_)
      : IOError(msg), pid(pid_), path(std::move(path_)) {}
  int64_t pid;
  std::string path;
};

class DirLock {
 public:
  // Takes DIR/LOCK, waiting up to timeout_s seconds (0: fail at once; < 0: wait forever).
  // `what` names the thing locked in the error message ("index", "collection").
  static std::unique_ptr<DirLock> acquire(const std::string& dir, double timeout_s, const std::string& what);
  ~DirLock();
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;
  const std::string& path() const { return path_; }
  bool held() const { return fd_ >= 0; }
  void release();  // idempotent; the destructor calls it

 private:
  DirLock(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}
  int fd_;
  std::string path_;
};

// Creates `path` for writing with O_CREAT|O_EXCL|O_NOFOLLOW under a name no other writer
// uses (path + ".tmp-PID-N"); returns the fd and sets *tmp_name.
int create_temp_file(const std::string& path, std::string* tmp_name);

}  // namespace cliprt
