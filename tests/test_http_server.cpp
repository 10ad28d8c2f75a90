// examples/http_server as a real process: driven by curl --unix-socket and by raw
// sockets sending the bad inputs a client library would never produce. The server
// reports readiness through NOTIFY_SOCKET, which this test owns.
#include <catch2/catch.hpp>

#include <errno.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <memory>
#include <thread>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <ringsock/endpoint.hpp>
#include <ringsock/unique_fd.hpp>

#include "support/process.hpp"

using namespace std::chrono_literals;
using ringsock::unique_fd;
namespace rt = ringsock::test;

namespace {

// Without the example there is nothing to test: skip the whole program (exit 77).
const std::string server_binary = [] {
    std::string p = rt::example_path("http_server");
    if (p.empty()) {
        std::fprintf(stderr, "examples/http_server not built (RINGSOCK_BUILD_ROOT unset?): skipped\n");
        std::_Exit(77);
    }
    return p;
}();

std::string curl() {
    std::string c = rt::find_program("curl");
    if (c.empty()) FAIL("curl is not installed (Debian package curl)");
    return c;
}

void set_timeouts(int fd, int seconds) {
    timeval tv{seconds, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

// An http_server process on a fresh socket path, stopped with SIGKILL if the test
// did not stop it. Ready once it has sent READY=1 to our NOTIFY_SOCKET.
struct server {
    rt::temp_dir dir;
    std::string path = dir.file("api.sock");
    rt::child_guard child;

    // `prefix`: a command that execs the server (prlimit --nofile=N --).
    explicit server(std::vector<std::string> args = {}, std::vector<std::string> prefix = {}) {
        std::string notify_path = dir.file("notify");
        auto nep = ringsock::endpoint::path(notify_path).value();
        unique_fd notify(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        REQUIRE(::bind(notify.get(), nep.data(), nep.size()) == 0);
        set_timeouts(notify.get(), 20);
        std::vector<std::string> argv = prefix;
        argv.push_back(server_binary);
        argv.push_back(path);
        argv.insert(argv.end(), args.begin(), args.end());
        child.pid = rt::spawn(argv, {"NOTIFY_SOCKET=" + notify_path}, {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"});
        std::array<char, 64> buf{};
        ssize_t n;
        do n = ::recv(notify.get(), buf.data(), buf.size(), 0);
        while (n < 0 && errno == EINTR);
        REQUIRE(n > 0);
        REQUIRE(std::string(buf.data(), static_cast<std::size_t>(n)) == "READY=1");
    }
    std::string url(const char* p) const { return std::string("http://localhost") + p; }
};

struct http_response {
    int status = -1;  // -1: the connection closed (or timed out) before a response
    std::map<std::string, std::string> headers;  // names lower-cased
    std::string body;
};

// A blocking client on the test thread, with 20 s socket timeouts so no test can hang.
class client {
public:
    explicit client(const std::string& path) : fd_(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
        auto ep = ringsock::endpoint::path(path).value();
        REQUIRE(::connect(fd_.get(), ep.data(), ep.size()) == 0);
        set_timeouts(fd_.get(), 20);
    }
    bool send(std::string_view s) {
        while (!s.empty()) {
            ssize_t n = ::send(fd_.get(), s.data(), s.size(), MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
            s.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }
    // One response: status line, headers, Content-Length bytes of body.
    http_response read_response(bool head_request = false) {
        http_response r;
        std::size_t end;
        while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
            if (!fill()) return r;
        }
        std::string head = buf_.substr(0, end);
        buf_.erase(0, end + 4);
        if (head.compare(0, 9, "HTTP/1.1 ") != 0 || head.size() < 12) return r;
        r.status = std::stoi(head.substr(9, 3));
        std::size_t pos = head.find("\r\n");
        while (pos != std::string::npos) {
            std::size_t next = head.find("\r\n", pos + 2);
            std::string line = head.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
            auto colon = line.find(':');
            std::string name = line.substr(0, colon);
            for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            std::string value = colon == std::string::npos ? "" : line.substr(colon + 1);
            while (!value.empty() && value.front() == ' ') value.erase(0, 1);
            r.headers[name] = value;
            pos = next;
        }
        std::size_t len = r.headers.count("content-length") && !head_request
                              ? std::stoul(r.headers["content-length"]) : 0;
        while (buf_.size() < len) {
            if (!fill()) {
                r.status = -1;
                return r;
            }
        }
        r.body = buf_.substr(0, len);
        buf_.erase(0, len);
        return r;
    }
    // True when the server closed the connection (EOF or reset) with nothing more sent.
    bool closed_by_server() {
        if (!buf_.empty()) return false;
        char c;
        ssize_t n;
        do n = ::recv(fd_.get(), &c, 1, 0);
        while (n < 0 && errno == EINTR);
        return n == 0 || (n < 0 && errno == ECONNRESET);
    }
    int fd() const { return fd_.get(); }
    // Bytes received and not yet consumed by read_response().
    const std::string& buffered() const { return buf_; }

private:
    bool fill() {
        std::array<char, 16384> tmp;
        ssize_t n;
        // EINTR: sockets with SO_RCVTIMEO report it after a stop/continue (a frozen
        // sandbox), even without signal handlers.
        do n = ::recv(fd_.get(), tmp.data(), tmp.size(), 0);
        while (n < 0 && errno == EINTR);
        if (n <= 0) return false;
        buf_.append(tmp.data(), static_cast<std::size_t>(n));
        return true;
    }
    unique_fd fd_;
    std::string buf_;
};

std::string get(const char* target, const std::string& extra = "") {
    return std::string("GET ") + target + " HTTP/1.1\r\nHost: localhost\r\n" + extra + "\r\n";
}

std::string info_json(pid_t pid) {
    return "{\"pid\":" + std::to_string(pid) + ",\"uid\":" + std::to_string(::getuid()) +
           ",\"gid\":" + std::to_string(::getgid()) + "}\n";
}

// Sends `request` on a new connection and returns the one response; the server must
// then close the connection.
int status_then_close(const server& srv, const std::string& request) {
    client c(srv.path);
    REQUIRE(c.send(request));
    auto r = c.read_response();
    CHECK(r.headers["connection"] == "close");
    CHECK(c.closed_by_server());
    return r.status;
}

}  // namespace

TEST_CASE("http_server: GET /info through curl reports curl's pid, uid and gid", "[http_server]") {
    server srv;
    auto out = rt::run_capture({curl(), "-sS", "--unix-socket", srv.path, srv.url("/info")});
    REQUIRE(out.status == 0);
    CHECK(out.out == info_json(out.pid));
}

TEST_CASE("http_server: /info on a raw connection reports this test process", "[http_server]") {
    server srv;
    client c(srv.path);
    REQUIRE(c.send(get("/info")));
    auto r = c.read_response();
    CHECK(r.status == 200);
    CHECK(r.headers["content-type"] == "application/json");
    CHECK(r.body == info_json(::getpid()));
    CHECK(r.headers.count("date") == 1);
}

TEST_CASE("http_server: unknown paths are 404 and wrong methods 405, on a connection that stays open", "[http_server]") {
    server srv;
    auto out = rt::run_capture({curl(), "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", srv.path,
                                srv.url("/no/such/thing")});
    CHECK(out.out == "404");

    client c(srv.path);
    REQUIRE(c.send("DELETE /info HTTP/1.1\r\nHost: x\r\n\r\n"));
    auto r = c.read_response();
    CHECK(r.status == 405);
    CHECK(r.headers["allow"] == "GET, HEAD");
    REQUIRE(c.send(get("/nope")));
    CHECK(c.read_response().status == 404);
    REQUIRE(c.send(get("/info")));
    CHECK(c.read_response().status == 200);
}

TEST_CASE("http_server: curl reuses one keep-alive connection for several requests", "[http_server]") {
    server srv;
    auto out = rt::run_capture({curl(), "-s", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
                                "-w", "%{http_code} %{num_connects}\\n", "--unix-socket", srv.path,
                                srv.url("/info"), srv.url("/missing"), srv.url("/info")});
    REQUIRE(out.status == 0);
    CHECK(out.out == "200 1\n404 0\n200 0\n");
}

TEST_CASE("http_server: pipelined requests with bodies are answered in order on one connection", "[http_server]") {
    server srv;
    client c(srv.path);
    REQUIRE(c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" + get("/info") +
                   "POST /echo HTTP/1.1\r\nHost: x\r\ncontent-length:3\r\n\r\nabc" + "HEAD /info HTTP/1.1\r\nHost: x\r\n\r\n" +
                   get("/info")));
    auto a = c.read_response();
    CHECK(a.status == 200);
    CHECK(a.body == "hello");
    auto b = c.read_response();
    CHECK(b.body == info_json(::getpid()));
    auto d = c.read_response();
    CHECK(d.body == "abc");
    auto head = c.read_response(true);  // HEAD: Content-Length but no body bytes
    CHECK(head.status == 200);
    CHECK(head.headers["content-length"] == std::to_string(info_json(::getpid()).size()));
    auto e = c.read_response();
    CHECK(e.status == 200);
    CHECK(e.body == info_json(::getpid()));
}

TEST_CASE("http_server: HEAD gets headers only for every route and status, and the next response is intact", "[http_server]") {
    server srv;
    const std::string info = info_json(::getpid());

    // Kept-alive statuses: the same connection then answers a GET, parsed intact.
    for (auto [target, status] : {std::pair{"/info", 200}, {"/nope", 404}, {"/echo", 405}}) {
        INFO("HEAD " << target);
        client c(srv.path);
        REQUIRE(c.send(get(target)));
        auto g = c.read_response();
        CHECK(g.status == status);
        REQUIRE(c.send(std::string("HEAD ") + target + " HTTP/1.1\r\nHost: x\r\n\r\n"));
        auto h = c.read_response(true);
        CHECK(h.status == status);
        CHECK(h.headers["content-length"] == g.headers["content-length"]);  // what the GET had
        CHECK(h.headers["allow"] == g.headers["allow"]);
        CHECK(c.buffered().empty());  // no body bytes after the head
        REQUIRE(c.send(get("/info")));
        auto after = c.read_response();
        CHECK(after.status == 200);
        CHECK(after.body == info);
    }

    // Error statuses that close the connection: the head, then EOF with nothing more.
    const std::vector<std::pair<std::string, int>> closing = {
        {" /info HTTP/1.1\r\n\r\n", 400},  // no Host
        {"  /info HTTP/1.1\r\nHost: x\r\n\r\n", 400},  // malformed request line
        {" info HTTP/1.1\r\nHost: x\r\n\r\n", 400},  // not a path
        {" /info HTTP/2.0\r\nHost: x\r\n\r\n", 505},
        {" /info HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413},
        {" /info HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 501},
        {" /" + std::string(10000, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n", 414},
        {" /info HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(20000, 'b') + "\r\n\r\n", 431},
    };
    for (const auto& [rest, status] : closing) {
        INFO("HEAD" << rest.substr(0, 60));
        client as_get(srv.path);
        REQUIRE(as_get.send(std::string("GET") + rest));
        auto g = as_get.read_response();
        CHECK(g.status == status);
        client c(srv.path);
        REQUIRE(c.send(std::string("HEAD") + rest));
        auto h = c.read_response(true);
        CHECK(h.status == status);
        CHECK(h.headers["content-length"] == g.headers["content-length"]);
        CHECK(h.headers["connection"] == "close");
        CHECK(c.closed_by_server());  // false if any body byte came after the head
    }
}

TEST_CASE("http_server: 2000 requests in a row over one keep-alive connection", "[http_server]") {
    server srv;
    client c(srv.path);
    const std::string expected = info_json(::getpid());
    int ok = 0;
    for (int i = 0; i < 2000; ++i) {
        if (!c.send(get("/info"))) break;
        auto r = c.read_response();
        if (r.status != 200 || r.body != expected) break;
        ++ok;
    }
    CHECK(ok == 2000);
}

TEST_CASE("http_server: HTTP/1.0 closes by default and keeps alive on request", "[http_server]") {
    server srv;
    CHECK(status_then_close(srv, "GET /info HTTP/1.0\r\n\r\n") == 200);
    client c(srv.path);
    REQUIRE(c.send("GET /info HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
    auto r = c.read_response();
    CHECK(r.status == 200);
    CHECK(r.headers["connection"] == "keep-alive");
    REQUIRE(c.send(get("/info", "Connection: close\r\n")));
    CHECK(c.read_response().status == 200);
    CHECK(c.closed_by_server());
}

TEST_CASE("http_server: malformed requests get 400 and their connection closed", "[http_server]") {
    server srv;
    for (const char* bad : {
             "GARBAGE\r\n\r\n",
             "GET /info HTTP/1.1\r\n\r\n",                         // no Host
             "GET /info HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",   // two Hosts
             "GET  /info HTTP/1.1\r\nHost: x\r\n\r\n",             // double space
             "GET info HTTP/1.1\r\nHost: x\r\n\r\n",               // not a path
             "GET /info HTTP/1.1\r\nHost x\r\n\r\n",               // no colon
             "GET /info HTTP/1.1\r\nHost : x\r\n\r\n",             // space before the colon
             "GET /info HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",   // obs-fold
             "GET /info HTTP/1.1\r\nHost: x\r\nX: a\x01b\r\n\r\n", // control character
             "GET /info http/1.1\r\nHost: x\r\n\r\n",
             "GET /info HTTP/1.10\r\nHost: x\r\n\r\n",
             "G(T /info HTTP/1.1\r\nHost: x\r\n\r\n",
         }) {
        INFO(bad);
        CHECK(status_then_close(srv, bad) == 400);
    }
    // The server is still fine.
    client c(srv.path);
    REQUIRE(c.send(get("/info")));
    CHECK(c.read_response().status == 200);
}

TEST_CASE("http_server: negative, non-numeric and huge Content-Length are 400; too large is 413", "[http_server]") {
    server srv;
    for (const char* len : {"-1", "abc", "+5", "5 5", "5,5", "0x10", "", "99999999999999999999"}) {
        INFO("Content-Length: " << len);
        CHECK(status_then_close(srv, std::string("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: ") + len +
                                         "\r\n\r\n") == 400);
    }
    CHECK(status_then_close(srv, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx") == 400);
    CHECK(status_then_close(srv, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n") == 413);

    // A real client sending a body over the limit (1 MiB by default).
    std::string big = srv.dir.file("big");
    {
        std::FILE* f = std::fopen(big.c_str(), "wb");
        REQUIRE(f);
        std::string mib(1024 * 1024, 'x');
        std::fwrite(mib.data(), 1, mib.size(), f);
        std::fwrite(mib.data(), 1, mib.size(), f);
        std::fclose(f);
    }
    auto out = rt::run_capture({curl(), "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", srv.path,
                                "--data-binary", "@" + big, srv.url("/echo")});
    CHECK(out.out == "413");
}

TEST_CASE("http_server: an over-long request line is 414 and over-long headers 431", "[http_server]") {
    server srv;
    // Appended, not "/" + std::string(...): g++ 12 -O3 reports a false -Wrestrict
    // inside libstdc++ for operator+(const char*, std::string&&).
    std::string long_target = "/";
    long_target.append(10000, 'a');
    CHECK(status_then_close(srv, get(long_target.c_str())) == 414);
    CHECK(status_then_close(srv, get("/info", "X-Big: " + std::string(20000, 'b') + "\r\n")) == 431);
    std::string many;
    for (int i = 0; i < 150; ++i) many += "X-" + std::to_string(i) + ": y\r\n";
    CHECK(status_then_close(srv, get("/info", many)) == 431);
}

TEST_CASE("http_server: Transfer-Encoding is 501, HTTP/2.0 is 505, an unknown expectation 417", "[http_server]") {
    server srv;
    CHECK(status_then_close(srv, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == 501);
    CHECK(status_then_close(srv, "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\nx") == 400);
    CHECK(status_then_close(srv, "GET /info HTTP/2.0\r\nHost: x\r\n\r\n") == 505);
    CHECK(status_then_close(srv, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == 505);
    CHECK(status_then_close(srv, get("/info", "Expect: teapot\r\n")) == 417);

    auto out = rt::run_capture({curl(), "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", srv.path,
                                "-H", "Transfer-Encoding: chunked", "-d", "x", srv.url("/echo")});
    CHECK(out.out == "501");
}

TEST_CASE("http_server: Expect: 100-continue gets an interim response before the body", "[http_server]") {
    server srv;
    client c(srv.path);
    REQUIRE(c.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"));
    CHECK(c.read_response().status == 100);
    REQUIRE(c.send("ping"));
    auto r = c.read_response();
    CHECK(r.status == 200);
    CHECK(r.body == "ping");
}

TEST_CASE("http_server: a half-sent request does not block another client and times out with 408", "[http_server]") {
    server srv({"--idle-timeout", "1"});
    client slow(srv.path);
    REQUIRE(slow.send("GET /info HTTP/1.1\r\nHo"));
    auto start = std::chrono::steady_clock::now();

    client quick(srv.path);
    REQUIRE(quick.send(get("/info")));
    CHECK(quick.read_response().status == 200);
    auto out = rt::run_capture({curl(), "-sS", "--unix-socket", srv.path, srv.url("/info")});
    CHECK(out.out == info_json(out.pid));

    auto r = slow.read_response();
    CHECK(r.status == 408);
    CHECK(slow.closed_by_server());
    CHECK(std::chrono::steady_clock::now() - start < 10s);

    client half_body(srv.path);
    REQUIRE(half_body.send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"));
    CHECK(half_body.read_response().status == 408);
}

TEST_CASE("http_server: an idle connection is closed after the idle timeout", "[http_server]") {
    server srv({"--idle-timeout", "1"});
    client idle(srv.path);
    auto start = std::chrono::steady_clock::now();
    CHECK(idle.closed_by_server());
    CHECK(std::chrono::steady_clock::now() - start < 10s);

    client kept(srv.path);  // also between requests of a keep-alive connection
    REQUIRE(kept.send(get("/info")));
    CHECK(kept.read_response().status == 200);
    CHECK(kept.closed_by_server());
}

TEST_CASE("http_server: a bad request on one connection does not disturb another", "[http_server]") {
    server srv;
    client good(srv.path);
    REQUIRE(good.send(get("/info")));
    CHECK(good.read_response().status == 200);
    CHECK(status_then_close(srv, "\x16\x03\x01\x02 binary junk\r\n\r\n") == 400);
    REQUIRE(good.send(get("/info")));
    CHECK(good.read_response().status == 200);
}

TEST_CASE("http_server: SIGTERM exits 0 and removes the socket file, even with idle clients", "[http_server]") {
    server srv;
    client idle(srv.path);
    client used(srv.path);
    REQUIRE(used.send(get("/info")));
    CHECK(used.read_response().status == 200);
    REQUIRE(::kill(srv.child.pid, SIGTERM) == 0);
    auto st = srv.child.wait(15s);
    REQUIRE(st);
    CHECK(WIFEXITED(*st));
    CHECK(WEXITSTATUS(*st) == 0);
    struct stat sb {};
    CHECK(::lstat(srv.path.c_str(), &sb) != 0);
    CHECK(idle.closed_by_server());
}

TEST_CASE("http_server: serves curl through systemd-socket-activate and keeps the manager's socket file", "[http_server]") {
    std::string activate = rt::find_program("systemd-socket-activate");
    if (activate.empty()) {
        WARN("systemd-socket-activate missing (Debian package systemd): not run");
        return;
    }
    rt::temp_dir dir;
    std::string path = dir.file("activated.sock");
    rt::child_guard child{rt::spawn({activate, "-l", path, "--fdname=api", server_binary})};
    REQUIRE(rt::wait_for_listener(path, 10s));
    auto out = rt::run_capture({curl(), "-sS", "--unix-socket", path, "http://localhost/info"});
    CHECK(out.out == info_json(out.pid));
    auto again = rt::run_capture({curl(), "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", path,
                                  "http://localhost/nope"});
    CHECK(again.out == "404");

    REQUIRE(::kill(child.pid, SIGTERM) == 0);
    auto st = child.wait(15s);
    REQUIRE(st);
    CHECK(WIFEXITED(*st));
    CHECK(WEXITSTATUS(*st) == 0);
    struct stat sb {};
    CHECK(::lstat(path.c_str(), &sb) == 0);
}

namespace {

bool no_children_left() {
    int st = 0;
    return ::waitpid(-1, &st, WNOHANG) == -1 && errno == ECHILD;
}

// A client that connected and sent half a request line, then went quiet.
unique_fd half_request_client(const std::string& path) {
    auto ep = ringsock::endpoint::path(path).value();
    const auto until = std::chrono::steady_clock::now() + 10s;
    for (;;) {
        unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (::connect(fd.get(), ep.data(), ep.size()) == 0) {
            (void)::send(fd.get(), "GET /info HT", 12, MSG_NOSIGNAL | MSG_DONTWAIT);
            return fd;
        }
        if (errno != EAGAIN || std::chrono::steady_clock::now() > until) return unique_fd();
        std::this_thread::sleep_for(1ms);  // the backlog is full: the server is shedding
    }
}

}  // namespace

TEST_CASE("http_server: --threads 2 serves keep-alive and pipelined requests on many connections", "[http_server][threads]") {
    {
        server srv({"--threads", "2"});
        const std::string info = info_json(::getpid());
        std::vector<std::unique_ptr<client>> clients;
        for (int i = 0; i < 16; ++i) clients.push_back(std::make_unique<client>(srv.path));
        for (int round = 0; round < 20; ++round) {
            for (auto& c : clients) {
                REQUIRE(c->send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" + get("/info") +
                                get("/nope")));
            }
            for (auto& c : clients) {
                auto a = c->read_response();
                CHECK(a.body == "hello");
                auto b = c->read_response();
                CHECK(b.body == info);
                CHECK(c->read_response().status == 404);
            }
        }
        auto out = rt::run_capture({curl(), "-s", "-o", "/dev/null", "-o", "/dev/null", "-w", "%{http_code} %{num_connects}\\n",
                                    "--unix-socket", srv.path, srv.url("/info"), srv.url("/info")});
        CHECK(out.out == "200 1\n200 0\n");
        REQUIRE(::kill(srv.child.pid, SIGTERM) == 0);
        auto st = srv.child.wait(15s);
        REQUIRE(st);
        CHECK(WIFEXITED(*st));
        CHECK(WEXITSTATUS(*st) == 0);
        for (auto& c : clients) CHECK(c->closed_by_server());
    }
    CHECK(no_children_left());
}

TEST_CASE("http_server: 1500 half-sent clients against 1024 descriptors do not keep a normal client out", "[http_server][limits]") {
    const std::string prlimit = "/usr/bin/prlimit";
    if (::access(prlimit.c_str(), X_OK) != 0) {
        WARN("prlimit (util-linux) not installed: skipped");
        return;
    }
    rlimit rl{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &rl) == 0);
    if (rl.rlim_cur < 1700 && rl.rlim_max >= 1700) {
        rl.rlim_cur = 1700;
        REQUIRE(::setrlimit(RLIMIT_NOFILE, &rl) == 0);
    }
    if (rl.rlim_cur < 1700) {
        WARN("this test needs 1700 descriptors: skipped");
        return;
    }
    {
        // The defaults: idle timeout 5 s, cap = 1024 minus the reserve.
        server srv({"--threads", "2"}, {prlimit, "--nofile=1024:1024", "--"});
        std::vector<unique_fd> flood;
        for (int i = 0; i < 1500; ++i) {
            auto fd = half_request_client(srv.path);
            if (fd) flood.push_back(std::move(fd));
        }
        CHECK(flood.size() == 1500);

        // A normal client, right behind the flood, on its first try.
        const auto t0 = std::chrono::steady_clock::now();
        client normal(srv.path);
        REQUIRE(normal.send(get("/info")));
        auto r = normal.read_response();
        const auto answered = std::chrono::steady_clock::now() - t0;
        CHECK(r.status == 200);
        CHECK(r.body == info_json(::getpid()));
        const auto t1 = std::chrono::steady_clock::now();
        auto out = rt::run_capture({curl(), "-sS", "--unix-socket", srv.path, srv.url("/info")});
        const auto curl_took = std::chrono::steady_clock::now() - t1;
        CHECK(out.out == info_json(out.pid));
        std::size_t shed = 0;
        for (auto& fd : flood) {
            pollfd p{fd.get(), POLLIN, 0};
            if (::poll(&p, 1, 0) == 1) ++shed;
        }
        const auto ms = [](auto d) { return std::chrono::duration<double, std::milli>(d).count(); };
        std::fprintf(stderr, "flood: normal client answered in %.1f ms, curl in %.1f ms; %zu of %zu flood clients shed\n",
                     ms(answered), ms(curl_took), shed, flood.size());
        CHECK(answered < 1s);  // the goal is 100 ms; the bound here is generous (shared CI machines)
        CHECK(curl_took < 2s);
        CHECK(shed >= 1500 - 1024);

        flood.clear();
        REQUIRE(::kill(srv.child.pid, SIGTERM) == 0);
        auto st = srv.child.wait(15s);
        REQUIRE(st);
        CHECK(WIFEXITED(*st));
        CHECK(WEXITSTATUS(*st) == 0);
    }
    CHECK(no_children_left());
}

namespace {

// A Date header value in IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), as seconds
// since the epoch; -1 when it is not one.
std::time_t imf_fixdate(const std::string& v) {
    if (v.size() != 29 || v.compare(25, 4, " GMT") != 0) return -1;
    std::tm tm{};
    const char* end = ::strptime(v.c_str(), "%a, %d %b %Y %H:%M:%S", &tm);
    if (!end || end != v.c_str() + 25) return -1;
    return ::timegm(&tm);
}

// Whether `r` carries a well-formed Date within a few seconds of now.
bool dated_now(const http_response& r) {
    auto it = r.headers.find("date");
    if (it == r.headers.end()) return false;
    const std::time_t t = imf_fixdate(it->second);
    const std::time_t now = std::time(nullptr);
    return t >= now - 3 && t <= now + 1;
}

std::string echo_request(std::size_t body_size) {
    return "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body_size) + "\r\n\r\n" +
           std::string(body_size, 'e');
}

}  // namespace

TEST_CASE("http_server: every response has a well-formed, current Date header", "[http_server]") {
    server srv;
    client c(srv.path);
    REQUIRE(c.send(get("/info") + get("/nope") + "DELETE /info HTTP/1.1\r\nHost: x\r\n\r\n" +
                   "HEAD /info HTTP/1.1\r\nHost: x\r\n\r\n" + echo_request(3)));
    for (int status : {200, 404, 405}) {
        auto r = c.read_response();
        CHECK(r.status == status);
        CHECK(dated_now(r));
    }
    auto head = c.read_response(true);
    CHECK(head.status == 200);
    CHECK(dated_now(head));
    auto echo = c.read_response();
    CHECK(echo.body == "eee");
    CHECK(dated_now(echo));

    // Error responses that close the connection carry it too.
    client bad(srv.path);
    REQUIRE(bad.send("GET /info HTTP/1.1\r\n\r\n"));
    auto r400 = bad.read_response();
    CHECK(r400.status == 400);
    CHECK(dated_now(r400));

    // The cached value moves on with the clock.
    const std::string first = echo.headers["date"];
    std::this_thread::sleep_for(1100ms);
    REQUIRE(c.send(get("/info")));
    auto later = c.read_response();
    CHECK(dated_now(later));
    CHECK(imf_fixdate(later.headers["date"]) > imf_fixdate(first));
}

TEST_CASE("http_server: a response to a client that never reads it is ended by the connection deadline", "[http_server]") {
    server srv({"--idle-timeout", "1"});
    client stuck(srv.path);
    // A 1 MiB echo: far more than the socket buffers hold, so the write blocks.
    const std::size_t size = 1024 * 1024;
    REQUIRE(stuck.send(echo_request(size)));
    const auto start = std::chrono::steady_clock::now();
    pollfd p{stuck.fd(), POLLRDHUP, 0};
    bool hung_up = false;
    while (!hung_up && std::chrono::steady_clock::now() - start < 10s) {
        if (::poll(&p, 1, 100) == 1 && (p.revents & (POLLHUP | POLLRDHUP))) hung_up = true;
    }
    const auto took = std::chrono::steady_clock::now() - start;
    CHECK(hung_up);
    CHECK(took >= 500ms);  // not before the deadline
    CHECK(took < 8s);

    // Meanwhile others are served; the stuck client got only part of its response.
    client other(srv.path);
    REQUIRE(other.send(get("/info")));
    CHECK(other.read_response().status == 200);
    std::size_t got = 0;
    std::array<char, 65536> sink;
    for (ssize_t n; (n = ::recv(stuck.fd(), sink.data(), sink.size(), 0)) > 0;) got += static_cast<std::size_t>(n);
    CHECK(got < size);
}

TEST_CASE("http_server: SIGTERM lets a response being written finish", "[http_server]") {
    server srv;
    client c(srv.path);
    const std::size_t size = 1024 * 1024;
    REQUIRE(c.send(echo_request(size)));
    pollfd p{c.fd(), POLLIN, 0};
    REQUIRE(::poll(&p, 1, 10000) == 1);  // the response has started
    std::this_thread::sleep_for(100ms);  // and its write is blocked on the full socket
    REQUIRE(::kill(srv.child.pid, SIGTERM) == 0);
    std::this_thread::sleep_for(200ms);
    auto r = c.read_response();
    CHECK(r.status == 200);
    CHECK(r.body.size() == size);
    CHECK(c.closed_by_server());
    auto st = srv.child.wait(15s);
    REQUIRE(st);
    CHECK(WIFEXITED(*st));
    CHECK(WEXITSTATUS(*st) == 0);
}
