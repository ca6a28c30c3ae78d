#pragma once

// Cross-context scheduling: moving a coroutine, a task or a function to
// another io_context's thread (usually one of a runtime's, runtime.hpp).
//
//   co_await switch_to(other);          // resumes on other's thread
//   spawn_on(other, handle(conn));      // starts a task there
//   post(other, [] { ... });            // runs a function there, from any thread
//
// Between two contexts the message is an IORING_OP_MSG_RING completion
// posted straight into the target's ring: no lock, no syscall of its own.
// From a thread without a context, or when MSG_RING cannot be used, it goes
// through the target's lock-free mailbox and eventfd (detail/message.hpp).
//
// Rules (docs/design.md, "Threading rules"):
//  - Objects (streams, listeners, timers...) belong to the context that
//    created them; use them only from coroutines running there.
//  - A coroutine that switched leaves the cancel scope it ran in: its
//    operations on the new context are cancelled by scopes opened there
//    (with_timeout, with_stop_token, when_any), not by its old context's.
//  - A task ends on the context that started it: spawn (and so spawn_on)
//    and runtime::run switch a task back before it finishes.
//  - A message that reached a context while its loop runs is run there; a
//    message to a context that is shut down is refused (switch_to throws
//    std::logic_error, spawn_on and post return false); a message that is
//    in flight when a runtime is destroyed is abandoned: a task is destroyed
//    unstarted, a function destroyed uncalled, a switched coroutine is
//    destroyed with its owner's frames. No message is ever run after its
//    context has shut down, and none is leaked.

#include <coroutine>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include <couring/detail/message.hpp>
#include <couring/io_context.hpp>
#include <couring/task.hpp>

namespace couring {

// co_await switch_to(target): the coroutine continues on target's thread
// (at once if it already runs there). No allocation: the awaiter in the
// coroutine's frame is the message.
class [[nodiscard]] switch_to_awaitable : private detail::message {
public:
  explicit switch_to_awaitable(io_context& target) noexcept { this->target = &target; }
  switch_to_awaitable(const switch_to_awaitable&) = delete;
  switch_to_awaitable& operator=(const switch_to_awaitable&) = delete;

  bool await_ready() const noexcept { return io_context::current() == this->target; }

  template <class Promise>
  void await_suspend(std::coroutine_handle<Promise> awaiting) {
    if constexpr (std::is_base_of_v<detail::promise_base, Promise>) {
      // The old context's scope must not reach operations on the new one
      // (cancelling crosses no thread); see the rules above.
      awaiting.promise().set_scope(nullptr);
    }
    waiter_ = awaiting;
    this->deliver = [](message* m) noexcept {
      static_cast<switch_to_awaitable*>(m)->waiter_.resume();
    };
    // The frame is destroyed by whoever owns it, after every context drained.
    this->abandon = [](message*) noexcept {
    };
    if (!this->target->accepts_messages())
      throw std::logic_error("couring: switch_to a context that is shut down");
    // Sent at the end of this loop turn: the target may resume the
    // coroutine at once, and the stack that suspended it (a task started
    // inline) must have unwound by then.
    if (io_context* here = io_context::current())
      here->defer_message(this);
    else if (!detail::send_message(*this->target, this))
      throw std::logic_error("couring: switch_to a context that is shut down");
  }
  void await_resume() const noexcept {}

private:
  std::coroutine_handle<> waiter_{};
};

[[nodiscard]] inline switch_to_awaitable switch_to(io_context& target) noexcept {
  return switch_to_awaitable(target);
}

namespace detail {
struct spawn_message : message {
  explicit spawn_message(task<void> t) noexcept : work(std::move(t)) {
    deliver = [](message* m) noexcept {
      auto* self = static_cast<spawn_message*>(m);
      try {
        self->target->spawn(std::move(self->work));
      } catch (...) {
        // Out of memory for the task's frame: the task is dropped.
      }
      delete self;
    };
    abandon = [](message* m) noexcept {
      delete static_cast<spawn_message*>(m);
    };
  }
  task<void> work;
};

template <class F>
task<void> call_once(F f) {
  f();
  co_return;
}
} // namespace detail

// Starts t on target's thread, as target.spawn(t) would there (an exception
// escaping it reaches target's run, or the runtime's). Callable from any
// thread. False if target is shut down (t is then destroyed unstarted).
inline bool spawn_on(io_context& target, task<void> t) {
  if (!t.valid())
    throw std::invalid_argument("couring: spawn_on of an empty task");
  auto* m = new detail::spawn_message(std::move(t));
  if (detail::send_message(target, m))
    return true;
  delete m;
  return false;
}

// Runs f() on target's thread, from any thread (one with no context too).
// An exception escaping f is handled like one escaping a spawned task.
template <class F>
bool post(io_context& target, F&& f) {
  return spawn_on(target, detail::call_once(std::decay_t<F>(std::forward<F>(f))));
}

} // namespace couring
