#pragma once

// task<T>: a lazily started coroutine that produces a T (or throws).
//
// Awaiting a task resumes it from the awaiter's await_suspend. If it finishes
// before suspending even once, its final suspend just returns there and the
// awaiter goes on without having suspended: a loop over a million tasks that
// complete at once uses constant stack without relying on the compiler to
// turn symmetric transfer into a tail call (g++ 12 does not at -O0, nor under
// AddressSanitizer). A task that does suspend resumes its awaiter later by
// symmetric transfer from its final suspend.

#include <cassert>
#include <coroutine>
#include <exception>
#include <type_traits>
#include <utility>
#include <variant>

#include <couring/detail/cancel_scope.hpp>

namespace couring {

template <class T = void>
class task;

namespace detail {

// Lets when_all/when_any/with_timeout learn that a child finished without
// wrapping it in another coroutine frame.
class join_point {
public:
  // Called from the child's final suspend; returns what runs next.
  virtual std::coroutine_handle<> child_finished() noexcept = 0;

protected:
  ~join_point() = default;
};

class promise_base;

// The start of a task in progress on this thread (promise_base::start_inline),
// innermost first. It lives on the starter's stack and is reached through a
// thread_local, never through the promise: once the task suspends it may be
// resumed on another thread at once (switch_to), and the starter must not
// touch its promise after that (ThreadSanitizer found the race when the
// flags were promise members). A task that reaches its final suspend on the
// starter's thread with its own record innermost is still inside the start.
struct inline_start {
  const promise_base* promise;
  bool finished;
  inline_start* outer;
};
inline thread_local inline_start* current_inline_start = nullptr;

class promise_base {
public:
  struct final_awaiter {
    bool await_ready() const noexcept { return false; }
    template <class Promise>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<Promise> self) noexcept {
      promise_base& p = self.promise();
      if (p.join_ != nullptr)
        return p.join_->child_finished();
      inline_start* s = current_inline_start;
      if (s != nullptr && s->promise == &p) {
        // Still inside the awaiter's await_suspend: return there.
        s->finished = true;
        return std::noop_coroutine();
      }
      return p.continuation_;
    }
    void await_resume() const noexcept {}
  };

  std::suspend_always initial_suspend() const noexcept { return {}; }
  final_awaiter final_suspend() const noexcept { return {}; }

  void set_continuation(std::coroutine_handle<> c) noexcept { continuation_ = c; }

  // Runs the coroutine h (whose promise this is) until it first suspends or
  // finishes; true if it finished.
  bool start_inline(std::coroutine_handle<> h) {
    inline_start self{this, false, current_inline_start};
    current_inline_start = &self;
    h.resume();
    // Only this stack and this thread's pointer from here on (see inline_start).
    current_inline_start = self.outer;
    return self.finished;
  }
  void set_join(join_point* j) noexcept { join_ = j; }
  cancel_scope* scope() const noexcept { return scope_; }
  void set_scope(cancel_scope* s) noexcept { scope_ = s; }

private:
  std::coroutine_handle<> continuation_ = std::noop_coroutine();
  join_point* join_ = nullptr;
  cancel_scope* scope_ = nullptr;
};

// Any coroutine whose promise carries a cancel scope (tasks, the context's
// spawn wrapper) passes it on to what it awaits.
template <class Promise>
cancel_scope* scope_of(std::coroutine_handle<Promise> h) noexcept {
  if constexpr (std::is_base_of_v<promise_base, Promise>)
    return h.promise().scope();
  else
    return nullptr;
}

// The one way a task is started by whatever awaits it (a plain co_await,
// with_stop_token, with_timeout, when_all/when_any): it runs in `scope`, and
// when it finishes it reports to `join` if given, otherwise resumes
// `continuation`. Runs it until it first suspends; true if it finished
// already (then, with no join, the awaiter must not suspend).
inline bool start_task(promise_base& p, std::coroutine_handle<> h, cancel_scope* scope,
                       std::coroutine_handle<> continuation, join_point* join = nullptr) {
  p.set_scope(scope);
  if (join != nullptr)
    p.set_join(join);
  else
    p.set_continuation(continuation);
  return p.start_inline(h);
}

template <class T>
class task_promise final : public promise_base {
public:
  task<T> get_return_object() noexcept;
  void unhandled_exception() noexcept { storage_.template emplace<2>(std::current_exception()); }

  template <class U = T>
  requires std::is_convertible_v<U&&, T>
  void return_value(U&& v) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
    storage_.template emplace<1>(std::forward<U>(v));
  }

  T take_result() {
    if (storage_.index() == 2)
      std::rethrow_exception(std::get<2>(storage_));
    assert(storage_.index() == 1 && "task result taken before the task finished");
    return std::move(std::get<1>(storage_));
  }

private:
  std::variant<std::monostate, T, std::exception_ptr> storage_;
};

template <>
class task_promise<void> final : public promise_base {
public:
  task<void> get_return_object() noexcept;
  void unhandled_exception() noexcept { exception_ = std::current_exception(); }
  void return_void() noexcept {}
  void take_result() {
    if (exception_)
      std::rethrow_exception(exception_);
  }

private:
  std::exception_ptr exception_;
};

} // namespace detail

template <class T>
class [[nodiscard]] task {
  static_assert(!std::is_reference_v<T>, "task<T&> is not supported");

public:
  using promise_type = detail::task_promise<T>;
  using handle_type = std::coroutine_handle<promise_type>;
  using value_type = T;

  task() noexcept = default;
  explicit task(handle_type h) noexcept : handle_(h) {}
  task(task&& other) noexcept : handle_(std::exchange(other.handle_, {})) {}
  task& operator=(task&& other) noexcept {
    if (this != &other) {
      destroy();
      handle_ = std::exchange(other.handle_, {});
    }
    return *this;
  }
  task(const task&) = delete;
  task& operator=(const task&) = delete;
  ~task() { destroy(); }

  bool valid() const noexcept { return static_cast<bool>(handle_); }

  class awaiter {
  public:
    explicit awaiter(handle_type h) noexcept : handle_(h) {}
    bool await_ready() const noexcept {
      assert(handle_ && "co_await on an empty (moved-from) task");
      return false;
    }
    template <class Promise>
    bool await_suspend(std::coroutine_handle<Promise> awaiting) {
      // Finished already: do not suspend.
      return !detail::start_task(handle_.promise(), handle_, detail::scope_of(awaiting), awaiting);
    }
    T await_resume() { return handle_.promise().take_result(); }

  private:
    handle_type handle_;
  };

  awaiter operator co_await() & noexcept { return awaiter{handle_}; }
  awaiter operator co_await() && noexcept { return awaiter{handle_}; }

  // For the runtime (io_context, combinators): not part of the user API.
  handle_type handle() const noexcept { return handle_; }
  // Gives up ownership without destroying the frame.
  handle_type release() noexcept { return std::exchange(handle_, {}); }

private:
  void destroy() noexcept {
    if (handle_) {
      handle_.destroy();
      handle_ = {};
    }
  }

  handle_type handle_;
};

namespace detail {
template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
  return task<T>{std::coroutine_handle<task_promise<T>>::from_promise(*this)};
}
inline task<void> task_promise<void>::get_return_object() noexcept {
  return task<void>{std::coroutine_handle<task_promise<void>>::from_promise(*this)};
}
} // namespace detail

} // namespace couring
