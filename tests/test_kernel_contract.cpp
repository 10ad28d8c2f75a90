// Kernel contract tests: how Linux and liburing 2.3 behave for Unix domain sockets on
// this platform (/work/shared/FACTS.md, "What the kernel does (observed here)").
// They use only raw syscalls and liburing, never ringsock headers, so a kernel upgrade
// that changes a behaviour the library relies on shows up here first.
#include <catch2/catch.hpp>

#include <liburing.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

// Debian 12's kernel headers (6.1) lack the pidfd socket constants (kernel 6.5).
#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif
#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#ifndef SCM_PIDFD
#define SCM_PIDFD 0x04
#endif

namespace {

using namespace std::chrono_literals;

// Opcodes newer than liburing 2.3's enum; the numbers are stable kernel ABI.
constexpr unsigned kOpUringCmd = 46;  // IORING_OP_URING_CMD
constexpr unsigned kOpBind = 56;      // IORING_OP_BIND (6.11)
constexpr unsigned kOpListen = 57;    // IORING_OP_LISTEN (6.11)
constexpr unsigned kOpPipe = 62;      // IORING_OP_PIPE
constexpr std::uint32_t kSocketUringOpGetsockopt = 2;  // SOCKET_URING_OP_GETSOCKOPT

// ---------------------------------------------------------------------------------
// Small RAII helpers.

class Fd {
public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
    Fd& operator=(Fd&& o) noexcept {
        reset(std::exchange(o.fd_, -1));
        return *this;
    }
    Fd(const Fd&) = delete;
    Fd& operator=(const Fd&) = delete;
    ~Fd() { reset(); }

    int get() const { return fd_; }
    explicit operator bool() const { return fd_ >= 0; }
    void reset(int fd = -1) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

struct FdPair {
    Fd a;
    Fd b;
};

FdPair make_socketpair(int type) {
    int sv[2] = {-1, -1};
    REQUIRE(::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv) == 0);
    return FdPair{Fd(sv[0]), Fd(sv[1])};
}

FdPair make_pipe() {
    int p[2] = {-1, -1};
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    return FdPair{Fd(p[0]), Fd(p[1])};
}

Fd make_socket(int type) {
    int fd = ::socket(AF_UNIX, type | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    return Fd(fd);
}

struct Completion {
    std::uint64_t user_data = 0;
    int res = 0;
    unsigned flags = 0;
};

// An io_uring instance that is torn down when the test leaves its scope.
struct Ring {
    io_uring ring{};
    io_uring_params params{};

    explicit Ring(unsigned entries = 16, unsigned flags = 0, unsigned cq_entries = 0) {
        params.flags = flags;
        if (cq_entries != 0) {
            params.flags |= IORING_SETUP_CQSIZE;
            params.cq_entries = cq_entries;
        }
        int rc = io_uring_queue_init_params(entries, &ring, &params);
        INFO("io_uring_queue_init_params: " << std::strerror(-rc));
        REQUIRE(rc == 0);
    }
    Ring(const Ring&) = delete;
    Ring& operator=(const Ring&) = delete;
    ~Ring() { io_uring_queue_exit(&ring); }

    io_uring_sqe* sqe(std::uint64_t user_data) {
        io_uring_sqe* s = io_uring_get_sqe(&ring);
        REQUIRE(s != nullptr);
        io_uring_prep_nop(s);
        s->user_data = user_data;
        return s;
    }

    int submit() { return io_uring_submit(&ring); }

    // One CQE, or nothing if none arrives within `timeout`.
    std::optional<Completion> wait(std::chrono::milliseconds timeout = 2000ms) {
        __kernel_timespec ts{};
        ts.tv_sec = timeout.count() / 1000;
        ts.tv_nsec = (timeout.count() % 1000) * 1000000;
        io_uring_cqe* cqe = nullptr;
        int rc = io_uring_wait_cqe_timeout(&ring, &cqe, &ts);
        if (rc == -ETIME) return std::nullopt;
        INFO("io_uring_wait_cqe_timeout: " << std::strerror(-rc));
        REQUIRE(rc == 0);
        Completion c{cqe->user_data, cqe->res, cqe->flags};
        io_uring_cqe_seen(&ring, cqe);
        return c;
    }

    // Exactly one CQE must arrive within `timeout`.
    Completion wait_one(std::chrono::milliseconds timeout = 2000ms) {
        auto c = wait(timeout);
        REQUIRE(c.has_value());
        return *c;
    }

    // Submits what is queued and returns the single CQE.
    Completion run_one() {
        REQUIRE(submit() >= 1);
        return wait_one();
    }
};

struct Probe {
    io_uring_probe* p;
    explicit Probe(Ring& r) : p(io_uring_get_probe_ring(&r.ring)) { REQUIRE(p != nullptr); }
    Probe(const Probe&) = delete;
    Probe& operator=(const Probe&) = delete;
    ~Probe() { io_uring_free_probe(p); }
    bool supports(unsigned op) const { return io_uring_opcode_supported(p, static_cast<int>(op)) != 0; }
};

// A fresh directory under /tmp, removed with its contents at the end of the test.
struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/ringsock-kc-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    ~TempDir() {
        if (DIR* d = ::opendir(path.c_str())) {
            while (dirent* e = ::readdir(d)) {
                std::string name = e->d_name;
                if (name != "." && name != "..") ::unlink((path + "/" + name).c_str());
            }
            ::closedir(d);
        }
        ::rmdir(path.c_str());
    }
    std::string file(const char* name) const { return path + "/" + name; }
};

struct UnixAddr {
    sockaddr_un sun{};
    socklen_t len = 0;
    const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&sun); }
};

UnixAddr path_addr(const std::string& p) {
    UnixAddr a;
    a.sun.sun_family = AF_UNIX;
    REQUIRE(p.size() < sizeof(a.sun.sun_path));
    std::memcpy(a.sun.sun_path, p.data(), p.size());
    a.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + p.size() + 1);
    return a;
}

// Abstract name with the exact length: leading NUL, no trailing NUL.
UnixAddr abstract_addr(const std::string& tag) {
    static int counter = 0;
    std::string name = "ringsock-kc-" + std::to_string(::getpid()) + "-" + tag + "-" +
                       std::to_string(++counter);
    UnixAddr a;
    a.sun.sun_family = AF_UNIX;
    REQUIRE(name.size() + 1 < sizeof(a.sun.sun_path));
    a.sun.sun_path[0] = '\0';
    std::memcpy(a.sun.sun_path + 1, name.data(), name.size());
    a.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
    return a;
}

std::size_t open_fd_count() {
    DIR* dir = ::opendir("/proc/self/fd");
    REQUIRE(dir != nullptr);
    std::size_t n = 0;
    while (dirent* e = ::readdir(dir)) {
        if (e->d_name[0] != '.') ++n;
    }
    ::closedir(dir);
    return n - 1;  // the directory handle itself
}

bool same_file(int a, int b) {
    struct stat sa {};
    struct stat sb {};
    REQUIRE(::fstat(a, &sa) == 0);
    REQUIRE(::fstat(b, &sb) == 0);
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

bool has_cloexec(int fd) {
    int f = ::fcntl(fd, F_GETFD);
    REQUIRE(f >= 0);
    return (f & FD_CLOEXEC) != 0;
}

// The "Pid:" line of a pidfd's fdinfo, or -1.
long pidfd_pid(int fd) {
    std::ifstream in("/proc/self/fdinfo/" + std::to_string(fd));
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("Pid:", 0) == 0) return std::stol(line.substr(4));
    }
    return -1;
}

// A message to send, optionally with SCM_RIGHTS. Not movable: msghdr points into it.
struct SendMsg {
    iovec iov{};
    msghdr msg{};
    alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * 8)]{};

    SendMsg(std::string_view data, std::span<const int> fds) {
        iov.iov_base = const_cast<char*>(data.data());
        iov.iov_len = data.size();
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (!fds.empty()) {
            REQUIRE(fds.size() <= 8);
            msg.msg_control = control;
            msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
            cmsghdr* c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
            std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
        }
    }
    SendMsg(const SendMsg&) = delete;
    SendMsg& operator=(const SendMsg&) = delete;
};

// A receive buffer plus a control buffer of a chosen size. Not movable either.
struct RecvMsg {
    char data[256]{};
    iovec iov{};
    msghdr msg{};
    alignas(cmsghdr) unsigned char control[512]{};

    RecvMsg(std::size_t data_len, std::size_t control_len) {
        REQUIRE(data_len <= sizeof(data));
        REQUIRE(control_len <= sizeof(control));
        iov.iov_base = data;
        iov.iov_len = data_len;
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        if (control_len != 0) {
            msg.msg_control = control;
            msg.msg_controllen = control_len;
        }
    }
    RecvMsg(const RecvMsg&) = delete;
    RecvMsg& operator=(const RecvMsg&) = delete;

    // Every fd of every SCM_RIGHTS cmsg, taken into ownership at once.
    std::vector<Fd> take_rights() {
        std::vector<Fd> out;
        if (msg.msg_control == nullptr) return out;
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
            std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (std::size_t i = 0; i < n; ++i) {
                int fd = -1;
                std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                out.emplace_back(fd);
            }
        }
        return out;
    }

    std::size_t cmsg_count() {
        std::size_t n = 0;
        if (msg.msg_control == nullptr) return 0;
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) ++n;
        return n;
    }
};

// Blocks SIGPIPE for the test's duration; consumes any SIGPIPE left pending and
// restores the previous mask on the way out, so the process is never killed.
struct SigpipeBlocked {
    sigset_t old{};
    SigpipeBlocked() {
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGPIPE);
        REQUIRE(::sigprocmask(SIG_BLOCK, &s, &old) == 0);
    }
    SigpipeBlocked(const SigpipeBlocked&) = delete;
    SigpipeBlocked& operator=(const SigpipeBlocked&) = delete;
    ~SigpipeBlocked() {
        while (consume()) {
        }
        ::sigprocmask(SIG_SETMASK, &old, nullptr);
    }
    static bool pending() {
        sigset_t p;
        sigemptyset(&p);
        ::sigpending(&p);
        return sigismember(&p, SIGPIPE) == 1;
    }
    static bool consume() {
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGPIPE);
        timespec zero{0, 0};
        return ::sigtimedwait(&s, nullptr, &zero) == SIGPIPE;
    }
};

struct UmaskGuard {
    mode_t old;
    explicit UmaskGuard(mode_t m) : old(::umask(m)) {}
    UmaskGuard(const UmaskGuard&) = delete;
    UmaskGuard& operator=(const UmaskGuard&) = delete;
    ~UmaskGuard() { ::umask(old); }
};

// A provided-buffer ring set up the liburing 2.3 way: mmap'ed ring memory plus
// io_uring_register_buf_ring (io_uring_setup_buf_ring only arrived in 2.4).
struct BufRing {
    static constexpr unsigned kEntries = 8;
    static constexpr unsigned kBufSize = 256;

    Ring& ring;
    int bgid;
    io_uring_buf_ring* br = nullptr;
    std::size_t map_size = kEntries * sizeof(io_uring_buf);
    alignas(16) unsigned char storage[kEntries][kBufSize]{};
    bool registered = false;

    BufRing(Ring& r, int group) : ring(r), bgid(group) {
        void* mem = ::mmap(nullptr, map_size, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
        REQUIRE(mem != MAP_FAILED);
        br = static_cast<io_uring_buf_ring*>(mem);
        io_uring_buf_reg reg{};
        reg.ring_addr = reinterpret_cast<std::uintptr_t>(mem);
        reg.ring_entries = kEntries;
        reg.bgid = static_cast<__u16>(group);
        REQUIRE(io_uring_register_buf_ring(&ring.ring, &reg, 0) == 0);
        registered = true;
        io_uring_buf_ring_init(br);
        for (unsigned i = 0; i < kEntries; ++i) give_back(i);
    }
    BufRing(const BufRing&) = delete;
    BufRing& operator=(const BufRing&) = delete;
    ~BufRing() {
        if (registered) io_uring_unregister_buf_ring(&ring.ring, bgid);
        ::munmap(br, map_size);
    }
    void give_back(unsigned bid) {
        io_uring_buf_ring_add(br, storage[bid], kBufSize, static_cast<unsigned short>(bid),
                              io_uring_buf_ring_mask(kEntries), 0);
        io_uring_buf_ring_advance(br, 1);
    }
    static unsigned bid_of(const Completion& c) { return c.flags >> IORING_CQE_BUFFER_SHIFT; }
};

void send_all(int fd, std::string_view s) {
    REQUIRE(::send(fd, s.data(), s.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(s.size()));
}

void prep_link_timeout(Ring& r, __kernel_timespec* ts, std::uint64_t user_data) {
    io_uring_sqe* t = r.sqe(user_data);
    io_uring_prep_link_timeout(t, ts, 0);
    t->user_data = user_data;
}

// Sorts two CQEs of a linked pair by user_data.
std::pair<Completion, Completion> wait_pair(Ring& r, std::uint64_t first) {
    Completion x = r.wait_one();
    Completion y = r.wait_one();
    if (x.user_data != first) std::swap(x, y);
    REQUIRE(x.user_data == first);
    return {x, y};
}

}  // namespace

// ---------------------------------------------------------------------------------

TEST_CASE("kernel: a SINGLE_ISSUER|DEFER_TASKRUN ring has NODROP, EXT_ARG and NATIVE_WORKERS and probes ops up to PIPE including BIND and LISTEN",
          "[kernel_contract]") {
    // Fact 1: SINGLE_ISSUER|DEFER_TASKRUN initialises; features; probe up to PIPE.
    Ring r(8, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
    CHECK((r.params.features & IORING_FEAT_NODROP) != 0);
    CHECK((r.params.features & IORING_FEAT_EXT_ARG) != 0);
    CHECK((r.params.features & IORING_FEAT_NATIVE_WORKERS) != 0);

    Probe p(r);
    CHECK(p.p->last_op >= kOpPipe);
    CHECK(p.supports(kOpBind));
    CHECK(p.supports(kOpListen));
    CHECK(p.supports(kOpPipe));
    CHECK(p.supports(IORING_OP_SENDMSG));
    CHECK(p.supports(IORING_OP_RECVMSG));

    // And the ring actually works.
    r.sqe(42);
    Completion c = r.run_one();
    CHECK(c.user_data == 42);
    CHECK(c.res == 0);
}

TEST_CASE("kernel: SCM_RIGHTS through io_uring sendmsg and recvmsg works on stream, seqpacket and dgram, and MSG_CMSG_CLOEXEC sets FD_CLOEXEC",
          "[kernel_contract]") {
    // Fact 2: SCM_RIGHTS via io_uring on all three socket types; MSG_CMSG_CLOEXEC honoured.
    const int type = GENERATE(SOCK_STREAM, SOCK_SEQPACKET, SOCK_DGRAM);
    CAPTURE(type);
    Ring r;
    FdPair sp = make_socketpair(type);
    FdPair pipe = make_pipe();

    const int to_send[] = {pipe.b.get()};
    SendMsg out("hello", to_send);
    io_uring_prep_sendmsg(r.sqe(1), sp.a.get(), &out.msg, MSG_NOSIGNAL);
    Completion sc = r.run_one();
    REQUIRE(sc.res == 5);

    RecvMsg in(64, CMSG_SPACE(sizeof(int) * 4));
    io_uring_prep_recvmsg(r.sqe(2), sp.b.get(), &in.msg, MSG_CMSG_CLOEXEC);
    Completion rc = r.run_one();
    REQUIRE(rc.res == 5);
    CHECK(std::string_view(in.data, 5) == "hello");
    CHECK((in.msg.msg_flags & MSG_CTRUNC) == 0);

    std::vector<Fd> got = in.take_rights();
    REQUIRE(got.size() == 1);
    CHECK(got[0].get() != pipe.b.get());
    CHECK(has_cloexec(got[0].get()));
    CHECK(same_file(got[0].get(), pipe.b.get()));
    // The received descriptor really is the pipe's write end.
    REQUIRE(::write(got[0].get(), "x", 1) == 1);
    char c = 0;
    CHECK(::read(pipe.a.get(), &c, 1) == 1);
    CHECK(c == 'x');
}

TEST_CASE("kernel: SCM_RIGHTS with a 24-byte control buffer delivers 2 of 3 fds, sets MSG_CTRUNC and installs no third fd",
          "[kernel_contract]") {
    // Fact 3: CMSG_SPACE(sizeof(int)) == 24 bytes receives 2 of 3 fds; MSG_CTRUNC; no leak.
    STATIC_REQUIRE(CMSG_SPACE(sizeof(int)) == 24);
    Ring r;
    FdPair sp = make_socketpair(SOCK_STREAM);
    FdPair p1 = make_pipe();
    FdPair p2 = make_pipe();
    FdPair p3 = make_pipe();

    const int to_send[] = {p1.b.get(), p2.b.get(), p3.b.get()};
    SendMsg out("abc", to_send);
    io_uring_prep_sendmsg(r.sqe(1), sp.a.get(), &out.msg, MSG_NOSIGNAL);
    REQUIRE(r.run_one().res == 3);

    const std::size_t before = open_fd_count();
    RecvMsg in(64, CMSG_SPACE(sizeof(int)));
    io_uring_prep_recvmsg(r.sqe(2), sp.b.get(), &in.msg, MSG_CMSG_CLOEXEC);
    Completion rc = r.run_one();
    REQUIRE(rc.res == 3);
    CHECK((in.msg.msg_flags & MSG_CTRUNC) != 0);
    REQUIRE(in.msg.msg_controllen >= sizeof(cmsghdr));
    cmsghdr* cm = CMSG_FIRSTHDR(&in.msg);
    REQUIRE(cm != nullptr);
    CHECK(cm->cmsg_len == CMSG_LEN(2 * sizeof(int)));

    std::vector<Fd> got = in.take_rights();
    CHECK(got.size() == 2);
    CHECK(open_fd_count() - before == 2);  // the third fd was never installed
    REQUIRE(got.size() == 2);
    CHECK(same_file(got[0].get(), p1.b.get()));
    CHECK(same_file(got[1].get(), p2.b.get()));
}

TEST_CASE("kernel: a plain io_uring recv of a message that carried fds consumes the data and silently discards the fds",
          "[kernel_contract]") {
    // Fact 4: recv without a control buffer drops in-flight fds (they are closed).
    Ring r;
    FdPair sp = make_socketpair(SOCK_STREAM);
    FdPair pipe = make_pipe();

    {
        const int to_send[] = {pipe.b.get()};
        SendMsg out("abc", to_send);
        REQUIRE(::sendmsg(sp.a.get(), &out.msg, MSG_NOSIGNAL) == 3);
    }
    pipe.b.reset();  // the only write end left is the one in flight

    const std::size_t before = open_fd_count();
    char buf[16]{};
    io_uring_prep_recv(r.sqe(1), sp.b.get(), buf, sizeof(buf), 0);
    Completion c = r.run_one();
    REQUIRE(c.res == 3);
    CHECK(std::string_view(buf, 3) == "abc");
    CHECK(open_fd_count() == before);

    // The in-flight write end was destroyed: the pipe reports EOF.
    char x = 0;
    CHECK(::read(pipe.a.get(), &x, 1) == 0);

    // Nothing is left behind for a later recvmsg.
    send_all(sp.a.get(), "def");
    RecvMsg in(64, 128);
    io_uring_prep_recvmsg(r.sqe(2), sp.b.get(), &in.msg, MSG_CMSG_CLOEXEC);
    REQUIRE(r.run_one().res == 3);
    CHECK(in.msg.msg_controllen == 0);
    CHECK(in.take_rights().empty());
}

TEST_CASE("kernel: io_uring recvmsg writes back msg_flags that still contain MSG_CMSG_CLOEXEC",
          "[kernel_contract]") {
    // Fact 5: msg_flags after io_uring recvmsg keeps MSG_CMSG_CLOEXEC (0x40000000).
    STATIC_REQUIRE(MSG_CMSG_CLOEXEC == 0x40000000);
    Ring r;
    FdPair sp = make_socketpair(SOCK_STREAM);
    send_all(sp.a.get(), "data");

    RecvMsg in(64, 64);
    in.msg.msg_flags = 0;
    io_uring_prep_recvmsg(r.sqe(1), sp.b.get(), &in.msg, MSG_CMSG_CLOEXEC);
    REQUIRE(r.run_one().res == 4);
    CHECK(in.msg.msg_flags != 0);
    CHECK((in.msg.msg_flags & MSG_CMSG_CLOEXEC) != 0);
    CHECK((in.msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) == 0);
}

TEST_CASE("kernel: io_uring recvmsg on a Unix stream adds no unrequested cmsg such as SCM_INQ",
          "[kernel_contract]") {
    // Fact 6: no SCM_INQ cmsg appears on this kernel (6.17 to early 6.18.y added one).
    Ring r;
    FdPair sp = make_socketpair(SOCK_STREAM);
    send_all(sp.a.get(), "data");

    RecvMsg in(64, 256);
    io_uring_prep_recvmsg(r.sqe(1), sp.b.get(), &in.msg, MSG_CMSG_CLOEXEC);
    REQUIRE(r.run_one().res == 4);
    CHECK(in.msg.msg_controllen == 0);
    CHECK(in.cmsg_count() == 0);
}

TEST_CASE("kernel: on seqpacket and dgram recvmsg truncates a 10-byte message to 4 with MSG_TRUNC and recv with MSG_TRUNC returns 10",
          "[kernel_contract]") {
    // Fact 7: truncation is visible via MSG_TRUNC in msg_flags, or as the real length.
    const int type = GENERATE(SOCK_SEQPACKET, SOCK_DGRAM);
    CAPTURE(type);
    Ring r;
    FdPair sp = make_socketpair(type);

    send_all(sp.a.get(), "0123456789");
    RecvMsg in(4, 0);
    io_uring_prep_recvmsg(r.sqe(1), sp.b.get(), &in.msg, 0);
    Completion c1 = r.run_one();
    CHECK(c1.res == 4);
    CHECK((in.msg.msg_flags & MSG_TRUNC) != 0);
    CHECK(std::string_view(in.data, 4) == "0123");

    send_all(sp.a.get(), "abcdefghij");
    char buf[4]{};
    io_uring_prep_recv(r.sqe(2), sp.b.get(), buf, sizeof(buf), MSG_TRUNC);
    Completion c2 = r.run_one();
    CHECK(c2.res == 10);
    CHECK(std::string_view(buf, 4) == "abcd");

    // The rest of each message was discarded.
    char rest[16];
    CHECK(::recv(sp.b.get(), rest, sizeof(rest), MSG_DONTWAIT) == -1);
    CHECK(errno == EAGAIN);
}

TEST_CASE("kernel: send_zc on AF_UNIX fails with EOPNOTSUPP but sets F_MORE and still posts a notification CQE",
          "[kernel_contract]") {
    // Fact 8: SEND_ZC → -EOPNOTSUPP with IORING_CQE_F_MORE, then an F_NOTIF CQE.
    Ring r;
    Probe p(r);
    REQUIRE(p.supports(IORING_OP_SEND_ZC));
    FdPair sp = make_socketpair(SOCK_STREAM);

    static const char msg[] = "zero-copy";
    io_uring_prep_send_zc(r.sqe(7), sp.a.get(), msg, sizeof(msg) - 1, MSG_NOSIGNAL, 0);
    REQUIRE(r.submit() == 1);
    Completion first = r.wait_one();
    CHECK(first.user_data == 7);
    CHECK(first.res == -EOPNOTSUPP);
    CHECK((first.flags & IORING_CQE_F_MORE) != 0);
    CHECK((first.flags & IORING_CQE_F_NOTIF) == 0);

    Completion notif = r.wait_one();
    CHECK(notif.user_data == 7);
    CHECK((notif.flags & IORING_CQE_F_NOTIF) != 0);
    CHECK((notif.flags & IORING_CQE_F_MORE) == 0);

    char buf[16];
    CHECK(::recv(sp.b.get(), buf, sizeof(buf), MSG_DONTWAIT) == -1);
    CHECK(errno == EAGAIN);
}

TEST_CASE("kernel: SO_PEERCRED gives pid, uid and gid, SO_PEERPIDFD gives a pidfd, and URING_CMD GETSOCKOPT(SO_PEERCRED) returns 12",
          "[kernel_contract]") {
    // Fact 9: peer credentials via getsockopt, SO_PEERPIDFD (77) and hand-filled URING_CMD.
    FdPair sp = make_socketpair(SOCK_STREAM);

    ucred cred{};
    socklen_t len = sizeof(cred);
    REQUIRE(::getsockopt(sp.b.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0);
    CHECK(len == sizeof(ucred));
    CHECK(cred.pid == ::getpid());
    CHECK(cred.uid == ::getuid());
    CHECK(cred.gid == ::getgid());

    int pidfd = -1;
    len = sizeof(pidfd);
    REQUIRE(::getsockopt(sp.b.get(), SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) == 0);
    Fd pidfd_owner(pidfd);
    REQUIRE(pidfd >= 0);
    CHECK(pidfd_pid(pidfd) == ::getpid());

    Ring r;
    Probe p(r);
    REQUIRE(p.supports(kOpUringCmd));
    ucred ucmd{};
    io_uring_sqe* s = r.sqe(9);
    std::memset(s, 0, sizeof(*s));
    s->opcode = static_cast<__u8>(kOpUringCmd);
    s->fd = sp.b.get();
    s->cmd_op = kSocketUringOpGetsockopt;
    // Newer uapi: {level, optname} overlay addr, optlen overlays file_index, optval addr3.
    const std::uint32_t level_optname[2] = {SOL_SOCKET, SO_PEERCRED};
    std::memcpy(&s->addr, level_optname, sizeof(level_optname));
    s->file_index = sizeof(ucred);
    s->addr3 = reinterpret_cast<std::uintptr_t>(&ucmd);
    s->user_data = 9;
    Completion c = r.run_one();
    CHECK(c.res == 12);
    CHECK(ucmd.pid == ::getpid());
    CHECK(ucmd.uid == ::getuid());
    CHECK(ucmd.gid == ::getgid());
}

TEST_CASE("kernel: SO_PASSCRED makes SCM_CREDENTIALS arrive unasked and SO_PASSPIDFD makes SCM_PIDFD arrive through io_uring recvmsg",
          "[kernel_contract]") {
    // Fact 10: receiver-side SO_PASSCRED / SO_PASSPIDFD; the sender does nothing.
    Ring r;
    FdPair sp = make_socketpair(SOCK_STREAM);
    const int one = 1;

    SECTION("SO_PASSCRED") {
        REQUIRE(::setsockopt(sp.b.get(), SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)) == 0);
        send_all(sp.a.get(), "cred");
        RecvMsg in(64, 256);
        io_uring_prep_recvmsg(r.sqe(1), sp.b.get(), &in.msg, MSG_CMSG_CLOEXEC);
        REQUIRE(r.run_one().res == 4);
        CHECK((in.msg.msg_flags & MSG_CTRUNC) == 0);
        bool found = false;
        for (cmsghdr* c = CMSG_FIRSTHDR(&in.msg); c != nullptr; c = CMSG_NXTHDR(&in.msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
                REQUIRE(c->cmsg_len == CMSG_LEN(sizeof(ucred)));
                ucred u{};
                std::memcpy(&u, CMSG_DATA(c), sizeof(u));
                CHECK(u.pid == ::getpid());
                CHECK(u.uid == ::getuid());
                CHECK(u.gid == ::getgid());
                found = true;
            }
        }
        CHECK(found);
    }
    SECTION("SO_PASSPIDFD") {
        REQUIRE(::setsockopt(sp.b.get(), SOL_SOCKET, SO_PASSPIDFD, &one, sizeof(one)) == 0);
        send_all(sp.a.get(), "pidf");
        RecvMsg in(64, 256);
        io_uring_prep_recvmsg(r.sqe(1), sp.b.get(), &in.msg, MSG_CMSG_CLOEXEC);
        REQUIRE(r.run_one().res == 4);
        CHECK((in.msg.msg_flags & MSG_CTRUNC) == 0);
        std::vector<Fd> pidfds;
        for (cmsghdr* c = CMSG_FIRSTHDR(&in.msg); c != nullptr; c = CMSG_NXTHDR(&in.msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_PIDFD) {
                REQUIRE(c->cmsg_len == CMSG_LEN(sizeof(int)));
                int fd = -1;
                std::memcpy(&fd, CMSG_DATA(c), sizeof(fd));
                pidfds.emplace_back(fd);
            }
        }
        REQUIRE(pidfds.size() == 1);
        REQUIRE(pidfds[0].get() >= 0);
        CHECK(has_cloexec(pidfds[0].get()));
        CHECK(pidfd_pid(pidfds[0].get()) == ::getpid());
    }
}

TEST_CASE("kernel: io_uring send to a closed stream peer gives EPIPE without SIGPIPE, io_uring write gives EPIPE and SIGPIPE, seqpacket write gives none",
          "[kernel_contract]") {
    // Fact 11: SIGPIPE behaviour of IORING_OP_SEND vs IORING_OP_WRITE.
    SigpipeBlocked blocked;
    REQUIRE_FALSE(SigpipeBlocked::pending());
    Ring r;
    static const char msg[] = "ping";

    SECTION("stream") {
        FdPair sp = make_socketpair(SOCK_STREAM);
        sp.b.reset();

        io_uring_prep_send(r.sqe(1), sp.a.get(), msg, 4, 0);  // no MSG_NOSIGNAL
        CHECK(r.run_one().res == -EPIPE);
        CHECK_FALSE(SigpipeBlocked::pending());

        io_uring_prep_write(r.sqe(2), sp.a.get(), msg, 4, 0);
        CHECK(r.run_one().res == -EPIPE);
        CHECK(SigpipeBlocked::pending());
        CHECK(SigpipeBlocked::consume());
        CHECK_FALSE(SigpipeBlocked::pending());
    }
    SECTION("seqpacket") {
        FdPair sp = make_socketpair(SOCK_SEQPACKET);
        sp.b.reset();

        io_uring_prep_write(r.sqe(3), sp.a.get(), msg, 4, 0);
        CHECK(r.run_one().res == -EPIPE);
        CHECK_FALSE(SigpipeBlocked::pending());
    }
}

TEST_CASE("kernel: SO_REUSEPORT on AF_UNIX fails with EOPNOTSUPP and SO_REUSEADDR is accepted but does nothing",
          "[kernel_contract]") {
    // Fact 12: SO_REUSEPORT → EOPNOTSUPP; SO_REUSEADDR accepted, no effect on bind.
    TempDir dir;
    const UnixAddr addr = path_addr(dir.file("s"));
    const int one = 1;

    Fd s = make_socket(SOCK_STREAM);
    errno = 0;
    CHECK(::setsockopt(s.get(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1);
    CHECK(errno == EOPNOTSUPP);

    CHECK(::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0);
    REQUIRE(::bind(s.get(), addr.sa(), addr.len) == 0);
    REQUIRE(::listen(s.get(), 4) == 0);
    s.reset();  // the socket file stays behind

    Fd t = make_socket(SOCK_STREAM);
    REQUIRE(::setsockopt(t.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0);
    int v = 0;
    socklen_t len = sizeof(v);
    REQUIRE(::getsockopt(t.get(), SOL_SOCKET, SO_REUSEADDR, &v, &len) == 0);
    CHECK(v == 1);
    errno = 0;
    CHECK(::bind(t.get(), addr.sa(), addr.len) == -1);
    CHECK(errno == EADDRINUSE);
}

TEST_CASE("kernel: hand-filled IORING_OP_BIND and LISTEN work on AF_UNIX and multishot accept posts F_MORE CQEs until cancelled with ECANCELED",
          "[kernel_contract]") {
    // Fact 13: BIND (56) / LISTEN (57) by hand; multishot accept; cancel ends it.
    Ring r;
    {
        Probe p(r);
        if (!p.supports(kOpBind) || !p.supports(kOpListen)) {
            WARN("IORING_OP_BIND/LISTEN not supported by this kernel; skipping");
            return;
        }
    }
    TempDir dir;
    const std::string path = dir.file("listener");
    const UnixAddr addr = path_addr(path);
    Fd lfd = make_socket(SOCK_STREAM);

    io_uring_sqe* b = r.sqe(1);
    std::memset(b, 0, sizeof(*b));
    b->opcode = static_cast<__u8>(kOpBind);
    b->fd = lfd.get();
    b->addr = reinterpret_cast<std::uintptr_t>(&addr.sun);  // sockaddr pointer
    b->addr2 = addr.len;                                     // its length
    b->user_data = 1;
    Completion bc = r.run_one();
    REQUIRE(bc.res == 0);
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));

    io_uring_sqe* l = r.sqe(2);
    std::memset(l, 0, sizeof(*l));
    l->opcode = static_cast<__u8>(kOpListen);
    l->fd = lfd.get();
    l->len = 8;  // backlog
    l->user_data = 2;
    Completion lc = r.run_one();
    REQUIRE(lc.res == 0);
    int acc = 0;
    socklen_t alen = sizeof(acc);
    REQUIRE(::getsockopt(lfd.get(), SOL_SOCKET, SO_ACCEPTCONN, &acc, &alen) == 0);
    CHECK(acc == 1);

    io_uring_prep_multishot_accept(r.sqe(3), lfd.get(), nullptr, nullptr, SOCK_CLOEXEC);
    REQUIRE(r.submit() == 1);
    std::vector<Fd> clients;
    std::vector<Fd> accepted;
    for (int i = 0; i < 3; ++i) {
        Fd c = make_socket(SOCK_STREAM);
        REQUIRE(::connect(c.get(), addr.sa(), addr.len) == 0);
        clients.push_back(std::move(c));
        Completion ac = r.wait_one();
        CHECK(ac.user_data == 3);
        REQUIRE(ac.res >= 0);
        accepted.emplace_back(ac.res);
        CHECK((ac.flags & IORING_CQE_F_MORE) != 0);
        CHECK(has_cloexec(ac.res));
    }
    // The accepted sockets are connected to the clients.
    send_all(clients[2].get(), "hi");
    char buf[4]{};
    CHECK(::recv(accepted[2].get(), buf, sizeof(buf), 0) == 2);

    io_uring_prep_cancel64(r.sqe(4), 3, 0);
    REQUIRE(r.submit() == 1);
    auto [acc_cqe, cancel_cqe] = wait_pair(r, 3);
    CHECK(acc_cqe.res == -ECANCELED);
    CHECK((acc_cqe.flags & IORING_CQE_F_MORE) == 0);
    CHECK(cancel_cqe.user_data == 4);
    CHECK(cancel_cqe.res == 0);
}

TEST_CASE("kernel: bind over a stale socket file fails with EADDRINUSE and connect to it fails with ECONNREFUSED",
          "[kernel_contract]") {
    // Fact 14: how a stale socket file is detected.
    TempDir dir;
    const std::string path = dir.file("stale");
    const UnixAddr addr = path_addr(path);
    {
        Fd s = make_socket(SOCK_STREAM);
        REQUIRE(::bind(s.get(), addr.sa(), addr.len) == 0);
        REQUIRE(::listen(s.get(), 4) == 0);
    }  // closed without unlink
    struct stat st {};
    REQUIRE(::lstat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));

    Fd c = make_socket(SOCK_STREAM);
    errno = 0;
    CHECK(::connect(c.get(), addr.sa(), addr.len) == -1);
    CHECK(errno == ECONNREFUSED);

    Fd b = make_socket(SOCK_STREAM);
    errno = 0;
    CHECK(::bind(b.get(), addr.sa(), addr.len) == -1);
    CHECK(errno == EADDRINUSE);
}

TEST_CASE("kernel: fchmod 0600 before bind creates the socket file with mode 0600 and without it umask 022 gives 0755",
          "[kernel_contract]") {
    // Fact 15: the socket file takes the socket inode's mode (minus umask) at bind time.
    UmaskGuard um(022);
    TempDir dir;

    const std::string p1 = dir.file("private");
    Fd s1 = make_socket(SOCK_STREAM);
    REQUIRE(::fchmod(s1.get(), 0600) == 0);
    const UnixAddr a1 = path_addr(p1);
    REQUIRE(::bind(s1.get(), a1.sa(), a1.len) == 0);
    struct stat st1 {};
    REQUIRE(::lstat(p1.c_str(), &st1) == 0);
    CHECK(S_ISSOCK(st1.st_mode));
    CHECK((st1.st_mode & 07777) == 0600);

    const std::string p2 = dir.file("default");
    Fd s2 = make_socket(SOCK_STREAM);
    const UnixAddr a2 = path_addr(p2);
    REQUIRE(::bind(s2.get(), a2.sa(), a2.len) == 0);
    struct stat st2 {};
    REQUIRE(::lstat(p2.c_str(), &st2) == 0);
    CHECK(S_ISSOCK(st2.st_mode));
    CHECK((st2.st_mode & 07777) == 0755);
}

TEST_CASE("kernel: an abstract name must be connected with its exact length and autobind gives a 5-hex-digit abstract name",
          "[kernel_contract]") {
    // Fact 16: addrlen = sizeof(sockaddr_un) for an abstract name → ECONNREFUSED; autobind.
    const UnixAddr addr = abstract_addr("exact");
    Fd server = make_socket(SOCK_STREAM);
    REQUIRE(::bind(server.get(), addr.sa(), addr.len) == 0);
    REQUIRE(::listen(server.get(), 4) == 0);

    Fd wrong = make_socket(SOCK_STREAM);
    errno = 0;
    CHECK(::connect(wrong.get(), addr.sa(), sizeof(sockaddr_un)) == -1);
    CHECK(errno == ECONNREFUSED);

    Fd right = make_socket(SOCK_STREAM);
    CHECK(::connect(right.get(), addr.sa(), addr.len) == 0);

    Fd autob = make_socket(SOCK_STREAM);
    sockaddr_un only_family{};
    only_family.sun_family = AF_UNIX;
    REQUIRE(::bind(autob.get(), reinterpret_cast<const sockaddr*>(&only_family), sizeof(sa_family_t)) == 0);
    sockaddr_un got{};
    socklen_t len = sizeof(got);
    REQUIRE(::getsockname(autob.get(), reinterpret_cast<sockaddr*>(&got), &len) == 0);
    CHECK(len == sizeof(sa_family_t) + 6);
    CHECK(got.sun_family == AF_UNIX);
    CHECK(got.sun_path[0] == '\0');
    for (int i = 1; i <= 5; ++i) {
        const char ch = got.sun_path[i];
        CAPTURE(i, ch);
        CHECK(((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')));
    }
}

// Submits a recv multishot on `fd` taking buffers from group `group`.
void arm_recv_multishot(Ring& r, int fd, std::uint64_t user_data, std::uint16_t group) {
    io_uring_sqe* s = r.sqe(user_data);
    io_uring_prep_recv_multishot(s, fd, nullptr, 0, 0);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = group;
    REQUIRE(r.submit() == 1);
}

TEST_CASE("kernel: recv multishot with an mmap'ed buffer ring works on a Unix stream and ends with res 0 without F_MORE when the peer closes",
          "[kernel_contract]") {
    // Fact 17: liburing 2.3 buffer ring (mmap + io_uring_register_buf_ring) + multishot recv.
    Ring r;
    BufRing bufs(r, 7);
    FdPair sp = make_socketpair(SOCK_STREAM);

    arm_recv_multishot(r, sp.b.get(), 5, 7);

    const std::string_view msgs[] = {"first", "second message", "3rd"};
    for (std::string_view m : msgs) {
        send_all(sp.a.get(), m);
        Completion c = r.wait_one();
        CHECK(c.user_data == 5);
        REQUIRE(c.res == static_cast<int>(m.size()));
        CHECK((c.flags & IORING_CQE_F_MORE) != 0);
        REQUIRE((c.flags & IORING_CQE_F_BUFFER) != 0);
        const unsigned bid = BufRing::bid_of(c);
        REQUIRE(bid < BufRing::kEntries);
        CHECK(std::string_view(reinterpret_cast<const char*>(bufs.storage[bid]), m.size()) == m);
        bufs.give_back(bid);
    }

    sp.a.reset();
    Completion last = r.wait_one();
    CHECK(last.user_data == 5);
    CHECK(last.res == 0);
    CHECK((last.flags & IORING_CQE_F_MORE) == 0);
}

TEST_CASE("kernel: shutdown(SHUT_RDWR) ends an armed recv multishot with res 0 on seqpacket but never on dgram",
          "[kernel_contract]") {
    // A non-blocking dgram recv after SHUT_RD answers EAGAIN (only seqpacket turns that
    // into EOF), and a multishot request cannot fall back to a blocking recv in io-wq as a
    // single-shot one does: it re-arms its poll and waits for data that never comes.
    // ring_reader documents this: a datagram reader is ended by close, not shutdown.
    for (int type : {SOCK_SEQPACKET, SOCK_DGRAM}) {
        INFO((type == SOCK_DGRAM ? "dgram" : "seqpacket"));
        Ring r;
        BufRing bufs(r, 7);
        FdPair sp = make_socketpair(type);
        arm_recv_multishot(r, sp.b.get(), 5, 7);
        send_all(sp.a.get(), "hi");
        Completion c = r.wait_one();
        REQUIRE(c.res == 2);
        CHECK((c.flags & IORING_CQE_F_MORE) != 0);
        bufs.give_back(BufRing::bid_of(c));
        REQUIRE(::shutdown(sp.b.get(), SHUT_RDWR) == 0);
        auto after = r.wait(300ms);
        if (type == SOCK_SEQPACKET) {
            REQUIRE(after.has_value());
            CHECK(after->res == 0);
            CHECK((after->flags & IORING_CQE_F_MORE) == 0);
        } else {
            CHECK(!after.has_value());
            // A plain non-blocking recv shows why: EAGAIN, not 0.
            char b[8];
            CHECK(::recv(sp.b.get(), b, sizeof b, MSG_DONTWAIT) == -1);
            CHECK(errno == EAGAIN);
            io_uring_sqe* cancel = r.sqe(6);
            io_uring_prep_cancel64(cancel, 5, 0);
            REQUIRE(r.submit() == 1);
            for (int i = 0; i < 2; ++i) {
                Completion e = r.wait_one();
                if (e.user_data == 5) CHECK(e.res == -ECANCELED);
            }
        }
    }
}

TEST_CASE("kernel: recvmsg multishot puts SCM_RIGHTS cmsgs after io_uring_recvmsg_out and reports truncation as MSG_CTRUNC in out->flags",
          "[kernel_contract]") {
    // Fact 18: multishot recvmsg with provided buffers carries cmsgs; MSG_CTRUNC in out->flags.
    Ring r;
    BufRing bufs(r, 3);
    FdPair sp = make_socketpair(SOCK_SEQPACKET);
    FdPair p1 = make_pipe();
    FdPair p2 = make_pipe();
    FdPair p3 = make_pipe();

    msghdr tmpl{};
    tmpl.msg_namelen = 0;
    tmpl.msg_controllen = CMSG_SPACE(sizeof(int));  // room for exactly 2 fds' worth of data
    io_uring_sqe* s = r.sqe(6);
    io_uring_prep_recvmsg_multishot(s, sp.b.get(), &tmpl, MSG_CMSG_CLOEXEC);
    s->flags |= IOSQE_BUFFER_SELECT;
    s->buf_group = 3;
    REQUIRE(r.submit() == 1);

    struct Expect {
        std::string_view data;
        std::vector<int> fds;
        std::size_t delivered;
        bool ctrunc;
    };
    const Expect cases[] = {
        {"one", {p1.b.get()}, 1, false},
        {"three", {p1.b.get(), p2.b.get(), p3.b.get()}, 2, true},
    };
    for (const Expect& e : cases) {
        // Counted before sending: the armed recvmsg may install the fds as task-work
        // on the way out of the sendmsg syscall itself.
        const std::size_t before = open_fd_count();
        SendMsg out(e.data, e.fds);
        REQUIRE(::sendmsg(sp.a.get(), &out.msg, MSG_NOSIGNAL) == static_cast<ssize_t>(e.data.size()));
        Completion c = r.wait_one();
        CHECK(c.user_data == 6);
        CHECK((c.flags & IORING_CQE_F_MORE) != 0);
        REQUIRE((c.flags & IORING_CQE_F_BUFFER) != 0);
        const unsigned bid = BufRing::bid_of(c);
        REQUIRE(bid < BufRing::kEntries);

        io_uring_recvmsg_out* o = io_uring_recvmsg_validate(bufs.storage[bid], c.res, &tmpl);
        REQUIRE(o != nullptr);
        std::vector<Fd> got;
        for (cmsghdr* cm = io_uring_recvmsg_cmsg_firsthdr(o, &tmpl); cm != nullptr;
             cm = io_uring_recvmsg_cmsg_nexthdr(o, &tmpl, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
            const std::size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (std::size_t i = 0; i < n; ++i) {
                int fd = -1;
                std::memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                got.emplace_back(fd);
            }
        }
        CHECK(got.size() == e.delivered);
        CHECK(open_fd_count() - before == e.delivered);
        CHECK(((o->flags & MSG_CTRUNC) != 0) == e.ctrunc);
        CHECK(o->payloadlen == e.data.size());
        const unsigned plen = io_uring_recvmsg_payload_length(o, c.res, &tmpl);
        REQUIRE(plen == e.data.size());
        CHECK(std::string_view(static_cast<const char*>(io_uring_recvmsg_payload(o, &tmpl)), plen) == e.data);
        for (std::size_t i = 0; i < got.size(); ++i) {
            CHECK(has_cloexec(got[i].get()));
            CHECK(same_file(got[i].get(), e.fds[i]));
        }
        bufs.give_back(bid);
    }

    sp.a.reset();
    Completion last = r.wait_one();
    CHECK(last.user_data == 6);
    CHECK((last.flags & IORING_CQE_F_MORE) == 0);
    if (last.res > 0 && (last.flags & IORING_CQE_F_BUFFER) != 0) {
        // An EOF record (payload 0) may come in a buffer; it carries nothing to close.
        io_uring_recvmsg_out* o =
            io_uring_recvmsg_validate(bufs.storage[BufRing::bid_of(last)], last.res, &tmpl);
        REQUIRE(o != nullptr);
        CHECK(o->payloadlen == 0);
    } else {
        CHECK(last.res == 0);
    }
}

TEST_CASE("kernel: 24 NOPs on a ring with cq_entries 8 all submit, set IORING_SQ_CQ_OVERFLOW and are all reaped later",
          "[kernel_contract]") {
    // Fact 19: CQ overflow with NODROP keeps the excess CQEs in a backlog.
    Ring r(8, 0, 8);
    REQUIRE(r.ring.cq.ring_entries == 8);
    REQUIRE((r.params.features & IORING_FEAT_NODROP) != 0);

    for (int batch = 0; batch < 3; ++batch) {
        for (int i = 0; i < 8; ++i) r.sqe(static_cast<std::uint64_t>(batch * 8 + i));
        CHECK(r.submit() == 8);
    }
    CHECK((IO_URING_READ_ONCE(*r.ring.sq.kflags) & IORING_SQ_CQ_OVERFLOW) != 0);
    CHECK(io_uring_cq_ready(&r.ring) == 8);

    std::vector<int> seen(24, 0);
    for (int i = 0; i < 24; ++i) {
        Completion c = r.wait_one();
        REQUIRE(c.user_data < 24);
        CHECK(c.res == 0);
        ++seen[c.user_data];
    }
    for (int n : seen) CHECK(n == 1);
    CHECK(*r.ring.cq.koverflow == 0);  // nothing was dropped
    CHECK_FALSE(r.wait(10ms).has_value());
    CHECK((IO_URING_READ_ONCE(*r.ring.sq.kflags) & IORING_SQ_CQ_OVERFLOW) == 0);
}

TEST_CASE("kernel: MSG_WAITALL recv gathers 3 chunks into 30 bytes, recv without it returns 10, and a DONTWAIT 1 MiB send into SO_SNDBUF 4096 writes 8064",
          "[kernel_contract]") {
    // Fact 20: short I/O on a Unix stream.
    Ring r;
    FdPair sp = make_socketpair(SOCK_STREAM);
    const std::string chunk(10, 'c');

    SECTION("MSG_WAITALL gathers") {
        char buf[30]{};
        io_uring_prep_recv(r.sqe(1), sp.b.get(), buf, sizeof(buf), MSG_WAITALL);
        REQUIRE(r.submit() == 1);
        send_all(sp.a.get(), chunk);
        CHECK_FALSE(r.wait(30ms).has_value());
        send_all(sp.a.get(), chunk);
        CHECK_FALSE(r.wait(30ms).has_value());
        send_all(sp.a.get(), chunk);
        Completion c = r.wait_one();
        CHECK(c.res == 30);
    }
    SECTION("without MSG_WAITALL") {
        char buf[30]{};
        io_uring_prep_recv(r.sqe(1), sp.b.get(), buf, sizeof(buf), 0);
        REQUIRE(r.submit() == 1);
        CHECK_FALSE(r.wait(20ms).has_value());
        send_all(sp.a.get(), chunk);
        Completion c = r.wait_one();
        CHECK(c.res == 10);
    }
    SECTION("MSG_DONTWAIT send into a small SO_SNDBUF") {
        const int sndbuf = 4096;
        REQUIRE(::setsockopt(sp.a.get(), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)) == 0);
        std::vector<char> big(1 << 20, 'b');
        io_uring_prep_send(r.sqe(2), sp.a.get(), big.data(), big.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        Completion c = r.run_one();
        CHECK(c.res == 8064);
    }
}

TEST_CASE("kernel: a blocked send with a 100 ms link timeout completes the timeout with ETIME and the send with ECANCELED",
          "[kernel_contract]") {
    // Fact 21: IOSQE_IO_LINK + LINK_TIMEOUT on a send into a full socket buffer.
    Ring r;
    FdPair sp = make_socketpair(SOCK_STREAM);
    std::vector<char> fill(65536, 'f');
    for (int i = 0; i < 10000; ++i) {
        if (::send(sp.a.get(), fill.data(), fill.size(), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) break;
    }
    REQUIRE(::send(sp.a.get(), fill.data(), 1, MSG_DONTWAIT | MSG_NOSIGNAL) == -1);
    REQUIRE(errno == EAGAIN);

    static const char msg[] = "blocked";
    io_uring_sqe* s = r.sqe(1);
    io_uring_prep_send(s, sp.a.get(), msg, sizeof(msg) - 1, MSG_NOSIGNAL);
    s->flags |= IOSQE_IO_LINK;
    __kernel_timespec ts{0, 100 * 1000000};
    prep_link_timeout(r, &ts, 2);
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE(r.submit() == 2);
    auto [send_cqe, timeout_cqe] = wait_pair(r, 1);
    const auto elapsed = std::chrono::steady_clock::now() - t0;
    CHECK(send_cqe.res == -ECANCELED);
    CHECK(timeout_cqe.res == -ETIME);
    CHECK(elapsed >= 90ms);
}

TEST_CASE("kernel: a Unix connect to a full backlog gives EAGAIN when non-blocking and EINTR with a link timeout ENOENT when blocking in io-wq",
          "[kernel_contract]") {
    // Fact 22: UDS connect with a full backlog (listen(fd, 0) allows 1 pending connection).
    const UnixAddr addr = abstract_addr("backlog");
    Fd server = make_socket(SOCK_STREAM);
    REQUIRE(::bind(server.get(), addr.sa(), addr.len) == 0);
    REQUIRE(::listen(server.get(), 0) == 0);

    std::vector<Fd> pending;
    int last_errno = 0;
    for (int i = 0; i < 16; ++i) {
        Fd c = make_socket(SOCK_STREAM | SOCK_NONBLOCK);
        if (::connect(c.get(), addr.sa(), addr.len) != 0) {
            last_errno = errno;
            break;
        }
        pending.push_back(std::move(c));
    }
    CHECK(pending.size() == 1);
    CHECK(last_errno == EAGAIN);  // not EINPROGRESS

    Ring r;
    SECTION("io_uring connect on an O_NONBLOCK socket") {
        Fd c = make_socket(SOCK_STREAM | SOCK_NONBLOCK);
        io_uring_prep_connect(r.sqe(1), c.get(), addr.sa(), addr.len);
        REQUIRE(r.submit() == 1);
        auto cqe = r.wait(100ms);  // "at once"
        REQUIRE(cqe.has_value());
        CHECK(cqe->res == -EAGAIN);
    }
    SECTION("io_uring connect on a blocking socket with a link timeout") {
        Fd c = make_socket(SOCK_STREAM);
        io_uring_sqe* s = r.sqe(1);
        io_uring_prep_connect(s, c.get(), addr.sa(), addr.len);
        s->flags |= IOSQE_IO_LINK;
        __kernel_timespec ts{0, 100 * 1000000};
        prep_link_timeout(r, &ts, 2);
        REQUIRE(r.submit() == 2);
        auto [conn, timeout] = wait_pair(r, 1);
        CHECK(conn.res == -EINTR);
        CHECK(timeout.res == -ENOENT);
    }
}

TEST_CASE("kernel: an io_uring recv on an O_NONBLOCK socket still waits for data",
          "[kernel_contract]") {
    // Fact 23: io_uring arms a poll instead of returning EAGAIN for O_NONBLOCK sockets.
    Ring r;
    FdPair sp = make_socketpair(SOCK_STREAM | SOCK_NONBLOCK);
    REQUIRE((::fcntl(sp.b.get(), F_GETFL) & O_NONBLOCK) != 0);

    char buf[8]{};
    io_uring_prep_recv(r.sqe(1), sp.b.get(), buf, sizeof(buf), 0);
    REQUIRE(r.submit() == 1);
    CHECK_FALSE(r.wait(100ms).has_value());
    send_all(sp.a.get(), "late");
    Completion c = r.wait_one();
    CHECK(c.res == 4);
    CHECK(std::string_view(buf, 4) == "late");
}

TEST_CASE("kernel: a dgram socketpair queues 278 64-byte datagrams before EAGAIN and a blocking send then waits until a link timeout",
          "[kernel_contract]") {
    // Fact 24: dgram send-buffer capacity; a blocking io_uring send waits and can be cut short.
    Ring r;
    FdPair sp = make_socketpair(SOCK_DGRAM);
    const std::string dgram(64, 'd');
    int queued = 0;
    int err = 0;
    for (int i = 0; i < 100000; ++i) {
        if (::send(sp.a.get(), dgram.data(), dgram.size(), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
            err = errno;
            break;
        }
        ++queued;
    }
    CHECK(err == EAGAIN);
    CHECK(queued == 278);

    io_uring_sqe* s = r.sqe(1);
    io_uring_prep_send(s, sp.a.get(), dgram.data(), dgram.size(), MSG_NOSIGNAL);
    s->flags |= IOSQE_IO_LINK;
    __kernel_timespec ts{0, 100 * 1000000};
    prep_link_timeout(r, &ts, 2);
    const auto t0 = std::chrono::steady_clock::now();
    REQUIRE(r.submit() == 2);
    auto [send_cqe, timeout_cqe] = wait_pair(r, 1);
    CHECK(std::chrono::steady_clock::now() - t0 >= 90ms);
    CHECK(send_cqe.res == -ECANCELED);
    CHECK(timeout_cqe.res == -ETIME);
}

TEST_CASE("kernel: an io_uring sendmsg of a datagram to a full receiver that is not connected back sends an empty datagram and reports 0",
          "[kernel_contract]") {
    // The kernel copies the payload before it finds the receiver's queue full
    // (net.unix.max_dgram_qlen) and fails with EAGAIN; io_uring's retry once there is
    // room then has nothing left to send. Why datagram_socket sends only by syscall.
    Ring r;
    const UnixAddr addr = abstract_addr("fulldgram");
    Fd receiver = make_socket(SOCK_DGRAM);
    REQUIRE(::bind(receiver.get(), addr.sa(), addr.len) == 0);
    Fd sender = make_socket(SOCK_DGRAM);
    const std::uint32_t filler = 7;
    int queued = 0;
    while (::sendto(sender.get(), &filler, sizeof filler, MSG_DONTWAIT, addr.sa(), addr.len) == 4) ++queued;
    REQUIRE(errno == EAGAIN);
    REQUIRE(queued > 0);

    std::uint32_t value = 42;
    iovec iov{&value, sizeof value};
    msghdr msg{};
    msg.msg_name = const_cast<sockaddr*>(addr.sa());
    msg.msg_namelen = addr.len;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    io_uring_prep_sendmsg(r.sqe(1), sender.get(), &msg, MSG_NOSIGNAL);
    REQUIRE(r.submit() == 1);
    std::uint32_t got = 0;
    for (int i = 0; i < queued; ++i) REQUIRE(::recv(receiver.get(), &got, sizeof got, 0) == 4);
    const Completion c = r.wait_one();
    CHECK(c.res == 0);  // "sent", 0 of 4 bytes
    got = 0;
    CHECK(::recv(receiver.get(), &got, sizeof got, MSG_DONTWAIT) == 0);  // an empty datagram
    CHECK(::recv(receiver.get(), &got, sizeof got, MSG_DONTWAIT) == -1);  // and nothing else
    CHECK(errno == EAGAIN);
}
