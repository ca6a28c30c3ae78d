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
// Chunks nobody waits for are queued in the receiver, linked through the
// pool's per-buffer records (meta): no allocation per chunk.
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

struct pool_receiver : operation {
  enum class request : std::uint8_t { none, recv, poll };
  pool_state* pool = nullptr;
  std::uint32_t first = none; // queued buffers, oldest first
  std::uint32_t last = none;
  int end = 0; // 0: open; 1: end of stream; < 0: errno (after the queue)
  request in_kernel = request::none;
  bool hungry = false;
  bool woken = false;   // re-armed from the hungry list, no CQE yet
  bool counted = false; // its request counts as background work (count_internal)
};

class pool_state {
public:
  pool_state(ring& r, std::size_t count, std::size_t size);
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
  void destroy(pool_receiver* rc) noexcept;

  static void on_cqe(operation* op) noexcept;
  static void on_abandon(operation* op) noexcept;
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

private:
  struct buf_meta {
    std::uint32_t next;
    std::uint32_t len;
  };

  void add_to_ring(std::uint32_t bid) noexcept;
  void push(pool_receiver* rc, std::uint32_t bid, std::uint32_t len) noexcept;
  void took_buffer() noexcept { ++out_; }
  void make_hungry(pool_receiver* rc) noexcept;
  void leave_hungry(pool_receiver* rc) noexcept;
  void wake_hungry() noexcept;
  void settle_woken(pool_receiver* rc) noexcept;
  void uncount(pool_receiver* rc) noexcept;
  void maybe_free() noexcept;
  void try_arm(pool_receiver* rc, bool recv) noexcept;

  io_uring_buf_ring* br_ = nullptr;
  std::size_t br_bytes_ = 0;
  std::byte* mem_ = nullptr;
  std::size_t mem_bytes_ = 0;
  std::unique_ptr<buf_meta[]> meta_;
  std::uint32_t out_ = 0;   // buffers the kernel handed us that are not back yet
  std::size_t live_ = 0;    // receivers in use
  std::uint32_t woken_ = 0; // hungry receivers re-armed that have not taken a buffer yet
  pool_receiver* hungry_head_ = nullptr;
  pool_receiver* hungry_tail_ = nullptr;
  pool_receiver* free_ = nullptr;
  std::vector<std::unique_ptr<pool_receiver[]>> slabs_;
};

pool_state::pool_state(ring& r, std::size_t count, std::size_t size)
    : r_(&r), count_(static_cast<std::uint32_t>(count)), size_(static_cast<std::uint32_t>(size)),
      entries_(std::bit_ceil(static_cast<std::uint32_t>(count))) {
  try {
    br_bytes_ = page_round(entries_ * sizeof(io_uring_buf));
    br_ = static_cast<io_uring_buf_ring*>(map_anonymous(br_bytes_));
    // Mapped, not touched: a page becomes resident when the kernel first
    // fills a buffer in it.
    mem_bytes_ = page_round(count * size);
    mem_ = static_cast<std::byte*>(map_anonymous(mem_bytes_));
    meta_ = std::make_unique<buf_meta[]>(count);
    io_uring_buf_ring_init(br_);
    for (std::uint32_t bid = 0; bid < count_; ++bid)
      io_uring_buf_ring_add(br_, buffer(bid), size_, static_cast<unsigned short>(bid),
                            io_uring_buf_ring_mask(entries_), static_cast<int>(bid));
    io_uring_buf_ring_advance(br_, static_cast<int>(count_));

    // Group ids are per ring, and the ring knows which are taken: the first
    // one it accepts is ours.
    io_uring_buf_reg reg{};
    reg.ring_addr = reinterpret_cast<std::uint64_t>(br_);
    reg.ring_entries = entries_;
    for (unsigned id = 0;; ++id) {
      if (id > 0xffff)
        throw std::system_error(ENOSPC, std::system_category(),
                                "couring: buffer_pool: no buffer group id left on this ring");
      reg.bgid = static_cast<std::uint16_t>(id);
      const int err = r.register_buffer_ring(reg);
      if (err == 0) {
        bgid_ = static_cast<std::uint16_t>(id);
        break;
      }
      if (err != -EEXIST)
        throw std::system_error(-err, std::system_category(),
                                "couring: buffer_pool: cannot register the buffer ring");
    }
  } catch (...) {
    if (mem_ != nullptr)
      ::munmap(mem_, mem_bytes_);
    if (br_ != nullptr)
      ::munmap(br_, br_bytes_);
    throw;
  }
}

pool_state::~pool_state() {
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
  rc->on_complete = &on_cqe;
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

void pool_state::add_to_ring(std::uint32_t bid) noexcept {
  io_uring_buf_ring_add(br_, buffer(bid), size_, static_cast<unsigned short>(bid),
                        io_uring_buf_ring_mask(entries_), 0);
  io_uring_buf_ring_advance(br_, 1);
}

void pool_state::give_back(std::uint32_t bid) noexcept {
  --out_;
  if (stopped_) {
    maybe_free();
    return;
  }
  add_to_ring(bid);
  wake_hungry();
}

void pool_state::push(pool_receiver* rc, std::uint32_t bid, std::uint32_t len) noexcept {
  meta_[bid] = {none, len};
  if (rc->last != none)
    meta_[rc->last].next = bid;
  else
    rc->first = bid;
  rc->last = bid;
}

bool pool_state::take(pool_receiver* rc, pool_receive_awaitable& a) noexcept {
  pool_state& p = *rc->pool;
  if (const std::uint32_t bid = rc->first; bid != none) {
    rc->first = p.meta_[bid].next;
    if (rc->first == none)
      rc->last = none;
    a.bid_ = bid;
    a.len_ = p.meta_[bid].len;
    a.data_ = p.buffer(bid);
    a.res = 0;
    return true;
  }
  if (rc->end != 0) {
    a.bid_ = pool_receive_awaitable::no_buffer;
    a.res = rc->end == 1 ? 0 : rc->end; // sticky: the next receive sees it again
    return true;
  }
  return false;
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

void pool_state::wake_hungry() noexcept {
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
    const std::uint32_t bid = rc->first;
    rc->first = meta_[bid].next;
    give_back(bid);
  }
  if (rc->object->read_side.active == rc)
    rc->object->read_side.active = nullptr;
  rc->on_complete = nullptr; // marks the slot free (stop() skips it)
  rc->next = free_;
  free_ = rc;
  --live_;
  maybe_free();
}

void pool_state::maybe_free() noexcept {
  if (stopped_ && live_ == 0 && out_ == 0)
    delete this;
}

void pool_state::serve_waiters(pool_receiver* rc, bool inline_first) noexcept {
  ring& r = *rc->owner_ring;
  object_side& side = rc->object->read_side;
  operation* resume_now = nullptr;
  while (operation* w = side.first_waiting) {
    const bool is_receive = w->issue_fn == &pool_receive_awaitable::not_issued;
    if (is_receive && !take(rc, *static_cast<pool_receive_awaitable*>(w)))
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
      p.took_buffer();
      if (res > 0 && !closed && rc->end == 0)
        p.push(rc, bid, static_cast<std::uint32_t>(res));
      else
        p.give_back(bid);
    }
    if (!closed && rc->end == 0) {
      if (res == 0) {
        rc->end = 1;
      } else if (res == -ENOBUFS) {
        // The pool is empty; the bytes stay in the socket. Learn when the
        // socket is readable, without asking for a buffer, then wait for one.
        if (p.stopped_)
          rc->end = -ECANCELED;
        else if (!more)
          p.try_arm(rc, false);
      } else if (res < 0) {
        rc->end = res;
      } else if (!more) {
        // The kernel ended the multishot by itself (CQ overflow, ...).
        p.try_arm(rc, true);
      }
    }
  }
  if (closed) {
    if (rc->in_kernel == pool_receiver::request::none)
      p.destroy(rc); // (its buffers' give-backs wake hungry streams)
    return;
  }
  p.wake_hungry(); // this receiver's buffer may have been the one it was woken for
  serve_waiters(rc, true);
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
    p.took_buffer();
    p.give_back(op->cqe_flags >> IORING_CQE_BUFFER_SHIFT);
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

bool pool_receive_awaitable::start(std::coroutine_handle<> awaiting, cancel_scope* s) {
  this->scope = s;
  bid_ = no_buffer;
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
  } else if (side.active->on_complete == &pool_state::on_cqe) {
    rc = static_cast<pool_receiver*>(side.active);
    if (rc->pool != pool_)
      throw std::logic_error("couring: a stream receives from one buffer_pool only");
  } else {
    throw std::logic_error("couring: receive(pool) while a read is in progress on the stream");
  }
  // In order: a queued chunk goes to the first receive in line.
  if (side.first_waiting == nullptr && pool_state::take(rc, *this))
    return false;
  this->waiter = awaiting;
  this->side = &side;
  this->owner_ring->take_side(this); // waits in line behind the receiver
  if (s != nullptr)
    s->set_current(this);
  return true;
}

} // namespace couring::detail

namespace couring {

buffer_pool::buffer_pool(io_context& ctx, std::size_t count, std::size_t size) {
  if (count == 0 || count > 32768)
    throw std::invalid_argument("couring: buffer_pool: count must be 1..32768");
  if (size == 0 || size > (std::size_t{1} << 31))
    throw std::invalid_argument("couring: buffer_pool: size must be 1..2^31 bytes");
  state_ = new detail::pool_state(ctx.ring(), count, size);
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
unsigned buffer_pool::group_id() const noexcept {
  return state_ != nullptr ? state_->bgid_ : 0;
}

} // namespace couring
