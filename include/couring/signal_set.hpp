#pragma once

// signal_set: POSIX signals as awaitable events.
//
//   signal_set signals(ctx, {SIGINT, SIGTERM});
//   auto sig = co_await signals.wait(); // result<int>: the signal's number
//
// The set blocks its signals in the calling thread (pthread_sigmask) and reads
// them from a signalfd through the ring. Blocking is per thread: a
// process-directed signal (kill, Ctrl-C) goes to any thread that does not
// block it, and is then handled there by its disposition (for SIGINT and
// SIGTERM: the process dies) instead of reaching the set. So block the
// signals in every other thread too -- simplest: create the signal_set (or
// block them) before starting any thread, which inherits the mask.
//
// Signals that arrive while nobody waits stay pending and are delivered to
// the next wait(), in signal-number order; two deliveries of the same
// standard signal before a wait merge into one (the kernel keeps one pending
// instance). Several sets may share a signal: whichever waits first gets it.
//
// Closing (close() or the destructor) ends a pending wait with
// operation_canceled and unblocks the signals this set blocked -- those that
// were not blocked before it and that no other open set in this thread still
// blocks. Close a set on the thread that created it. A signal still pending
// when it is unblocked is delivered to its disposition at once.

#include <csignal>
#include <initializer_list>

#include <sys/signalfd.h>

#include <couring/detail/io_awaitable.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>

namespace couring {

class signal_set {
public:
  signal_set() noexcept = default;
  // Blocks signals in this thread and opens a signalfd for them. Throws
  // std::system_error if the signalfd cannot be made (EMFILE, ...), and
  // std::invalid_argument for a signal number that cannot be caught
  // (SIGKILL, SIGSTOP, out of range).
  signal_set(io_context& ctx, std::initializer_list<int> signals);
  signal_set(signal_set&& other) noexcept;
  signal_set& operator=(signal_set&& other) noexcept;
  ~signal_set() { close(); }

  class wait_awaitable : public detail::io_awaitable<wait_awaitable> {
  public:
    explicit wait_awaitable(const detail::object_handle& h) noexcept
        : io_awaitable(h.ring_ptr(), h.state(),
                       h.state() != nullptr ? &h.state()->read_side : nullptr) {}
    wait_awaitable(wait_awaitable&& o) noexcept : io_awaitable(std::move(o)) {}
    void prepare(io_uring_sqe* sqe) noexcept {
      // The signalfd is non-blocking: the ring waits for it to become
      // readable and then reads from this thread, which is what lets the
      // read see signals sent to this thread alone (raise, pthread_kill).
      io_uring_prep_read(sqe, this->object->fd, &info_, sizeof info_, 0);
    }
    result<int> make_result(int res) noexcept {
      if (res < 0)
        return errno_code(res);
      if (res != static_cast<int>(sizeof info_))
        return std::error_code(EIO, std::system_category());
      return static_cast<int>(info_.ssi_signo);
    }

  private:
    signalfd_siginfo info_{};
  };

  // The next signal of the set: its number. Waits are served in order.
  [[nodiscard]] wait_awaitable wait() noexcept { return wait_awaitable(handle_); }

  // Closes the set (see the top of this header); idempotent.
  void close() noexcept;
  bool is_open() const noexcept { return handle_.is_open(); }

private:
  detail::object_handle handle_;
  sigset_t signals_{}; // what this set holds blocked (to release on close)
  bool holds_mask_ = false;
};

} // namespace couring
