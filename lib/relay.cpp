#include <couring/relay.hpp>

#include <algorithm>
#include <cerrno>
#include <stdexcept>
#include <utility>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

namespace couring {

relay_awaitable::relay_awaitable(stream& from, stream& to, std::size_t max_bytes,
                                 const relay_options& options) noexcept
    : base(to.handle().ring_ptr(), to.handle().state(),
           to.handle().state() != nullptr ? &to.handle().state()->write_side : nullptr),
      from_ring_(from.handle().ring_ptr()), from_state_(from.handle().state()),
      from_generation_(from_state_ != nullptr ? from_state_->generation : 0),
      from_opened_(from_ring_ != nullptr),
      pipe_(max_bytes != 0 ? detail::splice_pipe(options.pipe_size) : detail::splice_pipe()),
      max_(max_bytes) {
  this->on_complete = &main_done;
  this->res = 0;
  // A splice never moves more than the pipe holds; 0 means "the pipe's size".
  chunk_ = options.chunk == 0 ? pipe_.size() : std::min(options.chunk, pipe_.size());
}

relay_awaitable::relay_awaitable(relay_awaitable&& o) noexcept
    : base(std::move(o)), from_ring_(o.from_ring_), from_state_(o.from_state_),
      from_generation_(o.from_generation_), from_opened_(o.from_opened_), pipe_(std::move(o.pipe_)),
      chunk_(o.chunk_), max_(o.max_) {
  this->res = 0;
}

relay_awaitable::~relay_awaitable() {
  // Teardown of a frame whose relay still holds (or waits for) from's read
  // side: nothing of ours is in flight any more, only the side is left.
  if (reader_.side != nullptr)
    detail::ring::leave_queue(&reader_);
}

bool relay_awaitable::start(std::coroutine_handle<> awaiting, detail::cancel_scope* s) {
  if (this->object != nullptr && !this->object->closed &&
      this->object->generation == this->generation_) {
    // to is usable; from and the pipe must be too, before anything starts.
    if (from_ring_ != nullptr && from_ring_ != this->owner_ring)
      throw std::invalid_argument(
          "couring: relay between streams of different io_contexts (splices of one relay are "
          "requests of one ring)");
    int failure = 0;
    if (from_state_ == nullptr)
      failure = from_opened_ ? ECANCELED : EBADF;
    else if (from_state_->closed || from_state_->generation != from_generation_)
      failure = ECANCELED;
    else
      failure = pipe_.error();
    if (failure != 0) {
      this->res = -failure;
      this->side = nullptr;
      return false;
    }
  }
  return base::start(awaiting, s);
}

result<std::size_t> relay_awaitable::await_resume() const noexcept {
  uncount_worker_request();
  if (this->res < 0)
    return errno_code(this->res);
  return sent_;
}

// --- start: to's write side is ours, now from's read side --------------------

void relay_awaitable::issue(detail::operation* op) {
  static_cast<relay_awaitable*>(op)->begin();
}

void relay_awaitable::begin() noexcept {
  running_ = true;
  // A scope's cancel and a close of to (this holds its write side) reach
  // the loops through here.
  this->cancel_fn = &cancel_all;
  if (from_state_->closed || from_state_->generation != from_generation_) {
    stop(-ECANCELED); // closed while this waited for to's write side
    conclude_later();
    return;
  }
  reader_.owner = this;
  reader_.owner_ring = this->owner_ring;
  reader_.side = &from_state_->read_side;
  reader_.on_complete = &reader_posted; // ended while waiting in line (close of from)
  reader_.issue_fn = &reader_issue;     // its turn came
  if (this->owner_ring->take_side(&reader_))
    take_reader();
}

void relay_awaitable::reader_issue(detail::operation* op) {
  static_cast<part*>(op)->owner->take_reader();
}

void relay_awaitable::take_reader() noexcept {
  holds_reader_ = true;
  reader_.cancel_fn = &reader_cancel; // a close of from
  pump(false);
}

void relay_awaitable::reader_posted(detail::operation* op) noexcept {
  // from was closed while the relay waited for its read side.
  relay_awaitable* self = static_cast<part*>(op)->owner;
  self->stop(-ECANCELED);
  if (!self->posted_ && self->idle())
    self->conclude();
}

// --- the two loops ---------------------------------------------------------------

void relay_awaitable::pump(bool may_resume) noexcept {
  if (!stopping_) {
    try {
      if (drain_parts_ == 0 && in_pipe_ > 0)
        issue_drain();
      if (fill_parts_ == 0 && !from_ended_ && !fill_blocked_ && filled_ < max_ &&
          in_pipe_ < pipe_.size() && (!step_next_ || in_pipe_ == 0))
        issue_fill();
    } catch (const std::system_error& e) {
      stop(-e.code().value());
    }
  }
  if (!idle() || posted_)
    return;
  if (may_resume)
    conclude();
  else
    conclude_later();
}

void relay_awaitable::issue_fill() {
  // POLLIN on from, linked to the splice from -> pipe: the splice (which
  // always runs in an io-wq worker) starts only once there is something to
  // take, so no worker sleeps on a silent source. Adjacent SQEs: room first.
  detail::ring& r = *this->owner_ring;
  if (step_next_) {
    // A plain recv of one byte (it waits for data like any read; the pipe
    // is empty, so the byte fits).
    step_next_ = false;
    stepping_ = true;
    fill_.owner = this;
    fill_.owner_ring = &r;
    fill_.object = from_state_;
    fill_.on_complete = &part_done;
    io_uring_sqe* sqe = r.get_sqe();
    io_uring_prep_recv(sqe, from_state_->fd, &step_byte_, 1, 0);
    r.arm(sqe, &fill_);
    poll_in_res_ = 0;
    fill_parts_ = 1;
    return;
  }
  r.reserve_sqes(2);
  const std::size_t len = std::min({chunk_, pipe_.size() - in_pipe_, max_ - filled_});
  for (part* p : {&poll_in_, &fill_}) {
    p->owner = this;
    p->owner_ring = &r;
    p->object = from_state_; // both use from's descriptor: counted on from
    p->on_complete = &part_done;
  }
  io_uring_sqe* a = r.get_sqe();
  io_uring_prep_poll_add(a, from_state_->fd, POLLIN);
  a->flags |= IOSQE_IO_LINK;
  r.arm(a, &poll_in_);
  io_uring_sqe* b = r.get_sqe();
  // SPLICE_F_NONBLOCK: a pipe without a free slot (a socket's fragments
  // take one each) gives EAGAIN instead of blocking the worker.
  detail::prep_splice_in(b, from_state_, pipe_, len, SPLICE_F_NONBLOCK);
  r.arm(b, &fill_);
  detail::fix_splice_in_flags(b, from_state_);
  fill_parts_ = 2;
  fill_from_empty_ = in_pipe_ == 0;
}

void relay_awaitable::issue_drain() {
  detail::ring& r = *this->owner_ring;
  drain_len_ = std::min(in_pipe_, chunk_);
  drain_polled_ = std::exchange(wait_writable_, false);
  if (drain_polled_) {
    // A non-blocking to was full: wait for room with a poll (armed in the
    // kernel, no worker), linked to the drain.
    r.reserve_sqes(2);
    poll_out_.owner = this;
    poll_out_.owner_ring = &r;
    poll_out_.object = this->object;
    poll_out_.on_complete = &part_done;
    io_uring_sqe* a = r.get_sqe();
    io_uring_prep_poll_add(a, this->object->fd, POLLOUT);
    a->flags |= IOSQE_IO_LINK;
    r.arm(a, &poll_out_);
  }
  io_uring_sqe* sqe = r.get_sqe();
  prepare(sqe);
  r.arm(sqe, this);
  drain_parts_ = drain_polled_ ? 2 : 1;
}

void relay_awaitable::prepare(io_uring_sqe* sqe) noexcept {
  // SPLICE_F_NONBLOCK only concerns the pipe (never empty here); a blocking
  // to still waits in the worker until it took drain_len_ bytes.
  detail::prep_splice_out(sqe, pipe_, this->object, drain_len_, SPLICE_F_NONBLOCK);
}

void relay_awaitable::part_done(detail::operation* op) noexcept {
  auto* p = static_cast<part*>(op);
  relay_awaitable* self = p->owner;
  if (p == &self->poll_out_) {
    self->poll_out_res_ = op->res;
    --self->drain_parts_;
  } else {
    (p == &self->poll_in_ ? self->poll_in_res_ : self->fill_res_) = op->res;
    --self->fill_parts_;
  }
  if (!self->stopping_ && self->stopped())
    self->stop(-ECANCELED);
  else if (self->stopping_)
    self->cancel_in_flight(); // a linked request the first cancel found not yet started
  if (p == &self->poll_out_) {
    if (self->drain_parts_ == 0)
      self->drain_round_done();
  } else if (self->fill_parts_ == 0) {
    self->fill_round_done();
  }
  self->pump(true);
}

void relay_awaitable::main_done(detail::operation* op) noexcept {
  auto* self = static_cast<relay_awaitable*>(op);
  if (!self->running_) {
    // Ended while waiting in line for to's write side (a close of to, a
    // cancel): res says so, nothing was started.
    self->owner_ring->finish(self);
    return;
  }
  if (self->posted_) {
    self->posted_ = false;
    self->conclude();
    return;
  }
  self->drain_res_ = op->res;
  --self->drain_parts_;
  if (!self->stopping_ && self->stopped())
    self->stop(-ECANCELED);
  else if (self->stopping_)
    self->cancel_in_flight();
  if (self->drain_parts_ == 0)
    self->drain_round_done();
  self->pump(true);
}

void relay_awaitable::fill_round_done() noexcept {
  if (stopping_)
    return; // what a cancelled fill brought stays in the pipe, never sent
  const int p = poll_in_res_;
  const int f = fill_res_;
  if (p < 0) {
    stop(stopped() ? -ECANCELED : p);
    return;
  }
  if (std::exchange(stepping_, false)) {
    if (f > 0) {
      if (::write(pipe_.write_end(), &step_byte_, 1) != 1) {
        stop(-(errno != 0 ? errno : EIO));
        return;
      }
      ++filled_;
      ++in_pipe_;
    } else if (f == 0) {
      from_ended_ = true;
    } else if (f != -EAGAIN) {
      stop(stopped() ? -ECANCELED : f);
    }
    return;
  }
  // Only a socket can hold urgent data (a pipe's 0 is its end).
  const bool socket = !from_state_->use_read_write;
  if (f > 0) {
    filled_ += static_cast<std::size_t>(f);
    in_pipe_ += static_cast<std::size_t>(f);
  } else if (f == 0) {
    if (socket)
      step_next_ = true; // the end, or urgent data: a recv (once the pipe is empty) tells
    else
      from_ended_ = true;
  } else if (f == -EAGAIN) {
    // No free slot in the pipe: the next drain makes room. From a pipe
    // that was empty all along, urgent data (or a wake-up with nothing to
    // read): a recv.
    fill_blocked_ = in_pipe_ > 0;
    step_next_ = socket && fill_from_empty_ && in_pipe_ == 0;
  } else {
    stop(stopped() ? -ECANCELED : f);
  }
}

void relay_awaitable::drain_round_done() noexcept {
  const int m = drain_res_;
  if (m > 0) {
    // Counted even while stopping: a drain cancelled while it slept in the
    // kernel on a full socket returns what that socket took before.
    sent_ += static_cast<std::size_t>(m);
    in_pipe_ -= static_cast<std::size_t>(m);
  }
  if (stopping_)
    return;
  if (drain_polled_ && poll_out_res_ < 0) {
    stop(stopped() ? -ECANCELED : poll_out_res_);
    return;
  }
  if (m > 0) {
    fill_blocked_ = false;
    // Short: a non-blocking to is full (a blocking one only stops short
    // when interrupted; the poll then returns at once).
    wait_writable_ = static_cast<std::size_t>(m) < drain_len_;
  } else if (m == -EAGAIN) {
    wait_writable_ = true; // a non-blocking to with no room at all
  } else if (stopped()) {
    stop(-ECANCELED);
  } else if (m == 0) {
    stop(-EIO); // a splice out of a non-empty pipe moved nothing
  } else {
    stop(m);
  }
}

// --- ending ----------------------------------------------------------------------

bool relay_awaitable::stopped() const noexcept {
  const detail::object_state* to = this->object;
  return to->closed || to->generation != this->generation_ || from_state_->closed ||
         from_state_->generation != from_generation_ ||
         (this->scope != nullptr && this->scope->cancelled());
}

void relay_awaitable::stop(int res) noexcept {
  if (!stopping_) {
    stopping_ = true;
    error_ = res;
  }
  release_closed_sides();
  if (reader_.side != nullptr && !holds_reader_)
    detail::ring::leave_queue(&reader_); // still waiting in line for from's read side
  cancel_in_flight();
}

void relay_awaitable::cancel_in_flight() noexcept {
  // By user_data: a splice's sqe->fd is the pipe for the fill, so the
  // close's cancel by descriptor does not reach it.
  for (detail::operation* op :
       {static_cast<detail::operation*>(&poll_in_), static_cast<detail::operation*>(&fill_),
        static_cast<detail::operation*>(&poll_out_), static_cast<detail::operation*>(this)})
    if (op->outstanding > 0)
      this->owner_ring->cancel(op);
}

void relay_awaitable::release_closed_sides() noexcept {
  // A closed object's record is recycled once nothing of it is in flight,
  // which may be before the relay ends: give its side back now (the close
  // already ended everything waiting there).
  if (holds_reader_ && (from_state_->closed || from_state_->generation != from_generation_)) {
    holds_reader_ = false;
    this->owner_ring->pass_side(&reader_);
  }
  if (this->side != nullptr &&
      (this->object->closed || this->object->generation != this->generation_))
    this->owner_ring->pass_side(this);
}

void relay_awaitable::cancel_all(detail::operation* op) noexcept {
  static_cast<relay_awaitable*>(op)->cancel_now();
}

void relay_awaitable::reader_cancel(detail::operation* op) noexcept {
  static_cast<part*>(op)->owner->cancel_now();
}

void relay_awaitable::cancel_now() noexcept {
  // From a scope's cancel or an object's close: never resume from here.
  stop(-ECANCELED);
  if (idle())
    conclude_later();
}

void relay_awaitable::conclude_later() noexcept {
  if (posted_)
    return;
  posted_ = true;
  this->owner_ring->post(this);
}

void relay_awaitable::conclude() noexcept {
  if (stopping_)
    this->res = error_;
  else if (in_pipe_ == 0 && (from_ended_ || filled_ == max_))
    this->res = 0;
  else
    this->res = -EIO; // no loop left to run, yet not done: never expected
  if (holds_reader_) {
    holds_reader_ = false;
    this->owner_ring->pass_side(&reader_);
  }
  this->cancel_fn = nullptr;
  this->owner_ring->finish(this);
}

} // namespace couring
