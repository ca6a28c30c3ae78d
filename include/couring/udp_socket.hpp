#pragma once

// udp_socket: a UDP socket. Sending, receiving (truncation reported),
// connecting, ordering and closing are those of every datagram socket
// (datagram_socket.hpp); this adds opening, binding and UDP's options.

#include <couring/datagram_socket.hpp>
#include <couring/endpoint.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>

namespace couring {

using datagram_info = basic_datagram_info<endpoint>;

struct udp_options {
  bool reuse_address = false;  // SO_REUSEADDR
  bool reuse_port = false;     // SO_REUSEPORT: several sockets share the port
  bool broadcast = false;      // SO_BROADCAST: may send to broadcast addresses
  bool ipv6_only = false;      // IPV6_V6ONLY (IPv6 sockets only; false: IPv4 too, mapped)
  int receive_buffer_size = 0; // SO_RCVBUF in bytes; 0 keeps the system default
  int send_buffer_size = 0;    // SO_SNDBUF in bytes; 0 keeps the system default
};

class udp_socket : public basic_datagram_socket<endpoint> {
public:
  udp_socket() noexcept = default;
  // Adopts fd, a UDP socket; closes it when destroyed.
  udp_socket(io_context& ctx, int fd) : basic_datagram_socket(ctx, fd) {}

  // socket + options + bind. Port 0 picks a free port (see local_endpoint()).
  static result<udp_socket> bind(io_context& ctx, const endpoint& local, udp_options options = {});
  // An unbound socket of family AF_INET or AF_INET6 (the first send_to binds
  // it to an ephemeral port).
  static result<udp_socket> open(io_context& ctx, int family, udp_options options = {});

  // Multicast membership: group is the group address (its port is ignored);
  // interface_index 0 lets the kernel choose (by route), else an index
  // from if_nametoindex. IPv4 and IPv6 alike.
  result<void> join_multicast(const endpoint& group, unsigned interface_index = 0) noexcept;
  result<void> leave_multicast(const endpoint& group, unsigned interface_index = 0) noexcept;
  // Whether this host's own multicast datagrams come back to it
  // (IP_MULTICAST_LOOP / IPV6_MULTICAST_LOOP; the kernel's default is on).
  result<void> set_multicast_loopback(bool on) noexcept;
  // Outgoing multicast TTL / hop limit (default 1: this network only).
  result<void> set_multicast_hops(int hops) noexcept;
  // Where outgoing multicast goes (IP_MULTICAST_IF / IPV6_MULTICAST_IF).
  result<void> set_multicast_interface(unsigned interface_index) noexcept;

private:
  result<void> membership(const endpoint& group, unsigned interface_index, bool join) noexcept;
  int family() const noexcept;
};

} // namespace couring
