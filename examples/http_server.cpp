// http_server [PATH]: a small, strict HTTP/1.1 API on a Unix socket, in the style of
// /var/run/docker.sock. Keep-alive and pipelining; Content-Length bodies only; every
// malformed request gets a 4xx (or 501/505) and its connection closed; idle and
// half-sent clients are timed out, so no client can hold up another.
//
//   http_server /tmp/api.sock [--idle-timeout SECONDS] [--mode OCTAL] [--max-body BYTES]
//               [--threads N] [--max-connections N]
//   curl --unix-socket /tmp/api.sock http://localhost/info
//
//   GET|HEAD /info   200 {"pid":…,"uid":…,"gid":…} of the connecting process (SO_PEERCRED)
//   POST /echo       200 with the request body
//   anything else    404 (405 for a known path with another method)
// A HEAD request gets the headers a GET would get, Content-Length included, and no
// body: for every route and every status, errors too.
//
// --threads N rings (default: one per CPU): the listener on ring 0 hands connections to
// the rings in turn. An idle keep-alive connection waits for its next request with
// read_some(buffer_ring), holding no buffer; the request parser's buffer exists only
// while a request (and any pipelined behind it) is being read.
// Limits: each request must arrive within --idle-timeout (default 5 s, one deadline
// per request on the connection's timer); at --max-connections (default: RLIMIT_NOFILE
// minus a reserve) a new connection makes its ring close the connection that has been
// quiet longest, so a flood of idle or half-sent clients cannot keep others out.
//
// Under a service manager (systemd-socket-activate -l PATH http_server) PATH may be
// omitted; READY=1 goes to NOTIFY_SOCKET when it is set. SIGTERM/SIGINT: stop
// accepting, remove the socket file (unless activated), close idle connections, let
// responses being written finish (within the idle timeout), exit 0.
#include <ringsock/credentials.hpp>
#include <ringsock/ringsock.hpp>
#include <ringsock/socket_activation.hpp>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <exception>
#include <future>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>

#include "conn_limits.hpp"

using namespace std::chrono_literals;
using ringsock::task;

namespace {

constexpr std::size_t max_request_line = 8 * 1024;
constexpr std::size_t max_head = 16 * 1024;  // request line and all header lines
constexpr std::size_t max_header_count = 100;

// Per ring: idle connections hold none of these; a request being read holds one until
// the parser has copied its bytes.
constexpr unsigned ring_buffers = 256;
constexpr std::size_t ring_buffer_size = 4096;

struct config {
    std::size_t max_body = 1024 * 1024;
    std::string path;
    mode_t mode = 0600;
    std::size_t threads = 0;  // 0: one per CPU
};

struct server_state {
    config cfg;
    limits::process_limits lim;  // idle_timeout is the per-request deadline here
    ringsock::context_pool* pool = nullptr;
    limits::ring_set* rings = nullptr;
};

struct response {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;
    std::string extra_headers;  // complete lines, each ending in \r\n
};

const char* reason(int status) {
    switch (status) {
        case 100: return "Continue";
        case 200: return "OK";
        case 400: return "Bad Request";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 408: return "Request Timeout";
        case 413: return "Content Too Large";
        case 414: return "URI Too Long";
        case 417: return "Expectation Failed";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 501: return "Not Implemented";
        case 505: return "HTTP Version Not Supported";
    }
    return "Unknown";
}

response error(int status, const char* message) {
    response r;
    r.status = status;
    r.body = std::string("{\"message\":\"") + message + "\"}\n";
    return r;
}

// head_only (a HEAD request): the headers a GET gets, Content-Length included, no body.
std::string serialize(const response& r, bool keep_alive, bool http10, bool head_only) {
    char date[64];
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    ::gmtime_r(&now, &tm);
    std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    std::string out = "HTTP/1.1 " + std::to_string(r.status) + " " + reason(r.status) + "\r\n";
    out += "Date: ";
    out += date;
    out += "\r\nContent-Type: " + r.content_type + "\r\nContent-Length: " + std::to_string(r.body.size()) + "\r\n";
    out += r.extra_headers;
    if (!keep_alive) out += "Connection: close\r\n";
    else if (http10) out += "Connection: keep-alive\r\n";
    out += "\r\n";
    if (!head_only) out += r.body;
    return out;
}

// RFC 9110 token characters (method and header names).
bool is_tchar(char c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
    return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != '\0';
}
bool is_token(std::string_view s) {
    if (s.empty()) return false;
    for (char c : s) {
        if (!is_tchar(c)) return false;
    }
    return true;
}
bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
        if (x != y) return false;
    }
    return true;
}
std::string_view trim_ows(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}
// Whether the comma-separated list `v` holds `token` (case-insensitive).
bool list_has(std::string_view v, std::string_view token) {
    while (!v.empty()) {
        auto comma = v.find(',');
        if (iequals(trim_ows(v.substr(0, comma)), token)) return true;
        if (comma == std::string_view::npos) break;
        v.remove_prefix(comma + 1);
    }
    return false;
}

// The method of a request whose head could not be parsed (too long, malformed,
// incomplete): its first word, if that is a token, so an error answers HEAD correctly.
std::string leading_method(std::string_view in) {
    std::string_view word = in.substr(0, in.find(' '));
    return word.size() < in.size() && is_token(word) ? std::string(word) : std::string();
}

// A parsed request head, or the error response that ends the connection.
struct request {
    std::string method;
    std::string path;  // the target's path, query removed
    bool http10 = false;
    bool keep_alive = true;
    bool expect_continue = false;
    std::size_t content_length = 0;
};

std::optional<response> parse_head(std::string_view head, const config& cfg, request& req) {
    // Request line: method SP request-target SP HTTP-version, single spaces only.
    auto eol = head.find("\r\n");
    std::string_view line = head.substr(0, eol);
    auto sp1 = line.find(' ');
    auto sp2 = sp1 == std::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos)
        return error(400, "malformed request line");
    std::string_view method = line.substr(0, sp1);
    std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
    std::string_view version = line.substr(sp2 + 1);
    if (version.size() != 8 || version.substr(0, 5) != "HTTP/" || version[6] != '.' ||
        version[5] < '0' || version[5] > '9' || version[7] < '0' || version[7] > '9')
        return error(400, "malformed HTTP version");
    if (version[5] != '1') return error(505, "only HTTP/1.x is supported");
    req.http10 = version[7] == '0';
    req.keep_alive = !req.http10;
    if (!is_token(method)) return error(400, "malformed method");
    if (target.empty()) return error(400, "empty request target");
    for (char c : target) {
        if (c <= 0x20 || c >= 0x7f) return error(400, "invalid character in request target");
    }
    // absolute-form (a server must accept it): keep only the path.
    if (target.substr(0, 7) == "http://" || target.substr(0, 8) == "https://") {
        auto slash = target.find('/', target.find("//") + 2);
        target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
    }
    if (target[0] != '/') return error(400, "request target must be a path");
    req.method = method;
    req.path = target.substr(0, target.find('?'));

    // Header fields: name ":" OWS value OWS; no obs-fold, no control characters.
    std::size_t hosts = 0, lengths = 0, count = 0;
    bool transfer_encoding = false;
    std::string_view rest = head.substr(eol + 2);
    while (!rest.empty()) {
        auto end = rest.find("\r\n");
        std::string_view field = rest.substr(0, end);
        rest.remove_prefix(end == std::string_view::npos ? rest.size() : end + 2);
        if (field.empty()) break;  // the blank line ending the head
        if (++count > max_header_count) return error(431, "too many header fields");
        if (field[0] == ' ' || field[0] == '\t') return error(400, "obsolete line folding");
        auto colon = field.find(':');
        if (colon == std::string_view::npos) return error(400, "header field without a colon");
        std::string_view name = field.substr(0, colon);
        if (!is_token(name)) return error(400, "malformed header field name");
        std::string_view value = trim_ows(field.substr(colon + 1));
        for (char c : value) {
            auto u = static_cast<unsigned char>(c);
            if ((u < 0x20 && c != '\t') || u == 0x7f) return error(400, "control character in header field");
        }
        if (iequals(name, "Host")) {
            ++hosts;
        } else if (iequals(name, "Content-Length")) {
            // 1*DIGIT, nothing else: no sign, no list, no spaces inside.
            if (++lengths > 1) return error(400, "more than one Content-Length");
            if (value.empty() || value.size() > 18) return error(400, "invalid Content-Length");
            std::size_t n = 0;
            for (char c : value) {
                if (c < '0' || c > '9') return error(400, "invalid Content-Length");
                n = n * 10 + static_cast<std::size_t>(c - '0');
            }
            req.content_length = n;
        } else if (iequals(name, "Transfer-Encoding")) {
            transfer_encoding = true;
        } else if (iequals(name, "Connection")) {
            if (list_has(value, "close")) req.keep_alive = false;
            else if (req.http10 && list_has(value, "keep-alive")) req.keep_alive = true;
        } else if (iequals(name, "Expect")) {
            if (!iequals(value, "100-continue")) return error(417, "unsupported expectation");
            req.expect_continue = true;
        }
    }
    if (!req.http10 && hosts != 1) return error(400, "HTTP/1.1 needs exactly one Host");
    if (transfer_encoding && lengths > 0) return error(400, "both Transfer-Encoding and Content-Length");
    if (transfer_encoding) return error(501, "Transfer-Encoding is not supported; send Content-Length");
    if (req.content_length > cfg.max_body) return error(413, "request body too large");
    return std::nullopt;
}

response route(const request& req, const ringsock::io_result<ringsock::credentials>& peer, std::string body) {
    if (req.path == "/info") {
        if (req.method != "GET" && req.method != "HEAD") {
            auto r = error(405, "method not allowed");
            r.extra_headers = "Allow: GET, HEAD\r\n";
            return r;
        }
        if (!peer) return error(500, "peer credentials unavailable");
        response r;
        r.body = "{\"pid\":" + std::to_string(peer->pid) + ",\"uid\":" + std::to_string(peer->uid) +
                 ",\"gid\":" + std::to_string(peer->gid) + "}\n";
        return r;
    }
    if (req.path == "/echo") {
        if (req.method != "POST") {
            auto r = error(405, "method not allowed");
            r.extra_headers = "Allow: POST\r\n";
            return r;
        }
        response r;
        r.content_type = "application/octet-stream";
        r.body = std::move(body);
        return r;
    }
    return error(404, "page not found");
}

// After an error response: stop sending and read (and drop) what the client still
// sends for a moment, so closing does not reset the connection before it has read
// the response.
task<void> linger(ringsock::stream_socket& sock) {
    (void)sock.shutdown(ringsock::shutdown_how::send);
    std::array<char, 16 * 1024> sink;
    auto until = std::chrono::steady_clock::now() + 500ms;
    for (std::size_t total = 0; total < 1024 * 1024;) {
        auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(until - std::chrono::steady_clock::now());
        if (left <= 0ns) break;
        auto n = co_await sock.read_some(sink, left);
        if (!n || *n == 0) break;
        total += *n;
    }
}

// The request parser's byte source: first the bytes an idle read_some(ring) brought
// (a lent buffer, given back as soon as they are copied), then the socket itself. So
// buffered_stream's own buffer exists only while a request is being read.
class seeded_stream {
    using socket_read = decltype(std::declval<ringsock::stream_socket&>().read_some(
        std::declval<std::span<std::byte>&>(), std::declval<ringsock::op_limits>()));

public:
    seeded_stream(ringsock::stream_socket& sock, ringsock::lent_buffer seed) noexcept
        : sock_(&sock), seed_(std::move(seed)) {}
    bool seeded() const noexcept { return !seed_.empty(); }

    // Awaitable yielding io_result<std::size_t>: the seed's bytes at once, or a read.
    class read_op {
    public:
        explicit read_op(std::size_t copied) noexcept : copied_(copied) {}
        read_op(ringsock::stream_socket& s, std::span<std::byte> b, ringsock::op_limits lim)
            : read_(std::in_place, start{s, b, std::move(lim)}) {}
        bool await_ready() noexcept { return !read_ || read_->await_ready(); }
        template <class H>
        decltype(auto) await_suspend(H h) {
            return read_->await_suspend(h);
        }
        ringsock::io_result<std::size_t> await_resume() {
            if (!read_) return copied_;
            return read_->await_resume();
        }

    private:
        struct start {  // makes the (immovable) socket read in place
            ringsock::stream_socket& s;
            std::span<std::byte> b;
            ringsock::op_limits lim;
            operator socket_read() { return s.read_some(b, std::move(lim)); }
        };
        std::optional<socket_read> read_;
        std::size_t copied_ = 0;
    };

    read_op read_some(std::span<std::byte> b, ringsock::op_limits lim) {
        if (seed_.empty()) return read_op(*sock_, b, std::move(lim));
        const std::size_t n = std::min(b.size(), seed_.size());
        std::memcpy(b.data(), seed_.data(), n);
        seed_.consume(n);
        if (seed_.empty()) seed_.reset();  // back to the ring
        return read_op(n);
    }

private:
    ringsock::stream_socket* sock_;
    ringsock::lent_buffer seed_;
};

// One request from `in`: head, body, response. False when the connection must close
// (the client closes or asks to, sent something invalid, or was too slow).
task<bool> serve_request(ringsock::stream_socket& sock, ringsock::buffered_stream<seeded_stream>& in,
                         limits::connection& c, const server_state& st,
                         const ringsock::io_result<ringsock::credentials>& peer) {
    const config& cfg = st.cfg;
    const auto write_limit = st.lim.idle_timeout;
    auto send = [&](std::string wire) -> task<bool> {
        auto w = co_await sock.write_all(wire, write_limit);
        co_return w.has_value();
    };
    // TRICKY: responses are built in named variables, never as braced temporaries
    // inside co_await (g++ 12 destroys those twice).
    // Every response to a HEAD request, whatever its status, is headers only: a body
    // would be read as the start of the next response on a kept-alive connection.
    auto respond = [&](const response& r, const request& req, bool keep_alive) -> task<bool> {
        std::string wire = serialize(r, keep_alive, req.http10, req.method == "HEAD");
        co_return co_await send(std::move(wire));
    };
    // The connection's timer ended the read (the request took longer than the deadline).
    auto too_slow = [&](const std::error_code& ec) {
        return ec == std::errc::timed_out || (ec == std::errc::operation_canceled && c.idle_expired());
    };

    // 1. The head: the request line, then header lines up to a blank one, gathered in
    // `head` for parse_head. Empty lines before a request are ignored.
    std::string head;
    std::optional<response> failure;
    for (;;) {
        auto line = co_await in.read_until("\r\n", head.empty() ? max_request_line : max_head, c.token());
        if (!line) {
            if (line.error() == ringsock::framing_errc::frame_too_long && head.empty())
                // 414 when it is the target that is long; anything else is malformed.
                failure = error(in.buffered().find(' ') < 32 ? 414 : 400, "request line too long");
            else if (line.error() == ringsock::framing_errc::frame_too_long)
                failure = error(431, "request header fields too large");
            else if (too_slow(line.error()) && !(head.empty() && in.buffered().empty()))
                failure = error(408, "request incomplete before the timeout");
            else co_return false;  // idle timeout, EOF, reset, shed, or shutting down
            break;
        }
        if (line->empty() && head.empty()) continue;
        head.append(*line).append("\r\n");
        if (head.size() > max_head) {
            failure = error(431, "request header fields too large");
            break;
        }
        if (line->empty()) break;  // the blank line ending the head
    }
    request req;
    if (!failure) failure = parse_head(head, cfg, req);
    if (failure) {
        if (req.method.empty()) req.method = leading_method(head.empty() ? in.buffered() : head);
        const response& r = *failure;
        if (co_await respond(r, req, false)) co_await linger(sock);
        co_return false;
    }

    // 2. The body: exactly Content-Length bytes.
    if (req.expect_continue && req.content_length > in.buffered().size()) {
        if (!co_await send("HTTP/1.1 100 Continue\r\n\r\n")) co_return false;
    }
    std::string body(req.content_length, '\0');
    auto got = co_await in.read_exact(body, c.token());
    if (!got) {
        if (too_slow(got.error())) {
            response timeout = error(408, "request body incomplete before the timeout");
            if (co_await respond(timeout, req, false)) co_await linger(sock);
        }
        co_return false;
    }

    // 3. The response, under a fresh deadline (the write has its own time limit).
    c.touch();
    bool keep_alive = req.keep_alive && !c.token().stop_requested();
    response r = route(req, peer, std::move(body));
    if (!co_await respond(r, req, keep_alive)) co_return false;
    co_return keep_alive;
}

// One connection: requests in order until the client closes, asks to close, sends
// something invalid, or does not complete a request within the deadline. Between
// requests it waits holding no buffer.
task<void> serve_connection(ringsock::stream_socket& sock, limits::connection& c, const server_state& st) {
    const auto peer = ringsock::peer_credentials(sock);  // as of connect(): not spoofable
    ringsock::buffer_ring& ring = st.rings->buffers(sock.context());
    for (bool open = true; open;) {
        // One deadline per request, from here: a client that trickles bytes cannot
        // stay forever.
        c.touch();
        auto first = co_await sock.read_some(ring, c.token());
        if (!first || first->empty()) break;  // idle timeout, EOF, reset, shed, or shutting down
        // A request is arriving: read it, and any pipelined behind it, through a buffer
        // that lives until the connection is idle again (a head may grow it to max_head).
        seeded_stream src(sock, std::move(*first));
        ringsock::buffered_stream in(src, ring_buffer_size, max_head + 2);
        do {
            open = co_await serve_request(sock, in, c, st, peer);
            if (open) c.touch();  // the next pipelined request gets its own deadline
        } while (open && (src.seeded() || !in.buffered().empty()));
    }
    (void)sock.shutdown(ringsock::shutdown_how::both);
}

// Runs on the ring the connection was handed to.
task<void> handle(ringsock::stream_socket sock, const server_state& st, limits::ticket) {
    limits::connection c(st.rings->connections(sock.context()));
    if (!c.admitted()) co_return;  // closed at once: over the cap with nothing to shed, or stopping
    co_await c.run(serve_connection(sock, c, st));
}

// The listener's ring (ring 0): serve until SIGTERM/SIGINT, then stop every connection's
// reads and wait for them to finish. Yields the exit code.
task<int> serve(server_state& st, ringsock::acceptor& acc, ringsock::signal_set& signals) {
    ringsock::io_context& ctx = acc.context();
    ringsock::scope accepting(ctx);
    accepting.spawn(limits::accept_loop(
        acc, st.lim, [&st]() -> ringsock::io_context& { return st.pool->next(); },
        [&st](ringsock::stream_socket s, limits::ticket t) { return handle(std::move(s), st, std::move(t)); },
        accepting.get_token(), "http_server"));
    if (auto ready = co_await ringsock::notify_ready(ctx, 5s); !ready)  // NOTIFY_SOCKET, if set
        std::fprintf(stderr, "http_server: %s: %s\n", ready.what(), ready.error().message().c_str());
    auto sig = co_await signals.wait();
    if (sig) std::fprintf(stderr, "http_server: %s: shutting down\n", ::strsignal(*sig));
    accepting.request_stop();
    acc.close();  // removes the socket file, unless it was activated
    co_await accepting.join();
    st.rings->stop_all();  // ends every read in progress; responses being written finish
    while (st.lim.live.load() > 0) (void)co_await ringsock::sleep_for(ctx, 5ms);
    co_return 0;
}

// On ring 0: make the listener there, then serve. The exit code (or the exception)
// goes to main's thread through `result`.
task<void> run(server_state& st, std::vector<ringsock::activated_socket>* activated, std::promise<int>& result) {
    try {
        ringsock::io_context& ctx = (*st.pool)[0];
        ringsock::signal_set signals(ctx, {SIGTERM, SIGINT});
        ringsock::acceptor acc;
        if (!activated->empty()) {
            auto& s = activated->front();  // the first one; any others stay unused
            if (s.type != SOCK_STREAM) {
                std::fprintf(stderr, "http_server: the activated socket is not a stream socket\n");
                result.set_value(1);
                co_return;
            }
            acc = ringsock::acceptor::adopt(ctx, std::move(s.fd));
            std::fprintf(stderr, "http_server: serving an activated socket (%s)\n", s.name.c_str());
        } else {
            auto ep = ringsock::endpoint::path(st.cfg.path);
            if (!ep) {
                std::fprintf(stderr, "http_server: %s: %s\n", st.cfg.path.c_str(), ep.error().message().c_str());
                result.set_value(1);
                co_return;
            }
            ringsock::listen_options opts;
            opts.mode = st.cfg.mode;
            opts.backlog = limits::listen_backlog;
            auto listening = ringsock::acceptor::listen(ctx, *ep, opts);
            if (!listening) {
                std::fprintf(stderr, "http_server: cannot listen on %s: %s\n", st.cfg.path.c_str(),
                             listening.error().message().c_str());
                result.set_value(1);
                co_return;
            }
            acc = std::move(*listening);
            std::fprintf(stderr, "http_server: listening on %s\n", st.cfg.path.c_str());
        }
        const int code = co_await serve(st, acc, signals);
        result.set_value(code);
    } catch (...) {
        result.set_exception(std::current_exception());
    }
}

[[noreturn]] void usage() {
    std::fprintf(stderr, "usage: http_server [PATH] [--idle-timeout SECONDS] [--mode OCTAL] [--max-body BYTES] "
                         "[--threads N] [--max-connections N]\n");
    std::exit(2);
}

double number(const char* s) {
    char* end = nullptr;
    double v = std::strtod(s, &end);
    if (end == s || *end != '\0' || !(v > 0) || v > 1e12) usage();
    return v;
}

}  // namespace

int main(int argc, char** argv) {
    server_state st;
    st.lim.idle_timeout = 5s;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        if (a == "--idle-timeout" && i + 1 < argc) {
            st.lim.idle_timeout = std::chrono::milliseconds(static_cast<long long>(number(argv[++i]) * 1000));
        } else if (a == "--max-body" && i + 1 < argc) {
            st.cfg.max_body = static_cast<std::size_t>(number(argv[++i]));
        } else if (a == "--threads" && i + 1 < argc) {
            st.cfg.threads = static_cast<std::size_t>(number(argv[++i]));
        } else if (a == "--max-connections" && i + 1 < argc) {
            st.lim.max_connections = static_cast<long>(number(argv[++i]));
        } else if (a == "--mode" && i + 1 < argc) {
            st.cfg.mode = static_cast<mode_t>(std::strtoul(argv[++i], nullptr, 8));
        } else if (st.cfg.path.empty() && !a.empty() && a[0] != '-') {
            st.cfg.path = a;
        } else {
            usage();
        }
    }
    try {
        auto activated = ringsock::take_activated_sockets();
        if (!activated) {
            std::fprintf(stderr, "http_server: %s: %s\n", activated.what(), activated.error().message().c_str());
            return 1;
        }
        if (activated->empty() && st.cfg.path.empty()) usage();
        // Block the signals before any ring's thread starts, so every thread inherits the
        // mask and none is delivered the default way; ring 0's signal_set takes them.
        limits::block_signals({SIGTERM, SIGINT});

        ringsock::context_pool pool(st.cfg.threads);
        limits::ring_set rings(pool, st.lim, ring_buffers, ring_buffer_size);
        st.pool = &pool;
        st.rings = &rings;
        return limits::run_server(pool, rings, [&](std::promise<int>& result) { return run(st, &*activated, result); });
    } catch (const std::exception& e) {
        std::fprintf(stderr, "http_server: %s\n", e.what());
        return 1;
    }
}
