#pragma once

// The machinery of with_timeout on a task: a timer request running beside the
// task. Whichever finishes first cancels the other (the timer cancels the
// task's scope with ETIMEDOUT), and the awaiter resumes only when both have
// completed: nothing is left in flight behind it.

#include <chrono>
#include <coroutine>

#include <liburing.h>

#include <couring/detail/cancel_scope.hpp>
#include <couring/detail/ring.hpp>
#include <couring/task.hpp>

namespace couring::detail {

class timeout_join final : public join_point {
public:
  timeout_join(io_context& ctx, std::chrono::nanoseconds timeout) noexcept;
  timeout_join(const timeout_join&) = delete;
  timeout_join& operator=(const timeout_join&) = delete;

  // Starts the timer, then the child (a task whose promise is child_promise).
  // Returns false when both are already done and the awaiter goes on.
  bool start(std::coroutine_handle<> parent, cancel_scope* parent_scope,
             promise_base& child_promise, std::coroutine_handle<> child);

  // The timer expired before the child finished.
  bool timed_out() const noexcept { return fired_; }

  std::coroutine_handle<> child_finished() noexcept override;

private:
  struct timer_record : operation {
    timeout_join* owner;
  };
  static void on_timer(operation* op) noexcept;
  std::coroutine_handle<> finish_one() noexcept;

  timer_record timer_{};
  __kernel_timespec ts_{};
  cancel_scope scope_;
  std::coroutine_handle<> parent_;
  int remaining_ = 0;
  bool child_done_ = false;
  bool fired_ = false;
};

} // namespace couring::detail
