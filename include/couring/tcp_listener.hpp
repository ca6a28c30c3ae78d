#pragma once

// tcp_listener: a listening TCP socket.
//
// One multishot IORING_OP_ACCEPT request serves every accept(): each new
// connection is one CQE, handed to the first waiting accept() or queued until
// one comes. The machinery, shared with unix_listener, is in
// lib/detail/acceptor.hpp.

#include <coroutine>

#include <sys/socket.h>

#include <couring/detail/listener.hpp>
#include <couring/detail/ring.hpp>
#include <couring/endpoint.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>
#include <couring/task.hpp>
#include <couring/tcp_stream.hpp>

namespace couring {

struct listen_options {
  int backlog = SOMAXCONN;
  bool reuse_address = true; // SO_REUSEADDR: restart while old connections sit in TIME_WAIT
  bool reuse_port = false;   // SO_REUSEPORT: several listeners share the port
  // Accepted connections go straight into the ring's file table
  // (IORING_FILE_INDEX_ALLOC) and never get a descriptor: no fd table
  // lookups per request, no descriptor limit. The streams are is_direct():
  // no socket options, addresses or shutdown_write on them (they fail with
  // error::direct_descriptor). io_context_options::direct_descriptor_slots
  // bounds how many are open at once: while the table is full, accept()
  // waits and connections stay in the kernel's backlog (bound the wait with
  // with_timeout); it goes on as soon as a stream is closed. Ignored on the
  // epoll backend (plain descriptors).
  bool direct_descriptors = false;
};

class tcp_listener {
public:
  tcp_listener() noexcept = default;

  // socket + setsockopt + bind + listen. Port 0 picks a free port: see
  // local_endpoint(). Errors (EADDRINUSE, EACCES, ...) are results.
  static result<tcp_listener> bind(io_context& ctx, const endpoint& local,
                                   listen_options options = {});

  // Waits for a connection. Several accepts may wait at once; they are served
  // in order. Cancellable (with_timeout, with_stop_token, when_any); closing
  // the listener ends every waiting accept with operation_canceled.
  using accept_awaitable = detail::accept_awaitable<tcp_stream>;
  [[nodiscard]] accept_awaitable accept() noexcept { return core_.accept<tcp_stream>(); }

  endpoint local_endpoint() const noexcept { return local_; }
  bool is_open() const noexcept { return core_.is_open(); }
  int native_handle() const noexcept { return core_.native_handle(); }
  // Stops listening at once (a connect from now on is refused, and the port
  // can be bound again when SO_REUSEADDR is set); waiting accepts complete
  // with operation_canceled and connections accepted but not yet handed out
  // are closed. The descriptor itself is released once the accept request
  // has completed.
  void close() noexcept { core_.close(); }

private:
  tcp_listener(detail::listener_core core, const endpoint& local) noexcept
      : core_(std::move(core)), local_(local) {}

  detail::listener_core core_;
  endpoint local_;
};

} // namespace couring
