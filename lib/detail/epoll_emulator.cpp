#include "epoll_emulator.hpp"

#include <algorithm>
#include <cerrno>
#include <ctime>
#include <limits>
#include <new>
#include <system_error>
#include <utility>

#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

namespace couring::detail {

namespace {

constexpr std::size_t no_index = std::numeric_limits<std::size_t>::max();
constexpr std::uint32_t input_events = EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR;
// How many CQEs a multishot request posts in a row before others get a turn
// (and the CQEs get reaped: a listener pauses its multishot accept when it
// has accepted far ahead, as the kernel lets it).
constexpr int multishot_batch = 32;
constexpr std::uint32_t output_events = EPOLLOUT | EPOLLHUP | EPOLLERR;

// A syscall's return value as a CQE's res.
int sys_res(long n) noexcept {
  return n < 0 ? -errno : static_cast<int>(n);
}

std::int64_t clock_ns(clockid_t c) noexcept {
  timespec ts{};
  clock_gettime(c, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

unsigned round_up_pow2(unsigned n) noexcept {
  unsigned p = 1;
  while (p < n)
    p <<= 1;
  return p;
}

// The monotonic deadline of a TIMEOUT or LINK_TIMEOUT SQE. Absolute times on
// another clock are converted once, at submission (a later jump of that clock
// is not followed: documented in docs/design.md).
std::int64_t deadline_of(const io_uring_sqe& sqe) noexcept {
  const auto* ts = reinterpret_cast<const __kernel_timespec*>(sqe.addr);
  const std::int64_t ns =
      ts == nullptr ? 0 : static_cast<std::int64_t>(ts->tv_sec) * 1'000'000'000 + ts->tv_nsec;
  const std::int64_t now = clock_ns(CLOCK_MONOTONIC);
  if ((sqe.timeout_flags & IORING_TIMEOUT_ABS) == 0)
    return now + std::max<std::int64_t>(ns, 0);
  clockid_t c = CLOCK_MONOTONIC;
  if (sqe.timeout_flags & IORING_TIMEOUT_REALTIME)
    c = CLOCK_REALTIME;
  else if (sqe.timeout_flags & IORING_TIMEOUT_BOOTTIME)
    c = CLOCK_BOOTTIME;
  return c == CLOCK_MONOTONIC ? ns : now + (ns - clock_ns(c));
}

// Requests whose short result breaks an IOSQE_IO_LINK chain, as in the kernel.
bool short_breaks_link(std::uint8_t opcode) noexcept {
  switch (opcode) {
  case IORING_OP_READ:
  case IORING_OP_WRITE:
  case IORING_OP_READV:
  case IORING_OP_WRITEV:
  case IORING_OP_READ_FIXED:
  case IORING_OP_WRITE_FIXED:
  case IORING_OP_SPLICE:
    return true;
  default:
    return false;
  }
}

} // namespace

// One request that could not finish at submission (or an IO_LINK successor
// not started yet): a copy of its SQE (the SQ slot is reused at once) and its
// place in the wait structures.
struct epoll_emulator::request {
  std::uint64_t lt_ud = 0;   // user_data of its linked timeout, if has_lt
  std::int64_t deadline = 0; // TIMEOUT, or the linked timeout's
  int res = 0;
  std::uint32_t cflags = 0;
  bool has_lt = false;
  bool connecting = false; // CONNECT: in progress, ask SO_ERROR next
  bool pooled = false;     // from the pool (not a temporary at submission)
  bool in_waiting = false; // in waiting_head_'s list
  bool in_again = false;   // in again_head_'s list (through again_next)
  int dir = -1;            // fd list it is on, -1 none
  std::size_t heap_index = no_index;
  request* next = nullptr; // fd list, or free list
  request* prev = nullptr;
  request* all_next = nullptr; // every parked request
  request* all_prev = nullptr;
  request* chain = nullptr; // IO_LINK successors, started when this one succeeds
  request* again_next = nullptr;
  // liburing's SQE ends in a zero-size array (for 128-byte SQEs, never used
  // here), which -Wpedantic flags in any struct; a copy is still exact.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpedantic"
  io_uring_sqe sqe{};
#pragma GCC diagnostic pop
};

epoll_emulator::epoll_emulator(io_uring& r, unsigned sq_entries, unsigned cq_entries) : ring_(&r) {
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0)
    throw std::system_error(errno, std::system_category(), "couring: epoll_create1");
  try {
    const unsigned sq = round_up_pow2(std::max(sq_entries, 2u));
    const unsigned cq = round_up_pow2(std::max(cq_entries, sq));
    sqes_ = std::make_unique<io_uring_sqe[]>(sq);
    cqes_ = std::make_unique<io_uring_cqe[]>(cq);
    overflow_.reserve(64);
    heap_.reserve(64);
    fds_.resize(256);
    r = io_uring{};
    r.ring_fd = -1;
    r.enter_ring_fd = -1;
    r.sq.khead = &sq_head_;
    r.sq.ktail = &sq_tail_;
    r.sq.sqes = sqes_.get();
    r.sq.ring_mask = sq - 1;
    r.sq.ring_entries = sq;
    r.cq.khead = &cq_head_;
    r.cq.ktail = &cq_tail_;
    r.cq.cqes = cqes_.get();
    r.cq.ring_mask = cq - 1;
    r.cq.ring_entries = cq;
    cq_mask_ = cq - 1;
  } catch (...) {
    ::close(epfd_);
    throw;
  }
}

epoll_emulator::~epoll_emulator() {
  // Only the epoll instance goes: a descriptor's registration must not be
  // deleted from here (in a fork() child the instance is the parent's too).
  ::close(epfd_);
}

// --- the pool and the wait structures -------------------------------------------

epoll_emulator::request* epoll_emulator::alloc() noexcept {
  if (free_ == nullptr) {
    constexpr std::size_t chunk = 64;
    try {
      chunks_.push_back(std::make_unique<request[]>(chunk));
    } catch (...) {
      return nullptr;
    }
    for (std::size_t i = 0; i < chunk; ++i) {
      chunks_.back()[i].next = free_;
      free_ = &chunks_.back()[i];
    }
  }
  request* r = free_;
  free_ = r->next;
  *r = request{};
  r->pooled = true;
  return r;
}

void epoll_emulator::release(request* r) noexcept {
  r->next = free_;
  free_ = r;
}

bool epoll_emulator::link_fd(request* r, int dir) noexcept {
  const int fd = r->sqe.fd;
  if (fd < 0) {
    r->res = -EBADF;
    return false;
  }
  if (static_cast<std::size_t>(fd) >= fds_.size()) {
    try {
      fds_.resize(std::max<std::size_t>(static_cast<std::size_t>(fd) + 1, fds_.size() * 2));
    } catch (...) {
      r->res = -ENOMEM;
      return false;
    }
  }
  fd_entry& e = fds_[static_cast<std::size_t>(fd)];
  // A poll may be on a descriptor someone else closes and reopens behind
  // our back (the resolver's c-ares sockets): re-arm it every time. For the
  // I/O objects' descriptors, the registration stays until forget().
  if (!e.registered || r->sqe.opcode == IORING_OP_POLL_ADD) {
    epoll_event ev{};
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.fd = fd;
    int rc = epoll_ctl(epfd_, e.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
    if (rc != 0 && errno == EEXIST)
      rc = epoll_ctl(epfd_, EPOLL_CTL_MOD, fd, &ev);
    else if (rc != 0 && errno == ENOENT)
      rc = epoll_ctl(epfd_, EPOLL_CTL_ADD, fd, &ev);
    if (rc != 0) {
      r->res = -errno;
      return false;
    }
    e.registered = true;
  }
  r->dir = dir;
  r->next = nullptr;
  r->prev = e.tail[dir];
  (e.tail[dir] != nullptr ? e.tail[dir]->next : e.head[dir]) = r;
  e.tail[dir] = r;
  return true;
}

void epoll_emulator::unlink_fd(request* r) noexcept {
  fd_entry& e = fds_[static_cast<std::size_t>(r->sqe.fd)];
  const int dir = r->dir;
  (r->prev != nullptr ? r->prev->next : e.head[dir]) = r->next;
  (r->next != nullptr ? r->next->prev : e.tail[dir]) = r->prev;
  r->next = r->prev = nullptr;
  r->dir = -1;
}

void epoll_emulator::heap_sift_up(std::size_t i) noexcept {
  request* r = heap_[i];
  while (i > 0) {
    const std::size_t parent = (i - 1) / 2;
    if (heap_[parent]->deadline <= r->deadline)
      break;
    heap_[i] = heap_[parent];
    heap_[i]->heap_index = i;
    i = parent;
  }
  heap_[i] = r;
  r->heap_index = i;
}

void epoll_emulator::heap_sift_down(std::size_t i) noexcept {
  request* r = heap_[i];
  const std::size_t n = heap_.size();
  for (;;) {
    std::size_t c = 2 * i + 1;
    if (c >= n)
      break;
    if (c + 1 < n && heap_[c + 1]->deadline < heap_[c]->deadline)
      ++c;
    if (r->deadline <= heap_[c]->deadline)
      break;
    heap_[i] = heap_[c];
    heap_[i]->heap_index = i;
    i = c;
  }
  heap_[i] = r;
  r->heap_index = i;
}

void epoll_emulator::heap_push(request* r) noexcept {
  heap_.push_back(r); // reserved and grown amortised: no allocation per timer
  heap_sift_up(heap_.size() - 1);
}

void epoll_emulator::heap_remove(request* r) noexcept {
  const std::size_t i = r->heap_index;
  r->heap_index = no_index;
  request* last = heap_.back();
  heap_.pop_back();
  if (last == r)
    return;
  heap_[i] = last;
  last->heap_index = i;
  heap_sift_up(i);
  heap_sift_down(last->heap_index);
}

// --- CQEs -------------------------------------------------------------------------

bool epoll_emulator::cq_has_room() const noexcept {
  return overflow_.empty() && cq_tail_ - cq_head_ <= cq_mask_;
}

bool epoll_emulator::cq_has_entries() const noexcept {
  return cq_tail_ != cq_head_ || !overflow_.empty();
}

void epoll_emulator::post(std::uint64_t ud, int res, std::uint32_t flags) noexcept {
  if (overflow_.empty() && cq_tail_ - cq_head_ <= cq_mask_) {
    io_uring_cqe& c = cqes_[cq_tail_ & cq_mask_];
    c.user_data = ud;
    c.res = res;
    c.flags = flags;
    io_uring_smp_store_release(&cq_tail_, cq_tail_ + 1);
    return;
  }
  // The CQ is full: keep the CQE, in order, like the kernel's overflow list.
  try {
    overflow_.push_back(io_uring_cqe{.user_data = ud, .res = res, .flags = flags});
  } catch (...) {
    // Out of memory with a full CQ: nothing better than dropping it. The
    // kernel would do the same (and count it in cq.koverflow).
  }
}

void epoll_emulator::flush_overflow() noexcept {
  std::size_t moved = 0;
  while (moved < overflow_.size() && cq_tail_ - cq_head_ <= cq_mask_) {
    cqes_[cq_tail_ & cq_mask_] = overflow_[moved++];
    io_uring_smp_store_release(&cq_tail_, cq_tail_ + 1);
  }
  overflow_.erase(overflow_.begin(), overflow_.begin() + static_cast<std::ptrdiff_t>(moved));
}

// --- submission ------------------------------------------------------------------

void epoll_emulator::submit() noexcept {
  const unsigned mask = ring_->sq.ring_mask;
  unsigned head = sq_head_;
  const unsigned tail = ring_->sq.sqe_tail;
  while (head != tail) {
    request tmp;
    tmp.sqe = sqes_[head++ & mask];
    if ((tmp.sqe.flags & IOSQE_IO_LINK) != 0 && head != tail) {
      const io_uring_sqe& n = sqes_[head & mask];
      if (n.opcode == IORING_OP_LINK_TIMEOUT) {
        ++head;
        tmp.has_lt = true;
        tmp.lt_ud = n.user_data;
        tmp.deadline = deadline_of(n);
      } else {
        // A chain: its successors wait (in pooled records) for it to succeed.
        request** link = &tmp.chain;
        bool more = true;
        while (more && head != tail) {
          const io_uring_sqe& c = sqes_[head++ & mask];
          more = (c.flags & IOSQE_IO_LINK) != 0;
          request* p = alloc();
          if (p == nullptr) {
            post(c.user_data, -ENOMEM, 0);
            continue;
          }
          p->sqe = c;
          *link = p;
          link = &p->chain;
        }
      }
    }
    start(tmp);
  }
  io_uring_smp_store_release(&sq_head_, head);
  sq_tail_ = head;
}

void epoll_emulator::mark_not_ready(int fd, int dir) noexcept {
  if (fd >= 0 && static_cast<std::size_t>(fd) < fds_.size())
    fds_[static_cast<std::size_t>(fd)].maybe_ready[dir] = false;
}

bool epoll_emulator::known_not_ready(const io_uring_sqe& sqe, int& dir) const noexcept {
  switch (sqe.opcode) {
  case IORING_OP_READ:
  case IORING_OP_RECV:
  case IORING_OP_RECVMSG:
  case IORING_OP_ACCEPT:
    dir = 0;
    break;
  case IORING_OP_WRITE:
  case IORING_OP_SEND:
  case IORING_OP_SENDMSG:
    dir = 1;
    break;
  default:
    return false;
  }
  if (sqe.fd < 0 || static_cast<std::size_t>(sqe.fd) >= fds_.size())
    return false;
  const fd_entry& e = fds_[static_cast<std::size_t>(sqe.fd)];
  return e.registered && !e.maybe_ready[dir] && !e.hung_up;
}

void epoll_emulator::start(request& r) noexcept {
  // Attempt first, unless this descriptor said EAGAIN and no edge came since.
  int dir = 0;
  outcome o =
      known_not_ready(r.sqe, dir) ? (dir == 0 ? outcome::wait_in : outcome::wait_out) : perform(r);
  if (o == outcome::wait_in || o == outcome::wait_out)
    mark_not_ready(r.sqe.fd, o == outcome::wait_in ? 0 : 1);
  if (o == outcome::done) {
    complete(&r, r.res, r.cflags);
    return;
  }
  request* p = &r;
  if (!r.pooled) {
    p = alloc();
    if (p == nullptr) {
      complete(&r, -ENOMEM, 0);
      return;
    }
    *p = r;
    p->pooled = true;
  }
  if (o == outcome::wait_timer) {
    heap_push(p);
  } else {
    if (!link_fd(p, o == outcome::wait_out ? 1 : 0)) {
      complete(p, p->res, 0);
      return;
    }
    if (p->has_lt)
      heap_push(p);
  }
  if (o == outcome::again) {
    p->in_again = true;
    p->again_next = again_head_;
    again_head_ = p;
  }
  p->in_waiting = true;
  p->all_prev = nullptr;
  p->all_next = waiting_head_;
  if (waiting_head_ != nullptr)
    waiting_head_->all_prev = p;
  waiting_head_ = p;
  ++waiting_;
}

void epoll_emulator::drop_again(request* r) noexcept {
  for (request** p = &again_head_; *p != nullptr; p = &(*p)->again_next) {
    if (*p == r) {
      *p = r->again_next;
      break;
    }
  }
  r->in_again = false;
  r->again_next = nullptr;
}

void epoll_emulator::complete(request* r, int res, std::uint32_t flags) noexcept {
  if (r->in_again)
    drop_again(r);
  if (r->dir >= 0)
    unlink_fd(r);
  if (r->heap_index != no_index)
    heap_remove(r);
  if (r->in_waiting) {
    (r->all_prev != nullptr ? r->all_prev->all_next : waiting_head_) = r->all_next;
    if (r->all_next != nullptr)
      r->all_next->all_prev = r->all_prev;
    r->in_waiting = false;
    --waiting_;
  }
  const io_uring_sqe& sqe = r->sqe;
  if (sqe.opcode == IORING_OP_SEND_ZC) {
    // The result, then the notification that the buffer is free again (a
    // copying send frees it at once).
    post(sqe.user_data, res, flags | IORING_CQE_F_MORE);
    post(sqe.user_data, 0, IORING_CQE_F_NOTIF);
  } else if (!((sqe.flags & IOSQE_CQE_SKIP_SUCCESS) != 0 && res >= 0)) {
    post(sqe.user_data, res, flags);
  }
  if (r->has_lt) {
    r->has_lt = false;
    post(r->lt_ud, -ECANCELED, 0); // the request won the race
  }
  request* chain = std::exchange(r->chain, nullptr);
  const bool broken =
      res < 0 || (short_breaks_link(sqe.opcode) && static_cast<unsigned>(res) != sqe.len);
  if (r->pooled)
    release(r);
  if (chain == nullptr)
    return;
  if (broken)
    cancel_chain(chain);
  else
    start(*chain);
}

void epoll_emulator::cancel_chain(request* first) noexcept {
  while (first != nullptr) {
    request* next = std::exchange(first->chain, nullptr);
    post(first->sqe.user_data, -ECANCELED, 0);
    release(first);
    first = next;
  }
}

void epoll_emulator::cancel_request(request* r) noexcept {
  complete(r, -ECANCELED, 0);
}

int epoll_emulator::perform_cancel(const io_uring_sqe& sqe) noexcept {
  const unsigned f = sqe.cancel_flags;
  const bool all = (f & (IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_ANY)) != 0;
  int found = 0;
  if ((f & IORING_ASYNC_CANCEL_FD) != 0 && (f & IORING_ASYNC_CANCEL_ANY) == 0) {
    // By descriptor: only its wait lists need looking at.
    if (sqe.fd < 0 || static_cast<std::size_t>(sqe.fd) >= fds_.size())
      return -ENOENT;
    fd_entry& e = fds_[static_cast<std::size_t>(sqe.fd)];
    for (int dir = 0; dir < 2; ++dir) {
      while (request* r = e.head[dir]) {
        cancel_request(r);
        ++found;
        if (!all)
          return 0;
      }
    }
    return found > 0 ? found : -ENOENT;
  }
  for (request* r = waiting_head_; r != nullptr;) {
    request* next = r->all_next;
    if ((f & IORING_ASYNC_CANCEL_ANY) != 0 || r->sqe.user_data == sqe.addr) {
      cancel_request(r);
      ++found;
      if (!all)
        return 0;
    }
    r = next;
  }
  return found > 0 ? found : -ENOENT;
}

// --- the opcodes -----------------------------------------------------------------

epoll_emulator::outcome epoll_emulator::perform(request& r) noexcept {
  const io_uring_sqe& s = r.sqe;
  void* const buf = reinterpret_cast<void*>(s.addr);
  r.cflags = 0;
  long n = 0;
  switch (s.opcode) {
  case IORING_OP_NOP:
    r.res = 0;
    return outcome::done;
  case IORING_OP_READ:
  case IORING_OP_READ_FIXED:
    n = s.off == static_cast<__u64>(-1) ? ::read(s.fd, buf, s.len)
                                        : ::pread(s.fd, buf, s.len, static_cast<off_t>(s.off));
    // The kernel ignores the offset of a stream (FIFO, eventfd, signalfd).
    if (n < 0 && errno == ESPIPE)
      n = ::read(s.fd, buf, s.len);
    if (n < 0 && errno == EAGAIN)
      return outcome::wait_in;
    break;
  case IORING_OP_WRITE:
  case IORING_OP_WRITE_FIXED:
    n = s.off == static_cast<__u64>(-1) ? ::write(s.fd, buf, s.len)
                                        : ::pwrite(s.fd, buf, s.len, static_cast<off_t>(s.off));
    if (n < 0 && errno == ESPIPE)
      n = ::write(s.fd, buf, s.len);
    if (n < 0 && errno == EAGAIN)
      return outcome::wait_out;
    break;
  case IORING_OP_READV:
    n = s.off == static_cast<__u64>(-1)
            ? ::readv(s.fd, static_cast<const iovec*>(buf), static_cast<int>(s.len))
            : ::preadv(s.fd, static_cast<const iovec*>(buf), static_cast<int>(s.len),
                       static_cast<off_t>(s.off));
    if (n < 0 && errno == EAGAIN)
      return outcome::wait_in;
    break;
  case IORING_OP_WRITEV:
    n = s.off == static_cast<__u64>(-1)
            ? ::writev(s.fd, static_cast<const iovec*>(buf), static_cast<int>(s.len))
            : ::pwritev(s.fd, static_cast<const iovec*>(buf), static_cast<int>(s.len),
                        static_cast<off_t>(s.off));
    if (n < 0 && errno == EAGAIN)
      return outcome::wait_out;
    break;
  case IORING_OP_RECV:
    return perform_recv(r);
  case IORING_OP_SEND:
  case IORING_OP_SEND_ZC:
    n = ::send(s.fd, buf, s.len, static_cast<int>(s.msg_flags) | MSG_DONTWAIT);
    if (n < 0 && errno == EAGAIN)
      return outcome::wait_out;
    if (n >= 0 && static_cast<unsigned long>(n) < s.len)
      mark_not_ready(s.fd, 1); // the send buffer is full
    break;
  case IORING_OP_RECVMSG:
    n = ::recvmsg(s.fd, static_cast<msghdr*>(buf), static_cast<int>(s.msg_flags) | MSG_DONTWAIT);
    if (n < 0 && errno == EAGAIN)
      return outcome::wait_in;
    break;
  case IORING_OP_SENDMSG:
    n = ::sendmsg(s.fd, static_cast<const msghdr*>(buf),
                  static_cast<int>(s.msg_flags) | MSG_DONTWAIT);
    if (n < 0 && errno == EAGAIN)
      return outcome::wait_out;
    break;
  case IORING_OP_ACCEPT:
    return perform_accept(r);
  case IORING_OP_CONNECT:
    return perform_connect(r);
  case IORING_OP_POLL_ADD:
    return perform_poll(r);
  case IORING_OP_TIMEOUT:
    if ((s.timeout_flags & IORING_TIMEOUT_UPDATE_MASK) != 0 || s.off != 0) {
      r.res = -EINVAL; // updates and completion counts: not used by couring
      return outcome::done;
    }
    r.deadline = deadline_of(s);
    return outcome::wait_timer;
  case IORING_OP_LINK_TIMEOUT:
    r.res = -EINVAL; // not behind a linked request
    return outcome::done;
  case IORING_OP_ASYNC_CANCEL:
    r.res = perform_cancel(s);
    return outcome::done;
  case IORING_OP_TIMEOUT_REMOVE:
  case IORING_OP_POLL_REMOVE: {
    if ((s.timeout_flags & IORING_TIMEOUT_UPDATE_MASK) != 0 &&
        s.opcode == IORING_OP_TIMEOUT_REMOVE) {
      r.res = -EINVAL;
      return outcome::done;
    }
    io_uring_sqe c{};
    c.addr = s.addr;
    r.res = perform_cancel(c);
    return outcome::done;
  }
  case IORING_OP_SHUTDOWN:
    n = ::shutdown(s.fd, static_cast<int>(s.len));
    break;
  case IORING_OP_CLOSE:
    forget(s.fd);
    n = ::close(s.fd);
    break;
  case IORING_OP_SPLICE:
    // Plain splice on the loop thread: a pipe or socket that is not ready
    // gives EAGAIN, exactly as a non-blocking descriptor does with io_uring
    // (send_file waits for room with a poll then).
    n = ::splice(
        static_cast<int>(s.splice_fd_in),
        s.splice_off_in == static_cast<__u64>(-1) ? nullptr
                                                  : reinterpret_cast<loff_t*>(&r.sqe.splice_off_in),
        s.fd, s.off == static_cast<__u64>(-1) ? nullptr : reinterpret_cast<loff_t*>(&r.sqe.off),
        s.len, s.splice_flags);
    break;
  case IORING_OP_TEE:
    n = ::tee(static_cast<int>(s.splice_fd_in), s.fd, s.len, s.splice_flags);
    break;
  case IORING_OP_OPENAT:
    n = ::openat(s.fd, static_cast<const char*>(buf), static_cast<int>(s.open_flags) | O_LARGEFILE,
                 static_cast<mode_t>(s.len));
    break;
  case IORING_OP_OPENAT2:
    n = ::syscall(SYS_openat2, s.fd, buf, reinterpret_cast<void*>(s.addr2),
                  static_cast<std::size_t>(s.len));
    break;
  case IORING_OP_STATX:
    n = ::statx(s.fd, static_cast<const char*>(buf), static_cast<int>(s.statx_flags), s.len,
                reinterpret_cast<struct statx*>(s.addr2));
    break;
  case IORING_OP_UNLINKAT:
    n = ::unlinkat(s.fd, static_cast<const char*>(buf), static_cast<int>(s.unlink_flags));
    break;
  case IORING_OP_RENAMEAT:
    n = ::renameat2(s.fd, static_cast<const char*>(buf), static_cast<int>(s.len),
                    reinterpret_cast<const char*>(s.addr2), s.rename_flags);
    break;
  case IORING_OP_MKDIRAT:
    n = ::mkdirat(s.fd, static_cast<const char*>(buf), static_cast<mode_t>(s.len));
    break;
  case IORING_OP_FSYNC:
    n = (s.fsync_flags & IORING_FSYNC_DATASYNC) != 0 ? ::fdatasync(s.fd) : ::fsync(s.fd);
    break;
  case IORING_OP_FALLOCATE:
    n = ::fallocate(s.fd, static_cast<int>(s.len), static_cast<off_t>(s.off),
                    static_cast<off_t>(s.addr));
    break;
  case IORING_OP_FADVISE:
    n = ::posix_fadvise(s.fd, static_cast<off_t>(s.off), static_cast<off_t>(s.len),
                        static_cast<int>(s.fadvise_advice));
    r.res = -static_cast<int>(n); // posix_fadvise returns the error
    return outcome::done;
  default:
    // MSG_RING and what couring never emits: an epoll ring has no ring fd.
    r.res = -EOPNOTSUPP;
    return outcome::done;
  }
  r.res = sys_res(n);
  return outcome::done;
}

epoll_emulator::buffer_ring* epoll_emulator::find_buffer_ring(unsigned bgid) noexcept {
  for (buffer_ring& b : buffer_rings_)
    if (b.used && b.bgid == bgid)
      return &b;
  return nullptr;
}

epoll_emulator::outcome epoll_emulator::perform_recv(request& r) noexcept {
  const io_uring_sqe& s = r.sqe;
  const int flags = static_cast<int>(s.msg_flags) | MSG_DONTWAIT;
  if ((s.flags & IOSQE_BUFFER_SELECT) == 0) {
    const long n = ::recv(s.fd, reinterpret_cast<void*>(s.addr), s.len, flags);
    if (n < 0 && errno == EAGAIN)
      return outcome::wait_in;
    // A stream receive that got less than it asked for emptied the queue:
    // the next receive waits for an edge instead of trying (a datagram or
    // an arrival since then brings one).
    if (n > 0 && static_cast<unsigned long>(n) < s.len)
      mark_not_ready(s.fd, 0);
    r.res = sys_res(n);
    r.cflags = 0;
    return outcome::done;
  }
  // Bundles (IORING_RECVSEND_BUNDLE, 1U << 4) are not emulated: refused
  // as a kernel before 6.10 would.
  if ((s.ioprio & (1U << 4)) != 0) {
    r.res = -EINVAL;
    return outcome::done;
  }
  // A buffer from the provided ring, taken only when data is there (a
  // receive that waits holds no buffer, as in the kernel).
  const bool multishot = (s.ioprio & IORING_RECV_MULTISHOT) != 0;
  for (int batch = 0;; ++batch) {
    if (batch == multishot_batch)
      return outcome::again;
    buffer_ring* b = find_buffer_ring(s.buf_group);
    if (b == nullptr) {
      r.res = -ENOBUFS;
      return outcome::done;
    }
    const std::uint16_t tail = io_uring_smp_load_acquire(&b->br->tail);
    if (tail == b->head) {
      r.res = -ENOBUFS;
      return outcome::done;
    }
    const io_uring_buf& buf = b->br->bufs[b->head & (b->entries - 1)];
    std::size_t len = buf.len;
    if (!multishot && s.len != 0)
      len = std::min<std::size_t>(len, s.len);
    const long n = ::recv(s.fd, reinterpret_cast<void*>(buf.addr), len, flags);
    if (n < 0 && errno == EAGAIN)
      return outcome::wait_in;
    if (n <= 0) {
      r.res = sys_res(n); // end of stream or error: no buffer used, the request ends
      return outcome::done;
    }
    ++b->head;
    const std::uint32_t bflags =
        IORING_CQE_F_BUFFER | (static_cast<std::uint32_t>(buf.bid) << IORING_CQE_BUFFER_SHIFT);
    if (!multishot || !cq_has_room()) {
      r.res = static_cast<int>(n);
      r.cflags = bflags;
      return outcome::done;
    }
    post(s.user_data, static_cast<int>(n), bflags | IORING_CQE_F_MORE);
  }
}

epoll_emulator::outcome epoll_emulator::perform_accept(request& r) noexcept {
  const io_uring_sqe& s = r.sqe;
  const bool multishot = (s.ioprio & IORING_ACCEPT_MULTISHOT) != 0;
  for (int batch = 0;; ++batch) {
    if (batch == multishot_batch)
      return outcome::again; // the rest next turn: the CQEs get reaped first
    // Accepted sockets are non-blocking on this backend (documented).
    const int fd =
        ::accept4(s.fd, reinterpret_cast<sockaddr*>(s.addr), reinterpret_cast<socklen_t*>(s.addr2),
                  static_cast<int>(s.accept_flags) | SOCK_NONBLOCK);
    if (fd < 0 && errno == EAGAIN)
      return outcome::wait_in;
    // A multishot request ends, with this result, when the CQ has no room
    // for it (the kernel does not overflow multishot CQEs either): the
    // owner re-arms once it has caught up.
    if (fd < 0 || !multishot || !cq_has_room()) {
      r.res = sys_res(fd);
      return outcome::done;
    }
    // Multishot: one CQE per connection while connections are there.
    post(s.user_data, fd, IORING_CQE_F_MORE);
  }
}

epoll_emulator::outcome epoll_emulator::perform_connect(request& r) noexcept {
  const io_uring_sqe& s = r.sqe;
  const auto* addr = reinterpret_cast<const sockaddr*>(s.addr);
  const auto len = static_cast<socklen_t>(s.off);
  if (r.connecting) {
    int err = 0;
    socklen_t l = sizeof err;
    if (::getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &l) != 0) {
      r.res = -errno;
      return outcome::done;
    }
    if (err != 0) {
      r.res = -err;
      return outcome::done;
    }
  }
  if (::connect(s.fd, addr, len) == 0) {
    r.res = 0;
    return outcome::done;
  }
  const int e = errno;
  if (e == EINPROGRESS || (r.connecting && e == EALREADY)) {
    r.connecting = true;
    return outcome::wait_out;
  }
  r.res = r.connecting && e == EISCONN ? 0 : -e;
  return outcome::done;
}

epoll_emulator::outcome epoll_emulator::perform_poll(request& r) noexcept {
  const io_uring_sqe& s = r.sqe;
  pollfd p{.fd = s.fd, .events = static_cast<short>(s.poll32_events), .revents = 0};
  const int n = ::poll(&p, 1, 0);
  if (n > 0) {
    r.res = p.revents;
    return outcome::done;
  }
  if (n < 0) {
    r.res = -errno;
    return outcome::done;
  }
  return (s.poll32_events & (POLLIN | POLLPRI | POLLRDHUP)) != 0 ? outcome::wait_in
                                                                 : outcome::wait_out;
}

// --- waiting -----------------------------------------------------------------------

void epoll_emulator::retry(int fd, int dir) noexcept {
  if (fd < 0 || static_cast<std::size_t>(fd) >= fds_.size())
    return;
  fd_entry& e = fds_[static_cast<std::size_t>(fd)];
  // Every request waiting now is tried once, in order; what a completion
  // starts on this descriptor (an IO_LINK successor) waits for the next event.
  request* last = e.tail[dir];
  for (request* r = e.head[dir]; r != nullptr;) {
    request* next = r->next;
    const bool was_last = r == last;
    const outcome o = perform(*r);
    if (o == outcome::wait_in || o == outcome::wait_out)
      e.maybe_ready[dir] = false;
    if (o == outcome::done) {
      complete(r, r->res, r->cflags);
    } else if (o == outcome::again && !r->in_again) {
      r->in_again = true;
      r->again_next = again_head_;
      again_head_ = r;
    }
    if (was_last)
      break;
    r = next;
  }
  if (dir == 1) {
    // A poll for input and output at once waits in the input list.
    for (request* r = e.head[0]; r != nullptr;) {
      request* next = r->next;
      if (r->sqe.opcode == IORING_OP_POLL_ADD && (r->sqe.poll32_events & POLLOUT) != 0 &&
          perform(*r) == outcome::done)
        complete(r, r->res, r->cflags);
      r = next;
    }
  }
}

void epoll_emulator::run_again() noexcept {
  request* r = std::exchange(again_head_, nullptr);
  while (r != nullptr) {
    request* next = std::exchange(r->again_next, nullptr);
    r->in_again = false;
    const outcome o = perform(*r);
    if (o == outcome::done) {
      complete(r, r->res, r->cflags);
    } else if (o == outcome::again) {
      r->in_again = true;
      r->again_next = again_head_;
      again_head_ = r;
    }
    r = next;
  }
}

void epoll_emulator::run_timers() noexcept {
  if (heap_.empty())
    return;
  const std::int64_t now = clock_ns(CLOCK_MONOTONIC);
  while (!heap_.empty() && heap_.front()->deadline <= now) {
    request* r = heap_.front();
    if (r->sqe.opcode == IORING_OP_TIMEOUT) {
      complete(r, -ETIME, 0);
      continue;
    }
    // A linked timeout fired first: the request is cancelled, the timeout
    // reports -ETIME (the kernel's results for this order).
    r->has_lt = false;
    post(r->lt_ud, -ETIME, 0);
    complete(r, -ECANCELED, 0);
  }
}

void epoll_emulator::wait_events(std::int64_t max_ns) noexcept {
  // max_ns: 0 polls, < 0 waits for as long as needed; a timer shortens both.
  if (!heap_.empty()) {
    const std::int64_t until = heap_.front()->deadline - clock_ns(CLOCK_MONOTONIC);
    max_ns = max_ns < 0 ? std::max<std::int64_t>(until, 0)
                        : std::min(max_ns, std::max<std::int64_t>(until, 0));
  }
  if (max_ns == 0 && waiting_ == heap_.size()) {
    // Nobody waits for a descriptor: nothing to ask epoll.
    run_timers();
    return;
  }
  epoll_event events[128];
  timespec ts{.tv_sec = max_ns / 1'000'000'000, .tv_nsec = max_ns % 1'000'000'000};
  const int n = epoll_pwait2(epfd_, events, 128, max_ns < 0 ? nullptr : &ts, nullptr);
  ++waits_;
  for (int i = 0; i < n; ++i) {
    const int fd = events[i].data.fd;
    const std::uint32_t ev = events[i].events;
    if (fd >= 0 && static_cast<std::size_t>(fd) < fds_.size()) {
      fd_entry& e = fds_[static_cast<std::size_t>(fd)];
      e.maybe_ready[0] |= (ev & input_events) != 0;
      e.maybe_ready[1] |= (ev & output_events) != 0;
      e.hung_up |= (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0;
    }
    if ((ev & input_events) != 0)
      retry(fd, 0);
    if ((ev & output_events) != 0)
      retry(fd, 1);
  }
  run_timers();
}

void epoll_emulator::enter(bool wait) noexcept {
  submit();
  run_again();
  flush_overflow();
  wait_events(!wait || cq_has_entries() || again_head_ != nullptr ? 0 : -1);
  flush_overflow();
}

void epoll_emulator::enter_for(std::int64_t max_wait_ns) noexcept {
  submit();
  run_again();
  flush_overflow();
  wait_events(cq_has_entries() || again_head_ != nullptr ? 0 : max_wait_ns);
  flush_overflow();
}

void epoll_emulator::forget(int fd) noexcept {
  if (fd < 0 || static_cast<std::size_t>(fd) >= fds_.size())
    return;
  fd_entry& e = fds_[static_cast<std::size_t>(fd)];
  if (!e.registered)
    return;
  epoll_ctl(epfd_, EPOLL_CTL_DEL, fd, nullptr);
  e.registered = false;
  e.maybe_ready[0] = e.maybe_ready[1] = true;
  e.hung_up = false;
  // Nothing waits on a descriptor being released (the ring releases it
  // after its last request completed); a raw CLOSE request might leave some.
  for (int dir = 0; dir < 2; ++dir)
    while (request* r = e.head[dir])
      complete(r, -EBADF, 0);
}

int epoll_emulator::register_buffer_ring(const io_uring_buf_reg& reg) {
  // No flag is emulated (IOU_PBUF_RING_INC, IOU_PBUF_RING_MMAP): refused
  // as a kernel that lacks them would, so that the pool falls back.
  if (reg.pad != 0 || reg.ring_entries == 0 || (reg.ring_entries & (reg.ring_entries - 1)) != 0 ||
      reg.ring_addr == 0)
    return -EINVAL;
  if (find_buffer_ring(reg.bgid) != nullptr)
    return -EEXIST;
  buffer_ring b{.bgid = reg.bgid,
                .br = reinterpret_cast<io_uring_buf_ring*>(reg.ring_addr),
                .entries = reg.ring_entries,
                .head = 0,
                .used = true};
  for (buffer_ring& slot : buffer_rings_) {
    if (!slot.used) {
      slot = b;
      return 0;
    }
  }
  buffer_rings_.push_back(b);
  return 0;
}

int epoll_emulator::unregister_buffer_ring(unsigned bgid) {
  buffer_ring* b = find_buffer_ring(bgid);
  if (b == nullptr)
    return -EINVAL;
  b->used = false;
  return 0;
}

} // namespace couring::detail
