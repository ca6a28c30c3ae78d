#pragma once

// when_all(tasks...): runs the tasks concurrently on the awaiting coroutine's
// context and gives all their results, as a tuple (void results are
// std::monostate). The range form takes a std::vector<task<T>> and gives a
// std::vector<T> (nothing for task<void>). If tasks throw, the first
// exception in argument order is rethrown once every task has finished.

#include <coroutine>
#include <exception>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include <couring/detail/awaitable_traits.hpp>
#include <couring/detail/task_group.hpp>
#include <couring/task.hpp>

namespace couring {

namespace detail {

template <class Tasks>
class group_awaitable {
public:
  group_awaitable(Tasks tasks, std::size_t count, bool cancel_others)
      : tasks_(std::move(tasks)), group_(count, cancel_others), count_(count) {}

  bool await_ready() const noexcept { return count_ == 0; }
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> awaiting) {
    cancel_scope* parent_scope = scope_of(awaiting);
    std::size_t i = 0;
    for_each_task([&](auto& t) {
      auto h = t.handle();
      group_.start_child(i++, awaiting, parent_scope, h.promise(), h);
    });
    return group_.all_started();
  }
  void await_resume() const noexcept {}

  Tasks& tasks() noexcept { return tasks_; }
  std::size_t first_finished() const noexcept { return group_.first_finished(); }

private:
  template <class F>
  void for_each_task(F&& f) {
    if constexpr (requires { tasks_.begin(); }) {
      for (auto& t : tasks_)
        f(t);
    } else {
      std::apply([&](auto&... t) { (f(t), ...); }, tasks_);
    }
  }

  Tasks tasks_;
  task_group group_;
  std::size_t count_;
};

// Takes every result, rethrowing the first exception only after all were taken.
template <class... T, std::size_t... I>
std::tuple<non_void_t<T>...> take_all(std::tuple<task<T>...>& tasks, std::index_sequence<I...>) {
  std::exception_ptr first;
  auto take = [&](auto& t) {
    using value = decltype(take_non_void(t));
    try {
      return std::optional<value>(take_non_void(t));
    } catch (...) {
      if (!first)
        first = std::current_exception();
      return std::optional<value>();
    }
  };
  std::tuple<std::optional<non_void_t<T>>...> taken{take(std::get<I>(tasks))...};
  if (first)
    std::rethrow_exception(first);
  return {std::move(*std::get<I>(taken))...};
}

} // namespace detail

template <class... T>
task<std::tuple<detail::non_void_t<T>...>> when_all(task<T>... tasks) {
  detail::group_awaitable<std::tuple<task<T>...>> group(std::tuple<task<T>...>(std::move(tasks)...),
                                                        sizeof...(T), false);
  co_await group;
  co_return detail::take_all(group.tasks(), std::index_sequence_for<T...>{});
}

template <class T>
task<std::conditional_t<std::is_void_v<T>, void, std::vector<T>>>
when_all(std::vector<task<T>> tasks) {
  const std::size_t n = tasks.size();
  detail::group_awaitable<std::vector<task<T>>> group(std::move(tasks), n, false);
  co_await group;
  std::exception_ptr first;
  if constexpr (std::is_void_v<T>) {
    for (auto& t : group.tasks()) {
      try {
        t.handle().promise().take_result();
      } catch (...) {
        if (!first)
          first = std::current_exception();
      }
    }
    if (first)
      std::rethrow_exception(first);
  } else {
    std::vector<T> out;
    out.reserve(n);
    for (auto& t : group.tasks()) {
      try {
        out.push_back(t.handle().promise().take_result());
      } catch (...) {
        if (!first)
          first = std::current_exception();
      }
    }
    if (first)
      std::rethrow_exception(first);
    co_return out;
  }
}

} // namespace couring
