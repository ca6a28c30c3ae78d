// buffer_pool and the machinery behind stream::receive(pool).
//
// Each stream that receives from a pool gets a receiver: a small record from
// the pool (allocated a slab at a time, recycled) that is the stream's read
// side's active operation for as long as the stream is open. Its one request
// is either
//   - a multishot IORING_OP_RECV with IOSQE_BUFFER_SELECT: every CQE carries
//     one buffer of the pool (or ends the request: end of stream, an error,
//     ENOBUFS, or the kernel stopping it, e.g. on CQ overflow), or
//   - a one-shot IORING_OP_POLL_ADD (POLLIN): after ENOBUFS, to learn when
//     the socket has data again without holding or asking for a buffer.
// A piece that arrives while the stream's next receive already waits, with
// nothing queued before it, goes straight into that receive (the common case
// of a server that answers each message: no chunk record to fill and take).
// Chunks nobody waits for are queued in the receiver, in chunk records
// allocated with the pool (one per buffer without incremental consumption,
// where a buffer holds one chunk; max_queued_chunks with it): no allocation
// per chunk.
//
// Buffers and chunks. Each buffer has a record (meta): how far the kernel
// has filled it (INC), how many chunks (queued or leased) are in it, its
// slot in the ring, and whether it is in the ring. A CQE's bytes are cut
// into chunks from its first buffer on (a bundle covers the buffers in the
// ring slots that follow; with INC the first one starts where the kernel
// left off). A buffer leaves the ring when the kernel is done with it:
// always without INC, when full with it (our count of its bytes says so;
// IORING_CQE_F_BUF_MORE agrees). It goes back once it is out of the ring
// and its last chunk has ended.
//
// Back-pressure: when the pool is empty the kernel ends the multishot with
// ENOBUFS and leaves the bytes in the socket buffer; once the socket is
// readable the receiver waits in the pool's hungry list, and each buffer given
// back re-arms one hungry receiver (in FIFO order). The socket buffer fills,
// TCP's window closes, and the peer slows down: nothing is lost, nothing
// fails, and memory stays at count * size.

#include <couring/buffer_pool.hpp>
#include <couring/detail/pool_receive.hpp>
#include <couring/io_context.hpp>

#include <bit>
#include <cerrno>
#include <memory>
#include <stdexcept>
#include <system_error>
#include <vector>

#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

namespace couring::detail {

// liburing 2.3 lacks these (kernel 6.10 / 6.12 uapi).
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif
constexpr std::uint16_t pbuf_ring_inc = 2;          // IOU_PBUF_RING_INC
constexpr unsigned feat_recvsend_bundle = 1U << 14; // IORING_FEAT_RECVSEND_BUNDLE

namespace {
constexpr std::uint32_t none = ~std::uint32_t{0};
constexpr std::size_t receivers_per_slab = 64;

std::size_t page_round(std::size_t n) {
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  return (n + page - 1) / page * page;
}

void* map_anonymous(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    throw std::system_error(errno, std::system_category(), "couring: buffer_pool: mmap");
  return p;
}
} // namespace

class pool_state {
public:
  pool_state(ring& r, std::size_t count, std::size_t size, const buffer_pool_options& o);
  ~pool_state();
  pool_state(const pool_state&) = delete;
  pool_state& operator=(const pool_state&) = delete;

  std::uint32_t available() const noexcept { return count_ - out_; }
  std::byte* buffer(std::uint32_t bid) const noexcept {
    return mem_ + static_cast<std::size_t>(bid) * size_;
  }

  pool_receiver* new_receiver(object_state* s);
  void arm_recv(pool_receiver* rc);
  void arm_poll(pool_receiver* rc);
  void give_back(std::uint32_t bid) noexcept;
  void stop() noexcept;
  bool incremental() const noexcept { return inc_; }
  bool bundled() const noexcept { return bundle_; }
  void destroy(pool_receiver* rc) noexcept;

  // Everything but the common case (on_receiver_cqe): out of line, so that
  // the common case saves no registers for it.
  [[gnu::noinline]] static void on_cqe(operation* op) noexcept;
  friend void on_receiver_cqe(operation* op) noexcept;
  static void on_abandon(operation* op) noexcept;
  // rc's data filled a whole buffer in one piece: it is a bulk stream, and
  // its receive (still going on if more) is re-armed with bundles.
  void note_full_buffer(pool_receiver* rc, bool more) noexcept;
  static void on_close(operation* op) noexcept;

  // Hands what the receiver has (a chunk, the end) to the first waiting
  // receive: resumed inline if inline_first, posted otherwise.
  static void serve_waiters(pool_receiver* rc, bool inline_first) noexcept;
  static bool take(pool_receiver* rc, pool_receive_awaitable& a) noexcept;

  ring* r_;
  std::uint32_t count_;
  std::uint32_t size_;
  std::uint32_t entries_;
  std::uint16_t bgid_ = 0;
  bool stopped_ = false;
  bool inc_ = false;
  bool bundle_ = false;
  buffer_pool_stats stats_{};

private:
  struct buf_meta {
    std::uint32_t fill = 0; // bytes the kernel put in it since it was added (INC)
    std::uint32_t refs = 0; // chunks in it, queued or leased
    std::uint16_t slot = 0; // its ring slot (the tail when it was added)
    bool in_ring = true;    // the kernel may still write into it
  };
  struct chunk {
    std::uint32_t next;
    std::uint32_t bid;
    std::uint32_t off;
    std::uint32_t len;
  };

  void add_to_ring(std::uint32_t bid) noexcept;
  bool push(pool_receiver* rc, std::uint32_t bid, std::uint32_t off, std::uint32_t len) noexcept;
  // Cuts res bytes, from buffer bid on, into chunks for rc (or drops them
  // if keep is false); false if a chunk found no record. kernel_keeps_last:
  // the CQE had IORING_CQE_F_BUF_MORE.
  bool consume(pool_receiver* rc, std::uint32_t bid, std::uint32_t res, bool keep,
               bool kernel_keeps_last) noexcept;
  // The kernel is done with bid (it left the ring).
  void left_ring(std::uint32_t bid) noexcept {
    meta_[bid].in_ring = false;
    ++out_;
  }
  // bid is out of the ring and has no chunk: back to the kernel.
  void recycle(std::uint32_t bid) noexcept;
  void release_chunk(std::uint32_t c) noexcept {
    chunks_[c].next = free_chunk_;
    free_chunk_ = c;
  }
  // The receive that may take a piece directly: the first in the stream's
  // line, if nothing is queued before the piece and it has none yet.
  static pool_receive_awaitable* direct_taker(pool_receiver* rc) noexcept;
  void make_hungry(pool_receiver* rc) noexcept;
  void leave_hungry(pool_receiver* rc) noexcept;
  // Once per completion: the common case (nobody hungry) is one test.
  void wake_hungry() noexcept {
    if (hungry_head_ != nullptr)
      wake_hungry_slow();
  }
  void wake_hungry_slow() noexcept;
  void settle_woken(pool_receiver* rc) noexcept;
  void uncount(pool_receiver* rc) noexcept;
  void maybe_free() noexcept;
  void try_arm(pool_receiver* rc, bool recv) noexcept;

  io_uring_buf_ring* br_ = nullptr;
  std::size_t br_bytes_ = 0;
  std::byte* mem_ = nullptr;
  std::size_t mem_bytes_ = 0;
  std::unique_ptr<buf_meta[]> meta_;
  // Chunk records: an anonymous mapping of chunk_cap_ records, touched
  // only as far as they are used (fresh_: the first never used; below it,
  // the free ones are linked from free_chunk_), so that the bound costs
  // address space, not memory, until chunks are actually queued.
  chunk* chunks_ = nullptr;
  std::size_t chunks_bytes_ = 0;
  std::uint32_t chunk_cap_ = 0;
  std::uint32_t fresh_ = 0;
  std::uint32_t free_chunk_ = none;
  std::size_t refs_ = 0;    // chunks in all buffers (a stopped pool waits for them)
  std::uint32_t out_ = 0;   // buffers out of the ring, not back yet
  std::size_t live_ = 0;    // receivers in use
  std::uint32_t woken_ = 0; // hungry receivers re-armed that have not taken a buffer yet
  pool_receiver* hungry_head_ = nullptr;
  pool_receiver* hungry_tail_ = nullptr;
  pool_receiver* free_ = nullptr;
  std::vector<std::unique_ptr<pool_receiver[]>> slabs_;
};

pool_state::pool_state(ring& r, std::size_t count, std::size_t size, const buffer_pool_options& o)
    : r_(&r), count_(static_cast<std::uint32_t>(count)), size_(static_cast<std::uint32_t>(size)),
      entries_(std::bit_ceil(static_cast<std::uint32_t>(count))) {
  bool registered = false;
  try {
    br_bytes_ = page_round(entries_ * sizeof(io_uring_buf));
    br_ = static_cast<io_uring_buf_ring*>(map_anonymous(br_bytes_));
    // Mapped, not touched: a page becomes resident when the kernel first
    // fills a buffer in it.
    mem_bytes_ = page_round(count * size);
    mem_ = static_cast<std::byte*>(map_anonymous(mem_bytes_));
    meta_ = std::make_unique<buf_meta[]>(count);
    io_uring_buf_ring_init(br_);
    for (std::uint32_t bid = 0; bid < count_; ++bid) {
      io_uring_buf_ring_add(br_, buffer(bid), size_, static_cast<unsigned short>(bid),
                            io_uring_buf_ring_mask(entries_), static_cast<int>(bid));
      meta_[bid].slot = static_cast<std::uint16_t>(bid);
    }
    io_uring_buf_ring_advance(br_, static_cast<int>(count_));
    // Where the kernel says it has them (IORING_FEAT_RECVSEND_BUNDLE,
    // 6.10; never on the epoll backend, which reports no io_uring
    // features). A kernel that refuses one anyway (EINVAL) makes the pool
    // ask no more (on_cqe).
    bundle_ = o.bundle && (r.features().kernel_features & feat_recvsend_bundle) != 0;

    // Group ids are per ring, and the ring knows which are taken: the first
    // one it accepts is ours.
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uint64_t>(br_);
    reg.ring_entries = entries_;
    // (liburing 2.3 calls the flags field pad.)
    reg.pad = o.incremental ? pbuf_ring_inc : 0;
    for (unsigned id = 0;; ++id) {
      if (id > 0xffff)
        throw std::system_error(ENOSPC, std::system_category(),
                                "couring: buffer_pool: no buffer group id left on this ring");
      reg.bgid = static_cast<std::uint16_t>(id);
      const int err = r.register_buffer_ring(reg);
      if (err == 0) {
        bgid_ = static_cast<std::uint16_t>(id);
        registered = true;
        break;
      }
      if (err == -EINVAL && reg.pad != 0) {
        // A kernel before 6.12 (or the epoll backend): no INC; same id again.
        reg.pad = 0;
        --id;
        continue;
      }
      if (err != -EEXIST)
        throw std::system_error(-err, std::system_category(),
                                "couring: buffer_pool: cannot register the buffer ring");
    }
    inc_ = reg.pad != 0;
    // Without INC a buffer holds one chunk at most: one record each. With
    // it, a buffer holds a chunk per piece the kernel put in it while
    // nobody took it (streams interleave: the pieces of one stream merge
    // only when they are adjacent), and pieces can be a byte: the count is
    // bounded by count * size, not by anything smaller. The default is what
    // the pool's memory holds in 64-byte pieces (with 4 KiB buffers; at
    // least 1,024): streams whose queued chunks average 64 bytes or more
    // run out of buffers -- back-pressure -- before they run out of
    // records (the error). The mapping is only touched as records are
    // used: the bound costs address space, and memory only for chunks
    // actually queued at once (16 bytes each).
    std::size_t n = count;
    if (inc_)
      n = o.max_queued_chunks != 0 ? o.max_queued_chunks : std::max<std::size_t>(1024, 64 * count);
    if (n > none - 1)
      n = none - 1;
    chunk_cap_ = static_cast<std::uint32_t>(n);
    chunks_bytes_ = page_round(n * sizeof(chunk));
    chunks_ = static_cast<chunk*>(map_anonymous(chunks_bytes_));
  } catch (...) {
    if (registered)
      r.unregister_buffer_ring(bgid_); // before its memory goes
    if (mem_ != nullptr)
      ::munmap(mem_, mem_bytes_);
    if (br_ != nullptr)
      ::munmap(br_, br_bytes_);
    throw;
  }
}

pool_state::~pool_state() {
  ::munmap(chunks_, chunks_bytes_);
  ::munmap(mem_, mem_bytes_);
  ::munmap(br_, br_bytes_);
}

pool_receiver* pool_state::new_receiver(object_state* s) {
  if (free_ == nullptr) {
    // One allocation per 64 streams, never per operation.
    slabs_.push_back(std::make_unique<pool_receiver[]>(receivers_per_slab));
    for (std::size_t i = 0; i < receivers_per_slab; ++i) {
      slabs_.back()[i].next = free_;
      free_ = &slabs_.back()[i];
    }
  }
  pool_receiver* rc = free_;
  free_ = static_cast<pool_receiver*>(rc->next);
  *rc = pool_receiver{};
  rc->owner_ring = r_;
  rc->object = s;
  rc->on_complete = &on_receiver_cqe;
  rc->on_abandon = &on_abandon;
  rc->cancel_fn = &on_close;
  rc->pool = this;
  ++live_;
  return rc;
}

void pool_state::arm_recv(pool_receiver* rc) {
  io_uring_sqe* sqe = r_->get_sqe();
  io_uring_prep_recv_multishot(sqe, rc->object->fd, nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = bgid_;
  // Bundles for bulk streams only: a bundled receive costs the kernel more
  // per completion (io_ring_buffers_peek and an iovec instead of one
  // buffer), which a completion of one small message does not win back.
  const bool bundled = bundle_ && rc->bulk;
  if (bundled)
    sqe->ioprio |= IORING_RECVSEND_BUNDLE;
  rc->bundled = bundled;
  rc->upgrading = false;
  r_->arm(sqe, rc);
  rc->in_kernel = pool_receiver::request::recv;
  if (!rc->counted) {
    // An idle stream's receive does not keep run() going by itself; a
    // coroutine waiting for it does (it is parked in the read side).
    rc->counted = true;
    r_->count_internal(+1);
  }
}

void pool_state::arm_poll(pool_receiver* rc) {
  io_uring_sqe* sqe = r_->get_sqe();
  io_uring_prep_poll_add(sqe, rc->object->fd, POLLIN | POLLRDHUP);
  r_->arm(sqe, rc);
  rc->in_kernel = pool_receiver::request::poll;
  if (!rc->counted) {
    rc->counted = true;
    r_->count_internal(+1);
  }
}

void pool_state::try_arm(pool_receiver* rc, bool recv) noexcept {
  try {
    if (recv)
      arm_recv(rc);
    else
      arm_poll(rc);
  } catch (const std::system_error& e) {
    rc->end = -e.code().value();
  } catch (...) {
    rc->end = -ENOMEM;
  }
}

void pool_state::uncount(pool_receiver* rc) noexcept {
  if (rc->counted) {
    rc->counted = false;
    r_->count_internal(-1);
  }
}

void pool_state::note_full_buffer(pool_receiver* rc, bool more) noexcept {
  if (!bundle_ || rc->bulk)
    return;
  rc->bulk = true;
  if (more && rc->in_kernel == pool_receiver::request::recv && !rc->upgrading) {
    // A multishot request keeps its flags: it ends (ECANCELED, after what
    // it has already received, in order) and on_cqe arms a bundled one. One
    // cancel per stream that turns bulk.
    rc->upgrading = true;
    r_->cancel(rc);
  }
}

void pool_state::add_to_ring(std::uint32_t bid) noexcept {
  // (The kernel moved the slot's address on while it filled the buffer
  // incrementally: the buffer goes in whole again.)
  meta_[bid] = {.fill = 0, .refs = 0, .slot = br_->tail, .in_ring = true};
  io_uring_buf_ring_add(br_, buffer(bid), size_, static_cast<unsigned short>(bid),
                        io_uring_buf_ring_mask(entries_), 0);
  io_uring_buf_ring_advance(br_, 1);
}

void pool_state::recycle(std::uint32_t bid) noexcept {
  --out_;
  if (stopped_) {
    maybe_free();
    return;
  }
  add_to_ring(bid);
  ++stats_.recycled;
  wake_hungry();
}

void pool_state::give_back(std::uint32_t bid) noexcept {
  --refs_;
  if (--meta_[bid].refs == 0 && !meta_[bid].in_ring)
    recycle(bid);
  else if (stopped_)
    maybe_free();
}

bool pool_state::push(pool_receiver* rc, std::uint32_t bid, std::uint32_t off,
                      std::uint32_t len) noexcept {
  if (rc->last != none) {
    // The stream's previous chunk ends where this one starts (INC, nobody
    // else's bytes in between): one chunk, one record.
    chunk& l = chunks_[rc->last];
    if (l.bid == bid && l.off + l.len == off) {
      l.len += len;
      return true;
    }
  }
  std::uint32_t c = free_chunk_;
  if (c != none)
    free_chunk_ = chunks_[c].next;
  else if (fresh_ < chunk_cap_)
    c = fresh_++;
  else
    return false;
  chunks_[c] = {none, bid, off, len};
  ++meta_[bid].refs;
  ++refs_;
  if (rc->last != none)
    chunks_[rc->last].next = c;
  else
    rc->first = c;
  rc->last = c;
  return true;
}

bool pool_state::consume(pool_receiver* rc, std::uint32_t bid, std::uint32_t res, bool keep,
                         bool kernel_keeps_last) noexcept {
  bool ok = true;
  ++stats_.completions;
  // The first piece goes straight to the stream's waiting receive, if any.
  pool_receive_awaitable* direct = keep ? direct_taker(rc) : nullptr;
  const std::uint16_t slot = meta_[bid].slot;
  const auto mask = static_cast<std::uint16_t>(entries_ - 1);
  for (std::uint16_t i = 0; res > 0; ++i) {
    // A bundle goes on in the ring's next slots (always full buffers but
    // the last, or the rest of the first one with INC).
    if (i > 0)
      bid = br_->bufs[static_cast<std::uint16_t>(slot + i) & mask].bid;
    buf_meta& m = meta_[bid];
    const std::uint32_t off = inc_ ? m.fill : 0;
    const std::uint32_t n = std::min(res, size_ - off);
    res -= n;
    ++stats_.pieces;
    if (inc_)
      m.fill += n;
    // With INC the kernel says whether it keeps the last buffer
    // (IORING_CQE_F_BUF_MORE): its word counts, though it agrees with ours
    // (full or not). The buffers before it in a bundle are always full.
    if (!inc_ || (res > 0 ? m.fill == size_ : !kernel_keeps_last))
      left_ring(bid);
    if (direct != nullptr) {
      // As take() hands a chunk over: the lease will hold the count.
      ++m.refs;
      ++refs_;
      direct->bid_ = bid;
      direct->len_ = n;
      direct->data_ = buffer(bid) + off;
      direct->res = 0;
      direct->ready_ = true;
      direct = nullptr;
    } else if (keep && !push(rc, bid, off, n)) {
      keep = ok = false; // no chunk record left: this and the rest are lost
    }
    if (m.refs == 0 && !m.in_ring)
      recycle(bid);
  }
  return ok;
}

bool pool_state::take(pool_receiver* rc, pool_receive_awaitable& a) noexcept {
  pool_state& p = *rc->pool;
  if (const std::uint32_t c = rc->first; c != none) {
    const chunk& k = p.chunks_[c];
    rc->first = k.next;
    if (rc->first == none)
      rc->last = none;
    a.bid_ = k.bid; // the lease takes over the chunk's count on its buffer
    a.len_ = k.len;
    a.data_ = p.buffer(k.bid) + k.off;
    a.res = 0;
    p.release_chunk(c);
    return true;
  }
  if (rc->end != 0) {
    a.bid_ = pool_receive_awaitable::no_buffer;
    a.res = rc->end == 1 ? 0 : rc->end; // sticky: the next receive sees it again
    return true;
  }
  return false;
}

pool_receive_awaitable* pool_state::direct_taker(pool_receiver* rc) noexcept {
  if (rc->first != none)
    return nullptr; // queued chunks come first
  operation* w = rc->object->read_side.first_waiting;
  if (w == nullptr || w->issue_fn != &pool_receive_awaitable::not_issued)
    return nullptr;
  auto* a = static_cast<pool_receive_awaitable*>(w);
  return a->ready_ ? nullptr : a;
}

void pool_state::make_hungry(pool_receiver* rc) noexcept {
  rc->hungry = true;
  rc->next = nullptr;
  if (hungry_tail_ != nullptr)
    hungry_tail_->next = rc;
  else
    hungry_head_ = rc;
  hungry_tail_ = rc;
}

void pool_state::leave_hungry(pool_receiver* rc) noexcept {
  if (!rc->hungry)
    return;
  pool_receiver* prev = nullptr;
  for (pool_receiver* h = hungry_head_; h != nullptr;
       prev = h, h = static_cast<pool_receiver*>(h->next)) {
    if (h != rc)
      continue;
    auto* after = static_cast<pool_receiver*>(h->next);
    if (prev != nullptr)
      prev->next = after;
    else
      hungry_head_ = after;
    if (hungry_tail_ == h)
      hungry_tail_ = prev;
    break;
  }
  rc->hungry = false;
  rc->next = nullptr;
}

void pool_state::wake_hungry_slow() noexcept {
  // As many hungry receivers as there are buffers nobody is about to take:
  // each has data waiting, so it takes a buffer (or, if another stream was
  // quicker, goes back in line). Waking fewer could leave buffers idle while
  // streams starve; waking all would make every give-back cost O(streams).
  if (r_->draining())
    return;
  while (hungry_head_ != nullptr && available() > woken_) {
    pool_receiver* rc = hungry_head_;
    hungry_head_ = static_cast<pool_receiver*>(rc->next);
    if (hungry_head_ == nullptr)
      hungry_tail_ = nullptr;
    rc->hungry = false;
    rc->next = nullptr;
    try_arm(rc, true);
    if (rc->end != 0) {
      serve_waiters(rc, false); // could not re-arm: the error is its result
    } else {
      rc->woken = true;
      ++woken_;
    }
  }
}

void pool_state::settle_woken(pool_receiver* rc) noexcept {
  if (rc->woken) {
    rc->woken = false;
    --woken_;
  }
}

void pool_state::destroy(pool_receiver* rc) noexcept {
  leave_hungry(rc);
  settle_woken(rc);
  uncount(rc);
  // Chunks nobody took go back to the kernel.
  while (rc->first != none) {
    const std::uint32_t c = rc->first;
    const std::uint32_t bid = chunks_[c].bid;
    rc->first = chunks_[c].next;
    release_chunk(c);
    give_back(bid);
  }
  rc->last = none;
  if (rc->object->read_side.active == rc)
    rc->object->read_side.active = nullptr;
  rc->on_complete = nullptr; // marks the slot free (stop() skips it)
  rc->next = free_;
  free_ = rc;
  --live_;
  maybe_free();
}

void pool_state::maybe_free() noexcept {
  if (stopped_ && live_ == 0 && out_ == 0 && refs_ == 0)
    delete this;
}

void pool_state::serve_waiters(pool_receiver* rc, bool inline_first) noexcept {
  ring& r = *rc->owner_ring;
  object_side& side = rc->object->read_side;
  operation* resume_now = nullptr;
  while (operation* w = side.first_waiting) {
    const bool is_receive = w->issue_fn == &pool_receive_awaitable::not_issued;
    // (A receive that got its piece directly, in consume, has it already.)
    if (is_receive && !static_cast<pool_receive_awaitable*>(w)->ready_ &&
        !take(rc, *static_cast<pool_receive_awaitable*>(w)))
      break;
    side.first_waiting = w->next;
    if (side.first_waiting == nullptr)
      side.last_waiting = nullptr;
    r.count_parked(-1);
    w->side = nullptr;
    w->cancel_fn = nullptr;
    if (w->scope != nullptr)
      w->scope->clear_current(w);
    if (!is_receive)
      w->res = -EINVAL; // a read behind a pool receive: the stream reads through its pool
    if (is_receive && inline_first && resume_now == nullptr)
      resume_now = w;
    else if (!r.draining())
      r.post(w);
  }
  // Last: the resumed coroutine may close the stream (and free rc).
  if (resume_now != nullptr)
    resume_now->waiter.resume();
}

void pool_state::on_cqe(operation* op) noexcept {
  auto* rc = static_cast<pool_receiver*>(op);
  pool_state& p = *rc->pool;
  const std::uint32_t flags = op->cqe_flags;
  const int res = op->res;
  const bool more = (flags & IORING_CQE_F_MORE) != 0;
  const bool was_poll = rc->in_kernel == pool_receiver::request::poll;
  if (!more) {
    rc->in_kernel = pool_receiver::request::none;
    p.uncount(rc);
  }
  const bool closed = op->object->closed;
  if (was_poll) {
    if (!closed && rc->end == 0) {
      if (res < 0)
        rc->end = res; // ECANCELED: the pool was stopped
      else if (p.stopped_)
        rc->end = -ECANCELED;
      else if (p.available() > 0)
        p.try_arm(rc, true);
      else
        p.make_hungry(rc); // data is waiting; a buffer given back re-arms it
    }
  } else {
    p.settle_woken(rc);
    if (flags & IORING_CQE_F_BUFFER) {
      const auto bid = flags >> IORING_CQE_BUFFER_SHIFT;
      if (res > 0) {
        if (!closed && rc->end == 0 && !rc->bundled && static_cast<std::uint32_t>(res) == p.size_)
          p.note_full_buffer(rc, more);
        if (!p.consume(rc, bid, static_cast<std::uint32_t>(res), !closed && rc->end == 0,
                       (flags & IORING_CQE_F_BUF_MORE) != 0)) {
          // Out of chunk records (max_queued_chunks): a clear error after
          // what is queued, and no more receiving.
          rc->end = -ENOBUFS;
          if (more)
            p.r_->cancel(rc);
        }
      } else if (!p.inc_) {
        // Without INC the kernel used the buffer up, data or not (with
        // INC it took nothing from it: it stays where it is).
        p.left_ring(bid);
        p.recycle(bid);
      }
    }
    if (!closed && rc->end == 0 && res == -EINVAL && rc->bundled && !more) {
      // A kernel without bundles that did not say so: never ask again.
      p.bundle_ = false;
      p.try_arm(rc, true);
    } else if (!closed && rc->end == 0) {
      if (res == 0) {
        rc->end = 1;
      } else if (res == -ENOBUFS) {
        // The pool is empty; the bytes stay in the socket. Learn when the
        // socket is readable, without asking for a buffer, then wait for one.
        if (p.stopped_)
          rc->end = -ECANCELED;
        else if (!more)
          p.try_arm(rc, false);
      } else if (res == -ECANCELED && rc->upgrading && !more && !p.stopped_) {
        p.try_arm(rc, true); // the cancel note_full_buffer asked for: now bundled
      } else if (res < 0) {
        rc->end = res;
      } else if (!more) {
        // The kernel ended the multishot by itself (CQ overflow, ...).
        p.try_arm(rc, true);
      }
    }
  }
  if (closed) {
    // It may have been woken for a buffer it did not take (its request was
    // cancelled, or ended without data): the next hungry stream gets it, or
    // it waits until some other buffer comes back, perhaps never.
    p.wake_hungry();
    if (rc->in_kernel == pool_receiver::request::none)
      p.destroy(rc); // (its buffers' give-backs wake hungry streams)
    return;
  }
  p.wake_hungry(); // this receiver's buffer may have been the one it was woken for
  serve_waiters(rc, true);
}

void on_receiver_cqe(operation* op) noexcept {
  auto* rc = static_cast<pool_receiver*>(op);
  pool_state& p = *rc->pool;
  const std::uint32_t flags = op->cqe_flags;
  const int res = op->res;
  // The common case of a server that answers each message: data for one
  // buffer piece, the multishot goes on, nothing queued, and the stream's
  // one receive waits for it. Handed over and resumed here, with exactly
  // what on_cqe's consume + serve_waiters would do for it, nothing else.
  constexpr std::uint32_t more_buffer = IORING_CQE_F_MORE | IORING_CQE_F_BUFFER;
  if ((flags & more_buffer) == more_buffer && res > 0 && rc->first == none && rc->end == 0 &&
      !rc->woken && !op->object->closed) [[likely]] {
    object_side& side = op->object->read_side;
    operation* w = side.first_waiting;
    const auto bid = flags >> IORING_CQE_BUFFER_SHIFT;
    pool_state::buf_meta& m = p.meta_[bid];
    const std::uint32_t off = p.inc_ ? m.fill : 0;
    const auto n = static_cast<std::uint32_t>(res);
    // One waiter (a second one could only be served from a queue, and a
    // read behind a receive must be failed: the general path does both),
    // and one piece (no bundle running into the next buffer).
    if (w != nullptr && w == side.last_waiting &&
        w->issue_fn == &pool_receive_awaitable::not_issued && n <= p.size_ - off) {
      auto* a = static_cast<pool_receive_awaitable*>(w);
      ++p.stats_.completions;
      ++p.stats_.pieces;
      if (p.inc_)
        m.fill += n;
      if (!p.inc_ || (flags & IORING_CQE_F_BUF_MORE) == 0)
        p.left_ring(bid);
      ++m.refs; // the lease holds it
      ++p.refs_;
      a->bid_ = bid;
      a->len_ = n;
      a->data_ = p.buffer(bid) + off;
      a->res = 0;
      side.first_waiting = nullptr;
      side.last_waiting = nullptr;
      p.r_->count_parked(-1);
      a->side = nullptr;
      a->cancel_fn = nullptr;
      if (a->scope != nullptr)
        a->scope->clear_current(a);
      if (n == p.size_ && !rc->bulk) [[unlikely]]
        p.note_full_buffer(rc, true);
      a->waiter.resume(); // last: the coroutine may close the stream (and free rc)
      return;
    }
  }
  pool_state::on_cqe(op);
}

void pool_state::on_abandon(operation* op) noexcept {
  // Teardown: nothing is resumed; buffers go back, the record goes once the
  // stream is closed too.
  auto* rc = static_cast<pool_receiver*>(op);
  pool_state& p = *rc->pool;
  const bool was_poll = rc->in_kernel == pool_receiver::request::poll;
  p.settle_woken(rc);
  if ((op->cqe_flags & IORING_CQE_F_MORE) == 0) {
    rc->in_kernel = pool_receiver::request::none;
    p.uncount(rc);
  }
  if (!was_poll && (op->cqe_flags & IORING_CQE_F_BUFFER)) {
    const auto bid = op->cqe_flags >> IORING_CQE_BUFFER_SHIFT;
    if (op->res > 0) {
      p.consume(rc, bid, static_cast<std::uint32_t>(op->res), false,
                (op->cqe_flags & IORING_CQE_F_BUF_MORE) != 0);
    } else if (!p.inc_) {
      p.left_ring(bid);
      p.recycle(bid);
    }
  }
  if (op->object->closed && rc->in_kernel == pool_receiver::request::none)
    p.destroy(rc);
}

void pool_state::on_close(operation* op) noexcept {
  // From close_object: the waiting receives are already ended. A request
  // in flight is cancelled by close_object (by descriptor) and its last CQE
  // destroys the receiver; until then it is part of the close, and run()
  // waits for it.
  auto* rc = static_cast<pool_receiver*>(op);
  pool_state& p = *rc->pool;
  p.uncount(rc);
  if (rc->in_kernel == pool_receiver::request::none)
    p.destroy(rc);
  else
    p.leave_hungry(rc);
}

void pool_state::stop() noexcept {
  stopped_ = true;
  if (!r_->foreign())
    r_->unregister_buffer_ring(bgid_);
  // Streams still receiving end with operation_canceled once their queued
  // chunks are taken: hungry ones now, the others when their request ends.
  while (pool_receiver* rc = hungry_head_) {
    leave_hungry(rc);
    rc->end = -ECANCELED;
    serve_waiters(rc, false);
  }
  for (auto& slab : slabs_)
    for (std::size_t i = 0; i < receivers_per_slab; ++i)
      if (pool_receiver& rc = slab[i];
          rc.on_complete != nullptr && rc.in_kernel != pool_receiver::request::none)
        r_->cancel(&rc);
  maybe_free();
}

void give_back(pool_state* pool, std::uint32_t bid) noexcept {
  pool->give_back(bid);
}

bool pool_receive_awaitable::start_slow(std::coroutine_handle<> awaiting, cancel_scope* s) {
  this->scope = s;
  bid_ = no_buffer;
  ready_ = false;
  if (this->object == nullptr || this->object->closed || this->object->generation != generation_) {
    // Closed (or never opened): as for every operation on an object.
    this->res = this->owner_ring != nullptr ? -ECANCELED : -EBADF;
    return false;
  }
  if (pool_ == nullptr)
    throw std::invalid_argument("couring: receive from a moved-from buffer_pool");
  if (s != nullptr && s->cancelled()) {
    this->res = -ECANCELED;
    return false;
  }
  if (pool_->r_ != this->owner_ring)
    // Its request would go to the pool's ring: another context's (another
    // thread's, with a runtime), whose submissions it would race with.
    throw std::logic_error("couring: receive from a buffer_pool of another io_context");
  object_side& side = this->object->read_side;
  pool_receiver* rc = nullptr;
  if (side.active == nullptr) {
    rc = pool_->new_receiver(this->object);
    side.active = rc;
    try {
      pool_->arm_recv(rc);
    } catch (...) {
      pool_->destroy(rc);
      throw;
    }
  } else if (side.active->on_complete == &on_receiver_cqe) {
    rc = static_cast<pool_receiver*>(side.active);
    if (rc->pool != pool_)
      throw std::logic_error("couring: a stream receives from one buffer_pool only");
  } else {
    throw std::logic_error("couring: receive(pool) while a read is in progress on the stream");
  }
  // In order: a queued chunk goes to the first receive in line.
  if (side.first_waiting == nullptr && (rc->first != none || rc->end != 0) &&
      pool_state::take(rc, *this))
    return false;
  wait_in_line(awaiting, s, side);
  return true;
}

void pool_receive_awaitable::cancel_waiting(operation* op) noexcept {
  // Cancelled while waiting in line (a scope, with_timeout): nothing of its
  // own was submitted, so it ends here, resumed on the next loop turn.
  ring& r = *op->owner_ring;
  ring::leave_queue(op);
  op->res = -ECANCELED;
  if (op->scope != nullptr)
    op->scope->clear_current(op);
  r.post(op);
}

} // namespace couring::detail

namespace couring {

buffer_pool::buffer_pool(io_context& ctx, std::size_t count, std::size_t size,
                         buffer_pool_options options) {
  if (count == 0 || count > 32768)
    throw std::invalid_argument("couring: buffer_pool: count must be 1..32768");
  if (size == 0 || size > (std::size_t{1} << 31))
    throw std::invalid_argument("couring: buffer_pool: size must be 1..2^31 bytes");
  state_ = new detail::pool_state(ctx.ring(), count, size, options);
}

void buffer_pool::stop() noexcept {
  if (state_ != nullptr)
    std::exchange(state_, nullptr)->stop();
}

std::size_t buffer_pool::count() const noexcept {
  return state_ != nullptr ? state_->count_ : 0;
}
std::size_t buffer_pool::buffer_size() const noexcept {
  return state_ != nullptr ? state_->size_ : 0;
}
std::size_t buffer_pool::available() const noexcept {
  return state_ != nullptr ? state_->available() : 0;
}
bool buffer_pool::incremental() const noexcept {
  return state_ != nullptr && state_->incremental();
}
bool buffer_pool::bundled() const noexcept {
  return state_ != nullptr && state_->bundled();
}
buffer_pool_stats buffer_pool::stats() const noexcept {
  return state_ != nullptr ? state_->stats_ : buffer_pool_stats{};
}
unsigned buffer_pool::group_id() const noexcept {
  return state_ != nullptr ? state_->bgid_ : 0;
}

} // namespace couring
