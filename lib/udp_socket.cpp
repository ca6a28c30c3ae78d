#include <couring/udp_socket.hpp>

#include <cerrno>
#include <cstring>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <couring/detail/socket.hpp>

namespace couring {

namespace {

std::error_code last_error() noexcept {
  return {errno, std::system_category()};
}

result<void> apply(int fd, int family, const udp_options& o) noexcept {
  using detail::set_socket_flag;
  using detail::set_socket_int;
  if (o.reuse_address)
    if (auto r = set_socket_flag(fd, SOL_SOCKET, SO_REUSEADDR, true); !r)
      return r;
  if (o.reuse_port)
    if (auto r = set_socket_flag(fd, SOL_SOCKET, SO_REUSEPORT, true); !r)
      return r;
  if (o.broadcast)
    if (auto r = set_socket_flag(fd, SOL_SOCKET, SO_BROADCAST, true); !r)
      return r;
  if (family == AF_INET6)
    if (auto r = set_socket_flag(fd, IPPROTO_IPV6, IPV6_V6ONLY, o.ipv6_only); !r)
      return r;
  if (o.receive_buffer_size < 0 || o.send_buffer_size < 0)
    return std::errc::invalid_argument;
  if (o.receive_buffer_size > 0)
    if (auto r = set_socket_int(fd, SOL_SOCKET, SO_RCVBUF, o.receive_buffer_size); !r)
      return r;
  if (o.send_buffer_size > 0)
    if (auto r = set_socket_int(fd, SOL_SOCKET, SO_SNDBUF, o.send_buffer_size); !r)
      return r;
  return {};
}

result<int> make_socket(int family, const udp_options& options) noexcept {
  if (family != AF_INET && family != AF_INET6)
    return std::errc::address_family_not_supported;
  const int fd = ::socket(family, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_UDP);
  if (fd < 0)
    return last_error();
  if (auto r = apply(fd, family, options); !r) {
    ::close(fd);
    return r.error();
  }
  return fd;
}

} // namespace

result<udp_socket> udp_socket::bind(io_context& ctx, const endpoint& local, udp_options options) {
  auto fd = make_socket(local.family(), options);
  if (!fd)
    return fd.error();
  udp_socket s(ctx, *fd); // owns fd from here on, also on errors
  if (auto r = detail::bind_socket(*fd, local); !r)
    return r.error();
  return s;
}

result<udp_socket> udp_socket::open(io_context& ctx, int family, udp_options options) {
  auto fd = make_socket(family, options);
  if (!fd)
    return fd.error();
  return udp_socket(ctx, *fd);
}

int udp_socket::family() const noexcept {
  sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (!detail::socket_name_raw(native_handle(), false, ss, len))
    return AF_UNSPEC;
  return ss.ss_family;
}

result<void> udp_socket::membership(const endpoint& group, unsigned interface_index,
                                    bool join) noexcept {
  if (!is_open())
    return std::error_code(EBADF, std::system_category());
  const int fd = native_handle();
  if (group.is_v4()) {
    ip_mreqn req{};
    req.imr_multiaddr = reinterpret_cast<const sockaddr_in*>(group.data())->sin_addr;
    req.imr_ifindex = static_cast<int>(interface_index);
    if (::setsockopt(fd, IPPROTO_IP, join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP, &req,
                     sizeof req) != 0)
      return last_error();
    return {};
  }
  if (group.is_v6()) {
    ipv6_mreq req{};
    req.ipv6mr_multiaddr = reinterpret_cast<const sockaddr_in6*>(group.data())->sin6_addr;
    req.ipv6mr_interface = interface_index;
    if (::setsockopt(fd, IPPROTO_IPV6, join ? IPV6_ADD_MEMBERSHIP : IPV6_DROP_MEMBERSHIP, &req,
                     sizeof req) != 0)
      return last_error();
    return {};
  }
  return std::errc::address_family_not_supported;
}

result<void> udp_socket::join_multicast(const endpoint& group, unsigned interface_index) noexcept {
  return membership(group, interface_index, true);
}

result<void> udp_socket::leave_multicast(const endpoint& group, unsigned interface_index) noexcept {
  return membership(group, interface_index, false);
}

result<void> udp_socket::set_multicast_loopback(bool on) noexcept {
  if (!is_open())
    return std::error_code(EBADF, std::system_category());
  if (family() == AF_INET6)
    return detail::set_socket_int(native_handle(), IPPROTO_IPV6, IPV6_MULTICAST_LOOP, on ? 1 : 0);
  return detail::set_socket_int(native_handle(), IPPROTO_IP, IP_MULTICAST_LOOP, on ? 1 : 0);
}

result<void> udp_socket::set_multicast_hops(int hops) noexcept {
  if (!is_open())
    return std::error_code(EBADF, std::system_category());
  if (family() == AF_INET6)
    return detail::set_socket_int(native_handle(), IPPROTO_IPV6, IPV6_MULTICAST_HOPS, hops);
  return detail::set_socket_int(native_handle(), IPPROTO_IP, IP_MULTICAST_TTL, hops);
}

result<void> udp_socket::set_multicast_interface(unsigned interface_index) noexcept {
  if (!is_open())
    return std::error_code(EBADF, std::system_category());
  if (family() == AF_INET6)
    return detail::set_socket_int(native_handle(), IPPROTO_IPV6, IPV6_MULTICAST_IF,
                                  static_cast<int>(interface_index));
  ip_mreqn req{};
  req.imr_ifindex = static_cast<int>(interface_index);
  if (::setsockopt(native_handle(), IPPROTO_IP, IP_MULTICAST_IF, &req, sizeof req) != 0)
    return last_error();
  return {};
}

} // namespace couring
