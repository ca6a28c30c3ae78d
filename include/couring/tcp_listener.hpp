#pragma once

// tcp_listener: a listening TCP socket.
//
// Where the kernel supports it (5.19+), one multishot IORING_OP_ACCEPT request
// serves every accept(): each new connection is one CQE, handed to the first
// waiting accept() or queued until one comes. When the multishot request ends
// (a CQE without IORING_CQE_F_MORE: an error such as EMFILE, or the kernel's
// choice) the listener re-arms it -- after a back-off on EMFILE/ENFILE/ENOMEM,
// so that it never spins. Older kernels get one single-shot accept at a time
// through the same path.

#include <cstddef>
#include <deque>
#include <memory>

#include <sys/socket.h>

#include <couring/detail/operation.hpp>
#include <couring/endpoint.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>
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

    explicit accept_awaitable(detail::acceptor* a) noexcept;
    accept_awaitable(accept_awaitable&& other) noexcept;
    accept_awaitable& operator=(accept_awaitable&&) = delete;
    ~accept_awaitable();

    bool await_ready() noexcept;
    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> awaiting) {
      return start(awaiting, detail::scope_of(awaiting));
    }
    result<tcp_stream> await_resume() noexcept;
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
  bool is_open() const noexcept;
  int native_handle() const noexcept;
  // Closes the socket; waiting accepts complete with operation_canceled and
  // connections accepted but not yet handed out are closed.
  void close() noexcept;

private:
  tcp_listener(detail::acceptor* a, const endpoint& local) noexcept;

  detail::acceptor* acceptor_ = nullptr;
  io_context* ctx_ = nullptr;
  endpoint local_;
};

namespace detail {

// The state behind a listener, on the heap so that it stays put while the
// listener object moves and outlives it until its last CQE has been reaped.
class acceptor {
public:
  acceptor(io_context& ctx, int fd) noexcept;
  acceptor(const acceptor&) = delete;
  acceptor& operator=(const acceptor&) = delete;

  int fd() const noexcept { return fd_; }
  io_context& context() const noexcept { return *ctx_; }

  // From the listener: close the socket, fail the waiters, and delete this
  // once no request of ours is in flight any more.
  void close_and_release() noexcept;

  // From accept_awaitable.
  bool try_take(int& result) noexcept;
  void add_waiter(tcp_listener::accept_awaitable* w);
  void remove_waiter(tcp_listener::accept_awaitable* w) noexcept;

private:
  struct accept_record : operation {
    acceptor* owner;
  };
  struct backoff_record : operation {
    acceptor* owner;
    __kernel_timespec ts{};
  };

  static void on_accept(operation* op) noexcept;
  static void on_backoff(operation* op) noexcept;
  static void on_waiter_cancel(operation* op) noexcept;
  void arm();
  void complete(tcp_listener::accept_awaitable* w, int res) noexcept;
  void end_waiter(tcp_listener::accept_awaitable* w, int err) noexcept;
  void fail_all_waiters(int err) noexcept;
  void maybe_delete() noexcept;

  io_context* ctx_;
  int fd_;
  accept_record accept_op_{};
  backoff_record backoff_op_{};
  bool accept_armed_ = false;
  bool backoff_armed_ = false;
  bool paused_ = false; // multishot cancelled because nobody takes the queue
  bool released_ = false;
  bool dispatching_ = false;
  bool multishot_;
  unsigned backoff_ms_ = 0;
  std::deque<int> ready_; // accepted descriptors (>= 0) or errors (< 0)
  tcp_listener::accept_awaitable* first_waiter_ = nullptr;
  tcp_listener::accept_awaitable* last_waiter_ = nullptr;
};

} // namespace detail

} // namespace couring
