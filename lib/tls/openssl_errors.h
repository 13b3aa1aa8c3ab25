// OpenSSL's error queue as one line of text, for the messages of the
// daemon's TLS listener (core/api) and the discovery plugin's TLS checks.
#pragma once

#include <string>

namespace flotilla::tls {

// Every error OpenSSL queued on this thread, oldest first, joined with
// "; "; the queue is left empty. "no detail from OpenSSL" when it was.
std::string openssl_errors();

}  // namespace flotilla::tls
