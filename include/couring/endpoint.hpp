#pragma once

// endpoint: an IPv4 or IPv6 address and a port, stored as the sockaddr the
// kernel takes, so that connect/bind/accept need no conversion.

#include <cstdint>
#include <string>
#include <string_view>

#include <netinet/in.h>
#include <sys/socket.h>

#include <couring/result.hpp>

namespace couring {

class endpoint {
public:
  // An unspecified endpoint (family AF_UNSPEC); bind/connect refuse it.
  endpoint() noexcept;

  // "127.0.0.1:8080", "[::1]:8080". Anything else -- empty input, a missing
  // or out-of-range port, bad octets, unbalanced brackets, names -- is
  // std::errc::invalid_argument. No name resolution happens here.
  static result<endpoint> parse(std::string_view text);

  static endpoint ipv4_loopback(std::uint16_t port) noexcept;
  static endpoint ipv4_any(std::uint16_t port) noexcept;
  static endpoint ipv6_loopback(std::uint16_t port) noexcept;
  // From a sockaddr the kernel filled in (accept, getsockname).
  static result<endpoint> from_sockaddr(const sockaddr* addr, socklen_t len);

  std::uint16_t port() const noexcept;
  std::string to_string() const; // the form parse() reads back
  bool is_v4() const noexcept { return storage_.ss_family == AF_INET; }
  bool is_v6() const noexcept { return storage_.ss_family == AF_INET6; }
  int family() const noexcept { return storage_.ss_family; }

  const sockaddr* data() const noexcept { return reinterpret_cast<const sockaddr*>(&storage_); }
  socklen_t size() const noexcept;

  friend bool operator==(const endpoint& a, const endpoint& b) noexcept;

private:
  sockaddr_storage storage_;
};

} // namespace couring
