// Name resolution and connecting to names (resolve.hpp, tcp_stream::connect
// with "host:port"), all offline: /etc/hosts for localhost, and a small DNS
// server inside the test, on the same io_context, for *.couring.test.

#include "support.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <map>
#include <stop_token>
#include <string>
#include <vector>

using namespace couring;
using namespace std::chrono_literals;
using test_support::require_ok;
using clock_type = std::chrono::steady_clock;

namespace {

// --- DNS messages ----------------------------------------------------------------

using bytes = std::vector<std::uint8_t>;

struct question {
  std::uint16_t id = 0;
  std::uint16_t flags = 0;
  std::string name; // lower case, no trailing dot
  std::uint16_t type = 0;
  bytes raw_question; // name + type + class, as received
};

constexpr std::uint16_t type_a = 1;
constexpr std::uint16_t type_aaaa = 28;

bool parse_question(const std::uint8_t* p, std::size_t n, question& q) {
  if (n < 12)
    return false;
  q.id = static_cast<std::uint16_t>(p[0] << 8 | p[1]);
  q.flags = static_cast<std::uint16_t>(p[2] << 8 | p[3]);
  if ((p[4] << 8 | p[5]) != 1)
    return false;
  std::size_t i = 12;
  q.name.clear();
  while (i < n && p[i] != 0) {
    const std::size_t len = p[i];
    if (len > 63 || i + 1 + len > n)
      return false;
    if (!q.name.empty())
      q.name += '.';
    for (std::size_t k = 0; k < len; ++k)
      q.name += static_cast<char>(std::tolower(p[i + 1 + k]));
    i += 1 + len;
  }
  if (i + 5 > n)
    return false;
  q.type = static_cast<std::uint16_t>(p[i + 1] << 8 | p[i + 2]);
  q.raw_question.assign(p + 12, p + i + 5);
  return true;
}

void put16(bytes& b, unsigned v) {
  b.push_back(static_cast<std::uint8_t>(v >> 8));
  b.push_back(static_cast<std::uint8_t>(v));
}

// A response to q: rcode, the TC bit, and address records.
bytes response(const question& q, unsigned rcode, const std::vector<bytes>& rdatas,
               bool truncated = false) {
  bytes b;
  put16(b, q.id);
  put16(b, 0x8000u | (q.flags & 0x0100u) | 0x0080u | (truncated ? 0x0200u : 0u) | rcode);
  put16(b, 1);
  put16(b, static_cast<unsigned>(rdatas.size()));
  put16(b, 0);
  put16(b, 0);
  b.insert(b.end(), q.raw_question.begin(), q.raw_question.end());
  for (const bytes& rd : rdatas) {
    put16(b, 0xC00C); // the name: a pointer to the question's
    put16(b, q.type);
    put16(b, 1); // IN
    put16(b, 0);
    put16(b, 60); // TTL
    put16(b, static_cast<unsigned>(rd.size()));
    b.insert(b.end(), rd.begin(), rd.end());
  }
  return b;
}

bytes v4(const char* text) {
  bytes b(4);
  inet_pton(AF_INET, text, b.data());
  return b;
}
bytes v6(const char* text) {
  bytes b(16);
  inet_pton(AF_INET6, text, b.data());
  return b;
}

// What the server sends back for one query: datagrams (or TCP messages), each
// after a delay.
struct reply {
  bytes data;
  std::chrono::milliseconds delay{0};
};

// The zone of the test server: one behaviour per name.
class zone {
public:
  std::vector<reply> answer(const std::uint8_t* p, std::size_t n, bool tcp) {
    question q;
    if (!parse_question(p, n, q))
      return {};
    const int count = ++queries_[q.name + "/" + std::to_string(q.type)];
    ++total_[q.name];
    const bool a = q.type == type_a;
    const bool aaaa = q.type == type_aaaa;
    const auto addresses = [&]() -> std::vector<bytes> {
      if (a)
        return {v4("127.0.0.1")};
      if (aaaa)
        return {v6("::1")};
      return {};
    };
    const std::string& name = q.name;
    if (name == "host.couring.test")
      return {{response(q, 0, addresses())}};
    if (name == "v4.couring.test")
      return {{response(q, 0, a ? addresses() : std::vector<bytes>{})}};
    if (name == "silent.couring.test")
      return {};
    if (name == "servfail.couring.test")
      return {{response(q, 2, {})}};
    if (name == "refused.couring.test")
      return {{response(q, 5, {})}};
    if (name == "slow.couring.test") {
      // The first query of each type is answered long after c-ares' first
      // timeout; its retry at once.
      if (count == 1)
        return {{response(q, 0, addresses()), 400ms}};
      return {{response(q, 0, addresses())}};
    }
    if (name == "delayed.couring.test")
      return {{response(q, 0, addresses()), 200ms}};
    if (name == "garbage.couring.test") {
      // Junk first: too short, then a wrong id, then a wrong question; then
      // the real answer. c-ares must ignore the junk.
      question wrong = q;
      wrong.id = static_cast<std::uint16_t>(q.id + 1);
      bytes other = response(q, 0, addresses());
      other[13] ^= 0x20; // a different name in the question
      other[14] ^= 0x01;
      return {{bytes{0xde, 0xad, 0xbe}},
              {response(wrong, 0, addresses())},
              {other},
              {response(q, 0, addresses())}};
    }
    if (name == "malformed.couring.test") {
      // A record that claims 16 bytes of data and ends after 3.
      bytes b = response(q, 0, {bytes(16, 0x7f)});
      b.resize(b.size() - 13);
      return {{b}};
    }
    if (name == "truncated.couring.test") {
      if (!tcp)
        return {{response(q, 0, {}, true)}}; // TC: ask again over TCP
      return {{response(q, 0, addresses())}};
    }
    if (name == "big.couring.test") {
      // 60 addresses: larger than a 512-byte UDP answer may be. c-ares must
      // ask again over TCP and take all of them from there.
      std::vector<bytes> many;
      if (a) {
        for (int i = 1; i <= 60; ++i)
          many.push_back(v4(("127.0.1." + std::to_string(i)).c_str()));
      }
      return {{response(q, 0, many)}};
    }
    return {{response(q, 3, {})}}; // NXDOMAIN
  }

  int queries(const std::string& name, std::uint16_t type) {
    return queries_[name + "/" + std::to_string(type)];
  }
  int total(const std::string& name) { return total_[name]; }
  int tcp_queries = 0;

private:
  std::map<std::string, int> queries_;
  std::map<std::string, int> total_;
};

// The DNS server: UDP and TCP on one port of 127.0.0.1, served by tasks
// spawned on the test's io_context.
class dns_server {
public:
  explicit dns_server(io_context& ctx) : ctx_(ctx) {
    bind_udp();
    auto l = tcp_listener::bind(ctx, endpoint::ipv4_loopback(port_));
    for (int i = 0; !l && i < 20; ++i) {
      // That TCP port is taken: another UDP port, then.
      udp_.close();
      bind_udp();
      l = tcp_listener::bind(ctx, endpoint::ipv4_loopback(port_));
    }
    REQUIRE(l.has_value());
    tcp_ = std::move(*l);
    ctx.spawn(serve_udp());
    ctx.spawn(serve_tcp());
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  zone& records() { return zone_; }

  // Ends the serving tasks (ctx.run() then returns once they are done).
  void stop() {
    udp_.close();
    tcp_.close();
  }

  resolver_options options(std::chrono::milliseconds timeout = 100ms, int tries = 3) const {
    resolver_options o;
    o.servers = address();
    o.timeout = timeout;
    o.tries = tries;
    o.hosts_file = false;     // *.couring.test never comes from /etc/hosts
    o.search_domains = false; // nor from resolv.conf's search list
    return o;
  }

private:
  // couring's own udp_socket serves the queries.
  void bind_udp() {
    auto u = udp_socket::bind(ctx_, endpoint::ipv4_loopback(0));
    REQUIRE(u.has_value());
    udp_ = std::move(*u);
    port_ = udp_.local_endpoint().value().port();
  }

  task<void> send_later(bytes data, std::chrono::milliseconds delay, endpoint to) {
    if (delay.count() > 0)
      (void)co_await sleep_for(ctx_, delay);
    (void)co_await udp_.send_to(std::as_bytes(std::span(data)), to);
  }

  task<void> serve_udp() {
    std::vector<std::byte> buf(2048);
    for (;;) {
      auto d = co_await udp_.receive_from(buf);
      if (!d)
        co_return; // closed
      auto replies =
          zone_.answer(reinterpret_cast<const std::uint8_t*>(buf.data()), d->size, false);
      for (reply& r : replies) {
        if (r.delay.count() > 0) {
          ctx_.spawn(send_later(std::move(r.data), r.delay, d->sender));
        } else {
          (void)co_await udp_.send_to(std::as_bytes(std::span(r.data)), d->sender);
        }
      }
    }
  }

  task<void> serve_connection(tcp_stream s) {
    for (;;) {
      std::byte len_bytes[2];
      if (!co_await s.read_exactly(len_bytes))
        co_return;
      const std::size_t len = static_cast<std::size_t>(
          std::to_integer<unsigned>(len_bytes[0]) << 8 | std::to_integer<unsigned>(len_bytes[1]));
      std::vector<std::byte> q(len);
      if (!co_await s.read_exactly(q))
        co_return;
      ++zone_.tcp_queries;
      for (reply& r : zone_.answer(reinterpret_cast<const std::uint8_t*>(q.data()), len, true)) {
        bytes framed;
        put16(framed, static_cast<unsigned>(r.data.size()));
        framed.insert(framed.end(), r.data.begin(), r.data.end());
        if (!co_await s.write_all(std::as_bytes(std::span(framed))))
          co_return;
      }
    }
  }

  task<void> serve_tcp() {
    for (;;) {
      auto c = co_await tcp_.accept();
      if (!c) {
        if (!tcp_.is_open())
          co_return;
        continue;
      }
      ctx_.spawn(serve_connection(std::move(*c)));
    }
  }

  io_context& ctx_;
  udp_socket udp_;
  tcp_listener tcp_;
  std::uint16_t port_ = 0;
  zone zone_;
};

// Runs t to its end, then stops the server and lets the context finish
// everything (run() returns only once no request is left).
template <class T>
T run_with(io_context& ctx, dns_server& server, task<T> t) {
  struct stop_after {
    io_context& ctx;
    dns_server& server;
    ~stop_after() {
      server.stop();
      ctx.run();
    }
  };
  stop_after guard{ctx, server};
  return ctx.run(std::move(t));
}

bool all_loopback(const std::vector<endpoint>& eps) {
  return std::all_of(eps.begin(), eps.end(), [](const endpoint& e) {
    const std::string s = e.to_string();
    return s.rfind("127.", 0) == 0 || s.rfind("[::1]", 0) == 0;
  });
}

std::vector<std::string> strings(const std::vector<endpoint>& eps) {
  std::vector<std::string> out;
  for (const endpoint& e : eps)
    out.push_back(e.to_string());
  return out;
}

// Tests never reach the machine's own name servers: contexts that have no
// test server point c-ares at a local port where nothing answers.
resolver_options offline_options() {
  resolver_options o;
  o.servers = "127.0.0.1:9";
  o.timeout = 100ms;
  o.tries = 1;
  return o;
}

} // namespace

// --- /etc/hosts and numeric addresses ------------------------------------------

TEST_CASE("resolve: localhost comes from /etc/hosts, with no name server") {
  io_context ctx;
  require_ok(configure_resolver(ctx, offline_options())); // only /etc/hosts can answer
  const auto t0 = clock_type::now();
  auto r = ctx.run(resolve(ctx, "localhost", "8080"));
  require_ok(r);
  CHECK(clock_type::now() - t0 < 1s);
  REQUIRE(!r->empty());
  CHECK(all_loopback(*r));
  for (const endpoint& e : *r)
    CHECK(e.port() == 8080);
  const auto s = strings(*r);
  CHECK((std::find(s.begin(), s.end(), "127.0.0.1:8080") != s.end() ||
         std::find(s.begin(), s.end(), "[::1]:8080") != s.end()));
  CHECK(ctx.submitted_requests() <= 1); // only the context's own wake-up read
}

TEST_CASE("resolve: numeric addresses need no lookup; bad input is a clean error") {
  io_context ctx;
  require_ok(configure_resolver(ctx, offline_options()));
  auto t = [&]() -> task<void> {
    auto a = co_await resolve(ctx, "127.0.0.1", "80");
    require_ok(a);
    CHECK(strings(*a) == std::vector<std::string>{"127.0.0.1:80"});
    auto b = co_await resolve(ctx, "::1", "443");
    require_ok(b);
    CHECK(strings(*b) == std::vector<std::string>{"[::1]:443"});

    auto empty = co_await resolve(ctx, "", "80");
    REQUIRE(!empty);
    CHECK(empty.error() == resolve_error::bad_name);
    CHECK(empty.error() == std::errc::invalid_argument);
    CHECK(std::string(empty.error().category().name()) == "couring.resolve");
    auto spaces = co_await resolve(ctx, "two words", "80");
    REQUIRE(!spaces);
    CHECK(spaces.error() == resolve_error::bad_name);
    auto service = co_await resolve(ctx, "127.0.0.1", "no-such-service-xyz");
    REQUIRE(!service);
    CHECK(service.error() == resolve_error::unknown_service);
    auto family = co_await resolve(ctx, "127.0.0.1", "80", AF_UNIX);
    REQUIRE(!family);
    CHECK(family.error() == resolve_error::not_supported);
    auto v6only = co_await resolve(ctx, "127.0.0.1", "80", AF_INET6);
    REQUIRE(!v6only);
    CHECK(v6only.error() == resolve_error::no_address);
  };
  ctx.run(t());
}

TEST_CASE("resolve: error messages say what went wrong") {
  CHECK(make_error_code(resolve_error::no_such_name).message() == "no such host name");
  CHECK(make_error_code(resolve_error::timed_out).message() == "no name server answered in time");
  CHECK(make_error_code(resolve_error::timed_out) == std::errc::timed_out);
  CHECK(make_error_code(resolve_error::server_failure).message().find("SERVFAIL") !=
        std::string::npos);
  CHECK(make_error_code(resolve_error::refused).message().find("refused") != std::string::npos);
  CHECK(split_host_port("example.com:80").value() ==
        std::pair<std::string, std::string>("example.com", "80"));
  CHECK(split_host_port("[::1]:80").value() == std::pair<std::string, std::string>("::1", "80"));
  CHECK(!split_host_port("example.com"));
  CHECK(!split_host_port("example.com:"));
  CHECK(!split_host_port(":80"));
  CHECK(!split_host_port("::1:80"));
  CHECK(!split_host_port("[::1]80"));
}

// --- the test name server ------------------------------------------------------

TEST_CASE("resolve: A and AAAA answers from the name server") {
  io_context ctx;
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options()));
  auto t = [&]() -> task<void> {
    auto both = co_await resolve(ctx, "host.couring.test", "7000");
    require_ok(both);
    auto s = strings(*both);
    std::sort(s.begin(), s.end());
    CHECK(s == std::vector<std::string>{"127.0.0.1:7000", "[::1]:7000"});

    auto only4 = co_await resolve(ctx, "host.couring.test", "7000", AF_INET);
    require_ok(only4);
    CHECK(strings(*only4) == std::vector<std::string>{"127.0.0.1:7000"});
    auto only6 = co_await resolve(ctx, "HOST.couring.test", "7000", AF_INET6);
    require_ok(only6);
    CHECK(strings(*only6) == std::vector<std::string>{"[::1]:7000"});

    auto v4 = co_await resolve(ctx, "v4.couring.test", "1");
    require_ok(v4);
    CHECK(strings(*v4) == std::vector<std::string>{"127.0.0.1:1"});
    auto v4_as_v6 = co_await resolve(ctx, "v4.couring.test", "1", AF_INET6);
    REQUIRE(!v4_as_v6);
    CHECK(v4_as_v6.error() == resolve_error::no_address);
  };
  run_with(ctx, server, t());
  CHECK(server.records().queries("host.couring.test", type_a) >= 1);
  CHECK(server.records().queries("host.couring.test", type_aaaa) >= 1);
  CHECK(ctx.submitted_requests() == 1); // only the wake-up read: no poll, no timer left
}

TEST_CASE("resolve: NXDOMAIN, SERVFAIL and REFUSED are distinct errors") {
  io_context ctx;
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options(100ms, 2)));
  auto t = [&]() -> task<void> {
    auto nx = co_await resolve(ctx, "nxdomain.couring.test", "80");
    REQUIRE(!nx);
    CHECK(nx.error() == resolve_error::no_such_name);
    CHECK(nx.error().message() == "no such host name");
    auto sf = co_await resolve(ctx, "servfail.couring.test", "80");
    REQUIRE(!sf);
    CHECK(sf.error() == resolve_error::server_failure);
    auto rf = co_await resolve(ctx, "refused.couring.test", "80");
    REQUIRE(!rf);
    CHECK(rf.error() == resolve_error::refused);
  };
  run_with(ctx, server, t());
}

TEST_CASE("resolve: a slow answer -- c-ares retries after its timeout") {
  io_context ctx;
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options(100ms, 3)));
  const auto t0 = clock_type::now();
  auto r = run_with(ctx, server, resolve(ctx, "slow.couring.test", "80"));
  require_ok(r);
  CHECK(r->size() == 2);
  // Retried after the first timeout, answered by the retry.
  CHECK(server.records().queries("slow.couring.test", type_a) >= 2);
  CHECK(clock_type::now() - t0 >= 90ms);
}

TEST_CASE("resolve: silence gives a timeout error in bounded time") {
  io_context ctx;
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options(50ms, 2)));
  const auto t0 = clock_type::now();
  auto r = run_with(ctx, server, resolve(ctx, "silent.couring.test", "80"));
  const auto took = clock_type::now() - t0;
  REQUIRE(!r);
  CHECK(r.error() == resolve_error::timed_out);
  CHECK(r.error() == std::errc::timed_out);
  CHECK(took >= 100ms); // 50 ms, then 100 ms (c-ares doubles per round)
  CHECK(took < test_support::scaled(2000ms));
  CHECK(server.records().queries("silent.couring.test", type_a) == 2);
}

TEST_CASE("resolve: hostile answers -- junk is ignored, a malformed answer is an error") {
  io_context ctx;
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options(100ms, 2)));
  auto t = [&]() -> task<void> {
    auto g = co_await resolve(ctx, "garbage.couring.test", "80");
    require_ok(g);
    CHECK(g->size() == 2);
    auto m = co_await resolve(ctx, "malformed.couring.test", "80");
    REQUIRE(!m);
    CHECK(m.error() == resolve_error::bad_response);
  };
  run_with(ctx, server, t());
}

TEST_CASE("resolve: a truncated answer is asked again over TCP") {
  io_context ctx;
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options()));
  auto r = run_with(ctx, server, resolve(ctx, "truncated.couring.test", "80"));
  require_ok(r);
  CHECK(r->size() == 2);
  CHECK(server.records().tcp_queries >= 2);
}

TEST_CASE("resolve: an oversized UDP answer is taken over TCP, in full") {
  io_context ctx;
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options()));
  const std::size_t fds_before = test_support::open_fd_count();
  auto r = run_with(ctx, server, resolve(ctx, "big.couring.test", "80", AF_INET));
  require_ok(r);
  CHECK(r->size() == 60);
  CHECK(all_loopback(*r));
  CHECK(server.records().tcp_queries >= 1);
  // c-ares' UDP and TCP sockets are closed; so are the server's.
  CHECK(test_support::open_fd_count() <= fds_before);
}

// --- cancellation ----------------------------------------------------------------

TEST_CASE("resolve: cancelling a pending resolution leaves nothing behind") {
  io_context ctx;
  const std::size_t fds_before = test_support::open_fd_count();
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options(5000ms, 2)));
  const auto t0 = clock_type::now();
  auto t = [&]() -> task<void> {
    SECTION("with_timeout") {
      auto r = co_await with_timeout(ctx, resolve(ctx, "silent.couring.test", "80"), 50ms);
      REQUIRE(!r);
      CHECK(r.error() == std::errc::timed_out);
    }
    SECTION("with_stop_token") {
      std::stop_source stop;
      auto stopper = [&]() -> task<void> {
        (void)co_await sleep_for(ctx, 30ms);
        stop.request_stop();
      };
      ctx.spawn(stopper());
      auto r = co_await with_stop_token(ctx, resolve(ctx, "silent.couring.test", "80"),
                                        stop.get_token());
      REQUIRE(!r);
      CHECK(r.error() == std::errc::operation_canceled);
    }
    SECTION("when_any") {
      auto timer = [&]() -> task<result<std::vector<endpoint>>> {
        (void)co_await sleep_for(ctx, 30ms);
        co_return std::errc::interrupted;
      };
      auto first = co_await when_any(resolve(ctx, "silent.couring.test", "80"), timer());
      CHECK(first.index == 1);
    }
  };
  run_with(ctx, server, t());
  // Well before c-ares' own 5 s timeout, and nothing left: run() returned,
  // no poll or timer in flight, every descriptor closed.
  CHECK(clock_type::now() - t0 < test_support::scaled(2000ms));
  CHECK(ctx.submitted_requests() == 1);
  CHECK(ctx.pending_operations() == 0);
  CHECK(test_support::open_fd_count() == fds_before);
}

TEST_CASE("resolve: cancelling one resolution does not disturb another") {
  io_context ctx;
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options(1000ms, 2)));
  auto t = [&]() -> task<void> {
    auto cancelled = [&]() -> task<result<std::vector<endpoint>>> {
      co_return co_await with_timeout(ctx, resolve(ctx, "silent.couring.test", "80"), 50ms);
    };
    auto [a, b] = co_await when_all(cancelled(), resolve(ctx, "delayed.couring.test", "80"));
    REQUIRE(!a);
    CHECK(a.error() == std::errc::timed_out);
    require_ok(b);
    CHECK(b->size() == 2);
  };
  run_with(ctx, server, t());
  CHECK(ctx.submitted_requests() == 1);
}

TEST_CASE("resolve: destroying the context with a resolution pending") {
  const std::size_t fds_before = test_support::open_fd_count();
  {
    io_context ctx;
    dns_server server(ctx);
    require_ok(configure_resolver(ctx, server.options(5000ms, 2)));
    auto pending = [&]() -> task<void> {
      auto r = co_await resolve(ctx, "silent.couring.test", "80");
      FAIL("the resolution should never finish: " << (r ? "ok" : r.error().message()));
    };
    ctx.spawn(pending());
    auto wait = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 50ms);
    };
    ctx.run(wait());
  }
  CHECK(test_support::open_fd_count() == fds_before);
}

TEST_CASE("configure_resolver: refused while a resolution is pending; bad servers") {
  io_context ctx;
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options(1000ms, 1)));
  auto t = [&]() -> task<void> {
    auto reconfigure = [&]() -> task<result<std::vector<endpoint>>> {
      (void)co_await sleep_for(ctx, 20ms);
      auto r = configure_resolver(ctx, server.options());
      REQUIRE(!r);
      CHECK(r.error() == std::errc::device_or_resource_busy);
      co_return std::errc::interrupted;
    };
    auto [a, b] = co_await when_all(resolve(ctx, "delayed.couring.test", "80"), reconfigure());
    require_ok(a);
  };
  run_with(ctx, server, t());
  resolver_options bad;
  bad.servers = "not an address";
  auto r = configure_resolver(ctx, bad);
  REQUIRE(!r);
  CHECK(r.error() == resolve_error::configuration);
}

// --- connecting to names: Happy Eyeballs -----------------------------------------

namespace {

// A raw listening socket nobody accepts from, on [::1]:port, whose backlog is
// full: a connect to it gets no answer at all (the SYN is dropped).
struct blackhole_v6 {
  int listener = -1;
  std::vector<int> fillers;
  bool open(std::uint16_t port) {
    listener = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const endpoint ep = endpoint::ipv6_loopback(port);
    if (::bind(listener, ep.data(), ep.size()) != 0 || ::listen(listener, 0) != 0)
      return false;
    for (int i = 0; i < 2; ++i) {
      int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      (void)::connect(fd, ep.data(), ep.size());
      fillers.push_back(fd);
    }
    ::usleep(20'000); // let the handshake of the first filler finish
    return true;
  }
  void reset() {
    for (int fd : fillers)
      ::close(fd);
    fillers.clear();
    if (listener >= 0)
      ::close(listener);
    listener = -1;
  }
  ~blackhole_v6() { reset(); }
};

} // namespace

TEST_CASE("connect by name: IPv6 refused, IPv4 accepts -> connected over IPv4 at once") {
  io_context ctx;
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options()));
  auto listener = test_support::loopback_listener(ctx);
  const auto port = listener.local_endpoint().port();
  auto t = [&]() -> task<void> {
    auto order = co_await resolve(ctx, "host.couring.test", std::to_string(port));
    require_ok(order);
    REQUIRE(order->size() == 2);
    CHECK(order->front().is_v6()); // RFC 6724: ::1 before 127.0.0.1, so IPv6 is tried first
    const auto t0 = clock_type::now();
    auto s = co_await tcp_stream::connect(ctx, "host.couring.test:" + std::to_string(port));
    require_ok(s);
    CHECK(clock_type::now() - t0 < 200ms); // did not wait for the 250 ms delay
    auto remote = s->remote_endpoint();
    require_ok(remote);
    CHECK(remote->is_v4());
    CHECK(remote->port() == port);
    auto accepted = co_await listener.accept();
    require_ok(accepted);
  };
  run_with(ctx, server, t());
}

TEST_CASE("connect by name: IPv6 never answers -> IPv4 wins after the 250 ms delay") {
  io_context ctx;
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options()));
  // The same port on both families: IPv4 listens, IPv6 swallows SYNs.
  tcp_listener listener;
  blackhole_v6 hole;
  for (int i = 0; i < 20 && !listener.is_open(); ++i) {
    auto l = test_support::loopback_listener(ctx);
    if (hole.open(l.local_endpoint().port()))
      listener = std::move(l);
    else
      hole.reset();
  }
  REQUIRE(listener.is_open());
  const auto port = listener.local_endpoint().port();
  const std::size_t fds_before = test_support::open_fd_count();
  auto t = [&]() -> task<void> {
    const auto t0 = clock_type::now();
    auto s = co_await tcp_stream::connect(ctx, "host.couring.test:" + std::to_string(port));
    const auto took = clock_type::now() - t0;
    require_ok(s);
    CHECK(took >= 240ms);
    CHECK(took < test_support::scaled(900ms)); // long before a SYN retransmit could help
    CHECK(s->remote_endpoint().value().is_v4());
    auto accepted = co_await listener.accept();
    require_ok(accepted);
  };
  run_with(ctx, server, t());
  // The IPv6 attempt was cancelled and its socket closed: only the two
  // streams of the winning connection are gone with their tasks too.
  CHECK(test_support::open_fd_count() <= fds_before);
}

TEST_CASE("connect by name: every address refuses -> the last error") {
  io_context ctx;
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options()));
  std::uint16_t port = 0;
  {
    auto l = test_support::loopback_listener(ctx); // a port that was free a moment ago
    port = l.local_endpoint().port();
  }
  auto t = [&]() -> task<void> {
    auto s = co_await tcp_stream::connect(ctx, "host.couring.test:" + std::to_string(port));
    REQUIRE(!s);
    CHECK(s.error() == std::errc::connection_refused);
    auto nx = co_await tcp_stream::connect(ctx, "nxdomain.couring.test:80");
    REQUIRE(!nx);
    CHECK(nx.error() == resolve_error::no_such_name);
  };
  run_with(ctx, server, t());
}

TEST_CASE("connect by name: numeric and localhost endpoints, malformed text") {
  io_context ctx;
  require_ok(configure_resolver(ctx, offline_options()));
  auto listener = test_support::loopback_listener(ctx);
  const auto port = std::to_string(listener.local_endpoint().port());
  auto t = [&]() -> task<void> {
    auto numeric = co_await tcp_stream::connect(ctx, "127.0.0.1:" + port);
    require_ok(numeric);
    require_ok(co_await listener.accept());
    auto local = co_await tcp_stream::connect(ctx, "localhost:" + port);
    require_ok(local);
    CHECK(local->remote_endpoint().value().is_v4());
    require_ok(co_await listener.accept());
    auto no_port = co_await tcp_stream::connect(ctx, "localhost");
    REQUIRE(!no_port);
    CHECK(no_port.error() == resolve_error::bad_name);
    auto bare_v6 = co_await tcp_stream::connect(ctx, "::1:80");
    REQUIRE(!bare_v6);
    CHECK(bare_v6.error() == resolve_error::bad_name);
  };
  ctx.run(t());
}

TEST_CASE("connect by name: cancelled while racing") {
  io_context ctx;
  dns_server server(ctx);
  require_ok(configure_resolver(ctx, server.options()));
  tcp_listener listener;
  blackhole_v6 hole;
  for (int i = 0; i < 20 && !listener.is_open(); ++i) {
    auto l = test_support::loopback_listener(ctx, {.backlog = 0});
    if (hole.open(l.local_endpoint().port()))
      listener = std::move(l);
    else
      hole.reset();
  }
  REQUIRE(listener.is_open());
  const auto port = listener.local_endpoint().port();
  auto t = [&]() -> task<void> {
    // Cancelled during the first (IPv6, unanswered) attempt.
    auto s = co_await with_timeout(
        ctx, tcp_stream::connect(ctx, "host.couring.test:" + std::to_string(port)), 100ms);
    REQUIRE(!s);
    CHECK(s.error() == std::errc::timed_out);
  };
  run_with(ctx, server, t());
  CHECK(ctx.submitted_requests() == 1);
}
