// Removing a backend from a VIP leaves its UDP conntrack entries in place:
// a client that keeps sending from the same port would keep reaching the
// dead backend (kube-proxy's old bug). These are deleted through
// libnetfilter_conntrack. [worker-thread]: it blocks on netlink.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace flotilla::discovery {

// Deletes the UDP entries whose original destination is vip and whose
// reply comes from backend (the DNAT target). Returns how many, or -1 with
// error set.
int flush_udp_conntrack(const std::string &vip, const std::string &backend, std::string &error);
// The same for many (vip, backend) pairs with one walk of the table.
int flush_udp_conntrack(const std::vector<std::pair<std::string, std::string>> &pairs,
                        std::string &error);

}  // namespace flotilla::discovery
