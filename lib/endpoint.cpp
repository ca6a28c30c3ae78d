#include <couring/endpoint.hpp>

#include <arpa/inet.h>
#include <charconv>
#include <cstring>

namespace couring {

namespace {

result<std::uint16_t> parse_port(std::string_view text) {
  if (text.empty() || text.size() > 5)
    return std::errc::invalid_argument;
  unsigned value = 0;
  for (char c : text) {
    if (c < '0' || c > '9')
      return std::errc::invalid_argument; // also rejects '+', '-', spaces
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value > 65535)
    return std::errc::invalid_argument;
  return static_cast<std::uint16_t>(value);
}

} // namespace

endpoint::endpoint() noexcept {
  std::memset(&storage_, 0, sizeof storage_);
  storage_.ss_family = AF_UNSPEC;
}

result<endpoint> endpoint::parse(std::string_view text) {
  endpoint ep;
  std::string host;
  std::string_view port_text;
  bool v6 = false;
  if (!text.empty() && text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
      return std::errc::invalid_argument;
    host.assign(text.substr(1, close - 1));
    port_text = text.substr(close + 2);
    v6 = true;
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos)
      return std::errc::invalid_argument;
    host.assign(text.substr(0, colon));
    port_text = text.substr(colon + 1);
    // An unbracketed IPv6 address is ambiguous ("::1:80"): refuse it.
    if (host.find_first_of(":[]") != std::string::npos)
      return std::errc::invalid_argument;
  }
  if (host.empty())
    return std::errc::invalid_argument;
  auto port = parse_port(port_text);
  if (!port)
    return port.error();

  if (v6) {
    auto* sa = reinterpret_cast<sockaddr_in6*>(&ep.storage_);
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons(*port);
    // inet_pton is strict: no zone ids, no surrounding spaces.
    if (inet_pton(AF_INET6, host.c_str(), &sa->sin6_addr) != 1)
      return std::errc::invalid_argument;
  } else {
    auto* sa = reinterpret_cast<sockaddr_in*>(&ep.storage_);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(*port);
    // inet_pton takes exactly four decimal octets of 0..255 (no "1.2.3",
    // no hex, no octal); that is the strictness we want.
    if (inet_pton(AF_INET, host.c_str(), &sa->sin_addr) != 1)
      return std::errc::invalid_argument;
  }
  return ep;
}

namespace {

endpoint make_v4(in_addr_t host_order_address, std::uint16_t port) {
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(host_order_address);
  return *endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
}

} // namespace

endpoint endpoint::ipv4_loopback(std::uint16_t port) noexcept {
  return make_v4(INADDR_LOOPBACK, port);
}

endpoint endpoint::ipv4_any(std::uint16_t port) noexcept {
  return make_v4(INADDR_ANY, port);
}

endpoint endpoint::ipv6_loopback(std::uint16_t port) noexcept {
  sockaddr_in6 sa{};
  sa.sin6_family = AF_INET6;
  sa.sin6_port = htons(port);
  sa.sin6_addr = in6addr_loopback;
  return *endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&sa), sizeof sa);
}

result<endpoint> endpoint::from_sockaddr(const sockaddr* addr, socklen_t len) {
  endpoint ep;
  if (addr == nullptr)
    return std::errc::invalid_argument;
  if (addr->sa_family == AF_INET && len >= sizeof(sockaddr_in)) {
    std::memcpy(&ep.storage_, addr, sizeof(sockaddr_in));
    return ep;
  }
  if (addr->sa_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
    std::memcpy(&ep.storage_, addr, sizeof(sockaddr_in6));
    return ep;
  }
  return std::errc::address_family_not_supported;
}

std::uint16_t endpoint::port() const noexcept {
  if (is_v4())
    return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
  if (is_v6())
    return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
  return 0;
}

socklen_t endpoint::size() const noexcept {
  if (is_v4())
    return sizeof(sockaddr_in);
  if (is_v6())
    return sizeof(sockaddr_in6);
  return 0;
}

std::string endpoint::to_string() const {
  char buf[INET6_ADDRSTRLEN] = {};
  if (is_v4()) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage_)->sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(port());
  }
  if (is_v6()) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_addr, buf,
              sizeof buf);
    return "[" + std::string(buf) + "]:" + std::to_string(port());
  }
  return "(unspecified)";
}

bool operator==(const endpoint& a, const endpoint& b) noexcept {
  return a.family() == b.family() && a.size() == b.size() &&
         std::memcmp(a.data(), b.data(), a.size()) == 0;
}

} // namespace couring
