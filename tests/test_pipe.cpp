// Pipes as streams (IORING_OP_READ/WRITE instead of RECV/SEND) and
// send_file (file -> pipe -> socket with IORING_OP_SPLICE): whole files
// checksummed by the peer, short splices, a peer that resets, a file that
// shrinks while it is being sent, closing and cancelling.

#include <catch2/catch.hpp>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using namespace test_support;
using namespace couring;

namespace {

constexpr std::size_t piece = 1 << 20;

std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
void fill_piece(std::span<std::byte> p, std::uint64_t index) {
  auto* w = reinterpret_cast<std::uint64_t*>(p.data());
  for (std::size_t i = 0; i < p.size() / 8; ++i)
    w[i] = mix(index * 0x100000001ull + i);
}
std::uint64_t checksum(std::span<const std::byte> p, std::uint64_t index) {
  const auto* w = reinterpret_cast<const std::uint64_t*>(p.data());
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < p.size() / 8; ++i)
    sum += mix(w[i] ^ (index << 32 | i));
  return sum;
}

// A file of `pieces` MiB of distinct pieces (written with pwrite: set-up, not
// what is tested); returns the checksum of its content.
std::uint64_t make_file(const std::string& path, std::size_t pieces) {
  const int fd = ::open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0600);
  REQUIRE(fd >= 0);
  std::vector<std::byte> buf(piece);
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < pieces; ++i) {
    fill_piece(buf, i);
    sum += checksum(buf, i);
    REQUIRE(::pwrite(fd, buf.data(), piece, static_cast<off_t>(i * piece)) ==
            static_cast<ssize_t>(piece));
  }
  ::close(fd);
  return sum;
}

// Reads whole pieces from s until end of stream; checksums what came.
task<std::pair<std::size_t, std::uint64_t>> receive(tcp_stream& s) {
  std::vector<std::byte> buf(piece);
  std::size_t got = 0;
  std::uint64_t sum = 0;
  for (std::uint64_t i = 0;; ++i) {
    auto r = co_await s.read_exactly(buf);
    if (!r)
      break;
    got += piece;
    sum += checksum(buf, i);
  }
  co_return std::pair{got, sum};
}

double mib_per_s(std::size_t bytes, std::chrono::steady_clock::duration d) {
  return static_cast<double>(bytes) / (1 << 20) / std::chrono::duration<double>(d).count();
}

} // namespace

TEST_CASE("pipe: both ends are streams; end of stream; EPIPE (no SIGPIPE)") {
  io_context ctx;
  auto body = [&]() -> task<void> {
    auto p = pipe(ctx);
    require_ok(p);
    // Named references, not a structured binding: clang 14 cannot capture
    // bindings in the lambdas below.
    auto& reader = p->first;
    auto& writer = p->second;
    auto w = co_await writer.write("ping");
    require_ok(w);
    CHECK(*w == 4);
    std::byte buf[16];
    auto n = co_await reader.read(buf);
    require_ok(n);
    CHECK(text(std::span(buf, *n)) == "ping");

    const auto big = pattern(3, 1 << 20); // larger than the pipe: short writes inside
    auto drain = [&]() -> task<std::vector<std::byte>> {
      std::vector<std::byte> got(big.size());
      require_ok(co_await reader.read_exactly(got));
      co_return got;
    };
    auto fill = [&]() -> task<void> {
      require_ok(co_await writer.write_all(big));
    };
    auto [got, done] = co_await when_all(drain(), fill());
    CHECK(got == big);

    writer.close();
    auto eof = co_await reader.read(buf);
    require_ok(eof);
    CHECK(*eof == 0);
    auto exact = co_await reader.read_exactly(buf);
    CHECK(exact.error() == error::end_of_stream);

    auto q = pipe(ctx);
    require_ok(q);
    q->first.close();
    auto broken = co_await q->second.write("nobody reads");
    CHECK(broken.error() == std::errc::broken_pipe);
    CHECK(q->second.shutdown_write().error() == std::errc::not_a_socket);
  };
  ctx.run(body());
  struct sigaction sa {};
  sigaction(SIGPIPE, nullptr, &sa);
  CHECK(sa.sa_handler == SIG_IGN); // it was the default: now ignored
}

TEST_CASE(
    "pipe: a pending read ends with operation_canceled on close, timed_out under with_timeout") {
  io_context ctx;
  auto body = [&]() -> task<void> {
    auto p = pipe(ctx);
    require_ok(p);
    std::byte buf[8];
    auto timed = co_await with_timeout(p->first.read(buf), 30ms);
    CHECK(timed.error() == std::errc::timed_out);
    auto close_later = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 20ms);
      p->first.close();
    };
    auto reader = [&]() -> task<result<std::size_t>> {
      co_return co_await p->first.read(buf);
    };
    auto [r, ignored] = co_await when_all(reader(), close_later());
    CHECK(r.error() == std::errc::operation_canceled);
    // The writer still works, and sees the reader gone.
    auto w = co_await p->second.write("x");
    CHECK(w.error() == std::errc::broken_pipe);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("stream(ctx, fd) on a pipe descriptor picks read/write by itself") {
  io_context ctx;
  int fds[2];
  REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
  stream in(ctx, fds[0]), out(ctx, fds[1]);
  auto body = [&]() -> task<void> {
    require_ok(co_await out.write_all(std::string_view("generic")));
    std::byte buf[7];
    require_ok(co_await in.read_exactly(buf));
    CHECK(text(buf) == "generic");
  };
  ctx.run(body());
}

TEST_CASE(
    "send_file: a whole file over loopback, checksummed by the peer; against read+write_all") {
  temp_dir dir("pipe");
  // 1 GiB; 128 MiB under sanitizers (COURING_TEST_TIME_SCALE > 1).
  const std::size_t pieces = time_scale() > 1 ? 128 : 1024;
  const std::uint64_t expected = make_file(dir / "big", pieces);
  const std::size_t total = pieces * piece;
  io_context ctx;
  auto listener = loopback_listener(ctx);
  std::chrono::steady_clock::duration spliced{}, copied{};

  auto body = [&]() -> task<void> {
    auto f = co_await file::open(ctx, dir / "big");
    require_ok(f);
    for (bool splice : {true, false}) {
      auto pair = co_await connect_pair(ctx, listener);
      auto sender = [&]() -> task<void> {
        const auto t0 = std::chrono::steady_clock::now();
        if (splice) {
          auto sent = co_await send_file(pair.server, *f, 0, total);
          require_ok(sent);
          CHECK(*sent == total);
          spliced = std::chrono::steady_clock::now() - t0;
        } else {
          std::vector<std::byte> buf(piece);
          for (std::size_t off = 0; off < total; off += piece) {
            require_ok(co_await f->read_exactly_at(buf, off));
            require_ok(co_await pair.server.write_all(buf));
          }
          copied = std::chrono::steady_clock::now() - t0;
        }
        pair.server.close();
      };
      auto [ignored, received] = co_await when_all(sender(), receive(pair.client));
      CHECK(received.first == total);
      CHECK(received.second == expected);
    }
  };
  ctx.run(body());
  WARN(pieces << " MiB over loopback: send_file " << mib_per_s(total, spliced)
              << " MiB/s, read_at + write_all " << mib_per_s(total, copied) << " MiB/s");
}

TEST_CASE("send_file: a peer that resets after 1 MiB gives EPIPE/ECONNRESET and the count sent") {
  temp_dir dir("pipe");
  make_file(dir / "f", 64);
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto f = co_await file::open(ctx, dir / "f");
    require_ok(f);
    auto pair = co_await connect_pair(ctx, listener);
    auto op = send_file(pair.server, *f, 0, 64 * piece);
    auto sender = [&]() -> task<result<std::size_t>> {
      auto& sending = op; // g++ 12 wants to copy a captured awaitable
      auto r = co_await sending;
      co_return r;
    };
    auto resetter = [&]() -> task<void> {
      std::vector<std::byte> buf(piece);
      require_ok(co_await pair.client.read_exactly(buf));
      linger lg{1, 0}; // RST instead of FIN
      ::setsockopt(pair.client.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
      pair.client.close();
    };
    auto both = co_await with_timeout(when_all(sender(), resetter()), 20s);
    require_ok(both);
    auto& [r, ignored] = *both;
    REQUIRE(!r);
    INFO(r.error().message());
    CHECK((r.error() == std::errc::broken_pipe || r.error() == std::errc::connection_reset));
    CHECK(op.transferred() >= piece);
    CHECK(op.transferred() < 64 * piece);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("send_file: a file truncated while being sent ends early with end_of_file, no hang") {
  temp_dir dir("pipe");
  const std::string path = dir / "shrinking";
  make_file(path, 64);
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto f = co_await file::open(ctx, path);
    require_ok(f);
    auto pair = co_await connect_pair(ctx, listener);
    auto op = send_file(pair.server, *f, 0, 64 * piece);
    auto sender = [&]() -> task<result<std::size_t>> {
      auto& sending = op; // g++ 12 wants to copy a captured awaitable
      auto r = co_await sending;
      pair.server.close();
      co_return r;
    };
    auto reader = [&]() -> task<std::size_t> {
      std::vector<std::byte> buf(64 * 1024);
      std::size_t got = 0;
      bool truncated = false;
      for (;;) {
        auto n = co_await pair.client.read(buf);
        if (!n || *n == 0)
          co_return got;
        got += *n;
        if (!truncated && got >= piece) {
          REQUIRE(::truncate(path.c_str(), 4 * piece) == 0);
          truncated = true;
        }
      }
    };
    auto both = co_await with_timeout(when_all(sender(), reader()), 20s);
    require_ok(both);
    auto& [r, got] = *both;
    INFO(r.error().message());
    CHECK(r.error() == error::end_of_file);
    CHECK(got == op.transferred());
    CHECK(op.transferred() < 64 * piece);
  };
  ctx.run(body());
}

TEST_CASE("send_file: closed, cancelled, never opened, empty range, beyond the end") {
  temp_dir dir("pipe");
  make_file(dir / "f", 16);
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto f = co_await file::open(ctx, dir / "f");
    require_ok(f);
    auto pair = co_await connect_pair(ctx, listener);

    auto empty = co_await send_file(pair.server, *f, 0, 0);
    require_ok(empty);
    CHECK(*empty == 0);

    // A range past the end: what there is, then end_of_file.
    auto tail = send_file(pair.server, *f, 16 * piece - 10, 100);
    auto t = co_await tail;
    CHECK(t.error() == error::end_of_file);
    CHECK(tail.transferred() == 10);
    std::byte ten[10];
    require_ok(co_await pair.client.read_exactly(ten));

    // A peer that reads nothing: the socket fills up, send_file waits.
    auto timed = co_await with_timeout(send_file(pair.server, *f, 0, 16 * piece), 100ms);
    CHECK(timed.error() == std::errc::timed_out);

    auto close_later = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 50ms);
      pair.server.close();
    };
    auto blocked = [&]() -> task<result<std::size_t>> {
      co_return co_await send_file(pair.server, *f, 0, 16 * piece);
    };
    auto [closed, ignored] = co_await when_all(blocked(), close_later());
    CHECK(closed.error() == std::errc::operation_canceled);
    auto after = co_await send_file(pair.server, *f, 0, 10);
    CHECK(after.error() == std::errc::operation_canceled);

    auto other = co_await connect_pair(ctx, listener);
    file never_opened;
    auto none = co_await send_file(other.server, never_opened, 0, 10);
    CHECK(none.error() == std::errc::bad_file_descriptor);
    f->close();
    auto closed_file = co_await send_file(other.server, *f, 0, 10);
    CHECK(closed_file.error() == std::errc::operation_canceled);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("send_file on a non-blocking socket: short splices wait for room with a poll; "
          "timeout and close while waiting") {
  temp_dir dir("pipe");
  const std::size_t pieces = 16;
  const std::uint64_t expected = make_file(dir / "f", pieces);
  const std::size_t total = pieces * piece;
  io_context ctx;
  auto listener = loopback_listener(ctx);
  const auto nonblocking_small_buffer = [](tcp_stream& s) {
    const int fd = s.native_handle();
    REQUIRE(::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK) == 0);
    int size = 16384; // the socket fills after a few pages: many short splices
    REQUIRE(::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size) == 0);
  };
  auto body = [&]() -> task<void> {
    auto f = co_await file::open(ctx, dir / "f");
    require_ok(f);

    // A slow reader: every byte arrives, in order.
    auto pair = co_await connect_pair(ctx, listener);
    nonblocking_small_buffer(pair.server);
    auto sender = [&]() -> task<void> {
      auto sent = co_await send_file(pair.server, *f, 0, total);
      require_ok(sent);
      CHECK(*sent == total);
      pair.server.close();
    };
    auto [ignored, received] = co_await when_all(sender(), receive(pair.client));
    CHECK(received.first == total);
    CHECK(received.second == expected);

    // A reader that never reads: the send waits in its poll until the timeout.
    auto stuck = co_await connect_pair(ctx, listener);
    nonblocking_small_buffer(stuck.server);
    auto op = send_file(stuck.server, *f, 0, total);
    auto timed = co_await with_timeout(std::move(op), 300ms);
    REQUIRE(!timed);
    CHECK(timed.error() == std::errc::timed_out);

    // The same, ended by a close of the socket.
    auto closing = co_await connect_pair(ctx, listener);
    nonblocking_small_buffer(closing.server);
    auto waiting = [&]() -> task<result<std::size_t>> {
      co_return co_await send_file(closing.server, *f, 0, total);
    };
    auto closer = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 200ms);
      closing.server.close();
    };
    auto both = co_await with_timeout(when_all(waiting(), closer()), 10s);
    require_ok(both);
    auto& [r, ignored2] = *both;
    REQUIRE(!r);
    CHECK(r.error() == std::errc::operation_canceled);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("send_file cancelled or closed while waiting in line behind another write ends "
          "with operation_canceled (it used to hang)") {
  temp_dir dir("pipe");
  make_file(dir / "f", 1);
  io_context ctx;
  auto listener = loopback_listener(ctx);
  auto body = [&]() -> task<void> {
    auto f = co_await file::open(ctx, dir / "f");
    require_ok(f);
    for (bool by_close : {false, true}) {
      auto pair = co_await connect_pair(ctx, listener); // the client never reads
      std::vector<std::byte> big(64 * piece);
      // Holds the write side: the peer reads nothing, so it never ends.
      auto blocker = [&]() -> task<void> {
        (void)co_await pair.server.write_all(big);
      };
      auto queued = [&]() -> task<result<std::size_t>> {
        if (by_close)
          co_return co_await send_file(pair.server, *f, 0, piece);
        co_return co_await with_timeout(send_file(pair.server, *f, 0, piece), 100ms);
      };
      auto closer = [&]() -> task<void> {
        (void)co_await sleep_for(ctx, 200ms);
        pair.server.close();
      };
      auto all = co_await with_timeout(when_all(blocker(), queued(), closer()), 10s);
      require_ok(all); // not timed_out: the queued send_file did end
      auto& [ignored, r, ignored2] = *all;
      REQUIRE(!r);
      CHECK(r.error() == (by_close ? std::errc::operation_canceled : std::errc::timed_out));
    }
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}
