#pragma once

// runtime: one io_context per thread, one thread per core (the model of
// Seastar, glommio, monoio): nothing is shared on the hot path, and a server
// becomes multi-core by changing its main, not its handlers.
//
//   couring::runtime rt;                       // one context per allowed CPU
//   int r = rt.run(main_task(rt));             // main_task runs on context 0
//
// Each context runs on its own thread, created by the runtime. Work moves
// between them with switch_to / spawn_on / post (switch_to.hpp). A server
// uses every core with a listener per context (listen_options::reuse_port,
// the kernel spreads connections) or with one acceptor handing connections
// round-robin (serve_round_robin below).
//
// run(t) wakes every context, runs t on context 0 and returns its value once
// it has finished; the other contexts run their spawned tasks meanwhile.
// stop() (any thread) cancels t and stops every loop. An exception escaping a
// task spawned on any context cancels t and is rethrown by run, as on one
// context. Between two runs the contexts sleep; what they were doing waits.
// Destroying the runtime (not from one of its threads) tears every context
// down as one context's destructor would, but in phases: every ring cancels
// and reaps all it has in flight, then the frames are destroyed, then the
// rings: a frame that holds objects of several contexts is never destroyed
// under a kernel still using one of them.

#include <atomic>
#include <barrier>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <couring/io_context.hpp>
#include <couring/io_context_options.hpp>
#include <couring/switch_to.hpp>
#include <couring/task.hpp>
#include <couring/tcp_listener.hpp>
#include <couring/tcp_stream.hpp>

namespace couring {

namespace detail {
// run's task, on context 0: brought back home before it ends.
template <class T>
task<T> return_home(io_context& home, task<T> t) {
  std::exception_ptr error;
  std::optional<std::conditional_t<std::is_void_v<T>, char, T>> value;
  try {
    if constexpr (std::is_void_v<T>) {
      co_await std::move(t);
      value.emplace();
    } else {
      value.emplace(co_await std::move(t));
    }
  } catch (...) {
    error = std::current_exception();
  }
  co_await switch_to(home);
  if (error)
    std::rethrow_exception(error);
  if constexpr (!std::is_void_v<T>)
    co_return std::move(*value);
}

template <class T>
class outcome {
public:
  outcome(io_context& home, task<T> t) {
    try {
      if constexpr (std::is_void_v<T>) {
        home.run(return_home(home, std::move(t)));
        value_.emplace();
      } else {
        value_.emplace(home.run(return_home(home, std::move(t))));
      }
    } catch (...) {
      error_ = std::current_exception();
    }
  }
  T take() {
    if (error_)
      std::rethrow_exception(error_);
    if constexpr (!std::is_void_v<T>)
      return std::move(*value_);
  }

private:
  std::optional<std::conditional_t<std::is_void_v<T>, char, T>> value_;
  std::exception_ptr error_;
};

} // namespace detail

struct runtime_options {
  // 0: as many as the CPUs this process may run on (sched_getaffinity).
  unsigned threads = 0;
  // Pin thread i to the i-th CPU the process may run on (modulo their count).
  bool pin_threads = false;
  // Every context's options; attach_wq_fd is set by the runtime (the
  // kernel's async workers are shared with context 0's ring).
  io_context_options context{};
};

class runtime {
public:
  // Starts the threads and their contexts; throws what a context's
  // constructor threw (std::system_error saying why io_uring is unavailable).
  explicit runtime(runtime_options options = {});
  ~runtime();
  runtime(const runtime&) = delete;
  runtime& operator=(const runtime&) = delete;

  std::size_t size() const noexcept { return workers_.size(); }
  io_context& context(std::size_t i) const { return *workers_.at(i)->ctx; }
  // The context i modulo size(): handy for spreading work.
  io_context& context_for(std::size_t i) const noexcept {
    return *workers_[i % workers_.size()]->ctx;
  }

  // Runs main on context 0 (it may switch_to elsewhere; it is brought back
  // before it ends) until it finishes, with every context running; returns
  // its value or rethrows its exception -- or the first exception that
  // escaped a task spawned on any context. Not from one of the runtime's
  // threads, and one run at a time (std::logic_error).
  template <class T>
  T run(task<T> main) {
    std::optional<detail::outcome<T>> out;
    run_session([&](io_context& home) { out.emplace(home, std::move(main)); });
    return out->take();
  }

  // Stops every context's loop and cancels run's task. Any thread.
  void stop() noexcept;

private:
  struct worker {
    std::thread thread;
    io_context* ctx = nullptr;
  };
  void thread_main(std::size_t index, int cpu, io_context_options options);
  void run_session(std::function<void(io_context&)> main_job);
  void serve_session(std::size_t index, io_context& ctx);

  std::vector<std::unique_ptr<worker>> workers_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::size_t ready_ = 0;
  std::exception_ptr start_error_;
  std::uint64_t session_ = 0;
  std::size_t active_ = 0;
  bool in_run_ = false;
  bool shutdown_ = false;
  std::function<void(io_context&)> main_job_;
  std::exception_ptr error_;
  std::atomic<bool> stopping_{false};
  std::unique_ptr<std::barrier<>> teardown_;
};

namespace detail {
template <class Handler>
task<void> adopt_and_serve(Handler handler, unique_fd fd) {
  tcp_stream s(io_context::running("serve_round_robin"), fd.release());
  co_await handler(std::move(s));
}
} // namespace detail

// One acceptor, every context: accepts on listener (on the calling context)
// and hands each connection to the next context in turn, where
// handler(tcp_stream) runs as a spawned task (its descriptor travels with the
// message; the target adopts it into an object record of its own). Returns
// when the listener is closed or the task cancelled; the first other accept
// error is returned. handler is copied into each connection's task.
template <class Handler>
task<result<void>> serve_round_robin(runtime& rt, tcp_listener& listener, Handler handler) {
  for (std::size_t next = 0;; ++next) {
    result<tcp_stream> s = co_await listener.accept();
    if (!s) {
      if (s.error() == std::errc::operation_canceled)
        co_return result<void>{};
      co_return s.error();
    }
    unique_fd fd = s->release();
    if (!spawn_on(rt.context_for(next), detail::adopt_and_serve(handler, std::move(fd))))
      co_return std::make_error_code(std::errc::operation_canceled);
  }
}

} // namespace couring
