#pragma once

// buffer_pool: a provided buffer ring. `count` buffers of `size` bytes are
// allocated once and registered with the kernel, which picks one only when
// data arrives (stream::receive(pool), a multishot receive). A connection
// that waits for data therefore holds no buffer at all: memory grows with
// traffic, not with connections.
//
// Buffers are lent as buffer_lease objects (a view plus ownership) and go
// back to the kernel when the lease is destroyed or release()d, in any
// order, from any point of the program on the context's thread.
//
// Incremental consumption (IOU_PBUF_RING_INC, kernel 6.12): a receive
// takes only the bytes it used from a buffer and the kernel keeps filling
// the same buffer, for any stream of the pool. A lease is then a slice of a
// buffer, and a buffer goes back to the kernel once the kernel is done with
// it (full) and every lease on it has ended. Small messages no longer cost a
// whole buffer each.
//
// Bundled receives (IORING_RECVSEND_BUNDLE, kernel 6.10): one completion
// covers several consecutive buffers of the ring; they arrive as
// consecutive leases, in order. Only for bulk streams: a stream's receive
// asks for bundles once its data has filled a whole buffer in one piece
// (re-armed once); a stream of small messages keeps a plain receive, which
// costs the kernel less per completion.
//
// Both are used where the kernel has them and fall back by themselves
// otherwise (and on the epoll backend, which has neither);
// buffer_pool_options turns them off.
//
// Lifetime: a lease may outlive the stream it came from (even a closed one)
// and the pool object itself. Destroying the pool stops it: the kernel gets
// no more of its buffers (streams still receiving from it end with
// operation_canceled once their queued data is taken), and its memory is
// freed when the last lease has been returned and the last stream that
// received from it has been closed. Like every I/O object, a pool must not
// outlive its io_context (and neither may its leases).

#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

namespace couring {

class io_context;
class buffer_pool;

namespace detail {
class pool_state;
class pool_receive_awaitable;
// Gives buffer bid back to the kernel (and frees a stopped pool's memory
// with its last buffer).
void give_back(pool_state* pool, std::uint32_t bid) noexcept;
} // namespace detail

// A received chunk: the bytes, in a buffer of a pool, until the lease ends.
// An empty lease (size() == 0) from a receive means end of stream.
class buffer_lease {
public:
  buffer_lease() noexcept = default;
  buffer_lease(buffer_lease&& o) noexcept
      : pool_(std::exchange(o.pool_, nullptr)), data_(o.data_), size_(o.size_), bid_(o.bid_) {}
  buffer_lease& operator=(buffer_lease&& o) noexcept {
    if (this != &o) {
      release();
      pool_ = std::exchange(o.pool_, nullptr);
      data_ = o.data_;
      size_ = o.size_;
      bid_ = o.bid_;
    }
    return *this;
  }
  buffer_lease(const buffer_lease&) = delete;
  buffer_lease& operator=(const buffer_lease&) = delete;
  ~buffer_lease() { release(); }

  // The received bytes; writable (an echo can answer in place).
  std::span<std::byte> data() const noexcept { return {data_, size_}; }
  std::size_t size() const noexcept { return size_; }
  bool empty() const noexcept { return size_ == 0; }
  // Gives the buffer back now (idempotent); the view is empty afterwards.
  void release() noexcept {
    if (pool_ != nullptr)
      detail::give_back(std::exchange(pool_, nullptr), bid_);
    data_ = nullptr;
    size_ = 0;
  }

private:
  friend class detail::pool_receive_awaitable;
  buffer_lease(detail::pool_state* p, std::byte* d, std::uint32_t n, std::uint32_t bid) noexcept
      : pool_(p), data_(d), size_(n), bid_(bid) {}

  detail::pool_state* pool_ = nullptr;
  std::byte* data_ = nullptr;
  std::uint32_t size_ = 0;
  std::uint32_t bid_ = 0;
};

struct buffer_pool_options {
  // IOU_PBUF_RING_INC where the kernel has it (incremental() says whether).
  bool incremental = true;
  // IORING_RECVSEND_BUNDLE where the kernel has it (bundled() says whether),
  // for the streams whose data fills whole buffers.
  bool bundle = true;
  // With incremental consumption a buffer holds many chunks, so chunks that
  // arrived while nobody waited are queued in records of their own: at most
  // this many per pool (0: max(1024, 64 * count)), reserved with the pool
  // (address space: memory is used only for as many as are queued at once).
  // A stream whose chunk finds none left ends with no_buffer_space (ENOBUFS)
  // after its queued data: take what arrives (or hold leases, which cost no
  // record) rather than leave thousands of small chunks unread.
  std::size_t max_queued_chunks = 0;
};

// What a pool has done since it was made (figures, tests).
struct buffer_pool_stats {
  std::uint64_t completions = 0; // receive completions that brought data
  std::uint64_t pieces = 0;      // buffer pieces they filled (> completions: bundles)
  std::uint64_t recycled = 0;    // buffers given back to the kernel after use
};

class buffer_pool {
public:
  // count buffers (1..32768) of size bytes (1..2^31), registered with ctx's
  // ring under a buffer group id of its own. Throws std::invalid_argument on
  // bad sizes, std::system_error if the kernel refuses the ring.
  buffer_pool(io_context& ctx, std::size_t count, std::size_t size,
              buffer_pool_options options = {});
  buffer_pool(buffer_pool&& o) noexcept : state_(std::exchange(o.state_, nullptr)) {}
  buffer_pool& operator=(buffer_pool&& o) noexcept {
    if (this != &o) {
      stop();
      state_ = std::exchange(o.state_, nullptr);
    }
    return *this;
  }
  buffer_pool(const buffer_pool&) = delete;
  buffer_pool& operator=(const buffer_pool&) = delete;
  ~buffer_pool() { stop(); }

  std::size_t count() const noexcept;
  std::size_t buffer_size() const noexcept;
  // Buffers the kernel can pick right now (the others are leased or queued;
  // with incremental consumption, a buffer partly filled still counts).
  std::size_t available() const noexcept;
  // Whether the kernel consumes buffers incrementally / bundles the
  // receives of bulk streams (asked for, and supported: bundled() turns
  // false if a bundled receive is refused all the same).
  bool incremental() const noexcept;
  bool bundled() const noexcept;
  buffer_pool_stats stats() const noexcept;
  // The buffer group id on the ring.
  unsigned group_id() const noexcept;

  detail::pool_state* state() const noexcept { return state_; }

private:
  void stop() noexcept;
  detail::pool_state* state_ = nullptr;
};

} // namespace couring
