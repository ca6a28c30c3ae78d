// Files: opening by path, positional reads and writes, sync, stat, the
// errors a user meets (each with its errno), cancellation and closing, and
// read_file / write_file. Everything runs on real files in a temporary
// directory that is removed afterwards.

#include <catch2/catch.hpp>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <couring/couring.hpp>

#include "support.hpp"

using namespace std::chrono_literals;
using namespace test_support;
using namespace couring;

namespace {

// A fast position-dependent fill: 64-bit words of a hash of (piece, word).
std::uint64_t mix(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
void fill_piece(std::span<std::byte> piece, std::uint64_t index) {
  auto* w = reinterpret_cast<std::uint64_t*>(piece.data());
  for (std::size_t i = 0; i < piece.size() / 8; ++i)
    w[i] = mix(index * 0x100000001ull + i);
}
// A checksum that depends on where each word is: a swapped piece shows.
std::uint64_t checksum(std::span<const std::byte> piece, std::uint64_t index) {
  const auto* w = reinterpret_cast<const std::uint64_t*>(piece.data());
  std::uint64_t sum = 0;
  for (std::size_t i = 0; i < piece.size() / 8; ++i)
    sum += mix(w[i] ^ (index << 32 | i));
  return sum;
}

// Runs body in a forked child with its own io_context; returns its exit code.
template <class Body>
int in_child(Body body) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int code = 99;
    try {
      code = body();
    } catch (...) {
      code = 98;
    }
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100 + WTERMSIG(status);
}

} // namespace

TEST_CASE("file: write_at, read_at, size, stat, sync on a new file") {
  temp_dir dir("file");
  io_context ctx;
  auto body = [&]() -> task<void> {
    auto f = co_await file::open(ctx, dir / "a", {.write = true, .create = true});
    require_ok(f);
    auto w = co_await f->write_at(bytes("hello, file"), 0);
    require_ok(w);
    CHECK(*w == 11);
    require_ok(co_await f->write_all_at(bytes("!!"), 20)); // leaves a hole
    require_ok(co_await f->sync());
    require_ok(co_await f->sync_data());
    auto size = co_await f->size();
    require_ok(size);
    CHECK(*size == 22);
    auto st = co_await f->stat();
    require_ok(st);
    CHECK(S_ISREG(st->stx_mode));
    CHECK(st->stx_size == 22);
    std::byte buf[32];
    auto n = co_await f->read_at(buf, 7);
    require_ok(n);
    CHECK(*n == 15);
    CHECK(text(std::span(buf, 4)) == "file");
    CHECK(buf[10] == std::byte{0}); // the hole reads as zeros
  };
  ctx.run(body());
}

TEST_CASE("file: short reads at the end of the file; read_exactly_at says end_of_file") {
  temp_dir dir("file");
  io_context ctx;
  auto body = [&]() -> task<void> {
    auto f = co_await file::open(ctx, dir / "short", {.read = true, .write = true, .create = true});
    require_ok(f);
    require_ok(co_await f->write_all_at(bytes("0123456789"), 0));
    std::byte buf[100];
    auto n = co_await f->read_at(buf, 4);
    require_ok(n);
    CHECK(*n == 6);
    auto at_end = co_await f->read_at(buf, 10);
    require_ok(at_end);
    CHECK(*at_end == 0);
    auto past_end = co_await f->read_at(buf, 1000);
    require_ok(past_end);
    CHECK(*past_end == 0);
    auto exact = f->read_exactly_at(std::span(buf, 8), 5);
    auto r = co_await exact;
    CHECK(r.error() == error::end_of_file);
    CHECK(exact.transferred() == 5);
    CHECK(text(std::span(buf, 5)) == "56789");
    std::byte four[4];
    require_ok(co_await f->read_exactly_at(four, 2));
    CHECK(text(four) == "2345");
  };
  ctx.run(body());
}

TEST_CASE("file: 256 MiB round trip in 1 MiB pieces, 16 requests in flight, checksummed") {
  temp_dir dir("file");
  io_context ctx;
  constexpr std::size_t piece = 1 << 20;
  // Under sanitizers (COURING_TEST_TIME_SCALE > 1) a quarter of it: the
  // fill and the checksums, not the I/O, dominate there.
  const std::size_t pieces = time_scale() > 1 ? 64 : 256;
  constexpr std::size_t in_flight = 16;
  std::uint64_t written_sum = 0, read_sum = 0;

  auto worker = [&](file& f, std::size_t first, bool writing) -> task<void> {
    std::vector<std::byte> buf(piece);
    for (std::size_t i = first; i < pieces; i += in_flight) {
      if (writing) {
        fill_piece(buf, i);
        written_sum += checksum(buf, i);
        require_ok(co_await f.write_all_at(buf, i * piece));
      } else {
        require_ok(co_await f.read_exactly_at(buf, i * piece));
        read_sum += checksum(buf, i);
      }
    }
  };
  auto body = [&]() -> task<void> {
    auto f = co_await file::open(ctx, dir / "big",
                                 {.read = true, .write = true, .create = true, .truncate = true});
    require_ok(f);
    for (bool writing : {true, false}) {
      std::vector<task<void>> workers;
      for (std::size_t k = 0; k < in_flight; ++k)
        workers.push_back(worker(*f, k, writing));
      co_await when_all(std::move(workers));
      if (writing) {
        auto size = co_await f->size();
        require_ok(size);
        CHECK(*size == pieces * piece);
      }
    }
  };
  const auto t0 = std::chrono::steady_clock::now();
  ctx.run(body());
  const auto ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
          .count();
  WARN(pieces << " MiB written and read back in " << ms << " ms");
  CHECK(written_sum == read_sum);
  CHECK(written_sum != 0);
}

TEST_CASE("file: errors are values with their errno; file_error names the path") {
  temp_dir dir("file");
  io_context ctx;
  auto body = [&]() -> task<void> {
    auto missing = co_await file::open(ctx, dir / "missing");
    CHECK(missing.error() == std::errc::no_such_file_or_directory);

    auto plain = co_await file::open(ctx, dir / "plain", {.write = true, .create = true});
    require_ok(plain);
    auto under_file = co_await file::open(ctx, dir / "plain/child");
    CHECK(under_file.error() == std::errc::not_a_directory);

    auto dir_for_writing = co_await file::open(ctx, dir.path, {.read = false, .write = true});
    CHECK(dir_for_writing.error() == std::errc::is_a_directory);

    auto exclusive =
        co_await file::open(ctx, dir / "plain", {.write = true, .create = true, .exclusive = true});
    CHECK(exclusive.error() == std::errc::file_exists);

    // Writing through a read-only descriptor.
    auto ro = co_await file::open(ctx, dir / "plain");
    require_ok(ro);
    auto w = co_await ro->write_at(bytes("x"), 0);
    CHECK(w.error() == std::errc::bad_file_descriptor);

    const auto e = file_error(missing.error(), "open", dir / "missing");
    CHECK(std::string(e.what()).find(dir / "missing") != std::string::npos);
    CHECK(std::string(e.what()).find("open") != std::string::npos);
    CHECK(e.code() == std::errc::no_such_file_or_directory);
  };
  ctx.run(body());
  CHECK_THROWS_AS(ctx.run(file::open(ctx, dir / "x", {.read = false})), std::invalid_argument);
  CHECK_THROWS_AS(ctx.run(file::open(ctx, dir / "x", {.truncate = true})), std::invalid_argument);
}

TEST_CASE("file: EACCES for an unprivileged user (a child process that drops root)") {
  temp_dir dir("file");
  const std::string secret = dir / "secret";
  {
    const int fd = ::open(secret.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    ::close(fd);
  }
  ::chmod(dir.path.c_str(), 0755);
  const int code = in_child([&] {
    if (::getuid() == 0 && ::setuid(65534) != 0)
      return 2;
    io_context ctx;
    auto r = ctx.run(file::open(ctx, secret));
    return r.error() == std::errc::permission_denied ? 0 : 1;
  });
  CHECK(code == 0);
}

TEST_CASE("file: EFBIG past RLIMIT_FSIZE (a child process with the limit and SIGXFSZ ignored)") {
  temp_dir dir("file");
  const std::string path = dir / "limited";
  const int code = in_child([&] {
    std::signal(SIGXFSZ, SIG_IGN); // otherwise the write kills the process
    rlimit rl{4096, 4096};
    if (::setrlimit(RLIMIT_FSIZE, &rl) != 0)
      return 2;
    io_context ctx;
    auto body = [&]() -> task<int> {
      auto f = co_await file::open(ctx, path, {.write = true, .create = true});
      if (!f)
        co_return 3;
      std::vector<std::byte> big(8192, std::byte{1});
      auto all = f->write_all_at(big, 0);
      auto r = co_await all;
      // 4096 bytes fit; the rest is refused.
      co_return r.error() == std::errc::file_too_large&& all.transferred() == 4096 ? 0 : 1;
    };
    return ctx.run(body());
  });
  CHECK(code == 0);
}

TEST_CASE("file: ENOSPC on a full file system (a 64 KiB tmpfs)") {
  temp_dir dir("file");
  const std::string mnt = dir / "mnt";
  ::mkdir(mnt.c_str(), 0700);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64k") != 0) {
    WARN("cannot mount a tmpfs here (" << std::strerror(errno) << "): ENOSPC not tested");
    return;
  }
  struct unmount {
    std::string path;
    ~unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } guard{mnt};
  io_context ctx;
  auto body = [&]() -> task<void> {
    auto f = co_await file::open(ctx, mnt + "/full", {.write = true, .create = true});
    require_ok(f);
    std::vector<std::byte> big(1 << 20, std::byte{7});
    auto r = co_await f->write_all_at(big, 0);
    CHECK(r.error() == std::errc::no_space_on_device);
    auto replaced = co_await write_file(ctx, mnt + "/other", big);
    CHECK(replaced.error() == std::errc::no_space_on_device);
  };
  ctx.run(body());
  // write_file left no temporary behind.
  std::size_t entries = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(mnt))
    ++entries;
  CHECK(entries == 1);
}

TEST_CASE("file: a read that blocks (a FIFO) is cancelled by with_timeout and by close") {
  temp_dir dir("file");
  const std::string fifo = dir / "fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  io_context ctx;
  auto body = [&]() -> task<void> {
    // Read and write: opening a FIFO so does not wait for a writer.
    auto f = co_await file::open(ctx, fifo, {.read = true, .write = true});
    require_ok(f);
    std::byte buf[16];
    const auto t0 = std::chrono::steady_clock::now();
    auto timed = co_await with_timeout(f->read_at(buf, 0), 50ms);
    CHECK(timed.error() == std::errc::timed_out);
    CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);

    std::stop_source stop;
    auto stop_later = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 20ms);
      stop.request_stop();
    };
    auto reader = [&]() -> task<result<std::size_t>> {
      co_return co_await with_stop_token(f->read_at(buf, 0), stop.get_token());
    };
    auto [stopped, ignored] = co_await when_all(reader(), stop_later());
    CHECK(stopped.error() == std::errc::operation_canceled);

    auto close_later = [&]() -> task<void> {
      (void)co_await sleep_for(ctx, 20ms);
      f->close();
    };
    auto read_until_closed = [&]() -> task<result<std::size_t>> {
      co_return co_await f->read_at(buf, 0);
    };
    auto [closed, ignored2] = co_await when_all(read_until_closed(), close_later());
    CHECK(closed.error() == std::errc::operation_canceled);
    auto after = co_await f->read_at(buf, 0);
    CHECK(after.error() == std::errc::operation_canceled);
    file never_opened;
    auto none = co_await never_opened.read_at(buf, 0);
    CHECK(none.error() == std::errc::bad_file_descriptor);
  };
  ctx.run(body());
  CHECK(ctx.pending_operations() == 0);
}

TEST_CASE("file: 1,000 files open at once, then closed: the descriptor count comes back") {
  raise_fd_limit();
  temp_dir dir("file");
  io_context ctx;
  const std::size_t before = open_fd_count();
  auto body = [&]() -> task<void> {
    std::vector<file> files;
    for (int i = 0; i < 1000; ++i) {
      auto f = co_await file::open(ctx, dir / ("f" + std::to_string(i)),
                                   {.write = true, .create = true});
      require_ok(f);
      files.push_back(std::move(*f));
    }
    CHECK(open_fd_count() == before + 1000);
    for (std::size_t i = 0; i < files.size(); i += 100)
      require_ok(co_await files[i].write_all_at(bytes("x"), 0));
    files.clear();
    CHECK(open_fd_count() == before);
  };
  ctx.run(body());
  CHECK(open_fd_count() == before);
}

TEST_CASE("read_file and write_file: round trip, replace, errors, no temporary left") {
  temp_dir dir("file");
  io_context ctx;
  auto body = [&]() -> task<void> {
    const auto first = pattern(1, 100'000);
    require_ok(co_await write_file(ctx, dir / "data", first));
    auto back = co_await read_file(ctx, dir / "data");
    require_ok(back);
    CHECK(*back == first);

    const auto second = pattern(2, 10);
    require_ok(co_await write_file(ctx, dir / "data", second, 0600));
    back = co_await read_file(ctx, dir / "data");
    require_ok(back);
    CHECK(*back == second);
    struct stat st {};
    ::stat((dir / "data").c_str(), &st);
    CHECK((st.st_mode & 0777) == 0600);

    auto empty = co_await write_file(ctx, dir / "empty", {});
    require_ok(empty);
    auto empty_back = co_await read_file(ctx, dir / "empty");
    require_ok(empty_back);
    CHECK(empty_back->empty());

    auto no_dir = co_await write_file(ctx, dir / "nope/data", first);
    CHECK(no_dir.error() == std::errc::no_such_file_or_directory);
    auto missing = co_await read_file(ctx, dir / "missing");
    CHECK(missing.error() == std::errc::no_such_file_or_directory);
    auto is_dir = co_await read_file(ctx, dir.path);
    CHECK(is_dir.error() == std::errc::is_a_directory);

    // A file that reports no size.
    auto status = co_await read_file(ctx, "/proc/self/status");
    require_ok(status);
    CHECK(text(*status).find("Pid:") != std::string::npos);
  };
  ctx.run(body());
  std::size_t entries = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(dir.path))
    ++entries;
  CHECK(entries == 2); // data and empty: no temporary left
}
