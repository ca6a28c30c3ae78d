#pragma once

// basic_datagram_socket<Address>: what every datagram socket shares --
// udp_socket (Address = endpoint) and unix_datagram_socket (unix_endpoint).
// Each send or receive is one io_uring request (IORING_OP_SENDMSG /
// IORING_OP_RECVMSG) whose msghdr, iovec and address live inside the
// awaitable, in the awaiting coroutine's frame: no allocation per datagram.
//
// Truncation is reported, never silent: a datagram longer than the buffer
// fills the buffer, the rest is discarded by the kernel, and the result says
// so -- `truncated` is true and `datagram_size` is the datagram's real
// length. (The receive passes MSG_TRUNC, so the kernel returns the real
// length rather than the copied one; `size` is what landed in the buffer.)
//
// Order and closing are those of every I/O object: receives run one at a
// time in the order they were started (the read side), sends likewise (the
// write side); close() ends what is pending with operation_canceled.
// with_timeout and with_stop_token work on every operation here.

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <span>
#include <string_view>

#include <sys/socket.h>

#include <couring/detail/io_awaitable.hpp>
#include <couring/detail/socket.hpp>
#include <couring/io_context.hpp>
#include <couring/result.hpp>
#include <couring/stream.hpp>

namespace couring {

// What one receive gives.
template <class Address>
struct basic_datagram_info {
  std::size_t size = 0;          // bytes placed in the buffer
  std::size_t datagram_size = 0; // the datagram's real length (> size when truncated)
  bool truncated = false;        // the datagram did not fit: its tail was discarded
  Address sender;                // who sent it
};

namespace detail {

// One sendmsg to an address (or, with none, to the connected peer).
class send_message_awaitable : public io_awaitable<send_message_awaitable> {
public:
  send_message_awaitable(const object_handle& h, std::span<const std::byte> buf, const sockaddr* to,
                         socklen_t to_len) noexcept
      : io_awaitable(h.ring_ptr(), h.state(), h.state() ? &h.state()->write_side : nullptr),
        buf_(buf), to_len_(to_len) {
    if (to_len_ > sizeof to_)
      to_len_ = sizeof to_; // cannot happen with our address types
    if (to != nullptr && to_len_ > 0)
      std::memcpy(&to_, to, to_len_);
  }
  send_message_awaitable(send_message_awaitable&& o) noexcept
      : io_awaitable(std::move(o)), buf_(o.buf_), to_(o.to_), to_len_(o.to_len_) {}

  void prepare(io_uring_sqe* sqe) noexcept {
    // Pointers are set here, not in the constructor: the awaitable may
    // have moved (into with_timeout) since.
    iov_ = {const_cast<std::byte*>(buf_.data()), buf_.size()};
    msg_ = {};
    msg_.msg_name = to_len_ > 0 ? &to_ : nullptr;
    msg_.msg_namelen = to_len_;
    msg_.msg_iov = &iov_;
    msg_.msg_iovlen = 1;
    io_uring_prep_sendmsg(sqe, this->object->fd, &msg_, MSG_NOSIGNAL);
  }
  static result<std::size_t> make_result(int res) noexcept { return byte_count(res); }

private:
  std::span<const std::byte> buf_;
  sockaddr_storage to_{};
  socklen_t to_len_;
  iovec iov_{};
  msghdr msg_{};
};

// One recvmsg, reporting the sender and truncation.
template <class Address>
class receive_message_awaitable : public io_awaitable<receive_message_awaitable<Address>> {
  using base = io_awaitable<receive_message_awaitable<Address>>;

public:
  receive_message_awaitable(const object_handle& h, std::span<std::byte> buf) noexcept
      : base(h.ring_ptr(), h.state(), h.state() ? &h.state()->read_side : nullptr), buf_(buf) {}
  receive_message_awaitable(receive_message_awaitable&& o) noexcept
      : base(std::move(o)), buf_(o.buf_) {}

  void prepare(io_uring_sqe* sqe) noexcept {
    iov_ = {buf_.data(), buf_.size()};
    msg_ = {};
    msg_.msg_name = &from_;
    msg_.msg_namelen = sizeof from_;
    msg_.msg_iov = &iov_;
    msg_.msg_iovlen = 1;
    // MSG_TRUNC: res is the datagram's real length, even when longer than
    // the buffer; the kernel also sets MSG_TRUNC in msg_.msg_flags.
    io_uring_prep_recvmsg(sqe, this->object->fd, &msg_, MSG_TRUNC);
  }
  result<basic_datagram_info<Address>> make_result(int res) const noexcept {
    if (res < 0)
      return errno_code(res);
    basic_datagram_info<Address> info;
    info.datagram_size = static_cast<std::size_t>(res);
    info.size = std::min(info.datagram_size, buf_.size());
    info.truncated = info.datagram_size > buf_.size() || (msg_.msg_flags & MSG_TRUNC) != 0;
    auto sender =
        Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&from_), msg_.msg_namelen);
    if (sender)
      info.sender = *sender;
    return info;
  }

private:
  std::span<std::byte> buf_;
  sockaddr_storage from_;
  iovec iov_{};
  msghdr msg_{};
};

} // namespace detail

template <class Address>
class basic_datagram_socket {
public:
  using address_type = Address;
  using info_type = basic_datagram_info<Address>;
  using send_awaitable = detail::send_message_awaitable;
  using receive_awaitable = detail::receive_message_awaitable<Address>;

  basic_datagram_socket() noexcept = default;

  // Sends buf as one datagram to `to`. The result is the bytes sent (all of
  // them: a datagram is never split); EMSGSIZE if it is too large.
  [[nodiscard]] send_awaitable send_to(std::span<const std::byte> buf, const Address& to) noexcept {
    return {handle_, buf, to.data(), to.size()};
  }
  [[nodiscard]] send_awaitable send_to(std::string_view text, const Address& to) noexcept {
    return send_to(std::as_bytes(std::span(text.data(), text.size())), to);
  }
  // Waits for one datagram; see basic_datagram_info (truncation included).
  [[nodiscard]] receive_awaitable receive_from(std::span<std::byte> buf) noexcept {
    return {handle_, buf};
  }

  // Sets the default peer (connect(2): no packet is exchanged, it returns at
  // once): send() goes there, and only its datagrams are received. An error
  // the peer reports (an ICMP port unreachable for UDP) ends the next
  // operation with connection_refused.
  result<void> connect(const Address& peer) noexcept {
    if (!handle_.is_open())
      return std::error_code(EBADF, std::system_category());
    return detail::connect_socket(handle_.fd(), peer.data(), peer.size());
  }
  // To the connected peer.
  [[nodiscard]] send_awaitable send(std::span<const std::byte> buf) noexcept {
    return {handle_, buf, nullptr, 0};
  }
  [[nodiscard]] send_awaitable send(std::string_view text) noexcept {
    return send(std::as_bytes(std::span(text.data(), text.size())));
  }
  // From the connected peer (the same as receive_from: truncation is reported).
  [[nodiscard]] receive_awaitable receive(std::span<std::byte> buf) noexcept {
    return {handle_, buf};
  }

  result<Address> local_endpoint() const { return name(false); }
  result<Address> remote_endpoint() const { return name(true); }

  // Ends every pending operation with operation_canceled; the descriptor is
  // released once the last request on it has completed. Idempotent.
  void close() noexcept { handle_.close(); }
  bool is_open() const noexcept { return handle_.is_open(); }
  // The descriptor, or -1 once closed: for socket options only.
  int native_handle() const noexcept { return handle_.fd(); }
  io_context& context() const noexcept { return handle_.ring_ptr()->context(); }

protected:
  basic_datagram_socket(io_context& ctx, int fd) : handle_(ctx.ring(), fd) {}

  result<Address> name(bool peer) const {
    sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (auto r = detail::socket_name_raw(handle_.fd(), peer, ss, len); !r)
      return r.error();
    return Address::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss), len);
  }

  detail::object_handle handle_;
};

} // namespace couring
