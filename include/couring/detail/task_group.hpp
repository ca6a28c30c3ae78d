#pragma once

// Runs several tasks at once for when_all / when_any. Each child runs in a
// cancel scope of its own (a scope tracks one operation in flight), linked
// below the awaiting coroutine's scope so that cancelling the awaiter reaches
// every child. The awaiter resumes only after every child has finished.

#include <cerrno>
#include <coroutine>
#include <cstddef>
#include <limits>
#include <memory>

#include <couring/detail/cancel_scope.hpp>
#include <couring/task.hpp>

namespace couring::detail {

class task_group {
public:
  static constexpr std::size_t none = std::numeric_limits<std::size_t>::max();

  // One per child: learns that the child finished and which one it was.
  class child_join final : public join_point {
  public:
    std::coroutine_handle<> child_finished() noexcept override { return group->finished(index); }
    task_group* group = nullptr;
    std::size_t index = 0;
    cancel_scope scope;
  };

  task_group(std::size_t count, bool cancel_others_when_one_finishes)
      : joins_(std::make_unique<child_join[]>(count)), count_(count),
        cancel_others_(cancel_others_when_one_finishes) {}

  // Starts child i (the task whose promise and handle are given); the first
  // call records the awaiter.
  void start_child(std::size_t i, std::coroutine_handle<> parent, cancel_scope* parent_scope,
                   promise_base& promise, std::coroutine_handle<> child) {
    if (i == 0) {
      parent_ = parent;
      remaining_ = count_ + 1;
    }
    child_join& j = joins_[i];
    j.group = this;
    j.index = i;
    j.scope.attach_to(parent_scope);
    if (first_ != none && cancel_others_)
      j.scope.cancel(ECANCELED); // the race is already decided
    start_task(promise, child, &j.scope, {}, &j);
  }

  // After every start_child: whether the awaiter must suspend.
  bool all_started() noexcept { return --remaining_ != 0; }

  std::size_t first_finished() const noexcept { return first_; }

private:
  std::coroutine_handle<> finished(std::size_t index) noexcept {
    if (first_ == none) {
      first_ = index;
      if (cancel_others_) {
        for (std::size_t i = 0; i < count_; ++i)
          if (i != index)
            joins_[i].scope.cancel(ECANCELED);
      }
    }
    return --remaining_ == 0 ? parent_ : std::noop_coroutine();
  }

  std::unique_ptr<child_join[]> joins_;
  std::size_t count_;
  std::size_t remaining_ = 0;
  std::size_t first_ = none;
  bool cancel_others_;
  std::coroutine_handle<> parent_;
};

} // namespace couring::detail
