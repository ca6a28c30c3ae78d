#pragma once

// io_context: one io_uring and the loop that drives it, on one thread.
//
// Each loop turn submits every SQE prepared since the previous turn and waits
// for completions in a single io_uring_enter, then reaps all available CQEs in
// one batch and resumes the coroutines they belong to.

#include <atomic>
#include <cerrno>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <liburing.h>

#include <couring/detail/cancel_scope.hpp>
#include <couring/detail/operation.hpp>
#include <couring/task.hpp>

namespace couring {

struct io_context_options {
  unsigned sq_entries = 256;
  unsigned cq_entries = 0;      // 0: four times sq_entries
  bool register_ring_fd = true; // io_uring_register_ring_fd, where the kernel allows it
  bool multishot_accept = true; // tcp_listener uses multishot accept where supported
};

// What the kernel accepted when the ring was set up (flags fall back one by one).
struct io_context_features {
  unsigned setup_flags = 0;     // IORING_SETUP_* actually in force
  unsigned kernel_features = 0; // io_uring_params::features
  bool ring_fd_registered = false;
  unsigned sq_entries = 0;
  unsigned cq_entries = 0;
};

namespace detail {
class spawned_promise;
// Builds the message io_context's constructor throws with when io_uring_setup
// fails: the cause and what to do about it. Split out so that each cause can
// be tested without changing the machine (sysctl value, memlock limit).
std::string describe_setup_failure(int err, int io_uring_disabled,
                                   unsigned long long memlock_limit);
// Calls try_setup(flags) with the set-up flags we want, giving them up one by
// one while it returns -EINVAL; the flags that worked land in accepted.
// Returns 0 or the last error. Split out so that older kernels can be mimicked.
int setup_with_fallback(const std::function<int(unsigned flags)>& try_setup, unsigned& accepted);
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
      if (!h.done() && broken_) {
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

  const io_context_features& features() const noexcept { return features_; }

  // The context whose run() is executing on this thread, or nullptr.
  static io_context* current() noexcept;
  // The same, for helpers that need a context and were given none: throws
  // std::logic_error naming `what` outside io_context::run.
  static io_context& running(const char* what);

  // Cancels scope from any thread: directly on the loop's own thread,
  // otherwise through a queue the loop drains after waking up.
  void request_cancel(detail::cancel_scope* scope) noexcept;
  // Drops a queued request for scope (its owner is going away).
  void forget_cancel(detail::cancel_scope* scope) noexcept;

  // Operations in flight: requests whose final CQE has not been reaped, plus
  // awaiters parked in a queue of ours (accepts waiting for a connection),
  // less the context's and listeners' own background requests.
  std::size_t pending_operations() const noexcept { return pending_ - internal_pending_ + parked_; }
  // Every request whose final CQE has not been reaped, background ones included.
  std::size_t submitted_requests() const noexcept { return pending_; }
  // Number of io_uring_enter calls made so far (for tests and benchmarks).
  std::uint64_t enter_count() const noexcept { return enter_count_; }

  // --- for awaitables; not part of the user API ---------------------------
  // A free SQE; when the submission queue is full, submits it first.
  io_uring_sqe* get_sqe() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    return sqe != nullptr ? sqe : get_sqe_slow();
  }
  // Makes sure n SQEs can be taken back to back (linked requests must be
  // adjacent in the ring, so a submit between them would cut the link).
  void reserve_sqes(unsigned n) {
    if (io_uring_sq_space_left(&ring_) < n)
      flush_full_sq(n);
  }
  // Ties sqe to op: sets user_data (never left to chance, a reused slot keeps
  // the old value) and counts the CQE it will produce.
  void arm(io_uring_sqe* sqe, detail::operation* op) noexcept {
    io_uring_sqe_set_data(sqe, op);
    ++op->outstanding;
    ++pending_;
  }
  // Attaches an IORING_OP_LINK_TIMEOUT to the request just prepared in sqe.
  void arm_link_timeout(io_uring_sqe* sqe, detail::operation* op, __kernel_timespec* ts);
  // Submits IORING_OP_ASYNC_CANCEL for op; op still completes through its own CQE.
  void cancel(detail::operation* op) noexcept;
  // Closes fd after cancelling whatever is still in flight on it.
  void close_fd(int fd) noexcept;
  bool multishot_accept_supported() const noexcept { return multishot_accept_; }
  // Debug builds: a read (or write) on fd starts / ends; a second one while
  // the first is in flight is a programming error and aborts with a message.
  void claim_stream(int fd, bool write);
  void release_stream(int fd, bool write) noexcept;
  // A background request (a listener's multishot accept) does not keep run()
  // going by itself; a parked awaiter does.
  void count_internal(int delta) noexcept { internal_pending_ += static_cast<std::size_t>(delta); }
  void count_parked(int delta) noexcept { parked_ += static_cast<std::size_t>(delta); }
  // Resumes h on the next loop turn (never inline: the caller may be in the
  // middle of something, such as a cancellation).
  void post(std::coroutine_handle<> h) noexcept;
  // True while the destructor drains the ring: completions must not resume
  // coroutines any more (their frames are about to be destroyed).
  bool shutting_down() const noexcept { return shutting_down_; }

private:
  friend class detail::spawned_promise;

  io_uring_sqe* get_sqe_slow();
  void flush_full_sq(unsigned wanted);
  void drive(std::coroutine_handle<> root, detail::cancel_scope* root_scope);
  void turn(bool block);
  void reap() noexcept;
  void dispatch(const io_uring_cqe* cqe) noexcept;
  void run_ready();
  void arm_wakeup();
  static void on_wakeup(detail::operation* op) noexcept;
  void cancel_everything_and_drain() noexcept;
  void submit_pending() noexcept;
  void flush_closes() noexcept;
  void process_remote_cancels() noexcept;

  io_uring ring_{};
  io_context_features features_{};
  bool multishot_accept_ = false;
  bool shutting_down_ = false;
  bool broken_ = false; // io_uring_enter failed unexpectedly: no CQE can be trusted
  bool running_ = false;
  std::thread::id owner_;
  std::size_t pending_ = 0;          // CQEs still expected for user_data != 0
  std::size_t internal_pending_ = 0; // of which: background requests (wake-up read, accepts)
  std::size_t parked_ = 0;           // awaiters waiting in a queue of ours
  std::uint64_t enter_count_ = 0;

  // Detached tasks: started from ready_, tracked so the destructor can
  // destroy those still suspended.
  std::vector<std::coroutine_handle<>> ready_;
  std::vector<std::coroutine_handle<>> ready_swap_;
  detail::spawned_promise* spawned_head_ = nullptr;
  std::size_t spawned_count_ = 0;
  std::exception_ptr spawn_error_;
  // Streams with a read / a write in flight (debug builds), by descriptor.
  std::vector<bool> reading_, writing_;
  // Descriptors whose cancel-by-fd is queued; closed right after it is submitted.
  std::vector<int> closing_fds_;

  // Cross-thread stop(): an eventfd with a read always armed on it.
  int wake_fd_ = -1;
  std::uint64_t wake_buffer_ = 0;
  detail::operation wake_op_{};
  std::atomic<bool> stop_requested_{false};
  std::mutex remote_mutex_;
  std::vector<detail::cancel_scope*> remote_cancels_;
  std::atomic<bool> remote_pending_{false};
};

} // namespace couring
