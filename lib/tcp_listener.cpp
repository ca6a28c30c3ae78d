#include <couring/tcp_listener.hpp>

#include <algorithm>

#include <sys/socket.h>
#include <unistd.h>

#include <couring/detail/io_awaitable.hpp>
#include <couring/detail/socket.hpp>

namespace couring {

namespace {
// More connections than this accepted ahead with nobody taking them: stop
// accepting until the queue drains (the kernel's backlog holds the rest).
constexpr std::size_t max_queued = 128;
constexpr unsigned first_backoff_ms = 10;
constexpr unsigned max_backoff_ms = 1000;

bool is_error(int res) {
  return res < 0;
}
} // namespace

// --- tcp_listener -----------------------------------------------------------

tcp_listener::tcp_listener() noexcept = default;

tcp_listener::tcp_listener(detail::acceptor* a, const endpoint& local) noexcept
    : acceptor_(a), ctx_(&a->context()), local_(local) {}

tcp_listener::tcp_listener(tcp_listener&& other) noexcept
    : acceptor_(std::exchange(other.acceptor_, nullptr)), ctx_(other.ctx_), local_(other.local_) {}

tcp_listener& tcp_listener::operator=(tcp_listener&& other) noexcept {
  if (this != &other) {
    close();
    acceptor_ = std::exchange(other.acceptor_, nullptr);
    ctx_ = other.ctx_;
    local_ = other.local_;
  }
  return *this;
}

tcp_listener::~tcp_listener() {
  close();
}

result<tcp_listener> tcp_listener::bind(io_context& ctx, const endpoint& local,
                                        listen_options options) {
  auto fd = detail::open_stream_socket(local.family());
  if (!fd)
    return fd.error();
  auto fail = [&](std::error_code ec) -> result<tcp_listener> {
    ::close(*fd);
    return ec;
  };
  if (options.reuse_address) {
    if (auto r = detail::set_socket_flag(*fd, SOL_SOCKET, SO_REUSEADDR, true); !r)
      return fail(r.error());
  }
  if (options.reuse_port) {
    if (auto r = detail::set_socket_flag(*fd, SOL_SOCKET, SO_REUSEPORT, true); !r)
      return fail(r.error());
  }
  if (auto r = detail::bind_socket(*fd, local); !r)
    return fail(r.error());
  if (::listen(*fd, options.backlog) != 0)
    return fail(std::error_code(errno, std::system_category()));
  // Port 0 asked the kernel to choose: report what it chose.
  auto bound = detail::socket_name(*fd, false);
  if (!bound)
    return fail(bound.error());
  return tcp_listener(new detail::acceptor(ctx, *fd), *bound);
}

tcp_listener::accept_awaitable tcp_listener::accept() noexcept {
  accept_awaitable a(acceptor_);
  if (a.ctx == nullptr)
    a.ctx = ctx_; // closed: the accept fails with EBADF, but knows its context
  return a;
}

bool tcp_listener::is_open() const noexcept {
  return acceptor_ != nullptr;
}

int tcp_listener::native_handle() const noexcept {
  return acceptor_ != nullptr ? acceptor_->fd() : -1;
}

void tcp_listener::close() noexcept {
  if (acceptor_ != nullptr)
    std::exchange(acceptor_, nullptr)->close_and_release();
}

// --- accept_awaitable ---------------------------------------------------------

tcp_listener::accept_awaitable::accept_awaitable(detail::acceptor* a) noexcept : acceptor_(a) {
  this->ctx = a != nullptr ? &a->context() : nullptr;
  this->on_complete = &detail::resume_waiter;
}

tcp_listener::accept_awaitable::accept_awaitable(accept_awaitable&& other) noexcept
    : acceptor_(other.acceptor_) {
  // Only what is set before the await: res and friends are not yet.
  this->ctx = other.ctx;
  this->on_complete = other.on_complete;
  assert(!other.linked_ && "an accept awaitable moved while waiting");
}

tcp_listener::accept_awaitable::~accept_awaitable() {
  if (linked_)
    acceptor_->remove_waiter(this); // the frame goes away while waiting (teardown)
}

bool tcp_listener::accept_awaitable::await_ready() noexcept {
  if (acceptor_ == nullptr) {
    this->res = -EBADF;
    return true;
  }
  return acceptor_->try_take(this->res);
}

bool tcp_listener::accept_awaitable::start(std::coroutine_handle<> awaiting,
                                           detail::cancel_scope* s) {
  this->scope = s;
  if (acceptor_ == nullptr) {
    this->res = -EBADF;
    return false;
  }
  if (acceptor_->try_take(this->res))
    return false;
  if (s != nullptr && s->cancelled()) {
    this->res = -ECANCELED;
    return false;
  }
  this->waiter = awaiting;
  acceptor_->add_waiter(this);
  if (s != nullptr)
    s->set_current(this);
  return true;
}

result<tcp_stream> tcp_listener::accept_awaitable::await_resume() noexcept {
  if (this->res < 0)
    return errno_code(this->res);
  return tcp_stream(*this->ctx, this->res);
}

// --- acceptor -------------------------------------------------------------------

namespace detail {

acceptor::acceptor(io_context& ctx, int fd) noexcept
    : ctx_(&ctx), fd_(fd), multishot_(ctx.multishot_accept_supported()) {
  accept_op_.ctx = &ctx;
  accept_op_.owner = this;
  accept_op_.on_complete = &on_accept;
  backoff_op_.ctx = &ctx;
  backoff_op_.owner = this;
  backoff_op_.on_complete = &on_backoff;
}

bool acceptor::try_take(int& result) noexcept {
  if (ready_.empty())
    return false;
  result = ready_.front();
  ready_.pop_front();
  return true;
}

void acceptor::add_waiter(tcp_listener::accept_awaitable* w) {
  // Arm first: if that throws, nothing is linked that could be resumed later.
  if (!accept_armed_ && !backoff_armed_)
    arm();
  w->cancel_fn = &on_waiter_cancel;
  w->prev_ = last_waiter_;
  w->next_ = nullptr;
  if (last_waiter_ != nullptr)
    last_waiter_->next_ = w;
  else
    first_waiter_ = w;
  last_waiter_ = w;
  w->linked_ = true;
  ctx_->count_parked(+1);
}

void acceptor::remove_waiter(tcp_listener::accept_awaitable* w) noexcept {
  if (!w->linked_)
    return;
  if (w->prev_ != nullptr)
    w->prev_->next_ = w->next_;
  else
    first_waiter_ = w->next_;
  if (w->next_ != nullptr)
    w->next_->prev_ = w->prev_;
  else
    last_waiter_ = w->prev_;
  w->prev_ = w->next_ = nullptr;
  w->linked_ = false;
  ctx_->count_parked(-1);
}

void acceptor::arm() {
  io_uring_sqe* sqe = ctx_->get_sqe();
  if (multishot_)
    io_uring_prep_multishot_accept(sqe, fd_, nullptr, nullptr, SOCK_CLOEXEC);
  else
    io_uring_prep_accept(sqe, fd_, nullptr, nullptr, SOCK_CLOEXEC);
  ctx_->arm(sqe, &accept_op_);
  ctx_->count_internal(+1);
  accept_armed_ = true;
  paused_ = false;
}

void acceptor::complete(tcp_listener::accept_awaitable* w, int res) noexcept {
  remove_waiter(w);
  w->res = res;
  resume_waiter(w);
}

void acceptor::on_accept(operation* op) noexcept {
  acceptor* self = static_cast<accept_record*>(op)->owner;
  const int res = op->res;
  const bool more = (op->cqe_flags & IORING_CQE_F_MORE) != 0;
  if (!more) {
    self->accept_armed_ = false;
    self->ctx_->count_internal(-1);
  }
  if (self->ctx_->shutting_down()) {
    if (res >= 0)
      ::close(res); // nobody will take it
    self->maybe_delete();
    return;
  }
  // A resumed waiter may close the listener: do not delete this meanwhile.
  self->dispatching_ = true;
  if (res >= 0) {
    self->backoff_ms_ = 0;
    if (self->released_)
      ::close(res);
    else if (self->first_waiter_ != nullptr)
      self->complete(self->first_waiter_, res);
    else {
      self->ready_.push_back(res);
      if (more && self->ready_.size() >= max_queued && !self->paused_) {
        self->paused_ = true; // accepted far ahead: let the backlog hold the rest
        self->ctx_->cancel(&self->accept_op_);
      }
    }
  } else if (res == -ECANCELED && (self->released_ || self->paused_)) {
    // Our own cancellation: closing, or pausing.
  } else if (!self->released_) {
    // EMFILE, ENFILE, ENOMEM, ENOBUFS or anything else: wait before trying
    // again, so that a persistent error never spins -- the back-off is armed
    // before the error is handed to a waiter, whose next accept() must find
    // it armed -- and say so once.
    if (!self->accept_armed_ && !self->backoff_armed_) {
      self->backoff_ms_ = self->backoff_ms_ == 0 ? first_backoff_ms
                                                 : std::min(self->backoff_ms_ * 2, max_backoff_ms);
      self->backoff_op_.ts = to_timespec(std::chrono::milliseconds(self->backoff_ms_));
      try {
        io_uring_sqe* sqe = self->ctx_->get_sqe();
        io_uring_prep_timeout(sqe, &self->backoff_op_.ts, 0, 0);
        self->ctx_->arm(sqe, &self->backoff_op_);
        self->ctx_->count_internal(+1);
        self->backoff_armed_ = true;
      } catch (...) {
        self->fail_all_waiters(ENOMEM);
      }
    }
    if (self->first_waiter_ != nullptr)
      self->complete(self->first_waiter_, res);
    else if (self->ready_.empty() || !is_error(self->ready_.back()))
      self->ready_.push_back(res);
  }
  // The request ended and someone still waits: arm it again.
  if (!self->accept_armed_ && !self->backoff_armed_ && !self->released_ &&
      self->first_waiter_ != nullptr) {
    try {
      self->arm();
    } catch (...) {
      self->fail_all_waiters(ENOMEM);
    }
  }
  self->dispatching_ = false;
  self->maybe_delete();
}

void acceptor::on_backoff(operation* op) noexcept {
  acceptor* self = static_cast<backoff_record*>(op)->owner;
  self->backoff_armed_ = false;
  self->ctx_->count_internal(-1);
  if (!self->ctx_->shutting_down() && !self->released_ && !self->accept_armed_ &&
      self->first_waiter_ != nullptr) {
    try {
      self->arm();
    } catch (...) {
      self->fail_all_waiters(ENOMEM);
    }
  }
  self->maybe_delete();
}

void acceptor::end_waiter(tcp_listener::accept_awaitable* w, int err) noexcept {
  remove_waiter(w);
  w->res = -err;
  if (w->scope != nullptr)
    w->scope->clear_current(w);
  // Resumed on the next turn: whoever ends it is in the middle of something
  // (a cancellation, a close).
  if (!ctx_->shutting_down())
    ctx_->post(w->waiter);
}

void acceptor::on_waiter_cancel(operation* op) noexcept {
  auto* w = static_cast<tcp_listener::accept_awaitable*>(op);
  w->acceptor_->end_waiter(w, ECANCELED);
}

void acceptor::fail_all_waiters(int err) noexcept {
  while (first_waiter_ != nullptr)
    end_waiter(first_waiter_, err);
}

void acceptor::close_and_release() noexcept {
  released_ = true;
  fail_all_waiters(ECANCELED);
  for (int fd : ready_)
    if (fd >= 0)
      ::close(fd);
  ready_.clear();
  if (backoff_armed_)
    ctx_->cancel(&backoff_op_);
  // Cancels the accept request by descriptor, then closes the socket.
  ctx_->close_fd(std::exchange(fd_, -1));
  maybe_delete();
}

void acceptor::maybe_delete() noexcept {
  if (released_ && !accept_armed_ && !backoff_armed_ && !dispatching_)
    delete this;
}

} // namespace detail

} // namespace couring
