//! The hash functions behind placement. They are specified bit for bit, because the Lua port
//! and any other client must reproduce them exactly.

const FNV32_OFFSET: u32 = 0x811c_9dc5;
const FNV32_PRIME: u32 = 0x0100_0193;
const FNV64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 32-bit FNV-1a of `bytes` (what the `hash` mode reduces modulo the member count).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(FNV32_OFFSET, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(FNV32_PRIME)
    })
}

/// 64-bit FNV-1a of `bytes`: the key fed to [`jump_consistent_hash`].
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV64_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV64_PRIME)
    })
}

/// Jump Consistent Hash (Lamping & Veach, 2014): maps `key` to a bucket in `0..buckets`.
///
/// When `buckets` grows from N to N+1, a key either stays or moves to the new bucket N, so only
/// about 1/(N+1) of the keys move. The floating-point step is part of the algorithm's definition;
/// `f64` is what the paper and every port use. `buckets` of 0 is treated as 1.
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    let buckets = i64::from(buckets.max(1));
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let divisor = ((key >> 33) + 1) as f64;
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / divisor)) as i64;
    }
    // `b` is in 0..buckets, and buckets fits in u32.
    b as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_answers() {
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn jump_never_leaves_the_range() {
        for key in [0, 1, u64::MAX, 0xdead_beef] {
            for buckets in [1, 2, 7, 1000] {
                assert!(jump_consistent_hash(key, buckets) < buckets);
            }
        }
        assert_eq!(jump_consistent_hash(42, 0), 0);
    }
}
