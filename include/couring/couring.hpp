#pragma once

// The umbrella header: everything couring offers.

#include <couring/buffer_pool.hpp>
#include <couring/datagram_socket.hpp>
#include <couring/endpoint.hpp>
#include <couring/error.hpp>
#include <couring/file.hpp>
#include <couring/io_context.hpp>
#include <couring/nop.hpp>
#include <couring/pipe.hpp>
#include <couring/registered_buffers.hpp>
#include <couring/relay.hpp>
#include <couring/resolve.hpp>
#include <couring/result.hpp>
#include <couring/runtime.hpp>
#include <couring/send_file.hpp>
#include <couring/signal_set.hpp>
#include <couring/sleep.hpp>
#include <couring/stop.hpp>
#include <couring/stream.hpp>
#include <couring/switch_to.hpp>
#include <couring/task.hpp>
#include <couring/tcp_listener.hpp>
#include <couring/tcp_stream.hpp>
#include <couring/timeout.hpp>
#include <couring/udp_socket.hpp>
#include <couring/unique_fd.hpp>
#include <couring/unix_datagram_socket.hpp>
#include <couring/unix_endpoint.hpp>
#include <couring/unix_listener.hpp>
#include <couring/unix_stream.hpp>
#include <couring/when_all.hpp>
#include <couring/when_any.hpp>
