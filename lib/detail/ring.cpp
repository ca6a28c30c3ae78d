#include <couring/detail/ring.hpp>

#include <couring/detail/pool_receive.hpp> // on_receiver_cqe: the read side a pool holds

#include "epoll_emulator.hpp"

#include <algorithm>
#include <atomic>
#include <cassert>
#include <cerrno>
#include <chrono>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <system_error>

#include <csignal> // _NSIG: the signal-mask size enter_batched passes
#include <cstdlib>
#include <string_view>

#include <fcntl.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace couring::detail {

namespace {

// IORING_FEAT_MIN_TIMEOUT (Linux 6.12: io_uring_getevents_arg::min_wait_usec),
// newer than liburing 2.3's header.
constexpr unsigned feat_min_timeout = 1u << 15;

// Bumped in every child process fork() creates. A ring remembers the value
// it was created under: a different one means the ring is the parent's.
std::atomic<unsigned> fork_generation{0};

void note_fork_in_child() noexcept {
  fork_generation.fetch_add(1, std::memory_order_relaxed);
}

void watch_forks() {
  static std::once_flag once;
  std::call_once(once, [] { pthread_atfork(nullptr, nullptr, &note_fork_in_child); });
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

int setup_with_fallback(const std::function<int(unsigned flags)>& try_setup, unsigned& accepted) {
  // Newest first (6.1, 6.0, 5.19, 5.18, 5.5): a kernel knows every flag older
  // than the newest it knows, so giving them up in this order keeps all the
  // ones it supports. DEFER_TASKRUN needs SINGLE_ISSUER, and goes first.
  // TASKRUN_FLAG (5.19) needs COOP_TASKRUN or DEFER_TASKRUN, so it goes
  // before COOP_TASKRUN: the kernel then raises IORING_SQ_TASKRUN when it
  // queues work for us, which io_context's idle spin polls.
  static constexpr unsigned wanted_flags[] = {
      IORING_SETUP_DEFER_TASKRUN, IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_TASKRUN_FLAG,
      IORING_SETUP_COOP_TASKRUN,  IORING_SETUP_SUBMIT_ALL,    IORING_SETUP_CQSIZE,
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

namespace {

// The backend asked for: the option, or COURING_BACKEND for an automatic one.
backend chosen_backend(backend option, std::string& reason) {
  if (option != backend::automatic) {
    reason = std::string("io_context_options::backend = ") + to_string(option);
    return option;
  }
  const char* env = std::getenv("COURING_BACKEND");
  if (env == nullptr || *env == '\0')
    return backend::automatic;
  const std::string_view v(env);
  reason = "COURING_BACKEND=" + std::string(v);
  if (v == "io_uring")
    return backend::io_uring;
  if (v == "epoll")
    return backend::epoll;
  throw std::invalid_argument("couring: COURING_BACKEND=" + std::string(v) +
                              " is not a backend; expected io_uring or epoll (or leave it unset)");
}

} // namespace

ring::ring(io_context& ctx, const io_context_options& options) : ctx_(&ctx) {
  watch_forks();
  fork_generation_ = fork_generation.load(std::memory_order_relaxed);
  // At least two SQ slots: a request and its linked timeout must fit together.
  const unsigned sq = options.sq_entries == 0 ? 256 : std::max(options.sq_entries, 2u);
  const unsigned cq = options.cq_entries == 0 ? sq * 4 : options.cq_entries;
  multishot_accept_ = options.multishot_accept;
  zero_copy_threshold_ = options.zero_copy_threshold;
  file_table_slots_ = options.direct_descriptor_slots;

  std::string reason;
  const backend want = chosen_backend(options.backend, reason);
  if (want == backend::epoll) {
    set_up_epoll(sq, cq);
    features_.backend_reason = reason;
    return;
  }
  int err = 0;
  try {
    set_up_io_uring(options, sq, cq, err);
  } catch (const std::system_error& e) {
    // Automatic: where io_uring is refused (a seccomp filter: EPERM or
    // ENOSYS; kernel.io_uring_disabled: EPERM) or too old, epoll takes over.
    const bool refused = err == -EPERM || err == -ENOSYS || err == 1;
    if (want != backend::automatic || !refused)
      throw;
    set_up_epoll(sq, cq);
    features_.fallback_error = err == 1 ? ENOSYS : -err;
    features_.backend_reason = std::string("io_uring unavailable, fell back to epoll: ") + e.what();
    return;
  }
  features_.backend = backend::io_uring;
  features_.backend_reason = reason.empty() ? "automatic: io_uring_setup succeeded" : reason;
}

void ring::set_up_epoll(unsigned sq, unsigned cq) {
  emu_ = std::make_unique<epoll_emulator>(ring_, sq, cq);
  features_ = {};
  features_.backend = backend::epoll;
  features_.sq_entries = ring_.sq.ring_entries;
  features_.cq_entries = ring_.cq.ring_entries;
}

// err: io_uring_setup's error (negative), or 1 when the kernel is too old.
void ring::set_up_io_uring(const io_context_options& options, unsigned sq, unsigned cq, int& err) {
  const auto try_setup = [&](unsigned flags) {
    io_uring_params params{};
    params.flags = flags;
    params.cq_entries = cq;
    int e = -EINVAL;
    if (options.attach_wq_fd >= 0) {
      params.flags |= IORING_SETUP_ATTACH_WQ;
      params.wq_fd = static_cast<__u32>(options.attach_wq_fd);
      e = io_uring_queue_init_params(sq, &ring_, &params);
      features_.wq_attached = e == 0;
      if (e != 0) { // refused (another process's ring, an old kernel): a pool of its own
        params = io_uring_params{};
        params.flags = flags;
        params.cq_entries = cq;
      }
    }
    if (e != 0)
      e = io_uring_queue_init_params(sq, &ring_, &params);
    if (e == 0) {
      features_.kernel_features = params.features;
      features_.sq_entries = params.sq_entries;
      features_.cq_entries = params.cq_entries;
    }
    return e;
  };
  err = setup_with_fallback(try_setup, features_.setup_flags);
  if (err != 0) {
    throw std::system_error(
        -err, std::system_category(),
        describe_setup_failure(-err, read_io_uring_disabled(), memlock_limit()));
  }

  // Cancel by descriptor and cancel-any (which closing and teardown rely
  // on) and multishot accept arrived in 5.19, together with
  // IORING_OP_SOCKET; that opcode is what a probe can see.
  bool kernel_519 = false;
  if (io_uring_probe* probe = io_uring_get_probe_ring(&ring_)) {
    kernel_519 = io_uring_opcode_supported(probe, IORING_OP_SOCKET) != 0;
    // Cross-context messages skip the sender's success CQE (5.17+).
    msg_ring_ = !options.message_fallback &&
                io_uring_opcode_supported(probe, IORING_OP_MSG_RING) != 0 &&
                (features_.kernel_features & IORING_FEAT_CQE_SKIP) != 0;
    io_uring_free_probe(probe);
  }
  if (!kernel_519) {
    io_uring_queue_exit(&ring_);
    ring_ = io_uring{};
    err = 1;
    throw std::system_error(ENOSYS, std::system_category(),
                            "couring: this kernel's io_uring is too old: couring needs Linux "
                            "5.19 or newer (cancellation by descriptor, multishot accept)");
  }
  // get_sqe's fast path assumes 64-byte SQEs and no SQ polling thread.
  assert((ring_.flags & (IORING_SETUP_SQE128 | IORING_SETUP_SQPOLL)) == 0);

  if (options.register_ring_fd && io_uring_register_ring_fd(&ring_) == 1)
    features_.ring_fd_registered = true;
  worker_watchdog_ns_ =
      std::chrono::duration_cast<std::chrono::nanoseconds>(options.worker_watchdog).count();
  // The batched sleep needs min_wait_usec (6.12): without it a wait for
  // more than one completion could sleep while the one that came waits.
  if (options.wait_batch > 1 && (features_.kernel_features & feat_min_timeout) != 0) {
    features_.batched_wait = true;
    wait_batch_ = options.wait_batch;
    wait_batch_usec_ = static_cast<unsigned>(options.wait_batch_timeout.count());
  }
}

ring::~ring() {
  if (kick_fd_ >= 0)
    ::close(kick_fd_);
  if (emu_ != nullptr)
    return; // the emulator closes its epoll instance; no kernel ring to unmap
  // In a fork() child, io_uring_queue_exit only unmaps and closes this
  // process's references (the registered ring descriptor belongs to the
  // parent's task; unregistering it here is a harmless no-op).
  io_uring_queue_exit(&ring_);
}

int ring::register_buffer_ring(const io_uring_buf_reg& reg) {
  if (emu_ != nullptr)
    return emu_->register_buffer_ring(reg);
  io_uring_buf_reg copy = reg;
  return io_uring_register_buf_ring(&ring_, &copy, 0);
}

int ring::unregister_buffer_ring(unsigned bgid) {
  if (emu_ != nullptr)
    return emu_->unregister_buffer_ring(bgid);
  return io_uring_unregister_buf_ring(&ring_, static_cast<int>(bgid));
}

int ring::register_buffers(const iovec* iovecs, unsigned n) {
  if (emu_ == nullptr) {
    const int err = io_uring_register_buffers(&ring_, iovecs, n);
    if (err == 0)
      ++buffers_generation_;
    return err;
  }
  // On epoll READ_FIXED/WRITE_FIXED are plain reads and writes at sqe->addr:
  // nothing to pin, but one set per ring as on io_uring (EBUSY).
  if (buffers_registered_)
    return -EBUSY;
  buffers_registered_ = true;
  ++buffers_generation_;
  return 0;
}

int ring::unregister_buffers() {
  ++buffers_generation_;
  if (emu_ == nullptr)
    return io_uring_unregister_buffers(&ring_);
  if (!buffers_registered_)
    return -ENXIO;
  buffers_registered_ = false;
  return 0;
}

int ring::register_files_sparse(unsigned n) {
  return emu_ != nullptr ? -EOPNOTSUPP : io_uring_register_files_sparse(&ring_, n);
}

bool ring::foreign() const noexcept {
  return fork_generation_ != fork_generation.load(std::memory_order_relaxed);
}

io_uring_sqe* ring::get_sqe_slow() {
  flush_full_sq(1);
  if (io_uring_sqe* sqe = io_uring_get_sqe(&ring_))
    return sqe;
  throw std::system_error(EBUSY, std::system_category(), "couring: submission queue stays full");
}

void ring::flush_full_sq(unsigned wanted) {
  if (wanted > features_.sq_entries)
    throw std::invalid_argument("couring: more SQEs wanted at once than the ring has");
  if (emu_ != nullptr) {
    emu_->submit(); // consumes every SQE: the whole SQ is free again
    ++enter_count_;
    return;
  }
  // Hand the queued SQEs to the kernel so that slots free up. The kernel may
  // push back (EBUSY/EAGAIN) while its completion backlog is large; flushing
  // that backlog into the CQ ring lets the loop reap it on its next turn
  // (reap hands CQ slots back as it goes, so there is room for it).
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

void ring::attach_link_timeout(io_uring_sqe* sqe, operation* op) noexcept {
  sqe->flags |= IOSQE_IO_LINK;
  // get_sqe_for reserved two adjacent slots, so this cannot fail.
  io_uring_sqe* t = io_uring_get_sqe(&ring_);
  assert(t != nullptr);
  io_uring_prep_link_timeout(t, op->link_timeout, 0);
  io_uring_sqe_set_data64(t, reinterpret_cast<std::uint64_t>(op) | link_timeout_tag);
  op->link_timeout_res = 0;
  ++op->outstanding;
  ++pending_;
}

void reset_connection(int fd) noexcept {
  sockaddr unspec{};
  unspec.sa_family = AF_UNSPEC;
  ::connect(fd, &unspec, sizeof unspec);
}

int ring::ensure_file_table() noexcept {
  if (file_table_)
    return 0;
  if (file_table_slots_ == 0)
    return -EINVAL;
  const int err = register_files_sparse(file_table_slots_);
  file_table_ = err == 0;
  return err;
}

void ring::close_direct(int slot) noexcept {
  --direct_slots_used_;
  try {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_close_direct(sqe, static_cast<unsigned>(slot));
    io_uring_sqe_set_data64(sqe, 0);
  } catch (...) {
    // No SQE: empty the slot synchronously instead.
    int none = -1;
    io_uring_register_files_update(&ring_, static_cast<unsigned>(slot), &none, 1);
  }
}

void ring::cancel(operation* op) noexcept {
  if (foreign())
    return;
  try {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel64(sqe, reinterpret_cast<std::uint64_t>(op), 0);
    io_uring_sqe_set_data64(sqe, 0);
  } catch (...) {
    // Could not even get an SQE: the operation completes on its own.
  }
}

void ring::submit_now() noexcept {
  if (io_uring_sq_ready(&ring_) == 0)
    return;
  if (emu_ != nullptr) [[unlikely]]
    emu_->submit();
  else
    io_uring_submit(&ring_);
  ++enter_count_;
}

namespace {
// io_uring_enter(2) without the C library's errno round trip: -errno or the
// count. One syscall instruction on x86-64; syscall(2) elsewhere.
int sys_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags,
                       const void* arg = nullptr, std::size_t argsz = 0) noexcept {
#if defined(__x86_64__)
  long ret;
  register long r10 __asm__("r10") = flags;
  register long r8 __asm__("r8") = reinterpret_cast<long>(arg); // no signal mask, or EXT_ARG
  register long r9 __asm__("r9") = static_cast<long>(argsz);
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "0"(static_cast<long>(__NR_io_uring_enter)), "D"(static_cast<long>(fd)),
                     "S"(static_cast<long>(to_submit)), "d"(static_cast<long>(min_complete)),
                     "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return static_cast<int>(ret);
#else
  const long r = ::syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
  return r < 0 ? -errno : static_cast<int>(r);
#endif
}
} // namespace

// Inlined: enter runs once per loop turn.
[[gnu::always_inline]] inline unsigned ring::publish_sq() noexcept {
  io_uring_sq& sq = ring_.sq;
  const unsigned tail = sq.sqe_tail;
  if (sq.sqe_head != tail) {
    sq.sqe_head = tail;
    io_uring_smp_store_release(sq.ktail, tail); // the kernel reads it in enter
  }
  return tail - IO_URING_READ_ONCE(*sq.khead);
}

void ring::reap_draining() noexcept {
  reap_batch<true>();
}

void ring::enter(bool block) {
  if (released_ != nullptr) [[unlikely]]
    recycle_released();
  if (emu_ != nullptr) [[unlikely]] {
    emu_->enter(block);
    ++enter_count_;
    return;
  }
  // What io_uring_submit_and_wait(1) / io_uring_submit_and_get_events do,
  // without liburing's run-time tests for set-ups this ring never has
  // (SQPOLL, IOPOLL, an unregistered ring when it is registered): publish the
  // SQ tail, then one io_uring_enter that submits, runs the deferred task
  // work (GETEVENTS) and, if block, waits for one CQE. This is the one
  // system call per loop turn, so its user-space cost is paid per batch.
  const unsigned to_submit = publish_sq();
  unsigned flags = IORING_ENTER_GETEVENTS;
  if (features_.ring_fd_registered)
    flags |= IORING_ENTER_REGISTERED_RING;
  int r = sys_io_uring_enter(ring_.enter_ring_fd, to_submit, block ? 1 : 0, flags);
  ++enter_count_;
  if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME) [[unlikely]] {
    broken_ = true;
    throw std::system_error(-r, std::system_category(), "couring: io_uring_enter");
  }
}

// struct io_uring_getevents_arg as Linux 6.12 defines it: liburing 2.3's
// header calls min_wait_usec "pad".
struct getevents_arg_min_wait {
  std::uint64_t sigmask;
  std::uint32_t sigmask_sz;
  std::uint32_t min_wait_usec;
  std::uint64_t ts;
};
static_assert(sizeof(getevents_arg_min_wait) == sizeof(io_uring_getevents_arg));

void ring::enter_batched(unsigned wait_nr) {
  assert(emu_ == nullptr && wait_batch_ > 1);
  // Without an overall timeout the kernel ends the wait when min_wait passes
  // even with nothing in: a loop with requests that never complete (idle
  // connections) would wake every min_wait. With one, it then waits for the
  // first completion, as a plain enter does, until the timeout (a spurious
  // wake-up per minute costs nothing).
  enter_until(wait_nr, wait_batch_usec_, __kernel_timespec{.tv_sec = 60, .tv_nsec = 0});
}

void ring::enter_watchful() {
  assert(emu_ == nullptr && worker_watchdog_ns_ != 0);
  enter_until(1, 0, to_timespec(std::chrono::nanoseconds(worker_watchdog_ns_)));
  // The return value says how many were submitted when some were, not
  // whether the wait timed out: look at the CQ instead.
  if (!completions_waiting())
    kick_workers();
}

void ring::enter_until(unsigned wait_nr, unsigned min_wait_usec, __kernel_timespec timeout) {
  if (released_ != nullptr) [[unlikely]]
    recycle_released();
  // As in enter (publish the SQ tail, one io_uring_enter), with EXT_ARG.
  const unsigned to_submit = publish_sq();
  getevents_arg_min_wait arg{.sigmask = 0,
                             .sigmask_sz = _NSIG / 8,
                             .min_wait_usec = min_wait_usec,
                             .ts = reinterpret_cast<std::uint64_t>(&timeout)};
  unsigned flags = IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG;
  if (features_.ring_fd_registered)
    flags |= IORING_ENTER_REGISTERED_RING;
  int r = sys_io_uring_enter(ring_.enter_ring_fd, to_submit, wait_nr, flags, &arg, sizeof arg);
  ++enter_count_;
  if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY && r != -ETIME) [[unlikely]] {
    broken_ = true;
    throw std::system_error(-r, std::system_category(), "couring: io_uring_enter");
  }
}

void ring::kick_workers() {
  // Forced async (IOSQE_ASYNC), each request goes to the worker pool's
  // queue: a NOP to the bounded class (where file I/O and path operations
  // wait), an empty read of a character device to the unbounded one (where
  // splice waits). user_data 0: their CQEs are ignored, and pending_ does
  // not count them. They go in with the next enter.
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_nop(sqe);
  sqe->flags |= IOSQE_ASYNC;
  io_uring_sqe_set_data64(sqe, 0);
  if (kick_fd_ < 0)
    kick_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (kick_fd_ >= 0) {
    sqe = get_sqe();
    io_uring_prep_read(sqe, kick_fd_, nullptr, 0, 0);
    sqe->flags |= IOSQE_ASYNC;
    io_uring_sqe_set_data64(sqe, 0);
  }
  ++worker_kicks_;
}

void ring::post(operation* op) noexcept {
  // No CQE brought it here: a completion function it runs from run_posted
  // (transfer_all's step) must not read flags left over from whatever the
  // frame's memory held before (IORING_CQE_F_MORE would make it wait for
  // a notification that never comes).
  op->cqe_flags = 0;
  op->next = nullptr;
  if (posted_tail_ != nullptr)
    posted_tail_->next = op;
  else
    posted_head_ = op;
  posted_tail_ = op;
}

bool ring::run_posted() {
  if (posted_head_ == nullptr)
    return false;
  // Operations posted while these run wait for the next round.
  operation* op = std::exchange(posted_head_, nullptr);
  posted_tail_ = nullptr;
  while (op != nullptr) {
    operation* next = op->next;
    // Its completion function, if it has one, learns the result first (a
    // compound operation, with_timeout's wait in line).
    if (op->on_complete != nullptr)
      op->on_complete(op);
    else
      op->waiter.resume();
    op = next;
  }
  return true;
}

// --- I/O objects ----------------------------------------------------------------

namespace {
// The epoll backend waits for readiness only after EAGAIN, so a descriptor
// must never block the loop: every object's descriptor is made non-blocking
// (sockets couring accepts already are). This changes the open file
// description, shared with whoever else holds it (an inherited terminal or
// pipe): documented in README ("Where io_uring is not allowed").
void make_nonblocking(int fd) noexcept {
  const int fl = ::fcntl(fd, F_GETFL);
  if (fl >= 0 && (fl & O_NONBLOCK) == 0)
    ::fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}
} // namespace

object_state* ring::open_object(int fd) {
  if (free_ == nullptr) {
    constexpr std::size_t chunk = 64;
    chunks_.push_back(std::make_unique<object_state[]>(chunk));
    for (std::size_t i = 0; i < chunk; ++i) {
      chunks_.back()[i].next_free = free_;
      free_ = &chunks_.back()[i];
    }
  }
  object_state* s = free_;
  free_ = s->next_free;
  s->next_free = nullptr;
  if (emu_ != nullptr)
    make_nonblocking(fd);
  s->fd = fd;
  s->closed = false;
  s->use_read_write = false;
  s->direct = false;
  s->zero_copy_capable = false;
  s->in_flight = 0;
  s->read_side = {};
  s->write_side = {};
  return s;
}

void throw_wrong_thread() {
  throw std::logic_error("couring: an operation started on another thread than its io_context's "
                         "(objects belong to the context that created them; switch_to it first)");
}

int ring::release_object(object_state* s) {
  if (s->direct)
    throw std::logic_error("couring: release() of a direct descriptor (it exists only in this "
                           "ring's file table)");
  if (s->in_flight != 0 || s->read_side.active != nullptr || s->write_side.active != nullptr ||
      s->read_side.first_waiting != nullptr || s->write_side.first_waiting != nullptr)
    throw std::logic_error("couring: release() of an object with an operation in flight");
  const int fd = s->fd;
  if (emu_ != nullptr)
    emu_->forget(fd); // another context's epoll set takes it over
  s->closed = true;
  s->fd = -1;
  ++s->generation; // awaitables made before no longer match
  s->next_free = released_;
  released_ = s;
  return fd;
}

object_state* ring::open_direct_object(int slot) {
  object_state* s = open_object(slot);
  s->direct = true;
  return s;
}

object_handle::object_handle(ring& r, int slot, direct_slot_t) : ring_(&r) {
  try {
    state_ = r.open_direct_object(slot);
  } catch (...) {
    r.close_direct(slot);
    throw;
  }
}

object_handle::object_handle(ring& r, int fd) : ring_(&r) {
  try {
    state_ = r.open_object(fd);
  } catch (...) {
    ::close(fd);
    throw;
  }
}

namespace {
// Ends every operation waiting on side with ECANCELED, on the next turn.
void cancel_waiting(ring& r, object_side& side) noexcept {
  while (operation* op = side.first_waiting) {
    side.first_waiting = op->next;
    op->side = nullptr;
    op->cancel_fn = nullptr;
    op->res = -ECANCELED;
    if (op->scope != nullptr)
      op->scope->clear_current(op);
    r.count_parked(-1);
    if (!r.draining())
      r.post(op);
  }
  side.last_waiting = nullptr;
}
} // namespace

void ring::close_object(object_state* s, close_mode mode) noexcept {
  if (s == nullptr || s->closed)
    return;
  s->closed = true;
  if (foreign()) {
    // A fork() child dropping what it inherited: its descriptor table is
    // its own, the rings are not. Close the child's copy and touch nothing
    // (a direct descriptor is the parent's ring's).
    if (!s->direct)
      ::close(s->fd);
    return;
  }
  cancel_waiting(*this, s->read_side);
  cancel_waiting(*this, s->write_side);
  // An active operation that waits in a structure of ours rather than in
  // the kernel (a pool receive waiting for a buffer) is told through its
  // cancel_fn; requests in the kernel are reached by the cancel below.
  for (object_side* side : {&s->read_side, &s->write_side})
    if (operation* a = side->active; a != nullptr && a->cancel_fn != nullptr)
      a->cancel_fn(a);
  if (s->in_flight == 0) {
    release_descriptor(s);
    return;
  }
  if (mode == close_mode::listener && !s->direct) {
    // Stop listening now (a connect is refused from here on), even though
    // the descriptor itself waits for the accept request to complete.
    ::shutdown(s->fd, SHUT_RD);
  }
  // Cancel exactly this object's requests: the descriptor is still ours
  // (it is closed only once they have completed), so cancelling by
  // descriptor cannot reach anyone else's.
  try {
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_cancel_fd(
        sqe, s->fd, IORING_ASYNC_CANCEL_ALL | (s->direct ? IORING_ASYNC_CANCEL_FD_FIXED : 0u));
    io_uring_sqe_set_data64(sqe, 0);
  } catch (...) {
    // No SQE: the requests complete on their own (a peer's data, a reset,
    // teardown); the descriptor is closed after the last of them.
    if (mode == close_mode::stream && !s->direct)
      ::shutdown(s->fd, SHUT_RDWR); // makes them complete soon
  }
  if (!running_)
    submit_now(); // nobody else will submit it soon
}

void ring::release_descriptor(object_state* s) noexcept {
  assert(s->closed && s->in_flight == 0 && s->fd >= 0);
  // A slot is emptied only now, after the last request on it: the kernel
  // cannot hand it to a new connection while one of ours still names it.
  if (s->direct) {
    close_direct(s->fd);
  } else {
    if (emu_ != nullptr)
      emu_->forget(s->fd); // out of the epoll set first: a dup would keep it there
    ::close(s->fd);
  }
  s->fd = -1;
  ++s->generation; // an awaitable made before the close no longer matches
  s->next_free = released_;
  released_ = s;
}

void ring::recycle_released() noexcept {
  while (object_state* s = released_) {
    released_ = s->next_free;
    s->next_free = free_;
    free_ = s;
  }
}

bool ring::take_side(operation* op) {
  object_side* side = op->side;
  if (side->active == nullptr) {
    side->active = op;
    return true;
  }
  if (side->active->on_complete == &on_receiver_cqe) [[unlikely]] {
    // The stream receives through a buffer pool: its receiver holds the
    // read side for as long as the stream is open, so this read would wait
    // for ever. It fails (on the next turn; the caller sees side cleared).
    op->side = nullptr;
    op->res = -EINVAL;
    post(op);
    return false;
  }
  // Wait in line (with_timeout arms a timer of its own for the wait).
  op->next = nullptr;
  if (side->last_waiting != nullptr)
    side->last_waiting->next = op;
  else
    side->first_waiting = op;
  side->last_waiting = op;
  count_parked(+1);
  op->cancel_fn = [](operation* waiting) noexcept {
    // Cancelled while waiting in line: nothing was submitted, so end it here.
    ring& r = *waiting->owner_ring;
    leave_queue(waiting);
    waiting->res = -ECANCELED;
    if (waiting->scope != nullptr)
      waiting->scope->clear_current(waiting);
    r.post(waiting);
  };
  return false;
}

void ring::leave_queue(operation* op) noexcept {
  object_side* side = op->side;
  if (side == nullptr)
    return;
  if (side->active == op) {
    side->active = nullptr; // teardown: the request was reaped, not finished
    op->side = nullptr;
    return;
  }
  operation* prev = nullptr;
  for (operation* o = side->first_waiting; o != nullptr; prev = o, o = o->next) {
    if (o != op)
      continue;
    (prev != nullptr ? prev->next : side->first_waiting) = o->next;
    if (side->last_waiting == o)
      side->last_waiting = prev;
    op->owner_ring->count_parked(-1);
    break;
  }
  op->side = nullptr;
  op->cancel_fn = nullptr;
}

void ring::pass_side(operation* op) noexcept {
  object_side* side = op->side;
  op->side = nullptr;
  side->active = nullptr;
  // Issue the next operation in line; one whose request cannot be issued
  // ends with that error and the one after it gets its turn.
  while (operation* next = side->first_waiting) {
    side->first_waiting = next->next;
    if (side->first_waiting == nullptr)
      side->last_waiting = nullptr;
    count_parked(-1);
    next->cancel_fn = nullptr;
    side->active = next;
    try {
      next->issue_fn(next);
      return;
    } catch (const std::system_error& e) {
      next->res = -e.code().value();
    } catch (...) {
      next->res = -ENOMEM;
    }
    side->active = nullptr;
    next->side = nullptr;
    if (next->scope != nullptr)
      next->scope->clear_current(next);
    post(next);
  }
}

void ring::drain() noexcept {
  draining_ = true;
  if (broken_ || foreign())
    return; // no CQE can be trusted, or none is ours to reap
  // Zero-copy sends waiting for their notification have no request left to
  // cancel: a peer that does not read would keep their pages (and the
  // frames) for ever. Resetting the connection frees them at once; sends
  // still in flight are reset by transfer_all when their data CQE comes.
  for (zero_copy_wait* w = zero_copy_waits_; w != nullptr; w = w->next)
    reset_connection(w->op->object->fd);
  submit_now();
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
    // coroutine is resumed while draining).
    if (emu_ != nullptr) {
      emu_->enter_for(20'000'000);
    } else {
      __kernel_timespec ts{.tv_sec = 0, .tv_nsec = 20'000'000};
      io_uring_cqe* cqe = nullptr;
      io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
    }
    ++enter_count_;
    reap();
  }
  recycle_released();
}

} // namespace couring::detail

namespace couring {
const char* to_string(backend b) noexcept {
  switch (b) {
  case backend::io_uring:
    return "io_uring";
  case backend::epoll:
    return "epoll";
  default:
    return "automatic";
  }
}
} // namespace couring
