#include <couring/tcp_stream.hpp>

#include <algorithm>
#include <chrono>
#include <memory>

#include <netinet/tcp.h>
#include <sys/socket.h>

#include <couring/detail/socket.hpp>
#include <couring/resolve.hpp>
#include <couring/sleep.hpp>
#include <couring/when_any.hpp>

namespace couring {

task<result<tcp_stream>> tcp_stream::connect(io_context& ctx, endpoint remote,
                                             connect_options options) {
  // remote is taken by value: the task starts lazily, long after a
  // temporary argument would have gone.
  auto fd = detail::open_stream_socket(remote.family());
  if (!fd)
    co_return fd.error();
  tcp_stream stream(ctx, *fd); // owns the socket from here on, also on errors

  if (options.local) {
    if (options.reuse_address) {
      if (auto r = detail::set_socket_flag(*fd, SOL_SOCKET, SO_REUSEADDR, true); !r)
        co_return r.error();
    }
    if (auto r = detail::bind_socket(*fd, *options.local); !r)
      co_return r.error();
  }
  if (options.no_delay) {
    if (auto r = detail::set_socket_flag(*fd, IPPROTO_TCP, TCP_NODELAY, true); !r)
      co_return r.error();
  }
  auto connected = co_await connect_awaitable(stream.handle_, remote);
  if (!connected)
    co_return connected.error();
  co_return std::move(stream);
}

// --- connecting to a name: Happy Eyeballs (RFC 8305) -----------------------------

namespace {

// Longer than any connect can take: a wait that only a cancellation ends.
constexpr std::chrono::hours forever{24 * 365};

// A one-shot signal from one connection attempt to the next ("I have
// started", "I failed"). Opening it cancels the scope the waiter's timer
// runs in, so the waiter goes on at once.
struct attempt_signal {
  detail::cancel_scope scope;
  bool opened = false;
  void open() noexcept {
    opened = true;
    scope.cancel(ECANCELED);
  }
};

// Waits until s is opened or the time has passed. False when the waiting
// task itself was cancelled (the race is over, or cancelled from outside).
class signal_wait {
public:
  signal_wait(io_context& ctx, attempt_signal& s, std::chrono::nanoseconds d)
      : sleep_(sleep_for(ctx, d)), signal_(&s) {}
  bool await_ready() const noexcept { return signal_->opened; }
  template <class Promise>
  bool await_suspend(std::coroutine_handle<Promise> awaiting) {
    // Below the task's own scope: cancelling the task still reaches the timer.
    signal_->scope.attach_to(detail::scope_of(awaiting));
    return sleep_.start(awaiting, &signal_->scope);
  }
  bool await_resume() {
    signal_->scope.detach();
    if (signal_->opened)
      return true;
    return sleep_.await_resume().has_value(); // the time passed: not cancelled
  }

private:
  sleep_awaitable sleep_;
  attempt_signal* signal_;
};

struct race_state {
  std::vector<endpoint> order;
  // started[i]: attempt i-1 has started; failed[i]: attempt i-1 has failed.
  std::unique_ptr<attempt_signal[]> started;
  std::unique_ptr<attempt_signal[]> failed;
  std::size_t failures = 0;
};

task<result<tcp_stream>> attempt(io_context& ctx, race_state& race, std::size_t i,
                                 connect_options options) {
  const std::size_t n = race.order.size();
  if (i > 0) {
    // The attempt before this one runs alone for attempt_delay, unless it
    // fails first.
    if (!co_await signal_wait(ctx, race.started[i], forever))
      co_return std::errc::operation_canceled;
    if (!co_await signal_wait(ctx, race.failed[i], options.attempt_delay))
      co_return std::errc::operation_canceled;
  }
  if (i + 1 < n)
    race.started[i + 1].open();
  auto c = co_await tcp_stream::connect(ctx, race.order[i], options);
  if (c)
    co_return c;
  if (i + 1 < n)
    race.failed[i + 1].open();
  if (++race.failures == n)
    co_return c; // the last one failed: that ends the race with its error
  // A failure must not end the race (when_any takes the first task to
  // finish): wait until the winner, or the last failure, cancels this one.
  (void)co_await sleep_for(ctx, forever);
  co_return std::errc::operation_canceled;
}

task<result<tcp_stream>> race_connect(io_context& ctx, std::vector<endpoint> order,
                                      connect_options options) {
  race_state race;
  race.order = std::move(order);
  const std::size_t n = race.order.size();
  race.started = std::make_unique<attempt_signal[]>(n);
  race.failed = std::make_unique<attempt_signal[]>(n);
  std::vector<task<result<tcp_stream>>> attempts;
  attempts.reserve(n);
  for (std::size_t i = 0; i < n; ++i)
    attempts.push_back(attempt(ctx, race, i, options));
  // when_any returns once every attempt has finished: the losers' sockets
  // are closed by then.
  auto first = co_await when_any(std::move(attempts));
  co_return std::move(first.value);
}

// RFC 8305 section 4: the family of the first (best) address first, then
// the other family, alternating.
std::vector<endpoint> interleave_families(const std::vector<endpoint>& eps) {
  std::vector<endpoint> first, other, out;
  for (const endpoint& e : eps)
    (e.family() == eps.front().family() ? first : other).push_back(e);
  for (std::size_t i = 0; i < std::max(first.size(), other.size()); ++i) {
    if (i < first.size())
      out.push_back(first[i]);
    if (i < other.size())
      out.push_back(other[i]);
  }
  return out;
}

task<result<tcp_stream>> connect_by_name(io_context& ctx, std::string host, std::string port,
                                         connect_options options) {
  const int family = options.local ? options.local->family() : AF_UNSPEC;
  auto eps = co_await resolve(ctx, host, port, family);
  if (!eps)
    co_return eps.error();
  co_return co_await race_connect(ctx, interleave_families(*eps), std::move(options));
}

task<result<tcp_stream>> connect_failed(std::error_code ec) {
  co_return ec;
}

} // namespace

task<result<tcp_stream>> tcp_stream::connect(io_context& ctx, std::string_view host_and_port,
                                             connect_options options) {
  if (auto ep = endpoint::parse(host_and_port))
    return connect(ctx, *ep, std::move(options));
  auto parts = split_host_port(host_and_port);
  if (!parts)
    return connect_failed(parts.error());
  return connect_by_name(ctx, std::move(parts->first), std::move(parts->second),
                         std::move(options));
}

task<result<tcp_stream>> tcp_stream::connect_any(io_context& ctx, std::vector<endpoint> remotes,
                                                 connect_options options) {
  if (remotes.empty())
    return connect_failed(make_error_code(resolve_error::no_address));
  if (remotes.size() == 1)
    return connect(ctx, remotes.front(), std::move(options));
  return race_connect(ctx, std::move(remotes), std::move(options));
}

result<endpoint> tcp_stream::local_endpoint() const {
  if (is_direct())
    return make_error_code(error::direct_descriptor);
  return detail::socket_name(native_handle(), false);
}
result<endpoint> tcp_stream::remote_endpoint() const {
  if (is_direct())
    return make_error_code(error::direct_descriptor);
  return detail::socket_name(native_handle(), true);
}

result<void> tcp_stream::set_no_delay(bool on) noexcept {
  if (is_direct())
    return make_error_code(error::direct_descriptor);
  return detail::set_socket_flag(native_handle(), IPPROTO_TCP, TCP_NODELAY, on);
}

} // namespace couring
