#pragma once

// The epoll backend: the kernel side of io_uring, emulated in user space.
//
// The ring layer and every awaitable stay as they are: awaitables fill SQEs
// with io_uring_prep_*, ring::reap dispatches CQEs. On this backend the
// io_uring struct inside ring points at the SQ and CQ arrays below instead of
// kernel memory, and ring::enter hands over to enter() here, which consumes
// the SQEs, performs each opcode with plain non-blocking syscalls and
// appends CQEs (docs/design.md, "Backends").
//
// - Attempt first: each request's syscall runs at submission; only EAGAIN
//   parks it, in a FIFO per descriptor and direction, until epoll reports
//   readiness and it is tried again.
// - Interest is edge-triggered (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET),
//   registered on a descriptor's first EAGAIN and kept until the ring
//   releases the descriptor (forget(), before close(2)). A request that saw
//   EAGAIN is sure to get the next edge, so nothing is lost, and a busy
//   descriptor costs no epoll_ctl per operation.
// - Timers (TIMEOUT, LINK_TIMEOUT) live in a binary heap; the nearest one is
//   epoll_pwait2's timeout.
// - What epoll cannot wait for (regular files, openat, statx, fsync,
//   splice) is the plain syscall, on the loop thread. No hidden threads.
// - Waiting requests live in pooled records (grown a chunk at a time,
//   recycled): no allocation per operation once the pool is warm.
// - A full CQ never loses a CQE: it waits in an overflow list, as in the
//   kernel, and moves over on the next enter.

#include <cstdint>
#include <memory>
#include <vector>

#include <liburing.h>

namespace couring::detail {

class epoll_emulator {
public:
  // Points r's SQ and CQ at user-space arrays (sq_entries, cq_entries are
  // rounded up to powers of two). Throws std::system_error if epoll_create1
  // fails.
  epoll_emulator(io_uring& r, unsigned sq_entries, unsigned cq_entries);
  ~epoll_emulator();
  epoll_emulator(const epoll_emulator&) = delete;
  epoll_emulator& operator=(const epoll_emulator&) = delete;

  // io_uring_enter: performs every queued SQE, then (if wait and no CQE is
  // ready) waits for readiness or the nearest timer and performs what became
  // possible. Never throws.
  void enter(bool wait) noexcept;
  // Performs the queued SQEs only (submission outside the loop).
  void submit() noexcept;
  // Like enter(true) but waits at most max_wait_ns (drain).
  void enter_for(std::int64_t max_wait_ns) noexcept;
  // The ring is about to close fd: drop it from the epoll set (the open file
  // may live on in a dup, which would keep reporting it).
  void forget(int fd) noexcept;

  // Provided buffer rings (IOSQE_BUFFER_SELECT): recorded, then read from
  // user memory as the kernel would. 0 or -errno.
  int register_buffer_ring(const io_uring_buf_reg& reg);
  int unregister_buffer_ring(unsigned bgid);

  std::uint64_t waits() const noexcept { return waits_; }
  std::size_t overflowed() const noexcept { return overflow_.size(); }

private:
  struct request;
  struct fd_entry {
    request* head[2] = {nullptr, nullptr}; // 0: waits for input, 1: for output
    request* tail[2] = {nullptr, nullptr};
    bool registered = false;
    // Whether data (room) may be there: cleared when a request saw EAGAIN
    // (or a short stream receive or send), set by the next edge. While it
    // is clear a new request waits without trying: the edge that sets it
    // is certain to come, since the kernel reports every arrival.
    bool maybe_ready[2] = {true, true};
    // A hang-up or error was reported: a state that lasts, whose edge has
    // come already. From then on every request tries first.
    bool hung_up = false;
  };
  // again: a multishot request that stopped while its descriptor was still
  // ready (a batch per turn, for fairness); it is tried again next enter.
  enum class outcome { done, wait_in, wait_out, wait_timer, again };
  struct buffer_ring {
    unsigned bgid = 0;
    io_uring_buf_ring* br = nullptr;
    unsigned entries = 0;
    std::uint16_t head = 0;
    bool used = false;
  };

  void start(request& r) noexcept;
  outcome perform(request& r) noexcept;
  outcome perform_recv(request& r) noexcept;
  outcome perform_accept(request& r) noexcept;
  outcome perform_connect(request& r) noexcept;
  outcome perform_poll(request& r) noexcept;
  int perform_cancel(const io_uring_sqe& sqe) noexcept;
  void complete(request* r, int res, std::uint32_t flags) noexcept;
  void cancel_request(request* r) noexcept;
  void cancel_chain(request* first) noexcept;
  void retry(int fd, int dir) noexcept;
  void mark_not_ready(int fd, int dir) noexcept;
  bool known_not_ready(const io_uring_sqe& sqe, int& dir) const noexcept;
  void run_timers() noexcept;
  void run_again() noexcept;
  void drop_again(request* r) noexcept;
  void wait_events(std::int64_t max_ns) noexcept;
  void post(std::uint64_t ud, int res, std::uint32_t flags) noexcept;
  void flush_overflow() noexcept;
  bool cq_has_entries() const noexcept;
  bool cq_has_room() const noexcept;

  request* alloc() noexcept;
  void release(request* r) noexcept;
  void unlink_fd(request* r) noexcept;
  bool link_fd(request* r, int dir) noexcept;
  void heap_push(request* r) noexcept;
  void heap_remove(request* r) noexcept;
  void heap_sift_up(std::size_t i) noexcept;
  void heap_sift_down(std::size_t i) noexcept;
  buffer_ring* find_buffer_ring(unsigned bgid) noexcept;

  io_uring* ring_;
  int epfd_ = -1;
  unsigned sq_head_ = 0; // *sq.khead
  unsigned sq_tail_ = 0; // *sq.ktail (unused by liburing's inline helpers)
  unsigned cq_head_ = 0; // *cq.khead: ring::reap advances it
  unsigned cq_tail_ = 0; // *cq.ktail
  std::unique_ptr<io_uring_sqe[]> sqes_;
  std::unique_ptr<io_uring_cqe[]> cqes_;
  unsigned cq_mask_ = 0;
  std::vector<io_uring_cqe> overflow_; // CQEs the full CQ could not take, in order

  std::vector<fd_entry> fds_;       // indexed by descriptor
  std::vector<request*> heap_;      // timers, nearest deadline first
  request* waiting_head_ = nullptr; // every parked request (cancel by user_data)
  request* again_head_ = nullptr;   // multishot requests to try again next enter
  std::size_t waiting_ = 0;
  std::vector<std::unique_ptr<request[]>> chunks_;
  request* free_ = nullptr;
  std::vector<buffer_ring> buffer_rings_;
  std::uint64_t waits_ = 0;
};

} // namespace couring::detail
