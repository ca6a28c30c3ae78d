#pragma once

// registered_buffers: memory registered with the ring once
// (io_uring_register_buffers), so that reads and writes into it skip the
// per-request page pinning and mapping the kernel otherwise does
// (IORING_OP_READ_FIXED / WRITE_FIXED).
//
//   couring::registered_buffers bufs(ctx, 4, 64 * 1024); // 4 buffers of 64 KiB
//   auto n = co_await couring::read_fixed(stream, bufs, bufs.buffer(0));
//   auto w = co_await couring::write_fixed(stream, bufs, bufs.buffer(0).first(*n));
//
// A fixed operation's buffer must lie inside one of the buffers (any
// sub-span of one will do); anything else fails with error::not_registered
// without reaching the kernel. A ring holds one set of registered buffers at
// a time: a second registered_buffers on the same context throws
// std::system_error (EBUSY) until the first is destroyed. The memory belongs
// to the object: destroy it only once no fixed operation on it is in flight
// (like any buffer an operation uses). An operation made before its set was
// destroyed (or replaced by another) and started after fails with
// error::not_registered.
//
// Streams: read_fixed/write_fixed move up to the span's size (the count may
// be short) with the stream's read/write order rules. On a socket the
// kernel writes through write(2) semantics, which cannot pass MSG_NOSIGNAL:
// write_fixed on a socket therefore sets a default SIGPIPE disposition to
// SIG_IGN, as streams on pipes do (see stream.hpp). Files: positional
// read_fixed_at/write_fixed_at. Fixed operations allocate nothing.

#include <cstddef>
#include <cstdint>
#include <span>

#include <couring/detail/io_awaitable.hpp>
#include <couring/error.hpp>
#include <couring/file.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>
#include <couring/stream.hpp>

namespace couring {

class registered_buffers {
public:
  // count buffers of size bytes each, in one page-aligned region, registered
  // with ctx's ring. Throws std::invalid_argument for count == 0, size == 0
  // or size > 1 GiB (the kernel's limit per buffer), std::system_error when
  // the kernel refuses (EBUSY: the ring has buffers registered already;
  // ENOMEM: RLIMIT_MEMLOCK).
  registered_buffers(io_context& ctx, std::size_t count, std::size_t size);
  ~registered_buffers();
  registered_buffers(const registered_buffers&) = delete;
  registered_buffers& operator=(const registered_buffers&) = delete;

  std::size_t count() const noexcept { return count_; }
  std::size_t buffer_size() const noexcept { return size_; }
  std::span<std::byte> buffer(std::size_t i) const noexcept { return {base_ + i * size_, size_}; }
  // The index of the buffer that holds all of [data, data + len), or -1.
  int index_of(const void* data, std::size_t len) const noexcept {
    const auto* p = static_cast<const std::byte*>(data);
    if (p < base_ || p >= base_ + count_ * size_)
      return -1;
    const auto i = static_cast<std::size_t>(p - base_) / size_;
    if (p + len > base_ + (i + 1) * size_)
      return -1;
    return static_cast<int>(i);
  }
  detail::ring* ring_ptr() const noexcept { return ring_; }

private:
  detail::ring* ring_;
  std::byte* base_ = nullptr;
  std::size_t count_;
  std::size_t size_;
};

namespace detail {

// One READ_FIXED (Writing = false) or WRITE_FIXED request: on a stream
// (Positional = false: current position, the stream's side order) or a file
// (at an offset, no order).
template <bool Writing, bool Positional>
class fixed_awaitable : public io_awaitable<fixed_awaitable<Writing, Positional>> {
  using base = io_awaitable<fixed_awaitable<Writing, Positional>>;

public:
  using span_type = std::conditional_t<Writing, std::span<const std::byte>, std::span<std::byte>>;
  fixed_awaitable(const object_handle& h, const registered_buffers& bufs, span_type buf,
                  std::uint64_t offset) noexcept
      : base(h.ring_ptr(), h.state(), side_for(h, bufs, buf)), buf_(buf), offset_(offset),
        index_(bufs.ring_ptr() == h.ring_ptr() || h.ring_ptr() == nullptr
                   ? bufs.index_of(buf.data(), buf.size())
                   : -1),
        buffers_generation_(bufs.ring_ptr()->buffers_generation()) {}
  fixed_awaitable(fixed_awaitable&& o) noexcept
      : base(std::move(o)), buf_(o.buf_), offset_(o.offset_), index_(o.index_),
        buffers_generation_(o.buffers_generation_) {}

  // A buffer outside the registered ones fails here, before any request
  // (a closed or never-opened object reports that instead). Both ways in:
  // co_await, and wrappers (with_timeout, with_stop_token) that call start().
  bool await_ready() noexcept { return rejected(); }
  bool start(std::coroutine_handle<> awaiting, cancel_scope* s) {
    return !rejected() && base::start(awaiting, s);
  }
  result<std::size_t> await_resume() noexcept {
    if (not_registered_)
      return make_error_code(error::not_registered);
    return byte_count(this->res);
  }

  void prepare(io_uring_sqe* sqe) noexcept {
    const auto n = static_cast<unsigned>(std::min<std::size_t>(buf_.size(), 0x7ffff000));
    // Streams: offset -1 is the current position (ignored by sockets, pipes).
    const auto off = Positional ? offset_ : static_cast<__u64>(-1);
    if constexpr (Writing)
      io_uring_prep_write_fixed(sqe, this->object->fd, buf_.data(), n, off, index_);
    else
      io_uring_prep_read_fixed(sqe, this->object->fd, buf_.data(), n, off, index_);
  }
  static result<std::size_t> make_result(int res) noexcept { return byte_count(res); }

private:
  bool rejected() noexcept {
    if (this->object == nullptr || this->object->closed)
      return false; // EBADF or operation_canceled, as for any operation
    // Inside a buffer of a set that is still registered (unregistering, or
    // registering another set, changes the ring's generation).
    if (index_ >= 0 && this->owner_ring->buffers_generation() == buffers_generation_)
      return false;
    not_registered_ = true;
    this->side = nullptr; // waits nowhere
    return true;
  }
  static object_side* side_for(const object_handle& h, const registered_buffers&,
                               span_type) noexcept {
    if (Positional || h.state() == nullptr)
      return nullptr;
    return Writing ? &h.state()->write_side : &h.state()->read_side;
  }

  span_type buf_;
  std::uint64_t offset_;
  int index_;
  std::uint32_t buffers_generation_; // the ring's, when the buffers were bufs
  bool not_registered_ = false;
};

} // namespace detail

using read_fixed_awaitable = detail::fixed_awaitable<false, false>;
using write_fixed_awaitable = detail::fixed_awaitable<true, false>;
using read_fixed_at_awaitable = detail::fixed_awaitable<false, true>;
using write_fixed_at_awaitable = detail::fixed_awaitable<true, true>;

// Up to buf.size() bytes from s into buf (inside bufs); 0 means end of stream.
[[nodiscard]] inline read_fixed_awaitable read_fixed(stream& s, const registered_buffers& bufs,
                                                     std::span<std::byte> buf) noexcept {
  return {s.handle(), bufs, buf, 0};
}
// Up to buf.size() bytes of buf (inside bufs) to s; the count may be short.
[[nodiscard]] write_fixed_awaitable write_fixed(stream& s, const registered_buffers& bufs,
                                                std::span<const std::byte> buf) noexcept;
[[nodiscard]] inline read_fixed_at_awaitable read_fixed_at(file& f, const registered_buffers& bufs,
                                                           std::span<std::byte> buf,
                                                           std::uint64_t offset) noexcept {
  return {f.handle(), bufs, buf, offset};
}
[[nodiscard]] inline write_fixed_at_awaitable write_fixed_at(file& f,
                                                             const registered_buffers& bufs,
                                                             std::span<const std::byte> buf,
                                                             std::uint64_t offset) noexcept {
  return {f.handle(), bufs, buf, offset};
}

} // namespace couring
