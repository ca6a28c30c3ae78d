#include <couring/stream.hpp>

#include <cerrno>
#include <sys/socket.h>

namespace couring {

result<void> stream::shutdown_write() noexcept {
  if (!handle_.is_open())
    return std::error_code(EBADF, std::system_category());
  if (::shutdown(handle_.fd(), SHUT_WR) != 0)
    return std::error_code(errno, std::system_category());
  return {};
}

} // namespace couring
