#include "wal_record.h"

#include "byte_codec.h"
#include "crc32c.h"
#include "store_types.h"

namespace flotilla::store_local {
namespace {

void encode_changes(ByteWriter &w, const std::vector<Change> &changes) {
  w.u64(changes.size());
  for (const Change &c : changes) {
    w.u8(c.remove ? 1 : 0);
    w.bytes(c.key);
    if (!c.remove) {
      w.bytes(c.value);
      w.i64(c.lease);
    }
  }
}

std::vector<Change> decode_changes(ByteReader &r) {
  uint64_t n = r.count(5);
  std::vector<Change> out;
  out.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    Change c;
    uint8_t kind = r.u8();
    if (kind > 1) throw DecodeError("unknown change kind " + std::to_string(kind));
    c.remove = kind == 1;
    c.key = r.bytes();
    if (!c.remove) {
      c.value = r.bytes();
      c.lease = r.i64();
    }
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace

void append_frame(std::string &out, uint64_t seq, const Record &record) {
  const size_t start = out.size();
  out.append(kFrameHeaderBytes, '\0');
  ByteWriter w(out);
  w.u64(seq);
  w.u8(static_cast<uint8_t>(record.type));
  switch (record.type) {
    case Record::Type::changes:
      w.i64(record.revision);
      encode_changes(w, record.changes);
      break;
    case Record::Type::lease_grant:
      w.i64(record.lease);
      w.i64(record.ttl_seconds);
      break;
    case Record::Type::lease_revoke:
      w.i64(record.lease);
      w.i64(record.revision);
      encode_changes(w, record.changes);
      break;
    case Record::Type::compact:
      w.i64(record.revision);
      break;
  }
  const size_t len = out.size() - start - kFrameHeaderBytes;
  if (len > kMaxPayloadBytes) {
    out.resize(start);
    throw StoreError(FLOTILLA_E_INVALID, "request too large for one log record (" +
                                             std::to_string(len) + " bytes, at most " +
                                             std::to_string(kMaxPayloadBytes) + ")");
  }
  std::string header;
  ByteWriter h(header);
  h.u32(static_cast<uint32_t>(len));
  uint32_t crc = crc32c(header);
  crc = crc32c_extend(crc, out.data() + start + kFrameHeaderBytes, len);
  h.u32(crc);
  out.replace(start, kFrameHeaderBytes, header);
}

LoggedRecord decode_payload(std::string_view payload) {
  ByteReader r(payload);
  LoggedRecord out;
  out.seq = r.u64();
  uint8_t type = r.u8();
  Record &rec = out.record;
  switch (type) {
    case static_cast<uint8_t>(Record::Type::changes):
      rec.type = Record::Type::changes;
      rec.revision = r.i64();
      rec.changes = decode_changes(r);
      break;
    case static_cast<uint8_t>(Record::Type::lease_grant):
      rec.type = Record::Type::lease_grant;
      rec.lease = r.i64();
      rec.ttl_seconds = r.i64();
      break;
    case static_cast<uint8_t>(Record::Type::lease_revoke):
      rec.type = Record::Type::lease_revoke;
      rec.lease = r.i64();
      rec.revision = r.i64();
      rec.changes = decode_changes(r);
      break;
    case static_cast<uint8_t>(Record::Type::compact):
      rec.type = Record::Type::compact;
      rec.revision = r.i64();
      break;
    default:
      throw DecodeError("unknown record type " + std::to_string(type));
  }
  if (!r.done()) throw DecodeError("trailing bytes after the record");
  return out;
}

size_t scan_frames(std::string_view file,
                   const std::function<void(std::string_view payload, size_t offset)> &on_frame,
                   std::string *damage) {
  size_t pos = 0;
  if (damage) damage->clear();
  while (pos < file.size()) {
    const size_t left = file.size() - pos;
    auto fail = [&](const std::string &why) {
      if (damage) *damage = why + " at offset " + std::to_string(pos);
      return pos;
    };
    if (left < kFrameHeaderBytes) return fail("partial frame header");
    ByteReader h(file.substr(pos, kFrameHeaderBytes));
    const uint32_t len = h.u32();
    const uint32_t crc = h.u32();
    if (len == 0) return fail("empty frame (zero-filled tail?)");
    if (len > kMaxPayloadBytes) return fail("frame length " + std::to_string(len) + " too large");
    if (len > left - kFrameHeaderBytes) return fail("frame runs past the end of the file");
    const std::string_view payload = file.substr(pos + kFrameHeaderBytes, len);
    uint32_t actual = crc32c(file.substr(pos, 4));
    actual = crc32c_extend(actual, payload.data(), payload.size());
    if (actual != crc) return fail("CRC mismatch");
    on_frame(payload, pos);
    pos += kFrameHeaderBytes + len;
  }
  return pos;
}

}  // namespace flotilla::store_local
