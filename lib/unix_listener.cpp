#include <couring/unix_listener.hpp>

#include <cerrno>

#include <sys/socket.h>
#include <unistd.h>

namespace couring {

result<unix_listener> unix_listener::bind(io_context& ctx, const unix_endpoint& local,
                                          unix_listen_options options) {
  detail::socket_file file;
  auto fd = detail::bind_unix_socket(SOCK_STREAM, local, options.remove_stale,
                                     options.unlink_on_close, file);
  if (!fd)
    return fd.error();
  if (::listen(*fd, options.backlog) != 0) {
    const std::error_code ec(errno, std::system_category());
    ::close(*fd);
    return ec; // file removes the socket file on the way out
  }
  return unix_listener(detail::listener_core(ctx, *fd), local, std::move(file));
}

result<unix_listener> unix_listener::bind(io_context& ctx, std::string_view local,
                                          unix_listen_options options) {
  auto ep = unix_endpoint::parse(local);
  if (!ep)
    return ep.error();
  return bind(ctx, *ep, options);
}

} // namespace couring
