#include <couring/unix_endpoint.hpp>

#include <cstddef>
#include <cstring>

namespace couring {

namespace {
constexpr socklen_t path_offset = offsetof(sockaddr_un, sun_path);
} // namespace

unix_endpoint::unix_endpoint() noexcept : len_(sizeof(sa_family_t)) {
  std::memset(&addr_, 0, sizeof addr_);
  addr_.sun_family = AF_UNIX;
}

result<unix_endpoint> unix_endpoint::parse(std::string_view text) {
  unix_endpoint ep;
  if (text.empty() || text == "@")
    return std::errc::invalid_argument;
  if (text.front() == '@') {
    // Abstract: a leading NUL, then the name; its length is part of the
    // address (no terminating NUL), so "@a" and "@a\0" differ.
    const std::string_view name = text.substr(1);
    if (name.size() > sizeof ep.addr_.sun_path - 1)
      return std::errc::filename_too_long;
    std::memcpy(ep.addr_.sun_path + 1, name.data(), name.size());
    ep.len_ = static_cast<socklen_t>(path_offset + 1 + name.size());
    return ep;
  }
  if (text.find('\0') != std::string_view::npos)
    return std::errc::invalid_argument;
  // A path keeps its terminating NUL inside sun_path.
  if (text.size() > sizeof ep.addr_.sun_path - 1)
    return std::errc::filename_too_long;
  std::memcpy(ep.addr_.sun_path, text.data(), text.size());
  ep.len_ = static_cast<socklen_t>(path_offset + text.size() + 1);
  return ep;
}

result<unix_endpoint> unix_endpoint::from_sockaddr(const sockaddr* addr, socklen_t len) {
  unix_endpoint ep;
  if (len <= sizeof(sa_family_t))
    return ep; // unnamed (a socketpair end reports length 0)
  if (addr == nullptr || addr->sa_family != AF_UNIX || len > sizeof(sockaddr_un))
    return std::errc::address_family_not_supported;
  std::memcpy(&ep.addr_, addr, len);
  ep.len_ = len;
  if (ep.addr_.sun_path[0] != '\0') {
    // The kernel may count the path's NUL or not: keep one form.
    const std::size_t max = len - path_offset;
    const std::size_t n = ::strnlen(ep.addr_.sun_path, max);
    if (n == sizeof ep.addr_.sun_path)
      return std::errc::filename_too_long;
    ep.addr_.sun_path[n] = '\0';
    ep.len_ = static_cast<socklen_t>(path_offset + n + 1);
  }
  return ep;
}

bool unix_endpoint::is_unnamed() const noexcept {
  return len_ <= sizeof(sa_family_t);
}

bool unix_endpoint::is_abstract() const noexcept {
  return !is_unnamed() && addr_.sun_path[0] == '\0';
}

std::string_view unix_endpoint::name() const noexcept {
  if (is_unnamed())
    return {};
  if (is_abstract())
    return {addr_.sun_path + 1, len_ - path_offset - 1};
  return {addr_.sun_path, len_ - path_offset - 1};
}

std::string unix_endpoint::to_string() const {
  if (is_unnamed())
    return "(unnamed)";
  if (is_abstract())
    return "@" + std::string(name());
  return std::string(name());
}

bool operator==(const unix_endpoint& a, const unix_endpoint& b) noexcept {
  return a.len_ == b.len_ && std::memcmp(&a.addr_, &b.addr_, a.len_) == 0;
}

} // namespace couring
