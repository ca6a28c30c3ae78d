#pragma once

// unix_datagram_socket: a Unix domain datagram socket, bound to a path, an
// abstract name ("@name"), or unbound. Sending, receiving (truncation
// reported), connecting, ordering and closing are those of every datagram
// socket (datagram_socket.hpp), shared with udp_socket. The socket file is
// handled as unix_listener's: EADDRINUSE unless remove_stale finds a stale
// socket file, removed again on close.
//
// A sender that never bound has no address: its datagrams arrive with an
// unnamed sender, and there is nothing to reply to.

#include <string_view>
#include <utility>

#include <couring/datagram_socket.hpp>
#include <couring/detail/socket_file.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>
#include <couring/unix_endpoint.hpp>

namespace couring {

using unix_datagram_info = basic_datagram_info<unix_endpoint>;

struct unix_datagram_options {
  bool remove_stale = false;   // remove a stale socket file at the path first
  bool unlink_on_close = true; // remove the socket file when the socket closes
};

class unix_datagram_socket : public basic_datagram_socket<unix_endpoint> {
public:
  unix_datagram_socket() noexcept = default;
  // Adopts fd, a Unix datagram socket; closes it when destroyed.
  unix_datagram_socket(io_context& ctx, int fd) : basic_datagram_socket(ctx, fd) {}

  static result<unix_datagram_socket> bind(io_context& ctx, const unix_endpoint& local,
                                           unix_datagram_options options = {});
  static result<unix_datagram_socket> bind(io_context& ctx, std::string_view local,
                                           unix_datagram_options options = {});
  // An unbound socket: it can send (to a path or a connected peer) but
  // nobody can reply.
  static result<unix_datagram_socket> open(io_context& ctx);
  // Two connected sockets (socketpair(AF_UNIX, SOCK_DGRAM)).
  static result<std::pair<unix_datagram_socket, unix_datagram_socket>> pair(io_context& ctx);

  void close() noexcept {
    basic_datagram_socket::close();
    file_.release();
  }

private:
  detail::socket_file file_;
};

} // namespace couring
