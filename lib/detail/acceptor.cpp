#include "acceptor.hpp"

#include <algorithm>
#include <cassert>
#include <new>
#include <system_error>

#include <sys/socket.h>
#include <unistd.h>

namespace couring::detail {

namespace {
// More connections than this accepted ahead with nobody taking them: stop
// accepting until the queue drains (the kernel's backlog holds the rest).
constexpr std::size_t max_queued = 128;
constexpr unsigned first_backoff_ms = 10;
constexpr unsigned max_backoff_ms = 1000;
// Direct descriptors: the kernel accepts a connection first and looks for a
// slot of the file table afterwards; with none free the connection is
// dropped (the client sees it reset). So an accept is armed only with a slot
// free for it, and single-shot (holding that slot) once few are left: one
// wake-up of a multishot accept takes every connection in the backlog. Above
// this many free slots a burst is assumed not to exhaust them.
constexpr unsigned direct_multishot_margin = 1024;
// How often a listener whose file table is full looks at it again.
constexpr unsigned slot_wait_ms = 5;
} // namespace

// --- listener_core -------------------------------------------------------------

listener_core::listener_core(io_context& ctx, int fd, bool direct) : ctx_(&ctx), direct_(direct) {
  if (direct) {
    if (const int err = ctx.ring().ensure_file_table(); err < 0) {
      ::close(fd);
      throw std::system_error(-err, std::system_category(),
                              "couring: cannot register the file table for direct descriptors");
    }
  }
  // The memory first: if even that fails, fd is still ours to close. Once
  // the constructor runs, the acceptor's handle owns fd (and closes it if
  // the constructor throws).
  void* memory = ::operator new(sizeof(acceptor), std::nothrow);
  if (memory == nullptr) {
    ::close(fd);
    throw std::bad_alloc();
  }
  try {
    acceptor_ = ::new (memory) acceptor(ctx, fd, direct);
  } catch (...) {
    ::operator delete(memory);
    throw;
  }
}

int listener_core::native_handle() const noexcept {
  return acceptor_ != nullptr ? acceptor_->fd() : -1;
}

void listener_core::close() noexcept {
  if (acceptor_ != nullptr)
    std::exchange(acceptor_, nullptr)->close_and_release();
}

// --- accept_waiter ------------------------------------------------------------

accept_waiter::accept_waiter(acceptor* a, ring* r, bool direct) noexcept
    : acceptor_(a), direct_(direct) {
  this->owner_ring = r;
}

accept_waiter::accept_waiter(accept_waiter&& other) noexcept
    : acceptor_(other.acceptor_), direct_(other.direct_) {
  // Only what is set before the await: res and friends are not yet.
  this->owner_ring = other.owner_ring;
  assert(!other.linked_ && "an accept awaitable moved while waiting");
}

accept_waiter::~accept_waiter() {
  if (linked_)
    acceptor_->remove_waiter(this); // the frame goes away while waiting (teardown)
}

// A closed listener's accept ends as close() ends a waiting one; one that
// was never bound (or moved from) has no context at all.
static int closed_listener_error(const ring* r) noexcept {
  return r != nullptr ? -ECANCELED : -EBADF;
}

bool accept_waiter::await_ready() noexcept {
  if (acceptor_ == nullptr) {
    this->res = closed_listener_error(this->owner_ring);
    return true;
  }
  return acceptor_->try_take(this->res);
}

bool accept_waiter::start(std::coroutine_handle<> awaiting, cancel_scope* s) {
  check_owner_thread(this->owner_ring);
  this->scope = s;
  if (acceptor_ == nullptr) {
    this->res = closed_listener_error(this->owner_ring);
    return false;
  }
  if (acceptor_->try_take(this->res))
    return false;
  if (s != nullptr && s->cancelled()) {
    this->res = -ECANCELED;
    return false;
  }
  this->waiter = awaiting;
  acceptor_->add_waiter(this);
  if (s != nullptr)
    s->set_current(this);
  return true;
}

// --- acceptor -------------------------------------------------------------------

acceptor::acceptor(io_context& ctx, int fd, bool direct)
    : ring_(&ctx.ring()), handle_(ctx.ring(), fd), multishot_(ring_->multishot_accept_supported()),
      direct_(direct), queue_(std::make_unique<int[]>(queue_capacity)) {
  accept_op_.owner_ring = ring_;
  accept_op_.object = handle_.state(); // the descriptor stays open while it is in flight
  accept_op_.owner = this;
  accept_op_.on_complete = &on_accept;
  accept_op_.on_abandon = &on_accept_abandoned;
  backoff_op_.owner_ring = ring_;
  backoff_op_.owner = this;
  backoff_op_.on_complete = &on_backoff;
  backoff_op_.on_abandon = &on_backoff_abandoned;
}

void acceptor::push(int res) noexcept {
  queue_[(first_ + queued_) % queue_capacity] = res;
  ++queued_;
}

int acceptor::pop() noexcept {
  const int res = queue_[first_];
  first_ = (first_ + 1) % queue_capacity;
  --queued_;
  return res;
}

bool acceptor::try_take(int& result) noexcept {
  if (queued_ == 0)
    return false;
  result = pop();
  // Taking from a paused queue makes room again: accept ahead once more the
  // next time someone waits (add_waiter arms when idle).
  return true;
}

void acceptor::add_waiter(accept_waiter* w) {
  // Arm first: if that throws, nothing is linked that could be resumed later.
  if (state_ == state::idle)
    arm();
  w->cancel_fn = &on_waiter_cancel;
  w->prev_ = last_waiter_;
  w->next_ = nullptr;
  if (last_waiter_ != nullptr)
    last_waiter_->next_ = w;
  else
    first_waiter_ = w;
  last_waiter_ = w;
  w->linked_ = true;
  ring_->count_parked(+1);
}

void acceptor::remove_waiter(accept_waiter* w) noexcept {
  if (!w->linked_)
    return;
  if (w->prev_ != nullptr)
    w->prev_->next_ = w->next_;
  else
    first_waiter_ = w->next_;
  if (w->next_ != nullptr)
    w->next_->prev_ = w->prev_;
  else
    last_waiter_ = w->prev_;
  w->prev_ = w->next_ = nullptr;
  w->linked_ = false;
  ring_->count_parked(-1);
}

void acceptor::arm() {
  bool multishot = multishot_;
  if (direct_) {
    const unsigned free = ring_->free_direct_slots();
    if (free == 0) {
      // The table is full: connections wait in the kernel's backlog (an
      // accept now would only have them dropped) until a slot is free.
      start_backoff(slot_wait_ms);
      return;
    }
    if (free <= direct_multishot_margin)
      multishot = false;
  }
  io_uring_sqe* sqe = ring_->get_sqe();
  // Direct: no SOCK_CLOEXEC (the kernel refuses it: a slot is no descriptor).
  if (multishot && direct_)
    io_uring_prep_multishot_accept_direct(sqe, handle_.fd(), nullptr, nullptr, 0);
  else if (multishot)
    io_uring_prep_multishot_accept(sqe, handle_.fd(), nullptr, nullptr, SOCK_CLOEXEC);
  else if (direct_)
    // liburing 2.3 encodes file_index + 1, which turns IORING_FILE_INDEX_ALLOC
    // into 0 -- a plain accept. ALLOC - 1 gets ALLOC, as its multishot helper does.
    io_uring_prep_accept_direct(sqe, handle_.fd(), nullptr, nullptr, 0,
                                IORING_FILE_INDEX_ALLOC - 1);
  else
    io_uring_prep_accept(sqe, handle_.fd(), nullptr, nullptr, SOCK_CLOEXEC);
  ring_->arm(sqe, &accept_op_);
  ring_->count_internal(+1);
  state_ = state::accepting;
  if (direct_ && !multishot) {
    ring_->count_direct_slots(+1); // its connection's slot, promised
    slot_promised_ = true;
  }
}

void acceptor::count_slot(int res, bool more) noexcept {
  if (!direct_)
    return;
  if (slot_promised_) {
    if (more)
      return;
    slot_promised_ = false;
    if (res < 0)
      ring_->count_direct_slots(-1); // no connection came: the promise is withdrawn
    // (res >= 0: the promised slot is the connection's now.)
  } else if (res >= 0) {
    ring_->count_direct_slots(+1); // a multishot accept's connection
  }
}

void acceptor::request_ended() noexcept {
  state_ = state::idle;
  if (!closed_)
    ring_->count_internal(-1);
}

void acceptor::start_backoff(unsigned fixed_ms) noexcept {
  if (fixed_ms == 0)
    backoff_ms_ = backoff_ms_ == 0 ? first_backoff_ms : std::min(backoff_ms_ * 2, max_backoff_ms);
  backoff_op_.ts = to_timespec(std::chrono::milliseconds(fixed_ms != 0 ? fixed_ms : backoff_ms_));
  try {
    io_uring_sqe* sqe = ring_->get_sqe();
    io_uring_prep_timeout(sqe, &backoff_op_.ts, 0, 0);
    ring_->arm(sqe, &backoff_op_);
    ring_->count_internal(+1);
    state_ = state::backing_off;
  } catch (...) {
    fail_all_waiters(ENOMEM);
  }
}

void acceptor::rearm_if_waited_for() noexcept {
  if (state_ != state::idle || closed_ || first_waiter_ == nullptr)
    return;
  try {
    arm();
  } catch (...) {
    fail_all_waiters(ENOMEM);
  }
}

// A connection (res >= 0) or an error for the first waiter, else the queue.
void acceptor::hand_out(int res) noexcept {
  if (first_waiter_ != nullptr) {
    accept_waiter* w = first_waiter_;
    remove_waiter(w);
    w->res = res;
    ring_->finish(w);
  } else if (res >= 0) {
    if (queue_full())
      discard(res); // beyond even the pause's slack: the peer sees a reset
    else
      push(res);
  } else if (queued_ == 0 || queue_[(first_ + queued_ - 1) % queue_capacity] >= 0) {
    if (!queue_full())
      push(res); // one error in a row is enough to report
  }
}

void acceptor::on_accept(operation* op) noexcept {
  acceptor* self = static_cast<accept_record*>(op)->owner;
  const int res = op->res;
  const bool more = (op->cqe_flags & IORING_CQE_F_MORE) != 0;
  const bool was_pausing = self->state_ == state::pausing;
  self->count_slot(res, more);
  if (!more)
    self->request_ended();
  self->dispatching_ = true;
  if (res >= 0) {
    self->backoff_ms_ = 0;
    if (self->closed_) {
      self->discard(res); // nobody will take it
    } else {
      self->hand_out(res);
      // Accepted far ahead (let the backlog hold the rest), or direct with
      // few slots left (go on single-shot, see arm).
      if (more && self->state_ == state::accepting &&
          (self->queued_ >= max_queued ||
           (self->direct_ && self->ring_->free_direct_slots() <= direct_multishot_margin))) {
        self->state_ = state::pausing;
        self->ring_->cancel(&self->accept_op_);
      }
    }
  } else if (res == -ECANCELED && (self->closed_ || was_pausing)) {
    // Our own cancellation: closing, or pausing.
  } else if (!self->closed_) {
    // EMFILE, ENFILE, ENOMEM, ENOBUFS or anything else: the back-off is
    // armed before the error is handed to a waiter, whose next accept()
    // must find it armed.
    if (self->state_ == state::idle)
      self->start_backoff();
    self->hand_out(res);
  }
  // The request ended and someone still waits: arm it again.
  self->rearm_if_waited_for();
  self->dispatching_ = false;
  self->maybe_delete();
}

void acceptor::on_accept_abandoned(operation* op) noexcept {
  acceptor* self = static_cast<accept_record*>(op)->owner;
  self->count_slot(op->res, (op->cqe_flags & IORING_CQE_F_MORE) != 0);
  if (op->res >= 0)
    self->discard(op->res); // teardown: nobody will take it
  if ((op->cqe_flags & IORING_CQE_F_MORE) == 0)
    self->request_ended();
  self->maybe_delete();
}

void acceptor::on_backoff(operation* op) noexcept {
  acceptor* self = static_cast<backoff_record*>(op)->owner;
  self->request_ended();
  self->rearm_if_waited_for();
  self->maybe_delete();
}

void acceptor::on_backoff_abandoned(operation* op) noexcept {
  acceptor* self = static_cast<backoff_record*>(op)->owner;
  self->request_ended();
  self->maybe_delete();
}

void acceptor::end_waiter(accept_waiter* w, int err) noexcept {
  remove_waiter(w);
  w->res = -err;
  if (w->scope != nullptr)
    w->scope->clear_current(w);
  // Resumed on the next turn: whoever ends it is in the middle of something
  // (a cancellation, a close).
  if (!ring_->draining())
    ring_->post(w);
}

void acceptor::on_waiter_cancel(operation* op) noexcept {
  auto* w = static_cast<accept_waiter*>(op);
  w->acceptor_->end_waiter(w, ECANCELED);
}

void acceptor::fail_all_waiters(int err) noexcept {
  while (first_waiter_ != nullptr)
    end_waiter(first_waiter_, err);
}

void acceptor::close_and_release() noexcept {
  // A request still in flight is no longer background work: it is part of
  // the close, and run() waits for it (the descriptor goes after it).
  if (state_ != state::idle)
    ring_->count_internal(-1);
  closed_ = true;
  fail_all_waiters(ECANCELED);
  while (queued_ > 0)
    if (const int fd = pop(); fd >= 0)
      discard(fd);
  if (state_ == state::backing_off)
    ring_->cancel(&backoff_op_);
  // Stops listening now; the descriptor goes once the accept request is in.
  handle_.close(ring::close_mode::listener);
  maybe_delete();
}

void acceptor::discard(int accepted) noexcept {
  if (direct_)
    ring_->close_direct(accepted);
  else
    ::close(accepted);
}

void acceptor::maybe_delete() noexcept {
  if (closed_ && state_ == state::idle && !dispatching_)
    delete this;
}

} // namespace couring::detail
