#include <couring/detail/splice_pipe.hpp>

#include <algorithm>
#include <cerrno>
#include <utility>

#include <fcntl.h>
#include <unistd.h>

#include <couring/stream.hpp>

namespace couring::detail {

splice_pipe::splice_pipe(std::size_t wanted) noexcept {
  if (::pipe2(fds_, O_CLOEXEC) != 0) {
    error_ = errno;
    fds_[0] = fds_[1] = -1;
    return;
  }
  // A splice into a socket or pipe may raise SIGPIPE when the peer is gone.
  ignore_default_sigpipe();
  // Beyond /proc/sys/fs/pipe-max-size (1 MiB by default) an unprivileged
  // process gets EPERM: halve until the kernel agrees, rather than fall back
  // to the 64 KiB default (16 times the splices).
  int size = -1;
  for (std::size_t n = wanted; size < 0 && n > 65536; n /= 2)
    size = ::fcntl(fds_[1], F_SETPIPE_SZ, static_cast<int>(std::min<std::size_t>(n, 1u << 30)));
  if (size < 0)
    size = ::fcntl(fds_[1], F_GETPIPE_SZ);
  size_ = size > 0 ? static_cast<std::size_t>(size) : 65536;
}

splice_pipe::splice_pipe(splice_pipe&& o) noexcept : error_(o.error_), size_(o.size_) {
  fds_[0] = std::exchange(o.fds_[0], -1);
  fds_[1] = std::exchange(o.fds_[1], -1);
}

splice_pipe::~splice_pipe() {
  for (int fd : fds_)
    if (fd >= 0)
      ::close(fd);
}

} // namespace couring::detail
