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
// the rings in turn. Every connection reads through a ring_reader (one multishot receive
// into the ring's buffer_ring, armed once): an idle keep-alive connection holds no
// buffer; the request parser's buffer exists only while a request (and any pipelined
// behind it) is being read.
// Limits: each request must arrive, and each response be written, within
// --idle-timeout (default 5 s): one deadline per request and one per response, both on
// the connection's one timer (no time limit per read or write); at --max-connections
// (default: RLIMIT_NOFILE minus a reserve) a new connection makes its ring close the
// connection that has been quiet longest, so a flood of idle or half-sent clients
// cannot keep others out.
// Per request: the head is parsed in place (views into the read buffer; a lone request
// without a body straight from the ring's buffer the idle read brought, with no parser
// buffer at all), the Date is formatted once a second per ring, the response is built
// in a per-connection buffer.
//
// Under a service manager (systemd-socket-activate -l PATH http_server) PATH may be
// omitted; READY=1 goes to NOTIFY_SOCKET when it is set. SIGTERM/SIGINT: stop
// accepting, remove the socket file (unless activated), close idle connections, let
// responses being written finish (within the idle timeout), exit 0.
#include <ringsock/credentials.hpp>
#include <ringsock/ringsock.hpp>
#include <ringsock/socket_activation.hpp>

#include <array>
#include <charconv>
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

// A response. Every view must outlive the write: string literals, the connection's
// cached /info body, or the request body read for /echo.
struct response {
    int status = 200;
    std::string_view content_type = "application/json";
    std::string_view body;
    std::string_view message;        // an error: the body is {"message":"<message>"}\n
    std::string_view extra_headers;  // complete lines, each ending in \r\n
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

// `message` must be a string literal (the response keeps a view of it).
response error(int status, std::string_view message) {
    response r;
    r.status = status;
    r.message = message;
    return r;
}

// The Date header's value (IMF-fixdate), formatted at most once a second per thread.
// Each ring runs on its own thread, so there is no lock; time() is a vDSO call.
std::string_view http_date() {
    struct cache {
        std::time_t second = -1;
        std::array<char, 32> text{};
        std::size_t size = 0;
    };
    thread_local cache c;
    const std::time_t now = std::time(nullptr);
    if (now != c.second) {
        std::tm tm{};
        ::gmtime_r(&now, &tm);
        c.size = std::strftime(c.text.data(), c.text.size(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        c.second = now;
    }
    return {c.text.data(), c.size};
}

void append_number(std::string& out, std::size_t n) {
    std::array<char, 24> digits;
    const auto res = std::to_chars(digits.data(), digits.data() + digits.size(), n);
    out.append(digits.data(), res.ptr);
}

// The whole response into `out` (cleared first; its capacity is reused).
// head_only (a HEAD request): the headers a GET gets, Content-Length included, no body.
void serialize(std::string& out, const response& r, bool keep_alive, bool http10, bool head_only) {
    constexpr std::string_view message_open = "{\"message\":\"", message_close = "\"}\n";
    const std::size_t length =
        r.message.empty() ? r.body.size() : message_open.size() + r.message.size() + message_close.size();
    out.clear();
    out.append("HTTP/1.1 ");
    append_number(out, static_cast<std::size_t>(r.status));
    out.append(" ").append(reason(r.status)).append("\r\nDate: ").append(http_date());
    out.append("\r\nContent-Type: ").append(r.content_type).append("\r\nContent-Length: ");
    append_number(out, length);
    out.append("\r\n").append(r.extra_headers);
    if (!keep_alive) out.append("Connection: close\r\n");
    else if (http10) out.append("Connection: keep-alive\r\n");
    out.append("\r\n");
    if (head_only) return;
    if (r.message.empty()) out.append(r.body);
    else out.append(message_open).append(r.message).append(message_close);
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

// Whether the head of a request (or what arrived of it) starts with the method HEAD, so
// an error answers it with headers only, also when the head could not be parsed.
bool is_head_request(std::string_view head) { return head.substr(0, 5) == "HEAD "; }

enum class method_kind { other, get, head, post };
enum class route_kind { other, info, echo };

// A parsed request head, or the error response that ends the connection. Nothing in it
// points into the head (whose bytes the body read may move).
struct request {
    method_kind method = method_kind::other;
    route_kind target = route_kind::other;  // from the target's path, query removed
    bool http10 = false;
    bool keep_alive = true;
    bool expect_continue = false;
    std::size_t content_length = 0;
};

method_kind classify_method(std::string_view m) {
    if (m == "GET") return method_kind::get;
    if (m == "HEAD") return method_kind::head;
    if (m == "POST") return method_kind::post;
    return method_kind::other;
}

route_kind classify_path(std::string_view path) {
    if (path == "/info") return route_kind::info;
    if (path == "/echo") return route_kind::echo;
    return route_kind::other;
}

// `head`: the request line and the header lines, separated by CRLF, without the blank
// line that ends them.
std::optional<response> parse_head(std::string_view head, const config& cfg, request& req) {
    // Request line: method SP request-target SP HTTP-version, single spaces only.
    const auto eol = head.find("\r\n");
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
    req.method = classify_method(method);
    req.target = classify_path(target.substr(0, target.find('?')));

    // Header fields: name ":" OWS value OWS; no obs-fold, no control characters.
    std::size_t hosts = 0, lengths = 0, count = 0;
    bool transfer_encoding = false;
    std::string_view rest = eol == std::string_view::npos ? std::string_view() : head.substr(eol + 2);
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

// After an error response: stop sending and read (and drop) what the client still
// sends for a moment, so closing does not reset the connection before it has read
// the response.
task<void> linger(ringsock::stream_socket& sock, ringsock::ring_reader& reader) {
    (void)sock.shutdown(ringsock::shutdown_how::send);
    auto until = std::chrono::steady_clock::now() + 500ms;
    for (std::size_t total = 0; total < 1024 * 1024;) {
        auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(until - std::chrono::steady_clock::now());
        if (left <= 0ns) break;
        auto got = co_await reader.receive(left);
        if (!got || got->empty()) break;
        total += got->size();
    }
}

// The request parser's byte source: the connection's ring_reader. Each lent buffer's
// bytes are copied into the parser's buffer and the lent buffer goes back to the ring
// as soon as it is used up; what did not fit waits here for the next read. So
// buffered_stream's own buffer exists only while a request is being read.
class seeded_stream {
    using reader_wait = decltype(std::declval<ringsock::ring_reader&>().receive(std::declval<ringsock::op_limits>()));

public:
    seeded_stream(ringsock::ring_reader& reader, ringsock::lent_buffer seed) noexcept
        : reader_(&reader), seed_(std::move(seed)) {}
    bool seeded() const noexcept { return !seed_.empty(); }

    // Awaitable yielding io_result<std::size_t>: the seed's bytes at once, or a receive.
    class read_op {
    public:
        explicit read_op(std::size_t copied) noexcept : copied_(copied) {}
        read_op(seeded_stream& src, std::span<std::byte> b, ringsock::op_limits lim)
            : src_(&src), to_(b), wait_(std::in_place, start{*src.reader_, std::move(lim)}) {}
        bool await_ready() noexcept { return !wait_ || wait_->await_ready(); }
        template <class H>
        decltype(auto) await_suspend(H h) {
            return wait_->await_suspend(h);
        }
        ringsock::io_result<std::size_t> await_resume() {
            if (!wait_) return copied_;
            auto got = wait_->await_resume();
            if (!got) return {got.error(), got.what()};
            src_->seed_ = std::move(*got);  // empty: end of stream
            return src_->take(to_);
        }

    private:
        struct start {  // makes the (immovable) receive in place
            ringsock::ring_reader& r;
            ringsock::op_limits lim;
            operator reader_wait() { return r.receive(std::move(lim)); }
        };
        seeded_stream* src_ = nullptr;
        std::span<std::byte> to_;
        std::optional<reader_wait> wait_;
        std::size_t copied_ = 0;
    };

    read_op read_some(std::span<std::byte> b, ringsock::op_limits lim) {
        if (seed_.empty()) return read_op(*this, b, std::move(lim));
        return read_op(take(b));
    }

private:
    // Copies what fits from the seed into `b`; a used-up seed goes back to the ring.
    std::size_t take(std::span<std::byte> b) noexcept {
        const std::size_t n = std::min(b.size(), seed_.size());
        if (n > 0) std::memcpy(b.data(), seed_.data(), n);
        seed_.consume(n);
        if (seed_.empty()) seed_.reset();
        return n;
    }

    ringsock::ring_reader* reader_;
    ringsock::lent_buffer seed_;
};

// What a connection keeps from one request to the next: its /info body (the peer's
// credentials do not change) and the buffer every response is built in.
struct session {
    ringsock::stream_socket& sock;
    ringsock::ring_reader& reader;  // every read on the connection goes through it
    limits::connection& c;
    const server_state& st;
    std::optional<std::string> info;  // nullopt: the credentials were unavailable
    std::string out;

    // Writes `bytes` (which must outlive the co_await) under the connection's deadline,
    // the one timer the reads use too; shutdown does not stop it, so a response being
    // written then still finishes. When that deadline has already passed (a 408 going
    // out), the write gets a time limit of its own instead.
    [[nodiscard]] auto write(std::string_view bytes) {
        std::stop_token deadline = c.deadline_token();
        ringsock::op_limits lim = deadline.stop_requested() ? ringsock::op_limits(st.lim.idle_timeout)
                                                            : ringsock::op_limits(std::move(deadline));
        return sock.write_all(bytes, std::move(lim));
    }
    // Builds `r` in `out` and writes it, under a fresh deadline. Every response to a HEAD
    // request, whatever its status, is headers only: a body would be read as the start
    // of the next response on a kept-alive connection.
    [[nodiscard]] auto respond(const response& r, bool head_only, bool keep_alive, bool http10) {
        c.touch();
        serialize(out, r, keep_alive, http10, head_only);
        return write(out);
    }
};

std::optional<std::string> info_body(const ringsock::io_result<ringsock::credentials>& peer) {
    if (!peer) return std::nullopt;
    std::string b;
    b.append("{\"pid\":");
    append_number(b, static_cast<std::size_t>(peer->pid));
    b.append(",\"uid\":");
    append_number(b, peer->uid);
    b.append(",\"gid\":");
    append_number(b, peer->gid);
    b.append("}\n");
    return b;
}

response route(const request& req, const session& s, std::string_view body) {
    if (req.target == route_kind::info) {
        if (req.method != method_kind::get && req.method != method_kind::head) {
            auto r = error(405, "method not allowed");
            r.extra_headers = "Allow: GET, HEAD\r\n";
            return r;
        }
        if (!s.info) return error(500, "peer credentials unavailable");
        response r;
        r.body = *s.info;
        return r;
    }
    if (req.target == route_kind::echo) {
        if (req.method != method_kind::post) {
            auto r = error(405, "method not allowed");
            r.extra_headers = "Allow: POST\r\n";
            return r;
        }
        response r;
        r.content_type = "application/octet-stream";
        r.body = body;
        return r;
    }
    return error(404, "page not found");
}

// The connection's timer ended the read (the request took longer than the deadline).
bool too_slow(const std::error_code& ec, const limits::connection& c) {
    return ec == std::errc::timed_out || (ec == std::errc::operation_canceled && c.idle_expired());
}

// Drops the empty lines a client may send before a request; returns what is buffered.
std::string_view skip_empty_lines(ringsock::buffered_stream<seeded_stream>& in) {
    while (in.buffered().substr(0, 2) == "\r\n") in.consume(2);
    return in.buffered();
}

// The response to a complete request, under a fresh deadline (respond() restarts the
// connection's timer). False when the connection must close.
task<bool> answer(session& s, const request& req, std::string_view body) {
    const bool keep_alive = req.keep_alive && !s.c.token().stop_requested();
    const response r = route(req, s, body);
    auto sent = co_await s.respond(r, req.method == method_kind::head, keep_alive, req.http10);
    co_return sent.has_value() && keep_alive;
}

// One request from `in`: head, body, response. False when the connection must close
// (the client closes or asks to, sent something invalid, or was too slow).
task<bool> serve_request(session& s, ringsock::buffered_stream<seeded_stream>& in) {
    limits::connection& c = s.c;
    // TRICKY: responses are built in named variables, never as braced temporaries
    // inside co_await (g++ 12 destroys those twice).

    // 1. The head, up to the blank line, as one view into `in`'s buffer: parsed in
    // place, before the next read on `in` can move it. First with the request line's
    // limit, so an over-long request line is 414 as soon as it is over; a longer head
    // whose request line ended in time is read again with the head's limit.
    std::string_view head;
    std::optional<response> failure;
    for (std::size_t limit = max_request_line;;) {
        (void)skip_empty_lines(in);
        auto got = co_await in.read_until("\r\n\r\n", limit, c.token());
        if (got) {
            head = *got;
            while (head.substr(0, 2) == "\r\n") head.remove_prefix(2);  // empty lines read with it
            if (head.empty()) continue;
            break;
        }
        const std::string_view pending = skip_empty_lines(in);
        if (got.error() == ringsock::framing_errc::frame_too_long) {
            const bool line_ended = pending.substr(0, max_request_line + 2).find("\r\n") != std::string_view::npos;
            if (limit == max_request_line && line_ended) {
                limit = max_head;
                continue;
            }
            // 414 when it is the target that is long; anything else is malformed.
            if (!line_ended) failure = error(pending.find(' ') < 32 ? 414 : 400, "request line too long");
            else failure = error(431, "request header fields too large");
        } else if (too_slow(got.error(), c) && !pending.empty()) {
            failure = error(408, "request incomplete before the timeout");
        } else {
            co_return false;  // idle timeout, EOF, reset, shed, or shutting down
        }
        head = pending;
        break;
    }
    request req;
    if (!failure) failure = parse_head(head, s.st.cfg, req);
    if (failure) {
        const response& r = *failure;
        auto sent = co_await s.respond(r, is_head_request(head), false, req.http10);
        if (sent) co_await linger(s.sock, s.reader);
        co_return false;
    }
    const bool head_only = req.method == method_kind::head;

    // 2. The body: exactly Content-Length bytes.
    std::string body;
    if (req.content_length > 0) {
        if (req.expect_continue && req.content_length > in.buffered().size()) {
            constexpr std::string_view interim = "HTTP/1.1 100 Continue\r\n\r\n";
            auto sent = co_await s.write(interim);
            if (!sent) co_return false;
        }
        body.resize(req.content_length);
        auto got = co_await in.read_exact(body, c.token());
        if (!got) {
            if (too_slow(got.error(), c)) {
                const response timeout = error(408, "request body incomplete before the timeout");
                auto sent = co_await s.respond(timeout, head_only, false, req.http10);
                if (sent) co_await linger(s.sock, s.reader);
            }
            co_return false;
        }
    }

    // 3. The response.
    co_return co_await answer(s, req, body);
}

// The common case: one whole request without a body, alone in the bytes an idle read
// brought (in a buffer of the ring), parsed right there. nullopt: anything else
// (pipelined, partial, with a body, empty lines first, an error): serve_request's turn.
std::optional<request> whole_request(std::string_view bytes, const config& cfg) {
    if (bytes.size() < 4 || bytes.substr(0, 2) == "\r\n" || bytes.find("\r\n\r\n") != bytes.size() - 4)
        return std::nullopt;
    request req;
    if (parse_head(bytes.substr(0, bytes.size() - 4), cfg, req) || req.content_length != 0) return std::nullopt;
    return req;
}

// One connection: requests in order until the client closes, asks to close, sends
// something invalid, or does not complete a request within the deadline. Between
// requests it waits holding no buffer.
task<void> serve_connection(ringsock::stream_socket& sock, limits::connection& c, const server_state& st) {
    // One multishot receive stays armed for all of the connection's reads.
    ringsock::ring_reader reader(sock, st.rings->buffers(sock.context()));
    session s{sock, reader, c, st, info_body(ringsock::peer_credentials(sock)), {}};  // as of connect(): not spoofable
    for (bool open = true; open;) {
        // One deadline per request, from here: a client that trickles bytes cannot
        // stay forever.
        c.touch();
        auto first = co_await reader.receive(c.token());
        if (!first || first->empty()) break;  // idle timeout, EOF, reset, shed, or shutting down
        if (const auto req = whole_request(first->chars(), st.cfg)) {
            first->reset();  // the buffer goes back to the ring before the response is written
            open = co_await answer(s, *req, {});
            continue;
        }
        // A request is arriving: read it, and any pipelined behind it, through a buffer
        // that lives until the connection is idle again (a head may grow it to max_head).
        seeded_stream src(reader, std::move(*first));
        ringsock::buffered_stream in(src, ring_buffer_size, max_head + 4);
        for (;;) {
            open = co_await serve_request(s, in);
            if (!open || (!src.seeded() && in.buffered().empty())) break;
            c.touch();  // the next pipelined request gets its own deadline
        }
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
