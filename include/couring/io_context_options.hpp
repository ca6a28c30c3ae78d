#pragma once

// How an io_context's ring is set up, and what the kernel accepted.

namespace couring {

struct io_context_options {
  unsigned sq_entries = 256;
  unsigned cq_entries = 0;      // 0: four times sq_entries
  bool register_ring_fd = true; // io_uring_register_ring_fd, where the kernel allows it
  bool multishot_accept = true; // tcp_listener uses multishot accept where supported
  // Share the kernel's async worker pool with the ring whose descriptor this
  // is (IORING_SETUP_ATTACH_WQ; runtime sets it). -1: a pool of its own. A
  // kernel that refuses gets a ring of its own, silently.
  int attach_wq_fd = -1;
  // Cross-context messages into and out of this context always take the
  // eventfd path, never IORING_OP_MSG_RING (tests; see switch_to.hpp).
  bool message_fallback = false;
};

// What the kernel accepted when the ring was set up (flags fall back one by one).
struct io_context_features {
  unsigned setup_flags = 0;     // IORING_SETUP_* actually in force
  unsigned kernel_features = 0; // io_uring_params::features
  bool ring_fd_registered = false;
  bool wq_attached = false; // io_context_options::attach_wq_fd was honoured
  unsigned sq_entries = 0;
  unsigned cq_entries = 0;
};

} // namespace couring
