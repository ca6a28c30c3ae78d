// The README's ```cpp blocks, compiled and run as written: readme_blocks.py
// extracts them at build time into readme_blocks.hpp (its header comment
// gives the convention). Programs run in a child process, checked by the
// checker their marker names; fragments run inside a context here, with the
// names they use provided below, and check their own results through
// readme_checks.

#include <catch2/catch.hpp>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;

struct readme_program {
  const char* where;
  const char* checker;
  std::vector<std::string> args;
  std::function<int()> main;
};

struct readme_fragment {
  const char* where;
  couring::task<void> (*run)(couring::io_context&, couring::tcp_stream&, const couring::endpoint&);
};

// Names the README's fragments use without defining them.
namespace readme_env {
using namespace couring;

task<result<std::size_t>> handle_request(tcp_stream& stream) {
  std::byte b[16];
  co_return co_await stream.read(b);
}
task<int> fetch(io_context& ctx, int x) {
  (void)co_await sleep_for(ctx, 1ms);
  co_return x;
}
task<result<std::size_t>> read_reply(tcp_stream& stream) {
  return handle_request(stream);
}
task<void> heartbeat(io_context& ctx) {
  (void)co_await sleep_for(ctx, 20ms);
}
} // namespace readme_env

// Set-ups named by the fragments' markers: each returns a guard that undoes
// it when the fragment ends.
namespace readme_setup {
struct guard {
  std::function<void()> undo;
  guard() = default;
  explicit guard(std::function<void()> f) : undo(std::move(f)) {}
  guard(guard&& o) noexcept : undo(std::exchange(o.undo, nullptr)) {}
  guard& operator=(guard&&) = delete;
  ~guard() {
    if (undo)
      undo();
  }
};

// The files examples use relative paths: a fresh directory of their own.
couring::task<guard> in_temp_dir(couring::io_context&) {
  std::string dir = "/tmp/couring-readme-XXXXXX";
  REQUIRE(::mkdtemp(dir.data()) != nullptr);
  char* old_cwd = ::getcwd(nullptr, 0);
  REQUIRE(::chdir(dir.c_str()) == 0);
  co_return guard([dir, old_cwd] {
    ::unlink("data.bin");
    ::unlink("config.json");
    CHECK(::chdir(old_cwd) == 0);
    std::free(old_cwd);
    ::rmdir(dir.c_str());
  });
}

// Someone sends SIGTERM once the example waits for it (the set blocks it
// before the example's first co_await, so it is never delivered by default).
couring::task<guard> send_sigterm_soon(couring::io_context& ctx) {
  auto later = [](couring::io_context& c) -> couring::task<void> {
    (void)co_await couring::sleep_for(c, 10ms);
    ::raise(SIGTERM);
  };
  ctx.spawn(later(ctx));
  co_return guard{};
}

// Only /etc/hosts answers: nothing listens on 127.0.0.1:9, and the tests
// never ask the machine's own name servers.
couring::task<guard> hosts_only_resolver(couring::io_context& ctx) {
  REQUIRE(
      couring::configure_resolver(ctx, {.servers = "127.0.0.1:9", .timeout = 100ms, .tries = 1}));
  co_return guard{};
}
} // namespace readme_setup

// Checks named by the fragments' markers. The fragments run with `stream`
// connected to a peer that reset the connection: reads fail or end at once.
namespace readme_checks {
template <class N, class Conn, class R, class First>
couring::task<void> timeouts(const N& n, const Conn& conn, const R& r, int a, int b,
                             const First& first) {
  CHECK(n.error() == std::errc::connection_reset); // the first read sees the reset
  CHECK(conn.has_value());                         // `remote` is a listener here
  REQUIRE(r.has_value());                          // the stop was never requested:
  CHECK(*r == 0);                                  // after the reset, end of stream
  CHECK(a == 1);
  CHECK(b == 2);
  CHECK(first.index == 0); // the read ended before the 20 ms heartbeat
  CHECK(std::get<0>(first.value).value_or(99) == 0);
  co_return;
}

template <class N, class W, class S, class Wr, class B, class P, class Reader, class Sent>
couring::task<void> files_and_pipes(const N& n, const W& whole, std::byte (&block)[4096],
                                    const S& size, const Wr& written, const B& bytes,
                                    const P& piped, Reader& reader, const Sent& sent) {
  CHECK(n.value_or(0) == 6);
  CHECK(whole.has_value());
  CHECK(test_support::text(std::span(block, 6)) == "header");
  CHECK(size.value_or(0) == 6);
  CHECK(written.has_value());
  REQUIRE(bytes.has_value());
  CHECK(test_support::text(*bytes) == "{}");
  CHECK(piped.has_value());
  std::byte through[14];
  auto got = co_await reader.read_exactly(through);
  test_support::require_ok(got);
  CHECK(test_support::text(through) == "through a pipe");
  // The peer reset the connection: send_file reports it, as the README says.
  REQUIRE_FALSE(sent.has_value());
  const bool reset =
      sent.error() == std::errc::broken_pipe || sent.error() == std::errc::connection_reset;
  CHECK(reset);
}

template <class Sig>
couring::task<void> signals(const Sig& sig) {
  CHECK(sig.value_or(0) == SIGTERM);
  co_return;
}

template <class Conn, class Addrs, class Configured>
couring::task<void> names(const Conn& conn, const Addrs& addrs, const Configured& configured) {
  CHECK(conn.has_value()); // localhost:port, from /etc/hosts, to `remote`'s listener
  REQUIRE(addrs.has_value());
  CHECK_FALSE(addrs->empty());
  CHECK(configured.has_value());
  co_return;
}
} // namespace readme_checks

#include "readme_blocks.hpp"

namespace {

// Brings up the loopback interface of a fresh network namespace.
void loopback_up() {
  const int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ifreq ifr{};
  std::strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (::ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
    ifr.ifr_flags = static_cast<short>(ifr.ifr_flags | IFF_UP);
    ::ioctl(s, SIOCSIFFLAGS, &ifr);
  }
  ::close(s);
}

// A client for a program that echoes on a stream socket at `to`; true if
// it echoed.
bool echo_check(const sockaddr* to, socklen_t to_len) {
  const auto until = std::chrono::steady_clock::now() + test_support::scaled(10s);
  while (std::chrono::steady_clock::now() < until) {
    const int fd = ::socket(to->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(fd, to, to_len) != 0) {
      ::close(fd);
      std::this_thread::sleep_for(20ms);
      continue;
    }
    // A program that answers short or not at all fails; it does not hang.
    timeval tv{.tv_sec = 5, .tv_usec = 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    const std::string msg = "echo me, README";
    std::string got;
    if (::send(fd, msg.data(), msg.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(msg.size())) {
      char b[64];
      while (got.size() < msg.size()) {
        const auto n = ::recv(fd, b, sizeof b, 0);
        if (n <= 0)
          break;
        got.append(b, static_cast<std::size_t>(n));
      }
    }
    ::close(fd);
    return got == msg;
  }
  return false;
}

bool tcp_echo_check(int port) {
  const auto ep = couring::endpoint::ipv4_loopback(static_cast<std::uint16_t>(port));
  return echo_check(ep.data(), ep.size());
}

bool unix_echo_check(const std::string& path) {
  sockaddr_un un{};
  un.sun_family = AF_UNIX;
  if (path.size() >= sizeof un.sun_path)
    return false;
  std::memcpy(un.sun_path, path.data(), path.size());
  return echo_check(reinterpret_cast<const sockaddr*>(&un), sizeof un);
}

// A datagram to 127.0.0.1:port must come back whole (retried: the program
// may not be bound yet, and a datagram may be lost).
bool udp_echo_check(int port) {
  const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  timeval tv{.tv_sec = 0, .tv_usec = 200'000};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const auto ep = couring::endpoint::ipv4_loopback(static_cast<std::uint16_t>(port));
  const std::string msg = "echo me too, README";
  bool ok = false;
  const auto until = std::chrono::steady_clock::now() + test_support::scaled(10s);
  while (!ok && std::chrono::steady_clock::now() < until) {
    (void)::sendto(fd, msg.data(), msg.size(), 0, ep.data(), ep.size());
    char b[64];
    const auto n = ::recv(fd, b, sizeof b, 0);
    ok = n == static_cast<ssize_t>(msg.size()) && std::string(b, msg.size()) == msg;
  }
  ::close(fd);
  return ok;
}

// Runs the program's main in a child (in a network namespace of its own when
// allowed, so that its fixed port cannot collide), checked by its checker.
// Returns "" or what went wrong.
std::string run_program(const readme_program& p) {
  const std::string checker = p.checker;
  if (checker != "exits" && checker != "echo_server" && checker != "udp_echo" &&
      checker != "unix_echo")
    return "unknown checker '" + checker + "' (see test_readme.cpp)";
  if (checker != "exits" && p.args.size() != 1)
    return checker + " wants one argument, the port or path";
  int pipefd[2];
  if (::pipe(pipefd) != 0)
    return "pipe failed";
  const pid_t pid = ::fork();
  if (pid < 0)
    return "fork failed";
  if (pid == 0) {
    // The child reports through its exit status only.
    ::close(pipefd[0]);
    std::signal(SIGABRT, SIG_DFL);
    if (::unshare(CLONE_NEWNET) == 0)
      loopback_up();
    if (checker == "exits") {
      const auto alarm_s = static_cast<unsigned>(10 * test_support::time_scale());
      ::alarm(alarm_s); // a program that does not end fails, not hangs
      ::_exit(p.main() == 0 ? 0 : 1);
    }
    const pid_t server = ::fork();
    if (server == 0)
      ::_exit(p.main() == 0 ? 3 : 4); // a server that returns is a failure
    const bool ok = checker == "echo_server" ? tcp_echo_check(std::stoi(p.args[0]))
                    : checker == "udp_echo"  ? udp_echo_check(std::stoi(p.args[0]))
                                             : unix_echo_check(p.args[0]);
    ::kill(server, SIGKILL);
    int st = 0;
    ::waitpid(server, &st, 0);
    ::_exit(ok && WIFSIGNALED(st) ? 0 : 2);
  }
  ::close(pipefd[1]);
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return "";
  return "child " + std::string(WIFEXITED(status)
                                    ? "exited " + std::to_string(WEXITSTATUS(status))
                                    : "killed by signal " + std::to_string(WTERMSIG(status)));
}

} // namespace

TEST_CASE("README: every program block runs and does what it shows") {
  REQUIRE_FALSE(readme_generated::programs.empty()); // the README has its echo server
  for (const auto& p : readme_generated::programs) {
    INFO(p.where << " (" << p.checker << ")");
    CHECK(run_program(p) == "");
  }
}

TEST_CASE("README: every fragment runs and its results are what the README says") {
  REQUIRE_FALSE(readme_generated::fragments.empty());
  for (const auto& f : readme_generated::fragments) {
    INFO(f.where);
    couring::io_context ctx;
    auto listener = test_support::loopback_listener(ctx);
    auto body = [&]() -> couring::task<void> {
      auto pair = co_await test_support::connect_pair(ctx, listener);
      // The peer resets the connection, so reads end at once instead of
      // waiting for the README's 5 s deadlines.
      linger lg{.l_onoff = 1, .l_linger = 0};
      ::setsockopt(pair.client.native_handle(), SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
      pair.client.close();
      (void)co_await couring::nop(ctx);
      co_await f.run(ctx, pair.server, listener.local_endpoint());
    };
    ctx.run(body());
  }
}
