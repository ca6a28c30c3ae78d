#pragma once

// stream::receive(pool): the awaitable side of a pool receive. The machinery
// (one multishot receive per stream, the queue of chunks nobody has taken
// yet, starvation and its back-pressure) is in lib/buffer_pool.cpp; see
// docs/design.md ("Buffer pools").
//
// The stream's receiver (a small record from the pool) holds the stream's
// read side for as long as the stream is open: receives wait in the read
// side's queue, so that closing the stream or cancelling a receive ends it
// exactly like a waiting read. A chunk that arrives while nobody waits is
// queued in the receiver (linked through the pool's per-buffer records: no
// allocation), and the next receive takes it at once.

#include <coroutine>
#include <cstdint>
#include <utility>

#include <couring/buffer_pool.hpp>
#include <couring/detail/cancel_scope.hpp>
#include <couring/detail/ring.hpp>
#include <couring/error.hpp>
#include <couring/result.hpp>
#include <couring/task.hpp>

namespace couring::detail {

class pool_receive_awaitable : public operation {
public:
  // Cancellation reaches it where it waits (in the read side's queue), not
  // in the kernel: with_timeout uses a timer beside it.
  static constexpr bool single_request = false;
  static constexpr std::uint32_t no_buffer = ~std::uint32_t{0};

  pool_receive_awaitable(const object_handle& h, pool_state* pool) noexcept : pool_(pool) {
    this->owner_ring = h.ring_ptr();
    this->object = h.state();
    this->issue_fn = &not_issued;
    generation_ = h.state() != nullptr ? h.state()->generation : 0;
  }
  pool_receive_awaitable(pool_receive_awaitable&& o) noexcept
      : pool_(o.pool_), generation_(o.generation_) {
    // Only what is set before the await.
    this->owner_ring = o.owner_ring;
    this->object = o.object;
    this->issue_fn = &not_issued;
  }
  pool_receive_awaitable& operator=(pool_receive_awaitable&&) = delete;
  ~pool_receive_awaitable() {
    if (this->side != nullptr)
      ring::leave_queue(this); // the frame goes away while waiting (teardown)
  }

  bool await_ready() const noexcept { return false; }
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> awaiting) {
    return start(awaiting, scope_of(awaiting));
  }
  // Takes a queued chunk at once (false), or waits (true). Throws
  // std::logic_error if the stream receives from another pool or a read is
  // in progress on it, std::bad_alloc if no receiver record can be had.
  bool start(std::coroutine_handle<> awaiting, cancel_scope* s);

  result<buffer_lease> await_resume() noexcept {
    if (this->res < 0)
      return errno_code(this->res);
    if (bid_ == no_buffer)
      return buffer_lease{}; // end of stream
    return buffer_lease(pool_, data_, len_, bid_);
  }

  // Filled in by the receiver.
  std::byte* data_ = nullptr;
  std::uint32_t len_ = 0;
  std::uint32_t bid_ = no_buffer;
  // Set when the receiver handed this receive its piece directly (it
  // waited, nothing was queued): serve_waiters resumes it without a take.
  bool ready_ = false;

  // The issue_fn of every pool receive: how the receiver tells one from a
  // read queued behind it. Never called (the receiver never passes its side).
  static void not_issued(operation*) {}

private:
  // Its cancel_fn while it waits in the read side's queue.
  static void cancel_waiting(operation* op) noexcept;

  pool_state* pool_;
  std::uint32_t generation_ = 0;
};

} // namespace couring::detail
