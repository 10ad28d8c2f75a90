// Tests for endpoint: exact address lengths for paths and abstract names, errors
// instead of truncation, autobind, and round trips through the kernel.
#include <catch2/catch.hpp>

#include <ringsock/endpoint.hpp>
#include <ringsock/unique_fd.hpp>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cctype>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <string_view>

namespace {

using ringsock::endpoint;
using ringsock::unique_fd;

constexpr std::size_t header = offsetof(sockaddr_un, sun_path);

unique_fd make_socket(int type = SOCK_STREAM) {
    unique_fd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
    REQUIRE(fd.valid());
    return fd;
}

/// A unique abstract name for this process and test.
std::string unique_name(std::string_view tag) {
    return "ringsock-test-endpoint-" + std::to_string(::getpid()) + "-" + std::string(tag);
}

/// A private temporary directory, removed (with the socket file) on destruction.
struct temp_dir {
    std::string path;
    std::string file;
    temp_dir() {
        char tmpl[] = "/tmp/ringsock-ep-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~temp_dir() {
        if (!file.empty()) ::unlink(file.c_str());
        ::rmdir(path.c_str());
    }
};

}  // namespace

TEST_CASE("endpoint: a default endpoint is unnamed", "[endpoint]") {
    endpoint e;
    REQUIRE(e.is_unnamed());
    REQUIRE_FALSE(e.is_path());
    REQUIRE_FALSE(e.is_abstract());
    REQUIRE(e.size() == header);
    REQUIRE(e.native().sun_family == AF_UNIX);
    REQUIRE(e.data()->sa_family == AF_UNIX);
    REQUIRE(e.path_name().empty());
    REQUIRE(e.abstract_name().empty());
    REQUIRE(e.to_string() == "(unnamed)");
}

TEST_CASE("endpoint: a path's length is exact, including its terminating NUL", "[endpoint]") {
    auto e = endpoint::path("/run/x.sock");
    REQUIRE(e.has_value());
    REQUIRE(e->is_path());
    REQUIRE_FALSE(e->is_abstract());
    REQUIRE_FALSE(e->is_unnamed());
    REQUIRE(e->size() == header + 11 + 1);
    REQUIRE(e->path_name() == "/run/x.sock");
    REQUIRE(e->to_string() == "/run/x.sock");
    REQUIRE(e->abstract_name().empty());
}

TEST_CASE("endpoint: a 107-byte path is accepted and binds", "[endpoint]") {
    REQUIRE(endpoint::max_path_length == 107);
    temp_dir dir;
    std::string p = dir.path + "/";
    p.append(107 - p.size(), 'p');
    REQUIRE(p.size() == 107);

    auto e = endpoint::path(p);
    REQUIRE(e.has_value());
    REQUIRE(e->size() == header + 108);
    REQUIRE(e->size() == sizeof(sockaddr_un));
    REQUIRE(e->path_name() == p);

    auto fd = make_socket();
    REQUIRE(::bind(fd.get(), e->data(), e->size()) == 0);
    dir.file = p;
    struct stat st {};
    REQUIRE(::lstat(p.c_str(), &st) == 0);
    REQUIRE(S_ISSOCK(st.st_mode));

    auto local = ringsock::local_endpoint(fd.get());
    REQUIRE(local.has_value());
    REQUIRE(local->is_path());
    REQUIRE(local->path_name() == p);
    REQUIRE(*local == *e);
}

TEST_CASE("endpoint: a 108-byte path is ENAMETOOLONG, never truncated", "[endpoint]") {
    std::string p(108, 'a');
    p[0] = '/';
    auto e = endpoint::path(p);
    REQUIRE_FALSE(e.has_value());
    REQUIRE(e.error() == std::errc::filename_too_long);
    REQUIRE_THROWS_WITH(e.value(), Catch::Contains("endpoint::path"));

    auto longer = endpoint::path(std::string(4096, 'b'));
    REQUIRE(longer.error() == std::errc::filename_too_long);
}

TEST_CASE("endpoint: an empty path or one containing NUL is EINVAL", "[endpoint]") {
    auto empty = endpoint::path("");
    REQUIRE_FALSE(empty.has_value());
    REQUIRE(empty.error() == std::errc::invalid_argument);

    using namespace std::string_view_literals;
    auto nul = endpoint::path("/tmp/a\0b"sv);
    REQUIRE_FALSE(nul.has_value());
    REQUIRE(nul.error() == std::errc::invalid_argument);

    auto leading = endpoint::path("\0abc"sv);  // would silently become an abstract name
    REQUIRE(leading.error() == std::errc::invalid_argument);
}

TEST_CASE("endpoint: an abstract name has an exact length with no trailing NUL", "[endpoint]") {
    auto e = endpoint::abstract("name");
    REQUIRE(e.has_value());
    REQUIRE(e->is_abstract());
    REQUIRE_FALSE(e->is_path());
    REQUIRE(e->size() == header + 1 + 4);
    REQUIRE(e->native().sun_path[0] == '\0');
    REQUIRE(e->abstract_name() == "name");
    REQUIRE(e->to_string() == "@name");
    REQUIRE(e->path_name().empty());

    auto longest = endpoint::abstract(std::string(107, 'x'));
    REQUIRE(longest.has_value());
    REQUIRE(longest->size() == sizeof(sockaddr_un));
    REQUIRE(longest->abstract_name().size() == 107);

    auto too_long = endpoint::abstract(std::string(108, 'x'));
    REQUIRE_FALSE(too_long.has_value());
    REQUIRE(too_long.error() == std::errc::filename_too_long);
}

TEST_CASE("endpoint: an abstract name binds and connects with its exact length", "[endpoint]") {
    auto e = endpoint::abstract(unique_name("exact"));
    REQUIRE(e.has_value());
    auto server = make_socket();
    REQUIRE(::bind(server.get(), e->data(), e->size()) == 0);
    REQUIRE(::listen(server.get(), 4) == 0);

    auto local = ringsock::local_endpoint(server.get());
    REQUIRE(local.has_value());
    REQUIRE(local->is_abstract());
    REQUIRE(local->size() == e->size());
    REQUIRE(*local == *e);

    auto client = make_socket();
    REQUIRE(::connect(client.get(), e->data(), e->size()) == 0);
    auto remote = ringsock::remote_endpoint(client.get());
    REQUIRE(remote.has_value());
    REQUIRE(*remote == *e);

    // A name that is a prefix of the bound one is a different address.
    auto prefix = endpoint::abstract(unique_name("exac"));
    auto other = make_socket();
    REQUIRE(::connect(other.get(), prefix->data(), prefix->size()) == -1);
    REQUIRE(errno == ECONNREFUSED);
}

TEST_CASE("endpoint: abstract names may contain NUL bytes", "[endpoint]") {
    std::string name = unique_name("nul");
    name += '\0';
    name += "tail";
    name += '\0';
    auto e = endpoint::abstract(name);
    REQUIRE(e.has_value());
    REQUIRE(e->size() == header + 1 + name.size());
    REQUIRE(e->abstract_name() == name);
    REQUIRE(e->to_string() == "@" + unique_name("nul") + "@tail@");

    auto server = make_socket(SOCK_DGRAM);
    REQUIRE(::bind(server.get(), e->data(), e->size()) == 0);
    auto local = ringsock::local_endpoint(server.get());
    REQUIRE(local.has_value());
    REQUIRE(local->abstract_name() == name);
    REQUIRE(*local == *e);

    // The part before the embedded NUL is a different, unbound name.
    auto head = endpoint::abstract(unique_name("nul"));
    REQUIRE_FALSE(*head == *e);
    auto client = make_socket(SOCK_DGRAM);
    REQUIRE(::connect(client.get(), head->data(), head->size()) == -1);
    REQUIRE(::connect(client.get(), e->data(), e->size()) == 0);
}

TEST_CASE("endpoint: autobind gets a 5-hex-digit abstract name from the kernel", "[endpoint]") {
    endpoint a = endpoint::autobind();
    REQUIRE(a.size() == sizeof(sa_family_t));
    REQUIRE(a.is_unnamed());

    auto fd = make_socket();
    REQUIRE(::bind(fd.get(), a.data(), a.size()) == 0);
    auto local = ringsock::local_endpoint(fd.get());
    REQUIRE(local.has_value());
    REQUIRE(local->is_abstract());
    auto name = local->abstract_name();
    REQUIRE(name.size() == 5);
    for (char c : name) REQUIRE(std::isxdigit(static_cast<unsigned char>(c)));
    REQUIRE(local->size() == header + 1 + 5);
    REQUIRE(local->to_string() == "@" + std::string(name));

    // A second autobound socket gets a different name.
    auto fd2 = make_socket();
    REQUIRE(::bind(fd2.get(), a.data(), a.size()) == 0);
    auto local2 = ringsock::local_endpoint(fd2.get());
    REQUIRE(local2.has_value());
    REQUIRE_FALSE(*local2 == *local);
}

TEST_CASE("endpoint: socketpair sockets report unnamed addresses", "[endpoint]") {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    unique_fd a(sv[0]), b(sv[1]);
    auto local = ringsock::local_endpoint(a.get());
    auto remote = ringsock::remote_endpoint(a.get());
    REQUIRE(local.has_value());
    REQUIRE(remote.has_value());
    REQUIRE(local->is_unnamed());
    REQUIRE(remote->is_unnamed());
    REQUIRE(*local == endpoint{});
    REQUIRE(local->to_string() == "(unnamed)");
}

TEST_CASE("endpoint: local_endpoint and remote_endpoint report errors", "[endpoint]") {
    auto fd = make_socket();
    auto remote = ringsock::remote_endpoint(fd.get());  // not connected
    REQUIRE_FALSE(remote.has_value());
    REQUIRE(remote.error() == std::errc::not_connected);
    REQUIRE(std::string(remote.what()) == "getpeername");

    auto bad = ringsock::local_endpoint(-1);
    REQUIRE(bad.error() == std::errc::bad_file_descriptor);
}

TEST_CASE("endpoint: from_native round-trips paths, abstract names and unnamed addresses", "[endpoint]") {
    std::string nul_name("a\0b", 3);
    for (auto e : {endpoint::path("/tmp/some.sock").value(), endpoint::abstract("abs").value(),
                   endpoint::abstract(nul_name).value(), endpoint{}}) {
        endpoint back = endpoint::from_native(e.native(), e.size());
        REQUIRE(back == e);
        REQUIRE(back.size() == e.size());
        REQUIRE(back.to_string() == e.to_string());
    }

    // A path address the kernel reports without the trailing NUL still reads back.
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::string_view p = "/tmp/nonul.sock";
    p.copy(sa.sun_path, p.size());
    endpoint no_nul = endpoint::from_native(sa, static_cast<socklen_t>(header + p.size()));
    REQUIRE(no_nul.is_path());
    REQUIRE(no_nul.path_name() == p);

    // Too short to hold anything: unnamed. Longer than sockaddr_un: clamped.
    REQUIRE(endpoint::from_native(sa, 0).is_unnamed());
    REQUIRE(endpoint::from_native(sa, 0).size() == header);
    REQUIRE(endpoint::from_native(sa, sizeof(sockaddr_un) + 100).size() == sizeof(sockaddr_un));
}

TEST_CASE("endpoint: equality compares kind, length and every byte", "[endpoint]") {
    auto p1 = endpoint::path("/tmp/a.sock").value();
    auto p1b = endpoint::path("/tmp/a.sock").value();
    auto p2 = endpoint::path("/tmp/b.sock").value();
    auto p3 = endpoint::path("/tmp/a.sock2").value();
    auto a1 = endpoint::abstract("/tmp/a.sock").value();
    auto a2 = endpoint::abstract("x").value();
    auto a3 = endpoint::abstract(std::string("x\0", 2)).value();

    REQUIRE(p1 == p1b);
    REQUIRE(p1 != p2);
    REQUIRE(p1 != p3);
    REQUIRE(p1 != a1);  // same characters, path vs abstract
    REQUIRE(a2 != a3);  // a trailing NUL is part of an abstract name
    REQUIRE(a2 == endpoint::abstract("x").value());
    REQUIRE(endpoint{} == endpoint::autobind());
    REQUIRE(endpoint{} != a2);
    REQUIRE(p1 != endpoint{});
}

namespace {
/// Leaves a pattern in the stack below the caller, where the next call's locals go.
[[gnu::noinline]] void scribble_stack() {
    volatile unsigned char junk[4096];
    for (auto& b : junk) b = 0xAB;
}
}  // namespace

TEST_CASE("endpoint: only the first size() bytes count: endpoints built over scribbled memory read, compare and bind the same",
          "[endpoint]") {
    // An endpoint zeroes no more than it must (a received message builds one each time),
    // so nothing may depend on the bytes past size().
    alignas(endpoint) unsigned char raw[sizeof(endpoint)];
    std::memset(raw, 0xAB, sizeof raw);
    auto* unnamed = ::new (static_cast<void*>(raw)) endpoint();
    CHECK(unnamed->is_unnamed());
    CHECK(unnamed->size() == header);
    CHECK(unnamed->to_string() == "(unnamed)");
    CHECK(*unnamed == endpoint::autobind());

    for (std::size_t n : {1u, 2u, 7u, 64u, 107u}) {
        CAPTURE(n);
        const std::string name(n, 'p');
        scribble_stack();
        const endpoint p = endpoint::path(name).value();
        CHECK(p.native().sun_path[n] == '\0');  // the NUL the length counts is written
        CHECK(p.path_name() == name);
        CHECK(p.size() == header + n + 1);
        scribble_stack();
        CHECK(p == endpoint::path(name).value());
        scribble_stack();
        const endpoint a = endpoint::abstract(name).value();
        CHECK(a.abstract_name() == name);
        CHECK(a == endpoint::abstract(name).value());
        CHECK(a != p);
    }

    // A path built over scribbled stack binds at exactly that path.
    char dir_template[] = "/tmp/rs-endpoint-XXXXXX";
    REQUIRE(::mkdtemp(dir_template) != nullptr);
    const std::string path = std::string(dir_template) + "/s";
    scribble_stack();
    const endpoint p = endpoint::path(path).value();
    unique_fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(s.valid());
    REQUIRE(::bind(s.get(), p.data(), p.size()) == 0);
    struct stat st{};
    CHECK(::stat(path.c_str(), &st) == 0);
    CHECK(S_ISSOCK(st.st_mode));
    sockaddr_un got{};
    socklen_t len = sizeof got;
    REQUIRE(::getsockname(s.get(), reinterpret_cast<sockaddr*>(&got), &len) == 0);
    CHECK(endpoint::from_native(got, len).path_name() == path);
    ::unlink(path.c_str());
    ::rmdir(dir_template);
}
