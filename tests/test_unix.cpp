// Unix domain sockets: unix_stream / unix_listener (paths and abstract
// names), socketpair, unix_datagram_socket, descriptor passing, stale socket
// files, peer credentials, close while pending, and one piece of
// application code serving TCP and Unix streams alike.

#include "support.hpp"

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stop_token>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

using namespace couring;
using namespace std::chrono_literals;
using test_support::bytes;
using test_support::require_ok;
using test_support::text;

namespace {

// A fresh directory for socket files, removed with everything in it.
struct temp_dir {
  std::filesystem::path path;
  temp_dir() {
    char tmpl[] = "/tmp/couring-unix-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~temp_dir() { std::filesystem::remove_all(path); }
  std::string file(const char* name) const { return (path / name).string(); }
};

bool exists(const std::string& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

std::string unique_abstract(const char* what) {
  return "@couring-test-" + std::to_string(::getpid()) + "-" + what;
}

struct unix_pair {
  unix_stream client;
  unix_stream server;
};

task<unix_pair> connect_pair(io_context& ctx, unix_listener& listener) {
  auto c = co_await unix_stream::connect(ctx, listener.local_endpoint());
  require_ok(c);
  auto s = co_await listener.accept();
  require_ok(s);
  co_return unix_pair{std::move(*c), std::move(*s)};
}

// Application code written once, for any stream: TCP or Unix. It answers
// each line-less request with its length and the request reversed.
task<result<void>> serve_one_request(stream& s) {
  std::byte buf[64];
  auto n = co_await s.read(buf);
  if (!n)
    co_return n.error();
  std::string reply = std::to_string(*n) + ":";
  for (std::size_t i = *n; i > 0; --i)
    reply += static_cast<char>(buf[i - 1]);
  co_return co_await s.write_all(reply);
}

task<std::string> ask(stream& s, std::string_view request) {
  require_ok(co_await s.write_all(request));
  std::byte buf[64];
  auto n = co_await s.read(buf);
  require_ok(n);
  co_return text(std::span(buf, *n));
}

std::uint64_t fnv(std::span<const std::byte> d, std::uint64_t h = 1469598103934665603ull) {
  for (std::byte b : d)
    h = (h ^ static_cast<std::uint64_t>(b)) * 1099511628211ull;
  return h;
}

} // namespace

TEST_CASE("unix_endpoint: paths, abstract names, unnamed, errors") {
  auto p = unix_endpoint::parse("/run/app.sock").value();
  CHECK(!p.is_abstract());
  CHECK(!p.is_unnamed());
  CHECK(p.name() == "/run/app.sock");
  CHECK(p.to_string() == "/run/app.sock");
  auto a = unix_endpoint::parse("@svc").value();
  CHECK(a.is_abstract());
  CHECK(a.name() == "svc");
  CHECK(a.to_string() == "@svc");
  CHECK(a.size() == offsetof(sockaddr_un, sun_path) + 4); // no terminating NUL
  CHECK(unix_endpoint().is_unnamed());
  CHECK(unix_endpoint().to_string() == "(unnamed)");
  CHECK(unix_endpoint::parse("").error() == std::errc::invalid_argument);
  CHECK(unix_endpoint::parse("@").error() == std::errc::invalid_argument);
  CHECK(unix_endpoint::parse(std::string(108, 'x')).error() == std::errc::filename_too_long);
  CHECK(unix_endpoint::parse(std::string(107, 'x')).has_value());
  CHECK(unix_endpoint::parse(std::string_view("a\0b", 3)).error() == std::errc::invalid_argument);
  auto back = unix_endpoint::from_sockaddr(p.data(), p.size()).value();
  CHECK(back == p);
  CHECK(unix_endpoint::from_sockaddr(nullptr, 0).value().is_unnamed());
}

TEST_CASE("a unix_listener at a path: round trip, local endpoint, peer credentials") {
  temp_dir dir;
  const std::string path = dir.file("echo.sock");
  io_context ctx;
  auto listener = unix_listener::bind(ctx, path).value();
  CHECK(listener.local_endpoint().name() == path);
  struct stat st {};
  REQUIRE(::lstat(path.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  auto body = [&]() -> task<void> {
    auto [client, server] = co_await connect_pair(ctx, listener);
    require_ok(co_await client.write_all("hello"));
    std::byte buf[5];
    require_ok(co_await server.read_exactly(buf));
    CHECK(text(buf) == "hello");
    require_ok(co_await server.write_all("world"));
    require_ok(co_await client.read_exactly(buf));
    CHECK(text(buf) == "world");
    CHECK(server.local_endpoint().value().name() == path);
    CHECK(client.remote_endpoint().value().name() == path);
    CHECK(server.remote_endpoint().value().is_unnamed());
    for (unix_stream* s : {&client, &server}) {
      auto cred = s->peer_credentials();
      require_ok(cred);
      CHECK(cred->pid == ::getpid());
      CHECK(cred->uid == ::getuid());
      CHECK(cred->gid == ::getgid());
    }
  };
  ctx.run(body());
  listener.close();
  CHECK(!exists(path)); // the listener removed the file it created
  unix_stream never;
  CHECK(never.peer_credentials().error() == std::errc::bad_file_descriptor);
}

TEST_CASE("abstract names: no file, connect by @name, gone with the listener") {
  io_context ctx;
  const std::string name = unique_abstract("abstract");
  auto listener = unix_listener::bind(ctx, name).value();
  CHECK(listener.local_endpoint().is_abstract());
  CHECK(!exists(name.substr(1)));
  auto body = [&]() -> task<void> {
    auto [client, server] = co_await connect_pair(ctx, listener);
    CHECK(client.remote_endpoint().value().to_string() == name);
    require_ok(co_await client.write_all("abstract"));
    std::byte buf[8];
    require_ok(co_await server.read_exactly(buf));
    CHECK(text(buf) == "abstract");
    // The name is taken while the listener lives.
    auto again = unix_listener::bind(ctx, name);
    CHECK(again.error() == std::errc::address_in_use);
    listener.close();
    auto refused = co_await unix_stream::connect(ctx, unix_endpoint::parse(name).value());
    CHECK(refused.error() == std::errc::connection_refused);
  };
  ctx.run(body());
  CHECK(unix_listener::bind(ctx, name).has_value()); // free again
}

TEST_CASE("64 MiB checksummed through write_all / read_exactly over a unix_stream") {
  io_context ctx;
  // Named, not a structured binding: clang 14 cannot capture those in lambdas.
  auto ab = couring::socketpair(ctx).value();
  auto& a = ab.first;
  auto& b = ab.second;
  constexpr std::size_t total = 64u << 20, chunk = 1u << 20;
  std::uint64_t sent_sum = 0, got_sum = 0;
  auto writer = [&]() -> task<void> {
    std::uint64_t h = 1469598103934665603ull;
    for (std::size_t off = 0; off < total; off += chunk) {
      auto data = test_support::pattern(off / chunk, chunk);
      h = fnv(data, h);
      require_ok(co_await a.write_all(data));
    }
    sent_sum = h;
    require_ok(a.shutdown_write());
  };
  auto reader = [&]() -> task<void> {
    std::vector<std::byte> buf(chunk);
    std::uint64_t h = 1469598103934665603ull;
    for (std::size_t off = 0; off < total; off += chunk) {
      require_ok(co_await b.read_exactly(buf));
      h = fnv(buf, h);
    }
    got_sum = h;
    std::byte extra[1];
    auto end = co_await b.read(extra);
    require_ok(end);
    CHECK(*end == 0); // end of stream after exactly 64 MiB
  };
  auto body = [&]() -> task<void> {
    auto [w, r] = co_await when_all(writer(), reader());
    (void)w;
    (void)r;
  };
  ctx.run(body());
  CHECK(sent_sum == got_sum);
  CHECK(sent_sum != 0);
}

TEST_CASE("end of stream and peer reset on unix streams") {
  io_context ctx;
  auto body = [&]() -> task<void> {
    {
      // Named, not a structured binding: clang 14 cannot capture those in lambdas.
      auto ab = couring::socketpair(ctx).value();
      auto& a = ab.first;
      auto& b = ab.second;
      require_ok(co_await a.write_all("abc"));
      a.close();
      std::byte buf[8];
      auto n = co_await b.read(buf);
      require_ok(n);
      CHECK(*n == 3);
      auto end = co_await b.read(buf);
      require_ok(end);
      CHECK(*end == 0);
      auto exact = co_await b.read_exactly(buf);
      CHECK(exact.error() == error::end_of_stream);
    }
    {
      // A peer closing with data unread resets the connection.
      // Named, not a structured binding: clang 14 cannot capture those in lambdas.
      auto ab = couring::socketpair(ctx).value();
      auto& a = ab.first;
      auto& b = ab.second;
      require_ok(co_await a.write_all("unread"));
      b.close();
      std::byte buf[8];
      auto r = co_await a.read(buf);
      REQUIRE(!r);
      CHECK(r.error() == std::errc::connection_reset);
      auto w = co_await a.write("more");
      REQUIRE(!w);
      CHECK(w.error() == std::errc::broken_pipe); // MSG_NOSIGNAL: no SIGPIPE
    }
  };
  ctx.run(body());
}

TEST_CASE("1,000 concurrent unix connections, each a round trip") {
  test_support::raise_fd_limit();
  temp_dir dir;
  io_context ctx;
  auto listener = unix_listener::bind(ctx, dir.file("many.sock")).value();
  constexpr int n = 1000;
  int served = 0, verified = 0;
  auto handle = [&](unix_stream s) -> task<void> {
    auto r = co_await serve_one_request(s);
    if (r)
      ++served;
  };
  auto server = [&]() -> task<void> {
    for (int i = 0; i < n; ++i) {
      auto c = co_await listener.accept();
      require_ok(c);
      ctx.spawn(handle(std::move(*c)));
    }
  };
  std::vector<unix_stream> clients(n);
  auto client = [&](int i) -> task<void> {
    auto c = co_await unix_stream::connect(ctx, listener.local_endpoint());
    require_ok(c);
    clients[static_cast<std::size_t>(i)] = std::move(*c);
    // Every connection is open at once before any is answered.
    (void)co_await sleep_for(ctx, 50ms);
    const std::string req = "req" + std::to_string(i);
    const std::string reply = co_await ask(clients[static_cast<std::size_t>(i)], req);
    if (reply == std::to_string(req.size()) + ":" + std::string(req.rbegin(), req.rend()))
      ++verified;
  };
  ctx.spawn(server());
  for (int i = 0; i < n; ++i)
    ctx.spawn(client(i));
  ctx.run();
  CHECK(served == n);
  CHECK(verified == n);
}

TEST_CASE("application code written once serves TCP and Unix streams") {
  io_context ctx;
  auto tcp = test_support::loopback_listener(ctx);
  auto unix_l = unix_listener::bind(ctx, unique_abstract("generic")).value();
  auto body = [&]() -> task<void> {
    auto [tc, ts] = co_await test_support::connect_pair(ctx, tcp);
    auto [uc, us] = co_await connect_pair(ctx, unix_l);
    ctx.spawn([](stream& s) -> task<void> {
      (void)co_await serve_one_request(s);
    }(ts));
    ctx.spawn([](stream& s) -> task<void> {
      (void)co_await serve_one_request(s);
    }(us));
    const std::string from_tcp = co_await ask(tc, "tcp");
    const std::string from_unix = co_await ask(uc, "unix");
    CHECK(from_tcp == "3:pct");
    CHECK(from_unix == "4:xinu");
  };
  ctx.run(body());
}

TEST_CASE("unix datagrams: checksummed, sender address, truncation, connected pair") {
  temp_dir dir;
  io_context ctx;
  auto server = unix_datagram_socket::bind(ctx, dir.file("dgram.sock")).value();
  auto client = unix_datagram_socket::bind(ctx, unique_abstract("dgram-client")).value();
  constexpr int count = 10'000;
  int good = 0, bad = 0;
  auto echo = [&]() -> task<void> {
    std::vector<std::byte> buf(4096);
    for (;;) {
      auto d = co_await server.receive_from(buf);
      if (!d || d->size == 0)
        co_return;
      (void)co_await server.send_to(std::span(buf).first(d->size), d->sender);
    }
  };
  auto body = [&]() -> task<void> {
    std::vector<std::byte> in(4096);
    for (int i = 0; i < count; ++i) {
      auto out = test_support::pattern(static_cast<std::uint64_t>(i),
                                       16 + static_cast<std::size_t>(i) * 37 % 3000);
      const std::uint64_t sum = fnv(out);
      require_ok(co_await client.send_to(out, server.local_endpoint().value()));
      auto d = co_await with_timeout(client.receive_from(in), 2s);
      require_ok(d);
      if (d->size == out.size() && fnv(std::span(in).first(d->size)) == sum &&
          d->sender == server.local_endpoint().value())
        ++good;
      else
        ++bad;
    }
    // Truncation is reported with the real size.
    const auto big = test_support::pattern(7, 3000);
    require_ok(co_await client.send_to(big, server.local_endpoint().value()));
    std::byte small[10];
    auto t = co_await client.receive_from(small);
    require_ok(t);
    CHECK(t->truncated);
    CHECK(t->size == 10);
    CHECK(t->datagram_size == 3000);
    require_ok(
        co_await client.send_to(std::span<const std::byte>(), server.local_endpoint().value()));
  };
  ctx.spawn(echo());
  ctx.run(body());
  ctx.run();
  CHECK(good == count);
  CHECK(bad == 0);

  // A connected pair; an unbound sender is unnamed.
  // Named, not a structured binding: clang 14 cannot capture those in lambdas.
  auto ab = unix_datagram_socket::pair(ctx).value();
  auto& a = ab.first;
  auto& b = ab.second;
  auto pair_body = [&]() -> task<void> {
    require_ok(co_await a.send("one"));
    std::byte buf[8];
    auto d = co_await b.receive(buf);
    require_ok(d);
    CHECK(text(std::span(buf, d->size)) == "one");
    CHECK(d->sender.is_unnamed());
    // Nothing can be sent to an unnamed address.
    auto none = co_await a.send_to("x", unix_endpoint());
    CHECK(!none);
    // Nobody at that path.
    auto nobody = co_await a.send_to("x", unix_endpoint::parse(dir.file("nobody")).value());
    CHECK(nobody.error() == std::errc::no_such_file_or_directory);
  };
  ctx.run(pair_body());
  const std::string dpath = dir.file("dgram.sock");
  server.close();
  CHECK(!exists(dpath));
}

TEST_CASE("passing a pipe and a regular file; received descriptors are owned") {
  io_context ctx;
  temp_dir dir;
  const std::string file_path = dir.file("data.txt");
  {
    FILE* f = std::fopen(file_path.c_str(), "w");
    REQUIRE(f != nullptr);
    std::fputs("file content", f);
    std::fclose(f);
  }
  // Named, not a structured binding: clang 14 cannot capture those in lambdas.
  auto ab = couring::socketpair(ctx).value();
  auto& a = ab.first;
  auto& b = ab.second;
  const auto baseline = test_support::open_fd_count();
  auto body = [&]() -> task<void> {
    int p[2];
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    const int file = ::open(file_path.c_str(), O_RDONLY | O_CLOEXEC);
    REQUIRE(file >= 0);
    const int to_send[] = {p[1], file};
    auto sent = co_await a.send_with_fds(bytes("F"), to_send);
    require_ok(sent);
    CHECK(*sent == 1);
    ::close(p[1]); // the receiver holds its own copies now
    ::close(file);
    {
      received_fds fds;
      std::byte buf[4];
      auto n = co_await b.receive_with_fds(buf, fds);
      require_ok(n);
      CHECK(*n == 1);
      REQUIRE(fds.size() == 2);
      CHECK((::fcntl(fds[0].get(), F_GETFD) & FD_CLOEXEC) != 0);
      // The pipe's write end works: what goes in comes out of p[0].
      REQUIRE(::write(fds[0].get(), "via pipe", 8) == 8);
      char got[8];
      REQUIRE(::read(p[0], got, 8) == 8);
      CHECK(std::string(got, 8) == "via pipe");
      // The file reads from the start.
      char content[12];
      REQUIRE(::pread(fds[1].get(), content, 12, 0) == 12);
      CHECK(std::string(content, 12) == "file content");
      CHECK(test_support::open_fd_count() == baseline + 3); // p[0] + two received
    } // dropped: both received descriptors are closed
    ::close(p[0]);
    CHECK(test_support::open_fd_count() == baseline);

    // Received but never looked at: closed with the received_fds.
    {
      int q[2];
      REQUIRE(::pipe2(q, O_CLOEXEC) == 0);
      require_ok(co_await a.send_with_fds(bytes("Q"), std::span<const int>(q, 2)));
      ::close(q[0]);
      ::close(q[1]);
      received_fds ignored;
      std::byte buf[1];
      require_ok(co_await b.receive_with_fds(buf, ignored));
      CHECK(ignored.size() == 2);
    }
    CHECK(test_support::open_fd_count() == baseline);

    // Plain bytes: no descriptors.
    require_ok(co_await a.send_with_fds(bytes("plain"), {}));
    received_fds none;
    std::byte pb[5];
    auto pn = co_await b.receive_with_fds(pb, none);
    require_ok(pn);
    CHECK(none.empty());
    CHECK(text(std::span(pb, *pn)) == "plain");
  };
  ctx.run(body());
  CHECK(test_support::open_fd_count() == baseline);

  // Misuse: too many descriptors for one message, or no byte to carry them.
  std::vector<int> many(unix_stream::max_fds + 1, 0);
  CHECK_THROWS_AS(a.send_with_fds(bytes("x"), many), std::invalid_argument);
  const int one[] = {0};
  CHECK_THROWS_AS(a.send_with_fds({}, one), std::invalid_argument);
}

TEST_CASE("more descriptors than fit (MSG_CTRUNC) is an error, and none is leaked") {
  io_context ctx;
  // Named, not a structured binding: clang 14 cannot capture those in lambdas.
  auto ab = couring::socketpair(ctx).value();
  auto& a = ab.first;
  auto& b = ab.second;
  const auto baseline = test_support::open_fd_count();
  // Sent raw: 20 descriptors in one message, more than receive_with_fds takes.
  constexpr int n = 20;
  std::vector<int> fds;
  for (int i = 0; i < n; ++i)
    fds.push_back(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * n)] = {};
  char byte = 'C';
  iovec iov{&byte, 1};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * n);
  std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * n);
  REQUIRE(::sendmsg(a.native_handle(), &msg, 0) == 1);
  for (int fd : fds)
    ::close(fd);
  auto body = [&]() -> task<void> {
    received_fds got;
    std::byte buf[1];
    auto r = co_await b.receive_with_fds(buf, got);
    REQUIRE(!r);
    CHECK(r.error() == std::errc::message_size);
    CHECK(got.empty());
  };
  ctx.run(body());
  CHECK(test_support::open_fd_count() == baseline);
}

TEST_CASE("stale socket files: EADDRINUSE by default, removed with remove_stale, others kept") {
  temp_dir dir;
  io_context ctx;
  const std::string path = dir.file("stale.sock");
  {
    // A listener that leaves its file behind, as a crashed process would.
    auto l = unix_listener::bind(ctx, path, {.unlink_on_close = false}).value();
  }
  REQUIRE(exists(path));
  auto plain = unix_listener::bind(ctx, path);
  REQUIRE(!plain);
  CHECK(plain.error() == std::errc::address_in_use);
  CHECK(exists(path));
  auto fresh = unix_listener::bind(ctx, path, {.remove_stale = true});
  require_ok(fresh);

  // A live listener is never taken over.
  auto live = unix_listener::bind(ctx, path, {.remove_stale = true});
  REQUIRE(!live);
  CHECK(live.error() == std::errc::address_in_use);
  auto body = [&]() -> task<void> {
    auto [c, s] = co_await connect_pair(ctx, *fresh); // still the live one's
    require_ok(co_await c.write_all("ok"));
  };
  ctx.run(body());

  // A regular file at the path is never removed.
  const std::string regular = dir.file("regular");
  {
    FILE* f = std::fopen(regular.c_str(), "w");
    std::fputs("keep me", f);
    std::fclose(f);
  }
  auto over = unix_listener::bind(ctx, regular, {.remove_stale = true});
  REQUIRE(!over);
  CHECK(over.error() == std::errc::address_in_use);
  struct stat st {};
  REQUIRE(::lstat(regular.c_str(), &st) == 0);
  CHECK(S_ISREG(st.st_mode));
  CHECK(st.st_size == 7);

  // The same for datagram sockets.
  {
    auto d = unix_datagram_socket::bind(ctx, dir.file("d.sock"), {.unlink_on_close = false});
    require_ok(d);
  }
  CHECK(unix_datagram_socket::bind(ctx, dir.file("d.sock")).error() == std::errc::address_in_use);
  CHECK(unix_datagram_socket::bind(ctx, dir.file("d.sock"), {.remove_stale = true}).has_value());

  // Closing removes only the file it created: one put there since is kept.
  const std::string moved = dir.file("moved.sock");
  auto l = unix_listener::bind(ctx, moved).value();
  REQUIRE(::unlink(moved.c_str()) == 0);
  {
    FILE* f = std::fopen(moved.c_str(), "w");
    std::fclose(f);
  }
  l.close();
  CHECK(exists(moved));
}

TEST_CASE("closing a unix stream or listener with operations pending: operation_canceled") {
  io_context ctx;
  const auto fds_before = test_support::open_fd_count();
  temp_dir dir;
  auto listener = unix_listener::bind(ctx, dir.file("close.sock")).value();
  // Named, not a structured binding: clang 14 cannot capture those in lambdas.
  auto ab = couring::socketpair(ctx).value();
  auto& a = ab.first;
  auto& b = ab.second;
  int ended = 0;
  auto reader = [&]() -> task<void> {
    std::byte buf[8];
    auto r = co_await b.read(buf);
    CHECK(r.error() == std::errc::operation_canceled);
    ++ended;
  };
  auto fd_reader = [&]() -> task<void> {
    std::byte buf[8];
    received_fds fds;
    auto r = co_await b.receive_with_fds(buf, fds);
    CHECK(r.error() == std::errc::operation_canceled);
    ++ended;
  };
  auto acceptor = [&]() -> task<void> {
    auto c = co_await listener.accept();
    CHECK(c.error() == std::errc::operation_canceled);
    ++ended;
  };
  auto body = [&]() -> task<void> {
    ctx.spawn(reader());
    ctx.spawn(fd_reader()); // waits in line behind the read
    ctx.spawn(acceptor());
    (void)co_await sleep_for(ctx, 10ms);
    b.close();
    listener.close();
    (void)co_await sleep_for(ctx, 10ms);
    // A connect now is refused: the listener stopped at once.
    auto late =
        co_await unix_stream::connect(ctx, unix_endpoint::parse(dir.file("close.sock")).value());
    CHECK(!late);
    a.close();
  };
  ctx.run(body());
  CHECK(ended == 3);
  CHECK(test_support::open_fd_count() == fds_before);
}

TEST_CASE("a pending receive_with_fds or accept can be timed out and stopped") {
  io_context ctx;
  // Named, not a structured binding: clang 14 cannot capture those in lambdas.
  auto ab = couring::socketpair(ctx).value();
  auto& a = ab.first;
  auto& b = ab.second;
  auto listener = unix_listener::bind(ctx, unique_abstract("timeout")).value();
  auto body = [&]() -> task<void> {
    auto acc = co_await with_timeout(listener.accept(), 30ms);
    CHECK(acc.error() == std::errc::timed_out);
    std::stop_source stop_accept;
    stop_accept.request_stop();
    auto acc2 = co_await with_stop_token(listener.accept(), stop_accept.get_token());
    CHECK(acc2.error() == std::errc::operation_canceled);
    // The listener still accepts.
    auto c = co_await unix_stream::connect(ctx, listener.local_endpoint());
    require_ok(c);
    auto acc3 = co_await with_timeout(listener.accept(), 2s);
    require_ok(acc3);

    received_fds fds;
    std::byte buf[4];
    auto r = co_await with_timeout(b.receive_with_fds(buf, fds), 30ms);
    CHECK(r.error() == std::errc::timed_out);
    std::stop_source stop;
    stop.request_stop();
    auto s = co_await with_stop_token(b.read(buf), stop.get_token());
    CHECK(s.error() == std::errc::operation_canceled);
    // Nothing was consumed: the next message arrives.
    require_ok(co_await a.write_all("next"));
    auto n = co_await with_timeout(b.receive_with_fds(buf, fds), 2s);
    require_ok(n);
    CHECK(text(std::span(buf, *n)) == "next");
  };
  ctx.run(body());
}
