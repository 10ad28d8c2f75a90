// Forwards a stop request from a parent token to a child stop_source, so nested scopes
// and combinators stop when whatever encloses them does.
#pragma once

#include <optional>
#include <stop_token>

namespace ringsock::detail {

/// While alive, a stop request on `from` is passed on to `to` (on the requesting thread).
class stop_forwarder {
public:
    stop_forwarder(const std::stop_token& from, std::stop_source& to) {
        if (from.stop_possible()) cb_.emplace(from, forward{&to});
    }

private:
    struct forward {
        std::stop_source* to;
        void operator()() const noexcept { to->request_stop(); }
    };
    std::optional<std::stop_callback<forward>> cb_;
};

}  // namespace ringsock::detail
