#include <couring/stream.hpp>

#include <cerrno>
#include <csignal>
#include <mutex>

#include <sys/socket.h>
#include <sys/stat.h>

namespace couring {

namespace detail {

void ignore_default_sigpipe() noexcept {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction current {};
    if (sigaction(SIGPIPE, nullptr, &current) != 0)
      return;
    // Only the default (terminate) is replaced: a handler or an explicit
    // ignore set up by the application stays as it is.
    if ((current.sa_flags & SA_SIGINFO) == 0 && current.sa_handler == SIG_DFL) {
      struct sigaction ignore {};
      ignore.sa_handler = SIG_IGN;
      sigemptyset(&ignore.sa_mask);
      sigaction(SIGPIPE, &ignore, nullptr);
    }
  });
}

} // namespace detail

namespace {
bool is_socket(int fd) noexcept {
  struct stat st {};
  // If fstat fails the descriptor is unusable anyway; its operations will
  // report why (EBADF), whichever opcode they use.
  return ::fstat(fd, &st) != 0 || S_ISSOCK(st.st_mode);
}
} // namespace

stream::stream(io_context& ctx, int fd)
    : stream(ctx, fd, is_socket(fd) ? kind::socket : kind::other) {}

stream::stream(io_context& ctx, int fd, kind k) : handle_(ctx.ring(), fd) {
  if (k == kind::other) {
    handle_.state()->use_read_write = true;
    detail::ignore_default_sigpipe();
  }
}

result<void> stream::shutdown_write() noexcept {
  if (!handle_.is_open())
    return std::error_code(EBADF, std::system_category());
  if (handle_.is_direct())
    return make_error_code(error::direct_descriptor);
  if (::shutdown(handle_.fd(), SHUT_WR) != 0)
    return std::error_code(errno, std::system_category());
  return {};
}

} // namespace couring
