// Cross-context messages (include/couring/detail/message.hpp): the MSG_RING
// path, its failure path, and the choice between MSG_RING and the mailbox.

#include <couring/detail/message.hpp>

#include <couring/detail/ring.hpp>
#include <couring/io_context.hpp>

namespace couring::detail {

namespace {
// Both rings are io_urings that take part in MSG_RING (a ring of the epoll
// backend has no descriptor; a context may be told to use the fallback).
bool can_message(const ring& from, const ring& to) noexcept {
  return from.ring_fd() >= 0 && to.ring_fd() >= 0 && from.can_send_messages() &&
         to.can_send_messages();
}
} // namespace

bool send_message(io_context& target, message* m) noexcept {
  m->target = &target;
  io_context* from = io_context::current();
  // A target in its idle spin polls its mailbox: a push reaches it with no
  // syscall at all, where a MSG_RING costs our submit and its enter.
  if (!target.spinning() && from != nullptr && can_message(from->ring(), target.ring()) &&
      target.accepts_messages()) {
    try {
      tsan_release(m);
      from->ring().send_message(target.ring().ring_fd(), m);
      return true;
    } catch (...) {
      // No SQE to be had: the mailbox still works.
    }
  }
  return target.push_message(m);
}

void ring::send_message(int target_fd, message* m) {
  const auto ud = reinterpret_cast<std::uint64_t>(m) | message_tag;
  io_uring_sqe* sqe = get_sqe();
  // The target's CQE: res 0, user_data ud. Ours: none on success; on failure
  // one with a negative res and the same user_data (on_message reroutes it).
  io_uring_prep_msg_ring(sqe, target_fd, 0, ud, 0);
  sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
  io_uring_sqe_set_data64(sqe, ud);
}

void ring::on_message(std::uint64_t ud, int res) noexcept {
  auto* m = reinterpret_cast<message*>(ud & ~(link_timeout_tag | message_tag));
  if (res < 0) [[unlikely]] {
    // Our own MSG_RING failed (the target's CQ overflowed, the target is
    // gone): it never reached the target, so it goes through the mailbox.
    if (!m->target->push_message(m))
      m->abandon(m);
    return;
  }
  tsan_acquire(m);
  ++messages_received_;
  if (draining_) [[unlikely]]
    m->abandon(m);
  else
    m->deliver(m);
}

void ring::submit_idle() noexcept {
  recycle_released();
  submit_now();
}

void ring::flush_completions() noexcept {
  if (broken_ || foreign())
    return;
  io_uring_get_events(&ring_);
  ++enter_count_;
  reap();
}

} // namespace couring::detail
