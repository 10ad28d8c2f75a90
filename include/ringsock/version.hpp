// Library version, for code that must adapt to the ringsock it is built against.
#pragma once

#define RINGSOCK_VERSION_MAJOR 0
#define RINGSOCK_VERSION_MINOR 1
#define RINGSOCK_VERSION_PATCH 0
#define RINGSOCK_VERSION_STRING "0.1.0"
/// Encoded as major * 10000 + minor * 100 + patch, for `#if RINGSOCK_VERSION >= ...`.
#define RINGSOCK_VERSION (RINGSOCK_VERSION_MAJOR * 10000 + RINGSOCK_VERSION_MINOR * 100 + RINGSOCK_VERSION_PATCH)
