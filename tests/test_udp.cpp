// udp_socket: datagrams over loopback (IPv4 and IPv6) accounted for one by
// one, truncation reported, ICMP refusal on a connected socket, options,
// multicast membership, cancellation, timeouts and close while pending.

#include "support.hpp"

#include <cstring>
#include <stop_token>
#include <vector>

#include <net/if.h>
#include <netinet/in.h>
#include <sys/socket.h>

using namespace couring;
using namespace std::chrono_literals;
using test_support::require_ok;

namespace {

// A datagram: 8-byte sequence number, 4-byte payload length, 4-byte
// checksum of the payload, then the payload (a pattern keyed by sequence).
constexpr std::size_t header = 16;

std::uint32_t checksum(std::span<const std::byte> data) {
  std::uint32_t h = 2166136261u; // FNV-1a
  for (std::byte b : data)
    h = (h ^ static_cast<std::uint32_t>(b)) * 16777619u;
  return h;
}

std::size_t make_datagram(std::uint64_t seq, std::span<std::byte> out) {
  const std::uint32_t len = static_cast<std::uint32_t>(seq * 7919 % 1200);
  for (std::uint32_t i = 0; i < len; ++i)
    out[header + i] = test_support::pattern_byte(seq, i);
  const std::uint32_t sum = checksum(out.subspan(header, len));
  std::memcpy(out.data(), &seq, 8);
  std::memcpy(out.data() + 8, &len, 4);
  std::memcpy(out.data() + 12, &sum, 4);
  return header + len;
}

// The sequence number of a well-formed datagram, or ~0 if it is damaged.
std::uint64_t check_datagram(std::span<const std::byte> in) {
  if (in.size() < header)
    return ~0ull;
  std::uint64_t seq;
  std::uint32_t len, sum;
  std::memcpy(&seq, in.data(), 8);
  std::memcpy(&len, in.data() + 8, 4);
  std::memcpy(&sum, in.data() + 12, 4);
  if (in.size() != header + len || checksum(in.subspan(header, len)) != sum)
    return ~0ull;
  for (std::uint32_t i = 0; i < len; ++i)
    if (in[header + i] != test_support::pattern_byte(seq, i))
      return ~0ull;
  return seq;
}

struct tally {
  std::uint64_t received = 0, damaged = 0, duplicates = 0, unknown = 0, dropped = 0;
};

// The receiving end: checks each datagram and acknowledges its sequence
// number to the sender. Ends on a datagram of size 0.
task<void> receiver(udp_socket& s, std::vector<bool>& seen, tally& t) {
  std::vector<std::byte> buf(2048);
  for (;;) {
    auto d = co_await s.receive_from(buf);
    if (!d)
      co_return;
    if (d->size == 0)
      co_return;
    const std::uint64_t seq = check_datagram(std::span(buf).first(d->size));
    if (seq == ~0ull || d->truncated) {
      ++t.damaged;
      continue;
    }
    if (seq >= seen.size()) {
      ++t.unknown;
      continue;
    }
    if (seen[seq])
      ++t.duplicates;
    seen[seq] = true;
    ++t.received;
    auto ack = co_await s.send_to(std::as_bytes(std::span(&seq, 1)), d->sender);
    if (!ack)
      co_return;
  }
}

// Sends count datagrams, at most `window` unacknowledged at a time: a full
// window is sent, then its acknowledgements are awaited. On loopback nothing
// may be lost; an acknowledgement that does not come within 2 s counts its
// datagram as dropped (and the test fails), rather than hanging.
task<void> sender(udp_socket& s, endpoint to, std::uint64_t count, std::size_t window, tally& t) {
  std::vector<std::byte> out(header + 1200);
  std::uint64_t seq = 0;
  while (seq < count) {
    const std::uint64_t batch = std::min<std::uint64_t>(window, count - seq);
    for (std::uint64_t i = 0; i < batch; ++i) {
      const std::size_t n = make_datagram(seq + i, out);
      auto sent = co_await s.send_to(std::span(out).first(n), to);
      require_ok(sent);
      REQUIRE(*sent == n);
    }
    for (std::uint64_t i = 0; i < batch; ++i) {
      std::uint64_t ack = 0;
      auto r =
          co_await with_timeout(s.receive_from(std::as_writable_bytes(std::span(&ack, 1))), 2s);
      if (!r) {
        t.dropped += batch - i;
        break;
      }
    }
    seq += batch;
  }
  // The end marker: an empty datagram.
  require_ok(co_await s.send_to(std::span<const std::byte>(), to));
}

void run_flood(const endpoint& loopback, std::uint64_t count) {
  io_context ctx;
  auto server = udp_socket::bind(ctx, loopback).value();
  auto client = udp_socket::bind(ctx, loopback).value();
  const endpoint to = server.local_endpoint().value();
  std::vector<bool> seen(count);
  tally t;
  ctx.spawn(receiver(server, seen, t));
  ctx.run(sender(client, to, count, 64, t));
  ctx.run(); // the receiver ends on the marker
  CHECK(t.received == count);
  CHECK(t.damaged == 0);
  CHECK(t.duplicates == 0);
  CHECK(t.unknown == 0);
  CHECK(t.dropped == 0);
  std::uint64_t missing = 0;
  for (bool b : seen)
    missing += b ? 0 : 1;
  CHECK(missing == 0);
  // Every datagram is accounted for: received, or counted as dropped.
  CHECK(t.received + t.dropped >= count);
}

int int_option(int fd, int level, int option) {
  int v = -1;
  socklen_t len = sizeof v;
  REQUIRE(::getsockopt(fd, level, option, &v, &len) == 0);
  return v;
}

} // namespace

TEST_CASE("100,000 checksummed datagrams over IPv4 loopback, none lost with a window of 64") {
  run_flood(endpoint::ipv4_loopback(0), 100'000);
}

TEST_CASE("20,000 checksummed datagrams over IPv6 loopback") {
  run_flood(endpoint::ipv6_loopback(0), 20'000);
}

TEST_CASE("a datagram larger than the buffer is reported truncated, with its real size") {
  io_context ctx;
  auto a = udp_socket::bind(ctx, endpoint::ipv4_loopback(0)).value();
  auto b = udp_socket::bind(ctx, endpoint::ipv4_loopback(0)).value();
  auto body = [&]() -> task<void> {
    const auto big = test_support::pattern(1, 1000);
    require_ok(co_await b.send_to(big, a.local_endpoint().value()));
    require_ok(co_await b.send_to("next", a.local_endpoint().value()));
    std::byte small[100];
    auto d = co_await a.receive_from(small);
    require_ok(d);
    CHECK(d->size == 100);
    CHECK(d->datagram_size == 1000);
    CHECK(d->truncated);
    CHECK(std::memcmp(small, big.data(), 100) == 0);
    CHECK(d->sender == b.local_endpoint().value());
    // The tail was discarded with its datagram: the next one is whole.
    std::byte buf[100];
    auto e = co_await a.receive_from(buf);
    require_ok(e);
    CHECK(!e->truncated);
    CHECK(e->size == 4);
    CHECK(e->datagram_size == 4);
    CHECK(test_support::text(std::span(buf, e->size)) == "next");
  };
  ctx.run(body());
}

TEST_CASE("a connected socket learns of an ICMP port unreachable: connection_refused") {
  io_context ctx;
  endpoint dead;
  {
    // A port that was just in use and is now closed: nobody listens there.
    auto tmp = udp_socket::bind(ctx, endpoint::ipv4_loopback(0)).value();
    dead = tmp.local_endpoint().value();
  }
  auto s = udp_socket::open(ctx, AF_INET).value();
  require_ok(s.connect(dead));
  CHECK(s.remote_endpoint().value() == dead);
  auto body = [&]() -> task<void> {
    require_ok(co_await s.send("anyone?"));
    std::byte buf[16];
    auto r = co_await with_timeout(s.receive(buf), 2s);
    REQUIRE(!r);
    CHECK(r.error() == std::errc::connection_refused);
  };
  ctx.run(body());
}

TEST_CASE("connected send and receive exchange with the peer only") {
  io_context ctx;
  auto a = udp_socket::bind(ctx, endpoint::ipv6_loopback(0)).value();
  auto b = udp_socket::bind(ctx, endpoint::ipv6_loopback(0)).value();
  require_ok(a.connect(b.local_endpoint().value()));
  require_ok(b.connect(a.local_endpoint().value()));
  auto body = [&]() -> task<void> {
    require_ok(co_await a.send("ping"));
    std::byte buf[16];
    auto d = co_await b.receive(buf);
    require_ok(d);
    CHECK(test_support::text(std::span(buf, d->size)) == "ping");
    CHECK(d->sender == a.local_endpoint().value());
  };
  ctx.run(body());
}

TEST_CASE("a pending receive_from can be timed out and cancelled; no datagram is lost") {
  io_context ctx;
  auto a = udp_socket::bind(ctx, endpoint::ipv4_loopback(0)).value();
  auto b = udp_socket::bind(ctx, endpoint::ipv4_loopback(0)).value();
  auto body = [&]() -> task<void> {
    std::byte buf[16];
    const auto t0 = std::chrono::steady_clock::now();
    auto r = co_await with_timeout(a.receive_from(buf), 50ms);
    REQUIRE(!r);
    CHECK(r.error() == std::errc::timed_out);
    CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);

    std::stop_source stop;
    stop.request_stop();
    auto c = co_await with_stop_token(a.receive_from(buf), stop.get_token());
    REQUIRE(!c);
    CHECK(c.error() == std::errc::operation_canceled);

    // A stop requested while the receive waits.
    std::stop_source later;
    auto stopper = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 20ms);
      later.request_stop();
    };
    ctx.spawn(stopper());
    auto d = co_await with_stop_token(a.receive_from(buf), later.get_token());
    REQUIRE(!d);
    CHECK(d.error() == std::errc::operation_canceled);

    // The socket is still good: the next datagram arrives whole.
    require_ok(co_await b.send_to("after", a.local_endpoint().value()));
    auto e = co_await with_timeout(a.receive_from(buf), 2s);
    require_ok(e);
    CHECK(test_support::text(std::span(buf, e->size)) == "after");
  };
  ctx.run(body());
}

TEST_CASE("closing a socket with receives pending ends them with operation_canceled") {
  io_context ctx;
  const auto fds_before = test_support::open_fd_count();
  auto s = udp_socket::bind(ctx, endpoint::ipv4_loopback(0)).value();
  int ended = 0;
  auto waiter = [&]() -> task<void> {
    std::byte buf[16];
    auto r = co_await s.receive_from(buf);
    CHECK(r.error() == std::errc::operation_canceled);
    ++ended;
  };
  auto body = [&]() -> task<void> {
    ctx.spawn(waiter()); // in flight
    ctx.spawn(waiter()); // waiting in line behind it
    (void)co_await sleep_for(ctx, 10ms);
    s.close();
    (void)co_await sleep_for(ctx, 10ms);
    std::byte buf[4];
    auto after = co_await s.receive_from(buf);
    CHECK(after.error() == std::errc::operation_canceled);
    auto sent = co_await s.send_to("x", endpoint::ipv4_loopback(9));
    CHECK(sent.error() == std::errc::operation_canceled);
    udp_socket never;
    auto none = co_await never.receive_from(buf);
    CHECK(none.error() == std::errc::bad_file_descriptor);
  };
  ctx.run(body());
  CHECK(ended == 2);
  CHECK(test_support::open_fd_count() == fds_before);
}

TEST_CASE("send_to an address it cannot reach, or an invalid one, is an error") {
  io_context ctx;
  auto s = udp_socket::bind(ctx, endpoint::ipv4_loopback(0)).value();
  auto body = [&]() -> task<void> {
    auto wrong_family = co_await s.send_to("x", endpoint::ipv6_loopback(9));
    CHECK(!wrong_family);
    auto unspecified = co_await s.send_to("x", endpoint());
    REQUIRE(!unspecified);
    CHECK(unspecified.error() == std::errc::destination_address_required);
    auto port_zero = co_await s.send_to("x", endpoint::ipv4_loopback(0));
    CHECK(!port_zero);
    // A loopback-bound socket cannot reach an outside address.
    auto outside = co_await s.send_to("x", endpoint::parse("192.0.2.1:9").value());
    CHECK(!outside);
    std::vector<std::byte> huge(70'000);
    auto too_big = co_await s.send_to(huge, endpoint::ipv4_loopback(9));
    REQUIRE(!too_big);
    CHECK(too_big.error() == std::errc::message_size);
  };
  ctx.run(body());
  CHECK(!udp_socket::open(ctx, AF_UNIX));
  CHECK(!udp_socket::bind(ctx, endpoint()));
}

TEST_CASE("udp_options are applied to the socket") {
  io_context ctx;
  udp_options o{.reuse_address = true,
                .reuse_port = true,
                .broadcast = true,
                .ipv6_only = true,
                .receive_buffer_size = 256 * 1024,
                .send_buffer_size = 128 * 1024};
  auto s = udp_socket::bind(ctx, endpoint::ipv6_loopback(0), o).value();
  const int fd = s.native_handle();
  CHECK(int_option(fd, SOL_SOCKET, SO_REUSEADDR) == 1);
  CHECK(int_option(fd, SOL_SOCKET, SO_REUSEPORT) == 1);
  CHECK(int_option(fd, SOL_SOCKET, SO_BROADCAST) == 1);
  CHECK(int_option(fd, IPPROTO_IPV6, IPV6_V6ONLY) == 1);
  CHECK(int_option(fd, SOL_SOCKET, SO_RCVBUF) >= 256 * 1024); // the kernel doubles it
  CHECK(int_option(fd, SOL_SOCKET, SO_SNDBUF) >= 128 * 1024);
  // reuse_port: a second socket can share the port.
  auto twin = udp_socket::bind(ctx, s.local_endpoint().value(), o);
  CHECK(twin.has_value());
  // Defaults: none of them.
  // (Bound to [::]: binding to a specific IPv6 address sets IPV6_V6ONLY.)
  auto d = udp_socket::bind(ctx, endpoint::parse("[::]:0").value()).value();
  CHECK(int_option(d.native_handle(), SOL_SOCKET, SO_REUSEPORT) == 0);
  CHECK(int_option(d.native_handle(), SOL_SOCKET, SO_BROADCAST) == 0);
  CHECK(int_option(d.native_handle(), IPPROTO_IPV6, IPV6_V6ONLY) == 0);
  auto taken = udp_socket::bind(ctx, d.local_endpoint().value());
  REQUIRE(!taken);
  CHECK(taken.error() == std::errc::address_in_use);
  CHECK(!udp_socket::bind(ctx, endpoint::ipv4_loopback(0), {.receive_buffer_size = -1}));
}

TEST_CASE("multicast: join, loopback delivery, leave (IPv4 and IPv6)") {
  io_context ctx;
  const unsigned lo = if_nametoindex("lo");
  REQUIRE(lo != 0);
  // group_text: the group address as "ADDR:" or "[ADDR]:", the port follows.
  auto body = [&](endpoint any, std::string group_text) -> task<void> {
    const endpoint group = endpoint::parse(group_text + "0").value();
    auto rx = udp_socket::bind(ctx, any, {.reuse_address = true}).value();
    const std::uint16_t port = rx.local_endpoint().value().port();
    const endpoint to = endpoint::parse(group_text + std::to_string(port)).value();
    require_ok(rx.join_multicast(group, lo));
    auto tx = udp_socket::open(ctx, any.family()).value();
    require_ok(tx.set_multicast_interface(lo));
    require_ok(tx.set_multicast_loopback(true));
    require_ok(tx.set_multicast_hops(1));
    if (any.is_v4()) {
      CHECK(int_option(tx.native_handle(), IPPROTO_IP, IP_MULTICAST_LOOP) == 1);
      CHECK(int_option(tx.native_handle(), IPPROTO_IP, IP_MULTICAST_TTL) == 1);
    } else {
      CHECK(int_option(tx.native_handle(), IPPROTO_IPV6, IPV6_MULTICAST_LOOP) == 1);
      CHECK(int_option(tx.native_handle(), IPPROTO_IPV6, IPV6_MULTICAST_HOPS) == 1);
    }
    auto sent = co_await tx.send_to("to the group", to);
    if (!sent && any.is_v6() && sent.error() == std::errc::network_unreachable) {
      // The loopback interface has no IPv6 multicast route here (and tests
      // do not change the host's routes): membership is checked, delivery not.
      WARN("no IPv6 multicast route on lo: delivery not checked");
    } else {
      require_ok(sent);
      std::byte buf[32];
      auto d = co_await with_timeout(rx.receive_from(buf), 2s);
      require_ok(d);
      CHECK(test_support::text(std::span(buf, d->size)) == "to the group");
    }
    require_ok(rx.leave_multicast(group, lo));
    // Not a member any more: leaving again fails.
    CHECK(!rx.leave_multicast(group, lo));
    require_ok(tx.set_multicast_loopback(false));
    CHECK(int_option(tx.native_handle(), any.is_v4() ? IPPROTO_IP : IPPROTO_IPV6,
                     any.is_v4() ? IP_MULTICAST_LOOP : IPV6_MULTICAST_LOOP) == 0);
    // Not a multicast address.
    CHECK(!rx.join_multicast(endpoint::ipv4_loopback(0), lo));
  };
  SECTION("IPv4") {
    ctx.run(body(endpoint::ipv4_any(0), "239.255.77.1:"));
  }
  SECTION("IPv6") {
    ctx.run(body(endpoint::parse("[::]:0").value(), "[ff02::1:3]:"));
  }
  udp_socket closed;
  CHECK(closed.join_multicast(endpoint::parse("239.255.77.1:0").value()).error() ==
        std::errc::bad_file_descriptor);
}

TEST_CASE("receives are served in the order they were started") {
  io_context ctx;
  auto a = udp_socket::bind(ctx, endpoint::ipv4_loopback(0)).value();
  auto b = udp_socket::bind(ctx, endpoint::ipv4_loopback(0)).value();
  std::vector<std::string> got(3);
  auto reader = [&](int i) -> task<void> {
    std::byte buf[16];
    auto d = co_await a.receive_from(buf);
    require_ok(d);
    got[static_cast<std::size_t>(i)] = test_support::text(std::span(buf, d->size));
  };
  auto body = [&]() -> task<void> {
    for (int i = 0; i < 3; ++i)
      ctx.spawn(reader(i));
    (void)co_await sleep_for(ctx, 10ms);
    for (const char* m : {"one", "two", "three"})
      require_ok(co_await b.send_to(m, a.local_endpoint().value()));
    (void)co_await sleep_for(ctx, 50ms);
  };
  ctx.run(body());
  CHECK(got == std::vector<std::string>{"one", "two", "three"});
}
