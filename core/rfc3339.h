// The one way the core writes a time: RFC 3339 in UTC, as every JSON record
// and log line carries it ("2026-11-25T14:38:54Z", or with milliseconds).
#pragma once

#include <string>

namespace flotilla {

std::string rfc3339_now(bool milliseconds = false);

}  // namespace flotilla
