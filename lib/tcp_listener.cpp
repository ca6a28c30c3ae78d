#include <couring/tcp_listener.hpp>

#include <sys/socket.h>

#include <couring/detail/socket.hpp>

namespace couring {

result<tcp_listener> tcp_listener::bind(io_context& ctx, const endpoint& local,
                                        listen_options options) {
  auto fd = detail::open_stream_socket(local.family());
  if (!fd)
    return fd.error();
  tcp_listener listener(ctx, *fd, local); // closes the socket on every error below

  if (options.reuse_address) {
    if (auto r = detail::set_socket_flag(*fd, SOL_SOCKET, SO_REUSEADDR, true); !r)
      return r.error();
  }
  if (options.reuse_port) {
    if (auto r = detail::set_socket_flag(*fd, SOL_SOCKET, SO_REUSEPORT, true); !r)
      return r.error();
  }
  if (auto r = detail::bind_socket(*fd, local); !r)
    return r.error();
  if (::listen(*fd, options.backlog) != 0)
    return std::error_code(errno, std::system_category());
  // Port 0 asked the kernel to choose: report what it chose.
  auto bound = detail::socket_name(*fd, false);
  if (!bound)
    return bound.error();
  listener.local_ = *bound;
  return listener;
}

void tcp_listener::close() noexcept {
  if (fd_ >= 0)
    ctx_->close_fd(std::exchange(fd_, -1));
}

} // namespace couring
