#pragma once

// How an io_context's ring is set up, and what the kernel accepted.

#include <cstddef>

namespace couring {

struct io_context_options {
  unsigned sq_entries = 256;
  unsigned cq_entries = 0;      // 0: four times sq_entries
  bool register_ring_fd = true; // io_uring_register_ring_fd, where the kernel allows it
  bool multishot_accept = true; // tcp_listener uses multishot accept where supported
  // stream::write_all sends the part of a buffer still to go with
  // IORING_OP_SEND_ZC (no copy into the socket; the write completes only
  // when the kernel has let go of the pages) while it is at least this many
  // bytes; 0: never. TCP streams on real descriptors only. See
  // docs/design.md ("Registered buffers, direct descriptors and zero-copy send").
  std::size_t zero_copy_threshold = 0;
  // Slots of the ring's file table, registered when the first listener
  // with listen_options::direct_descriptors opens (direct descriptors).
  unsigned direct_descriptor_slots = 4096;
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
