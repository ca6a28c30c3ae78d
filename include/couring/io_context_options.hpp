#pragma once

// How an io_context's ring is set up, and what the kernel accepted.

#include <chrono>
#include <cstddef>
#include <string>

namespace couring {

// Which kernel interface drives the context. io_uring is the fast path;
// epoll is for where io_uring is refused (Docker's seccomp profile,
// kernel.io_uring_disabled, gVisor). README: "Where io_uring is not allowed".
enum class backend {
  // io_uring where it can be set up, epoll where io_uring_setup fails with
  // EPERM or ENOSYS (or the kernel's io_uring is too old). The environment
  // variable COURING_BACKEND=io_uring|epoll overrides this choice (only this
  // one: an explicit choice in the options wins over the environment).
  automatic,
  io_uring, // io_uring or a std::system_error saying why not
  epoll,    // the epoll emulation, even where io_uring would work
};

// io_context_options::idle_spin: "the default for where the context runs":
// no spin for an io_context of its own, runtime_default_idle_spin for the
// contexts of a runtime (they hand work to each other).
inline constexpr std::chrono::microseconds automatic_idle_spin{-1};
// A hand-off answered within this much is caught without a thread wake-up
// (one costs 5-20 us of latency and CPU on both sides); a spin that finds
// nothing wastes at most this much, and only while messages keep coming.
inline constexpr std::chrono::microseconds runtime_default_idle_spin{50};
// The longest spin allowed: beyond it sleeping is cheaper whatever it costs.
inline constexpr std::chrono::microseconds max_idle_spin{10'000};

struct io_context_options {
  unsigned sq_entries = 256;
  unsigned cq_entries = 0;      // 0: four times sq_entries
  bool register_ring_fd = true; // io_uring_register_ring_fd, where the kernel allows it
  bool multishot_accept = true; // tcp_listener uses multishot accept where supported
  couring::backend backend = couring::backend::automatic;
  // Share the kernel's async worker pool with the ring whose descriptor this
  // is (IORING_SETUP_ATTACH_WQ; runtime sets it). -1: a pool of its own. A
  // kernel that refuses gets a ring of its own, silently.
  int attach_wq_fd = -1;
  // Cross-context messages into and out of this context always take the
  // eventfd path, never IORING_OP_MSG_RING (tests; see switch_to.hpp).
  bool message_fallback = false;
  // stream::write_all sends the part of a buffer still to go with
  // IORING_OP_SEND_ZC (no copy into the socket; the write completes only
  // when the kernel has let go of the pages) while it is at least this many
  // bytes; 0: never. TCP streams on real descriptors only. See
  // docs/design.md ("Registered buffers, direct descriptors and zero-copy send").
  std::size_t zero_copy_threshold = 0;
  // Slots of the ring's file table, registered when the first listener
  // with listen_options::direct_descriptors opens (direct descriptors).
  unsigned direct_descriptor_slots = 4096;
  // Bounded spin before the loop sleeps: when nothing is runnable, the loop
  // polls its completion queue, the kernel's pending-work flag, its mailbox
  // and stop() for up to this long (no syscall while it polls) before it
  // blocks in io_uring_enter, so that a cross-context message arriving
  // meanwhile costs no thread wake-up. Adaptive: it spins only while messages
  // from other contexts keep arriving (docs/design.md, "Threading rules"); a
  // context that receives none never spins. 0: never; at most max_idle_spin
  // (std::invalid_argument otherwise); automatic_idle_spin: see above.
  std::chrono::microseconds idle_spin = automatic_idle_spin;
  // Batched sleep (io_uring on Linux 6.12+, IORING_FEAT_MIN_TIMEOUT): a loop
  // that has nothing to run and at least two operations in flight asks the
  // kernel for up to wait_batch completions (never more than are in flight)
  // but takes whatever came, at least one, after wait_batch_timeout. Fewer
  // wake-ups per completion when traffic is spread thin over many
  // connections, for up to wait_batch_timeout of added latency; no CPU is
  // spent meanwhile (the thread sleeps). 1: wake at the first completion
  // (the default). Between 1 and max_wait_batch, and wait_batch_timeout
  // between 1 us and max_wait_batch_timeout, or std::invalid_argument.
  // Where the kernel lacks the feature, and on epoll, the loop wakes at the
  // first completion (io_context_features::batched_wait says which).
  unsigned wait_batch = 1;
  std::chrono::microseconds wait_batch_timeout{20};
  // While a request that the kernel runs in its worker threads is in flight
  // (file I/O, opening, renaming or removing by path, splice: relay and
  // send_file), the loop sleeps at most this long at a time, and a sleep
  // that ends with nothing completed nudges the kernel's worker pool. This
  // recovers from a Linux race (seen on 6.18) that can leave such a request
  // queued with no worker to run it, which would otherwise hang its awaiter
  // for ever. Costs a wake-up per interval only while such requests are in
  // flight and the loop has nothing else to do; the loop then neither spins
  // nor batches its sleep. 0: never (io_uring only; epoll has no pool).
  // Between 0 and max_worker_watchdog, or std::invalid_argument.
  std::chrono::milliseconds worker_watchdog{1000};
};

inline constexpr std::chrono::milliseconds max_worker_watchdog{3'600'000};

// Limits of io_context_options::wait_batch and wait_batch_timeout.
inline constexpr unsigned max_wait_batch = 4096;
inline constexpr std::chrono::microseconds max_wait_batch_timeout{10'000};

// What the kernel accepted when the ring was set up (flags fall back one by one).
struct io_context_features {
  unsigned setup_flags = 0;     // IORING_SETUP_* actually in force (0 on epoll)
  unsigned kernel_features = 0; // io_uring_params::features (0 on epoll)
  bool ring_fd_registered = false;
  bool wq_attached = false; // io_context_options::attach_wq_fd was honoured
  // io_context_options::wait_batch > 1 is honoured (io_uring with
  // IORING_FEAT_MIN_TIMEOUT): false when it is 1.
  bool batched_wait = false;
  unsigned sq_entries = 0;
  unsigned cq_entries = 0;
  // The backend that runs (never automatic), and why it was chosen: the
  // option, the environment variable, or the io_uring_setup error that made
  // an automatic context fall back to epoll (fallback_error is that errno).
  couring::backend backend = couring::backend::io_uring;
  std::string backend_reason;
  int fallback_error = 0;
};

// "io_uring" or "epoll" ("automatic" for the option's default).
const char* to_string(couring::backend b) noexcept;

} // namespace couring
