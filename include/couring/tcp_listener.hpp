#pragma once

// tcp_listener: a listening TCP socket; accept() is an io_uring request.

#include <sys/socket.h>

#include <couring/detail/io_awaitable.hpp>
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

class tcp_listener {
public:
  tcp_listener() noexcept = default;
  tcp_listener(tcp_listener&& other) noexcept
      : ctx_(other.ctx_), fd_(std::exchange(other.fd_, -1)), local_(other.local_) {}
  tcp_listener& operator=(tcp_listener&& other) noexcept {
    if (this != &other) {
      close();
      ctx_ = other.ctx_;
      fd_ = std::exchange(other.fd_, -1);
      local_ = other.local_;
    }
    return *this;
  }
  tcp_listener(const tcp_listener&) = delete;
  tcp_listener& operator=(const tcp_listener&) = delete;
  ~tcp_listener() { close(); }

  // socket + setsockopt + bind + listen. Port 0 picks a free port: see
  // local_endpoint(). Errors (EADDRINUSE, EACCES, ...) are results.
  static result<tcp_listener> bind(io_context& ctx, const endpoint& local,
                                   listen_options options = {});

  class accept_awaitable : public detail::io_awaitable<accept_awaitable> {
  public:
    accept_awaitable(io_context& ctx, int fd) noexcept : io_awaitable(ctx), fd_(fd) {
      this->on_complete = &on_accepted;
    }
    accept_awaitable(accept_awaitable&& o) noexcept : io_awaitable(std::move(o)), fd_(o.fd_) {}
    void prepare(io_uring_sqe* sqe) noexcept {
      peer_len_ = sizeof peer_;
      io_uring_prep_accept(sqe, fd_, reinterpret_cast<sockaddr*>(&peer_), &peer_len_, SOCK_CLOEXEC);
    }
    result<tcp_stream> make_result(int res) noexcept {
      if (res < 0)
        return errno_code(res);
      return tcp_stream(*this->ctx, res);
    }
    // The peer's address, valid after a successful accept.
    result<endpoint> peer() const {
      return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&peer_), peer_len_);
    }

  private:
    static void on_accepted(detail::operation* op) noexcept {
      // An accept that lands while the context is torn down has nobody to
      // hand its socket to.
      if (op->ctx->shutting_down() && op->res >= 0)
        ::close(op->res);
      detail::resume_waiter(op);
    }

    int fd_;
    sockaddr_storage peer_{};
    socklen_t peer_len_ = sizeof peer_;
  };

  [[nodiscard]] accept_awaitable accept() noexcept { return {*ctx_, fd_}; }

  endpoint local_endpoint() const noexcept { return local_; }
  bool is_open() const noexcept { return fd_ >= 0; }
  int native_handle() const noexcept { return fd_; }
  // Closes the socket; accepts in flight complete with operation_canceled.
  void close() noexcept;

private:
  tcp_listener(io_context& ctx, int fd, const endpoint& local) noexcept
      : ctx_(&ctx), fd_(fd), local_(local) {}

  io_context* ctx_ = nullptr;
  int fd_ = -1;
  endpoint local_;
};

} // namespace couring
