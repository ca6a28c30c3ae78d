#pragma once

// send_file(out, in, offset, count): count bytes of the file in, from offset,
// to the stream out, without copying them through user space: the kernel
// splices them from the page cache into a pipe and from the pipe into the
// socket (IORING_OP_SPLICE twice, linked, so that a full round is one
// submission). The pipe (1 MiB when the kernel allows) belongs to the
// operation: made when the awaitable is made, closed when it goes away, so
// that what a failed send leaves in it can never leak into the next one.
//
// Result: the number of bytes sent, which is count on success. It fails with
// - error::end_of_file when the file ends before offset + count (it was
//   truncated while being sent, or count was too large),
// - EPIPE / ECONNRESET when the peer goes away,
// - operation_canceled when out or in is closed, or the operation is
//   cancelled (with_stop_token, when_any, with_timeout: timed_out);
// in every case transferred() on the awaitable tells how many bytes the
// socket took (keep the awaitable in a variable to ask).
//
// On out, it is one write: it holds out's write side from start to end, so
// no other write interleaves with the file's bytes. Reads of in need no order.
// The pipe costs two descriptors per send_file in flight.
//
// The kernel runs every splice in an io-wq worker thread. On a blocking
// socket the pipe-to-socket splice sleeps in that worker until the socket
// has taken everything, woken at every ACK that makes room: with many
// connections, many sleeping workers and a context switch per wake-up. On a
// non-blocking socket (O_NONBLOCK) a splice takes what fits and the rest
// waits for room with a poll (IORING_OP_POLL_ADD, no worker), which costs
// far less CPU per byte under load (examples/http_file_server sets it).

#include <cstddef>
#include <cstdint>

#include <couring/detail/io_awaitable.hpp>
#include <couring/detail/splice_pipe.hpp>
#include <couring/file.hpp>
#include <couring/result.hpp>
#include <couring/stream.hpp>

namespace couring {

class send_file_awaitable : public detail::splice_transfer<send_file_awaitable> {
  using base = detail::splice_transfer<send_file_awaitable>;

public:
  send_file_awaitable(stream& out, const file& in, std::uint64_t offset,
                      std::size_t count) noexcept;
  // Only before it is awaited (like every awaitable).
  send_file_awaitable(send_file_awaitable&& o) noexcept;
  send_file_awaitable& operator=(send_file_awaitable&&) = delete;

  bool await_ready() const noexcept { return count_ == 0; }
  // Checks in and the pipe, then io_awaitable's start.
  bool start(std::coroutine_handle<> awaiting, detail::cancel_scope* s);
  result<std::size_t> await_resume() const noexcept;

  // For io_awaitable: the first requests, and one pipe-to-socket splice.
  static void issue(detail::operation* op);
  void prepare(io_uring_sqe* sqe) noexcept;

private:
  struct fill_record : detail::operation {
    send_file_awaitable* owner = nullptr;
  };

  void issue_next();
  bool stopped() const noexcept;
  void part_done() noexcept;
  void advance() noexcept;
  void end(int res) noexcept;
  static void main_done(detail::operation* op) noexcept;
  static void fill_done(detail::operation* op) noexcept;

  fill_record fill_{}; // file -> pipe, counted on the file
  detail::object_state* file_state_ = nullptr;
  std::uint32_t file_generation_ = 0;
  bool file_opened_ = false; // in was opened once (closed: canceled, never: EBADF)
  detail::splice_pipe pipe_;
  std::uint64_t offset_ = 0; // next byte of the file to splice
  std::size_t count_ = 0;
  std::size_t remaining_ = 0; // bytes not yet spliced out of the file
  std::size_t in_pipe_ = 0;   // spliced into the pipe, not yet into the socket
  std::size_t chunk_ = 0;     // length of the current round's splices
  int main_res_ = 0;
  int fill_res_ = 0;
  int parts_ = 0;       // CQEs of the current round still to come
  bool paired_ = false; // the current round is fill + drain
  bool end_of_file_ = false;
  bool wait_writable_ = false; // the next round is a POLLOUT poll on out
  bool polling_ = false;       // the current round is that poll
};

// Sends count bytes of in, from offset, to out (see the top of this header).
[[nodiscard]] inline send_file_awaitable
send_file(stream& out, const file& in, std::uint64_t offset, std::size_t count) noexcept {
  return {out, in, offset, count};
}

} // namespace couring
