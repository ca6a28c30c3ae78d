#include <couring/tcp_listener.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <couring/detail/socket.hpp>

namespace couring {

result<tcp_listener> tcp_listener::bind(io_context& ctx, const endpoint& local,
                                        listen_options options) {
  // Direct descriptors exist only in an io_uring's file table: on the epoll
  // backend the listener accepts plain descriptors (the option is a speed-up,
  // not a behaviour).
  if (ctx.ring().emulated())
    options.direct_descriptors = false;
  if (options.direct_descriptors) {
    if (const int err = ctx.ring().ensure_file_table(); err < 0)
      return std::error_code(-err, std::system_category());
  }
  auto fd = detail::open_stream_socket(local.family());
  if (!fd)
    return fd.error();
  auto fail = [&](std::error_code ec) -> result<tcp_listener> {
    ::close(*fd);
    return ec;
  };
  if (options.reuse_address) {
    if (auto r = detail::set_socket_flag(*fd, SOL_SOCKET, SO_REUSEADDR, true); !r)
      return fail(r.error());
  }
  if (options.reuse_port) {
    if (auto r = detail::set_socket_flag(*fd, SOL_SOCKET, SO_REUSEPORT, true); !r)
      return fail(r.error());
  }
  if (auto r = detail::bind_socket(*fd, local); !r)
    return fail(r.error());
  if (::listen(*fd, options.backlog) != 0)
    return fail(std::error_code(errno, std::system_category()));
  // Port 0 asked the kernel to choose: report what it chose.
  auto bound = detail::socket_name(*fd, false);
  if (!bound)
    return fail(bound.error());
  return tcp_listener(detail::listener_core(ctx, *fd, options.direct_descriptors),
                      *bound); // owns fd from here
}

} // namespace couring
