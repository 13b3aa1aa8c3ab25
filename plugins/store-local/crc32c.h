// CRC-32C (Castagnoli), the checksum of every log record and snapshot.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace flotilla::store_local {

// crc32c(data) == crc32c_extend(0, data); extend continues a running CRC.
uint32_t crc32c_extend(uint32_t crc, const void *data, size_t len);
inline uint32_t crc32c(std::string_view data) {
  return crc32c_extend(0, data.data(), data.size());
}

}  // namespace flotilla::store_local
