#pragma once

// with_stop_token(awaitable, std::stop_token): the awaitable's result, or
// std::errc::operation_canceled once a stop is requested. Works on single
// operations, compound operations and tasks alike (the stop cancels the scope
// they run in, and IORING_OP_ASYNC_CANCEL reaches the operation in flight).
// request_stop() may be called from any thread.

#include <coroutine>
#include <optional>
#include <stop_token>

#include <couring/detail/awaitable_traits.hpp>
#include <couring/detail/cancel_scope.hpp>
#include <couring/io_context.hpp>
#include <couring/task.hpp>

namespace couring {

namespace detail {

struct stop_request {
  io_context* ctx;
  cancel_scope* scope;
  void operator()() const noexcept { ctx->request_cancel(scope); }
};

// The part that does not depend on what is awaited.
class stop_scope {
public:
  stop_scope(io_context& ctx, std::stop_token token) noexcept
      : ctx_(&ctx), token_(std::move(token)) {}
  stop_scope(stop_scope&& o) noexcept : ctx_(o.ctx_), token_(std::move(o.token_)) {}
  ~stop_scope() {
    if (callback_) {
      callback_.reset(); // waits for a callback running on another thread
      ctx_->forget_cancel(&scope_);
    }
  }

  cancel_scope* arm(cancel_scope* parent) {
    scope_.attach_to(parent);
    // Runs the callback at once if a stop was already requested.
    callback_.emplace(token_, stop_request{ctx_, &scope_});
    return &scope_;
  }

private:
  io_context* ctx_;
  std::stop_token token_;
  cancel_scope scope_;
  std::optional<std::stop_callback<stop_request>> callback_;
};

template <class Op>
class stoppable_operation {
public:
  stoppable_operation(Op op, std::stop_token token)
      : op_(std::move(op)),
        stop_(op_.owner_ring != nullptr ? op_.owner_ring->context()
                                        : io_context::running("with_stop_token"),
              std::move(token)) {}
  bool await_ready() const noexcept { return false; }
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> awaiting) {
    return op_.start(awaiting, stop_.arm(scope_of(awaiting)));
  }
  auto await_resume() { return op_.await_resume(); }

private:
  Op op_;
  stop_scope stop_;
};

template <class T>
class stoppable_task {
public:
  stoppable_task(io_context& ctx, task<T> t, std::stop_token token) noexcept
      : task_(std::move(t)), stop_(ctx, std::move(token)) {}
  bool await_ready() const noexcept { return false; }
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> awaiting) {
    auto h = task_.handle();
    return !start_task(h.promise(), h, stop_.arm(scope_of(awaiting)), awaiting);
  }
  T await_resume() { return task_.handle().promise().take_result(); }

private:
  task<T> task_;
  stop_scope stop_;
};

} // namespace detail

template <class Op>
requires detail::io_operation_awaitable<Op>
[[nodiscard]] detail::stoppable_operation<Op> with_stop_token(Op op, std::stop_token token) {
  return {std::move(op), std::move(token)};
}

template <class T>
[[nodiscard]] detail::stoppable_task<T> with_stop_token(io_context& ctx, task<T> t,
                                                        std::stop_token token) {
  return {ctx, std::move(t), std::move(token)};
}

// The task form takes the context whose run() is executing on this thread.
template <class T>
[[nodiscard]] detail::stoppable_task<T> with_stop_token(task<T> t, std::stop_token token) {
  return {io_context::running("with_stop_token"), std::move(t), std::move(token)};
}

} // namespace couring
