// What the write-ahead log holds, and how it is framed on disk.
//
// Frame:   u32 payload_len | u32 crc32c(payload_len bytes, payload) | payload
// Payload: u64 seq | u8 type | fields of the type (byte_codec.h, little endian)
//
// The CRC covers the length too, so a torn or overwritten length is caught
// as surely as a torn payload. seq numbers every record of the store, with
// no gaps, across segments and snapshots.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace flotilla::store_local {

// One key's change inside a revision. Deletions name concrete keys (a
// prefix delete is expanded when planned), so replay never re-evaluates a
// range.
struct Change {
  bool remove = false;
  std::string key;
  std::string value;  // put only
  int64_t lease = 0;  // put only
};

struct Record {
  enum class Type : uint8_t {
    changes = 1,       // revision, changes: one revision's puts and deletes
    lease_grant = 2,   // lease, ttl_seconds
    lease_revoke = 3,  // lease, and (revision, changes) deleting its keys, or revision 0
    compact = 4,       // revision: compaction point asked for by compact()
  };
  Type type = Type::changes;
  int64_t revision = 0;
  std::vector<Change> changes;
  int64_t lease = 0;
  int64_t ttl_seconds = 0;
};

constexpr size_t kFrameHeaderBytes = 8;
// Larger frames are refused when written and treated as damage when read.
constexpr size_t kMaxPayloadBytes = size_t{1} << 30;

// Append one framed record to out. Throws StoreError (E_INVALID) when the
// record is too large to log.
void append_frame(std::string &out, uint64_t seq, const Record &record);

struct LoggedRecord {
  uint64_t seq = 0;
  Record record;
};
// Decode a payload whose CRC already checked out. Throws DecodeError.
LoggedRecord decode_payload(std::string_view payload);

// Walk the frames of one log file. For every frame with a good CRC, calls
// on_frame(payload, offset); stops at the end or at the first damaged
// frame. Returns the length of the intact prefix; *damage (if not null)
// gets a description of what stopped the walk early ("" at a clean end).
// on_frame may throw to stop the walk; the exception propagates.
size_t scan_frames(std::string_view file,
                   const std::function<void(std::string_view payload, size_t offset)> &on_frame,
                   std::string *damage);

}  // namespace flotilla::store_local
