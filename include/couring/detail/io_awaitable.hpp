#pragma once

// io_awaitable: the common shape of every operation that is one io_uring
// request (or, for compound operations, a series of them).
//
// Derived supplies prepare(io_uring_sqe*) and make_result(int res). The
// awaitable is its own completion record, so awaiting it allocates nothing.
// It may be moved before it is awaited (with_timeout takes it by value), never
// after: from await_suspend until resumption its address is the SQE's user_data.
//
// An operation on an I/O object names the object's state record and the
// side it uses (reads or writes): it waits in line behind the operations
// already on that side, and it ends with operation_canceled, without touching
// any descriptor, if the object was closed before it started.

#include <cerrno>
#include <coroutine>
#include <utility>

#include <couring/detail/cancel_scope.hpp>
#include <couring/detail/ring.hpp>
#include <couring/io_context.hpp>
#include <couring/task.hpp>

namespace couring::detail {

template <class Derived>
class io_awaitable : public operation {
public:
  // One SQE per await (with_timeout can link a timeout to it). Compound
  // operations that re-arm from their completion say false.
  static constexpr bool single_request = true;
  // The kernel runs this request in its worker threads (io-wq) rather than
  // inline: file I/O, operations on paths, splice. Those say true, and the
  // loop watches over them while they are in flight (ring::worker_requests).
  static constexpr bool runs_in_kernel_worker = false;

  // An operation that uses no I/O object (a timer, a nop).
  explicit io_awaitable(io_context& ctx) noexcept { init(&ctx.ring()); }
  // An operation on object s (nullptr: a closed or empty object), on its
  // side if given; r is the object's ring (nullptr with s == nullptr).
  io_awaitable(ring* r, object_state* s, object_side* side) noexcept {
    init(r);
    // Only an operation on an object can wait in its side's queue, and be
    // issued from there (pass_side): the others need no issue_fn.
    this->issue_fn = &Derived::issue;
    this->object = s;
    this->side = side;
    generation_ = s != nullptr ? s->generation : 0;
    on_object_ = true;
  }
  // Only what is set before the await is copied (res and friends are not yet).
  io_awaitable(io_awaitable&& other) noexcept {
    init(other.owner_ring);
    this->issue_fn = other.issue_fn;
    this->on_complete = other.on_complete;
    this->object = other.object;
    this->side = std::exchange(other.side, nullptr); // the moved-from one waits nowhere
    on_object_ = other.on_object_;
    if (on_object_)
      generation_ = other.generation_;
  }
  io_awaitable& operator=(io_awaitable&&) = delete;
  ~io_awaitable() {
    // The frame goes away while the operation waits in line (teardown).
    if (this->side != nullptr)
      ring::leave_queue(this);
    uncount_worker_request();
  }

  bool await_ready() const noexcept { return false; }

  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> awaiting) {
    return start(awaiting, scope_of(awaiting));
  }

  auto await_resume() {
    uncount_worker_request();
    return static_cast<Derived*>(this)->make_result(this->res);
  }

  // Issues the request, or queues it behind the side's active operation;
  // false when it completed without being submitted (its object is closed,
  // or its scope was already cancelled) and the caller goes on.
  bool start(std::coroutine_handle<> awaiting, cancel_scope* s) {
    check_owner_thread(this->owner_ring);
    this->scope = s;
    if (on_object_ && (this->object == nullptr || this->object->closed ||
                       this->object->generation != generation_)) {
      // Closed before this operation started: close() ends it like every
      // other operation on the object (its descriptor number may already be
      // someone else's). An object never opened (or moved from) has no
      // ring: EBADF.
      this->side = nullptr;
      this->res = this->owner_ring != nullptr ? -ECANCELED : -EBADF;
      return false;
    }
    if (s != nullptr && s->cancelled()) {
      this->side = nullptr;
      this->res = -ECANCELED;
      return false;
    }
    this->waiter = awaiting;
    if constexpr (Derived::runs_in_kernel_worker) {
      this->owner_ring->count_worker_request(1);
      worker_counted_ = true;
    }
    if (this->side != nullptr && !this->owner_ring->take_side(this)) {
      // (side cleared: it failed at once and is posted, see take_side.)
      if (s != nullptr && this->side != nullptr)
        s->set_current(this); // waits in line; cancel_fn takes it out
      return true;
    }
    try {
      // Derived's own issue if it has one (a compound operation whose first
      // request is not its own record's), io_awaitable::issue otherwise.
      Derived::issue(this);
    } catch (...) {
      if (this->side != nullptr) {
        // Give the side back so that the next in line is not stuck.
        this->owner_ring->pass_side(this);
      }
      throw;
    }
    if (s != nullptr)
      s->set_current(this);
    return true;
  }

  // Takes an SQE, lets Derived fill it in, and ties it to this record.
  static void issue(operation* op) {
    auto* self = static_cast<Derived*>(op);
    ring& r = *op->owner_ring;
    // Read before prepare (see ring::arm).
    object_state* const object = op->object;
    __kernel_timespec* const link_timeout = op->link_timeout;
    io_uring_sqe* sqe = r.get_sqe_for(op);
    self->prepare(sqe);
    r.arm(sqe, op, object, link_timeout);
  }

protected:
  // Ends the count start() made for a request of the kernel's workers: when
  // its result is taken, or when the awaitable goes away unawaited
  // (teardown). Twice is harmless. const: some await_resume are.
  void uncount_worker_request() const noexcept {
    if constexpr (Derived::runs_in_kernel_worker) {
      if (worker_counted_) {
        worker_counted_ = false;
        this->owner_ring->count_worker_request(-1);
      }
    }
  }

  // Two 16-bit flags right after operation::outstanding: for an operation
  // on no object, the three are cleared by one 64-bit store.
  std::uint16_t on_object_ = false;
  mutable std::uint16_t worker_counted_ = false;
  // Set, and read, only for an operation on an object.
  std::uint32_t generation_;

private:
  // issue_fn, where needed: Derived's own issue if it has one, the same
  // function start() calls, so an operation issued later from its side's
  // queue starts the same way.
  void init(ring* r) noexcept { this->owner_ring = r; }
};

} // namespace couring::detail
