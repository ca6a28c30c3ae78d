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

// A stream's receiver (lib/buffer_pool.cpp has the machinery); here so that
// a receive can tell at once whether it simply waits in line.
struct pool_receiver : operation {
  static constexpr std::uint32_t none = ~std::uint32_t{0};
  enum class request : std::uint8_t { none, recv, poll };
  pool_state* pool = nullptr;
  std::uint32_t first = none; // queued buffers, oldest first
  std::uint32_t last = none;
  int end = 0; // 0: open; 1: end of stream; < 0: errno (after the queue)
  request in_kernel = request::none;
  bool hungry = false;
  bool woken = false;   // re-armed from the hungry list, no CQE yet
  bool counted = false; // its request counts as background work (count_internal)
  bool bundled = false; // its receive asked for bundles
  // Its data filled a whole buffer in one piece (bulk): its receives ask
  // for bundles from then on (small messages never fill one).
  bool bulk = false;
  bool upgrading = false; // its receive is being cancelled to ask for bundles
};

// The receiver's on_complete (and how a receiver is told from other records).
void on_receiver_cqe(operation* op) noexcept;

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
  // std::logic_error if the stream receives from another pool, the pool is
  // another io_context's or a read is in progress on the stream,
  // std::bad_alloc if no receiver record can be had.
  bool start(std::coroutine_handle<> awaiting, cancel_scope* s) {
    // The common case, inline: the stream's receiver is armed, has nothing
    // queued and has not ended; the receive just waits in line behind it.
    // Everything else (the first receive, queued chunks, the end, a closed
    // stream, misuse) is start_slow.
    if (object_state* o = this->object; o != nullptr && !o->closed &&
                                        o->generation == generation_ &&
                                        (s == nullptr || !s->cancelled())) {
      operation* a = o->read_side.active;
      if (a != nullptr && a->on_complete == &on_receiver_cqe) {
        const auto* rc = static_cast<const pool_receiver*>(a);
        if (rc->pool == pool_ && rc->first == pool_receiver::none && rc->end == 0) {
          wait_in_line(awaiting, s, o->read_side);
          return true;
        }
      }
    }
    return start_slow(awaiting, s);
  }

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
  bool start_slow(std::coroutine_handle<> awaiting, cancel_scope* s);
  // Waits in line behind the receiver (side.active), as ring::take_side
  // would queue it, without the call: the receiver is always active here.
  void wait_in_line(std::coroutine_handle<> awaiting, cancel_scope* s, object_side& side) noexcept {
    this->scope = s;
    bid_ = no_buffer;
    ready_ = false;
    this->waiter = awaiting;
    this->side = &side;
    this->next = nullptr;
    if (side.last_waiting != nullptr)
      side.last_waiting->next = this;
    else
      side.first_waiting = this;
    side.last_waiting = this;
    this->owner_ring->count_parked(+1);
    this->cancel_fn = &cancel_waiting;
    if (s != nullptr)
      s->set_current(this);
  }
  // Its cancel_fn while it waits in the read side's queue.
  static void cancel_waiting(operation* op) noexcept;

  pool_state* pool_;
  std::uint32_t generation_ = 0;
};

} // namespace couring::detail
