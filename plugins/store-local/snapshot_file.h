// The snapshot file: the whole store state as of one log sequence number.
//
//   "FLSNAP01" | u32 crc32c(body) | u64 body_len | body
//   body: u64 seq | StoreState::encode_snapshot()
//
// Written to a temporary name, fsynced, renamed into place and the
// directory fsynced, so a snapshot on disk is either whole or absent.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "lease_table.h"

namespace flotilla::store_local {

class StoreState;

std::string encode_snapshot_file(uint64_t seq, const StoreState &state);

// Restore state from a snapshot file's bytes; returns its seq. Throws
// DecodeError when the file is damaged (state is then unchanged).
uint64_t decode_snapshot_file(std::string_view file, StoreState &state, Clock::time_point now);

}  // namespace flotilla::store_local
