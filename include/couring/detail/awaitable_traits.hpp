#pragma once

#include <concepts>
#include <coroutine>
#include <type_traits>
#include <variant>

#include <couring/result.hpp>
#include <couring/task.hpp>

namespace couring::detail {

template <class T>
struct is_task : std::false_type {};
template <class T>
struct is_task<task<T>> : std::true_type {};

template <class T>
struct is_result : std::false_type {};
template <class T>
struct is_result<result<T>> : std::true_type {};

// An io_uring operation awaitable (detail::io_awaitable and compounds).
template <class A>
concept io_operation_awaitable = requires(A& a, std::coroutine_handle<> h, cancel_scope* s) {
  { a.start(h, s) } -> std::same_as<bool>;
  { A::single_request } -> std::convertible_to<bool>;
};

template <class A>
using await_result_t = decltype(std::declval<A&>().await_resume());

// What with_timeout gives for an operation or task producing T: results stay
// results, anything else is wrapped in one (so that timed_out can be said).
template <class T>
struct timeout_result {
  using type = result<T>;
};
template <class T>
struct timeout_result<result<T>> {
  using type = result<T>;
};

// void cannot sit in a tuple or variant: combinators report it as monostate.
template <class T>
using non_void_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

template <class T>
non_void_t<T> take_non_void(task<T>& t) {
  if constexpr (std::is_void_v<T>) {
    t.handle().promise().take_result();
    return {};
  } else {
    return t.handle().promise().take_result();
  }
}

} // namespace couring::detail
