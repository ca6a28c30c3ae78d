#pragma once

// The state behind a listener (tcp_listener, unix_listener; private to the
// library). It deals in plain descriptors: each listener type wraps an
// accepted one into its own stream type (detail::accept_awaitable<Stream>).
//
// One request accepts for the listener: a multishot IORING_OP_ACCEPT (or one
// single-shot accept at a time where multishot is switched off). Its states:
//
//   idle         no request in flight
//   accepting    the request is in flight
//   pausing      it was cancelled because too many connections wait unclaimed
//                (the kernel's backlog holds the rest); ends when its last
//                CQE arrives
//   backing_off  the request ended with an error (EMFILE, ENFILE, ENOMEM...);
//                a timer runs before it is armed again, so that a persistent
//                error never spins. Also: direct descriptors with the file
//                table full (a short timer, then a look at the table again)
//
// The request is armed only while someone waits in accept() (or a queued
// result is taken), and re-armed when the kernel ends it. The record lives on
// the heap, stays put while the listener moves, and deletes itself once the
// listener is closed and no request of its own is in flight.

#include <cstddef>
#include <memory>

#include <couring/detail/listener.hpp>
#include <couring/detail/ring.hpp>

namespace couring::detail {

class acceptor {
public:
  acceptor(io_context& ctx, int fd, bool direct = false);
  acceptor(const acceptor&) = delete;
  acceptor& operator=(const acceptor&) = delete;

  int fd() const noexcept { return handle_.fd(); }
  ring& owner_ring() const noexcept { return *ring_; }

  // From the listener: stop listening, fail the waiters, and delete this
  // once no request of ours is in flight any more.
  void close_and_release() noexcept;

  // From accept_awaitable.
  bool try_take(int& result) noexcept;
  void add_waiter(accept_waiter* w);
  void remove_waiter(accept_waiter* w) noexcept;

private:
  enum class state { idle, accepting, pausing, backing_off };

  struct accept_record : operation {
    acceptor* owner;
  };
  struct backoff_record : operation {
    acceptor* owner;
    __kernel_timespec ts{};
  };

  static void on_accept(operation* op) noexcept;
  static void on_accept_abandoned(operation* op) noexcept;
  static void on_backoff(operation* op) noexcept;
  static void on_backoff_abandoned(operation* op) noexcept;
  static void on_waiter_cancel(operation* op) noexcept;
  void request_ended() noexcept;
  void arm();
  // fixed_ms != 0: wait that long, without growing the back-off (waiting
  // for a slot of the file table, which is no error).
  void start_backoff(unsigned fixed_ms = 0) noexcept;
  // Direct descriptors: the table's count of used slots follows each
  // accept's CQE (see arm).
  void count_slot(int res, bool more) noexcept;
  void rearm_if_waited_for() noexcept;
  void hand_out(int res) noexcept;
  void end_waiter(accept_waiter* w, int err) noexcept;
  void fail_all_waiters(int err) noexcept;
  void maybe_delete() noexcept;
  // Closes a connection nobody will take (a descriptor or a slot).
  void discard(int accepted) noexcept;

  // Results accepted ahead of any accept(): descriptors (>= 0) or errors
  // (< 0), in a ring buffer allocated once, so that a completion never
  // allocates.
  bool queue_full() const noexcept { return queued_ == queue_capacity; }
  void push(int res) noexcept;
  int pop() noexcept;

  static constexpr std::size_t queue_capacity = 256;

  ring* ring_;
  object_handle handle_;
  accept_record accept_op_{};
  backoff_record backoff_op_{};
  state state_ = state::idle;
  bool closed_ = false;
  bool dispatching_ = false; // a resumed waiter may close the listener meanwhile
  bool multishot_;
  bool direct_;
  bool slot_promised_ = false; // a single-shot direct accept in flight holds a slot for itself
  unsigned backoff_ms_ = 0;
  std::unique_ptr<int[]> queue_;
  std::size_t first_ = 0;
  std::size_t queued_ = 0;
  accept_waiter* first_waiter_ = nullptr;
  accept_waiter* last_waiter_ = nullptr;
};

} // namespace couring::detail
