#pragma once

// when_any(tasks...): runs the tasks concurrently; as soon as one finishes,
// the others are cancelled (their operations complete with
// operation_canceled, or with their real result if they had already
// finished), and when_any returns -- only after every task has completed --
// the index of the first and its result. If the first one threw, that
// exception is rethrown; what the cancelled ones return or throw is dropped.

#include <cstddef>
#include <variant>
#include <vector>

#include <couring/detail/awaitable_traits.hpp>
#include <couring/when_all.hpp>

namespace couring {

template <class... T>
struct when_any_result {
  std::size_t index;
  std::variant<detail::non_void_t<T>...> value; // value.index() == index
};

template <class T>
struct when_any_value {
  std::size_t index;
  detail::non_void_t<T> value;
};

namespace detail {

template <std::size_t I, class... T>
when_any_result<T...> take_winner(std::tuple<task<T>...>& tasks, std::size_t winner) {
  if constexpr (I < sizeof...(T)) {
    if (winner == I)
      return {I, std::variant<non_void_t<T>...>(std::in_place_index<I>,
                                                take_non_void(std::get<I>(tasks)))};
    return take_winner<I + 1, T...>(tasks, winner);
  } else {
    std::terminate(); // unreachable: some task finished first
  }
}

} // namespace detail

template <class... T>
task<when_any_result<T...>> when_any(task<T>... tasks) {
  static_assert(sizeof...(T) > 0, "when_any of nothing never finishes");
  detail::group_awaitable<std::tuple<task<T>...>> group(std::tuple<task<T>...>(std::move(tasks)...),
                                                        sizeof...(T), true);
  co_await group;
  co_return detail::take_winner<0, T...>(group.tasks(), group.first_finished());
}

template <class T>
task<when_any_value<T>> when_any(std::vector<task<T>> tasks) {
  if (tasks.empty())
    throw std::invalid_argument("couring: when_any of an empty vector never finishes");
  const std::size_t n = tasks.size();
  detail::group_awaitable<std::vector<task<T>>> group(std::move(tasks), n, true);
  co_await group;
  const std::size_t winner = group.first_finished();
  co_return when_any_value<T>{winner, detail::take_non_void(group.tasks()[winner])};
}

} // namespace couring
