#include <couring/io_context.hpp>
#include <couring/switch_to.hpp>

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <system_error>

#include <sys/eventfd.h>
#include <unistd.h>

namespace couring {

namespace detail {

// The frame that owns a spawned task: it awaits the task, reports an escaping
// exception to the context, and unlinks and destroys itself at the end.
class spawned_frame {
public:
  using promise_type = spawned_promise;
  explicit spawned_frame(std::coroutine_handle<spawned_promise> h) noexcept : handle(h) {}
  std::coroutine_handle<spawned_promise> handle;
};

class spawned_promise : public promise_base {
public:
  spawned_promise(io_context& ctx, task<void>&) noexcept : ctx_(&ctx) {}

  spawned_frame get_return_object() noexcept {
    return spawned_frame{std::coroutine_handle<spawned_promise>::from_promise(*this)};
  }

  struct final_awaiter {
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<spawned_promise> self) noexcept {
      self.promise().unlink();
      self.destroy();
    }
    void await_resume() const noexcept {}
  };
  final_awaiter final_suspend() const noexcept { return {}; }

  void unhandled_exception() noexcept {
    if (!ctx_->spawn_error_)
      ctx_->spawn_error_ = std::current_exception();
  }
  void return_void() noexcept {}

  void link() noexcept {
    next_ = ctx_->spawned_head_;
    if (next_ != nullptr)
      next_->prev_ = this;
    ctx_->spawned_head_ = this;
    ++ctx_->spawned_count_;
  }
  void unlink() noexcept {
    if (prev_ != nullptr)
      prev_->next_ = next_;
    else
      ctx_->spawned_head_ = next_;
    if (next_ != nullptr)
      next_->prev_ = prev_;
    --ctx_->spawned_count_;
  }
  spawned_promise* next() const noexcept { return next_; }

private:
  io_context* ctx_;
  spawned_promise* prev_ = nullptr;
  spawned_promise* next_ = nullptr;
};

namespace {
spawned_frame spawn_wrapper(io_context& ctx, task<void> t) {
  // A task that switched to another context (switch_to.hpp) comes back
  // before it ends: the context's list of spawned tasks is its own thread's.
  std::exception_ptr error;
  try {
    co_await std::move(t);
  } catch (...) {
    error = std::current_exception();
  }
  if (!ctx.ring().on_owner_thread())
    co_await switch_to(ctx);
  if (error)
    std::rethrow_exception(error);
}
} // namespace

} // namespace detail

namespace {
thread_local io_context* current_context = nullptr;

const io_context_options& validated(const io_context_options& o) {
  if (o.idle_spin != automatic_idle_spin &&
      (o.idle_spin.count() < 0 || o.idle_spin > max_idle_spin))
    throw std::invalid_argument("couring: io_context_options::idle_spin must be between 0 and " +
                                std::to_string(max_idle_spin.count()) +
                                " us (or automatic_idle_spin)");
  if (o.wait_batch < 1 || o.wait_batch > max_wait_batch)
    throw std::invalid_argument("couring: io_context_options::wait_batch must be between 1 and " +
                                std::to_string(max_wait_batch));
  if (o.wait_batch_timeout.count() < 1 || o.wait_batch_timeout > max_wait_batch_timeout)
    throw std::invalid_argument(
        "couring: io_context_options::wait_batch_timeout must be between 1 and " +
        std::to_string(max_wait_batch_timeout.count()) + " us");
  if (o.worker_watchdog.count() < 0 || o.worker_watchdog > max_worker_watchdog)
    throw std::invalid_argument(
        "couring: io_context_options::worker_watchdog must be between 0 and " +
        std::to_string(max_worker_watchdog.count()) + " ms");
  return o;
}

// Tells the core that this is a busy-wait (a sibling hyperthread gets the
// core's resources, and leaving the loop does not flush the pipeline).
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#else
  std::atomic_signal_fence(std::memory_order_seq_cst);
#endif
}

// Spin credit: a spin that catches work refills it; each one that finds
// nothing spends one, so a context whose messages stopped spins at most this
// many times before it only sleeps.
constexpr int max_spin_credit = 4;
// Consecutive empty spins skip up to 2^this - 2 idle waits before the next.
constexpr unsigned max_spin_skip_shift = 10;
// Longer than any pause between two looks of the spin short of preemption.
constexpr std::chrono::microseconds spin_preempted_gap{30};
} // namespace

io_context::io_context(io_context_options options)
    : ring_(*this, validated(options)), owner_(std::this_thread::get_id()) {
  // Automatic means no spin for a context of its own: runtime resolves it
  // for its contexts before they are made.
  if (options.idle_spin.count() > 0)
    idle_spin_ = options.idle_spin;
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0)
    throw std::system_error(errno, std::system_category(), "couring: eventfd");
  wake_op_.owner_ring = &ring_;
  wake_op_.on_complete = &io_context::on_wakeup;
  wake_op_.on_abandon = [](detail::operation* op) noexcept {
    op->owner_ring->count_internal(-1);
  };
  arm_wakeup();
}

io_context::~io_context() {
  if (ring_.foreign()) {
    // A fork() child dropping the context it inherited: the rings are the
    // parent's. Submit nothing, reap nothing, destroy no frame (destroying
    // one would run destructors that cancel the parent's requests); the
    // ring's destructor only unmaps and closes this process's references.
    ::close(wake_fd_);
    return;
  }
  if (ring_.broken()) {
    // The ring failed: no completion can be reaped, so no frame can safely
    // be destroyed. Leak them; closing the ring cancels what is left.
    ::close(wake_fd_);
    return;
  }
  close_mailbox();
  drain_for_teardown();
  destroy_frames();
  ::close(wake_fd_);
}

void io_context::close_mailbox() noexcept {
  for (detail::message* m = mailbox_.close(); m != nullptr;) {
    detail::message* next = m->next;
    m->abandon(m);
    m = next;
  }
}

void io_context::drain_for_teardown() noexcept {
  if (ring_.foreign() || ring_.broken())
    return;
  // Messages other rings posted before their loops ended are abandoned
  // (draining), then everything in flight is cancelled and reaped.
  ring_.drain();
  ring_.flush_completions();
}

void io_context::destroy_frames() noexcept {
  if (ring_.foreign() || ring_.broken())
    return;
  if (ring_.pending() == 0) {
    // Every CQE is in: destroying the frames can no longer race the kernel.
    // Objects they own close at once (nothing is in flight on them).
    while (spawned_head_ != nullptr) {
      detail::spawned_promise* p = spawned_head_;
      p->unlink();
      std::coroutine_handle<detail::spawned_promise>::from_promise(*p).destroy();
    }
  } else if (spawned_head_ != nullptr) {
    // Some request ignored cancellation for seconds. Freeing its frame would
    // let the kernel write into freed memory later, so leak it instead.
    spawned_head_ = nullptr;
    std::fputs("couring: io_context destroyed with operations that could not be "
               "cancelled; their coroutine frames are leaked on purpose\n",
               stderr);
  }
}

bool io_context::push_message(detail::message* m) noexcept {
  m->target = this;
  switch (mailbox_.push(m)) {
  case detail::mailbox::push_result::refused:
    return false;
  case detail::mailbox::push_result::accepted_first: {
    // A spinning consumer polls the mailbox: no wake-up needed. (It clears
    // spinning_ and then looks at the mailbox before it sleeps; we pushed,
    // then look at spinning_: seq_cst both, so one of us sees the other.)
    if (spinning_.load(std::memory_order_seq_cst))
      break;
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
    break;
  }
  case detail::mailbox::push_result::accepted:
    break;
  }
  return true;
}

void io_context::flush_outbox() noexcept {
  detail::message* m = std::exchange(outbox_head_, nullptr);
  outbox_tail_ = nullptr;
  while (m != nullptr) {
    detail::message* next = m->next; // m belongs to the target once sent
    if (!detail::send_message(*m->target, m))
      m->abandon(m); // the target shut down meanwhile (see switch_to.hpp)
    m = next;
  }
}

bool io_context::run_messages() noexcept {
  if (mailbox_.empty())
    return false;
  for (detail::message* m = mailbox_.take(); m != nullptr;) {
    detail::message* next = m->next; // m may be gone once delivered
    m->deliver(m);
    m = next;
  }
  return true;
}

void io_context::arm_wakeup() {
  io_uring_sqe* sqe = ring_.get_sqe();
  io_uring_prep_read(sqe, wake_fd_, &wake_buffer_, sizeof wake_buffer_, 0);
  ring_.arm(sqe, &wake_op_);
  ring_.count_internal(+1);
}

void io_context::on_wakeup(detail::operation* op) noexcept {
  auto& self = op->owner_ring->context();
  self.ring_.count_internal(-1);
  try {
    self.arm_wakeup();
  } catch (...) {
    // Without a wake-up read, stop() from another thread waits for the next
    // completion instead; not worth dying for.
  }
}

io_context* io_context::current() noexcept {
  return current_context;
}

io_context& io_context::running(const char* what) {
  if (current_context == nullptr)
    throw std::logic_error(std::string("couring: ") + what +
                           " needs a running io_context; pass the context explicitly outside "
                           "io_context::run");
  return *current_context;
}

void io_context::request_cancel(detail::cancel_scope* scope) noexcept {
  if (std::this_thread::get_id() == owner_) {
    scope->cancel(ECANCELED);
    return;
  }
  {
    std::lock_guard lock(remote_mutex_);
    if (!scope->remote_queued) {
      scope->remote_queued = true;
      scope->remote_next = remote_head_;
      remote_head_ = scope;
    }
  }
  remote_pending_.store(true, std::memory_order_release);
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

void io_context::forget_cancel(detail::cancel_scope* scope) noexcept {
  std::lock_guard lock(remote_mutex_);
  if (!scope->remote_queued)
    return;
  for (detail::cancel_scope** p = &remote_head_; *p != nullptr; p = &(*p)->remote_next) {
    if (*p == scope) {
      *p = scope->remote_next;
      break;
    }
  }
  scope->remote_queued = false;
  scope->remote_next = nullptr;
}

void io_context::process_remote_cancels() noexcept {
  // A plain load first: the read-modify-write only when there is work.
  if (!remote_pending_.load(std::memory_order_relaxed) ||
      !remote_pending_.exchange(false, std::memory_order_acquire))
    return;
  std::lock_guard lock(remote_mutex_);
  while (detail::cancel_scope* scope = remote_head_) {
    remote_head_ = scope->remote_next;
    scope->remote_next = nullptr;
    scope->remote_queued = false;
    scope->cancel(ECANCELED);
  }
}

void io_context::stop() noexcept {
  stop_requested_.store(true, std::memory_order_release);
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

void io_context::spawn(task<void> t) {
  if (!t.valid())
    throw std::invalid_argument("couring: spawn of an empty task");
  detail::spawned_frame f = detail::spawn_wrapper(*this, std::move(t));
  f.handle.promise().link();
  ready_.push_back(f.handle);
}

void io_context::run() {
  drive({}, nullptr);
}

void io_context::run_ready() {
  while (!ready_.empty()) {
    ready_swap_.clear();
    ready_swap_.swap(ready_);
    for (auto h : ready_swap_)
      h.resume();
  }
}

io_context::spin_end io_context::spin_until_work() noexcept {
  auto now = std::chrono::steady_clock::now();
  const auto deadline = now + idle_spin_;
  for (;;) {
    // A few pauses between looks: the lines polled belong to other cores'
    // writers (the kernel's, a sender's), and the clock read is not free.
    for (int i = 0; i < 8; ++i)
      cpu_relax();
    if (ring_.completions_waiting() || !mailbox_.empty() ||
        stop_requested_.load(std::memory_order_relaxed) ||
        remote_pending_.load(std::memory_order_relaxed))
      return spin_end::work;
    const auto before = now;
    now = std::chrono::steady_clock::now();
    // A gap between two looks means this thread was preempted: the CPUs
    // are oversubscribed, and spinning takes them from whoever would answer.
    if (now - before > spin_preempted_gap)
      return spin_end::preempted;
    if (now >= deadline)
      return spin_end::timeout;
  }
}

// The loop sleeps until a completion comes, or with the batched sleep
// (io_context_options::wait_batch) until a few came or the batch timeout
// passed with one: never for more than are in flight (the timeout would
// end every such wait), and not for one or none.
void io_context::sleep_for_completions() {
  const std::size_t batch = std::min<std::size_t>(ring_.wait_batch(), ring_.pending_operations());
  if (batch > 1)
    ring_.enter_batched(static_cast<unsigned>(batch));
  else
    ring_.enter(true);
}

// The loop has nothing to run and would sleep in io_uring_enter. While
// messages from other contexts keep arriving soon after it goes idle, it
// first polls (spin_until_work) for up to idle_spin_: an answer that comes
// meanwhile costs this thread no sleep and the sender no wake-up.
//  - Credit: a message that ends a short sleep (shorter than the bound)
//    earns one, a spin that catches a message refills them
//    (max_spin_credit), any other spin spends one (it found nothing, or
//    only a timer or I/O). A context that receives no messages never spins;
//    one whose messages stopped spins at most max_spin_credit more times.
//  - Back-off: spins that keep finding nothing (the answer takes longer than
//    the bound, or the answering thread shares this CPU and cannot run while
//    this one spins, or this thread was preempted) skip an exponentially
//    growing number of idle waits (up to max_spin_skip) before trying again.
// No wake-up is lost when the spin gives up just as something arrives: the
// blocking enter that follows sees it (deferred task work is run before the
// kernel waits; the mailbox and stop() also write the eventfd whose read is
// armed).
void io_context::wait_idle() {
  bool missed = false;
  if (spin_credit_ > 0 && spin_skip_ > 0) {
    --spin_skip_;
  } else if (spin_credit_ > 0) {
    // Submit first: what this turn prepared must be on its way (no syscall
    // when nothing was: a message to a spinning context went to its mailbox).
    // Anything that came in ends this wait: what it resumes may submit, send
    // or finish, which the loop's turn handles.
    ring_.submit_idle();
    if (ring_.completions_waiting() || !mailbox_.empty()) {
      ring_.reap();
      if (ring_.completions_waiting()) {
        ring_.enter(false);
        ring_.reap();
      }
      return;
    }
    ++spins_;
    // While spinning_ is set, senders push into the mailbox and skip the
    // eventfd (push_message); clearing it and then looking at the mailbox
    // again (both seq_cst, against their push and then load) means that a
    // message either woke the eventfd or is seen here.
    spinning_.store(true, std::memory_order_seq_cst);
    const spin_end end = spin_until_work();
    spinning_.store(false, std::memory_order_seq_cst);
    const std::uint64_t messages = ring_.messages_received();
    const bool message = !mailbox_.empty();
    const bool work = end == spin_end::work || message || ring_.completions_waiting();
    if (end == spin_end::work || (work && end == spin_end::timeout)) {
      ++spin_hits_;
      spin_misses_ = 0;
    } else {
      // Nothing came, or it came while this thread was preempted (then the
      // answer may have needed this very CPU): back off.
      missed = true;
      spin_misses_ = std::min(spin_misses_ + 1, max_spin_skip_shift);
      spin_skip_ = (1u << spin_misses_) - 2; // 0, 2, 6, 14, ...
    }
    if (work) {
      ring_.reap();
      if (ring_.completions_waiting()) { // task work: only an enter runs it
        ring_.enter(false);
        ring_.reap();
      }
      // Only messages keep the spin going: a spin that caught a timer or
      // a socket spends credit, so a loop without cross-context traffic
      // soon stops spinning whatever else it does.
      if (!missed && (message || ring_.messages_received() != messages))
        spin_credit_ = max_spin_credit;
      else
        --spin_credit_;
      return;
    }
    --spin_credit_;
  }
  const std::uint64_t messages = ring_.messages_received();
  const auto start = std::chrono::steady_clock::now();
  sleep_for_completions();
  ring_.reap();
  // A message that ended a short sleep: spinning would have caught it
  // (unless the spin just before this sleep did not: then it would not).
  if (!missed && spin_credit_ < max_spin_credit &&
      (ring_.messages_received() != messages || !mailbox_.empty()) &&
      std::chrono::steady_clock::now() - start < idle_spin_)
    ++spin_credit_;
}

void io_context::drive(std::coroutine_handle<> root, detail::cancel_scope* root_scope) {
  if (ring_.foreign())
    throw std::logic_error("couring: io_context::run in a child process: the context was "
                           "created before fork() and its ring belongs to the parent");
  if (std::this_thread::get_id() != owner_)
    throw std::logic_error("couring: io_context::run called from another thread than the "
                           "one that created the context (the ring is single-issuer)");
  if (ring_.running())
    throw std::logic_error("couring: io_context::run called from inside run");
  if (ring_.broken())
    throw std::logic_error("couring: io_context::run after the ring failed");
  ring_.set_running(true);
  io_context* const outer = std::exchange(current_context, this);
  struct running_guard {
    io_context* self;
    io_context* outer;
    ~running_guard() {
      current_context = outer;
      self->ring_.set_running(false);
      self->flush_outbox();
      self->ring_.submit_now(); // cancels of objects closed on the way out
    }
  } guard{this, outer};

  bool root_cancelled = false;
  if (root)
    root.resume();
  for (;;) {
    while (!ready_.empty() || ring_.has_posted()) {
      run_ready();
      ring_.run_posted();
    }
    // Both tested inline first: a loop turn with neither pays no call.
    if (remote_pending_.load(std::memory_order_relaxed))
      process_remote_cancels();
    // Messages from other threads: what they resume runs now, what they
    // spawn on the next turn (which then does not block).
    if (!mailbox_.empty())
      run_messages();
    const bool stop = stop_requested_.load(std::memory_order_acquire);
    if (root) {
      if (root.done())
        break;
      if ((stop || spawn_error_) && !root_cancelled) {
        root_cancelled = true;
        root_scope->cancel(ECANCELED);
      }
    } else if (stop || spawn_error_ || (spawned_count_ == 0 && pending_operations() == 0)) {
      break;
    }
    const bool idle = ready_.empty() && !ring_.has_posted();
    if (pending_operations() == 0 && idle) {
      throw std::logic_error(
          root ? "couring: run(task): the task is suspended, but no operation is in flight "
                 "that could resume it (deadlock)"
               : "couring: run(): spawned tasks are suspended, but no operation is in "
                 "flight that could resume them (deadlock)");
    }
    if (outbox_head_ != nullptr) // a test inline, not a call per turn
      flush_outbox();
    if (idle && ring_.watch_workers()) [[unlikely]] {
      ring_.enter_watchful();
      ring_.reap();
    } else if (idle && idle_spin_.count() != 0) [[unlikely]] {
      wait_idle();
    } else if (idle && ring_.wait_batch() > 1) [[unlikely]] {
      sleep_for_completions();
      ring_.reap();
    } else {
      ring_.enter(idle);
      ring_.reap();
    }
  }
  stop_requested_.store(false, std::memory_order_relaxed);
  if (spawn_error_)
    std::rethrow_exception(std::exchange(spawn_error_, nullptr));
}

} // namespace couring
