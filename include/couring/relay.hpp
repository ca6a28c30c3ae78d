#pragma once

// relay(from, to[, max_bytes]): moves the bytes that arrive on the stream
// `from` to the stream `to` until `from` reaches its end (or max_bytes have
// been relayed), without copying them through user space: the kernel splices
// them from `from` into a pipe and from the pipe into `to`
// (IORING_OP_SPLICE twice). For proxies (relay(client, upstream) and back)
// and echo servers (relay(s, s): from and to may be the same stream).
//
// Result: the number of bytes relayed (written to `to`). It fails with
// - EPIPE / ECONNRESET when either peer goes away (from's reset, to's reset),
// - operation_canceled when from or to is closed, or the relay is cancelled
//   (with_stop_token, when_any; with_timeout: timed_out);
// in every case transferred() on the awaitable tells how many bytes `to` took
// (keep the awaitable in a variable to ask). `to` is left as it is: shut it
// down (shutdown_write) if its peer should see the end too. A relay that
// fails or is cancelled may have taken bytes from `from` (up to the pipe's
// size) that `to` never got: they are dropped with the pipe, so after an
// error or a cancel while bytes flowed, neither stream is in a known place.
// (A relay cancelled while no bytes came took none.)
//
// Order: it is one read on `from` and one write on `to`: it holds from's read
// side and to's write side from start to end, so no other read takes bytes
// from under it and no other write interleaves with them.
//
// How: two loops run at once on one pipe. The fill loop waits until `from`
// is readable (a poll, armed in the kernel) and splices what is there into
// the pipe, as long as the pipe has room; the drain loop splices what the
// pipe holds into `to` and, when a non-blocking `to` is full, waits for room
// with a poll. The pipe bounds what is held: a destination that never reads
// stops the fill once the pipe is full (back-pressure reaches from's peer
// through TCP's window), and nothing grows. The kernel runs every splice in
// an io-wq worker; the polls keep those workers from sleeping on a silent
// source. The pipe costs two descriptors per relay in flight; zero heap
// allocations. A splice stops at TCP urgent data (MSG_OOB): the relay steps
// over the urgent byte with a 1-byte recv, as a plain read does, and a
// splice that says 0 is confirmed as the end by that recv too.

#include <cstddef>
#include <cstdint>
#include <limits>

#include <couring/detail/splice_pipe.hpp>
#include <couring/result.hpp>
#include <couring/stream.hpp>

namespace couring {

struct relay_options {
  // The pipe's capacity (F_SETPIPE_SZ, rounded up by the kernel to a power of
  // two pages; an unprivileged process is capped by
  // /proc/sys/fs/pipe-max-size, 1 MiB by default). The most bytes held
  // between the two sides. Every splice is an io-wq work item, so fewer,
  // larger ones pay: 1 MiB beat 256 KiB and 64 KiB (README, "Relaying
  // between streams").
  std::size_t pipe_size = 1024 * 1024;
  // The most bytes one splice moves (at most the pipe's capacity; 0: all of it).
  std::size_t chunk = 1024 * 1024;
};

class relay_awaitable : public detail::splice_transfer<relay_awaitable> {
  using base = detail::splice_transfer<relay_awaitable>;

public:
  relay_awaitable(stream& from, stream& to, std::size_t max_bytes,
                  const relay_options& options) noexcept;
  // Only before it is awaited (like every awaitable).
  relay_awaitable(relay_awaitable&& o) noexcept;
  relay_awaitable& operator=(relay_awaitable&&) = delete;
  ~relay_awaitable();

  bool await_ready() const noexcept { return max_ == 0; }
  // Checks from and the pipe, then io_awaitable's start.
  bool start(std::coroutine_handle<> awaiting, detail::cancel_scope* s);
  // Bytes relayed (transferred(): how far a failed relay got).
  result<std::size_t> await_resume() const noexcept;

  // For io_awaitable: starts once to's write side is ours.
  static void issue(detail::operation* op);
  // The drain: pipe to `to`.
  void prepare(io_uring_sqe* sqe) noexcept;

private:
  struct part : detail::operation {
    relay_awaitable* owner = nullptr;
  };

  void begin() noexcept;
  void take_reader() noexcept;
  void pump(bool may_resume) noexcept;
  void issue_fill();
  void issue_drain();
  void fill_round_done() noexcept;
  void drain_round_done() noexcept;
  bool stopped() const noexcept;
  void stop(int res) noexcept;
  void cancel_in_flight() noexcept;
  void release_closed_sides() noexcept;
  bool idle() const noexcept { return fill_parts_ == 0 && drain_parts_ == 0; }
  void conclude() noexcept;
  void conclude_later() noexcept;
  static void main_done(detail::operation* op) noexcept;
  static void part_done(detail::operation* op) noexcept;
  static void reader_issue(detail::operation* op);
  static void reader_posted(detail::operation* op) noexcept;
  static void cancel_all(detail::operation* op) noexcept;
  static void reader_cancel(detail::operation* op) noexcept;
  void cancel_now() noexcept;

  part reader_{};   // holds from's read side (no request of its own)
  part poll_in_{};  // POLLIN on from, linked to fill_
  part fill_{};     // from -> pipe, counted on from
  part poll_out_{}; // POLLOUT on to (a full non-blocking to), linked to the drain
  detail::ring* from_ring_ = nullptr;
  detail::object_state* from_state_ = nullptr;
  std::uint32_t from_generation_ = 0;
  bool from_opened_ = false; // from was opened once (closed: canceled, never: EBADF)
  detail::splice_pipe pipe_;
  std::size_t chunk_ = 0;
  std::size_t max_ = 0;
  std::size_t filled_ = 0;  // spliced into the pipe so far (sent_: out of it into to)
  std::size_t in_pipe_ = 0; // filled_ - sent_
  std::size_t drain_len_ = 0;
  int poll_in_res_ = 0;
  int fill_res_ = 0;
  int poll_out_res_ = 0;
  int drain_res_ = 0;
  int error_ = 0;        // the first error (negative errno) once stopping
  int fill_parts_ = 0;   // CQEs of the fill round still to come
  int drain_parts_ = 0;  // CQEs of the drain round still to come
  bool running_ = false; // begin() ran: the result comes from the loops
  bool holds_reader_ = false;
  bool from_ended_ = false;    // from reached its end
  bool fill_blocked_ = false;  // the pipe had no slot left: wait for a drain
  bool wait_writable_ = false; // the next drain round polls for POLLOUT first
  bool drain_polled_ = false;  // the current drain round began with that poll
  bool stopping_ = false;
  bool posted_ = false; // in the ring's posted list, to conclude there
  // A splice out of a TCP socket stops at urgent (MSG_OOB) data, saying 0 or
  // EAGAIN though bytes follow: the next fill round is then a 1-byte recv,
  // which steps over the urgent byte as every read does (0 there: the end).
  bool step_next_ = false;
  bool stepping_ = false;        // the current fill round is that recv
  bool fill_from_empty_ = false; // the current fill round began with an empty pipe
  std::byte step_byte_{};
};

// Relays from `from` to `to` until from's end (see the top of this header).
[[nodiscard]] inline relay_awaitable relay(stream& from, stream& to) noexcept {
  return {from, to, std::numeric_limits<std::size_t>::max(), relay_options{}};
}
// The same, stopping after exactly max_bytes (or at from's end before that).
[[nodiscard]] inline relay_awaitable relay(stream& from, stream& to, std::size_t max_bytes,
                                           const relay_options& options = {}) noexcept {
  return {from, to, max_bytes, options};
}

} // namespace couring
