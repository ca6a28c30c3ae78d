#pragma once

// stream: a connected byte-stream socket whose reads and writes are io_uring
// requests. tcp_stream (and every later stream type) is a stream; code written
// against stream& works for all of them. read/write/write_all/read_exactly
// return awaitables that live in the caller's frame: awaiting them allocates
// nothing.
//
// Order and overlap: reads are served one at a time in the order they were
// started, and so are writes (a write_all counts as one: nothing else is
// written until it is done). Two tasks writing one stream never interleave
// their bytes; a read and a write run at the same time.
//
// Closing: close() (or the destructor) ends every operation still waiting or
// in flight on the stream with operation_canceled -- a write_all or
// read_exactly stops between two requests -- and the descriptor is released
// only after the last of them has completed. An awaitable made before the
// close and awaited after it fails with EBADF.

#include <cstddef>
#include <span>
#include <string_view>
#include <system_error>

#include <sys/socket.h>

#include <couring/detail/io_awaitable.hpp>
#include <couring/error.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>

namespace couring {

namespace detail {
// A transfer's cqe->res: a byte count, or a negative errno.
inline result<std::size_t> byte_count(int res) noexcept {
  if (res < 0)
    return errno_code(res);
  return static_cast<std::size_t>(res);
}
} // namespace detail

class stream {
public:
  stream() noexcept = default;
  // Adopts fd, a connected stream socket; closes it when destroyed.
  stream(io_context& ctx, int fd) : handle_(ctx.ring(), fd) {}

  // --- awaitables -----------------------------------------------------------
  // One recv (Sending = false) or send (true) request.
  template <bool Sending>
  class transfer_awaitable : public detail::io_awaitable<transfer_awaitable<Sending>> {
    using base = detail::io_awaitable<transfer_awaitable<Sending>>;

  public:
    using span_type = std::conditional_t<Sending, std::span<const std::byte>, std::span<std::byte>>;
    transfer_awaitable(const detail::object_handle& h, span_type buf) noexcept
        : base(h.ring_ptr(), h.state(), side_of(h.state())), buf_(buf) {}
    transfer_awaitable(transfer_awaitable&& o) noexcept : base(std::move(o)), buf_(o.buf_) {}

    void prepare(io_uring_sqe* sqe) noexcept {
      if constexpr (Sending) // MSG_NOSIGNAL: a reset peer is EPIPE, never SIGPIPE
        io_uring_prep_send(sqe, this->object->fd, buf_.data(), buf_.size(), MSG_NOSIGNAL);
      else
        io_uring_prep_recv(sqe, this->object->fd, buf_.data(), buf_.size(), 0);
    }
    static result<std::size_t> make_result(int res) noexcept { return detail::byte_count(res); }

    static detail::object_side* side_of(detail::object_state* s) noexcept {
      if (s == nullptr)
        return nullptr;
      return Sending ? &s->write_side : &s->read_side;
    }

  private:
    span_type buf_;
  };
  using read_awaitable = transfer_awaitable<false>;
  using write_awaitable = transfer_awaitable<true>;

  // Sends (write_all) or receives (read_exactly) the whole buffer, one request
  // at a time, re-arming from the completion itself instead of resuming the
  // coroutine after each short transfer. It holds its side throughout.
  // Cancellation or a close stops it between two requests; the bytes already
  // moved stay moved (see transferred()).
  template <bool Sending>
  class transfer_all_awaitable : public detail::io_awaitable<transfer_all_awaitable<Sending>> {
    using base = detail::io_awaitable<transfer_all_awaitable<Sending>>;

  public:
    static constexpr bool single_request = false;
    using span_type = typename transfer_awaitable<Sending>::span_type;
    transfer_all_awaitable(const detail::object_handle& h, span_type buf) noexcept
        : base(h.ring_ptr(), h.state(), transfer_awaitable<Sending>::side_of(h.state())),
          buf_(buf) {
      this->on_complete = &step;
    }
    transfer_all_awaitable(transfer_all_awaitable&& o) noexcept
        : base(std::move(o)), buf_(o.buf_), done_(o.done_) {}

    bool await_ready() const noexcept { return buf_.empty(); }
    result<void> await_resume() noexcept {
      if (done_ == buf_.size())
        return {};
      if (this->res < 0)
        return errno_code(this->res);
      return make_error_code(error::end_of_stream);
    }
    // Bytes moved so far: after an error or a cancellation, exactly what the
    // kernel took from (or put into) the buffer.
    std::size_t transferred() const noexcept { return done_; }

    void prepare(io_uring_sqe* sqe) noexcept {
      const int fd = this->object->fd;
      if constexpr (Sending)
        io_uring_prep_send(sqe, fd, buf_.data() + done_, buf_.size() - done_, MSG_NOSIGNAL);
      else
        io_uring_prep_recv(sqe, fd, buf_.data() + done_, buf_.size() - done_, 0);
    }

  private:
    static void step(detail::operation* op) noexcept {
      auto* self = static_cast<transfer_all_awaitable*>(op);
      if (op->res > 0) {
        self->done_ += static_cast<std::size_t>(op->res);
        if (self->done_ < self->buf_.size()) {
          // Re-arm only on an open object whose scope is not cancelled: a
          // close or a cancel that came between two requests found nothing
          // of ours in flight, and is honoured here.
          if (op->object->closed || (op->scope != nullptr && op->scope->cancelled())) {
            op->res = -ECANCELED;
          } else {
            try {
              base::issue(op);
              return;
            } catch (const std::system_error& e) {
              op->res = -e.code().value();
            }
          }
        }
      }
      op->owner_ring->finish(op);
    }

    span_type buf_;
    std::size_t done_ = 0;
  };
  using write_all_awaitable = transfer_all_awaitable<true>;
  using read_exactly_awaitable = transfer_all_awaitable<false>;

  // Reads what is available, up to buf.size() bytes; 0 means end of stream.
  [[nodiscard]] read_awaitable read(std::span<std::byte> buf) noexcept { return {handle_, buf}; }
  // Sends up to buf.size() bytes; the count may be short.
  [[nodiscard]] write_awaitable write(std::span<const std::byte> buf) noexcept {
    return {handle_, buf};
  }
  [[nodiscard]] write_awaitable write(std::string_view text) noexcept {
    return write(std::as_bytes(std::span(text.data(), text.size())));
  }
  // Sends all of buf, looping over short sends.
  [[nodiscard]] write_all_awaitable write_all(std::span<const std::byte> buf) noexcept {
    return {handle_, buf};
  }
  [[nodiscard]] write_all_awaitable write_all(std::string_view text) noexcept {
    return write_all(std::as_bytes(std::span(text.data(), text.size())));
  }
  // Fills all of buf; error::end_of_stream if the peer closes first.
  [[nodiscard]] read_exactly_awaitable read_exactly(std::span<std::byte> buf) noexcept {
    return {handle_, buf};
  }

  // Half-close: the peer reads end of stream; this side can still read.
  result<void> shutdown_write() noexcept;

  // Closes the stream (see the top of this header); idempotent.
  void close() noexcept { handle_.close(); }

  bool is_open() const noexcept { return handle_.is_open(); }
  // The descriptor, or -1 once closed. Use it for socket options; closing it
  // yourself breaks the guarantees above.
  int native_handle() const noexcept { return handle_.fd(); }
  // The context the stream was opened on (a default-constructed stream has none).
  io_context& context() const noexcept { return handle_.ring_ptr()->context(); }

protected:
  detail::object_handle handle_;
};

} // namespace couring
