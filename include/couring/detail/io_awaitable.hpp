#pragma once

// io_awaitable: the common shape of every single-request operation.
//
// Derived supplies prepare(io_uring_sqe*) and make_result(int res). The
// awaitable is its own completion record, so awaiting it allocates nothing.
// It may be moved before it is awaited (with_timeout takes it by value), never
// after: from await_suspend until resumption its address is the SQE's user_data.

#include <coroutine>

#include <couring/detail/cancel_scope.hpp>
#include <couring/detail/operation.hpp>
#include <couring/io_context.hpp>
#include <couring/task.hpp>

namespace couring::detail {

// Default completion: resume the awaiting coroutine, unless the context is
// being torn down (then the frame is destroyed instead of resumed).
inline void resume_waiter(operation* op) noexcept {
  if (op->scope != nullptr)
    op->scope->clear_current(op);
  if (op->ctx->shutting_down())
    return;
  op->waiter.resume();
}

// Reads on a stream must not overlap one another, nor writes: the kernel
// would complete them in an order that need not be the order of the bytes.
// Debug builds (no NDEBUG) check it; an awaitable that reads or writes a
// stream says so with `static constexpr stream_use use` and an `fd()`.
enum class stream_use { read, write };

template <class A>
concept stream_awaitable = requires(const A& a) {
  { A::use } -> std::convertible_to<stream_use>;
  { a.fd() } -> std::convertible_to<int>;
};

template <class Derived>
class io_awaitable : public operation {
public:
  // One SQE per await (with_timeout can link a timeout to it). Compound
  // operations that re-arm from their completion say false.
  static constexpr bool single_request = true;

  explicit io_awaitable(io_context& ctx) noexcept { this->ctx = &ctx; }
  // Only what is set before the await is copied (res and friends are not yet).
  io_awaitable(io_awaitable&& other) noexcept {
    this->ctx = other.ctx;
    this->on_complete = other.on_complete;
  }
  io_awaitable& operator=(io_awaitable&&) = delete;

  bool await_ready() const noexcept { return false; }

  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> awaiting) {
    return start(awaiting, scope_of(awaiting));
  }

  auto await_resume() {
    release_stream();
    return static_cast<Derived*>(this)->make_result(this->res);
  }

  // Prepares and arms the request; false when it completed without being
  // submitted (its scope was already cancelled), and the caller goes on.
  // With link_timeout, an IORING_OP_LINK_TIMEOUT follows the request in the
  // ring (with_timeout): one more SQE, no extra wake-up.
  bool start(std::coroutine_handle<> awaiting, cancel_scope* s,
             __kernel_timespec* link_timeout = nullptr) {
    this->scope = s;
    if (link_timeout != nullptr)
      this->link_timeout_res = 0;
    if (s != nullptr && s->cancelled()) {
      this->res = -ECANCELED;
      return false;
    }
    this->waiter = awaiting;
    claim_stream();
    if (link_timeout != nullptr) {
      this->ctx->reserve_sqes(2); // the pair must be adjacent in the ring
      this->ctx->arm_link_timeout(submit(), this, link_timeout);
    } else {
      submit();
    }
    if (s != nullptr)
      s->set_current(this);
    return true;
  }

  // The debug check of overlapping reads (or writes) on one stream. The
  // member exists in every build, so that the layout does not depend on
  // NDEBUG; only debug builds claim.
  void claim_stream() {
#ifndef NDEBUG
    if constexpr (stream_awaitable<Derived>) {
      this->ctx->claim_stream(static_cast<Derived*>(this)->fd(), Derived::use == stream_use::write);
      claimed_ = true;
    }
#endif
  }
  void release_stream() noexcept {
    if constexpr (stream_awaitable<Derived>) {
      if (claimed_) {
        claimed_ = false;
        this->ctx->release_stream(static_cast<Derived*>(this)->fd(),
                                  Derived::use == stream_use::write);
      }
    }
  }

  // Takes an SQE, lets Derived fill it in, and ties it to this record.
  io_uring_sqe* submit() {
    io_uring_sqe* sqe = this->ctx->get_sqe();
    static_cast<Derived*>(this)->prepare(sqe);
    this->ctx->arm(sqe, this);
    return sqe;
  }

private:
  bool claimed_ = false;
};

} // namespace couring::detail
