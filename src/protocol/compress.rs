//! lz4 for binary payloads, in the block format with the uncompressed size
//! prepended (`lz4_flex::compress_prepend_size`), as the protocol specifies.

/// Why a compressed payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Lz4Error {
    #[error("lz4 payload would expand to {size} bytes, over the {max} byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("corrupt lz4 payload: {0}")]
    Corrupt(String),
}

/// Compresses a payload.
pub fn compress(payload: &[u8]) -> Vec<u8> {
    lz4_flex::compress_prepend_size(payload)
}

/// Decompresses a payload, refusing to expand past `max_bytes` before any
/// memory is allocated for it.
pub fn decompress(compressed: &[u8], max_bytes: usize) -> Result<Vec<u8>, Lz4Error> {
    let (size, _) = lz4_flex::block::uncompressed_size(compressed)
        .map_err(|e| Lz4Error::Corrupt(e.to_string()))?;
    if size > max_bytes {
        return Err(Lz4Error::TooLarge {
            size,
            max: max_bytes,
        });
    }
    let plain = lz4_flex::decompress_size_prepended(compressed)
        .map_err(|e| Lz4Error::Corrupt(e.to_string()))?;
    // lz4_flex stops at the end of the input: a truncated stream decodes to
    // fewer bytes than announced, which is corruption too.
    if plain.len() != size {
        return Err(Lz4Error::Corrupt(format!(
            "announced {size} bytes, decoded {}",
            plain.len()
        )));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let c = compress(&data);
        assert!(c.len() < data.len());
        assert_eq!(decompress(&c, 1 << 20).unwrap(), data);
    }

    #[test]
    fn refuses_bombs_and_garbage() {
        let c = compress(&vec![0u8; 100_000]);
        assert!(matches!(
            decompress(&c, 1000),
            Err(Lz4Error::TooLarge { size: 100_000, .. })
        ));
        assert!(matches!(
            decompress(&[1, 2], 1000),
            Err(Lz4Error::Corrupt(_))
        ));
        assert!(matches!(
            decompress(b"\x10\x00\x00\x00garbage", 1000),
            Err(Lz4Error::Corrupt(_))
        ));
        let mut bad = compress(b"hello hello hello hello hello");
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        bad.truncate(bad.len() - 3);
        assert!(decompress(&bad, 1000).is_err());
    }
}
