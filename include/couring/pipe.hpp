#pragma once

// pipe(ctx): the two ends of a new pipe, as streams. They read and write like
// every stream (stream.hpp) -- with IORING_OP_READ/WRITE, since a pipe is not
// a socket -- and close under the same rules. The reader sees end of stream
// (read returns 0) once the writer is closed; a write after the reader is
// closed fails with EPIPE (constructing a pipe end sets SIGPIPE to SIG_IGN if
// it was still at its default, which would kill the process: see stream.hpp).
// shutdown_write() does not apply to a pipe (ENOTSOCK): close the writer.

#include <utility>

#include <couring/io_context.hpp>
#include <couring/result.hpp>
#include <couring/stream.hpp>

namespace couring {

class pipe_reader : public stream {
public:
  pipe_reader() noexcept = default;
  // Adopts fd, the read end of a pipe (or a FIFO).
  pipe_reader(io_context& ctx, int fd) : stream(ctx, fd, kind::other) {}
};

class pipe_writer : public stream {
public:
  pipe_writer() noexcept = default;
  // Adopts fd, the write end of a pipe (or a FIFO).
  pipe_writer(io_context& ctx, int fd) : stream(ctx, fd, kind::other) {}
};

// A new pipe (pipe2 with O_CLOEXEC); EMFILE/ENFILE when no descriptor is left.
result<std::pair<pipe_reader, pipe_writer>> pipe(io_context& ctx);

} // namespace couring
