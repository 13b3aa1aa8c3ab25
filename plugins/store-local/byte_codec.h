// Little-endian binary encoding of log records and snapshots. The decoder
// checks every bound and throws DecodeError instead of reading past the end,
// so a damaged file is reported, never trusted.
#pragma once

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <string_view>

namespace flotilla::store_local {

class DecodeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class ByteWriter {
 public:
  explicit ByteWriter(std::string &out) : out_(out) {}

  void u8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u32(uint32_t v) { fixed(v, 4); }
  void u64(uint64_t v) { fixed(v, 8); }
  void i64(int64_t v) { fixed(static_cast<uint64_t>(v), 8); }
  // Length-prefixed bytes (u32 length).
  void bytes(std::string_view s) {
    if (s.size() > UINT32_MAX) throw std::length_error("byte string longer than 4 GiB");
    u32(static_cast<uint32_t>(s.size()));
    out_.append(s);
  }

 private:
  void fixed(uint64_t v, int n) {
    char b[8];
    for (int i = 0; i < n; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
    out_.append(b, n);
  }
  std::string &out_;
};

class ByteReader {
 public:
  explicit ByteReader(std::string_view in) : in_(in) {}

  uint8_t u8() { return static_cast<uint8_t>(fixed(1)); }
  uint32_t u32() { return static_cast<uint32_t>(fixed(4)); }
  uint64_t u64() { return fixed(8); }
  int64_t i64() { return static_cast<int64_t>(fixed(8)); }
  std::string_view bytes() {
    uint32_t n = u32();
    need(n);
    std::string_view s = in_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  // A count of items that each take at least min_item_bytes; refuses counts
  // the remaining input cannot hold, so a damaged count cannot make the
  // reader reserve gigabytes.
  uint64_t count(size_t min_item_bytes) {
    uint64_t n = u64();
    if (min_item_bytes && n > remaining() / min_item_bytes)
      throw DecodeError("item count " + std::to_string(n) + " exceeds the data");
    return n;
  }
  size_t remaining() const { return in_.size() - pos_; }
  bool done() const { return pos_ == in_.size(); }

 private:
  void need(size_t n) const {
    if (in_.size() - pos_ < n) throw DecodeError("truncated data");
  }
  uint64_t fixed(int n) {
    need(n);
    uint64_t v = 0;
    for (int i = 0; i < n; ++i)
      v |= static_cast<uint64_t>(static_cast<unsigned char>(in_[pos_ + i])) << (8 * i);
    pos_ += n;
    return v;
  }
  std::string_view in_;
  size_t pos_ = 0;
};

}  // namespace flotilla::store_local
