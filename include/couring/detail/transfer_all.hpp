#pragma once

// transfer_all: the compound operation behind stream::write_all/read_exactly
// and file::write_all_at/read_exactly_at. It moves a whole buffer one request
// at a time, re-arming from the completion itself instead of resuming the
// coroutine after each short transfer.
//
// Derived supplies
//   void prepare_part(io_uring_sqe*, int fd, pointer data, std::size_t len,
//                     std::size_t done) noexcept   -- one request for the rest
//   static std::error_code early_end() noexcept    -- what a 0-byte transfer
//                                                     before the end means
// A close or a cancellation stops it between two requests; the bytes already
// moved stay moved (transferred()).

#include <cerrno>
#include <cstddef>
#include <span>
#include <system_error>
#include <type_traits>

#include <couring/detail/io_awaitable.hpp>
#include <couring/result.hpp>

namespace couring::detail {

// Drops a TCP connection at once (RST), keeping the descriptor: what a
// cancelled zero-copy send needs to get its pages back. In ring.cpp.
void reset_connection(int fd) noexcept;

template <class Derived, bool Sending>
class transfer_all : public io_awaitable<Derived> {
  using base = io_awaitable<Derived>;

public:
  static constexpr bool single_request = false;
  using span_type = std::conditional_t<Sending, std::span<const std::byte>, std::span<std::byte>>;

  transfer_all(ring* r, object_state* s, object_side* side, span_type buf) noexcept
      : base(r, s, side), buf_(buf) {
    this->on_complete = &step;
    this->on_abandon = &abandon;
  }
  transfer_all(transfer_all&& o) noexcept : base(std::move(o)), buf_(o.buf_), done_(o.done_) {
    this->on_abandon = &abandon;
  }

  bool await_ready() const noexcept { return buf_.empty(); }
  result<void> await_resume() noexcept {
    this->uncount_worker_request();
    // (A zero-copy part aborted after the kernel took all of it counts in
    // done_, but the operation was cancelled. Tested by aborted_, not by
    // res: an empty transfer is ready at once and never sets res.)
    if (done_ == buf_.size() && !aborted_)
      return {};
    if (this->res < 0)
      return errno_code(this->res);
    return Derived::early_end();
  }
  // Bytes moved so far: after an error or a cancellation, exactly what the
  // kernel took from (or put into) the buffer.
  std::size_t transferred() const noexcept { return done_; }

  void prepare(io_uring_sqe* sqe) noexcept {
    static_cast<Derived*>(this)->prepare_part(sqe, this->object->fd, buf_.data() + done_,
                                              buf_.size() - done_, done_);
  }

private:
  static void step(operation* op) noexcept {
    auto* self = static_cast<transfer_all*>(static_cast<Derived*>(op));
    if (op->cqe_flags & IORING_CQE_F_MORE) {
      // A zero-copy send's result: the kernel still holds the pages until
      // its notification CQE (IORING_CQE_F_NOTIF) comes, so nothing goes on
      // -- no re-arm, no resumption -- before that. Keep the result for then.
      self->zc_res_ = op->res;
      self->wait_.op = op;
      op->owner_ring->link_zero_copy_wait(&self->wait_);
      // Pages queued on a socket whose peer does not read would be held
      // for as long as the connection lives: a cancellation (or a close)
      // that comes now resets the connection to get them back.
      if (op->object->closed || (op->scope != nullptr && op->scope->cancelled()))
        abort_zero_copy(op);
      else
        op->cancel_fn = &abort_zero_copy;
      return;
    }
    if (op->cqe_flags & IORING_CQE_F_NOTIF) {
      op->owner_ring->unlink_zero_copy_wait(&self->wait_);
      op->res = self->zc_res_;
      op->cancel_fn = nullptr;
      if (self->aborted_) {
        // The kernel took these bytes (the reset may have dropped some of
        // them before the peer read them): transferred() counts them.
        if (self->zc_res_ > 0)
          self->done_ += static_cast<std::size_t>(self->zc_res_);
        op->res = -ECANCELED;
        op->owner_ring->finish(op);
        return;
      }
    }
    if (op->res > 0) {
      self->done_ += static_cast<std::size_t>(op->res);
      if (self->done_ < self->buf_.size()) {
        // Re-arm only on an open object whose scope is not cancelled: a
        // close or a cancel that came between two requests found nothing
        // of ours in flight, and is honoured here.
        if (op->object->closed || (op->scope != nullptr && op->scope->cancelled())) {
          op->res = -ECANCELED;
        } else {
          try {
            base::issue(op);
            return;
          } catch (const std::system_error& e) {
            op->res = -e.code().value();
          }
        }
      }
    }
    op->owner_ring->finish(op);
  }

  // Teardown (nothing is resumed): a send whose data CQE comes now resets its
  // connection, or a peer that does not read would hold the pages, and the
  // teardown would wait for the notification in vain. One that was already
  // waiting for it is in the ring's list; its notification unlinks it.
  static void abandon(operation* op) noexcept {
    auto* self = static_cast<transfer_all*>(static_cast<Derived*>(op));
    if (op->cqe_flags & IORING_CQE_F_MORE) {
      self->aborted_ = true;
      reset_connection(op->object->fd);
    } else if (op->cqe_flags & IORING_CQE_F_NOTIF) {
      op->owner_ring->unlink_zero_copy_wait(&self->wait_);
    }
  }

  // Resets the connection (connect(AF_UNSPEC) is tcp_disconnect: the
  // queued data, and with it the pages, are dropped at once and the peer
  // gets a RST); the notification then follows promptly.
  static void abort_zero_copy(operation* op) noexcept {
    auto* self = static_cast<transfer_all*>(static_cast<Derived*>(op));
    op->cancel_fn = nullptr;
    if (self->aborted_)
      return;
    self->aborted_ = true;
    reset_connection(op->object->fd);
  }

  span_type buf_;
  std::size_t done_ = 0;
  bool aborted_ = false;
  int zc_res_ = 0;      // a zero-copy part's result while its notification is awaited
  zero_copy_wait wait_; // in the ring's list while the notification is awaited
};

} // namespace couring::detail
