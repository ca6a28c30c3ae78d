#pragma once

// with_timeout(awaitable, duration): the awaitable's result, or
// std::errc::timed_out when the time ran out first.
//
// - On a single io_uring operation (read, write, accept, connect, sleep, nop)
//   it links an IORING_OP_LINK_TIMEOUT to the request: one extra SQE, no extra
//   wake-up.
// - On a task, a timer runs beside it; when it expires the task's cancel scope
//   is cancelled, which reaches whatever operation the task is suspended on,
//   however deep. Compound operations (write_all, read_exactly) take this path
//   too, so the deadline covers the whole transfer.
//
// If the operation finishes before the cancellation lands, its real result is
// delivered (data is never dropped). A cancelled operation that completed with
// operation_canceled is reported as timed_out. For tasks: a task<result<U>>
// that ends with operation_canceled after the deadline gives timed_out; a
// task<void> cut short by the deadline gives timed_out; a task returning a
// plain value always gives that value (it finished its work).

#include <chrono>
#include <coroutine>

#include <couring/detail/awaitable_traits.hpp>
#include <couring/detail/timeout_join.hpp>
#include <couring/io_context.hpp>
#include <couring/task.hpp>

namespace couring {

namespace detail {

template <class Result>
Result timed_out_if_cancelled(Result r, bool timer_fired) {
  if (timer_fired && !r.has_value() && r.error() == std::errc::operation_canceled)
    return std::make_error_code(std::errc::timed_out);
  return r;
}

// A single request with a linked timeout. If the request has to wait in
// line on its object (another write is in progress), no request is in the
// kernel yet to link a timeout to: a timer of our own then covers the wait
// and the request, and cancels the operation wherever it is when it fires.
// The awaiter resumes once both the operation and that timer are done.
//
// It derives from Op (privately) so that the completion functions can get
// from the operation's record back to this awaitable without a pointer.
template <class Op>
class linked_timeout_awaitable : private Op {
public:
  using op_result = await_result_t<Op>;

  linked_timeout_awaitable(Op op, std::chrono::nanoseconds timeout) noexcept
      : Op(std::move(op)), ts_(to_timespec(timeout)) {}
  linked_timeout_awaitable(linked_timeout_awaitable&& o) noexcept
      : Op(std::move(static_cast<Op&>(o))), ts_(o.ts_) {}

  bool await_ready() const noexcept { return false; }
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> awaiting) {
    Op& op = *this;
    // The ring links an IORING_OP_LINK_TIMEOUT behind the request when it
    // issues it.
    op.link_timeout = &ts_;
    op.link_timeout_res = 0; // stays 0 if the request never goes out
    if (!op.start(awaiting, scope_of(awaiting)))
      return false;
    if (op.side != nullptr && op.side->active != &op) [[unlikely]]
      wait_in_line(awaiting);
    return true;
  }
  op_result await_resume() {
    Op& op = *this;
    // The kernel says which fired: the link timeout's own CQE is ETIME when
    // it expired (and cancelled the request), ECANCELED when the request won.
    return timed_out_if_cancelled(op.await_resume(),
                                  op.link_timeout_res == -ETIME || deadline_fired_);
  }

private:
  struct deadline_record : operation {
    linked_timeout_awaitable* owner;
  };

  static linked_timeout_awaitable* self_of(operation* op) noexcept {
    return static_cast<linked_timeout_awaitable*>(static_cast<Op*>(op));
  }

  void wait_in_line(std::coroutine_handle<> parent) {
    Op& op = *this;
    ring& r = *op.owner_ring;
    op.link_timeout = nullptr; // not issued yet: our timer covers it instead
    op.on_complete = &operation_done;
    parent_ = parent;
    remaining_ = 2;
    deadline_.owner_ring = &r;
    deadline_.owner = this;
    deadline_.on_complete = &deadline_done;
    try {
      io_uring_sqe* sqe = r.get_sqe();
      io_uring_prep_timeout(sqe, &ts_, 0, 0);
      r.arm(sqe, &deadline_);
    } catch (...) {
      ring::leave_queue(&op); // nothing of ours is left anywhere
      if (op.scope != nullptr)
        op.scope->clear_current(&op);
      throw;
    }
  }
  static void operation_done(operation* op) noexcept {
    auto* self = self_of(op);
    op->owner_ring->settle(op);
    self->operation_finished_ = true;
    if (!self->deadline_fired_)
      op->owner_ring->cancel(&self->deadline_);
    self->join_one();
  }
  static void deadline_done(operation* d) noexcept {
    auto* self = static_cast<deadline_record*>(d)->owner;
    if (d->res == -ETIME && !self->operation_finished_) {
      self->deadline_fired_ = true;
      Op& op = *self;
      if (op.cancel_fn != nullptr)
        op.cancel_fn(&op); // still waiting in line
      else
        d->owner_ring->cancel(&op);
    }
    self->join_one();
  }
  void join_one() noexcept {
    if (--remaining_ == 0)
      parent_.resume();
  }

  __kernel_timespec ts_{};
  deadline_record deadline_{};
  std::coroutine_handle<> parent_;
  int remaining_ = 0;
  bool operation_finished_ = false;
  bool deadline_fired_ = false;
};

// A task with a timer beside it.
template <class T>
class task_timeout_awaitable {
public:
  using value_type = typename timeout_result<T>::type;

  task_timeout_awaitable(io_context& ctx, task<T> t, std::chrono::nanoseconds timeout) noexcept
      : task_(std::move(t)), join_(ctx, timeout) {}

  bool await_ready() const noexcept { return false; }
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> awaiting) {
    auto h = task_.handle();
    return join_.start(awaiting, scope_of(awaiting), h.promise(), h);
  }
  value_type await_resume() {
    auto& p = task_.handle().promise();
    if constexpr (std::is_void_v<T>) {
      p.take_result();
      if (join_.timed_out())
        return std::make_error_code(std::errc::timed_out);
      return {};
    } else if constexpr (is_result<T>::value) {
      return timed_out_if_cancelled(p.take_result(), join_.timed_out());
    } else {
      // A plain value means the task finished its work (it may have handled
      // the cancellation itself): deliver it, never drop it.
      return p.take_result();
    }
  }

private:
  task<T> task_;
  timeout_join join_;
};

template <class Op>
task<await_result_t<Op>> as_task(Op op) {
  co_return co_await op;
}

} // namespace detail

template <class Rep, class Period, class Op>
requires detail::io_operation_awaitable<Op>
[[nodiscard]] auto with_timeout(Op op, std::chrono::duration<Rep, Period> timeout) {
  const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(timeout);
  if constexpr (Op::single_request) {
    return detail::linked_timeout_awaitable<Op>(std::move(op), ns);
  } else {
    io_context& ctx =
        op.owner_ring != nullptr ? op.owner_ring->context() : io_context::running("with_timeout");
    return detail::task_timeout_awaitable<detail::await_result_t<Op>>(
        ctx, detail::as_task(std::move(op)), ns);
  }
}

template <class T, class Rep, class Period>
[[nodiscard]] detail::task_timeout_awaitable<T>
with_timeout(io_context& ctx, task<T> t, std::chrono::duration<Rep, Period> timeout) {
  return {ctx, std::move(t), std::chrono::duration_cast<std::chrono::nanoseconds>(timeout)};
}

// The task form takes the context whose run() is executing on this thread.
template <class T, class Rep, class Period>
[[nodiscard]] detail::task_timeout_awaitable<T>
with_timeout(task<T> t, std::chrono::duration<Rep, Period> timeout) {
  return with_timeout(io_context::running("with_timeout"), std::move(t), timeout);
}

} // namespace couring
