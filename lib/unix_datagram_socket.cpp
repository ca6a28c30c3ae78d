#include <couring/unix_datagram_socket.hpp>

#include <cerrno>

#include <sys/socket.h>

namespace couring {

result<unix_datagram_socket> unix_datagram_socket::bind(io_context& ctx, const unix_endpoint& local,
                                                        unix_datagram_options options) {
  detail::socket_file file;
  auto fd = detail::bind_unix_socket(SOCK_DGRAM, local, options.remove_stale,
                                     options.unlink_on_close, file);
  if (!fd)
    return fd.error();
  unix_datagram_socket s(ctx, *fd);
  s.file_ = std::move(file);
  return s;
}

result<unix_datagram_socket> unix_datagram_socket::bind(io_context& ctx, std::string_view local,
                                                        unix_datagram_options options) {
  auto ep = unix_endpoint::parse(local);
  if (!ep)
    return ep.error();
  return bind(ctx, *ep, options);
}

result<unix_datagram_socket> unix_datagram_socket::open(io_context& ctx) {
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return std::error_code(errno, std::system_category());
  return unix_datagram_socket(ctx, fd);
}

result<std::pair<unix_datagram_socket, unix_datagram_socket>>
unix_datagram_socket::pair(io_context& ctx) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, fds) != 0)
    return std::error_code(errno, std::system_category());
  unix_datagram_socket a(ctx, fds[0]);
  unix_datagram_socket b(ctx, fds[1]);
  return std::pair(std::move(a), std::move(b));
}

} // namespace couring
