#pragma once

// tcp_listener: a listening TCP socket.
//
// One multishot IORING_OP_ACCEPT request serves every accept(): each new
// connection is one CQE, handed to the first waiting accept() or queued until
// one comes. The machinery is in lib/detail/acceptor.hpp.

#include <coroutine>

#include <sys/socket.h>

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
};

namespace detail {
class acceptor;
}

class tcp_listener {
public:
  tcp_listener() noexcept;
  tcp_listener(tcp_listener&& other) noexcept;
  tcp_listener& operator=(tcp_listener&& other) noexcept;
  tcp_listener(const tcp_listener&) = delete;
  tcp_listener& operator=(const tcp_listener&) = delete;
  ~tcp_listener();

  // socket + setsockopt + bind + listen. Port 0 picks a free port: see
  // local_endpoint(). Errors (EADDRINUSE, EACCES, ...) are results.
  static result<tcp_listener> bind(io_context& ctx, const endpoint& local,
                                   listen_options options = {});

  // Waits for a connection. Several accepts may wait at once; they are served
  // in order. Cancellable (with_timeout, with_stop_token, when_any); closing
  // the listener ends every waiting accept with operation_canceled.
  class accept_awaitable : public detail::operation {
  public:
    static constexpr bool single_request = false;

    accept_awaitable(detail::acceptor* a, detail::ring* r) noexcept;
    accept_awaitable(accept_awaitable&& other) noexcept;
    accept_awaitable& operator=(accept_awaitable&&) = delete;
    ~accept_awaitable();

    bool await_ready() noexcept;
    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> awaiting) {
      return start(awaiting, detail::scope_of(awaiting));
    }
    // Not noexcept: the new stream's state record may need memory.
    result<tcp_stream> await_resume();
    bool start(std::coroutine_handle<> awaiting, detail::cancel_scope* s);

  private:
    friend class detail::acceptor;
    detail::acceptor* acceptor_;
    accept_awaitable* prev_ = nullptr; // in the acceptor's list of waiters
    accept_awaitable* next_ = nullptr;
    bool linked_ = false;
  };

  [[nodiscard]] accept_awaitable accept() noexcept;

  endpoint local_endpoint() const noexcept { return local_; }
  bool is_open() const noexcept { return acceptor_ != nullptr; }
  int native_handle() const noexcept;
  // Stops listening at once (a connect from now on is refused, and the port
  // can be bound again when SO_REUSEADDR is set); waiting accepts complete
  // with operation_canceled and connections accepted but not yet handed out
  // are closed. The descriptor itself is released once the accept request
  // has completed.
  void close() noexcept;

private:
  tcp_listener(detail::acceptor* a, io_context& ctx, const endpoint& local) noexcept;

  detail::acceptor* acceptor_ = nullptr;
  io_context* ctx_ = nullptr;
  endpoint local_;
};

} // namespace couring
