#include <couring/io_context.hpp>

#include <couring/detail/io_awaitable.hpp>

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <system_error>

#include <sys/eventfd.h>
#include <sys/resource.h>
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

spawned_frame spawn_wrapper(io_context&, task<void> t) {
  co_await std::move(t);
}

int read_io_uring_disabled() {
  std::ifstream in("/proc/sys/kernel/io_uring_disabled");
  int value = -1;
  if (!(in >> value))
    return -1;
  return value;
}

unsigned long long memlock_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_MEMLOCK, &rl) != 0)
    return 0;
  return rl.rlim_cur;
}

} // namespace

std::string describe_setup_failure(int err, int io_uring_disabled, unsigned long long memlock) {
  std::string msg = "couring: cannot set up io_uring (io_uring_setup failed: ";
  msg += std::generic_category().message(err);
  msg += "). ";
  if (err == EPERM && io_uring_disabled > 0) {
    msg += "The sysctl kernel.io_uring_disabled is " + std::to_string(io_uring_disabled);
    msg += io_uring_disabled == 2 ? " (io_uring disabled for every process)"
                                  : " (io_uring allowed only for members of kernel.io_uring_group)";
    msg += ". Fix: sysctl -w kernel.io_uring_disabled=0";
    if (io_uring_disabled == 1)
      msg += ", or run as a member of the group in kernel.io_uring_group";
    msg += ".";
  } else if (err == EPERM || err == ENOSYS) {
    msg += err == EPERM ? "kernel.io_uring_disabled is 0, so "
                          "a seccomp filter most likely refuses io_uring_setup"
                        : "Either the kernel lacks io_uring (CONFIG_IO_URING) or "
                          "a seccomp filter refuses io_uring_setup";
    msg += " (the default seccomp profile of Docker 25+ and of many container runtimes "
           "does). Fix: run the container with a seccomp profile that allows "
           "io_uring_setup, io_uring_enter and io_uring_register "
           "(for example --security-opt seccomp=<profile>), or outside the sandbox.";
  } else if (err == ENOMEM) {
    msg += "The locked-memory limit is too low for the ring (RLIMIT_MEMLOCK = ";
    msg += memlock == RLIM_INFINITY ? std::string("unlimited") : std::to_string(memlock) + " bytes";
    msg += "; kernels before 5.12 charge rings against it). Fix: raise it (ulimit -l, "
           "LimitMEMLOCK= in systemd, memlock in /etc/security/limits.conf) or "
           "ask for a smaller ring with io_context_options::sq_entries.";
  } else if (err == EMFILE || err == ENFILE) {
    msg += "No file descriptor is left for the ring. Fix: raise the open-file limit "
           "(ulimit -n) or close descriptors.";
  } else if (err == EINVAL) {
    msg += "The kernel refused every combination of ring set-up flags; it is probably "
           "older than 5.10. Fix: use a newer kernel.";
  }
  return msg;
}

} // namespace detail

namespace {
thread_local io_context* current_context = nullptr;
} // namespace

namespace detail {

int setup_with_fallback(const std::function<int(unsigned flags)>& try_setup, unsigned& accepted) {
  // Newest first (6.1, 6.0, 5.19, 5.18, 5.5): a kernel knows every flag older
  // than the newest it knows, so giving them up in this order keeps all the
  // ones it supports. DEFER_TASKRUN needs SINGLE_ISSUER, and goes first.
  static constexpr unsigned wanted_flags[] = {
      IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_COOP_TASKRUN,
      IORING_SETUP_SUBMIT_ALL,    IORING_SETUP_CQSIZE,
  };
  unsigned flags = 0;
  for (unsigned f : wanted_flags)
    flags |= f;
  for (std::size_t dropped = 0;; ++dropped) {
    const int err = try_setup(flags);
    if (err == 0) {
      accepted = flags;
      return 0;
    }
    // Only EINVAL means "a flag is unknown here"; anything else (EPERM,
    // ENOSYS, ENOMEM, ...) will not get better with fewer flags.
    if (err != -EINVAL || dropped == std::size(wanted_flags))
      return err;
    flags &= ~wanted_flags[dropped];
  }
}

} // namespace detail

io_context::io_context(io_context_options options) : owner_(std::this_thread::get_id()) {
  // At least two SQ slots: a request and its linked timeout must fit together.
  const unsigned sq = options.sq_entries == 0 ? 256 : std::max(options.sq_entries, 2u);
  const unsigned cq = options.cq_entries == 0 ? sq * 4 : options.cq_entries;

  const auto try_setup = [&](unsigned flags) {
    io_uring_params params{};
    params.flags = flags;
    params.cq_entries = cq;
    const int err = io_uring_queue_init_params(sq, &ring_, &params);
    if (err == 0) {
      features_.kernel_features = params.features;
      features_.sq_entries = params.sq_entries;
      features_.cq_entries = params.cq_entries;
    }
    return err;
  };
  const int err = detail::setup_with_fallback(try_setup, features_.setup_flags);
  if (err != 0) {
    throw std::system_error(-err, std::system_category(),
                            detail::describe_setup_failure(-err, detail::read_io_uring_disabled(),
                                                           detail::memlock_limit()));
  }

  // Cancel by descriptor and cancel-any (which closing and teardown rely
  // on) and multishot accept arrived in 5.19, together with
  // IORING_OP_SOCKET; that opcode is what a probe can see.
  bool kernel_519 = false;
  if (io_uring_probe* probe = io_uring_get_probe_ring(&ring_)) {
    kernel_519 = io_uring_opcode_supported(probe, IORING_OP_SOCKET) != 0;
    io_uring_free_probe(probe);
  }
  if (!kernel_519) {
    io_uring_queue_exit(&ring_);
    throw std::system_error(ENOSYS, std::system_category(),
                            "couring: this kernel's io_uring is too old: couring needs Linux "
                            "5.19 or newer (cancellation by descriptor, multishot accept)");
  }
  multishot_accept_ = options.multishot_accept;

  if (options.register_ring_fd && io_uring_register_ring_fd(&ring_) == 1)
    features_.ring_fd_registered = true;

  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    int e = errno;
    io_uring_queue_exit(&ring_);
    throw std::system_error(e, std::system_category(), "couring: eventfd");
  }
  wake_op_.ctx = this;
  wake_op_.on_complete = &io_context::on_wakeup;
  arm_wakeup();
}

io_context::~io_context() {
  if (broken_) {
    // The ring failed: no completion can be reaped, so no frame can safely
    // be destroyed. Leak them; closing the ring cancels what is left.
    shutting_down_ = true;
    io_uring_queue_exit(&ring_);
    ::close(wake_fd_);
    return;
  }
  flush_closes();
  shutting_down_ = true;
  cancel_everything_and_drain();
  for (int fd : closing_fds_)
    ::close(fd); // whatever used them has been reaped by now
  if (pending_ == 0) {
    // Every CQE is in: destroying the frames can no longer race the kernel.
    while (spawned_head_ != nullptr) {
      detail::spawned_promise* p = spawned_head_;
      p->unlink();
      std::coroutine_handle<detail::spawned_promise>::from_promise(*p).destroy();
    }
  } else {
    // Some request ignored cancellation for seconds. Freeing its frame would
    // let the kernel write into freed memory later, so leak it instead.
    std::fputs("couring: io_context destroyed with operations that could not be "
               "cancelled; their coroutine frames are leaked on purpose\n",
               stderr);
  }
  io_uring_queue_exit(&ring_);
  ::close(wake_fd_);
}

void io_context::arm_wakeup() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, wake_fd_, &wake_buffer_, sizeof wake_buffer_, 0);
  arm(sqe, &wake_op_);
  ++internal_pending_;
}

void io_context::on_wakeup(detail::operation* op) noexcept {
  auto* self = op->ctx;
  --self->internal_pending_;
  if (self->shutting_down_)
    return;
  try {
    self->arm_wakeup();
  } catch (...) {
    // Without a wake-up read, stop() from another thread waits for the next
    // completion instead; not worth dying for.
  }
}

io_context* io_context::current() noexcept {
  return current_context;
}

void io_context::claim_stream(int fd, bool write) {
  if (fd < 0)
    return;
  auto& in_flight = write ? writing_ : reading_;
  const auto i = static_cast<std::size_t>(fd);
  if (i >= in_flight.size())
    in_flight.resize(std::max<std::size_t>(i + 1, 2 * in_flight.size()));
  if (in_flight[i]) {
    std::fprintf(stderr,
                 "couring: two %s in flight at once on the stream with descriptor %d: the kernel "
                 "may complete them in either order, so the bytes would %s out of order. Await "
                 "one before starting the next (or use %s).\n",
                 write ? "writes" : "reads", fd, write ? "go" : "arrive",
                 write ? "one writer task" : "one reader task");
    std::abort();
  }
  in_flight[i] = true;
}

void io_context::release_stream(int fd, bool write) noexcept {
  auto& in_flight = write ? writing_ : reading_;
  const auto i = static_cast<std::size_t>(fd);
  if (fd >= 0 && i < in_flight.size())
    in_flight[i] = false;
}

io_context& io_context::running(const char* what) {
  if (current_context == nullptr)
    throw std::logic_error(std::string("couring: ") + what +
                           " needs a running io_context; pass the context explicitly outside "
                           "io_context::run");
  return *current_context;
}

void io_context::post(std::coroutine_handle<> h) noexcept {
  try {
    ready_.push_back(h);
  } catch (...) {
    // Out of memory: resuming inline instead could re-enter whatever called
    // us (a cancellation in progress); there is no safe way on.
    std::terminate();
  }
}

void io_context::request_cancel(detail::cancel_scope* scope) noexcept {
  if (std::this_thread::get_id() == owner_) {
    scope->cancel(ECANCELED);
    return;
  }
  {
    std::lock_guard lock(remote_mutex_);
    remote_cancels_.push_back(scope);
  }
  remote_pending_.store(true, std::memory_order_release);
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

void io_context::forget_cancel(detail::cancel_scope* scope) noexcept {
  std::lock_guard lock(remote_mutex_);
  std::erase(remote_cancels_, scope);
}

void io_context::process_remote_cancels() noexcept {
  // A plain load first: the read-modify-write only when there is work.
  if (!remote_pending_.load(std::memory_order_relaxed) ||
      !remote_pending_.exchange(false, std::memory_order_acquire))
    return;
  std::lock_guard lock(remote_mutex_);
  for (detail::cancel_scope* scope : remote_cancels_)
    scope->cancel(ECANCELED);
  remote_cancels_.clear();
}

void io_context::stop() noexcept {
  stop_requested_.store(true, std::memory_order_release);
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd_, &one, sizeof one);
}

io_uring_sqe* io_context::get_sqe_slow() {
  flush_full_sq(1);
  if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_))
    return sqe;
  throw std::system_error(EBUSY, std::system_category(), "couring: submission queue stays full");
}

void io_context::flush_full_sq(unsigned wanted) {
  if (wanted > features_.sq_entries)
    throw std::invalid_argument("couring: more SQEs wanted at once than the ring has");
  // Hand the queued SQEs to the kernel so that slots free up. The kernel may
  // push back (EBUSY/EAGAIN) while its completion backlog is large; flushing
  // that backlog into the CQ ring lets the loop reap it on its next turn.
  for (int attempt = 0; attempt < 64; ++attempt) {
    int r = io_uring_submit(&ring_);
    ++enter_count_;
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
      throw std::system_error(-r, std::system_category(), "couring: io_uring_submit");
    if (io_uring_sq_space_left(&ring_) >= wanted)
      return;
    io_uring_get_events(&ring_);
  }
  throw std::system_error(EBUSY, std::system_category(), "couring: submission queue stays full");
}

void io_context::arm_link_timeout(io_uring_sqe* sqe, detail::operation* op, __kernel_timespec* ts) {
  sqe->flags |= IOSQE_IO_LINK;
  // The caller reserved two adjacent slots (reserve_sqes), so this cannot fail.
  io_uring_sqe* t = io_uring_get_sqe(&ring_);
  assert(t != nullptr);
  io_uring_prep_link_timeout(t, ts, 0);
  io_uring_sqe_set_data64(t, reinterpret_cast<std::uint64_t>(op) | detail::link_timeout_tag);
  ++op->outstanding;
  ++pending_;
}

void io_context::cancel(detail::operation* op) noexcept {
  try {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel64(sqe, reinterpret_cast<std::uint64_t>(op), 0);
    io_uring_sqe_set_data64(sqe, 0);
  } catch (...) {
    // Could not even get an SQE: the operation completes on its own.
  }
}

void io_context::close_fd(int fd) noexcept {
  if (fd < 0)
    return;
  if (shutting_down_) {
    ::close(fd); // every request has been reaped already
    return;
  }
  // Requests in flight on fd would keep the socket alive (they hold their own
  // reference to the file), so a plain close() would leave them hanging
  // forever. Cancel them by descriptor first; the cancel must run while fd
  // still names this socket, so it is submitted before the close, in the
  // same loop turn (or at once when the loop is not running).
  try {
    closing_fds_.push_back(fd); // first: if this throws, no SQE is left behind
  } catch (...) {
    ::close(fd);
    return;
  }
  try {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, 0);
  } catch (...) {
    closing_fds_.pop_back();
    ::close(fd);
    return;
  }
  if (!running_)
    flush_closes();
}

void io_context::flush_closes() noexcept {
  if (closing_fds_.empty())
    return;
  // ASYNC_CANCEL runs inline during submission: when this returns, every
  // request on these descriptors has been cancelled (or had completed). If
  // the kernel did not take the cancels, the descriptors stay open until it
  // does: closing first would let a reused descriptor number be cancelled.
  submit_pending();
  if (io_uring_sq_ready(&ring_) > 0)
    return;
  for (int fd : closing_fds_)
    ::close(fd);
  closing_fds_.clear();
}

void io_context::submit_pending() noexcept {
  if (io_uring_sq_ready(&ring_) > 0) {
    io_uring_submit(&ring_);
    ++enter_count_;
  }
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

void io_context::drive(std::coroutine_handle<> root, detail::cancel_scope* root_scope) {
  if (std::this_thread::get_id() != owner_)
    throw std::logic_error("couring: io_context::run called from another thread than the "
                           "one that created the context (the ring is single-issuer)");
  if (running_)
    throw std::logic_error("couring: io_context::run called from inside run");
  if (broken_)
    throw std::logic_error("couring: io_context::run after the ring failed");
  running_ = true;
  io_context* const outer = std::exchange(current_context, this);
  struct running_guard {
    io_context* self;
    io_context* outer;
    ~running_guard() {
      current_context = outer;
      self->running_ = false;
      self->flush_closes();
      self->submit_pending();
    }
  } guard{this, outer};

  bool root_cancelled = false;
  if (root)
    root.resume();
  for (;;) {
    if (!ready_.empty())
      run_ready();
    process_remote_cancels();
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
    if (pending_operations() == 0 && ready_.empty()) {
      throw std::logic_error(
          root ? "couring: run(task): the task is suspended, but no operation is in flight "
                 "that could resume it (deadlock)"
               : "couring: run(): spawned tasks are suspended, but no operation is in "
                 "flight that could resume them (deadlock)");
    }
    turn(ready_.empty());
  }
  stop_requested_.store(false, std::memory_order_relaxed);
  if (spawn_error_)
    std::rethrow_exception(std::exchange(spawn_error_, nullptr));
}

void io_context::turn(bool block) {
  if (!closing_fds_.empty())
    flush_closes();
  int r = block ? io_uring_submit_and_wait(&ring_, 1) : io_uring_submit_and_get_events(&ring_);
  ++enter_count_;
  if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME) [[unlikely]] {
    broken_ = true;
    throw std::system_error(-r, std::system_category(), "couring: io_uring_enter");
  }
  reap();
}

void io_context::reap() noexcept {
  // The tail is read once: completions that arrive meanwhile (they can only
  // without DEFER_TASKRUN) are reaped on the next turn. One release store
  // hands the whole batch back to the kernel.
  io_uring_cq& cq = ring_.cq;
  unsigned head = *cq.khead;
  const unsigned tail = io_uring_smp_load_acquire(cq.ktail);
  if (head == tail)
    return;
  const unsigned mask = cq.ring_mask;
  for (; head != tail; ++head)
    dispatch(&cq.cqes[head & mask]);
  io_uring_smp_store_release(cq.khead, tail);
}

namespace {
inline void complete(detail::operation* op) noexcept {
  if (op->on_complete == nullptr) [[likely]]
    detail::resume_waiter(op);
  else
    op->on_complete(op);
}
} // namespace

inline void io_context::dispatch(const io_uring_cqe* cqe) noexcept {
  const std::uint64_t ud = cqe->user_data;
  // 0: ours, fire-and-forget (cancels, closes). ~0: liburing's own timeout
  // (LIBURING_UDATA_TIMEOUT) on kernels without EXT_ARG. One compare for both.
  if (ud + 1 <= 1)
    return;
  if (ud & detail::link_timeout_tag) {
    auto* op = reinterpret_cast<detail::operation*>(ud & ~detail::link_timeout_tag);
    op->link_timeout_res = cqe->res;
    --pending_;
    if (--op->outstanding == 0)
      complete(op);
    return;
  }
  auto* op = reinterpret_cast<detail::operation*>(ud);
  op->res = cqe->res;
  op->cqe_flags = cqe->flags;
  if (cqe->flags & IORING_CQE_F_MORE) {
    complete(op); // a multishot request goes on
    return;
  }
  --pending_;
  if (--op->outstanding == 0)
    complete(op);
}

void io_context::cancel_everything_and_drain() noexcept {
  using clock = std::chrono::steady_clock;
  const auto give_up = clock::now() + std::chrono::seconds(10);
  while (pending_ > 0 && clock::now() < give_up) {
    try {
      io_uring_sqe* sqe = get_sqe();
      io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
      io_uring_sqe_set_data64(sqe, 0);
    } catch (...) {
    }
    // Cancelled requests complete quickly; wait a little for each round and
    // cancel again what arrived in between (nothing new is started: no
    // coroutine is resumed while shutting down).
    __kernel_timespec ts{.tv_sec = 0, .tv_nsec = 20'000'000};
    io_uring_cqe* cqe = nullptr;
    io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
    ++enter_count_;
    reap();
  }
}

} // namespace couring
