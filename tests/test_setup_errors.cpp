#include <catch2/catch.hpp>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <couring/couring.hpp>

namespace {

// Makes io_uring_setup fail with err in this process, as a container's
// seccomp profile does, with a plain BPF program (no libseccomp needed).
bool refuse_io_uring_setup(int err) {
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K,
               SECCOMP_RET_ERRNO | (static_cast<unsigned>(err) & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  sock_fprog prog{.len = static_cast<unsigned short>(std::size(filter)), .filter = filter};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

struct child_outcome {
  bool threw_system_error = false;
  bool threw_invalid_argument = false;
  int code = 0;
  std::string message;
  // When the context was made: the backend, why, and a TCP round trip on it.
  std::string backend;
  int fallback_error = 0;
  std::string reason;
  bool round_trip = false;
};

// A TCP round trip over 127.0.0.1 on ctx, bounded in time.
bool tcp_round_trip(couring::io_context& ctx) {
  using namespace std::chrono_literals;
  auto body = [&]() -> couring::task<bool> {
    auto listener = couring::tcp_listener::bind(ctx, couring::endpoint::ipv4_loopback(0));
    if (!listener)
      co_return false;
    auto client = co_await couring::with_timeout(
        couring::tcp_stream::connect(ctx, listener->local_endpoint()), 5s);
    if (!client)
      co_return false;
    auto server = co_await couring::with_timeout(listener->accept(), 5s);
    if (!server)
      co_return false;
    const std::string_view ping = "ping";
    if (!co_await client->write_all(std::as_bytes(std::span(ping.data(), ping.size()))))
      co_return false;
    std::byte buf[4];
    auto got = co_await couring::with_timeout(server->read_exactly(buf), 5s);
    if (!got)
      co_return false;
    co_return std::memcmp(buf, ping.data(), 4) == 0;
  };
  return ctx.run(body());
}

// Constructs an io_context with `options` in a child process (under a
// filter refusing io_uring_setup with err, if err != 0), with `env` as
// COURING_BACKEND (nullptr: unset), so that the test process itself keeps
// io_uring and its environment.
child_outcome construct_in_child(int err, couring::io_context_options options = {},
                                 const char* env = nullptr) {
  int pipefd[2];
  REQUIRE(pipe(pipefd) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(pipefd[0]);
    std::string report = "N";
    if (env != nullptr)
      setenv("COURING_BACKEND", env, 1);
    else
      unsetenv("COURING_BACKEND");
    if (err != 0 && !refuse_io_uring_setup(err)) {
      report = "F";
    } else {
      try {
        couring::io_context ctx(options);
        const auto& f = ctx.features();
        const bool ok = tcp_round_trip(ctx);
        report = std::string("C") + couring::to_string(f.backend) + ":" +
                 std::to_string(f.fallback_error) + ":" + (ok ? "1" : "0") + ":" + f.backend_reason;
      } catch (const std::system_error& e) {
        report = "S" + std::to_string(e.code().value()) + ":" + e.what();
      } catch (const std::invalid_argument& e) {
        report = std::string("I0:") + e.what();
      } catch (...) {
        report = "X";
      }
    }
    [[maybe_unused]] auto n = write(pipefd[1], report.data(), report.size());
    _exit(0);
  }
  close(pipefd[1]);
  std::string got;
  char buf[512];
  for (ssize_t n; (n = read(pipefd[0], buf, sizeof buf)) > 0;)
    got.append(buf, static_cast<std::size_t>(n));
  close(pipefd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status)); // never aborts
  REQUIRE(!got.empty());
  INFO(got);
  REQUIRE(got[0] != 'F');
  REQUIRE(got[0] != 'X');
  child_outcome out;
  if (got[0] == 'S' || got[0] == 'I') {
    out.threw_system_error = got[0] == 'S';
    out.threw_invalid_argument = got[0] == 'I';
    const auto colon = got.find(':');
    out.code = std::stoi(got.substr(1, colon - 1));
    out.message = got.substr(colon + 1);
  } else if (got[0] == 'C') {
    const auto a = got.find(':');
    const auto b = got.find(':', a + 1);
    const auto c = got.find(':', b + 1);
    out.backend = got.substr(1, a - 1);
    out.fallback_error = std::stoi(got.substr(a + 1, b - a - 1));
    out.round_trip = got.substr(b + 1, c - b - 1) == "1";
    out.reason = got.substr(c + 1);
  }
  return out;
}

} // namespace

TEST_CASE("an explicit io_uring choice under a seccomp filter answering EPERM throws a message "
          "that names it") {
  auto out = construct_in_child(EPERM, {.backend = couring::backend::io_uring});
  REQUIRE(out.threw_system_error);
  CHECK(out.code == EPERM);
  INFO(out.message);
  CHECK(out.message.find("seccomp") != std::string::npos);
  CHECK(out.message.find("Docker") != std::string::npos);
  CHECK(out.message.find("io_uring_disabled is 0") != std::string::npos);
  CHECK(out.message.find("Fix:") != std::string::npos);
}

TEST_CASE("an explicit io_uring choice under a seccomp filter answering ENOSYS throws a message "
          "that names it") {
  auto out = construct_in_child(ENOSYS, {.backend = couring::backend::io_uring});
  REQUIRE(out.threw_system_error);
  CHECK(out.code == ENOSYS);
  INFO(out.message);
  CHECK(out.message.find("seccomp") != std::string::npos);
  CHECK(out.message.find("CONFIG_IO_URING") != std::string::npos);
  CHECK(out.message.find("Fix:") != std::string::npos);
}

TEST_CASE("COURING_BACKEND=io_uring is an explicit choice too: it throws under the filter") {
  auto out = construct_in_child(EPERM, {}, "io_uring");
  REQUIRE(out.threw_system_error);
  CHECK(out.code == EPERM);
  CHECK(out.message.find("seccomp") != std::string::npos);
}

TEST_CASE("an automatic context falls back to epoll where io_uring_setup is refused") {
  for (int err : {EPERM, ENOSYS}) {
    INFO("io_uring_setup fails with errno " << err);
    auto out = construct_in_child(err);
    INFO(out.message);
    REQUIRE_FALSE(out.threw_system_error);
    CHECK(out.backend == "epoll");
    CHECK(out.fallback_error == err);
    INFO(out.reason);
    // The reason names the cause: the io_uring error and its explanation.
    CHECK(out.reason.find("fell back to epoll") != std::string::npos);
    CHECK(out.reason.find(std::generic_category().message(err)) != std::string::npos);
    CHECK(out.reason.find("seccomp") != std::string::npos);
    CHECK(out.round_trip);
  }
}

TEST_CASE("the backend can be chosen: options, COURING_BACKEND, and the option wins") {
  auto automatic = construct_in_child(0);
  CHECK(automatic.backend == "io_uring");
  CHECK(automatic.fallback_error == 0);
  CHECK(automatic.round_trip);

  auto by_env = construct_in_child(0, {}, "epoll");
  CHECK(by_env.backend == "epoll");
  CHECK(by_env.reason == "COURING_BACKEND=epoll");
  CHECK(by_env.round_trip);

  auto by_option = construct_in_child(0, {.backend = couring::backend::epoll});
  CHECK(by_option.backend == "epoll");
  CHECK(by_option.reason == "io_context_options::backend = epoll");
  CHECK(by_option.round_trip);

  // An explicit choice in the options wins over the environment.
  auto option_wins = construct_in_child(0, {.backend = couring::backend::io_uring}, "epoll");
  CHECK(option_wins.backend == "io_uring");
  CHECK(option_wins.round_trip);
  auto option_wins2 = construct_in_child(0, {.backend = couring::backend::epoll}, "io_uring");
  CHECK(option_wins2.backend == "epoll");

  // An empty variable is no choice.
  auto empty = construct_in_child(0, {}, "");
  CHECK(empty.backend == "io_uring");
}

TEST_CASE("a COURING_BACKEND that names no backend is a clear error") {
  for (const char* bad : {"uring", "EPOLL", "epoll ", "select"}) {
    auto out = construct_in_child(0, {}, bad);
    REQUIRE(out.threw_invalid_argument);
    INFO(out.message);
    CHECK(out.message.find(std::string("COURING_BACKEND=") + bad) != std::string::npos);
    CHECK(out.message.find("expected io_uring or epoll") != std::string::npos);
  }
}

// The sysctl and the memlock limit are machine-wide or need an old kernel to
// bite, so their messages are checked through the function that builds them,
// with the values io_context would have read.
TEST_CASE("kernel.io_uring_disabled is named with its value") {
  auto two = couring::detail::describe_setup_failure(EPERM, 2, 0);
  CHECK(two.find("kernel.io_uring_disabled is 2") != std::string::npos);
  CHECK(two.find("sysctl -w kernel.io_uring_disabled=0") != std::string::npos);
  auto one = couring::detail::describe_setup_failure(EPERM, 1, 0);
  CHECK(one.find("kernel.io_uring_disabled is 1") != std::string::npos);
  CHECK(one.find("io_uring_group") != std::string::npos);
}

TEST_CASE("a memlock limit that is too low is named with its value") {
  auto msg = couring::detail::describe_setup_failure(ENOMEM, 0, 65536);
  CHECK(msg.find("RLIMIT_MEMLOCK = 65536 bytes") != std::string::npos);
  CHECK(msg.find("ulimit -l") != std::string::npos);
}

TEST_CASE("the context works again in the parent") {
  couring::io_context ctx; // the filters above stayed in the children
  CHECK(ctx.features().sq_entries > 0);
  CHECK(std::string(couring::to_string(couring::backend::automatic)) == "automatic");
}
