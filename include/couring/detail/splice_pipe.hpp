#pragma once

// What the splice-based transfers (send_file, relay) share: the pipe their
// bytes stay in between the two splices, and the two splices themselves.
// Bytes go from a descriptor into the pipe and from the pipe into a socket
// without ever being copied to user space.
//
// The pipe belongs to one operation: made when its awaitable is made, closed
// when the awaitable goes away, so that what a failed transfer leaves in it
// can never leak into the next one. Two descriptors per transfer in flight.

#include <coroutine>
#include <cstddef>

#include <liburing.h>

#include <couring/detail/io_awaitable.hpp>
#include <couring/detail/ring.hpp>

namespace couring::detail {

class splice_pipe {
public:
  // Makes the pipe and asks for wanted bytes of capacity (F_SETPIPE_SZ; the
  // kernel's default when refused). A failure is kept in error(), never
  // thrown: the operation reports it when awaited.
  explicit splice_pipe(std::size_t wanted) noexcept;
  // No pipe (an operation that will move nothing).
  splice_pipe() noexcept = default;
  splice_pipe(splice_pipe&& o) noexcept;
  splice_pipe& operator=(splice_pipe&&) = delete;
  ~splice_pipe();

  // errno of making the pipe, 0 if it exists.
  int error() const noexcept { return error_; }
  int read_end() const noexcept { return fds_[0]; }
  int write_end() const noexcept { return fds_[1]; }
  // The capacity in bytes. A socket's bytes fill it a fragment per slot
  // (page), so it may hold fewer bytes than this.
  std::size_t size() const noexcept { return size_; }

private:
  int fds_[2] = {-1, -1};
  int error_ = 0;
  std::size_t size_ = 0;
};

// The longest splice the SQE's 32-bit length allows.
inline unsigned splice_length(std::size_t len) noexcept {
  return static_cast<unsigned>(len < 0x7ffff000 ? len : 0x7ffff000);
}

// Pipe to the descriptor of `to` (a socket, a pipe): at most len bytes of
// what the pipe holds. arm() with `to` as the object marks a direct
// descriptor's SQE (IOSQE_FIXED_FILE applies to sqe->fd, which is `to`).
inline void prep_splice_out(io_uring_sqe* sqe, const splice_pipe& p, const object_state* to,
                            std::size_t len, unsigned flags) noexcept {
  io_uring_prep_splice(sqe, p.read_end(), -1, to->fd, -1, splice_length(len), flags);
}

// The descriptor of `from` (a socket, a pipe) into the pipe. Call after
// arm() with `from` as the object: sqe->fd is the pipe here, so a direct
// descriptor is named by SPLICE_F_FD_IN_FIXED instead of IOSQE_FIXED_FILE.
inline void fix_splice_in_flags(io_uring_sqe* sqe, const object_state* from) noexcept {
  if (from->direct) {
    sqe->flags &= static_cast<__u8>(~IOSQE_FIXED_FILE);
    sqe->splice_flags |= SPLICE_F_FD_IN_FIXED;
  }
}
inline void prep_splice_in(io_uring_sqe* sqe, const object_state* from, const splice_pipe& p,
                           std::size_t len, unsigned flags) noexcept {
  io_uring_prep_splice(sqe, from->fd, -1, p.write_end(), -1, splice_length(len), flags);
}

// The awaitable shape of a splice transfer: a compound operation (it re-arms
// from its completions) whose Derived::start checks the other descriptors
// before io_awaitable's start, and which counts what its destination took.
template <class Derived>
class splice_transfer : public io_awaitable<Derived> {
public:
  static constexpr bool single_request = false;
  // splice runs in the kernel's worker threads (io_awaitable.hpp).
  static constexpr bool runs_in_kernel_worker = true;
  using io_awaitable<Derived>::io_awaitable;

  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> awaiting) {
    return static_cast<Derived*>(this)->start(awaiting, scope_of(awaiting));
  }

  // Bytes the destination has taken so far (also after a failure: keep the
  // awaitable in a variable to ask).
  std::size_t transferred() const noexcept { return sent_; }

protected:
  std::size_t sent_ = 0;
};

} // namespace couring::detail
