// Name resolution with c-ares, driven by the context's own ring.
//
// How c-ares is driven
// --------------------
// - One c-ares channel per io_context, made on the first resolve (or after
//   configure_resolver) and kept until the context is destroyed. An idle
//   channel holds no socket and no request: c-ares closes its sockets when
//   its last query ends (we never set ARES_FLAG_STAYOPEN), and the timer is
//   cancelled when c-ares has no deadline left. So keeping it costs nothing
//   but memory, and saves re-reading resolv.conf for every name.
// - c-ares says which of its sockets it wants to read or write through the
//   socket-state callback. For each such socket we keep one one-shot
//   IORING_OP_POLL_ADD in flight; when it completes we call ares_process_fd
//   for what became ready and re-arm it if c-ares still wants the socket.
//   When the wanted events change while a poll is armed, the poll is
//   cancelled and re-armed from its completion.
// - c-ares' retry deadlines: after every call into c-ares, ares_timeout says
//   when it next wants to run; one IORING_OP_TIMEOUT is kept armed for the
//   earliest deadline (cancelled and re-armed when an earlier one comes, and
//   cancelled when no query is left). When it fires, ares_process_fd with no
//   descriptor runs c-ares' timeouts.
// - Nothing is resumed from inside c-ares: a query's callback only records
//   the outcome and posts the waiting coroutine to the next loop turn, so
//   c-ares is never re-entered from its own callbacks.
// - No threads: c-ares makes system calls of its own only on non-blocking
//   sockets (through the socket functions below) and reads /etc/hosts,
//   /etc/resolv.conf and /etc/services, which are small local files.
//
// The close rule
// --------------
// A poll request on a descriptor is a request in flight like any other: if
// c-ares closed the descriptor while our poll was armed, the number could be
// handed to a new socket (c-ares' next one, or anyone's) and the old poll
// would watch -- or be cancelled on -- somebody else's descriptor. So c-ares
// never closes a descriptor itself: ares_set_socket_functions gives it our
// socket/close/connect/recvfrom/sendv. Each socket c-ares opens gets a state
// record (detail::object_handle), exactly like a stream's; the polls on it
// are operations of that record. c-ares' close becomes close_object: the
// record is marked closed, its poll cancelled, and the descriptor closed only
// after the poll's CQE has been reaped. Until then the number stays taken, so
// nothing else can get it. The watch record itself is freed once its poll
// is no longer in flight.
//
// Cancellation
// ------------
// c-ares 1.18 (Debian 12) has no per-query cancel, only ares_cancel for the
// whole channel. Cancelling one resolution therefore cancels the channel's
// queries and starts the other pending resolutions again at once (their
// retry timers restart; their results are not affected). A cancelled
// resolution resumes with operation_canceled on the next loop turn.

#include <couring/resolve.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>

#include <ares.h>
#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <couring/detail/cancel_scope.hpp>
#include <couring/detail/ring.hpp>

namespace couring {

// --- errors -------------------------------------------------------------------

namespace {

class resolve_category_impl final : public std::error_category {
public:
  const char* name() const noexcept override { return "couring.resolve"; }
  std::string message(int value) const override {
    switch (static_cast<resolve_error>(value)) {
    case resolve_error::no_such_name:
      return "no such host name";
    case resolve_error::no_address:
      return "the name has no address of the requested family";
    case resolve_error::server_failure:
      return "the name server failed (SERVFAIL)";
    case resolve_error::refused:
      return "the name server refused the query";
    case resolve_error::timed_out:
      return "no name server answered in time";
    case resolve_error::bad_name:
      return "not a valid host name (or host:port)";
    case resolve_error::bad_response:
      return "the name server's answer is malformed";
    case resolve_error::unreachable:
      return "no name server could be reached";
    case resolve_error::unknown_service:
      return "unknown service (neither a port number nor a known service name)";
    case resolve_error::not_supported:
      return "address family or query not supported by the resolver";
    case resolve_error::no_memory:
      return "out of memory while resolving";
    case resolve_error::configuration:
      return "the resolver could not be set up (resolv.conf or server list)";
    case resolve_error::shut_down:
      return "the io_context was destroyed while resolving";
    case resolve_error::other:
      break;
    }
    return "name resolution failed";
  }
  std::error_condition default_error_condition(int value) const noexcept override {
    switch (static_cast<resolve_error>(value)) {
    case resolve_error::timed_out:
      return std::errc::timed_out;
    case resolve_error::refused:
    case resolve_error::unreachable:
      return std::errc::connection_refused;
    case resolve_error::bad_name:
      return std::errc::invalid_argument;
    case resolve_error::no_memory:
      return std::errc::not_enough_memory;
    case resolve_error::not_supported:
      return std::errc::address_family_not_supported;
    default:
      return {value, *this};
    }
  }
};

std::error_code from_ares(int status) noexcept {
  switch (status) {
  case ARES_ENODATA:
    return resolve_error::no_address;
  case ARES_ESERVFAIL:
    return resolve_error::server_failure;
  case ARES_ENOTFOUND:
    return resolve_error::no_such_name;
  case ARES_EREFUSED:
    return resolve_error::refused;
  case ARES_ETIMEOUT:
    return resolve_error::timed_out;
  case ARES_EBADNAME:
  case ARES_EBADQUERY:
  case ARES_EBADSTR:
  case ARES_ENONAME:
    return resolve_error::bad_name;
  case ARES_EFORMERR:
  case ARES_EBADRESP:
    return resolve_error::bad_response;
  case ARES_ECONNREFUSED:
    return resolve_error::unreachable;
  case ARES_ESERVICE:
    return resolve_error::unknown_service;
  case ARES_ENOTIMP:
  case ARES_EBADFAMILY:
  case ARES_EBADFLAGS:
  case ARES_EBADHINTS:
    return resolve_error::not_supported;
  case ARES_ENOMEM:
    return resolve_error::no_memory;
  case ARES_EFILE:
  case ARES_EOF:
  case ARES_ENOTINITIALIZED:
    return resolve_error::configuration;
  case ARES_EDESTRUCTION:
    return resolve_error::shut_down;
  case ARES_ECANCELLED:
    return std::make_error_code(std::errc::operation_canceled);
  default:
    return resolve_error::other;
  }
}

} // namespace

const std::error_category& resolve_category() noexcept {
  static const resolve_category_impl category;
  return category;
}

// --- the per-context resolver -------------------------------------------------

namespace detail {
namespace {

class resolver_service;

// One resolution: the operation a resolving coroutine waits on. It is not a
// kernel request; it is parked in the ring's count while c-ares works on it,
// and its cancel_fn is how a cancel scope reaches it.
struct resolve_op : operation {
  enum class state { idle, starting, pending, done };

  resolver_service* service = nullptr;
  std::string host;
  std::string service_name;
  int family = AF_UNSPEC;
  state st = state::idle;
  bool parked = false;  // counted as parked in the ring
  bool restart = false; // cancelled only because another query was: start again
  int status = ARES_SUCCESS;
  ares_addrinfo* ai = nullptr;
  resolve_op* prev_pending = nullptr;
  resolve_op* next_pending = nullptr;

  resolve_op() = default;
  resolve_op(const resolve_op&) = delete;
  resolve_op& operator=(const resolve_op&) = delete;
  ~resolve_op();

  bool await_ready() const noexcept { return false; }
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> awaiting) {
    return start(awaiting, scope_of(awaiting));
  }
  void await_resume() const noexcept {}

  bool start(std::coroutine_handle<> awaiting, cancel_scope* s);
  result<std::vector<endpoint>> take();
};

// A socket c-ares opened, and the poll request that watches it.
struct watched_socket {
  struct poll_op : operation {
    watched_socket* owner = nullptr;
  };

  resolver_service* service = nullptr;
  object_handle handle; // owns the descriptor: closing defers to in-flight polls
  int fd = -1;          // the number c-ares knows it by
  poll_op poll;
  bool want_read = false;
  bool want_write = false;
  bool closed = false;         // c-ares closed it (the descriptor may still be open)
  bool poll_in_flight = false; // a POLL_ADD whose CQE is not in yet
  bool cancel_sent = false;    // that poll was asked to stop (events changed)
  bool processing = false;     // inside ares_process_fd for this socket
  unsigned armed_events = 0;
};

class resolver_service final : public context_service {
public:
  explicit resolver_service(io_context& ctx) : ring_(&ctx.ring()) {
    timer_.owner = this;
    timer_.owner_ring = ring_;
    timer_.on_complete = &timer_done;
    timer_.on_abandon = [](operation* op) noexcept {
      static_cast<timer_op*>(op)->owner->timer_in_flight_ = false;
    };
  }
  ~resolver_service() override {
    destroy_channel();
    // Sockets still watched here have a poll that will never be reaped (a
    // failed ring); their records go with us.
  }

  static resolver_service& of(io_context& ctx) {
    auto& slot = ctx.resolver_slot();
    if (!slot)
      slot = std::make_unique<resolver_service>(ctx);
    return static_cast<resolver_service&>(*slot);
  }

  ring& owner_ring() const noexcept { return *ring_; }

  result<void> configure(resolver_options options) {
    if (pending_head_ != nullptr)
      return std::make_error_code(std::errc::device_or_resource_busy);
    destroy_channel();
    options_ = std::move(options);
    return ensure_channel();
  }

  // Hands op to c-ares; its callback may run before this returns.
  void submit(resolve_op* op) {
    if (auto r = ensure_channel(); !r) {
      op->status = r.error() == resolve_error::no_memory ? ARES_ENOMEM : ARES_EFILE;
      op->st = resolve_op::state::done;
      return;
    }
    link(op);
    issue(op);
    after_call();
  }

  // Cancels op (resume says whether its coroutine is posted: not when its
  // frame is being destroyed). Every other pending resolution starts again.
  void cancel(resolve_op* op, bool resume) noexcept {
    if (op->st != resolve_op::state::pending)
      return;
    for (resolve_op* o = pending_head_; o != nullptr; o = o->next_pending)
      o->restart = (o != op) && !ring_->draining();
    op->restart = false;
    op->status = ARES_ECANCELLED;
    finish_op(op, resume);
    if (channel_ != nullptr) {
      // Every query of the channel ends here, synchronously, through
      // on_result: op's is ignored (op is no longer pending), the others are
      // marked for a restart.
      ares_cancel(channel_);
    }
    restart_marked();
    after_call();
  }

  // c-ares calls these through the socket functions and state callback.
  ares_socket_t open_socket(int domain, int type, int protocol) noexcept {
    const int fd = ::socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, protocol);
    if (fd < 0)
      return ARES_SOCKET_BAD;
    std::unique_ptr<watched_socket> w;
    try {
      w = std::make_unique<watched_socket>();
    } catch (...) {
      ::close(fd);
      errno = ENOMEM;
      return ARES_SOCKET_BAD;
    }
    try {
      // From here the record owns fd: a failure below closes it through
      // the record (object_handle closes it if it cannot adopt it).
      w->handle = object_handle(*ring_, fd);
      w->service = this;
      w->fd = fd;
      w->poll.owner = w.get();
      w->poll.owner_ring = ring_;
      w->poll.object = w->handle.state();
      w->poll.on_complete = &poll_done;
      w->poll.on_abandon = &poll_abandoned;
      sockets_.push_back(std::move(w));
    } catch (...) {
      errno = ENOMEM;
      return ARES_SOCKET_BAD;
    }
    return fd;
  }

  int close_socket(ares_socket_t fd) noexcept {
    watched_socket* w = find(fd);
    if (w == nullptr)
      return ::close(fd); // not one of ours (cannot happen); do what c-ares would
    w->closed = true;
    w->want_read = w->want_write = false;
    // The descriptor is closed once no poll on it is in flight (now, if none is).
    w->handle.close();
    reap_socket(w);
    return 0;
  }

  void socket_state(ares_socket_t fd, bool readable, bool writable) noexcept {
    watched_socket* w = find(fd);
    if (w == nullptr)
      return;
    w->want_read = readable;
    w->want_write = writable;
    if (!w->processing)
      update_poll(w);
  }

private:
  struct timer_op : operation {
    resolver_service* owner = nullptr;
  };

  result<void> ensure_channel() {
    if (channel_ != nullptr)
      return {};
    static std::once_flag library_once;
    static int library_status = ARES_SUCCESS;
    std::call_once(library_once, [] { library_status = ares_library_init(ARES_LIB_INIT_ALL); });
    if (library_status != ARES_SUCCESS)
      return from_ares(library_status);

    ares_options o{};
    int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_LOOKUPS | ARES_OPT_FLAGS;
    o.sock_state_cb = &state_callback;
    o.sock_state_cb_data = this;
    char lookups_hosts_first[] = "fb";
    char lookups_dns_only[] = "b";
    o.lookups = options_.hosts_file ? lookups_hosts_first : lookups_dns_only;
    // NOCHECKRESP: a SERVFAIL or REFUSED answer ends the query with that
    // error. Without it c-ares 1.18 moves on to the next server and, when
    // none is left, reports "connection refused" -- losing what the server
    // said. The price: such an answer is not retried on another server.
    o.flags = ARES_FLAG_NOCHECKRESP | (options_.search_domains ? 0 : ARES_FLAG_NOSEARCH);
    if (options_.timeout.count() > 0) {
      mask |= ARES_OPT_TIMEOUTMS;
      o.timeout = static_cast<int>(options_.timeout.count());
    }
    if (options_.tries > 0) {
      mask |= ARES_OPT_TRIES;
      o.tries = options_.tries;
    }
    ares_channel ch = nullptr;
    if (int st = ares_init_options(&ch, &o, mask); st != ARES_SUCCESS) {
      if (ch != nullptr)
        ares_destroy(ch);
      return st == ARES_ENOMEM ? from_ares(st) : make_error_code(resolve_error::configuration);
    }
    static const ares_socket_functions functions = {
        &socket_fn, &close_fn, &connect_fn, &recvfrom_fn, &sendv_fn,
    };
    ares_set_socket_functions(ch, &functions, this);
    if (!options_.servers.empty()) {
      if (int st = ares_set_servers_ports_csv(ch, options_.servers.c_str()); st != ARES_SUCCESS) {
        ares_destroy(ch);
        return st == ARES_ENOMEM ? from_ares(st) : make_error_code(resolve_error::configuration);
      }
    }
    channel_ = ch;
    return {};
  }

  void destroy_channel() noexcept {
    if (channel_ == nullptr)
      return;
    // Pending queries end with ARES_EDESTRUCTION (their frames are gone or
    // about to go: nothing is resumed while the context is torn down);
    // c-ares closes its sockets through close_socket.
    ares_destroy(std::exchange(channel_, nullptr));
  }

  void issue(resolve_op* op) noexcept {
    if (op->st != resolve_op::state::starting)
      op->st = resolve_op::state::pending;
    op->restart = false;
    ares_addrinfo_hints hints{};
    hints.ai_family = op->family;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = 0;
    hints.ai_flags = 0; // sorted in RFC 6724 order, as getaddrinfo does
    ares_getaddrinfo(channel_, op->host.c_str(),
                     op->service_name.empty() ? nullptr : op->service_name.c_str(), &hints,
                     &on_result, op);
  }

  static void on_result(void* arg, int status, int /*timeouts*/, ares_addrinfo* ai) noexcept {
    auto* op = static_cast<resolve_op*>(arg);
    if (op->st == resolve_op::state::done) {
      // Cancelled already: this is the query ares_cancel ended for it.
      if (ai != nullptr)
        ares_freeaddrinfo(ai);
      return;
    }
    if (op->restart) {
      // Ended by another query's cancellation (even with a partial answer):
      // it starts again from scratch once ares_cancel has returned.
      if (ai != nullptr)
        ares_freeaddrinfo(ai);
      return;
    }
    op->status = status;
    op->ai = status == ARES_SUCCESS ? ai : nullptr;
    if (status != ARES_SUCCESS && ai != nullptr)
      ares_freeaddrinfo(ai);
    op->service->finish_op(op, true);
  }

  // op has its outcome: off the pending list, and its coroutine goes on.
  void finish_op(resolve_op* op, bool resume) noexcept {
    const bool was_starting = op->st == resolve_op::state::starting;
    unlink(op);
    op->st = resolve_op::state::done;
    if (was_starting)
      return; // resolve_op::start sees it and does not suspend
    if (op->scope != nullptr)
      op->scope->clear_current(op);
    op->cancel_fn = nullptr;
    if (op->parked) {
      op->parked = false;
      ring_->count_parked(-1);
    }
    if (resume && !ring_->draining())
      ring_->post(op);
  }

  void restart_marked() noexcept {
    if (channel_ == nullptr)
      return;
    for (resolve_op* o = pending_head_; o != nullptr;) {
      resolve_op* next = o->next_pending;
      if (o->restart)
        issue(o); // may end at once (and unlink itself); next is kept above
      o = next;
    }
  }

  void link(resolve_op* op) noexcept {
    op->prev_pending = nullptr;
    op->next_pending = pending_head_;
    if (pending_head_ != nullptr)
      pending_head_->prev_pending = op;
    pending_head_ = op;
  }
  void unlink(resolve_op* op) noexcept {
    if (op->st != resolve_op::state::pending && op->st != resolve_op::state::starting)
      return;
    if (op->prev_pending != nullptr)
      op->prev_pending->next_pending = op->next_pending;
    else
      pending_head_ = op->next_pending;
    if (op->next_pending != nullptr)
      op->next_pending->prev_pending = op->prev_pending;
    op->prev_pending = op->next_pending = nullptr;
  }

  watched_socket* find(int fd) const noexcept {
    for (const auto& w : sockets_)
      if (w->fd == fd && !w->closed)
        return w.get();
    return nullptr;
  }

  // Frees w once c-ares has closed it and no poll of it is in flight.
  void reap_socket(watched_socket* w) noexcept {
    if (!w->closed || w->poll_in_flight || w->processing)
      return;
    auto it =
        std::find_if(sockets_.begin(), sockets_.end(), [w](const auto& p) { return p.get() == w; });
    if (it != sockets_.end())
      sockets_.erase(it);
  }

  bool ring_usable() const noexcept {
    return !ring_->draining() && !ring_->broken() && !ring_->foreign();
  }

  void update_poll(watched_socket* w) noexcept {
    if (w->closed || !ring_usable())
      return;
    const unsigned wanted = (w->want_read ? POLLIN : 0u) | (w->want_write ? POLLOUT : 0u);
    if (w->poll_in_flight) {
      if (w->armed_events != wanted && !w->cancel_sent) {
        w->cancel_sent = true;
        ring_->cancel(&w->poll); // its completion re-arms with what is wanted then
      }
      return;
    }
    if (wanted == 0)
      return;
    try {
      io_uring_sqe* sqe = ring_->get_sqe();
      io_uring_prep_poll_add(sqe, w->fd, wanted);
      ring_->arm(sqe, &w->poll);
      w->poll_in_flight = true;
      w->cancel_sent = false;
      w->armed_events = wanted;
    } catch (...) {
      // No SQE: c-ares' timeout still runs (and retries) through the timer.
    }
  }

  static void poll_done(operation* op) noexcept {
    watched_socket* w = static_cast<watched_socket::poll_op*>(op)->owner;
    resolver_service* self = w->service;
    w->poll_in_flight = false;
    if (!w->closed && op->res != -ECANCELED && self->channel_ != nullptr) {
      const int res = op->res;
      const bool error = res < 0;
      const bool readable = error || (res & (POLLIN | POLLERR | POLLHUP));
      const bool writable = error || (res & (POLLOUT | POLLERR | POLLHUP));
      w->processing = true;
      ares_process_fd(self->channel_, readable && w->want_read ? w->fd : ARES_SOCKET_BAD,
                      writable && w->want_write ? w->fd : ARES_SOCKET_BAD);
      w->processing = false;
    }
    if (w->closed) {
      self->reap_socket(w);
    } else {
      self->update_poll(w);
    }
    self->after_call();
  }

  static void poll_abandoned(operation* op) noexcept {
    watched_socket* w = static_cast<watched_socket::poll_op*>(op)->owner;
    w->poll_in_flight = false;
    w->service->reap_socket(w);
  }

  // After every call into c-ares: arm the timer for its next deadline.
  void after_call() noexcept {
    if (!ring_usable())
      return;
    timeval tv{};
    const bool has_deadline =
        channel_ != nullptr && ares_timeout(channel_, nullptr, &tv) != nullptr;
    using clock = std::chrono::steady_clock;
    if (!has_deadline) {
      if (timer_in_flight_ && !timer_cancel_sent_) {
        timer_cancel_sent_ = true;
        ring_->cancel(&timer_);
      }
      return;
    }
    // One millisecond late rather than early: c-ares counts in milliseconds,
    // and a timer that fires before its deadline would only spin.
    const auto wait = std::chrono::seconds(tv.tv_sec) + std::chrono::microseconds(tv.tv_usec) +
                      std::chrono::milliseconds(1);
    const auto deadline = clock::now() + wait;
    if (timer_in_flight_) {
      if (deadline < timer_deadline_ && !timer_cancel_sent_) {
        timer_cancel_sent_ = true; // its completion arms the earlier one
        ring_->cancel(&timer_);
      }
      return;
    }
    try {
      timer_ts_ = to_timespec(std::chrono::duration_cast<std::chrono::nanoseconds>(wait));
      io_uring_sqe* sqe = ring_->get_sqe();
      io_uring_prep_timeout(sqe, &timer_ts_, 0, 0);
      ring_->arm(sqe, &timer_);
      timer_in_flight_ = true;
      timer_cancel_sent_ = false;
      timer_deadline_ = deadline;
    } catch (...) {
      // No SQE: the next poll completion tries again.
    }
  }

  static void timer_done(operation* op) noexcept {
    resolver_service* self = static_cast<timer_op*>(op)->owner;
    self->timer_in_flight_ = false;
    if (op->res == -ETIME && self->channel_ != nullptr)
      ares_process_fd(self->channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    self->after_call();
  }

  static resolver_service* self_of(void* data) noexcept {
    return static_cast<resolver_service*>(data);
  }
  static void state_callback(void* data, ares_socket_t fd, int readable, int writable) {
    self_of(data)->socket_state(fd, readable != 0, writable != 0);
  }
  static ares_socket_t socket_fn(int domain, int type, int protocol, void* data) {
    return self_of(data)->open_socket(domain, type, protocol);
  }
  static int close_fn(ares_socket_t fd, void* data) { return self_of(data)->close_socket(fd); }
  static int connect_fn(ares_socket_t fd, const sockaddr* addr, ares_socklen_t len, void*) {
    return ::connect(fd, addr, len);
  }
  static ares_ssize_t recvfrom_fn(ares_socket_t fd, void* buf, size_t len, int flags,
                                  sockaddr* from, ares_socklen_t* from_len, void*) {
    return ::recvfrom(fd, buf, len, flags, from, from_len);
  }
  static ares_ssize_t sendv_fn(ares_socket_t fd, const iovec* iov, int count, void*) {
    msghdr msg{};
    msg.msg_iov = const_cast<iovec*>(iov);
    msg.msg_iovlen = static_cast<std::size_t>(count);
    // MSG_NOSIGNAL: a name server resetting a TCP connection is an error
    // for c-ares to handle, never a SIGPIPE.
    return ::sendmsg(fd, &msg, MSG_NOSIGNAL);
  }

  ring* ring_;
  resolver_options options_;
  ares_channel channel_ = nullptr;
  resolve_op* pending_head_ = nullptr;
  std::vector<std::unique_ptr<watched_socket>> sockets_;

  timer_op timer_;
  __kernel_timespec timer_ts_{};
  std::chrono::steady_clock::time_point timer_deadline_{};
  bool timer_in_flight_ = false;
  bool timer_cancel_sent_ = false;
};

bool resolve_op::start(std::coroutine_handle<> awaiting, cancel_scope* s) {
  this->scope = s;
  if (s != nullptr && s->cancelled()) {
    status = ARES_ECANCELLED;
    st = state::done;
    return false;
  }
  this->waiter = awaiting;
  this->owner_ring = &service->owner_ring();
  st = state::starting;
  service->submit(this); // ares_getaddrinfo: /etc/hosts and numeric answers come at once
  if (st == state::done)
    return false;
  if (st == state::starting)
    st = state::pending;
  parked = true;
  owner_ring->count_parked(+1);
  this->cancel_fn = [](operation* op) noexcept {
    auto* self = static_cast<resolve_op*>(op);
    self->service->cancel(self, true);
  };
  if (s != nullptr)
    s->set_current(this);
  return true;
}

resolve_op::~resolve_op() {
  // The frame goes away while c-ares still works for it (context teardown):
  // its query is cancelled so that c-ares never calls back into freed memory.
  if (st == state::pending)
    service->cancel(this, false);
  if (ai != nullptr)
    ares_freeaddrinfo(ai);
}

result<std::vector<endpoint>> resolve_op::take() {
  if (status != ARES_SUCCESS)
    return from_ares(status);
  std::vector<endpoint> out;
  for (ares_addrinfo_node* n = ai != nullptr ? ai->nodes : nullptr; n != nullptr; n = n->ai_next) {
    auto ep = endpoint::from_sockaddr(n->ai_addr, static_cast<socklen_t>(n->ai_addrlen));
    if (!ep)
      continue; // a family we do not know: skip it
    if (std::find(out.begin(), out.end(), *ep) == out.end())
      out.push_back(*ep);
  }
  if (ai != nullptr) {
    ares_freeaddrinfo(ai);
    ai = nullptr;
  }
  if (out.empty())
    return make_error_code(resolve_error::no_address);
  return out;
}

// The coroutine behind resolve(): its frame holds the operation.
task<result<std::vector<endpoint>>> resolve_task(io_context& ctx, std::string host,
                                                 std::string service, int family) {
  resolve_op op;
  op.service = &resolver_service::of(ctx);
  op.owner_ring = &ctx.ring();
  op.host = std::move(host);
  op.service_name = std::move(service);
  op.family = family;
  co_await op;
  co_return op.take();
}

bool valid_host(std::string_view host) noexcept {
  if (host.empty() || host.size() > 255)
    return false;
  return std::none_of(host.begin(), host.end(), [](char c) {
    return c == '\0' || static_cast<unsigned char>(c) <= ' ' || c == 0x7f;
  });
}

} // namespace
} // namespace detail

result<void> configure_resolver(io_context& ctx, resolver_options options) {
  return detail::resolver_service::of(ctx).configure(std::move(options));
}

task<result<std::vector<endpoint>>> resolve(io_context& ctx, std::string_view host,
                                            std::string_view service, int family) {
  // Checked here, before the lazy task: a bad argument is a value too.
  auto fail = [](std::error_code ec) -> task<result<std::vector<endpoint>>> {
    co_return ec;
  };
  if (!detail::valid_host(host))
    return fail(resolve_error::bad_name);
  if (family != AF_UNSPEC && family != AF_INET && family != AF_INET6)
    return fail(resolve_error::not_supported);
  if (service.find('\0') != std::string_view::npos)
    return fail(resolve_error::unknown_service);
  // A numeric address is answered by c-ares without a query only when the
  // family asked for is exactly its own (1.18 sends "127.0.0.1" to the name
  // servers under AF_UNSPEC); one of the other family has no address at all.
  const std::string text(host);
  unsigned char buf[sizeof(in6_addr)];
  for (int numeric : {AF_INET, AF_INET6}) {
    if (inet_pton(numeric, text.c_str(), buf) != 1)
      continue;
    if (family != AF_UNSPEC && family != numeric)
      return fail(resolve_error::no_address);
    family = numeric;
  }
  // The strings are copied into the frame: the task starts later, when a
  // temporary argument would be gone.
  return detail::resolve_task(ctx, std::string(host), std::string(service), family);
}

result<std::pair<std::string, std::string>> split_host_port(std::string_view text) {
  std::string_view host, port;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return make_error_code(resolve_error::bad_name);
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos)
      return make_error_code(resolve_error::bad_name);
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos)
      return make_error_code(resolve_error::bad_name); // a bare IPv6 address needs brackets
  }
  if (host.empty() || port.empty())
    return make_error_code(resolve_error::bad_name);
  return std::pair<std::string, std::string>(std::string(host), std::string(port));
}

} // namespace couring
