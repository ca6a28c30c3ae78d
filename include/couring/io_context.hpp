#pragma once

// io_context: one io_uring and the loop that drives it, on one thread.
//
// Each loop turn submits every SQE prepared since the previous turn and waits
// for completions in a single io_uring_enter, then reaps all available CQEs in
// one batch and resumes the coroutines they belong to.

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <couring/detail/cancel_scope.hpp>
#include <couring/detail/ring.hpp>
#include <couring/io_context_options.hpp>
#include <couring/task.hpp>

namespace couring {

namespace detail {
class spawned_promise;

// Per-context state of an optional part of the library (the name resolver),
// made on first use and owned by the context: destroyed after the context's
// frames and before its ring, so that it can still close what it holds.
class context_service {
public:
  virtual ~context_service() = default;
};
} // namespace detail

class io_context {
public:
  explicit io_context(io_context_options options = {});
  ~io_context();
  io_context(const io_context&) = delete;
  io_context& operator=(const io_context&) = delete;

  // Drives the loop until t finishes and returns its value (or rethrows its
  // exception). Spawned tasks run meanwhile. If a spawned task throws, the
  // root task is cancelled and run rethrows that exception once the root has
  // finished.
  template <class T>
  T run(task<T> t) {
    detail::cancel_scope root_scope;
    auto h = t.handle();
    h.promise().set_scope(&root_scope);
    try {
      drive(h, &root_scope);
    } catch (...) {
      // Only a failing ring (broken_) leaves the root suspended with requests
      // in flight: then its frame must outlive this call, so it is leaked
      // rather than freed under the kernel's feet.
      if (!h.done() && ring_.broken()) {
        root_scope.detach();
        (void)t.release();
      }
      throw;
    }
    return h.promise().take_result();
  }

  // Starts t on the next loop turn; the context owns it until it finishes. An
  // exception escaping it is rethrown by run (the first one; later ones are
  // dropped only if one is already waiting to be rethrown).
  void spawn(task<void> t);

  // Drives the loop until no spawned task and no operation is left, until
  // stop() is called, or until a spawned task throws (rethrown here).
  void run();

  // Makes run() return at the end of the current turn; in run(task) it cancels
  // the root task instead. Safe to call from any thread and from signal-free
  // contexts (it writes to an eventfd the ring watches).
  void stop() noexcept;

  const io_context_features& features() const noexcept { return ring_.features(); }
  // Whether listeners accept with one multishot request (see io_context_options).
  bool multishot_accept_supported() const noexcept { return ring_.multishot_accept_supported(); }

  // The context whose run() is executing on this thread, or nullptr.
  static io_context* current() noexcept;
  // The same, for helpers that need a context and were given none: throws
  // std::logic_error naming `what` outside io_context::run.
  static io_context& running(const char* what);

  // Operations in flight: requests whose final CQE has not been reaped, plus
  // awaiters parked in a queue of ours (accepts waiting for a connection,
  // writes waiting for the one before them), less the context's and
  // listeners' own background requests.
  std::size_t pending_operations() const noexcept { return ring_.pending_operations(); }
  // Every request whose final CQE has not been reaped, background ones included.
  std::size_t submitted_requests() const noexcept { return ring_.pending(); }
  // Number of io_uring_enter calls made so far (for tests and benchmarks).
  std::uint64_t enter_count() const noexcept { return ring_.enter_count(); }
  // Completions reaped and requests prepared so far, modulo 2^32 (take
  // differences; for benchmarks).
  std::uint32_t cqe_count() const noexcept { return ring_.cqe_count(); }
  std::uint32_t sqe_count() const noexcept { return ring_.sqe_count(); }
  // Idle spins so far (io_context_options::idle_spin), and how many of them
  // ended because work arrived. Read them on the context's thread, or after
  // its run() returned.
  // Nudges of the kernel's worker pool so far (io_context_options::worker_watchdog).
  std::uint64_t worker_kicks() const noexcept { return ring_.worker_kicks(); }
  // Requests of the kernel's worker pool in flight (file I/O, paths, splice).
  std::size_t worker_requests() const noexcept { return ring_.worker_requests(); }
  std::uint64_t spin_count() const noexcept { return spins_; }
  std::uint64_t spin_hits() const noexcept { return spin_hits_; }
  // The spin bound in force (the option, with automatic_idle_spin resolved).
  std::chrono::microseconds idle_spin() const noexcept {
    return std::chrono::duration_cast<std::chrono::microseconds>(idle_spin_);
  }

  // --- for the library; not part of the user API ----------------------------
  detail::ring& ring() noexcept { return ring_; }
  // Cancels scope from any thread: directly on the loop's own thread,
  // otherwise through a queue the loop drains after waking up.
  void request_cancel(detail::cancel_scope* scope) noexcept;
  // Drops a queued request for scope (its owner is going away).
  void forget_cancel(detail::cancel_scope* scope) noexcept;
  // Cross-context messages through the mailbox (detail/message.hpp): false
  // once the context no longer takes any (it is shutting down).
  bool push_message(detail::message* m) noexcept;
  bool accepts_messages() const noexcept { return !mailbox_.closed(); }
  // The loop is in its idle spin, polling its mailbox: a message pushed
  // there now arrives without a syscall on either side (send_message).
  bool spinning() const noexcept { return spinning_.load(std::memory_order_relaxed); }
  // Sends m at the end of this loop turn, once the stack that suspended the
  // coroutine has unwound (a task started inline is still on it, and the
  // target may resume the coroutine at once). Owner thread only.
  void defer_message(detail::message* m) noexcept {
    m->next = nullptr;
    (outbox_tail_ != nullptr ? outbox_tail_->next : outbox_head_) = m;
    outbox_tail_ = m;
  }
  // For runtime: keeps run() going while no operation is pending (messages
  // from other threads can still arrive), and the teardown in three steps
  // (every context of a runtime drains before any frame is destroyed: a
  // frame may hold objects of several contexts).
  void keep_alive(int delta) noexcept { ring_.count_parked(delta); }
  void clear_stop() noexcept { stop_requested_.store(false, std::memory_order_relaxed); }
  void close_mailbox() noexcept; // abandons what is queued; later pushes fail
  void drain_for_teardown() noexcept;
  void destroy_frames() noexcept;
  // The resolver's per-context state (lib/resolve.cpp); empty until first use.
  std::unique_ptr<detail::context_service>& resolver_slot() noexcept { return resolver_; }

private:
  friend class detail::spawned_promise;

  void drive(std::coroutine_handle<> root, detail::cancel_scope* root_scope);
  void run_ready();
  void arm_wakeup();
  static void on_wakeup(detail::operation* op) noexcept;
  void process_remote_cancels() noexcept;
  bool run_messages() noexcept;
  void flush_outbox() noexcept;
  void wait_idle();
  void sleep_for_completions();
  enum class spin_end { work, timeout, preempted };
  spin_end spin_until_work() noexcept;

  detail::ring ring_;
  std::thread::id owner_;

  // The idle spin (io_context.cpp, wait_idle): its bound (0: off), the
  // credit that lets it spin -- earned by messages that arrived soon after
  // the loop went idle, spent by spins that found nothing -- and its back-off.
  std::chrono::steady_clock::duration idle_spin_{};
  int spin_credit_ = 0;
  unsigned spin_misses_ = 0; // empty spins in a row
  unsigned spin_skip_ = 0;   // idle waits left before the next spin
  std::uint64_t spins_ = 0;
  std::uint64_t spin_hits_ = 0;
  std::atomic<bool> spinning_{false};

  // Detached tasks: started from ready_, tracked so the destructor can
  // destroy those still suspended.
  std::vector<std::coroutine_handle<>> ready_;
  std::vector<std::coroutine_handle<>> ready_swap_;
  detail::spawned_promise* spawned_head_ = nullptr;
  std::size_t spawned_count_ = 0;
  std::exception_ptr spawn_error_;

  // Cross-thread stop() and cancellation: an eventfd with a read always
  // armed on it, and an intrusive list of scopes to cancel (no allocation on
  // the path that must not fail).
  int wake_fd_ = -1;
  std::uint64_t wake_buffer_ = 0;
  detail::operation wake_op_{};
  std::atomic<bool> stop_requested_{false};
  std::mutex remote_mutex_;
  detail::cancel_scope* remote_head_ = nullptr;
  std::atomic<bool> remote_pending_{false};
  detail::mailbox mailbox_;
  detail::message* outbox_head_ = nullptr;
  detail::message* outbox_tail_ = nullptr;

  // Last member: destroyed first, after the destructor's body (frames gone,
  // every CQE reaped) and before the ring.
  std::unique_ptr<detail::context_service> resolver_;
};

} // namespace couring
