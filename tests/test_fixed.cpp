// Registered buffers (read_fixed/write_fixed on files, pipes and sockets) and
// zero-copy write_all (IORING_OP_SEND_ZC and its notification CQE).

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>
#include <vector>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using test_support::connected_pair;
using test_support::pattern;
using test_support::require_ok;

namespace {

// A temporary file, unlinked by the destructor.
struct temp_file {
  std::string path;
  temp_file() {
    char name[] = "/tmp/couring_fixed_XXXXXX";
    const int fd = ::mkstemp(name);
    REQUIRE(fd >= 0);
    ::close(fd);
    path = name;
  }
  ~temp_file() { ::unlink(path.c_str()); }
};

void fill(std::span<std::byte> b, std::uint64_t seed) {
  for (std::size_t i = 0; i < b.size(); ++i)
    b[i] = test_support::pattern_byte(seed, i);
}

bool matches(std::span<const std::byte> b, std::uint64_t seed) {
  for (std::size_t i = 0; i < b.size(); ++i)
    if (b[i] != test_support::pattern_byte(seed, i))
      return false;
  return true;
}

} // namespace

TEST_CASE("read_fixed_at/write_fixed_at on a file: contents checked") {
  couring::io_context ctx;
  couring::registered_buffers bufs(ctx, 2, 256 * 1024);
  temp_file tf;
  auto body = [&]() -> couring::task<void> {
    auto f = co_await couring::file::open(ctx, tf.path, {.write = true});
    require_ok(f);
    fill(bufs.buffer(0), 1);
    std::size_t at = 0;
    while (at < bufs.buffer_size()) { // positional writes may be short
      auto w = co_await couring::write_fixed_at(*f, bufs, bufs.buffer(0).subspan(at), at);
      require_ok(w);
      at += *w;
    }
    // A sub-span of a buffer works too: read the second half into buffer 1.
    const std::size_t half = bufs.buffer_size() / 2;
    auto r = co_await couring::read_fixed_at(*f, bufs, bufs.buffer(1).first(half), half);
    require_ok(r);
    REQUIRE(*r == half);
    CHECK(std::memcmp(bufs.buffer(1).data(), bufs.buffer(0).data() + half, half) == 0);
    // Past the end: 0 bytes.
    auto end = co_await couring::read_fixed_at(*f, bufs, bufs.buffer(1), 10 * 1024 * 1024);
    require_ok(end);
    CHECK(*end == 0);
  };
  ctx.run(body());
}

TEST_CASE("read_fixed/write_fixed on a pipe: contents checked, order kept") {
  couring::io_context ctx;
  couring::registered_buffers bufs(ctx, 4, 4096);
  auto ends = couring::pipe(ctx);
  require_ok(ends);
  auto& [reader, writer] = *ends;
  auto& rd = reader;
  auto& wr = writer;
  auto body = [&]() -> couring::task<void> {
    for (std::uint64_t round = 0; round < 100; ++round) {
      fill(bufs.buffer(0), round);
      auto w = co_await couring::write_fixed(wr, bufs, bufs.buffer(0));
      require_ok(w);
      REQUIRE(*w == 4096); // a pipe takes 4 KiB at once
      std::size_t got = 0;
      while (got < 4096) {
        auto r = co_await couring::read_fixed(rd, bufs, bufs.buffer(1).subspan(got));
        require_ok(r);
        REQUIRE(*r > 0);
        got += *r;
      }
      REQUIRE(matches(bufs.buffer(1), round));
    }
    wr.close();
    auto eof = co_await couring::read_fixed(rd, bufs, bufs.buffer(1));
    require_ok(eof);
    CHECK(*eof == 0);
  };
  ctx.run(body());
}

TEST_CASE("read_fixed/write_fixed on a socket: 8 MiB echoed and checked") {
  couring::io_context ctx;
  couring::registered_buffers bufs(ctx, 2, 64 * 1024);
  auto listener = test_support::loopback_listener(ctx);
  constexpr std::size_t total = 8 << 20;
  auto body = [&]() -> couring::task<void> {
    auto p = co_await test_support::connect_pair(ctx, listener);
    auto sender = [&]() -> couring::task<void> {
      std::size_t sent = 0;
      std::vector<std::byte> whole = pattern(7, total);
      while (sent < total) {
        const std::size_t n = std::min(bufs.buffer_size(), total - sent);
        std::memcpy(bufs.buffer(0).data(), whole.data() + sent, n);
        std::size_t off = 0;
        while (off < n) {
          auto w =
              co_await couring::write_fixed(p.client, bufs, bufs.buffer(0).subspan(off, n - off));
          require_ok(w);
          off += *w;
        }
        sent += n;
      }
      require_ok(p.client.shutdown_write());
    };
    auto send_task = sender();
    ctx.spawn(std::move(send_task));
    std::vector<std::byte> got;
    got.reserve(total);
    for (;;) {
      auto r = co_await couring::read_fixed(p.server, bufs, bufs.buffer(1));
      require_ok(r);
      if (*r == 0)
        break;
      got.insert(got.end(), bufs.buffer(1).begin(), bufs.buffer(1).begin() + *r);
    }
    REQUIRE(got.size() == total);
    CHECK(got == pattern(7, total));
  };
  ctx.run(body());
}

TEST_CASE("fixed operations on a buffer outside the registered ones fail with not_registered") {
  couring::io_context ctx;
  couring::registered_buffers bufs(ctx, 2, 4096);
  auto ends = couring::pipe(ctx);
  require_ok(ends);
  auto& [reader, writer] = *ends;
  auto& rd = reader;
  auto& wr = writer;
  std::vector<std::byte> plain(4096);
  auto body = [&]() -> couring::task<void> {
    auto r1 = co_await couring::read_fixed(rd, bufs, plain);
    REQUIRE(!r1);
    CHECK(r1.error() == couring::error::not_registered);
    // Straddling two buffers: not inside one.
    auto w1 = co_await couring::write_fixed(
        wr, bufs, std::span<const std::byte>(bufs.buffer(0).data() + 100, 4096));
    REQUIRE(!w1);
    CHECK(w1.error() == couring::error::not_registered);
    // Past the end of the region.
    auto w2 = co_await couring::write_fixed(
        wr, bufs, std::span<const std::byte>(bufs.buffer(1).data() + 4096, 1));
    REQUIRE(!w2);
    CHECK(w2.error() == couring::error::not_registered);
    // Through with_timeout (which starts the operation itself).
    auto r2 = co_await couring::with_timeout(couring::read_fixed(rd, bufs, plain), 1s);
    REQUIRE(!r2);
    CHECK(r2.error() == couring::error::not_registered);
    // Nothing was written: a real fixed write and read still line up.
    fill(bufs.buffer(0), 3);
    auto w3 = co_await couring::write_fixed(wr, bufs, bufs.buffer(0).first(100));
    require_ok(w3);
    auto r3 = co_await couring::read_fixed(rd, bufs, bufs.buffer(1));
    require_ok(r3);
    CHECK(*r3 == 100);
    CHECK(matches(bufs.buffer(1).first(100), 3));
  };
  ctx.run(body());
  CHECK(std::string(couring::make_error_code(couring::error::not_registered).message())
            .find("registered") != std::string::npos);
}

TEST_CASE("registered_buffers: one set per context; misuse throws; another context is refused") {
  couring::io_context ctx;
  CHECK_THROWS_AS(couring::registered_buffers(ctx, 0, 4096), std::invalid_argument);
  CHECK_THROWS_AS(couring::registered_buffers(ctx, 1, 0), std::invalid_argument);
  {
    couring::registered_buffers a(ctx, 1, 4096);
    try {
      couring::registered_buffers b(ctx, 1, 4096);
      FAIL("a second registration was accepted");
    } catch (const std::system_error& e) {
      CHECK(e.code() == std::errc::device_or_resource_busy);
    }
  }
  couring::registered_buffers again(ctx, 1, 4096); // the first one is gone
  // Buffers registered with another context are not this stream's.
  couring::io_context other;
  couring::registered_buffers foreign(other, 1, 4096);
  auto ends = couring::pipe(ctx);
  require_ok(ends);
  auto& wr = ends->second;
  auto body = [&]() -> couring::task<void> {
    auto w = co_await couring::write_fixed(wr, foreign, foreign.buffer(0));
    REQUIRE(!w);
    CHECK(w.error() == couring::error::not_registered);
  };
  ctx.run(body());
}

TEST_CASE("fixed operations on a closed or never-opened stream") {
  couring::io_context ctx;
  couring::registered_buffers bufs(ctx, 1, 4096);
  auto ends = couring::pipe(ctx);
  require_ok(ends);
  auto& rd = ends->first;
  couring::pipe_reader never;
  auto body = [&]() -> couring::task<void> {
    // A read in flight when the stream is closed ends with operation_canceled.
    auto closer = [&]() -> couring::task<void> {
      (void)co_await couring::nop(ctx);
      rd.close();
    };
    auto c = closer();
    ctx.spawn(std::move(c));
    auto r = co_await couring::read_fixed(rd, bufs, bufs.buffer(0));
    REQUIRE(!r);
    CHECK(r.error() == std::errc::operation_canceled);
    auto r2 = co_await couring::read_fixed(rd, bufs, bufs.buffer(0));
    REQUIRE(!r2);
    CHECK(r2.error() == std::errc::operation_canceled);
    auto r3 = co_await couring::read_fixed(never, bufs, bufs.buffer(0));
    REQUIRE(!r3);
    CHECK(r3.error() == std::errc::bad_file_descriptor);
    // with_timeout cancels a fixed read that has nothing to read.
    auto ends2 = couring::pipe(ctx);
    require_ok(ends2);
    auto r4 = co_await couring::with_timeout(
        couring::read_fixed(ends2->first, bufs, bufs.buffer(0)), 50ms);
    REQUIRE(!r4);
    CHECK(r4.error() == std::errc::timed_out);
  };
  ctx.run(body());
}

// --- zero-copy write_all -----------------------------------------------------------

namespace {
couring::io_context_options zero_copy_from(std::size_t threshold) {
  couring::io_context_options o;
  o.zero_copy_threshold = threshold;
  return o;
}
} // namespace

TEST_CASE("zero-copy write_all of 16 MiB: every byte checked, done only after the notification") {
  couring::io_context ctx(zero_copy_from(64 * 1024));
  auto listener = test_support::loopback_listener(ctx);
  constexpr std::size_t total = 16 << 20;
  const std::vector<std::byte> data = pattern(11, total);
  auto body = [&]() -> couring::task<void> {
    auto p = co_await test_support::connect_pair(ctx, listener);
    std::vector<std::byte> got(total);
    auto reader = [&]() -> couring::task<void> {
      auto r = co_await p.server.read_exactly(got);
      require_ok(r);
    };
    auto rt = reader();
    ctx.spawn(std::move(rt));
    auto w = p.client.write_all(data);
    auto result = co_await w;
    require_ok(result);
    CHECK(w.transferred() == total);
    // It went through SEND_ZC: the last CQE was the notification, and
    // nothing of the request is left in the ring.
    CHECK((w.cqe_flags & IORING_CQE_F_NOTIF) != 0);
    CHECK(w.outstanding == 0);
    // Below the threshold: a plain send (no notification).
    auto small = p.client.write_all(std::span(data).first(1000));
    require_ok(co_await small);
    CHECK((small.cqe_flags & IORING_CQE_F_NOTIF) == 0);
    while (ctx.pending_operations() > 1) // the reader
      (void)co_await couring::nop(ctx);
    std::vector<std::byte> tail(1000);
    auto r2 = co_await p.server.read_exactly(tail);
    require_ok(r2);
    CHECK(got == data);
    CHECK(std::memcmp(tail.data(), data.data(), 1000) == 0);
  };
  ctx.run(body());
}

TEST_CASE("zero_copy_threshold leaves other streams alone: unix sockets and pipes send plainly") {
  couring::io_context ctx(zero_copy_from(1));
  auto us = couring::socketpair(ctx);
  require_ok(us);
  auto& ua = us->first;
  auto& ub = us->second;
  auto ps = couring::pipe(ctx);
  require_ok(ps);
  auto& pr = ps->first;
  auto& pw = ps->second;
  const auto data = pattern(21, 100000);
  auto body = [&]() -> couring::task<void> {
    std::vector<std::byte> got(data.size());
    auto reader = [&]() -> couring::task<void> {
      require_ok(co_await ub.read_exactly(got));
    };
    auto rt = reader();
    ctx.spawn(std::move(rt));
    auto w = ua.write_all(data);
    require_ok(co_await w);
    CHECK((w.cqe_flags & IORING_CQE_F_NOTIF) == 0);
    std::vector<std::byte> got2(data.size());
    auto reader2 = [&]() -> couring::task<void> {
      require_ok(co_await pr.read_exactly(got2));
    };
    auto rt2 = reader2();
    ctx.spawn(std::move(rt2));
    require_ok(co_await pw.write_all(data));
    while (ctx.pending_operations() > 0)
      (void)co_await couring::nop(ctx);
    CHECK(got == data);
    CHECK(got2 == data);
  };
  ctx.run(body());
}

TEST_CASE(
    "zero-copy write_all to a peer that resets midway: error reported, buffer released once") {
  couring::io_context ctx(zero_copy_from(16 * 1024));
  auto listener = test_support::loopback_listener(ctx);
  constexpr std::size_t total = 64 << 20;
  std::vector<std::byte> data = pattern(12, total);
  int resumed = 0;
  auto body = [&]() -> couring::task<void> {
    auto p = co_await test_support::connect_pair(ctx, listener);
    const std::size_t background = ctx.submitted_requests(); // the listener's accept, ...
    auto resetter = [&]() -> couring::task<void> {
      std::vector<std::byte> buf(1 << 20);
      auto r = co_await p.server.read_exactly(buf); // some data arrives first
      require_ok(r);
      CHECK(buf == std::vector<std::byte>(data.begin(), data.begin() + (1 << 20)));
      linger l{.l_onoff = 1, .l_linger = 0}; // close sends a RST
      REQUIRE(::setsockopt(p.server.native_handle(), SOL_SOCKET, SO_LINGER, &l, sizeof l) == 0);
      p.server.close();
    };
    auto rt = resetter();
    ctx.spawn(std::move(rt));
    auto w = p.client.write_all(data);
    auto result = co_await w;
    ++resumed;
    REQUIRE(!result);
    INFO(result.error().message());
    CHECK((result.error() == std::errc::connection_reset ||
           result.error() == std::errc::broken_pipe));
    CHECK(w.transferred() < total);
    // The kernel is done with the pages: no CQE of the request is still due.
    CHECK(w.outstanding == 0);
    CHECK(ctx.submitted_requests() == background);
    // The buffer is the caller's again: scribbling on it disturbs nothing.
    std::memset(data.data(), 0, data.size());
    for (int i = 0; i < 10; ++i)
      (void)co_await couring::nop(ctx);
  };
  ctx.run(body());
  CHECK(resumed == 1);
}

TEST_CASE("zero-copy write_all: with_timeout and close stop it, after the notification") {
  couring::io_context ctx(zero_copy_from(16 * 1024));
  auto listener = test_support::loopback_listener(ctx);
  constexpr std::size_t total = 64 << 20; // far more than the socket buffers hold
  const std::vector<std::byte> data = pattern(13, total);
  auto body = [&]() -> couring::task<void> {
    auto p = co_await test_support::connect_pair(ctx, listener);
    const std::size_t background = ctx.submitted_requests();
    // Nobody reads: the write stalls and the timeout cancels it.
    const auto before = std::chrono::steady_clock::now();
    auto r = co_await couring::with_timeout(p.client.write_all(data), 100ms);
    REQUIRE(!r);
    CHECK(r.error() == std::errc::timed_out);
    CHECK(std::chrono::steady_clock::now() - before < test_support::scaled(5000ms));
    CHECK(ctx.submitted_requests() == background);
    // The pages were got back by resetting the connection.
    std::byte b[16];
    auto after = co_await p.server.read(b);
    while (after && *after > 0)
      after = co_await p.server.read(b);
    REQUIRE(!after);
    CHECK(after.error() == std::errc::connection_reset);
    // Closed while in flight: operation_canceled, the descriptor released
    // only after the notification.
    auto p2 = co_await test_support::connect_pair(ctx, listener);
    ctx.spawn(test_support::close_after(ctx, p2.client, 50ms));
    auto w = p2.client.write_all(data);
    auto r2 = co_await w;
    REQUIRE(!r2);
    CHECK(r2.error() == std::errc::operation_canceled);
    CHECK(w.outstanding == 0);
    CHECK(w.transferred() < total);
  };
  ctx.run(body());
}

// --- direct descriptors -------------------------------------------------------------

namespace {
// Direct descriptors live in an io_uring's file table; on the epoll backend
// the listener's option is ignored and streams get plain descriptors, so the
// same tests check that nothing else changes there.
bool direct_expected(const couring::io_context& ctx) {
  return ctx.features().backend == couring::backend::io_uring;
}

couring::tcp_listener direct_listener(couring::io_context& ctx) {
  couring::listen_options o;
  o.direct_descriptors = true;
  return test_support::loopback_listener(ctx, o);
}

couring::task<void> echo_direct(couring::tcp_stream s) {
  std::byte buf[16384];
  for (;;) {
    auto n = co_await s.read(buf);
    if (!n || *n == 0)
      co_return;
    if (!co_await s.write_all(std::span(buf, *n)))
      co_return;
  }
}
} // namespace

TEST_CASE("direct descriptors: 20 connections echo 256 KiB each, contents checked") {
  couring::io_context_options options;
  options.zero_copy_threshold = 64 * 1024; // not used on direct streams: they fall back
  couring::io_context ctx(options);
  auto listener = direct_listener(ctx);
  int verified = 0;
  auto server = [&]() -> couring::task<void> {
    for (int i = 0; i < 20; ++i) {
      auto s = co_await listener.accept();
      require_ok(s);
      REQUIRE(s->is_direct() == direct_expected(ctx));
      if (s->is_direct()) {
        CHECK(s->native_handle() == -1);
        CHECK(s->set_no_delay(true).error() == couring::error::direct_descriptor);
        CHECK(s->local_endpoint().error() == couring::error::direct_descriptor);
        CHECK(s->remote_endpoint().error() == couring::error::direct_descriptor);
        CHECK(s->shutdown_write().error() == couring::error::direct_descriptor);
      } else {
        CHECK(s->native_handle() >= 0);
        CHECK(s->set_no_delay(true).has_value());
      }
      ctx.spawn(echo_direct(std::move(*s)));
    }
  };
  auto client = [&](std::uint64_t seed) -> couring::task<void> {
    auto c = co_await couring::tcp_stream::connect(ctx, listener.local_endpoint());
    require_ok(c);
    CHECK(!c->is_direct());
    const auto data = pattern(seed, 256 * 1024);
    std::vector<std::byte> back(data.size());
    auto reader = [&]() -> couring::task<void> {
      require_ok(co_await c->read_exactly(back));
    };
    auto rt = reader();
    auto writer = [&]() -> couring::task<void> {
      require_ok(co_await c->write_all(data));
    };
    auto wt = writer();
    co_await couring::when_all(std::move(rt), std::move(wt));
    if (back == data)
      ++verified;
  };
  auto body = [&]() -> couring::task<void> {
    auto st = server();
    ctx.spawn(std::move(st));
    std::vector<couring::task<void>> clients;
    for (std::uint64_t i = 0; i < 20; ++i)
      clients.push_back(client(i));
    for (auto& t : clients)
      co_await std::move(t);
  };
  ctx.run(body());
  CHECK(verified == 20);
}

TEST_CASE("direct descriptors: 2,000 close-while-reading cycles on 4 slots; a slot is reused only "
          "after its last request") {
  test_support::raise_fd_limit();
  couring::io_context_options options;
  options.direct_descriptor_slots = 4; // every few connections reuse a slot
  couring::io_context ctx(options);
  auto listener = direct_listener(ctx);
  int cancelled = 0, clean = 0, wrong = 0;
  auto body = [&]() -> couring::task<void> {
    for (std::uint64_t i = 0; i < 2000; ++i) {
      auto c = co_await couring::tcp_stream::connect(ctx, listener.local_endpoint());
      require_ok(c);
      auto s = co_await listener.accept();
      require_ok(s);
      REQUIRE(s->is_direct() == direct_expected(ctx));
      std::byte buf[64];
      std::fill(std::begin(buf), std::end(buf), std::byte{0});
      auto closer = [&]() -> couring::task<void> {
        (void)co_await couring::nop(ctx); // the read below is in flight by now
        s->close();
      };
      auto ct = closer();
      ctx.spawn(std::move(ct));
      auto r = co_await s->read(buf); // closed while in flight
      if (!r && r.error() == std::errc::operation_canceled)
        ++cancelled;
      // Whatever the next connection on this slot sends must never land here.
      const auto mine = pattern(i, 64);
      auto w = co_await c->write_all(mine);
      require_ok(w);
      if (std::all_of(std::begin(buf), std::end(buf),
                      [](std::byte b) { return b == std::byte{0}; }))
        ++clean;
      else
        ++wrong;
    }
  };
  ctx.run(body());
  CHECK(cancelled == 2000);
  CHECK(clean == 2000);
  CHECK(wrong == 0);
}

TEST_CASE("direct descriptors: closing with a write_all in flight ends it, then the slot serves "
          "the next connection") {
  couring::io_context_options options;
  options.direct_descriptor_slots = 1; // the next connection needs the very same slot
  couring::io_context ctx(options);
  auto listener = direct_listener(ctx);
  auto body = [&]() -> couring::task<void> {
    auto c1 = co_await couring::tcp_stream::connect(ctx, listener.local_endpoint());
    require_ok(c1);
    auto s1 = co_await listener.accept();
    require_ok(s1);
    const auto big = pattern(5, 32 << 20); // far more than the socket buffers: it stalls
    ctx.spawn(test_support::close_after(ctx, *s1, 50ms));
    auto w = co_await s1->write_all(big);
    REQUIRE(!w);
    CHECK(w.error() == std::errc::operation_canceled);
    c1->close();
    // The only slot is free again once the write's request is in.
    auto c2 = co_await couring::tcp_stream::connect(ctx, listener.local_endpoint());
    require_ok(c2);
    auto s2 = co_await couring::with_timeout(listener.accept(), 5s);
    require_ok(s2);
    const auto msg = pattern(6, 1000);
    require_ok(co_await c2->write_all(msg));
    std::vector<std::byte> got(1000);
    require_ok(co_await s2->read_exactly(got));
    CHECK(got == msg);
  };
  ctx.run(body());
}
