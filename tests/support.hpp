#pragma once

// Helpers shared by the tests.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

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

// Tests with thousands of sockets need more than the usual 1024 descriptors.
inline void raise_fd_limit() {
  rlimit rl{};
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
}

} // namespace test_support
