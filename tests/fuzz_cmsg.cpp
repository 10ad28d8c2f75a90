// libFuzzer target for the control-message parser (detail/cmsg.hpp). The input is a
// control buffer as a hostile or buggy kernel might write it. Descriptors are a fake
// type that counts instead of closing, so the fuzzer can check that every value the
// parser wraps is released exactly once and that an error leaves nothing behind.
//   First input byte: bit 0 = MSG_CTRUNC; the rest picks max_fds. Then the buffer.
#include <sys/socket.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>

#include <ringsock/detail/cmsg.hpp>

namespace {

long live = 0;  // fake descriptors currently owned

struct fake_fd {
    int v = -1;
    fake_fd() noexcept = default;
    explicit fake_fd(int fd) noexcept : v(fd) {
        if (fd < 0) std::abort();  // the parser must never wrap a negative value
        ++live;
    }
    fake_fd(fake_fd&& o) noexcept : v(o.v) { o.v = -1; }
    fake_fd& operator=(fake_fd&& o) noexcept {
        if (this != &o) {
            reset();
            v = o.v;
            o.v = -1;
        }
        return *this;
    }
    ~fake_fd() { reset(); }
    void reset() noexcept {
        if (v >= 0) --live;
        v = -1;
    }
    bool valid() const noexcept { return v >= 0; }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size < 1) return 0;
    const int flags = (data[0] & 1) ? MSG_CTRUNC : 0;
    const std::size_t max_fds = data[0] >> 1;  // 0..127
    std::span<const std::byte> control(reinterpret_cast<const std::byte*>(data + 1), size - 1);

    // An independent count of what the parser should wrap.
    std::size_t rights = 0;
    ringsock::detail::for_each_cmsg(control, [&](int level, int type, std::span<const std::byte> p) {
        if (level != SOL_SOCKET || type != SCM_RIGHTS) return;
        for (std::size_t i = 0; i + sizeof(int) <= p.size(); i += sizeof(int)) {
            int fd;
            std::memcpy(&fd, p.data() + i, sizeof fd);
            if (fd >= 0) ++rights;
        }
    });

    {
        auto c = ringsock::detail::parse_control<fake_fd>(control, flags, max_fds);
        if (c.error) {
            if (!c.fds.empty() || c.pidfd.valid()) std::abort();  // an error owns nothing
        } else {
            if (c.fds.size() != rights) std::abort();              // every descriptor taken
            if (c.fds.size() > max_fds) std::abort();
            if (c.malformed) std::abort();
        }
        if ((flags & MSG_CTRUNC) && !c.error) std::abort();
        for (auto& f : c.fds)
            if (!f.valid()) std::abort();
        if (live != static_cast<long>(c.fds.size() + (c.pidfd.valid() ? 1 : 0))) std::abort();
    }
    if (live != 0) std::abort();  // everything released exactly once
    return 0;
}
