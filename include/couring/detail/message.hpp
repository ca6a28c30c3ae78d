#pragma once

// Cross-context messages: a record that one thread hands to another
// io_context, which runs it on its own thread. Two ways carry it:
//  - IORING_OP_MSG_RING from the sender's ring: the kernel posts a CQE whose
//    user_data is the record's address | message_tag straight into the
//    target's CQ (and wakes its waiting io_uring_enter). No lock, no syscall
//    of its own: the SQE goes out with the sender's next submission.
//  - the target's mailbox: a lock-free intrusive MPSC stack plus the
//    context's eventfd (written only when the stack was empty and the target
//    is not spinning), for senders without a ring (a plain thread), rings
//    that cannot message each other (MSG_RING missing, an epoll backend), a
//    MSG_RING that failed, and a target in its idle spin (it polls the
//    mailbox: no syscall on either side).
// docs/design.md ("Threading rules") says what happens at shutdown.

#include <atomic>
#include <cstdint>

#if defined(__SANITIZE_THREAD__)
#define COURING_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define COURING_TSAN 1
#endif
#endif

#ifdef COURING_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace couring {
class io_context;
}

namespace couring::detail {

// user_data tag of a message CQE (records are 8-aligned; link_timeout_tag is 1).
inline constexpr std::uint64_t message_tag = 2;

struct alignas(8) message {
  using fn = void (*)(message*) noexcept;
  // Runs on the target's thread, inside its loop.
  fn deliver = nullptr;
  // The target shuts down before the message could run: release what it
  // holds (a spawned task is destroyed unstarted; a coroutine that switched
  // is destroyed later by whoever owns its frame).
  fn abandon = nullptr;
  io_context* target = nullptr;
  message* next = nullptr; // in a mailbox
};

// ThreadSanitizer cannot see the happens-before that the kernel provides
// between the MSG_RING submission and the target reaping its CQE.
inline void tsan_release([[maybe_unused]] void* p) noexcept {
#ifdef COURING_TSAN
  __tsan_release(p);
#endif
}
inline void tsan_acquire([[maybe_unused]] void* p) noexcept {
#ifdef COURING_TSAN
  __tsan_acquire(p);
#endif
}

// Many producers, one consumer (the context's thread). Producers push with a
// CAS; the consumer takes the whole stack with one exchange and reverses it
// (FIFO per producer). Closing swaps in a sentinel: a push after that fails,
// so a message is either taken by the consumer or refused, never lost.
class mailbox {
public:
  enum class push_result { refused, accepted, accepted_first };

  push_result push(message* m) noexcept {
    message* old = head_.load(std::memory_order_relaxed);
    do {
      if (old == closed_sentinel())
        return push_result::refused;
      m->next = old;
    } while (
        !head_.compare_exchange_weak(old, m, std::memory_order_seq_cst, std::memory_order_relaxed));
    // Only the push onto an empty stack needs to wake the consumer: every
    // later one finds the stack non-empty until the consumer takes it, and
    // it takes it after that wake-up.
    return old == nullptr ? push_result::accepted_first : push_result::accepted;
  }
  // seq_cst (a plain load on x86): the idle spin's hand-shake with
  // push_message relies on it (io_context::wait_idle).
  bool empty() const noexcept {
    message* h = head_.load(std::memory_order_seq_cst);
    return h == nullptr || h == closed_sentinel();
  }
  // The messages pushed so far, oldest first.
  message* take() noexcept { return reverse(head_.exchange(nullptr, std::memory_order_acquire)); }
  // Refuses every later push; returns what was still queued, oldest first.
  message* close() noexcept {
    message* h = head_.exchange(closed_sentinel(), std::memory_order_acq_rel);
    return h == closed_sentinel() ? nullptr : reverse(h);
  }
  bool closed() const noexcept {
    return head_.load(std::memory_order_acquire) == closed_sentinel();
  }

private:
  static message* closed_sentinel() noexcept {
    return reinterpret_cast<message*>(alignof(message));
  }
  static message* reverse(message* m) noexcept {
    message* out = nullptr;
    while (m != nullptr) {
      message* next = m->next;
      m->next = out;
      out = m;
      m = next;
    }
    return out;
  }
  std::atomic<message*> head_{nullptr};
};

// Hands m to target: through MSG_RING when the calling thread runs a context
// whose ring can message target's, through target's mailbox otherwise.
// False if target no longer takes messages (it is shut down); m is then
// untouched and still the caller's.
bool send_message(io_context& target, message* m) noexcept;

} // namespace couring::detail
