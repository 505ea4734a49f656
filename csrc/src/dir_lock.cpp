#include "cliprt/dir_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace cliprt {
namespace {

int64_t read_pid(int fd) {
  char buf[32] = {0};
  ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  buf[n] = 0;
  return std::strtoll(buf, nullptr, 10);
}

}  // namespace

std::unique_ptr<DirLock> DirLock::acquire(const std::string& dir, double timeout_s, const std::string& what) {
  const std::string path = dir + "/LOCK";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (fd < 0) throw_errno("cannot open lock file", path);
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw IOError("lock file '" + path + "' is not a regular file");
  }
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::chrono::duration<double>(timeout_s < 0 ? 0 : timeout_s);
  auto pause = std::chrono::milliseconds(1);
  while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    if (errno != EWOULDBLOCK) {
      ::close(fd);
      throw_errno("cannot lock", path);
    }
    if (timeout_s >= 0 && clock::now() >= deadline) {
      const int64_t pid = read_pid(fd);
      ::close(fd);
      std::string holder = pid > 0 ? "process " + std::to_string(pid) : "another process";
      if (pid == int64_t(::getpid())) holder = "this process (" + std::to_string(pid) + ", another open handle)";
      char waited[32];
      std::snprintf(waited, sizeof waited, "%.3g", timeout_s);
      throw LockedError(what + " '" + dir + "' is locked by " + holder + ", which is writing it (lock file '" +
                            path + "'; waited " + waited + " s)",
                        pid, path);
    }
    std::this_thread::sleep_for(pause);
    if (pause < std::chrono::milliseconds(50)) pause *= 2;
  }
  // Ours now: record the pid for whoever is refused next.
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) != ssize_t(pid.size())) {
    // The lock is held all the same; a missing pid only makes a refusal message vaguer.
  }
  return std::unique_ptr<DirLock>(new DirLock(fd, path));
}

void DirLock::release() {
  if (fd_ >= 0) ::close(fd_);  // closing the descriptor releases the flock
  fd_ = -1;
}

DirLock::~DirLock() { release(); }

int create_temp_file(const std::string& path, std::string* tmp_name) {
  static std::atomic<uint64_t> counter{0};
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string tmp = path + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) {
      *tmp_name = tmp;
      return fd;
    }
    if (errno != EEXIST) throw_errno("cannot create", tmp);
  }
  throw IOError("cannot create a temporary file next to '" + path + "': every name tried exists");
}

}  // namespace cliprt
