#pragma once

// stream: a connected byte stream whose reads and writes are io_uring
// requests. tcp_stream, the ends of a pipe (and every later stream type) are
// streams; code written against stream& works for all of them.
// read/write/write_all/read_exactly return awaitables that live in the
// caller's frame: awaiting them allocates nothing.
//
// Sockets move bytes with IORING_OP_SEND/RECV (sends with MSG_NOSIGNAL: a
// reset peer is EPIPE, never SIGPIPE). Other descriptors (pipes, FIFOs,
// character devices) use IORING_OP_READ/WRITE at the current position; the
// choice is made once, when the stream is constructed. Writing to a pipe
// whose reader is gone raises SIGPIPE in the writing thread, and there is no
// flag to prevent it: constructing a stream on a descriptor that is not a
// socket therefore sets SIGPIPE to SIG_IGN for the process, if (and only if)
// its disposition is still the default (which would kill the process). The
// write then fails with EPIPE. A handler or an ignore you installed is kept.
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

#include <algorithm>
#include <cstddef>
#include <span>
#include <string_view>
#include <system_error>

#include <sys/socket.h>

#include <couring/buffer_pool.hpp>
#include <couring/detail/io_awaitable.hpp>
#include <couring/detail/pool_receive.hpp>
#include <couring/detail/transfer_all.hpp>
#include <couring/error.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>
#include <couring/unique_fd.hpp>

namespace couring {

namespace detail {
// A transfer's cqe->res: a byte count, or a negative errno.
inline result<std::size_t> byte_count(int res) noexcept {
  if (res < 0)
    return errno_code(res);
  return static_cast<std::size_t>(res);
}

// One send (Sending) or receive of len bytes at data on s's descriptor.
template <bool Sending, class Pointer>
void prep_stream_transfer(io_uring_sqe* sqe, const object_state* s, Pointer data,
                          std::size_t len) noexcept {
  const auto n = static_cast<unsigned>(std::min<std::size_t>(len, 0x7ffff000));
  if (s->use_read_write) [[unlikely]] {
    // Not a socket: offset -1 is "the current position" (ignored by pipes).
    if constexpr (Sending)
      io_uring_prep_write(sqe, s->fd, data, n, static_cast<__u64>(-1));
    else
      io_uring_prep_read(sqe, s->fd, data, n, static_cast<__u64>(-1));
  } else if constexpr (Sending) { // MSG_NOSIGNAL: a reset peer is EPIPE, never SIGPIPE
    io_uring_prep_send(sqe, s->fd, data, n, MSG_NOSIGNAL);
  } else {
    io_uring_prep_recv(sqe, s->fd, data, n, 0);
  }
}

// IORING_OP_SEND_ZC of the whole rest (MSG_WAITALL: the kernel loops over
// short sends itself, so a large buffer costs one request and one
// notification). Its first CQE carries IORING_CQE_F_MORE; the buffer is the
// kernel's until the notification CQE (transfer_all waits for it).
inline void prep_zero_copy_send(io_uring_sqe* sqe, int fd, const std::byte* data,
                                std::size_t len) noexcept {
  const auto n = static_cast<unsigned>(std::min<std::size_t>(len, 0x7ffff000));
  io_uring_prep_send_zc(sqe, fd, data, n, MSG_NOSIGNAL | MSG_WAITALL, 0);
}

// SIGPIPE from SIG_DFL to SIG_IGN, once per process (see the top of stream.hpp).
void ignore_default_sigpipe() noexcept;
} // namespace detail

class stream {
public:
  stream() noexcept = default;
  // Adopts fd, a connected stream socket or any other byte stream (a pipe
  // end, a FIFO, a terminal); closes it when destroyed. Which it is is asked
  // of the kernel once (fstat).
  stream(io_context& ctx, int fd);

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
      detail::prep_stream_transfer<Sending>(sqe, this->object, buf_.data(), buf_.size());
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
  // coroutine after each short transfer (detail/transfer_all.hpp). It holds
  // its side throughout. Cancellation or a close stops it between two
  // requests; the bytes already moved stay moved (see transferred()).
  template <bool Sending>
  class transfer_all_awaitable
      : public detail::transfer_all<transfer_all_awaitable<Sending>, Sending> {
    using base = detail::transfer_all<transfer_all_awaitable<Sending>, Sending>;

  public:
    using span_type = typename base::span_type;
    transfer_all_awaitable(const detail::object_handle& h, span_type buf) noexcept
        : base(h.ring_ptr(), h.state(), transfer_awaitable<Sending>::side_of(h.state()), buf) {}
    transfer_all_awaitable(transfer_all_awaitable&& o) noexcept : base(std::move(o)) {}

    template <class Pointer>
    void prepare_part(io_uring_sqe* sqe, int, Pointer data, std::size_t len, std::size_t) noexcept {
      if constexpr (Sending) {
        const std::size_t zc = this->owner_ring->zero_copy_threshold();
        // TCP streams on real descriptors only (object_state says why).
        if (zc != 0 && len >= zc && this->object->zero_copy_capable) {
          detail::prep_zero_copy_send(sqe, this->object->fd, data, len);
          return;
        }
      }
      detail::prep_stream_transfer<Sending>(sqe, this->object, data, len);
    }
    static std::error_code early_end() noexcept { return make_error_code(error::end_of_stream); }
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

  // Receives into a buffer the kernel picks from pool when data arrives (one
  // multishot receive per stream, buffer_pool.hpp): a lease on the next
  // chunk, in order; an empty lease at end of stream. Once a stream receives
  // from a pool it reads only that way (a read() fails with
  // invalid_argument). Sockets only: on a pipe it fails with ENOTSOCK.
  [[nodiscard]] detail::pool_receive_awaitable receive(buffer_pool& pool) noexcept {
    return {handle_, pool.state()};
  }

  // Half-close: the peer reads end of stream; this side can still read.
  result<void> shutdown_write() noexcept;

  // Closes the stream (see the top of this header); idempotent.
  void close() noexcept { handle_.close(); }

  bool is_open() const noexcept { return handle_.is_open(); }
  // Gives the descriptor up without closing it, so that another context can
  // adopt it (runtime.hpp hands connections over this way); the stream is
  // then as if closed. std::logic_error while an operation is in flight.
  unique_fd release() { return unique_fd(handle_.release()); }
  // The descriptor, or -1 once closed (or for a direct descriptor, which has
  // none). Use it for socket options; closing it yourself breaks the
  // guarantees above.
  int native_handle() const noexcept { return handle_.is_direct() ? -1 : handle_.fd(); }
  // Whether the stream lives in the ring's file table only (a listener with
  // listen_options::direct_descriptors accepted it): its reads and writes are
  // requests on the slot; what needs a real descriptor (shutdown_write,
  // socket options, addresses) fails with error::direct_descriptor.
  bool is_direct() const noexcept { return handle_.is_direct(); }
  // The context the stream was opened on (a default-constructed stream has none).
  io_context& context() const noexcept { return handle_.ring_ptr()->context(); }
  // For operations built on top of streams (send_file).
  const detail::object_handle& handle() const noexcept { return handle_; }

protected:
  // For derived streams that know what fd is: no fstat.
  enum class kind { socket, other };
  stream(io_context& ctx, int fd, kind k);
  // For derived streams on a direct descriptor (a socket).
  stream(io_context& ctx, int slot, detail::direct_slot_t)
      : handle_(ctx.ring(), slot, detail::direct_slot) {}

  detail::object_handle handle_;
};

} // namespace couring
