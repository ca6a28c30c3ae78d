#include <couring/tcp_stream.hpp>

#include <netinet/tcp.h>
#include <sys/socket.h>

#include <couring/detail/socket.hpp>

namespace couring {

task<result<tcp_stream>> tcp_stream::connect(io_context& ctx, endpoint remote,
                                             connect_options options) {
  // remote is taken by value: the task starts lazily, long after a
  // temporary argument would have gone.
  auto fd = detail::open_stream_socket(remote.family());
  if (!fd)
    co_return fd.error();
  tcp_stream stream(ctx, *fd); // owns the socket from here on, also on errors

  if (options.local) {
    if (options.reuse_address) {
      if (auto r = detail::set_socket_flag(*fd, SOL_SOCKET, SO_REUSEADDR, true); !r)
        co_return r.error();
    }
    if (auto r = detail::bind_socket(*fd, *options.local); !r)
      co_return r.error();
  }
  if (options.no_delay) {
    if (auto r = detail::set_socket_flag(*fd, IPPROTO_TCP, TCP_NODELAY, true); !r)
      co_return r.error();
  }
  auto connected = co_await connect_awaitable(stream.handle_, remote);
  if (!connected)
    co_return connected.error();
  co_return std::move(stream);
}

result<endpoint> tcp_stream::local_endpoint() const {
  return detail::socket_name(native_handle(), false);
}
result<endpoint> tcp_stream::remote_endpoint() const {
  return detail::socket_name(native_handle(), true);
}

result<void> tcp_stream::set_no_delay(bool on) noexcept {
  return detail::set_socket_flag(native_handle(), IPPROTO_TCP, TCP_NODELAY, on);
}

} // namespace couring
