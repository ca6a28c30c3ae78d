#pragma once

// tcp_stream: a connected TCP socket whose reads and writes are io_uring
// requests. read/write/write_all/read_exactly return awaitables that live in
// the caller's frame: awaiting them allocates nothing.

#include <cstddef>
#include <optional>
#include <span>
#include <string_view>

#include <couring/detail/io_awaitable.hpp>
#include <couring/endpoint.hpp>
#include <couring/error.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>
#include <couring/task.hpp>

namespace couring {

struct connect_options {
  std::optional<endpoint> local; // bind here before connecting (the seed's client does)
  bool reuse_address = true;     // SO_REUSEADDR on that bind, so a rerun can reuse the port
  bool no_delay = false;         // TCP_NODELAY
};

namespace detail {
// A transfer's cqe->res: a byte count, or a negative errno.
inline result<std::size_t> byte_count(int res) noexcept {
  if (res < 0)
    return errno_code(res);
  return static_cast<std::size_t>(res);
}
} // namespace detail

class tcp_stream {
public:
  tcp_stream() noexcept = default;
  // Adopts fd, a connected stream socket; closes it when destroyed.
  tcp_stream(io_context& ctx, int fd) noexcept : ctx_(&ctx), fd_(fd) {}
  tcp_stream(tcp_stream&& other) noexcept : ctx_(other.ctx_), fd_(std::exchange(other.fd_, -1)) {}
  tcp_stream& operator=(tcp_stream&& other) noexcept {
    if (this != &other) {
      close();
      ctx_ = other.ctx_;
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  tcp_stream(const tcp_stream&) = delete;
  tcp_stream& operator=(const tcp_stream&) = delete;
  ~tcp_stream() { close(); }

  // Opens a socket, binds it to options.local if given, and connects.
  static task<result<tcp_stream>> connect(io_context& ctx, endpoint remote,
                                          connect_options options = {});

  // --- awaitables -----------------------------------------------------------
  class read_awaitable : public detail::io_awaitable<read_awaitable> {
  public:
    static constexpr detail::stream_use use = detail::stream_use::read;
    int fd() const noexcept { return fd_; }
    read_awaitable(io_context& ctx, int fd, std::span<std::byte> buf) noexcept
        : io_awaitable(ctx), fd_(fd), buf_(buf) {}
    void prepare(io_uring_sqe* sqe) noexcept {
      io_uring_prep_recv(sqe, fd_, buf_.data(), buf_.size(), 0);
    }
    static result<std::size_t> make_result(int res) noexcept { return detail::byte_count(res); }

  private:
    int fd_;
    std::span<std::byte> buf_;
  };

  class write_awaitable : public detail::io_awaitable<write_awaitable> {
  public:
    static constexpr detail::stream_use use = detail::stream_use::write;
    int fd() const noexcept { return fd_; }
    write_awaitable(io_context& ctx, int fd, std::span<const std::byte> buf) noexcept
        : io_awaitable(ctx), fd_(fd), buf_(buf) {}
    void prepare(io_uring_sqe* sqe) noexcept {
      // MSG_NOSIGNAL: a reset peer is an EPIPE result, never a SIGPIPE.
      io_uring_prep_send(sqe, fd_, buf_.data(), buf_.size(), MSG_NOSIGNAL);
    }
    static result<std::size_t> make_result(int res) noexcept { return detail::byte_count(res); }

  private:
    int fd_;
    std::span<const std::byte> buf_;
  };

  // Sends (write_all) or receives (read_exactly) the whole buffer, one request
  // at a time, re-arming from the completion itself instead of resuming the
  // coroutine after each short transfer. Cancellation stops it between two
  // requests; the bytes already moved stay moved (see transferred()).
  template <bool Sending>
  class transfer_all_awaitable : public detail::io_awaitable<transfer_all_awaitable<Sending>> {
    using base = detail::io_awaitable<transfer_all_awaitable<Sending>>;

  public:
    static constexpr bool single_request = false;
    static constexpr detail::stream_use use =
        Sending ? detail::stream_use::write : detail::stream_use::read;
    int fd() const noexcept { return fd_; }
    using span_type = std::conditional_t<Sending, std::span<const std::byte>, std::span<std::byte>>;
    transfer_all_awaitable(io_context& ctx, int fd, span_type buf) noexcept
        : base(ctx), fd_(fd), buf_(buf) {
      this->on_complete = &step;
    }
    transfer_all_awaitable(transfer_all_awaitable&& o) noexcept
        : base(std::move(o)), fd_(o.fd_), buf_(o.buf_), done_(o.done_) {}

    bool await_ready() const noexcept { return buf_.empty(); }
    result<void> await_resume() noexcept {
      this->release_stream();
      if (done_ == buf_.size())
        return {};
      if (this->res < 0)
        return errno_code(this->res);
      return make_error_code(error::end_of_stream);
    }
    std::size_t transferred() const noexcept { return done_; }

    void prepare(io_uring_sqe* sqe) noexcept {
      if constexpr (Sending)
        io_uring_prep_send(sqe, fd_, buf_.data() + done_, buf_.size() - done_, MSG_NOSIGNAL);
      else
        io_uring_prep_recv(sqe, fd_, buf_.data() + done_, buf_.size() - done_, 0);
    }

  private:
    static void step(detail::operation* op) noexcept {
      auto* self = static_cast<transfer_all_awaitable*>(op);
      if (op->res > 0 && !op->ctx->shutting_down()) {
        self->done_ += static_cast<std::size_t>(op->res);
        if (self->done_ < self->buf_.size()) {
          // A cancel that arrived between two requests found nothing in
          // flight: honour it here rather than start the next one.
          if (op->scope != nullptr && op->scope->cancelled()) {
            op->res = -ECANCELED;
          } else {
            try {
              self->submit();
              return;
            } catch (const std::system_error& e) {
              op->res = -e.code().value();
            }
          }
        }
      }
      detail::resume_waiter(op);
    }

    int fd_;
    span_type buf_;
    std::size_t done_ = 0;
  };
  using write_all_awaitable = transfer_all_awaitable<true>;
  using read_exactly_awaitable = transfer_all_awaitable<false>;

  class connect_awaitable : public detail::io_awaitable<connect_awaitable> {
  public:
    connect_awaitable(io_context& ctx, int fd, const endpoint& remote) noexcept
        : io_awaitable(ctx), fd_(fd), remote_(remote) {}
    void prepare(io_uring_sqe* sqe) noexcept {
      io_uring_prep_connect(sqe, fd_, remote_.data(), remote_.size());
    }
    static result<void> make_result(int res) noexcept {
      if (res < 0)
        return errno_code(res);
      return {};
    }

  private:
    int fd_;
    endpoint remote_; // the kernel reads the address from here
  };

  // Reads what is available, up to buf.size() bytes; 0 means end of stream.
  [[nodiscard]] read_awaitable read(std::span<std::byte> buf) noexcept { return {*ctx_, fd_, buf}; }
  // Sends up to buf.size() bytes; the count may be short.
  [[nodiscard]] write_awaitable write(std::span<const std::byte> buf) noexcept {
    return {*ctx_, fd_, buf};
  }
  [[nodiscard]] write_awaitable write(std::string_view text) noexcept {
    return write(std::as_bytes(std::span(text.data(), text.size())));
  }
  // Sends all of buf, looping over short sends.
  [[nodiscard]] write_all_awaitable write_all(std::span<const std::byte> buf) noexcept {
    return {*ctx_, fd_, buf};
  }
  [[nodiscard]] write_all_awaitable write_all(std::string_view text) noexcept {
    return write_all(std::as_bytes(std::span(text.data(), text.size())));
  }
  // Fills all of buf; error::end_of_stream if the peer closes first.
  [[nodiscard]] read_exactly_awaitable read_exactly(std::span<std::byte> buf) noexcept {
    return {*ctx_, fd_, buf};
  }

  // Half-close: the peer reads end of stream; this side can still read.
  result<void> shutdown_write() noexcept;

  // Closes the socket. Operations still in flight on it are cancelled first
  // (they complete with operation_canceled) and the descriptor is released
  // once they are: close is never a use-after-free of the descriptor.
  void close() noexcept;

  bool is_open() const noexcept { return fd_ >= 0; }
  int native_handle() const noexcept { return fd_; }
  io_context& context() const noexcept { return *ctx_; }
  result<endpoint> local_endpoint() const;
  result<endpoint> remote_endpoint() const;
  result<void> set_no_delay(bool on) noexcept;

private:
  io_context* ctx_ = nullptr;
  int fd_ = -1;
};

} // namespace couring
