// The object model (docs/design.md, "I/O objects"): an I/O object owns its
// descriptor until the last request on it has completed, close() ends every
// operation on it with operation_canceled, compound operations never re-arm
// on a closed object, and operations on one side of an object run in order.
//
// The races below are run many times with concurrent accepts, so that
// descriptor numbers are reused all the time: a request that outlived its
// object would land on another connection, and the per-connection patterns
// would show it.

#include <catch2/catch.hpp>

#include <chrono>
#include <cstring>
#include <optional>
#include <random>
#include <vector>

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
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

namespace {

// COURING_TEST_ITERATIONS overrides the iteration counts (to debug a race).
int iterations_or(int n) {
  const char* s = std::getenv("COURING_TEST_ITERATIONS");
  return s != nullptr ? std::atoi(s) : n;
}

// A connection's identity travels first, so that each side knows which
// pattern the other must send.
std::array<std::byte, 8> id_bytes(std::uint64_t id) {
  std::array<std::byte, 8> b{};
  std::memcpy(b.data(), &id, sizeof id);
  return b;
}

std::uint64_t id_of(std::span<const std::byte> b) {
  std::uint64_t id = 0;
  std::memcpy(&id, b.data(), sizeof id);
  return id;
}

// A connection's payload: 8-byte words (id << 32 | index), cheap to make and
// to check, and different on every connection at every position.
std::vector<std::byte> words_of(std::uint64_t id, std::size_t size) {
  std::vector<std::byte> v(size);
  for (std::size_t i = 0; i * 8 < size; ++i) {
    const std::uint64_t w = id << 32 | i;
    std::memcpy(v.data() + i * 8, &w, std::min<std::size_t>(8, size - i * 8));
  }
  return v;
}

std::byte word_byte(std::uint64_t id, std::size_t at) {
  const std::uint64_t w = id << 32 | (at / 8);
  std::byte b[8];
  std::memcpy(b, &w, 8);
  return b[at % 8];
}

// Many short sends: many windows for the race. (Only the sender's buffer:
// a tiny receive buffer makes TCP itself stall in zero-window probing.)
void shrink_send_buffer(int fd) {
  int small = 4096;
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
}

// What the race tests count. Any `wrong_*` or `bad_*` is a failure.
struct race_tally {
  int connections = 0;
  int completed = 0;     // the operation finished whole before the close
  int cancelled = 0;     // it ended with operation_canceled
  int bad_results = 0;   // anything else (EBADF, ...)
  int wrong_bytes = 0;   // bytes that belong to another connection
  int peer_timeouts = 0; // the peer waited in vain (a hang)
  std::error_code first_bad;
};

void record(race_tally& t, const result<void>& r) {
  if (r)
    ++t.completed;
  else if (is(r.error(), std::errc::operation_canceled))
    ++t.cancelled;
  else if (t.bad_results++ == 0)
    t.first_bad = r.error();
}

} // namespace

TEST_CASE("a stream closed while write_all is in flight never sends to another connection") {
  // The reader task closes the stream while the writer task's write_all is
  // part-way; meanwhile other connections are accepted and get the freed
  // descriptor numbers. Every peer checks that it receives a prefix of its
  // own pattern, and sees end of stream in bounded time.
  raise_fd_limit();
  const int iterations = iterations_or(20'000);
  constexpr int workers = 16;
  constexpr std::size_t payload = 128 * 1024;
  io_context ctx;
  auto listener = loopback_listener(ctx);
  race_tally tally;
  std::mt19937 rng(7);

  auto serve_one = [&](tcp_stream s) -> task<void> {
    shrink_send_buffer(s.native_handle());
    std::array<std::byte, 8> id{};
    if (!co_await s.read_exactly(id))
      co_return;
    const auto data = words_of(id_of(id), payload);
    bool writer_done = false;
    auto writer = [&]() -> task<void> {
      record(tally, co_await s.write_all(data));
      writer_done = true;
    };
    ctx.spawn(writer());
    // The reader side decides to close: after a random number of loop turns,
    // so that the close lands in every phase of the transfer.
    const int turns = static_cast<int>(rng() % 12);
    for (int i = 0; i < turns; ++i)
      (void)co_await couring::nop(ctx);
    s.close();
    while (!writer_done)
      (void)co_await couring::nop(ctx);
  };
  auto acceptor = [&]() -> task<void> {
    for (int i = 0; i < iterations; ++i) {
      auto s = co_await listener.accept();
      if (!s)
        continue;
      ctx.spawn(serve_one(std::move(*s)));
    }
  };
  auto client_loop = [&](int worker) -> task<void> {
    std::vector<std::byte> buf(4096);
    for (int i = worker; i < iterations; i += workers) {
      auto c = co_await tcp_stream::connect(ctx, listener.local_endpoint());
      if (!c)
        continue;
      ++tally.connections;
      const std::uint64_t id = static_cast<std::uint64_t>(i) + 1;
      const auto idb = id_bytes(id);
      if (!co_await c->write_all(idb))
        continue;
      std::size_t at = 0;
      for (;;) {
        auto n = co_await couring::with_timeout(c->read(buf), scaled(10s));
        if (!n) {
          if (is(n.error(), std::errc::timed_out))
            ++tally.peer_timeouts;
          break; // a reset is fine: the server closed with data unread
        }
        if (*n == 0)
          break;
        for (std::size_t k = 0; k < *n; ++k)
          if (buf[k] != word_byte(id, at + k)) {
            ++tally.wrong_bytes;
            break;
          }
        at += *n;
        if (at > payload)
          ++tally.wrong_bytes;
      }
    }
  };
  auto body = [&]() -> task<void> {
    ctx.spawn(acceptor());
    std::vector<task<void>> clients;
    for (int w = 0; w < workers; ++w)
      clients.push_back(client_loop(w));
    co_await couring::when_all(std::move(clients));
    listener.close(); // an accept may still wait if a connect failed
  };
  const auto fds_before = open_fd_count();
  ctx.run(body());
  ctx.run(); // the last handlers
  INFO("first unexpected result: " << tally.first_bad.message());
  CHECK(tally.connections == iterations);
  CHECK(tally.completed + tally.cancelled + tally.bad_results == iterations);
  CHECK(tally.bad_results == 0);
  CHECK(tally.wrong_bytes == 0);
  CHECK(tally.peer_timeouts == 0);
  CHECK(tally.cancelled > 0);               // the race was really run
  CHECK(open_fd_count() == fds_before - 1); // only the listener is gone
}

TEST_CASE("a stream closed while read_exactly is part-way never reads another connection") {
  // The peer sends its pattern in two parts with a gap; the server closes
  // the stream at a random moment. read_exactly either completes with the
  // peer's own bytes or ends with operation_canceled having filled a prefix
  // of them -- never EBADF, never a hang, never a byte of a newer connection
  // on the same descriptor number.
  raise_fd_limit();
  const int iterations = iterations_or(20'000);
  constexpr int workers = 16;
  constexpr std::size_t want = 64;
  io_context ctx;
  auto listener = loopback_listener(ctx);
  race_tally tally;
  std::mt19937 rng(11);

  auto serve_one = [&](tcp_stream s) -> task<void> {
    std::array<std::byte, 8> id{};
    if (!co_await s.read_exactly(id))
      co_return;
    const auto expected = pattern(id_of(id), want);
    std::array<std::byte, want> got{};
    bool reader_done = false;
    auto reader = [&]() -> task<void> {
      auto op = s.read_exactly(got);
      auto r = co_await op;
      record(tally, r);
      // Whatever was read is the peer's own, in order.
      if (std::memcmp(got.data(), expected.data(), op.transferred()) != 0)
        ++tally.wrong_bytes;
      if (r && op.transferred() != want)
        ++tally.wrong_bytes;
      reader_done = true;
    };
    ctx.spawn(reader());
    const int turns = static_cast<int>(rng() % 8);
    for (int i = 0; i < turns; ++i)
      (void)co_await couring::nop(ctx);
    s.close();
    while (!reader_done)
      (void)co_await couring::nop(ctx);
  };
  auto acceptor = [&]() -> task<void> {
    for (int i = 0; i < iterations; ++i) {
      auto s = co_await listener.accept();
      if (s)
        ctx.spawn(serve_one(std::move(*s)));
    }
  };
  auto client_loop = [&](int worker) -> task<void> {
    std::byte sink[16];
    for (int i = worker; i < iterations; i += workers) {
      auto c = co_await tcp_stream::connect(ctx, listener.local_endpoint());
      if (!c)
        continue;
      ++tally.connections;
      const std::uint64_t id = static_cast<std::uint64_t>(i) + 1;
      const auto data = pattern(id, want);
      (void)co_await c->write_all(id_bytes(id));
      (void)co_await c->write_all(std::span(data).first(10));
      (void)co_await couring::nop(ctx);
      (void)co_await c->write_all(std::span(data).subspan(10));
      // The server's close must reach us: end of stream or a reset, in
      // bounded time (a request left on the socket would keep it open).
      auto n = co_await couring::with_timeout(c->read(sink), scaled(10s));
      if (!n && is(n.error(), std::errc::timed_out))
        ++tally.peer_timeouts;
    }
  };
  auto body = [&]() -> task<void> {
    ctx.spawn(acceptor());
    std::vector<task<void>> clients;
    for (int w = 0; w < workers; ++w)
      clients.push_back(client_loop(w));
    co_await couring::when_all(std::move(clients));
    listener.close(); // an accept may still wait if a connect failed
  };
  ctx.run(body());
  ctx.run();
  INFO("first unexpected result: " << tally.first_bad.message());
  CHECK(tally.connections == iterations);
  CHECK(tally.completed + tally.cancelled + tally.bad_results == iterations);
  CHECK(tally.bad_results == 0);
  CHECK(tally.wrong_bytes == 0);
  CHECK(tally.peer_timeouts == 0);
  CHECK(tally.cancelled > 0);
  CHECK(tally.completed > 0);
}

TEST_CASE("a task blocked in accept when its listener is closed ends with operation_canceled") {
  // Listeners come and go while connections arrive: every accept gives a
  // connection or operation_canceled, never EBADF and never a hang, and no
  // descriptor is left behind.
  raise_fd_limit();
  const int iterations = iterations_or(2'000);
  io_context ctx;
  race_tally tally;
  std::mt19937 rng(3);
  const auto fds_before = open_fd_count();
  auto body = [&]() -> task<void> {
    for (int i = 0; i < iterations; ++i) {
      auto listener = loopback_listener(ctx);
      bool accept_done = false;
      auto acceptor = [&]() -> task<void> {
        for (;;) {
          auto s = co_await listener.accept();
          if (!s) {
            record(tally, result<void>(s.error()));
            break;
          }
        }
        accept_done = true;
      };
      ctx.spawn(acceptor());
      auto connector = [&]() -> task<void> {
        auto c = co_await tcp_stream::connect(ctx, listener.local_endpoint());
        (void)c; // refused or reset once the listener is gone: both fine
      };
      ctx.spawn(connector());
      const int turns = static_cast<int>(rng() % 4);
      for (int k = 0; k < turns; ++k)
        (void)co_await couring::nop(ctx);
      listener.close();
      for (int k = 0; !accept_done && k < 1000; ++k)
        (void)co_await couring::nop(ctx);
      if (!accept_done)
        ++tally.peer_timeouts;
    }
  };
  ctx.run(body());
  ctx.run();
  INFO("first unexpected result: " << tally.first_bad.message());
  CHECK(tally.cancelled == iterations);
  CHECK(tally.bad_results == 0);
  CHECK(tally.peer_timeouts == 0);
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("a dropped listener refuses connections at once, and its port can be bound again") {
  io_context ctx;
  auto body = [&]() -> task<std::pair<std::error_code, bool>> {
    endpoint ep = endpoint::ipv4_loopback(0);
    {
      auto l = tcp_listener::bind(ctx, ep).value();
      ep = l.local_endpoint();
    } // dropped inside the loop, with nothing in flight on it
    auto c = co_await tcp_stream::connect(ctx, ep);
    auto again = tcp_listener::bind(ctx, ep);
    co_return std::pair{c ? std::error_code{} : c.error(), again.has_value()};
  };
  auto [connect_error, bound_again] = ctx.run(body());
  CHECK(is(connect_error, std::errc::connection_refused));
  CHECK(bound_again);
}

TEST_CASE("closing a listener with an accept in flight refuses connections at once") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const endpoint ep = listener.local_endpoint();
  auto body = [&]() -> task<std::pair<std::error_code, std::error_code>> {
    std::error_code accept_error;
    auto acceptor = [&]() -> task<void> {
      auto s = co_await listener.accept();
      accept_error = s ? std::error_code{} : s.error();
    };
    ctx.spawn(acceptor());
    (void)co_await couring::nop(ctx); // the accept request is in the kernel
    listener.close();
    auto c = co_await tcp_stream::connect(ctx, ep);
    // Bind the same port again right away (SO_REUSEADDR is the default).
    auto again = tcp_listener::bind(ctx, ep);
    (void)co_await couring::nop(ctx);
    co_return std::pair{c ? std::error_code{} : c.error(), again ? accept_error : again.error()};
  };
  auto [connect_error, accept_error] = ctx.run(body());
  CHECK(is(connect_error, std::errc::connection_refused));
  CHECK(is(accept_error, std::errc::operation_canceled));
}

TEST_CASE("two tasks write_all 16 MiB on one stream: the peer gets each buffer whole, in order") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  constexpr std::size_t size = 16 << 20;
  auto body = [&]() -> task<bool> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& server = pair.server;
    int sndbuf = 64 * 1024; // a slow reader: the writes go out in many pieces
    ::setsockopt(server.native_handle(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    const auto a = pattern(1, size);
    const auto b = pattern(2, size);
    int done = 0;
    result<void> ra, rb;
    auto write_a = [&]() -> task<void> {
      ra = co_await server.write_all(a);
      ++done;
    };
    auto write_b = [&]() -> task<void> {
      rb = co_await server.write_all(b);
      ++done;
    };
    ctx.spawn(write_a());
    ctx.spawn(write_b());
    // A slow reader: small reads, a loop turn between them.
    std::vector<std::byte> got;
    got.reserve(2 * size);
    std::vector<std::byte> buf(16 * 1024);
    while (got.size() < 2 * size) {
      auto n = co_await client.read(buf);
      if (!n || *n == 0)
        break;
      got.insert(got.end(), buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(*n));
      (void)co_await couring::nop(ctx);
    }
    while (done < 2)
      (void)co_await couring::nop(ctx);
    require_ok(ra);
    require_ok(rb);
    // Whichever started first is whole, then the other, whole.
    const bool a_first = got.size() == 2 * size && got[0] == a[0] &&
                         std::equal(a.begin(), a.end(), got.begin()) &&
                         std::equal(b.begin(), b.end(), got.begin() + size);
    co_return a_first;
  };
  CHECK(ctx.run(body()));
}

TEST_CASE("reads on one stream are served in the order they were started") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<bool> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& server = pair.server;
    std::array<std::byte, 100> first{}, second{}, third{};
    int done = 0;
    auto reader = [&](std::span<std::byte> into) -> task<void> {
      require_ok(co_await server.read_exactly(into));
      ++done;
    };
    ctx.spawn(reader(first));
    ctx.spawn(reader(second));
    ctx.spawn(reader(third));
    (void)co_await couring::nop(ctx);
    const auto data = pattern(5, 300);
    for (std::size_t at = 0; at < data.size(); at += 7) // dribbled
      require_ok(co_await client.write_all(
          std::span(data).subspan(at, std::min<std::size_t>(7, data.size() - at))));
    while (done < 3)
      (void)co_await couring::nop(ctx);
    co_return std::equal(first.begin(), first.end(), data.begin()) &&
        std::equal(second.begin(), second.end(), data.begin() + 100) &&
        std::equal(third.begin(), third.end(), data.begin() + 200);
  };
  CHECK(ctx.run(body()));
}

TEST_CASE("a queued write can be cancelled while it waits; the one in flight is untouched") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& client = pair.client;
    tcp_stream& server = pair.server;
    const auto big = pattern(8, 32 << 20); // more than the socket buffers hold
    result<void> big_result;
    bool big_done = false;
    auto big_writer = [&]() -> task<void> {
      big_result = co_await server.write_all(big);
      big_done = true;
    };
    ctx.spawn(big_writer());
    (void)co_await couring::nop(ctx);
    // Waits behind the big write (nobody reads yet), then times out there.
    const auto before = std::chrono::steady_clock::now();
    auto queued = co_await couring::with_timeout(server.write("late"), 50ms);
    const auto waited = std::chrono::steady_clock::now() - before;
    REQUIRE_FALSE(queued);
    CHECK(is(queued.error(), std::errc::timed_out));
    CHECK(waited >= 50ms); // never early
    // The big write goes on, whole.
    std::vector<std::byte> got(big.size());
    require_ok(co_await client.read_exactly(got));
    while (!big_done)
      (void)co_await couring::nop(ctx);
    require_ok(big_result);
    const bool same = got == big;
    CHECK(same);
  };
  ctx.run(body());
}

TEST_CASE("operations on a closed stream are cancelled; on a moved-from or default one, EBADF") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    std::byte buf[4];
    tcp_stream empty;
    auto r1 = co_await empty.read(buf);
    REQUIRE_FALSE(r1);
    CHECK(is(r1.error(), std::errc::bad_file_descriptor));
    auto r2 = co_await empty.write_all(buf);
    REQUIRE_FALSE(r2);
    CHECK(is(r2.error(), std::errc::bad_file_descriptor));
    auto r3 = co_await couring::with_timeout(empty.read(buf), 1s);
    REQUIRE_FALSE(r3);
    CHECK(is(r3.error(), std::errc::bad_file_descriptor));
    CHECK_FALSE(empty.shutdown_write());

    auto pair = co_await connect_pair(ctx, listener);
    tcp_stream& server = pair.server;
    // Made before the close, awaited after: it must not touch the number,
    // which a new connection may already have.
    auto stale = server.read(buf);
    server.close();
    auto fresh = co_await connect_pair(ctx, listener);
    auto r4 = co_await stale;
    REQUIRE_FALSE(r4);
    CHECK(is(r4.error(), std::errc::operation_canceled));
    auto r4b = co_await server.read(buf); // started after the close
    REQUIRE_FALSE(r4b);
    CHECK(is(r4b.error(), std::errc::operation_canceled));
    tcp_stream moved = std::move(fresh.server);
    auto r5 = co_await fresh.server.read(buf);
    REQUIRE_FALSE(r5);
    CHECK(is(r5.error(), std::errc::bad_file_descriptor));
    require_ok(co_await fresh.client.write("ok"));
    auto r6 = co_await moved.read(buf);
    require_ok(r6);
  };
  ctx.run(body());
}

TEST_CASE("10,000 open/close cycles with operations in flight leave no descriptor behind") {
  raise_fd_limit();
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const auto fds_before = open_fd_count();
  constexpr int cycles = 10'000;
  constexpr int batch = 100;
  int cancelled = 0;
  auto body = [&]() -> task<void> {
    for (int done = 0; done < cycles; done += batch) {
      std::vector<connected_pair> pairs;
      for (int i = 0; i < batch; ++i)
        pairs.push_back(co_await connect_pair(ctx, listener));
      int finished = 0;
      std::vector<std::array<std::byte, 16>> bufs(2 * batch);
      auto read_one = [&](tcp_stream& s, std::span<std::byte> b) -> task<void> {
        auto r = co_await s.read(b);
        if (!r && is(r.error(), std::errc::operation_canceled))
          ++cancelled;
        ++finished;
      };
      for (int i = 0; i < batch; ++i) {
        ctx.spawn(read_one(pairs[i].client, bufs[2 * i]));
        ctx.spawn(read_one(pairs[i].server, bufs[2 * i + 1]));
      }
      (void)co_await couring::nop(ctx); // the reads are in the kernel
      for (auto& p : pairs) {
        p.client.close();
        p.server.close();
      }
      while (finished < 2 * batch)
        (void)co_await couring::nop(ctx);
    }
  };
  ctx.run(body());
  ctx.run();
  CHECK(cancelled == 2 * cycles);
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("a fork() child drops the inherited context at once; the parent keeps serving") {
  raise_fd_limit();
  std::optional<io_context> holder(std::in_place);
  io_context& ctx = *holder;
  auto listener = loopback_listener(ctx);
  auto echo = [&](tcp_stream s) -> task<void> {
    std::array<std::byte, 256> buf{};
    for (;;) {
      auto n = co_await s.read(buf);
      if (!n || *n == 0)
        co_return;
      if (!co_await s.write_all(std::span(buf).first(*n)))
        co_return;
    }
  };
  auto server = [&]() -> task<void> {
    for (;;) {
      auto s = co_await listener.accept();
      if (!s)
        co_return;
      ctx.spawn(echo(std::move(*s)));
    }
  };
  // Requests in flight on every kind of record: an accept, reads.
  auto warm = [&]() -> task<connected_pair> {
    auto p = co_await connect_pair(ctx, listener);
    co_return p;
  };
  connected_pair idle = ctx.run(warm()); // a pair whose reads stay pending
  ctx.spawn(server());
  ctx.spawn([](tcp_stream& s) -> task<void> {
    std::byte b[8];
    (void)co_await s.read(b);
  }(idle.server));
  // Put the requests in the kernel, then fork between two runs.
  ctx.run([](io_context& c) -> task<void> {
    (void)co_await couring::nop(c);
  }(ctx));

  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // The child: drop what it inherited and report how long that took.
    const auto t0 = std::chrono::steady_clock::now();
    idle = {};
    listener.close();
    holder.reset();
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    ::_exit(ms < 1000 ? 0 : 1);
  }
  // The parent serves an echo load with timers running meanwhile.
  int round_trips = 0;
  int timeouts = 0;
  auto load = [&]() -> task<void> {
    for (int c = 0; c < 20; ++c) {
      auto s = co_await tcp_stream::connect(ctx, listener.local_endpoint());
      require_ok(s);
      std::array<std::byte, 64> out{}, in{};
      for (int i = 0; i < 50; ++i) {
        out.fill(static_cast<std::byte>(i));
        require_ok(co_await s->write_all(out));
        auto r = co_await couring::with_timeout(s->read_exactly(in), scaled(5s));
        require_ok(r);
        if (in == out)
          ++round_trips;
      }
      // A timeout must still fire: nothing answers this read.
      std::byte b[4];
      auto t = co_await couring::with_timeout(idle.client.read(b), 20ms);
      if (!t && is(t.error(), std::errc::timed_out))
        ++timeouts;
    }
  };
  ctx.run(load());
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(round_trips == 20 * 50);
  CHECK(timeouts == 20);
  listener.close();
  idle = {};
  holder.reset();
}

TEST_CASE("a small CQ under a burst of completions: resumed coroutines submit without error") {
  // 16 CQ slots and 400 tasks whose every completion starts another request:
  // reaping hands each CQ slot back before resuming, so the kernel always
  // has room to post and a submit never spins on a full queue.
  io_context ctx({.sq_entries = 8, .cq_entries = 16});
  constexpr int tasks = 400, each = 50;
  int finished = 0;
  auto worker = [&]() -> task<void> {
    for (int i = 0; i < each; ++i)
      require_ok(co_await couring::nop(ctx));
    ++finished;
  };
  for (int t = 0; t < tasks; ++t)
    ctx.spawn(worker());
  ctx.run();
  CHECK(finished == tasks);
}
