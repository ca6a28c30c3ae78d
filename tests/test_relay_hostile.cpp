// relay(from, to) against hostile peers and cancellation mid-splice: urgent
// (out-of-band) TCP data, a destination that never reads while the drain
// splice sleeps in the kernel, closes and timeouts at that point, and what
// transferred() says then. Runs on both backends (meson test --setup=epoll).

#include <catch2/catch.hpp>

#include <chrono>
#include <cstddef>
#include <limits>
#include <optional>
#include <random>
#include <stop_token>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace couring;
using namespace std::chrono_literals;
using test_support::connect_pair;
using test_support::fill_pattern;
using test_support::loopback_listener;
using test_support::open_fd_count;
using test_support::pattern_at;
using test_support::require_ok;

namespace {

constexpr std::size_t mib = 1024 * 1024;

// Reads what s has until nothing comes for `quiet` (or its end): the count,
// and how many bytes differ from the pattern.
task<std::pair<std::size_t, std::size_t>> drain_pattern(stream& s,
                                                        std::chrono::milliseconds quiet) {
  std::vector<std::byte> buf(256 * 1024);
  std::size_t total = 0, wrong = 0;
  for (;;) {
    auto n = co_await with_timeout(s.read(buf), quiet);
    if (!n || *n == 0)
      co_return std::pair{total, wrong};
    for (std::size_t i = 0; i < *n; ++i)
      wrong += buf[i] != pattern_at(total + i);
    total += *n;
  }
}

// Writes pattern bytes to s until a write does not finish within 500 ms.
task<std::size_t> flood_pattern(stream& s, std::size_t limit) {
  std::vector<std::byte> buf(1 * mib);
  std::size_t sent = 0;
  while (sent < limit) {
    fill_pattern(buf, sent);
    auto w = co_await with_timeout(s.write_all(buf), 500ms);
    if (!w)
      co_return sent;
    sent += buf.size();
  }
  co_return sent;
}

void send_oob(tcp_stream& s, char c) {
  REQUIRE(::send(s.native_handle(), &c, 1, MSG_OOB) == 1);
}

} // namespace

TEST_CASE("relay hostile: urgent (MSG_OOB) data in the source neither ends the relay early nor "
          "spins; the bytes after it arrive, as with a plain read") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener);
    // For comparison: a plain read steps over the urgent byte.
    require_ok(co_await a.client.write_all(std::string_view("abc")));
    send_oob(a.client, '!');
    require_ok(co_await a.client.write_all(std::string_view("def")));
    std::byte six[6];
    require_ok(co_await a.server.read_exactly(six));
    CHECK(test_support::text(six) == "abcdef");

    require_ok(co_await a.client.write_all(std::string_view("abc")));
    send_oob(a.client, '!');
    (void)co_await sleep_for(ctx, 20ms);
    require_ok(co_await a.client.write_all(std::string_view("def")));
    auto op = relay(a.server, b.server);
    auto relaying = [&]() -> task<result<std::size_t>> {
      auto& r = op;
      auto res = co_await r;
      (void)b.server.shutdown_write();
      co_return res;
    };
    auto later = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 200ms);
      require_ok(co_await a.client.write_all(std::string_view("ghi")));
      require_ok(a.client.shutdown_write());
    };
    auto reading = [&]() -> task<std::string> {
      std::string s;
      std::byte buf[64];
      for (;;) {
        auto n = co_await b.client.read(buf);
        if (!n || *n == 0)
          co_return s;
        s += test_support::text(std::span(buf, *n));
      }
    };
    auto all = co_await with_timeout(when_all(relaying(), later(), reading()), 5s);
    require_ok(all);
    auto& [r, ignored, got] = *all;
    require_ok(r);
    CHECK(got == "abcdefghi");
    CHECK(*r == 9);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("relay hostile: a destination that never reads, relay ended by a timeout: "
          "transferred() is exactly what the destination's peer receives") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const std::size_t fds_before = open_fd_count();
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener); // b.client reads only afterwards
    auto op = relay(a.server, b.server);
    auto relaying = [&]() -> task<result<std::size_t>> {
      auto& r = op;
      co_return co_await r;
    };
    auto bounded = [&]() -> task<result<std::size_t>> {
      co_return co_await with_timeout(relaying(), 1s);
    };
    auto [r, flooded] = co_await when_all(bounded(), flood_pattern(a.client, 256 * mib));
    REQUIRE(!r);
    CHECK(r.error() == std::errc::timed_out);
    auto [got, wrong] = co_await drain_pattern(b.client, 300ms);
    INFO("flooded " << flooded << ", relayed " << op.transferred() << ", received " << got);
    CHECK(got == op.transferred());
    CHECK(wrong == 0);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("relay hostile: closing the destination while the drain waits on a full socket ends "
          "the relay with operation_canceled, promptly") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const std::size_t fds_before = open_fd_count();
  for (int which : {0, 1, 2}) { // close to, close from, close the stream of an echo
    DYNAMIC_SECTION("close " << (which == 0 ? "to" : which == 1 ? "from" : "the echo stream")) {
      auto body = [&]() -> task<void> {
        auto a = co_await connect_pair(ctx, listener);
        auto b = co_await connect_pair(ctx, listener); // b.client never reads
        // The echo sends back to a.client, which never reads either.
        auto op = relay(a.server, which == 2 ? a.server : b.server);
        auto relaying = [&]() -> task<result<std::size_t>> {
          auto& r = op;
          co_return co_await r;
        };
        auto closer = [&]() -> task<void> {
          // By now the destination is full and the source held back.
          (void)co_await flood_pattern(a.client, 256 * mib);
          (which == 0 ? b.server : a.server).close();
        };
        const auto t0 = std::chrono::steady_clock::now();
        auto all = co_await with_timeout(when_all(relaying(), closer()), 20s);
        require_ok(all);
        auto& [r, ignored] = *all;
        REQUIRE(!r);
        CHECK(r.error() == std::errc::operation_canceled);
        CHECK(std::chrono::steady_clock::now() - t0 < test_support::scaled(10s));
        CHECK(op.transferred() > 0);
      };
      ctx.run(body());
      CHECK(ctx.pending_operations() == 0);
    }
  }
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("relay hostile: destroying the io_context with relays in every stage (waiting for "
          "bytes, drain asleep on a full socket, waiting in line) frees everything") {
  const std::size_t fds_before = open_fd_count();
  int alive = 0;
  int resumed = 0;
  struct frame_counter {
    int* n;
    explicit frame_counter(int* c) : n(c) { ++*n; }
    ~frame_counter() { --*n; }
  };
  std::optional<io_context> holder(std::in_place);
  {
    io_context& ctx = *holder;
    auto listener = loopback_listener(ctx);
    bool all_started = false;
    // A relay waiting for bytes; a relay whose drain sleeps on a full
    // destination (b.client never reads) while its source is held back;
    // a second relay on the same streams and a read, both waiting in line.
    auto stages = [&]() -> task<void> {
      frame_counter fc(&alive);
      auto a = co_await connect_pair(ctx, listener);
      auto b = co_await connect_pair(ctx, listener);
      auto c = co_await connect_pair(ctx, listener);
      auto d = co_await connect_pair(ctx, listener);
      auto idle = [&]() -> task<void> {
        frame_counter f(&alive);
        (void)co_await relay(c.server, d.server);
        ++resumed;
      };
      auto busy = [&]() -> task<void> {
        frame_counter f(&alive);
        (void)co_await relay(a.server, b.server);
        ++resumed;
      };
      auto queued = [&]() -> task<void> {
        frame_counter f(&alive);
        (void)co_await relay(a.server, b.server);
        ++resumed;
      };
      auto queued_reader = [&]() -> task<void> {
        frame_counter f(&alive); // holds d.client's write side, waits for a.server's read side
        (void)co_await relay(a.server, d.client);
        ++resumed;
      };
      auto reader = [&]() -> task<void> {
        frame_counter f(&alive);
        std::byte buf[16];
        (void)co_await a.server.read(buf);
        ++resumed;
      };
      auto flood = [&]() -> task<void> {
        (void)co_await flood_pattern(a.client, 256 * mib);
        all_started = true;
      };
      co_await when_all(idle(), busy(), queued(), queued_reader(), reader(), flood());
      ++resumed;
    };
    ctx.spawn(stages());
    auto stopper = [&]() -> task<void> {
      while (!all_started)
        (void)co_await couring::sleep_for(ctx, 10ms);
      ctx.stop();
    };
    ctx.spawn(stopper());
    ctx.run();
    CHECK(all_started);
    CHECK(alive == 6);
    CHECK(resumed == 0);
    CHECK(ctx.pending_operations() > 0);
  }
  holder.reset();
  CHECK(alive == 0);
  CHECK(resumed == 0);
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("relay hostile: with_timeout and close while the relay waits in line for to's write "
          "side or for from's read side; nothing taken from the source, both streams usable") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const std::size_t fds_before = open_fd_count();
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener);
    require_ok(co_await a.client.write_all(std::string_view("kept")));

    // 1. to's write side is held by a write that waits for room (b.client
    // does not read yet).
    std::vector<std::byte> big(32 * mib);
    auto writing = [&]() -> task<bool> {
      auto w = co_await b.server.write_all(big);
      co_return w.has_value();
    };
    auto timed_in_line = [&]() -> task<result<std::size_t>> {
      (void)co_await sleep_for(ctx, 50ms); // the write holds the side by now
      co_return co_await with_timeout(relay(a.server, b.server), 100ms);
    };
    auto unblock = [&]() -> task<std::size_t> {
      (void)co_await sleep_for(ctx, 300ms);
      std::vector<std::byte> buf(big.size());
      auto n = co_await b.client.read_exactly(buf);
      co_return n ? buf.size() : 0;
    };
    auto [w, timed, drained] = co_await when_all(writing(), timed_in_line(), unblock());
    CHECK(w);
    CHECK(timed.error() == std::errc::timed_out);
    CHECK(drained == big.size());

    // 2. from's read side is held by a pending read: the relay takes to's
    // write side, then waits for from's; a timeout, then a close of to.
    auto read_first = [&]() -> task<std::string> {
      std::byte four[4];
      auto n = co_await a.server.read_exactly(four);
      co_return n ? test_support::text(four) : n.error().message();
    };
    // The read is served first (it asked first); the relay's timeout comes
    // while it waits in line for the read side. Nothing pending holds the
    // read side forever: the read got "kept" at once, so hold it with a
    // second read that waits for bytes.
    std::string first = co_await read_first();
    CHECK(first == "kept");
    auto pending_read = [&]() -> task<std::string> {
      std::byte two[2];
      auto n = co_await a.server.read_exactly(two);
      co_return n ? test_support::text(two) : n.error().message();
    };
    auto timed_reader_wait = [&]() -> task<result<std::size_t>> {
      (void)co_await sleep_for(ctx, 20ms);
      co_return co_await with_timeout(relay(a.server, b.server), 100ms);
    };
    auto feed = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 300ms);
      require_ok(co_await a.client.write_all(std::string_view("okAFTER")));
    };
    auto [got, timed2, ignored] = co_await when_all(pending_read(), timed_reader_wait(), feed());
    CHECK(got == "ok");
    CHECK(timed2.error() == std::errc::timed_out);
    // The relay took nothing: the next bytes are still in a.server.
    auto moved = co_await relay(a.server, b.server, 5);
    require_ok(moved);
    std::byte five[5];
    require_ok(co_await b.client.read_exactly(five));
    CHECK(test_support::text(five) == "AFTER");

    // 3. The same wait in line for from's read side, ended by a close of to.
    auto pending_read2 = [&]() -> task<std::string> {
      std::byte two[2];
      auto n = co_await a.server.read_exactly(two);
      co_return n ? test_support::text(two) : n.error().message();
    };
    auto waiting_relay = [&]() -> task<result<std::size_t>> {
      (void)co_await sleep_for(ctx, 20ms);
      co_return co_await relay(a.server, b.server);
    };
    auto close_to = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 100ms);
      b.server.close();
      (void)co_await sleep_for(ctx, 50ms);
      require_ok(co_await a.client.write_all(std::string_view("no")));
    };
    auto all = co_await with_timeout(when_all(pending_read2(), waiting_relay(), close_to()), 5s);
    require_ok(all);
    auto& [got2, closed, ignored2] = *all;
    CHECK(got2 == "no");
    CHECK(closed.error() == std::errc::operation_canceled);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
  CHECK(open_fd_count() == fds_before);
}

TEST_CASE("relay hostile: no descriptor left for the pipe: relay and send_file fail with EMFILE, "
          "nothing started, the streams still work") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener);
    require_ok(co_await a.client.write_all(std::string_view("still here")));
    rlimit old{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &old) == 0);
    const int lowest = ::dup(0);
    REQUIRE(lowest >= 0);
    ::close(lowest);
    rlimit low = old;
    low.rlim_cur = static_cast<rlim_t>(lowest);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
    auto op = relay(a.server, b.server);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &old) == 0);
    auto r = co_await op;
    REQUIRE(!r);
    CHECK(r.error() == std::errc::too_many_files_open);
    CHECK(op.transferred() == 0);
    auto moved = co_await relay(a.server, b.server, 10);
    require_ok(moved);
    std::byte ten[10];
    require_ok(co_await b.client.read_exactly(ten));
    CHECK(test_support::text(ten) == "still here");
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("relay hostile: a peer that mixes urgent bytes into a pattern stream, an urgent byte "
          "just before its end: every normal byte arrives, in order, and the relay ends") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  for (bool echo : {false, true}) {
    DYNAMIC_SECTION((echo ? "relay(s, s)" : "relay(a, b)")) {
      auto body = [&]() -> task<void> {
        auto a = co_await connect_pair(ctx, listener);
        auto b = co_await connect_pair(ctx, listener);
        tcp_stream& to = echo ? a.server : b.server;
        tcp_stream& receiver = echo ? a.client : b.client;
        constexpr std::size_t rounds = 100;
        constexpr std::size_t piece = 1000;
        std::size_t received = 0, wrong = 0;
        // TCP keeps one urgent mark: an urgent byte still unread when the
        // next one comes becomes normal data (for a plain read too). So each
        // urgent byte goes out only once the relay is past the previous one.
        auto sender = [&]() -> task<void> {
          std::vector<std::byte> buf(piece);
          for (std::size_t r = 0; r < rounds; ++r) {
            fill_pattern(buf, r * piece);
            require_ok(co_await a.client.write_all(buf));
            while (received < r * piece + 1)
              (void)co_await sleep_for(ctx, 1ms);
            send_oob(a.client, '!');
          }
          require_ok(a.client.shutdown_write());
        };
        auto relaying = [&]() -> task<result<std::size_t>> {
          auto r = co_await relay(a.server, to);
          (void)to.shutdown_write();
          co_return r;
        };
        auto receiving = [&]() -> task<void> {
          std::vector<std::byte> buf(64 * 1024);
          for (;;) {
            auto n = co_await receiver.read(buf);
            if (!n || *n == 0)
              co_return;
            for (std::size_t i = 0; i < *n; ++i)
              wrong += buf[i] != pattern_at(received + i);
            received += *n;
          }
        };
        auto all = co_await with_timeout(when_all(sender(), relaying(), receiving()), 20s);
        require_ok(all);
        auto& [ignored, r, ignored2] = *all;
        require_ok(r);
        CHECK(*r == rounds * piece);
        CHECK(received == rounds * piece);
        CHECK(wrong == 0);
      };
      ctx.run(body());
      CHECK(ctx.pending_operations() == 0);
    }
  }
}

TEST_CASE("relay hostile: a destination already shut down for writing: EPIPE, nothing counted; "
          "a stop token ends a relay whose drain sleeps on a full socket") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto b = co_await connect_pair(ctx, listener);
    require_ok(co_await a.client.write_all(std::string_view("lost")));
    require_ok(b.server.shutdown_write());
    auto op = relay(a.server, b.server);
    auto r = co_await op;
    REQUIRE(!r);
    CHECK(r.error() == std::errc::broken_pipe);
    CHECK(op.transferred() == 0);

    auto c = co_await connect_pair(ctx, listener); // c.client reads only afterwards
    auto d = co_await connect_pair(ctx, listener);
    std::stop_source source;
    auto op2 = relay(d.server, c.server);
    auto inner = [&]() -> task<result<std::size_t>> {
      auto& o = op2;
      co_return co_await o;
    };
    auto relaying = [&]() -> task<result<std::size_t>> {
      co_return co_await with_stop_token(inner(), source.get_token());
    };
    auto flood_then_stop = [&]() -> task<std::size_t> {
      auto n = co_await flood_pattern(d.client, 256 * mib);
      source.request_stop();
      co_return n;
    };
    auto [r2, flooded] = co_await when_all(relaying(), flood_then_stop());
    REQUIRE(!r2);
    CHECK(r2.error() == std::errc::operation_canceled);
    auto [got, wrong] = co_await drain_pattern(c.client, 300ms);
    INFO("flooded " << flooded << ", relayed " << op2.transferred());
    CHECK(got == op2.transferred());
    CHECK(wrong == 0);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("relay hostile: cancelled by a timeout at random moments while bytes flow: never hangs, "
          "transferred() is exactly what arrives, every byte in order") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  std::minstd_rand rng(12345);
  const int iterations = test_support::time_scale() > 1 ? 40 : 100;
  auto body = [&]() -> task<void> {
    int mismatches = 0, wrong_total = 0;
    auto worst = std::chrono::steady_clock::duration::zero();
    for (int it = 0; it < iterations; ++it) {
      auto a = co_await connect_pair(ctx, listener);
      auto b = co_await connect_pair(ctx, listener);
      // Small pipes and chunks: many rounds, each a chance for the cancel.
      relay_options o;
      o.pipe_size = 65536;
      o.chunk = 16384 << (it % 3);
      auto op = relay(a.server, b.server, std::numeric_limits<std::size_t>::max(), o);
      auto inner = [&]() -> task<result<std::size_t>> {
        auto& r = op;
        co_return co_await r;
      };
      const auto delay = std::chrono::microseconds(rng() % 3000);
      auto relaying = [&]() -> task<result<std::size_t>> {
        co_return co_await with_timeout(inner(), delay);
      };
      bool relay_done = false;
      auto flood = [&]() -> task<void> {
        std::vector<std::byte> buf(64 * 1024);
        std::size_t sent = 0;
        while (!relay_done) {
          fill_pattern(buf, sent);
          auto w = co_await with_timeout(a.client.write_all(buf), 20ms);
          if (!w)
            break;
          sent += buf.size();
        }
      };
      const auto t0 = std::chrono::steady_clock::now();
      auto reading = [&]() -> task<std::pair<std::size_t, std::size_t>> {
        auto got = co_await drain_pattern(b.client, 100ms);
        co_return got;
      };
      auto ended = [&]() -> task<result<std::size_t>> {
        auto r = co_await relaying();
        worst = std::max(worst, std::chrono::steady_clock::now() - t0 - delay);
        relay_done = true;
        co_return r;
      };
      auto [r, ignored, got] = co_await when_all(ended(), flood(), reading());
      (void)r;
      if (got.first != op.transferred()) {
        ++mismatches;
        UNSCOPED_INFO("iteration " << it << ": received " << got.first << ", transferred() "
                                   << op.transferred());
      }
      wrong_total += static_cast<int>(got.second);
    }
    INFO("slowest cancel took "
         << std::chrono::duration_cast<std::chrono::milliseconds>(worst).count() << " ms");
    CHECK(mismatches == 0);
    CHECK(wrong_total == 0);
    CHECK(worst < test_support::scaled(1s));
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("send_file hostile: cancelled by a timeout at random moments, a peer that reads or "
          "never reads: never hangs, transferred() is exactly what arrives, every byte right") {
  char name[] = "/tmp/couring-relay-hostile-XXXXXX";
  const int fd = ::mkstemp(name);
  REQUIRE(fd >= 0);
  const std::size_t size = 8 * mib;
  {
    std::vector<std::byte> buf(size);
    fill_pattern(buf, 0);
    REQUIRE(::write(fd, buf.data(), size) == static_cast<ssize_t>(size));
    ::close(fd);
  }
  io_context ctx;
  auto listener = loopback_listener(ctx);
  std::minstd_rand rng(777);
  const int iterations = test_support::time_scale() > 1 ? 30 : 80;
  auto body = [&]() -> task<void> {
    auto f = co_await file::open(ctx, name);
    require_ok(f);
    int mismatches = 0;
    std::size_t wrong_total = 0;
    auto worst = std::chrono::steady_clock::duration::zero();
    for (int it = 0; it < iterations; ++it) {
      auto p = co_await connect_pair(ctx, listener);
      const bool reads = it % 2 == 0;
      auto op = send_file(p.server, *f, 0, size);
      auto inner = [&]() -> task<result<std::size_t>> {
        auto& o = op;
        co_return co_await o;
      };
      const auto delay = std::chrono::microseconds(rng() % (reads ? 4000 : 2000));
      const auto t0 = std::chrono::steady_clock::now();
      auto sending = [&]() -> task<result<std::size_t>> {
        auto r = co_await with_timeout(inner(), delay);
        worst = std::max(worst, std::chrono::steady_clock::now() - t0 - delay);
        co_return r;
      };
      auto reading = [&]() -> task<std::pair<std::size_t, std::size_t>> {
        if (!reads)
          (void)co_await sleep_for(ctx, 50ms); // the socket fills up meanwhile
        co_return co_await drain_pattern(p.client, 100ms);
      };
      auto [r, got] = co_await when_all(sending(), reading());
      if (r)
        CHECK(*r == size);
      if (got.first != op.transferred()) {
        ++mismatches;
        UNSCOPED_INFO("iteration " << it << ": received " << got.first << ", transferred() "
                                   << op.transferred());
      }
      wrong_total += got.second;
    }
    INFO("slowest cancel took "
         << std::chrono::duration_cast<std::chrono::milliseconds>(worst).count() << " ms");
    CHECK(mismatches == 0);
    CHECK(wrong_total == 0);
    CHECK(worst < test_support::scaled(1s));
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
  ::unlink(name);
}

TEST_CASE("relay hostile: urgent data on a direct descriptor (io_uring's file table): the "
          "step over it works there too") {
  io_context ctx;
  listen_options lo;
  lo.direct_descriptors = true; // plain descriptors on the epoll backend
  auto listener = loopback_listener(ctx, lo);
  auto body = [&]() -> task<void> {
    auto client = co_await tcp_stream::connect(ctx, listener.local_endpoint());
    require_ok(client);
    auto server = co_await listener.accept();
    require_ok(server);
    CHECK(server->is_direct() == (ctx.features().backend == backend::io_uring));
    require_ok(co_await client->write_all(std::string_view("abc")));
    send_oob(*client, '!');
    auto later = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 50ms);
      require_ok(co_await client->write_all(std::string_view("def")));
    };
    auto echo = [&]() -> task<result<std::size_t>> {
      co_return co_await relay(*server, *server, 6);
    };
    auto all = co_await with_timeout(when_all(echo(), later()), 5s);
    require_ok(all);
    auto& [moved, ignored] = *all;
    require_ok(moved);
    CHECK(*moved == 6);
    std::byte six[6];
    require_ok(co_await client->read_exactly(six));
    CHECK(test_support::text(six) == "abcdef");
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("relay hostile: into a pipe whose reader is slow, then gone: every byte in order, then "
          "EPIPE with transferred() what the reader got") {
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto a = co_await connect_pair(ctx, listener);
    auto ends = couring::pipe(ctx).value();
    auto& in = ends.first;
    auto& out = ends.second;
    const std::size_t total = 2 * mib;
    auto sender = [&]() -> task<void> {
      std::vector<std::byte> buf(total);
      fill_pattern(buf, 0);
      require_ok(co_await a.client.write_all(buf));
      require_ok(a.client.shutdown_write());
    };
    auto relaying = [&]() -> task<result<std::size_t>> {
      auto r = co_await relay(a.server, out);
      out.close();
      co_return r;
    };
    auto slow_reader = [&]() -> task<std::pair<std::size_t, std::size_t>> {
      std::vector<std::byte> buf(48 * 1024);
      std::size_t got = 0, wrong = 0;
      for (;;) {
        auto n = co_await in.read(buf);
        if (!n || *n == 0)
          co_return std::pair{got, wrong};
        for (std::size_t i = 0; i < *n; ++i)
          wrong += buf[i] != pattern_at(got + i);
        got += *n;
        (void)co_await sleep_for(ctx, 1ms);
      }
    };
    auto all = co_await with_timeout(when_all(sender(), relaying(), slow_reader()), 20s);
    require_ok(all);
    auto& [ignored, r, got] = *all;
    require_ok(r);
    CHECK(*r == total);
    CHECK(got.first == total);
    CHECK(got.second == 0);

    // The reader goes away mid-relay.
    auto b = co_await connect_pair(ctx, listener);
    auto ends2 = couring::pipe(ctx).value();
    auto& in2 = ends2.first;
    auto& out2 = ends2.second;
    auto op = relay(b.server, out2);
    auto relaying2 = [&]() -> task<result<std::size_t>> {
      auto& o = op;
      co_return co_await o;
    };
    std::size_t read_before = 0;
    auto reader_then_gone = [&]() -> task<void> {
      std::vector<std::byte> buf(64 * 1024);
      while (read_before < 256 * 1024) {
        auto n = co_await in2.read(buf);
        if (!n || *n == 0)
          break;
        read_before += *n;
      }
      in2.close();
    };
    auto source = [&]() -> task<void> {
      (void)co_await flood_pattern(b.client, 64 * mib);
    };
    auto all2 = co_await with_timeout(when_all(relaying2(), reader_then_gone(), source()), 20s);
    require_ok(all2);
    auto& [r2, ignored2, ignored3] = *all2;
    REQUIRE(!r2);
    CHECK(r2.error() == std::errc::broken_pipe);
    CHECK(op.transferred() >= read_before);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}
