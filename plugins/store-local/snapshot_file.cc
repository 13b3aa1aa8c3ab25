#include "snapshot_file.h"

#include "byte_codec.h"
#include "crc32c.h"
#include "store_state.h"

namespace flotilla::store_local {
namespace {
constexpr std::string_view kMagic = "FLSNAP01";
constexpr size_t kHeaderBytes = 8 + 4 + 8;
}  // namespace

std::string encode_snapshot_file(uint64_t seq, const StoreState &state) {
  std::string out(kHeaderBytes, '\0');
  ByteWriter w(out);
  w.u64(seq);
  state.encode_snapshot(w);
  std::string_view body = std::string_view(out).substr(kHeaderBytes);
  std::string header(kMagic);
  ByteWriter h(header);
  h.u32(crc32c(body));
  h.u64(body.size());
  out.replace(0, kHeaderBytes, header);
  return out;
}

uint64_t decode_snapshot_file(std::string_view file, StoreState &state, Clock::time_point now) {
  if (file.size() < kHeaderBytes || file.substr(0, kMagic.size()) != kMagic)
    throw DecodeError("not a store-local snapshot (bad magic)");
  ByteReader h(file.substr(kMagic.size(), kHeaderBytes - kMagic.size()));
  const uint32_t crc = h.u32();
  const uint64_t len = h.u64();
  std::string_view body = file.substr(kHeaderBytes);
  if (len != body.size())
    throw DecodeError("snapshot is " + std::to_string(body.size()) + " bytes after its header, " +
                      "the header says " + std::to_string(len));
  if (crc32c(body) != crc) throw DecodeError("snapshot CRC mismatch");
  ByteReader r(body);
  const uint64_t seq = r.u64();
  StoreState restored;
  restored.restore_snapshot(r, now);
  state = std::move(restored);
  return seq;
}

}  // namespace flotilla::store_local
