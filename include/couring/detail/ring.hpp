#pragma once

// The ring layer: everything between an operation and the kernel. It takes
// SQEs, ties them to completion records, cancels, reaps CQEs and runs the one
// completion protocol; it also keeps the I/O objects' state records, so that
// a descriptor is released only when nothing runs on it any more.
// docs/design.md ("The op path", "I/O objects") tells the whole story.
//
// Nothing here is user API: io_context (run, spawn, stop) sits on top.

#include <chrono>
#include <coroutine>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <liburing.h>
#include <linux/time_types.h>
#include <pthread.h>

#include <couring/detail/cancel_scope.hpp>
#include <couring/detail/message.hpp>
#include <couring/io_context_options.hpp>

namespace couring {
class io_context;
}

namespace couring::detail {

class ring;
class epoll_emulator;
struct object_side;
struct object_state;

// The completion record of one operation. Its address is the SQE's user_data,
// so it stays put (and alive) until its last CQE has been reaped: records
// live inside awaiters, awaiters live in the awaiting coroutine's frame, and
// a frame with a record in flight is never destroyed.
struct operation {
  // Plain function pointers: one indirect call where a record needs one, no
  // vtable. All are optional.
  using completion_fn = void (*)(operation*) noexcept;
  // Runs when the record's last CQE is in (and for each intermediate CQE of a
  // multishot request). nullptr, the common case: ring::finish.
  completion_fn on_complete = nullptr;
  // How a cancel scope cancels the record: nullptr means
  // IORING_OP_ASYNC_CANCEL on its user_data. Records that wait in a queue of
  // ours rather than in the kernel provide their own.
  completion_fn cancel_fn = nullptr;
  // Runs instead of on_complete while the context is torn down: bookkeeping
  // only (a multishot accept must still close what it accepted). Most
  // records need none: their frames are about to be destroyed.
  completion_fn on_abandon = nullptr;
  // Prepares and arms this record's request; how a queued operation is
  // issued once the object's side is free, and how a compound one re-arms.
  void (*issue_fn)(operation*) = nullptr;
  // The fields above and the next three are null for most records and set
  // by few: kept together, the compiler clears them with a few wide stores
  // when a record is built in a coroutine frame.
  // The I/O object whose descriptor the request uses (nullptr: none). The
  // object's descriptor stays open while a request of it is in flight.
  object_state* object = nullptr;
  // The side of that object (reads or writes) this operation holds or waits
  // for; operations on one side run one at a time, in order.
  object_side* side = nullptr;
  // with_timeout on a single request: an IORING_OP_LINK_TIMEOUT follows it.
  __kernel_timespec* link_timeout = nullptr;

  ring* owner_ring = nullptr;
  std::coroutine_handle<> waiter{};
  cancel_scope* scope = nullptr;
  // In a side's queue, or in the ring's posted list. Not initialised: only
  // those lists read it, and whoever links a record in sets it first
  // (take_side, post, the pool's queues), so an operation that never waits
  // in a list pays no store for it.
  operation* next;

  // Filled in by the completion (or by start() when nothing is submitted);
  // left uninitialised until then, they cost nothing per operation.
  int res;                 // cqe->res of the request itself
  std::uint32_t cqe_flags; // cqe->flags of the request itself
  int link_timeout_res;    // cqe->res of a linked timeout, when one was attached
  std::uint32_t outstanding = 0;
};

// A duration as the kernel's timeout requests take it; negative means now.
inline __kernel_timespec to_timespec(std::chrono::nanoseconds t) noexcept {
  if (t.count() < 0)
    t = std::chrono::nanoseconds::zero();
  return {.tv_sec = t.count() / 1'000'000'000, .tv_nsec = t.count() % 1'000'000'000};
}

// user_data of a linked timeout's CQE: the record's address with the low bit
// set (records are at least 8-byte aligned), so both CQEs find the same record.
inline constexpr std::uint64_t link_timeout_tag = 1;

// A zero-copy send whose data CQE is in and whose notification is not: the
// kernel holds the pages until the connection lets them go, which a peer that
// does not read can put off for ever. The ring keeps these in a list so that
// its teardown can reset their connections (transfer_all.hpp).
struct zero_copy_wait {
  operation* op = nullptr;
  zero_copy_wait* prev = nullptr;
  zero_copy_wait* next = nullptr;
};

// One direction of an I/O object. `active` holds the side from the start of
// its first request to its completion (a compound operation holds it across
// all its requests); later operations wait in a FIFO and are issued in turn.
struct object_side {
  operation* active = nullptr;
  operation* first_waiting = nullptr;
  operation* last_waiting = nullptr;
};

// The state record of one I/O object (stream, listener, ...). It outlives the
// object until the last request on its descriptor has completed; only then is
// the descriptor closed, so no request can ever run on a number that already
// belongs to someone else. Records come from a pool in the ring and are
// recycled; `generation` tells an awaitable made before a close from one made
// after.
struct object_state {
  int fd = -1;
  std::uint32_t generation = 0;
  std::uint32_t in_flight = 0; // requests on fd whose final CQE is not in
  bool closed = true;
  // Streams on descriptors that are not sockets (pipes, FIFOs, terminals)
  // move bytes with IORING_OP_READ/WRITE instead of RECV/SEND, which fail
  // there with ENOTSOCK. Set once when the object is opened.
  bool use_read_write = false;
  // fd is not a descriptor but a slot of the ring's file table (a direct
  // descriptor, accepted with IORING_FILE_INDEX_ALLOC): every request on it
  // carries IOSQE_FIXED_FILE, and releasing it closes the slot.
  bool direct = false;
  // A TCP stream on a real descriptor: write_all may use SEND_ZC (other
  // socket families refuse it, and its cancellation needs the descriptor).
  bool zero_copy_capable = false;
  object_side read_side;
  object_side write_side;
  object_state* next_free = nullptr;
};

// Builds the message io_context's constructor throws with when io_uring_setup
// fails: the cause and what to do about it. Split out so that each cause can
// be tested without changing the machine (sysctl value, memlock limit).
std::string describe_setup_failure(int err, int io_uring_disabled,
                                   unsigned long long memlock_limit);
// Calls try_setup(flags) with the set-up flags we want, giving them up one by
// one while it returns -EINVAL; the flags that worked land in accepted.
// Returns 0 or the last error. Split out so that older kernels can be mimicked.
int setup_with_fallback(const std::function<int(unsigned flags)>& try_setup, unsigned& accepted);

// The calling thread's thread pointer (x86-64: %fs:0, the TCB's address,
// which the TLS ABI stores there), one load; elsewhere pthread_self(). It
// differs between live threads, like std::thread::id.
inline const void* thread_pointer() noexcept {
#if defined(__x86_64__)
  const void* tp;
  __asm__ volatile("mov %%fs:0, %0" : "=r"(tp));
  return tp;
#else
  return reinterpret_cast<const void*>(pthread_self());
#endif
}

class ring {
public:
  // Sets the ring up (throws std::system_error saying why it cannot).
  ring(io_context& ctx, const io_context_options& options);
  ~ring();
  ring(const ring&) = delete;
  ring& operator=(const ring&) = delete;

  io_context& context() const noexcept { return *ctx_; }
  const io_context_features& features() const noexcept { return features_; }
  bool multishot_accept_supported() const noexcept { return multishot_accept_; }
  // True on the epoll backend: the SQ and CQ are user-space arrays that an
  // emulator of the kernel side consumes and fills (lib/detail/epoll_emulator.hpp).
  bool emulated() const noexcept { return emu_ != nullptr; }

  // --- registrations (0 or -errno; the epoll backend records or refuses) ----
  // A provided buffer ring (kernel ABI struct io_uring_buf_ring), for
  // buffer_pool (-EEXIST: that group id is taken on this ring).
  int register_buffer_ring(const io_uring_buf_reg& reg);
  int unregister_buffer_ring(unsigned bgid);
  // Fixed buffers: on epoll, READ_FIXED/WRITE_FIXED are plain reads/writes.
  int register_buffers(const iovec* iovecs, unsigned n);
  int unregister_buffers();
  // Changes with every registration and unregistration of fixed buffers: a
  // fixed operation made for one set is refused once that set is gone (on
  // epoll it would read into whatever memory is there now).
  std::uint32_t buffers_generation() const noexcept { return buffers_generation_; }
  // A sparse direct-descriptor table: -EOPNOTSUPP on epoll (use plain fds).
  int register_files_sparse(unsigned n);
  // The ring's descriptor (-1 when the ring is not an io_uring), the target
  // of another ring's IORING_OP_MSG_RING.
  int ring_fd() const noexcept { return ring_.ring_fd; }
  // This ring can send IORING_OP_MSG_RING (with its success CQE skipped).
  bool can_send_messages() const noexcept { return msg_ring_; }
  // The thread that created the ring: the only one that may submit to it.
  bool on_owner_thread() const noexcept { return std::this_thread::get_id() == owner_; }
  // The same test without a call into the C library: the thread pointer
  // identifies the thread as well as its id does.
  bool on_owner_thread_fast() const noexcept { return thread_pointer() == owner_tp_; }
  // io_context_options::zero_copy_threshold (0: off).
  std::size_t zero_copy_threshold() const noexcept { return zero_copy_threshold_; }
  // The sparse file table direct descriptors live in, registered on first
  // use with io_context_options::direct_descriptor_slots slots: 0 or -errno
  // (-EOPNOTSUPP on epoll).
  int ensure_file_table() noexcept;
  // Empties a slot of the file table (IORING_OP_CLOSE with file_index).
  void close_direct(int slot) noexcept;
  // Slots of the file table not taken by a direct descriptor nor promised to
  // an accept in flight. The kernel accepts a connection before it looks for
  // a slot, and drops the connection if there is none: a listener accepts
  // into the table only while this says a slot is there (acceptor.cpp).
  unsigned free_direct_slots() const noexcept {
    return file_table_ ? file_table_slots_ - direct_slots_used_ : 0;
  }
  // A slot is taken (or promised: +1), or a promise is withdrawn (-1).
  // close_direct gives a taken slot back.
  void count_direct_slots(int delta) noexcept {
    direct_slots_used_ += static_cast<unsigned>(delta);
  }
  // A zero-copy send waits for its notification (w->op set first) / no
  // longer does (w->op cleared: unlinking twice is harmless).
  void link_zero_copy_wait(zero_copy_wait* w) noexcept {
    w->prev = nullptr;
    w->next = zero_copy_waits_;
    if (zero_copy_waits_ != nullptr)
      zero_copy_waits_->prev = w;
    zero_copy_waits_ = w;
  }
  void unlink_zero_copy_wait(zero_copy_wait* w) noexcept {
    if (w->op == nullptr)
      return; // not linked (its data CQE came while the ring was torn down)
    w->op = nullptr;
    (w->prev != nullptr ? w->prev->next : zero_copy_waits_) = w->next;
    if (w->next != nullptr)
      w->next->prev = w->prev;
    w->prev = w->next = nullptr;
  }

  // --- submission -----------------------------------------------------------
  // A free SQE; when the submission queue is full, submits first.
  io_uring_sqe* get_sqe() {
    // io_uring_get_sqe without its run-time tests for SQPOLL and 128-byte
    // SQEs, which this ring never sets up (the constructor checks): one
    // plain load of the kernel's head, as liburing does without SQPOLL.
    io_uring_sq& sq = ring_.sq;
    const unsigned tail = sq.sqe_tail;
    if (tail + 1 - IO_URING_READ_ONCE(*sq.khead) <= sq.ring_entries) [[likely]] {
      sq.sqe_tail = tail + 1;
      return &sq.sqes[tail & sq.ring_mask];
    }
    return get_sqe_slow();
  }
  // The SQE for op's request: with a linked timeout, the pair must be
  // adjacent in the ring, so room for both is made first.
  io_uring_sqe* get_sqe_for(const operation* op) {
    if (op->link_timeout != nullptr) [[unlikely]]
      reserve_sqes(2);
    return get_sqe();
  }
  void reserve_sqes(unsigned n) {
    if (io_uring_sq_space_left(&ring_) < n)
      flush_full_sq(n);
  }
  // Ties sqe to op: sets user_data (never left to chance: a reused slot
  // keeps the old value), counts the CQE it will produce, counts the request
  // against its object, and appends op's linked timeout if it has one.
  void arm(io_uring_sqe* sqe, operation* op) noexcept {
    arm(sqe, op, op->object, op->link_timeout);
  }
  // The same with op's object and linked timeout as they were before the
  // SQE was prepared. io_awaitable::issue reads them first: the SQE's stores
  // may alias the record as far as the compiler knows, so read afterwards
  // they are loaded and tested on every operation, while read before, for a
  // record just built in the frame (a nop, a timer), they are known
  // constants and both tests vanish.
  [[gnu::always_inline]] void arm(io_uring_sqe* sqe, operation* op, object_state* object,
                                  __kernel_timespec* link_timeout) noexcept {
    io_uring_sqe_set_data(sqe, op);
    ++op->outstanding;
    ++pending_;
    if (object != nullptr) {
      ++object->in_flight;
      if (object->direct) [[unlikely]]
        sqe->flags |= IOSQE_FIXED_FILE;
    }
    if (link_timeout != nullptr) [[unlikely]]
      attach_link_timeout(sqe, op);
  }
  // IORING_OP_ASYNC_CANCEL for op; op still completes through its own CQE.
  void cancel(operation* op) noexcept;
  // Prepares an IORING_OP_MSG_RING that posts m into the ring whose
  // descriptor is target_fd (throws when no SQE can be had).
  void send_message(int target_fd, message* m);
  // Runs the deferred task work and reaps what it posted (teardown: the
  // messages other rings sent before their loops ended).
  void flush_completions() noexcept;
  // Hands the prepared SQEs to the kernel now (used outside the loop).
  void submit_now() noexcept;
  // The same before io_context's idle spin (no syscall if nothing is
  // prepared), after recycling released records as enter does.
  void submit_idle() noexcept;
  // One io_uring_enter: submit, and wait for a completion if block.
  void enter(bool block);

  // --- completion -----------------------------------------------------------
  // Dispatches every CQE available now. The CQ head is handed back before
  // each record runs: a resumed coroutine that submits a lot must not find
  // the CQ full of entries we have already read.
  void reap() noexcept {
    // Teardown abandons instead of resuming; it is decided once per batch,
    // not per CQE (nothing in a batch can start or end a teardown).
    if (draining_) [[unlikely]] {
      reap_draining();
      return;
    }
    reap_batch<false>();
  }

  // The completion protocol, the same for every operation: the operation is
  // done, its side passes to the next waiting operation, and its coroutine
  // resumes. (While the context is torn down nothing is resumed: dispatch
  // calls on_abandon instead.)
  void finish(operation* op) noexcept {
    settle(op);
    op->waiter.resume();
  }
  // finish without the resumption, for records that resume their waiter
  // through a join of their own.
  void settle(operation* op) noexcept {
    if (op->scope != nullptr)
      op->scope->clear_current(op);
    if (op->side != nullptr)
      pass_side(op);
  }
  // Resumes op's coroutine on the next loop turn, never inline: whoever ends
  // it is in the middle of something (a cancellation, a close). No allocation.
  void post(operation* op) noexcept;
  // Resumes the posted operations; false if there were none.
  bool run_posted();
  bool has_posted() const noexcept { return posted_head_ != nullptr; }

private:
  template <bool Draining>
  void reap_batch() noexcept {
    io_uring_cq& cq = ring_.cq;
    unsigned head = *cq.khead;
    const unsigned tail = io_uring_smp_load_acquire(cq.ktail);
    const unsigned mask = cq.ring_mask;
    while (head != tail) {
      const io_uring_cqe& c = cq.cqes[head & mask];
      const std::uint64_t ud = c.user_data;
      const int res = c.res;
      const std::uint32_t flags = c.flags;
      io_uring_smp_store_release(cq.khead, ++head);
      dispatch<Draining>(ud, res, flags);
    }
  }
  // reap while the context is torn down (out of line: cold).
  [[gnu::cold]] void reap_draining() noexcept;

public:
  // --- I/O objects ----------------------------------------------------------
  // A state record for fd (owned from now on).
  object_state* open_object(int fd);
  // Gives s's descriptor up without closing it and recycles the record
  // (std::logic_error while an operation is in flight or waiting on it).
  int release_object(object_state* s);
  // The same for a slot of the file table (a direct descriptor).
  object_state* open_direct_object(int slot);
  enum class close_mode { stream, listener };
  // Marks the record closed, ends its waiting operations with ECANCELED,
  // cancels its requests in flight, and closes the descriptor once the last
  // of them has completed (at once if none is in flight). A listener stops
  // listening at once (shutdown SHUT_RD) even while the close is deferred.
  void close_object(object_state* s, close_mode mode) noexcept;
  // Starts op on its side now if the side is free (true), or queues it.
  // A read on a stream that receives through a buffer pool is not queued:
  // it ends with EINVAL, posted, and its side is cleared.
  bool take_side(operation* op);
  // Drops a waiting op from its side's queue (its frame is going away).
  static void leave_queue(operation* op) noexcept;
  // op is done with its side: the next operation in line is issued.
  void pass_side(operation* op) noexcept;

  // --- state, counters ------------------------------------------------------
  bool draining() const noexcept { return draining_; }
  // True in a child process that inherited this ring through fork(): the
  // rings are shared with the parent, so nothing may be submitted or reaped.
  bool foreign() const noexcept;
  void set_running(bool r) noexcept { running_ = r; }
  bool running() const noexcept { return running_; }
  bool broken() const noexcept { return broken_; }
  // Cancels everything in flight and reaps until nothing is left (bounded).
  void drain() noexcept;

  std::size_t pending() const noexcept { return pending_; }
  std::size_t pending_operations() const noexcept { return pending_ - internal_ + parked_; }
  std::uint64_t enter_count() const noexcept { return enter_count_; }
  // The batched sleep (io_context_options::wait_batch): the most completions
  // a sleeping loop should ask for (1: not enabled or not supported).
  unsigned wait_batch() const noexcept { return wait_batch_; }
  // Submits, then sleeps until wait_nr (> 1) completions are in or the batch
  // timeout passed with at least one (IORING_ENTER_EXT_ARG min_wait_usec).
  // Only when wait_batch() > 1.
  void enter_batched(unsigned wait_nr);
  // Completions reaped and requests prepared so far, modulo 2^32: the CQ
  // head and the SQE tail are free-running indexes (on both backends), so
  // counting costs the hot path nothing. For benchmarks: take differences.
  std::uint32_t cqe_count() const noexcept { return IO_URING_READ_ONCE(*ring_.cq.khead); }
  std::uint32_t sqe_count() const noexcept { return ring_.sq.sqe_tail; }
  // Cross-context messages delivered through this ring's CQ so far.
  std::uint64_t messages_received() const noexcept { return messages_received_; }
  // Whether a completion waits: a CQE, or task work the kernel queued for us
  // (IORING_SQ_TASKRUN, with IORING_SETUP_TASKRUN_FLAG) that an enter with
  // GETEVENTS turns into CQEs. Shared memory only, no syscall: io_context's
  // idle spin polls it. (epoll: no flags word; the CQ fills only in enter.)
  bool completions_waiting() const noexcept {
    if (io_uring_cq_ready(&ring_) != 0)
      return true;
    return ring_.sq.kflags != nullptr &&
           (IO_URING_READ_ONCE(*ring_.sq.kflags) & IORING_SQ_TASKRUN) != 0;
  }
  // A background request (a listener's multishot accept, the wake-up read)
  // does not keep run() going by itself; an awaiter parked in a queue of
  // ours (a waiting accept, a queued write) does.
  void count_internal(int delta) noexcept { internal_ += static_cast<std::size_t>(delta); }
  void count_parked(int delta) noexcept { parked_ += static_cast<std::size_t>(delta); }

  // --- the kernel's worker threads ------------------------------------------
  // Requests the kernel runs in its worker pool (io-wq) rather than inline
  // (io_awaitable::runs_in_kernel_worker: files, paths, splice) can be
  // stranded: Linux (seen on 6.18) can queue one just as the pool's last
  // idle worker exits, and the exiting worker then fails to start its
  // replacement, so nothing ever runs the request. While such requests are
  // in flight the loop sleeps with enter_watchful, which wakes after
  // io_context_options::worker_watchdog; a wake-up with nothing completed
  // queues one forced-async request in each of the pool's two classes (a
  // NOP and an empty read of /dev/null): queueing into a pool with no
  // running worker starts one, and it runs whatever waits there, the
  // stranded request included. docs/design.md ("The kernel's worker pool").
  void count_worker_request(int delta) noexcept {
    worker_requests_ += static_cast<std::size_t>(delta);
  }
  std::size_t worker_requests() const noexcept { return worker_requests_; }
  // The loop should sleep with enter_watchful rather than enter.
  bool watch_workers() const noexcept { return worker_requests_ != 0 && worker_watchdog_ns_ != 0; }
  // enter(true), but waking after the watchdog interval at the latest; then,
  // if nothing came, nudges the worker pool (kick_workers).
  void enter_watchful();
  // Nudges so far (for tests).
  std::uint64_t worker_kicks() const noexcept { return worker_kicks_; }

private:
  template <bool Draining>
  void dispatch(std::uint64_t ud, int res, std::uint32_t flags) noexcept {
    // Anything but a plain record's address leaves the common path with one
    // test of the tag bits and one of zero. 0: ours, fire-and-forget
    // (cancels). ~0 (both tag bits set): liburing's own timeout
    // (LIBURING_UDATA_TIMEOUT) on kernels without EXT_ARG.
    if ((ud & (link_timeout_tag | message_tag)) != 0 || ud == 0) [[unlikely]] {
      if (ud + 1 <= 1)
        return;
      if (ud & message_tag) {
        on_message(ud, res); // not a request of ours: pending_ never counted it
        return;
      }
      auto* op = reinterpret_cast<operation*>(ud & ~link_timeout_tag);
      op->link_timeout_res = res;
      --pending_;
      if (--op->outstanding == 0)
        complete<Draining>(op);
      return;
    }
    auto* op = reinterpret_cast<operation*>(ud);
    op->res = res;
    op->cqe_flags = flags;
    if (flags & IORING_CQE_F_MORE) [[unlikely]] {
      complete<Draining>(op); // a multishot request goes on
      return;
    }
    --pending_;
    if constexpr (!Draining) {
      // The common record (no object, no completion function, no scope, no
      // side: a nop, a timer, an operation outside any scope) resumes its
      // coroutine after one test of the four fields together; what the
      // general path below would do for it is exactly that.
      const auto others = reinterpret_cast<std::uintptr_t>(op->object) |
                          reinterpret_cast<std::uintptr_t>(op->on_complete) |
                          reinterpret_cast<std::uintptr_t>(op->scope) |
                          reinterpret_cast<std::uintptr_t>(op->side);
      if (others == 0) [[likely]] {
        if (--op->outstanding == 0)
          op->waiter.resume();
        return;
      }
    }
    if (object_state* s = op->object) {
      // The request no longer uses the descriptor: if the object was closed
      // meanwhile and this was its last request, the descriptor goes now.
      if (--s->in_flight == 0 && s->closed) [[unlikely]]
        release_descriptor(s);
    }
    if (--op->outstanding == 0)
      complete<Draining>(op);
  }
  template <bool Draining>
  void complete(operation* op) noexcept {
    if constexpr (Draining) {
      if (op->on_abandon != nullptr)
        op->on_abandon(op);
    } else if (op->on_complete == nullptr) [[likely]] {
      finish(op);
    } else {
      op->on_complete(op);
    }
  }

  void on_message(std::uint64_t ud, int res) noexcept;
  // Publishes the prepared SQEs' tail to the kernel; how many it has not
  // consumed yet (what the next io_uring_enter submits).
  unsigned publish_sq() noexcept;
  // One io_uring_enter with EXT_ARG: submit, then wait for wait_nr
  // completions (min_wait_usec: see enter_batched) or until timeout.
  void enter_until(unsigned wait_nr, unsigned min_wait_usec, __kernel_timespec timeout);
  void kick_workers();
  io_uring_sqe* get_sqe_slow();
  void flush_full_sq(unsigned wanted);
  void attach_link_timeout(io_uring_sqe* sqe, operation* op) noexcept;
  void release_descriptor(object_state* s) noexcept;
  void recycle_released() noexcept;

  void set_up_io_uring(const io_context_options& options, unsigned sq, unsigned cq, int& err);
  void set_up_epoll(unsigned sq, unsigned cq);

  io_uring ring_{};
  // The epoll backend's emulator; nullptr on io_uring. Only the calls that
  // would enter the kernel look at it (enter, submit_now, drain, ...): the
  // per-operation path (get_sqe, arm, reap) is the same on both backends.
  std::unique_ptr<epoll_emulator> emu_;
  io_context* ctx_;
  io_context_features features_{};
  unsigned fork_generation_ = 0;
  bool multishot_accept_ = false;
  bool msg_ring_ = false;
  std::thread::id owner_ = std::this_thread::get_id();
  const void* owner_tp_ = thread_pointer();
  std::size_t zero_copy_threshold_ = 0;
  unsigned file_table_slots_ = 0;
  unsigned direct_slots_used_ = 0; // see free_direct_slots
  bool file_table_ = false;
  std::uint32_t buffers_generation_ = 0;
  bool buffers_registered_ = false; // epoll: the kernel's one-set-per-ring rule, kept
  bool draining_ = false;
  bool broken_ = false; // io_uring_enter failed unexpectedly: no CQE can be trusted
  bool running_ = false;
  std::size_t pending_ = 0;  // CQEs still expected for user_data != 0
  std::size_t internal_ = 0; // of which: background requests
  std::size_t parked_ = 0;   // awaiters waiting in a queue of ours
  std::uint64_t enter_count_ = 0;
  std::uint64_t messages_received_ = 0;
  unsigned wait_batch_ = 1;
  unsigned wait_batch_usec_ = 0;
  std::size_t worker_requests_ = 0;     // see count_worker_request
  std::int64_t worker_watchdog_ns_ = 0; // 0: no watchdog (epoll, or the option)
  std::uint64_t worker_kicks_ = 0;
  int kick_fd_ = -1; // /dev/null, opened at the first kick

  zero_copy_wait* zero_copy_waits_ = nullptr;
  operation* posted_head_ = nullptr;
  operation* posted_tail_ = nullptr;

  // Object records: allocated a chunk at a time, recycled through free_.
  // Released records wait in released_ until the next loop turn: a
  // completion running right now may still clear its side.
  std::vector<std::unique_ptr<object_state[]>> chunks_;
  object_state* free_ = nullptr;
  object_state* released_ = nullptr;
};

[[noreturn]] void throw_wrong_thread();
// Objects belong to the context that created them (its ring is single-issuer
// and unsynchronised): starting an operation from another thread is a
// std::logic_error. Debug builds only (NDEBUG not defined): there it costs
// one load and compare of the thread pointer per operation, not a call.
inline void check_owner_thread([[maybe_unused]] const ring* r) {
#ifndef NDEBUG
  if (r != nullptr && !r->on_owner_thread_fast()) [[unlikely]]
    throw_wrong_thread();
#endif
}

// What every I/O object (stream, listener, ...) holds: its ring and its state
// record. Moving the object moves the handle; closing (or destroying) it hands
// the record back to the ring, which closes the descriptor once nothing runs
// on it any more.
struct direct_slot_t {
  explicit direct_slot_t() = default;
};
inline constexpr direct_slot_t direct_slot{};

class object_handle {
public:
  object_handle() noexcept = default;
  // Adopts slot, a direct descriptor (closed if no record can be had).
  object_handle(ring& r, int slot, direct_slot_t);
  // Adopts fd. If no record can be had (out of memory) fd is closed and
  // std::bad_alloc thrown: the descriptor is never leaked.
  object_handle(ring& r, int fd);
  // A moved-from handle is as if never opened (its operations give EBADF);
  // a closed one keeps its ring (they give operation_canceled).
  object_handle(object_handle&& other) noexcept
      : ring_(std::exchange(other.ring_, nullptr)), state_(std::exchange(other.state_, nullptr)) {}
  object_handle& operator=(object_handle&& other) noexcept {
    if (this != &other) {
      close();
      ring_ = std::exchange(other.ring_, nullptr);
      state_ = std::exchange(other.state_, nullptr);
    }
    return *this;
  }
  object_handle(const object_handle&) = delete;
  object_handle& operator=(const object_handle&) = delete;
  ~object_handle() { close(); }

  void close(ring::close_mode mode = ring::close_mode::stream) noexcept {
    if (state_ != nullptr)
      ring_->close_object(std::exchange(state_, nullptr), mode);
  }

  // Gives the descriptor up (the caller owns it now); see ring::release_object.
  int release() {
    if (state_ == nullptr)
      return -1;
    const int fd = ring_->release_object(state_);
    state_ = nullptr;
    return fd;
  }

  bool is_open() const noexcept { return state_ != nullptr; }
  int fd() const noexcept { return state_ != nullptr ? state_->fd : -1; }
  bool is_direct() const noexcept { return state_ != nullptr && state_->direct; }
  // The ring, or nullptr for an object that was never opened.
  ring* ring_ptr() const noexcept { return ring_; }
  object_state* state() const noexcept { return state_; }

private:
  ring* ring_ = nullptr;
  object_state* state_ = nullptr;
};

} // namespace couring::detail
