#pragma once

#include <catch2/catch.hpp>

// Helpers shared by the tests.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <stdlib.h> // mkdtemp
#include <sys/resource.h>

#include <couring/couring.hpp>

namespace test_support {

inline std::span<const std::byte> bytes(std::string_view s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

inline std::string text(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

// A position-dependent pattern: a lost, duplicated or reordered chunk shows.
inline std::byte pattern_byte(std::uint64_t seed, std::size_t i) {
  std::uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<std::byte>(x & 0xff);
}

inline std::vector<std::byte> pattern(std::uint64_t seed, std::size_t n) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = pattern_byte(seed, i);
  return v;
}

// A listener on 127.0.0.1 with a port the kernel picks.
inline couring::tcp_listener loopback_listener(couring::io_context& ctx,
                                               couring::listen_options options = {}) {
  return couring::tcp_listener::bind(ctx, couring::endpoint::ipv4_loopback(0), options).value();
}

// co_await never goes inside a Catch2 assertion macro: g++ 12 miscompiles a
// co_await within the macro's try block (the coroutine is never resumed).
// require_ok(co_await op) checks a result outside of it.
template <class Result>
void require_ok(const Result& r) {
  INFO("error: " << r.error().message());
  REQUIRE(r.has_value());
}

inline void require_ok(bool ok) {
  REQUIRE(ok);
}

struct connected_pair {
  couring::tcp_stream client;
  couring::tcp_stream server;
};

// A client connected to listener, and the server side of that connection.
inline couring::task<connected_pair> connect_pair(couring::io_context& ctx,
                                                  couring::tcp_listener& listener) {
  auto c = co_await couring::tcp_stream::connect(ctx, listener.local_endpoint());
  require_ok(c);
  auto s = co_await listener.accept();
  require_ok(s);
  co_return connected_pair{std::move(*c), std::move(*s)};
}

// A read a few tasks deep, so that cancellation has to find the operation
// down the chain.
inline couring::task<couring::result<std::size_t>>
nested_read(couring::tcp_stream& s, std::span<std::byte> buf, int depth) {
  if (depth == 0)
    co_return co_await s.read(buf);
  co_return co_await nested_read(s, buf, depth - 1);
}

// ec is the condition e (a system_category ECANCELED is errc's): a plain
// bool to assert on outside the coroutine's co_await.
inline bool is(const std::error_code& ec, std::errc e) {
  return ec == e;
}

// Closes s after delay: the close that races an operation pending on s.
template <class Stream>
couring::task<void> close_after(couring::io_context& ctx, Stream& s,
                                std::chrono::milliseconds delay) {
  (void)co_await couring::sleep_for(ctx, delay);
  s.close();
}

// Tests with thousands of sockets need more than the usual 1024 descriptors.
inline void raise_fd_limit() {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
}

// A fresh directory /tmp/couring-<what>-XXXXXX, removed with everything in
// it by the destructor; dir / "name" is a path inside it.
struct temp_dir {
  std::string path;
  explicit temp_dir(std::string_view what) {
    std::string name = "/tmp/couring-" + std::string(what) + "-XXXXXX";
    REQUIRE(::mkdtemp(name.data()) != nullptr);
    path = name;
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  std::string operator/(std::string_view name) const { return path + "/" + std::string(name); }
};

} // namespace test_support

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <iostream>
#include <sys/mman.h>
#include <thread>
#include <unistd.h>
#include <utility>

namespace test_support {

// Sanitizer builds run slower; timing bounds in tests scale with this.
inline double time_scale() {
  const char* s = std::getenv("COURING_TEST_TIME_SCALE");
  return s != nullptr ? std::atof(s) : 1.0;
}

inline std::chrono::milliseconds scaled(std::chrono::milliseconds ms) {
  return std::chrono::milliseconds(
      static_cast<long>(static_cast<double>(ms.count()) * time_scale()));
}

// A byte pattern whose period (251) is prime: a chunk lost, doubled or
// swapped at any power-of-two boundary shows.
inline std::byte pattern_at(std::size_t i) {
  return static_cast<std::byte>((i * 7 + 3) % 251);
}
// buf filled with the pattern from offset on.
inline void fill_pattern(std::span<std::byte> buf, std::size_t offset) {
  for (std::size_t i = 0; i < buf.size(); ++i)
    buf[i] = pattern_at(offset + i);
}

inline std::size_t open_fd_count() {
  std::size_t n = 0;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (dirent* e = readdir(d))
      if (e->d_name[0] != '.')
        ++n;
    closedir(d);
  }
  return n - 1; // the directory stream itself
}

// Read buffers whose memory outlives the frames that use them. When a frame
// is done with its buffer, the buffer is filled with a canary. ASan cannot see
// the kernel write into freed memory; this can: a request still in flight
// after its frame was destroyed writes into the slot when data arrives, and
// damaged() finds the canary disturbed. The slots stay writable on purpose:
// a read-only page would make such a late write fail with EFAULT instead of
// landing, and the check could never fail.
class canary_pool {
public:
  static constexpr std::size_t slot_size = 4096;
  static constexpr std::byte canary{0xA5};

  explicit canary_pool(std::size_t slots) : slots_(slots) {
    base_ = static_cast<std::byte*>(mmap(nullptr, slots * slot_size, PROT_READ | PROT_WRITE,
                                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    if (base_ == MAP_FAILED)
      throw std::bad_alloc();
  }
  ~canary_pool() { munmap(base_, slots_ * slot_size); }
  canary_pool(const canary_pool&) = delete;
  canary_pool& operator=(const canary_pool&) = delete;

  std::span<std::byte> slot(std::size_t i) { return {base_ + i * slot_size, slot_size}; }

  // The frame using slot i is gone: from now on nothing may write there.
  void retire(std::size_t i) {
    std::memset(base_ + i * slot_size, static_cast<int>(canary), slot_size);
  }

  // Number of retired slots whose canary was disturbed.
  std::size_t damaged(std::size_t retired_count) const {
    std::size_t bad = 0;
    for (std::size_t i = 0; i < retired_count; ++i)
      for (std::size_t j = 0; j < slot_size; ++j)
        if (base_[i * slot_size + j] != canary) {
          ++bad;
          break;
        }
    return bad;
  }

private:
  std::byte* base_;
  std::size_t slots_;
};

} // namespace test_support

namespace test_support {

// A std::thread joined by its destructor. A REQUIRE that fails while a plain
// std::thread is joinable unwinds through ~thread, which calls
// std::terminate and turns a test report into an abort; joining here lets
// the failure be reported. (The thread must still end by itself: tests give
// it a way out, such as a closed socket.)
class joining_thread {
public:
  template <class F>
  explicit joining_thread(F&& f) : t_(std::forward<F>(f)) {}
  ~joining_thread() { join(); }
  joining_thread(const joining_thread&) = delete;
  joining_thread& operator=(const joining_thread&) = delete;
  void join() {
    if (t_.joinable())
      t_.join();
  }

private:
  std::thread t_;
};

// A test that cannot run here (a kernel feature or an address family this
// machine lacks) says so instead of passing silently: the line goes to the
// test log, and scripts/dev's run_tests lists every such line with its
// reason in the summary. The binary's other test cases still count.
inline void declare_skip(const std::string& reason) {
  std::cout << "COURING-SKIP: " << Catch::getResultCapture().getCurrentTestName() << ": " << reason
            << std::endl;
}

} // namespace test_support
