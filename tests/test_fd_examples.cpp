// The descriptor-passing examples as real programs: fd_server with fd_client, with a
// Python client (socket.send_fds / socket.recv_fds) and with hostile peers; fd_client
// against a fake server; log_server with logger(1) from util-linux. Binaries come from
// $RINGSOCK_BUILD_ROOT/examples; the program exits 77 (skipped) if they were not built.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <ringsock/unique_fd.hpp>

#include "support/fd_count.hpp"
#include "support/process.hpp"


using namespace std::chrono_literals;
using ringsock::unique_fd;

namespace {

/// The built example, or exit 77 (skipped) when it was not built.
std::string example(const char* name) {
    std::string p = ringsock::test::example_path(name);
    if (p.empty()) {
        std::fprintf(stderr, "test_fd_examples: examples/%s not built; skipping\n", name);
        std::exit(77);
    }
    return p;
}

/// A program started with support's spawn(), stdout/stderr to the given files (or
/// inherited), killed and reaped on destruction if still running.
class process {
public:
    process(const std::vector<std::string>& argv, const std::string& out = {}, const std::string& err = {}) {
        unique_fd o = open_output(out), e = open_output(err);
        guard_.pid = ringsock::test::spawn(argv, {}, {}, o.get(), e.get());
    }
    pid_t pid() const { return guard_.pid; }
    void signal(int sig) {
        if (guard_.pid > 0) ::kill(guard_.pid, sig);
    }
    /// Exit code, or -1 (killed by a signal, or still running after `limit`: then killed).
    int wait(std::chrono::milliseconds limit = 30s) { return guard_.wait_code(limit); }

private:
    static unique_fd open_output(const std::string& path) {
        if (path.empty()) return unique_fd();
        return unique_fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    }
    ringsock::test::child_guard guard_;
};

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

/// Waits until `pred()` holds, up to `limit`.
template <class F>
bool eventually(F pred, std::chrono::milliseconds limit = 10s) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::sleep_for(5ms);
    }
    return true;
}

bool is_socket(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0;
}

/// A temporary directory with a "files" directory for fd_server to serve.
struct sandbox {
    std::string dir;
    sandbox() {
        char tmpl[] = "/tmp/ringsock-fdex-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        dir = tmpl;
        std::filesystem::create_directory(dir + "/files");
        std::ofstream(dir + "/files/motd") << "message of the day\n";
        std::ofstream(dir + "/files/second") << "another file\n";
    }
    ~sandbox() { std::filesystem::remove_all(dir); }
    std::string at(const char* name) const { return dir + "/" + name; }
};

/// Runs a program to completion with stdout/stderr captured to files.
struct result {
    int code;
    std::string out, err;
};
result run(const sandbox& sb, std::vector<std::string> argv, std::chrono::milliseconds limit = 30s) {
    static int n = 0;
    std::string out = sb.dir + "/run" + std::to_string(++n) + ".out";
    std::string err = sb.dir + "/run" + std::to_string(n) + ".err";
    process p(std::move(argv), out, err);
    int code = p.wait(limit);
    return {code, slurp(out), slurp(err)};
}

/// fd_server on sb/s.sock serving sb/files, its stderr in sb/server.err.
struct fd_server_proc {
    std::string sock;
    std::string err;
    std::optional<process> p;
    /// `prefix` runs fd_server through another program (e.g. unshare).
    fd_server_proc(const sandbox& sb, std::vector<std::string> extra = {}, const char* name = "s.sock",
                   std::vector<std::string> prefix = {}) {
        sock = sb.at(name);
        err = sb.at((std::string(name) + ".err").c_str());
        std::vector<std::string> argv = std::move(prefix);
        for (auto a : {example("fd_server"), sock, sb.at("files")}) argv.push_back(a);
        argv.insert(argv.end(), extra.begin(), extra.end());
        p.emplace(argv, "", err);
        REQUIRE(p->pid() > 0);
        REQUIRE(eventually([&] { return is_socket(sock); }));
    }
};

std::string python() {
    std::string py = ringsock::test::find_program("python3");
    return py;
}

}  // namespace

TEST_CASE("fd_examples: fd_client fetches files through fd_server and copies them to stdout", "[fd_examples]") {
    sandbox sb;
    fd_server_proc server(sb);
    auto r = run(sb, {example("fd_client"), server.sock, "motd"});
    CHECK(r.code == 0);
    CHECK(r.out == "message of the day\n");
    auto r2 = run(sb, {example("fd_client"), server.sock, "second"});
    CHECK(r2.code == 0);
    CHECK(r2.out == "another file\n");
}

TEST_CASE("fd_examples: fd_server answers ERR to empty names, names with / or .., non-files and missing files, and fd_client exits 1",
          "[fd_examples]") {
    sandbox sb;
    REQUIRE(::mkfifo(sb.at("files/fifo").c_str(), 0600) == 0);
    REQUIRE(::symlink("/etc/passwd", sb.at("files/escape").c_str()) == 0);
    fd_server_proc server(sb);
    for (const char* name : {"", "a/b", "..", "../motd", "x..y", ".", "missing", "fifo", "escape"}) {
        CAPTURE(name);
        auto r = run(sb, {example("fd_client"), server.sock, name});
        CHECK(r.code == 1);
        CHECK(r.out.empty());
        CHECK(r.err.find("server refused") != std::string::npos);
    }
    // The server is still serving.
    CHECK(run(sb, {example("fd_client"), server.sock, "motd"}).code == 0);
}

TEST_CASE("fd_examples: a Python client gets one descriptor per OK with socket.recv_fds, many requests on one connection and many connections at once",
          "[fd_examples]") {
    const std::string py = python();
    if (py.empty()) {
        WARN("python3 not found");
        return;
    }
    sandbox sb;
    fd_server_proc server(sb);
    const char* script = R"(
import os, socket, sys
path = sys.argv[1]
def reply(s):
    buf, fds = b"", []
    while not buf.endswith(b"\n"):
        m, f, _, _ = socket.recv_fds(s, 256, 8)
        if not m: break
        buf += m; fds += f
    return buf, fds
conns = [socket.socket(socket.AF_UNIX) for _ in range(40)]
for c in conns: c.connect(path)
for i, c in enumerate(conns): c.sendall(b"motd\n" if i % 2 else b"second\n")
ok = 0
for i, c in enumerate(conns):
    buf, fds = reply(c)
    want = b"message of the day\n" if i % 2 else b"another file\n"
    if buf == b"OK\n" and len(fds) == 1 and os.read(fds[0], 100) == want: ok += 1
    for f in fds: os.close(f)
print("parallel", ok)
s = conns[0]
s.sendall(b"motd\nnope\nsecond\n")
# On a stream, one recv may return several replies: split lines, count descriptors.
buf, nfds = b"", 0
while buf.count(b"\n") < 3:
    m, f, _, _ = socket.recv_fds(s, 256, 8)
    if not m: break
    buf += m; nfds += len(f)
    for x in f: os.close(x)
print("sequence", [l.split(b" ")[0].decode() for l in buf.splitlines()], nfds)
for c in conns: c.close()
)";
    auto r = run(sb, {py, "-c", script, server.sock});
    CHECK(r.code == 0);
    CHECK(r.out.find("parallel 40") != std::string::npos);
    CHECK(r.out.find("sequence ['OK', 'ERR', 'OK'] 2") != std::string::npos);
    INFO(r.out << r.err);
}

TEST_CASE("fd_examples: fd_server closes descriptors a client pushes at it and keeps serving", "[fd_examples]") {
    const std::string py = python();
    if (py.empty()) {
        WARN("python3 not found");
        return;
    }
    sandbox sb;
    fd_server_proc server(sb);
    const char* script = R"(
import os, select, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
r, w = os.pipe()
socket.send_fds(s, [b"motd\n"], [w, w, w])
os.close(w)   # now only the server holds copies of the write end
m, fds, _, _ = socket.recv_fds(s, 256, 4)
print("reply", m, len(fds))
ready, _, _ = select.select([r], [], [], 10)
print("pipe-eof", bool(ready) and os.read(r, 1) == b"")
)";
    auto r = run(sb, {py, "-c", script, server.sock});
    CHECK(r.code == 0);
    CHECK(r.out.find("reply b'OK\\n' 1") != std::string::npos);
    CHECK(r.out.find("pipe-eof True") != std::string::npos);
    INFO(r.out << r.err);
    CHECK(eventually([&] { return slurp(server.err).find("closed 3 descriptor(s)") != std::string::npos; }));
}

TEST_CASE("fd_examples: a FIFO's open blocks on the ring's worker, not the loop: other clients are served meanwhile",
          "[fd_examples]") {
    const std::string py = python();
    if (py.empty()) {
        WARN("python3 not found");
        return;
    }
    sandbox sb;
    REQUIRE(::mkfifo(sb.at("files/fifo").c_str(), 0600) == 0);
    fd_server_proc server(sb);
    const char* script = R"(
import select, socket, sys
a = socket.socket(socket.AF_UNIX); a.connect(sys.argv[1])
a.sendall(b"fifo\n")          # open() of a FIFO with no writer blocks in the kernel
served = 0
for i in range(5):
    b = socket.socket(socket.AF_UNIX); b.connect(sys.argv[1])
    b.sendall(b"motd\n")
    m, fds, _, _ = socket.recv_fds(b, 256, 1)
    served += m == b"OK\n" and len(fds) == 1
    b.close()
waiting, _, _ = select.select([a], [], [], 0)
print("served", served, "fifo-still-waiting", not waiting)
a.settimeout(10)
print("fifo-reply", a.recv(256))
)";
    auto r = run(sb, {py, "-c", script, server.sock});
    INFO(r.out << r.err);
    CHECK(r.code == 0);
    CHECK(r.out.find("served 5 fifo-still-waiting True") != std::string::npos);
    CHECK(r.out.find("fifo-reply b'ERR ") != std::string::npos);
}

TEST_CASE("fd_examples: a request line of megabytes without a newline gets ERR and a disconnect", "[fd_examples]") {
    const std::string py = python();
    if (py.empty()) {
        WARN("python3 not found");
        return;
    }
    sandbox sb;
    fd_server_proc server(sb);
    const char* script = R"(
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
try:
    s.sendall(b"a" * (8 << 20))
    print("sent all")
except OSError as e:
    print("send failed", e.errno)
data = b""
try:
    while True:
        chunk = s.recv(4096)
        if not chunk: break
        data += chunk
except OSError:
    pass
print("reply", data)
)";
    auto r = run(sb, {py, "-c", script, server.sock});
    CHECK(r.code == 0);
    CHECK(r.out.find("send failed") != std::string::npos);
    CHECK(r.out.find("reply b'ERR request too long\\n'") != std::string::npos);
    INFO(r.out << r.err);
    CHECK(run(sb, {example("fd_client"), server.sock, "motd"}).code == 0);  // still serving
}

TEST_CASE("fd_examples: fd_server refuses and logs a peer with another uid unless --allow-uid names it", "[fd_examples]") {
    const std::string py = python();
    if (::geteuid() != 0 || py.empty()) {
        WARN("needs root (to connect as another uid) and python3");
        return;
    }
    sandbox sb;
    ::chmod(sb.dir.c_str(), 0755);  // uid 65534 must reach the socket
    const char* script = R"(
import os, socket, sys
os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
print("pid", os.getpid())
try:
    s.sendall(b"motd\n")
except OSError:
    pass  # the server may already have answered and closed
m, fds, _, _ = socket.recv_fds(s, 256, 4)
print("reply", m, len(fds))
)";
    {
        fd_server_proc server(sb, {"--mode", "0666"});
        auto r = run(sb, {py, "-c", script, server.sock});
        INFO(r.out << r.err);
        CHECK(r.code == 0);
        CHECK(r.out.find("reply b'ERR permission denied\\n' 0") != std::string::npos);
        std::string pid = r.out.substr(r.out.find("pid ") + 4);
        pid = pid.substr(0, pid.find('\n'));
        CHECK(eventually([&] {
            return slurp(server.err).find("refused peer pid " + pid + " uid 65534") != std::string::npos;
        }));
    }
    fd_server_proc allowing(sb, {"--mode", "0666", "--allow-uid", "65534"}, "allow.sock");
    auto r = run(sb, {py, "-c", script, allowing.sock});
    INFO(r.out << r.err);
    CHECK(r.out.find("reply b'OK\\n' 1") != std::string::npos);
}

// A containerised fd_server cannot see a host client's pid (SO_PEERCRED says 0); the
// uid check must still let our own uid in.
TEST_CASE("fd_examples: fd_server in its own pid namespace serves a client on the host", "[fd_examples]") {
    const std::string unshare = ringsock::test::find_program("unshare");
    if (::geteuid() != 0 || unshare.empty()) {
        WARN("needs root and unshare(1) to start fd_server in a new pid namespace");
        return;
    }
    sandbox sb;
    // --kill-child: when the test kills unshare, fd_server goes too.
    fd_server_proc server(sb, {}, "s.sock", {unshare, "--pid", "--fork", "--kill-child"});
    auto r = run(sb, {example("fd_client"), server.sock, "motd"});
    INFO(r.err << slurp(server.err));
    CHECK(r.code == 0);
    CHECK(r.out == "message of the day\n");
    CHECK(slurp(server.err).find("refused") == std::string::npos);
}

namespace {

/// A fake fd_server: accepts one connection on `path`, reads the request line, sends
/// `replies` (data + number of descriptors each), then closes.
void fake_server(int listener, std::vector<std::pair<std::string, std::size_t>> replies) {
    int c = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) return;
    char buf[256];
    (void)::recv(c, buf, sizeof buf, 0);
    int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (auto& [data, nfds] : replies) {
        std::vector<int> fds(nfds, devnull);
        alignas(cmsghdr) char ctrl[CMSG_SPACE(253 * sizeof(int))] = {};
        iovec iov{data.data(), data.size()};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (nfds > 0) {
            msg.msg_control = ctrl;
            msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
            cmsghdr* cm = CMSG_FIRSTHDR(&msg);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
            std::memcpy(CMSG_DATA(cm), fds.data(), nfds * sizeof(int));
        }
        (void)::sendmsg(c, &msg, MSG_NOSIGNAL);
    }
    ::close(devnull);
    ::close(c);
}

}  // namespace

TEST_CASE("fd_examples: fd_client exits 1 without hanging on a reply with hundreds of descriptors, an OK without one, or a malformed line",
          "[fd_examples]") {
    sandbox sb;
    const std::string path = sb.at("fake.sock");
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
    unique_fd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(::bind(listener.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(::listen(listener.get(), 4) == 0);

    struct scenario {
        const char* what;
        std::vector<std::pair<std::string, std::size_t>> replies;
        int code;
    };
    std::vector<scenario> scenarios = {
        {"OK with 253 descriptors, then 253 more", {{"OK\n", 253}, {"x", 253}}, 1},
        {"OK split across messages with 200 descriptors each", {{"O", 200}, {"K\n", 200}}, 1},
        {"OK without a descriptor", {{"OK\n", 0}}, 1},
        {"malformed line", {{"HELLO\n", 1}}, 1},
        {"no newline, then close", {{"OK", 1}}, 1},
        {"a proper reply (control)", {{"OK\n", 1}}, 0},
    };
    for (auto& sc : scenarios) {
        CAPTURE(sc.what);
        process client({example("fd_client"), path, "motd"}, sb.at("client.out"), sb.at("client.err"));
        fake_server(listener.get(), sc.replies);
        CHECK(client.wait(20s) == sc.code);  // -1 would mean it hung or crashed
        CHECK(slurp(sb.at("client.out")).empty());  // /dev/null has no content to copy
        if (sc.code != 0) CHECK(slurp(sb.at("client.err")).find("fd_client:") != std::string::npos);
    }
}

TEST_CASE("fd_examples: SIGTERM and SIGINT make fd_server and log_server exit 0 and remove their socket files", "[fd_examples]") {
    const int sig = GENERATE(SIGTERM, SIGINT);
    CAPTURE(sig);
    sandbox sb;
    {
        fd_server_proc server(sb);
        // An open connection must not keep it from exiting.
        unique_fd idle(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        std::strncpy(sa.sun_path, server.sock.c_str(), sizeof sa.sun_path - 1);
        REQUIRE(::connect(idle.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
        server.p->signal(sig);
        CHECK(server.p->wait(10s) == 0);
        CHECK_FALSE(exists(server.sock));
    }
    {
        const std::string sock = sb.at("log.sock");
        process log({example("log_server"), sock}, sb.at("log.out"), sb.at("log.err"));
        REQUIRE(eventually([&] { return is_socket(sock); }));
        log.signal(sig);
        CHECK(log.wait(10s) == 0);
        CHECK_FALSE(exists(sock));
    }
}

TEST_CASE("fd_examples: log_server prints each logger -u message as one line with the sender's pid and uid", "[fd_examples]") {
    const std::string logger = ringsock::test::find_program("logger");
    if (logger.empty()) {
        WARN("logger (util-linux) not found");
        return;
    }
    sandbox sb;
    const std::string sock = sb.at("log.sock");
    const std::string out = sb.at("log.out");
    process log({example("log_server"), sock}, out, sb.at("log.err"));
    REQUIRE(eventually([&] { return is_socket(sock); }));
    struct stat st {};
    REQUIRE(::lstat(sock.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0666);  // like /dev/log

    std::vector<pid_t> pids;
    for (const char* msg : {"first message", "second message"}) {
        process lg({logger, "-u", sock, msg});
        pids.push_back(lg.pid());
        REQUIRE(lg.wait(10s) == 0);
    }
    REQUIRE(eventually([&] { return slurp(out).find("second message") != std::string::npos; }));
    std::string text = slurp(out);
    INFO(text);
    std::istringstream lines(text);
    std::string l1, l2;
    std::getline(lines, l1);
    std::getline(lines, l2);
    const std::string uid = std::to_string(::getuid());
    CHECK(l1.rfind("pid=" + std::to_string(pids[0]) + " uid=" + uid + ": ", 0) == 0);
    CHECK(l1.find("first message") != std::string::npos);
    CHECK(l2.rfind("pid=" + std::to_string(pids[1]) + " uid=" + uid + ": ", 0) == 0);
    CHECK(l2.find("second message") != std::string::npos);
    log.signal(SIGTERM);
    CHECK(log.wait(10s) == 0);
}

TEST_CASE("fd_examples: log_server prints an unbound Python sender's multi-line datagram as one line with its pid", "[fd_examples]") {
    const std::string py = python();
    if (py.empty()) {
        WARN("python3 not found");
        return;
    }
    sandbox sb;
    const std::string sock = sb.at("log.sock");
    const std::string out = sb.at("log.out");
    process log({example("log_server"), sock}, out, sb.at("log.err"));
    REQUIRE(eventually([&] { return is_socket(sock); }));
    const char* script = R"(
import array, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"line one\nline two\n", sys.argv[1])
r, w = os.pipe()
s.sendmsg([b"with fds"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r, w]))], 0, sys.argv[1])
print(os.getpid())
)";
    auto r = run(sb, {py, "-c", script, sock});
    REQUIRE(r.code == 0);
    std::string pid = r.out.substr(0, r.out.find('\n'));
    REQUIRE(eventually([&] { return slurp(out).find("with fds") != std::string::npos; }));
    std::string text = slurp(out);
    INFO(text);
    CHECK(text.find("pid=" + pid + " uid=" + std::to_string(::getuid()) + ": line one\\x0aline two\n") != std::string::npos);
    CHECK(text.find(": with fds\n") != std::string::npos);
    log.signal(SIGINT);
    CHECK(log.wait(10s) == 0);
    CHECK(slurp(sb.at("log.err")).find("closed 2 descriptor(s)") != std::string::npos);
}

namespace {

/// A blocking connection to `path` (5 s timeouts), or an empty one.
unique_fd connect_to(const std::string& path) {
    unique_fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::memcpy(sa.sun_path, path.c_str(), path.size() + 1);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&sa), sizeof sa) != 0) return unique_fd();
    timeval tv{5, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/// A request for a missing file: the answer is one "ERR" line and no descriptor.
bool ping(int fd) {
    if (::send(fd, "nope\n", 5, MSG_NOSIGNAL) != 5) return false;
    std::string line;
    char c = 0;
    while (line.empty() || line.back() != '\n') {
        if (::recv(fd, &c, 1, 0) != 1) return false;
        line += c;
    }
    return line.rfind("ERR ", 0) == 0;
}

/// True when the server closed `fd` within `limit`.
bool closed_within(int fd, std::chrono::milliseconds limit) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(limit.count())) != 1) return false;
    char b = 0;
    return ::recv(fd, &b, 1, MSG_DONTWAIT) <= 0;
}

bool no_children_left() {
    int st = 0;
    return ::waitpid(-1, &st, WNOHANG) == -1 && errno == ECHILD;
}

}  // namespace

TEST_CASE("fd_examples: fd_server --idle-timeout closes exactly the idle connections", "[fd_examples][limits]") {
    {
        sandbox sb;
        fd_server_proc server(sb, {"--idle-timeout", "1"});
        std::vector<unique_fd> idle, busy;
        for (int i = 0; i < 3; ++i) {
            idle.push_back(connect_to(server.sock));
            busy.push_back(connect_to(server.sock));
        }
        const auto until = std::chrono::steady_clock::now() + 2500ms;
        while (std::chrono::steady_clock::now() < until) {
            for (auto& b : busy) CHECK(ping(b.get()));
            std::this_thread::sleep_for(200ms);
        }
        for (auto& c : idle) CHECK(closed_within(c.get(), 2s));
        for (auto& b : busy) CHECK(ping(b.get()));
        server.p->signal(SIGTERM);
        CHECK(server.p->wait() == 0);
    }
    CHECK(no_children_left());
}

TEST_CASE("fd_examples: fd_server at --max-connections closes the quietest connection for a new one", "[fd_examples][limits]") {
    {
        sandbox sb;
        fd_server_proc server(sb, {"--max-connections", "3"});
        std::vector<unique_fd> c;
        for (int i = 0; i < 3; ++i) {
            c.push_back(connect_to(server.sock));
            CHECK(ping(c.back().get()));
        }
        CHECK(ping(c[0].get()));  // now c[1] has been quiet longest
        auto fresh = connect_to(server.sock);
        CHECK(ping(fresh.get()));
        CHECK(closed_within(c[1].get(), 2s));
        CHECK(ping(c[0].get()));
        CHECK(ping(c[2].get()));
        server.p->signal(SIGTERM);
        CHECK(server.p->wait() == 0);
    }
    CHECK(no_children_left());
}
