#include "conntrack_flush.h"

#include <arpa/inet.h>
#include <errno.h>
#include <libnetfilter_conntrack/libnetfilter_conntrack.h>
#include <netinet/in.h>

#include <cstring>
#include <memory>
#include <set>
#include <vector>

namespace flotilla::discovery {

namespace {

struct Handle {
  nfct_handle *h = nullptr;
  ~Handle() {
    if (h) nfct_close(h);
  }
};

struct Match {
  std::set<std::pair<uint32_t, uint32_t>> pairs;  // vip, backend (network order)
  std::vector<nf_conntrack *> found;
};

int on_entry(enum nf_conntrack_msg_type, struct nf_conntrack *ct, void *data) {
  auto *m = static_cast<Match *>(data);
  if (nfct_get_attr_u8(ct, ATTR_ORIG_L4PROTO) == IPPROTO_UDP &&
      m->pairs.count(
          {nfct_get_attr_u32(ct, ATTR_ORIG_IPV4_DST), nfct_get_attr_u32(ct, ATTR_REPL_IPV4_SRC)}))
    m->found.push_back(nfct_clone(ct));
  return NFCT_CB_CONTINUE;
}

}  // namespace

int flush_udp_conntrack(const std::string &vip, const std::string &backend, std::string &error) {
  return flush_udp_conntrack({{vip, backend}}, error);
}

int flush_udp_conntrack(const std::vector<std::pair<std::string, std::string>> &pairs,
                        std::string &error) {
  Match m;
  for (const auto &[vip, backend] : pairs) {
    uint32_t v = 0, b = 0;
    if (inet_pton(AF_INET, vip.c_str(), &v) != 1 || inet_pton(AF_INET, backend.c_str(), &b) != 1) {
      error = "not IPv4 addresses: " + vip + ", " + backend;
      return -1;
    }
    m.pairs.insert({v, b});
  }
  if (m.pairs.empty()) return 0;
  Handle h;
  h.h = nfct_open(CONNTRACK, 0);
  if (!h.h) {
    error = std::string("conntrack: ") + std::strerror(errno);
    return -1;
  }
  nfct_callback_register(h.h, NFCT_T_ALL, on_entry, &m);
  uint32_t family = AF_INET;
  if (nfct_query(h.h, NFCT_Q_DUMP, &family) < 0) {
    error = std::string("conntrack dump: ") + std::strerror(errno);
    for (auto *ct : m.found) nfct_destroy(ct);
    return -1;
  }
  nfct_callback_unregister(h.h);
  int deleted = 0;
  for (auto *ct : m.found) {
    if (nfct_query(h.h, NFCT_Q_DESTROY, ct) == 0) ++deleted;
    nfct_destroy(ct);
  }
  return deleted;
}

}  // namespace flotilla::discovery
