#include <couring/send_file.hpp>

#include <algorithm>
#include <cerrno>
#include <utility>

#include <poll.h>

namespace couring {

namespace {
// The pipe is the splice's staging area: the larger, the fewer rounds.
constexpr int wanted_pipe_size = 1 << 20;
} // namespace

send_file_awaitable::send_file_awaitable(stream& out, const file& in, std::uint64_t offset,
                                         std::size_t count) noexcept
    : base(out.handle().ring_ptr(), out.handle().state(),
           out.handle().state() != nullptr ? &out.handle().state()->write_side : nullptr),
      file_state_(in.handle().state()),
      file_generation_(file_state_ != nullptr ? file_state_->generation : 0),
      file_opened_(in.handle().ring_ptr() != nullptr),
      pipe_(count != 0 ? detail::splice_pipe(wanted_pipe_size) : detail::splice_pipe()),
      offset_(offset), count_(count), remaining_(count) {
  this->on_complete = &main_done;
  this->res = 0;
}

send_file_awaitable::send_file_awaitable(send_file_awaitable&& o) noexcept
    : base(std::move(o)), file_state_(o.file_state_), file_generation_(o.file_generation_),
      file_opened_(o.file_opened_), pipe_(std::move(o.pipe_)), offset_(o.offset_), count_(o.count_),
      remaining_(o.remaining_) {
  this->res = 0;
}

bool send_file_awaitable::start(std::coroutine_handle<> awaiting, detail::cancel_scope* s) {
  if (this->object != nullptr && !this->object->closed &&
      this->object->generation == this->generation_) {
    // out is usable; in and the pipe must be too, before anything starts.
    if (file_state_ == nullptr) {
      this->res = file_opened_ ? -ECANCELED : -EBADF;
      this->side = nullptr;
      return false;
    }
    if (file_state_->closed || file_state_->generation != file_generation_) {
      this->res = -ECANCELED;
      this->side = nullptr;
      return false;
    }
    if (pipe_.error() != 0) {
      this->res = -pipe_.error();
      this->side = nullptr;
      return false;
    }
  }
  return base::start(awaiting, s);
}

result<std::size_t> send_file_awaitable::await_resume() const noexcept {
  uncount_worker_request();
  if (end_of_file_)
    return make_error_code(error::end_of_file);
  if (this->res < 0)
    return errno_code(this->res);
  return sent_;
}

void send_file_awaitable::issue(detail::operation* op) {
  static_cast<send_file_awaitable*>(op)->issue_next();
}

void send_file_awaitable::prepare(io_uring_sqe* sqe) noexcept {
  // Pipe to socket: what the pipe holds (a short fill leaves less than chunk_).
  detail::prep_splice_out(sqe, pipe_, this->object, paired_ ? chunk_ : in_pipe_, 0);
}

void send_file_awaitable::issue_next() {
  detail::ring& r = *this->owner_ring;
  if (wait_writable_) {
    // A non-blocking socket was full: wait for room with a poll (armed in
    // the kernel, no worker thread) before the next drain, which then runs
    // in an io-wq worker without ever sleeping there.
    wait_writable_ = false;
    polling_ = true;
    paired_ = false;
    parts_ = 1;
    io_uring_sqe* sqe = r.get_sqe();
    io_uring_prep_poll_add(sqe, this->object->fd, POLLOUT);
    r.arm(sqe, this);
    return;
  }
  if (in_pipe_ > 0) {
    // The socket took less than the pipe held: drain the rest alone.
    paired_ = false;
    parts_ = 1;
    io_uring_sqe* sqe = r.get_sqe();
    prepare(sqe);
    r.arm(sqe, this);
    return;
  }
  // Two SQEs, adjacent: file -> pipe, linked to pipe -> socket. A short
  // fill breaks the link (the second ends with ECANCELED) and the next round
  // drains what did arrive.
  r.reserve_sqes(2);
  chunk_ = std::min(remaining_, pipe_.size());
  paired_ = true;
  parts_ = 2;
  fill_.owner = this;
  fill_.owner_ring = &r;
  fill_.object = file_state_;
  fill_.on_complete = &fill_done;
  io_uring_sqe* a = r.get_sqe();
  io_uring_prep_splice(a, file_state_->fd, static_cast<std::int64_t>(offset_), pipe_.write_end(),
                       -1, detail::splice_length(chunk_), 0);
  a->flags |= IOSQE_IO_LINK;
  r.arm(a, &fill_);
  io_uring_sqe* b = r.get_sqe();
  prepare(b);
  r.arm(b, this);
}

bool send_file_awaitable::stopped() const noexcept {
  const detail::object_state* out = this->object;
  return out->closed || out->generation != this->generation_ || file_state_->closed ||
         file_state_->generation != file_generation_ ||
         (this->scope != nullptr && this->scope->cancelled());
}

void send_file_awaitable::fill_done(detail::operation* op) noexcept {
  auto* self = static_cast<fill_record*>(op)->owner;
  self->fill_res_ = op->res;
  // A close or a cancel that came while the drain waited behind this fill
  // found nothing to cancel: the drain may now block on a silent peer.
  if (self->parts_ == 2 && self->stopped())
    self->owner_ring->cancel(self);
  self->part_done();
}

void send_file_awaitable::main_done(detail::operation* op) noexcept {
  auto* self = static_cast<send_file_awaitable*>(op);
  if (self->parts_ == 0) {
    // Nothing was issued: it was ended while waiting in line for out's write
    // side (a close, a cancel), and res says so. Counting it as a part would
    // never resume the coroutine.
    self->owner_ring->finish(self);
    return;
  }
  self->main_res_ = op->res;
  self->part_done();
}

void send_file_awaitable::part_done() noexcept {
  if (--parts_ == 0)
    advance();
}

void send_file_awaitable::advance() noexcept {
  if (polling_) {
    polling_ = false;
    if (main_res_ < 0) {
      end(stopped() ? -ECANCELED : main_res_);
      return;
    }
    if (stopped()) {
      end(-ECANCELED);
      return;
    }
    try {
      issue_next(); // the drain
    } catch (const std::system_error& e) {
      end(-e.code().value());
    }
    return;
  }
  if (paired_) {
    const int f = fill_res_;
    if (f < 0) {
      end(stopped() ? -ECANCELED : f);
      return;
    }
    if (f == 0) {
      // The file ended before the range did (it shrank, or count was too large).
      end_of_file_ = true;
      end(0);
      return;
    }
    const auto filled = static_cast<std::size_t>(f);
    in_pipe_ += filled;
    offset_ += filled;
    remaining_ -= filled;
  }
  const int m = main_res_;
  if (m > 0) {
    sent_ += static_cast<std::size_t>(m);
    in_pipe_ -= static_cast<std::size_t>(m);
    // Short: a non-blocking socket is full (a blocking one only stops
    // short when interrupted; the poll then returns at once).
    wait_writable_ = in_pipe_ > 0;
  } else if (stopped()) {
    end(-ECANCELED);
    return;
  } else if (m == -ENODATA) {
    // The pages in the pipe were truncated away from the file meanwhile.
    end_of_file_ = true;
    end(0);
    return;
  } else if (m == -ECANCELED && paired_ && fill_res_ >= 0 &&
             static_cast<std::size_t>(fill_res_) < chunk_) {
    // The short fill broke the link; the next round drains.
  } else if (m == -EAGAIN) {
    wait_writable_ = true; // a non-blocking socket with no room at all
  } else if (m < 0) {
    end(m);
    return;
  } else {
    end(-EIO); // a splice out of a non-empty pipe moved nothing
    return;
  }
  if (sent_ == count_) {
    end(0);
    return;
  }
  if (stopped()) {
    end(-ECANCELED);
    return;
  }
  try {
    issue_next();
  } catch (const std::system_error& e) {
    end(-e.code().value());
  }
}

void send_file_awaitable::end(int res) noexcept {
  this->res = res;
  this->owner_ring->finish(this);
}

} // namespace couring
