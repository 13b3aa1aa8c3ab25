// Certificates for TLS tests, made by openssl at test time: shared by the
// registry pull tests and the discovery plugin's TLS checks.
#pragma once

#include <string>

namespace flotilla::testing {

// A shell command that makes, in dir, a CA (ca.key, ca.pem) and a server
// certificate it signed (srv.key, srv.pem) holding subjectAltName san
// (e.g. "DNS:check.test,IP:127.0.0.1"), RSA 2048, valid for `days` days;
// openssl's chatter is discarded. Run it with std::system or a shell.
inline std::string ca_and_server_cert_command(const std::string &dir, const std::string &san,
                                              int days = 2) {
  const std::string d = " -days " + std::to_string(days);
  return "cd '" + dir + "' && printf 'subjectAltName=" + san + "\\n' > san.ext" +
         " && openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem" + d +
         " -subj /CN=flotilla-test-ca >/dev/null 2>&1" +
         " && openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr"
         " -subj /CN=flotilla-test-server >/dev/null 2>&1" +
         " && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem" +
         d + " -extfile san.ext >/dev/null 2>&1";
}

}  // namespace flotilla::testing
