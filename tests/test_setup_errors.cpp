#include <catch2/catch.hpp>

#include <cerrno>
#include <cstddef>
#include <string>

#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <couring/io_context.hpp>

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
  int code = 0;
  std::string message;
};

// Constructs an io_context in a child process under the filter, so that the
// test process itself keeps io_uring.
child_outcome construct_under_seccomp(int err) {
  int pipefd[2];
  REQUIRE(pipe(pipefd) == 0);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(pipefd[0]);
    std::string report = "N";
    if (!refuse_io_uring_setup(err)) {
      report = "F";
    } else {
      try {
        couring::io_context ctx;
        report = "C"; // constructed: the filter did not bite
      } catch (const std::system_error& e) {
        report = "S" + std::to_string(e.code().value()) + ":" + e.what();
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
  REQUIRE(got[0] != 'F');
  child_outcome out;
  if (got[0] == 'S') {
    out.threw_system_error = true;
    const auto colon = got.find(':');
    out.code = std::stoi(got.substr(1, colon - 1));
    out.message = got.substr(colon + 1);
  }
  return out;
}

} // namespace

TEST_CASE("a seccomp filter answering EPERM gives a message that names it") {
  auto out = construct_under_seccomp(EPERM);
  REQUIRE(out.threw_system_error);
  CHECK(out.code == EPERM);
  INFO(out.message);
  CHECK(out.message.find("seccomp") != std::string::npos);
  CHECK(out.message.find("Docker") != std::string::npos);
  CHECK(out.message.find("io_uring_disabled is 0") != std::string::npos);
  CHECK(out.message.find("Fix:") != std::string::npos);
}

TEST_CASE("a seccomp filter answering ENOSYS gives a message that names it") {
  auto out = construct_under_seccomp(ENOSYS);
  REQUIRE(out.threw_system_error);
  CHECK(out.code == ENOSYS);
  INFO(out.message);
  CHECK(out.message.find("seccomp") != std::string::npos);
  CHECK(out.message.find("CONFIG_IO_URING") != std::string::npos);
  CHECK(out.message.find("Fix:") != std::string::npos);
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
}
