#include "nft.h"

#include <errno.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <nftables/libnftables.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <utility>

namespace flotilla::nft {

Batch &Batch::add(std::string command) {
  commands_.push_back(std::move(command));
  return *this;
}

Batch &Batch::delete_table_if_exists(std::string_view family, std::string_view table) {
  std::string t = std::string(family) + " " + std::string(table);
  commands_.push_back("add table " + t);
  commands_.push_back("delete table " + t);
  return *this;
}

std::string Batch::text() const {
  std::string out;
  for (const auto &c : commands_) {
    out += c;
    out += '\n';
  }
  return out;
}

Context::Context() {
  ctx_ = nft_ctx_new(NFT_CTX_DEFAULT);
  if (!ctx_) throw Error("libnftables: cannot create a context");
  if (nft_ctx_buffer_output(ctx_) != 0 || nft_ctx_buffer_error(ctx_) != 0) {
    nft_ctx_free(ctx_);
    ctx_ = nullptr;
    throw Error("libnftables: cannot buffer output");
  }
}

Context::~Context() {
  if (ctx_) nft_ctx_free(ctx_);
}

Context::Context(Context &&o) noexcept : ctx_(std::exchange(o.ctx_, nullptr)) {}

Context &Context::operator=(Context &&o) noexcept {
  if (this != &o) {
    if (ctx_) nft_ctx_free(ctx_);
    ctx_ = std::exchange(o.ctx_, nullptr);
  }
  return *this;
}

std::string Context::run(const std::string &text, bool dry_run, bool json_output) {
  if (!ctx_) throw Error("libnftables: context was moved from");
  nft_ctx_set_dry_run(ctx_, dry_run);
  unsigned flags = nft_ctx_output_get_flags(ctx_);
  flags = json_output ? (flags | NFT_CTX_OUTPUT_JSON) : (flags & ~NFT_CTX_OUTPUT_JSON);
  nft_ctx_output_set_flags(ctx_, flags);
  const int rc = nft_run_cmd_from_buffer(ctx_, text.c_str());
  std::string out = nft_ctx_get_output_buffer(ctx_);
  std::string err = nft_ctx_get_error_buffer(ctx_);
  nft_ctx_set_dry_run(ctx_, false);
  if (rc != 0) {
    while (!err.empty() && (err.back() == '\n' || err.back() == ' ')) err.pop_back();
    throw Error("nftables: " + (err.empty() ? std::string("the kernel refused the batch") : err));
  }
  return out;
}

void Context::apply(const Batch &batch) {
  if (batch.empty()) return;
  run(batch.text(), false, false);
}

void Context::check(const Batch &batch) {
  if (batch.empty()) return;
  run(batch.text(), true, false);
}

nlohmann::json Context::list_json(std::string_view what) {
  std::string out = run("list " + std::string(what), false, true);
  nlohmann::json doc = nlohmann::json::parse(out, nullptr, false);
  if (doc.is_discarded()) throw Error("nftables: `list " + std::string(what) + "` gave no JSON");
  return doc;
}

bool Context::table_exists(std::string_view family, std::string_view table) {
  std::string out = run("list tables " + std::string(family), false, true);
  nlohmann::json doc = nlohmann::json::parse(out, nullptr, false);
  if (!doc.is_object()) return false;
  for (const auto &item : doc.value("nftables", nlohmann::json::array()))
    if (item.contains("table") && item["table"].value("name", "") == table) return true;
  return false;
}

CommitWatch::CommitWatch() : buf_(1 << 20) {
  fd_ = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd_ < 0) throw Error(std::string("nftables monitor: socket: ") + std::strerror(errno));
  sockaddr_nl sa{};
  sa.nl_family = AF_NETLINK;
  sa.nl_groups = 1u << (NFNLGRP_NFTABLES - 1);
  if (bind(fd_, reinterpret_cast<sockaddr *>(&sa), sizeof sa) != 0) {
    const int e = errno;
    ::close(fd_);
    fd_ = -1;
    throw Error(std::string("nftables monitor: bind NFNLGRP_NFTABLES: ") + std::strerror(e));
  }
  // Element events of a big batch come first; keep room for them.
  int big = 8 << 20;
  setsockopt(fd_, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big);
}

CommitWatch::~CommitWatch() {
  if (fd_ >= 0) ::close(fd_);
}

uint64_t CommitWatch::drain() {
  uint64_t commits = 0;
  for (;;) {
    ssize_t n = recv(fd_, buf_.data(), buf_.size(), 0);
    if (n < 0 && errno == ENOBUFS) {
      ++overruns_;
      continue;
    }
    if (n <= 0) return commits;  // EAGAIN: all read
    int left = static_cast<int>(n);
    for (auto *h = reinterpret_cast<nlmsghdr *>(buf_.data()); NLMSG_OK(h, left);
         h = NLMSG_NEXT(h, left))
      if (NFNL_SUBSYS_ID(h->nlmsg_type) == NFNL_SUBSYS_NFTABLES &&
          NFNL_MSG_TYPE(h->nlmsg_type) == NFT_MSG_NEWGEN)
        ++commits;
  }
}

bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > 32) return false;
  auto alpha = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  if (!alpha(name[0])) return false;
  for (char c : name)
    if (!alpha(c) && !(c >= '0' && c <= '9') && c != '_' && c != '-') return false;
  return true;
}

std::string quote(std::string_view text) {
  for (unsigned char c : text)
    if (c == '"' || c == '\\' || c < 0x20 || c == 0x7f)
      throw Error("nftables: cannot quote \"" + std::string(text) +
                  "\": quotes, backslashes and control characters are refused");
  return "\"" + std::string(text) + "\"";
}

std::vector<nlohmann::json> set_elements(const nlohmann::json &table_doc, std::string_view name) {
  std::vector<nlohmann::json> out;
  if (!table_doc.is_object()) return out;
  for (const auto &item : table_doc.value("nftables", nlohmann::json::array())) {
    const nlohmann::json *s = nullptr;
    if (item.contains("set")) s = &item["set"];
    if (item.contains("map")) s = &item["map"];
    if (!s || s->value("name", "") != name || !s->contains("elem")) continue;
    for (const auto &e : (*s)["elem"]) out.push_back(e);
  }
  return out;
}

}  // namespace flotilla::nft
