// http_server [PATH]: a small, strict HTTP/1.1 API on a Unix socket, in the style of
// /var/run/docker.sock. Keep-alive and pipelining; Content-Length bodies only; every
// malformed request gets a 4xx (or 501/505) and its connection closed; idle and
// half-sent clients are timed out, so no client can hold up another.
//
//   http_server /tmp/api.sock [--idle-timeout SECONDS] [--mode OCTAL] [--max-body BYTES]
//   curl --unix-socket /tmp/api.sock http://localhost/info
//
//   GET|HEAD /info   200 {"pid":…,"uid":…,"gid":…} of the connecting process (SO_PEERCRED)
//   POST /echo       200 with the request body
//   anything else    404 (405 for a known path with another method)
// A HEAD request gets the headers a GET would get, Content-Length included, and no
// body: for every route and every status, errors too.
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
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>

using namespace std::chrono_literals;
using ringsock::task;

namespace {

constexpr std::size_t max_request_line = 8 * 1024;
constexpr std::size_t max_head = 16 * 1024;  // request line and all header lines
constexpr std::size_t max_header_count = 100;

struct config {
    std::chrono::milliseconds idle_timeout = 5s;
    std::size_t max_body = 1024 * 1024;
};

struct server_state {
    config cfg;
    std::stop_source stop;  // set on SIGTERM: idle connections close at once
    std::size_t connections = 0;
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

// One connection: requests in order until the client closes, asks to close, sends
// something invalid, or goes quiet for longer than the idle timeout.
task<void> serve_connection(ringsock::stream_socket sock, server_state& st) {
    ++st.connections;
    const config& cfg = st.cfg;
    const auto peer = ringsock::peer_credentials(sock);  // as of connect(): not spoofable
    // Pipelined requests wait here; the largest head fits, so the buffer never grows.
    ringsock::buffered_stream in(sock, max_head + 2, max_head + 2);
    for (bool open = true; open && !st.stop.stop_requested();) {
        // One deadline per request: a client that trickles bytes cannot stay forever.
        auto deadline = std::chrono::steady_clock::now() + cfg.idle_timeout;
        auto limits = [&] { return ringsock::op_limits(st.stop.get_token(), deadline - std::chrono::steady_clock::now()); };
        auto send = [&](std::string wire) -> task<bool> {
            auto w = co_await sock.write_all(wire, cfg.idle_timeout);
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

        // 1. The head: the request line, then header lines up to a blank one, gathered in
        // `head` for parse_head. Empty lines before a request are ignored.
        std::string head;
        std::optional<response> failure;
        for (;;) {
            auto line = co_await in.read_until("\r\n", head.empty() ? max_request_line : max_head, limits());
            if (!line) {
                if (line.error() == ringsock::framing_errc::frame_too_long && head.empty())
                    // 414 when it is the target that is long; anything else is malformed.
                    failure = error(in.buffered().find(' ') < 32 ? 414 : 400, "request line too long");
                else if (line.error() == ringsock::framing_errc::frame_too_long)
                    failure = error(431, "request header fields too large");
                else if (line.error() == std::errc::timed_out && !(head.empty() && in.buffered().empty()))
                    failure = error(408, "request incomplete before the timeout");
                else open = false;  // idle timeout, EOF, reset, or shutting down
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
        if (!open) break;
        request req;
        if (!failure) failure = parse_head(head, cfg, req);
        if (failure) {
            if (req.method.empty()) req.method = leading_method(head.empty() ? in.buffered() : head);
            const response& r = *failure;
            if (co_await respond(r, req, false)) co_await linger(sock);
            break;
        }

        // 2. The body: exactly Content-Length bytes.
        if (req.expect_continue && req.content_length > in.buffered().size()) {
            if (!co_await send("HTTP/1.1 100 Continue\r\n\r\n")) break;
        }
        std::string body(req.content_length, '\0');
        auto got = co_await in.read_exact(body, limits());
        if (!got) {
            if (got.error() == std::errc::timed_out) {
                response timeout = error(408, "request body incomplete before the timeout");
                if (co_await respond(timeout, req, false)) co_await linger(sock);
            }
            break;
        }

        // 3. The response.
        bool keep_alive = req.keep_alive && !st.stop.stop_requested();
        response r = route(req, peer, std::move(body));
        if (!co_await respond(r, req, keep_alive)) break;
        open = keep_alive;
    }
    (void)sock.shutdown(ringsock::shutdown_how::both);
    --st.connections;
}

task<void> accept_loop(ringsock::io_context& ctx, ringsock::acceptor& acc, server_state& st) {
    for (;;) {
        auto conn = co_await acc.accept(st.stop.get_token());
        if (conn) {
            ctx.spawn(serve_connection(std::move(*conn), st));
        } else if (conn.error() == std::errc::operation_canceled) {
            co_return;
        } else if (conn.error() == std::errc::too_many_files_open ||
                   conn.error() == std::errc::too_many_files_open_in_system) {
            std::fprintf(stderr, "http_server: accept: %s; backing off\n", conn.error().message().c_str());
            (void)co_await ringsock::sleep_for(ctx, 100ms);
        } else {
            std::fprintf(stderr, "http_server: accept: %s\n", conn.error().message().c_str());
            co_return;
        }
    }
}

task<int> serve(ringsock::io_context& ctx, ringsock::acceptor& acc, ringsock::signal_set& signals, server_state& st) {
    ctx.spawn(accept_loop(ctx, acc, st));
    if (auto ready = co_await ringsock::notify_ready(ctx, 5s); !ready)  // NOTIFY_SOCKET, if set
        std::fprintf(stderr, "http_server: %s: %s\n", ready.what(), ready.error().message().c_str());
    auto sig = co_await signals.wait();
    if (sig) std::fprintf(stderr, "http_server: %s: shutting down\n", ::strsignal(*sig));
    st.stop.request_stop();  // ends accept_loop and every read in progress
    acc.close();             // removes the socket file, unless it was activated
    while (st.connections > 0) (void)co_await ringsock::sleep_for(ctx, 5ms);
    co_return 0;
}

[[noreturn]] void usage() {
    std::fprintf(stderr, "usage: http_server [PATH] [--idle-timeout SECONDS] [--mode OCTAL] [--max-body BYTES]\n");
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
    std::string path;
    mode_t mode = 0600;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        if (a == "--idle-timeout" && i + 1 < argc) {
            st.cfg.idle_timeout = std::chrono::milliseconds(static_cast<long long>(number(argv[++i]) * 1000));
        } else if (a == "--max-body" && i + 1 < argc) {
            st.cfg.max_body = static_cast<std::size_t>(number(argv[++i]));
        } else if (a == "--mode" && i + 1 < argc) {
            mode = static_cast<mode_t>(std::strtoul(argv[++i], nullptr, 8));
        } else if (path.empty() && !a.empty() && a[0] != '-') {
            path = a;
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
        if (activated->empty() && path.empty()) usage();
        ringsock::io_context ctx;
        // Block the signals before anything else so none is delivered the default way.
        ringsock::signal_set signals(ctx, {SIGTERM, SIGINT});
        ringsock::acceptor acc;
        if (!activated->empty()) {
            auto& s = activated->front();  // the first one; any others stay unused
            if (s.type != SOCK_STREAM) {
                std::fprintf(stderr, "http_server: the activated socket is not a stream socket\n");
                return 1;
            }
            acc = ringsock::acceptor::adopt(ctx, std::move(s.fd));
            std::fprintf(stderr, "http_server: serving an activated socket (%s)\n", s.name.c_str());
        } else {
            auto ep = ringsock::endpoint::path(path);
            if (!ep) {
                std::fprintf(stderr, "http_server: %s: %s\n", path.c_str(), ep.error().message().c_str());
                return 1;
            }
            ringsock::listen_options opts;
            opts.mode = mode;
            auto listening = ringsock::acceptor::listen(ctx, *ep, opts);
            if (!listening) {
                std::fprintf(stderr, "http_server: cannot listen on %s: %s\n", path.c_str(),
                             listening.error().message().c_str());
                return 1;
            }
            acc = std::move(*listening);
            std::fprintf(stderr, "http_server: listening on %s\n", path.c_str());
        }
        return ctx.sync_wait(serve(ctx, acc, signals, st));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "http_server: %s\n", e.what());
        return 1;
    }
}
