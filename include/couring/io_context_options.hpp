#pragma once

// How an io_context's ring is set up, and what the kernel accepted.

namespace couring {

struct io_context_options {
  unsigned sq_entries = 256;
  unsigned cq_entries = 0;      // 0: four times sq_entries
  bool register_ring_fd = true; // io_uring_register_ring_fd, where the kernel allows it
  bool multishot_accept = true; // tcp_listener uses multishot accept where supported
};

// What the kernel accepted when the ring was set up (flags fall back one by one).
struct io_context_features {
  unsigned setup_flags = 0;     // IORING_SETUP_* actually in force
  unsigned kernel_features = 0; // io_uring_params::features
  bool ring_fd_registered = false;
  unsigned sq_entries = 0;
  unsigned cq_entries = 0;
};

} // namespace couring
