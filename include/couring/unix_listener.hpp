#pragma once

// unix_listener: a listening Unix domain stream socket, at a filesystem path
// or an abstract name ("@name"). Accepting works as tcp_listener's (the same
// machinery: one multishot accept request, waiting accepts served in order,
// close() stops listening at once and ends waiting accepts with
// operation_canceled).
//
// The socket file: bind fails with EADDRINUSE if the path exists -- also
// when it is a stale socket file left by a process that died. With
// remove_stale, a socket file nobody listens on (a connect to it is
// refused) is removed first; anything that is not a socket, or a socket
// someone listens on, is never removed. Closing the listener removes the
// file it created (unless unlink_on_close is false, or the path names
// another file by then). Abstract names have no file.

#include <string_view>

#include <sys/socket.h>

#include <couring/detail/listener.hpp>
#include <couring/detail/socket_file.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>
#include <couring/unix_endpoint.hpp>
#include <couring/unix_stream.hpp>

namespace couring {

struct unix_listen_options {
  int backlog = SOMAXCONN;
  bool remove_stale = false;   // remove a stale socket file at the path first
  bool unlink_on_close = true; // remove the socket file when the listener closes
};

class unix_listener {
public:
  unix_listener() noexcept = default;

  static result<unix_listener> bind(io_context& ctx, const unix_endpoint& local,
                                    unix_listen_options options = {});
  // The same, from a path or "@name" (errors of unix_endpoint::parse).
  static result<unix_listener> bind(io_context& ctx, std::string_view local,
                                    unix_listen_options options = {});

  using accept_awaitable = detail::accept_awaitable<unix_stream>;
  [[nodiscard]] accept_awaitable accept() noexcept { return core_.accept<unix_stream>(); }

  const unix_endpoint& local_endpoint() const noexcept { return local_; }
  bool is_open() const noexcept { return core_.is_open(); }
  int native_handle() const noexcept { return core_.native_handle(); }
  // Stops listening at once, then removes the socket file (see above).
  void close() noexcept {
    core_.close();
    file_.release();
  }

private:
  unix_listener(detail::listener_core core, const unix_endpoint& local,
                detail::socket_file file) noexcept
      : core_(std::move(core)), local_(local), file_(std::move(file)) {}

  detail::listener_core core_;
  unix_endpoint local_;
  detail::socket_file file_; // declared after core_: removed after it stopped listening
};

} // namespace couring
