#include <couring/detail/timeout_join.hpp>

#include <couring/io_context.hpp>

namespace couring::detail {

timeout_join::timeout_join(io_context& ctx, std::chrono::nanoseconds timeout) noexcept
    : ts_(to_timespec(timeout)) {
  timer_.owner_ring = &ctx.ring();
  timer_.owner = this;
  timer_.on_complete = &on_timer;
}

bool timeout_join::start(std::coroutine_handle<> parent, cancel_scope* parent_scope,
                         promise_base& child_promise, std::coroutine_handle<> child) {
  parent_ = parent;
  scope_.attach_to(parent_scope);
  remaining_ = 3; // the timer, the child, and this start itself

  io_uring_sqe* sqe = timer_.owner_ring->get_sqe();
  io_uring_prep_timeout(sqe, &ts_, 0, 0);
  timer_.owner_ring->arm(sqe, &timer_);

  start_task(child_promise, child, &scope_, {}, this);
  return --remaining_ != 0;
}

std::coroutine_handle<> timeout_join::child_finished() noexcept {
  child_done_ = true;
  if (!fired_)
    timer_.owner_ring->cancel(&timer_); // completes the timer with ECANCELED
  return finish_one();
}

void timeout_join::on_timer(operation* op) noexcept {
  auto* self = static_cast<timer_record*>(op)->owner;
  if (op->res == -ETIME && !self->child_done_) {
    self->fired_ = true;
    self->scope_.cancel(ETIMEDOUT);
  }
  self->finish_one().resume();
}

std::coroutine_handle<> timeout_join::finish_one() noexcept {
  return --remaining_ == 0 ? parent_ : std::noop_coroutine();
}

} // namespace couring::detail
