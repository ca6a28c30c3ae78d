#include <catch2/catch.hpp>

#include <chrono>
#include <vector>

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using namespace test_support;
using couring::endpoint;
using couring::io_context;
using couring::result;
using couring::task;
using couring::tcp_listener;
using couring::tcp_stream;
using clock_type = std::chrono::steady_clock;

namespace {

// A plain blocking-syscall client, so that connecting needs no loop turn.
int raw_connect(const endpoint& ep) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  REQUIRE(::connect(fd, ep.data(), ep.size()) == 0);
  return fd;
}

} // namespace

TEST_CASE("this kernel gets multishot accept") {
  io_context ctx;
  CHECK(ctx.multishot_accept_supported());
  io_context single({.multishot_accept = false});
  CHECK_FALSE(single.multishot_accept_supported());
}

TEST_CASE("connections accepted ahead are handed out without waiting, in order") {
  for (bool multishot : {true, false}) {
    INFO("multishot: " << multishot);
    io_context ctx({.multishot_accept = multishot});
    auto listener = loopback_listener(ctx);
    auto body = [&]() -> task<void> {
      std::vector<int> clients;
      // The first accept arms the request; later connections queue up.
      clients.push_back(raw_connect(listener.local_endpoint()));
      auto first = co_await listener.accept();
      REQUIRE(first);
      for (int i = 0; i < 5; ++i)
        clients.push_back(raw_connect(listener.local_endpoint()));
      (void)co_await couring::sleep_for(ctx, 20ms);
      for (int i = 0; i < 5; ++i) {
        auto s = co_await listener.accept();
        REQUIRE(s);
        // Each accepted stream is the peer of the client connected i-th.
        auto peer = s->remote_endpoint();
        REQUIRE(peer);
        sockaddr_in local{};
        socklen_t len = sizeof local;
        ::getsockname(clients[static_cast<std::size_t>(i) + 1], reinterpret_cast<sockaddr*>(&local),
                      &len);
        CHECK(peer->port() == ntohs(local.sin_port));
      }
      for (int fd : clients)
        ::close(fd);
    };
    ctx.run(body());
  }
}

TEST_CASE("several accepts wait at once and each gets its own connection") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  int served = 0;
  auto acceptor = [&]() -> task<void> {
    auto s = co_await listener.accept();
    if (s)
      ++served;
  };
  auto body = [&]() -> task<void> {
    for (int i = 0; i < 10; ++i)
      ctx.spawn(acceptor());
    (void)co_await couring::nop(ctx);
    std::vector<tcp_stream> clients;
    for (int i = 0; i < 10; ++i) {
      auto c = co_await tcp_stream::connect(ctx, listener.local_endpoint());
      REQUIRE(c);
      clients.push_back(std::move(*c));
    }
    while (served < 10)
      (void)co_await couring::nop(ctx);
  };
  ctx.run(body());
  CHECK(served == 10);
}

TEST_CASE("an accept can time out and the listener keeps serving") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto r = co_await couring::with_timeout(listener.accept(), 30ms);
    REQUIRE_FALSE(r);
    CHECK(r.error() == std::errc::timed_out);
    CHECK(ctx.pending_operations() == 0);
    int fd = raw_connect(listener.local_endpoint());
    auto s = co_await couring::with_timeout(listener.accept(), 5s);
    CHECK(s.has_value());
    ::close(fd);
  };
  ctx.run(body());
}

TEST_CASE("run() returns once nobody waits on a listener") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  int fd = raw_connect(listener.local_endpoint());
  auto one = [&]() -> task<void> {
    (void)co_await listener.accept();
  };
  ctx.spawn(one());
  ctx.run(); // the multishot request stays armed, but it keeps nobody waiting
  CHECK(ctx.pending_operations() == 0);
  ::close(fd);
}

TEST_CASE("EMFILE ends the multishot accept: reported, backed off, then served again") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  // Client sockets exist before the limit drops; connecting needs no new fd.
  std::vector<int> clients;
  for (int i = 0; i < 3; ++i)
    clients.push_back(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));

  rlimit saved{};
  getrlimit(RLIMIT_NOFILE, &saved);
  const int next_fd = ::dup(0);
  ::close(next_fd);
  rlimit low = saved;
  low.rlim_cur = static_cast<rlim_t>(next_fd); // the next descriptor is over the limit
  REQUIRE(setrlimit(RLIMIT_NOFILE, &low) == 0);

  int errors = 0, emfile = 0;
  std::uint64_t enters = 0;
  auto body = [&]() -> task<void> {
    for (int fd : clients)
      ::connect(fd, listener.local_endpoint().data(), listener.local_endpoint().size());
    const auto enters_before = ctx.enter_count();
    const auto until = clock_type::now() + 300ms;
    // A server loop that retries at once on errors, as servers do: the
    // listener's back-off is what keeps this from spinning.
    while (clock_type::now() < until) {
      auto r = co_await listener.accept();
      if (r) {
        FAIL_CHECK("accepted although no descriptor was free");
        break;
      }
      ++errors;
      if (r.error() == std::errc::too_many_files_open)
        ++emfile;
    }
    enters = ctx.enter_count() - enters_before;
    REQUIRE(setrlimit(RLIMIT_NOFILE, &saved) == 0);
    // With descriptors back, the connections waiting in the backlog come through.
    for (int i = 0; i < 3; ++i) {
      auto s = co_await couring::with_timeout(listener.accept(), 5s);
      CHECK(s.has_value());
    }
  };
  ctx.run(body());
  setrlimit(RLIMIT_NOFILE, &saved);
  for (int fd : clients)
    ::close(fd);
  INFO("EMFILE reported " << emfile << " times, " << enters << " io_uring_enter calls in 300 ms");
  CHECK(emfile >= 1);
  CHECK(errors == emfile);
  CHECK(emfile <= 12); // 10 ms doubling back-off: a handful, not thousands
  CHECK(enters < 200); // no spinning
}

TEST_CASE("accept on a closed or empty listener fails cleanly, also under a timeout") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  listener.close();
  auto body = [&]() -> task<void> {
    // Closed: operation_canceled, as every operation on a closed object.
    auto a = co_await listener.accept();
    CHECK(a.error() == std::errc::operation_canceled);
    auto b = co_await couring::with_timeout(listener.accept(), 1s);
    CHECK(b.error() == std::errc::operation_canceled);
    tcp_listener never_bound;
    auto c = co_await couring::with_timeout(never_bound.accept(), 1s);
    CHECK(c.error() == std::errc::bad_file_descriptor);
  };
  ctx.run(body());
}

TEST_CASE("closing a listener fails waiting accepts and closes queued connections") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    int c1 = raw_connect(listener.local_endpoint());
    auto first = co_await listener.accept(); // arms the multishot request
    REQUIRE(first);
    int c2 = raw_connect(listener.local_endpoint()); // accepted ahead, queued
    (void)co_await couring::sleep_for(ctx, 20ms);
    listener.close();
    char b;
    // The queued connection was closed: its client sees end of stream.
    CHECK(::recv(c2, &b, 1, 0) == 0);
    auto after = co_await listener.accept();
    CHECK(after.error() == std::errc::operation_canceled);
    ::close(c1);
    ::close(c2);
    (void)co_await couring::sleep_for(ctx, 10ms);
    // The accept request is gone from the ring: only the context's own
    // wake-up read is left.
    CHECK(ctx.submitted_requests() == 1);
  };
  ctx.run(body());
}
