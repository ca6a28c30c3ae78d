#include <couring/detail/socket.hpp>

#include <cerrno>
#include <sys/socket.h>

namespace couring::detail {

namespace {
std::error_code last_error() noexcept {
  return {errno, std::system_category()};
}
} // namespace

result<int> open_stream_socket(int family) noexcept {
  if (family != AF_INET && family != AF_INET6)
    return std::errc::address_family_not_supported;
  int fd = ::socket(family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd < 0)
    return last_error();
  return fd;
}

result<void> set_socket_flag(int fd, int level, int option, bool on) noexcept {
  int value = on ? 1 : 0;
  if (::setsockopt(fd, level, option, &value, sizeof value) != 0)
    return last_error();
  return {};
}

result<void> bind_socket(int fd, const endpoint& local) noexcept {
  if (::bind(fd, local.data(), local.size()) != 0)
    return last_error();
  return {};
}

result<endpoint> socket_name(int fd, bool peer) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  auto* sa = reinterpret_cast<sockaddr*>(&ss);
  if ((peer ? ::getpeername(fd, sa, &len) : ::getsockname(fd, sa, &len)) != 0)
    return last_error();
  return endpoint::from_sockaddr(sa, len);
}

} // namespace couring::detail

namespace couring::detail {

result<void> connect_socket(int fd, const sockaddr* addr, socklen_t len) noexcept {
  if (::connect(fd, addr, len) != 0)
    return last_error();
  return {};
}

result<void> socket_name_raw(int fd, bool peer, sockaddr_storage& out, socklen_t& len) noexcept {
  auto* sa = reinterpret_cast<sockaddr*>(&out);
  len = sizeof out;
  if ((peer ? ::getpeername(fd, sa, &len) : ::getsockname(fd, sa, &len)) != 0)
    return last_error();
  return {};
}

} // namespace couring::detail

namespace couring::detail {

result<int> get_socket_int(int fd, int level, int option) noexcept {
  int value = 0;
  socklen_t len = sizeof value;
  if (::getsockopt(fd, level, option, &value, &len) != 0)
    return last_error();
  return value;
}

result<void> set_socket_int(int fd, int level, int option, int value) noexcept {
  if (::setsockopt(fd, level, option, &value, sizeof value) != 0)
    return last_error();
  return {};
}

} // namespace couring::detail
