//! SipHash-2-4 (Aumasson and Bernstein), keyed with 128 bits: a PRF made
//! for short messages, used here as the MAC over client event ids.
//!
//! Kept in-house (forty lines, checked against the reference vectors and
//! std's own SipHash-2-4 in the tests) rather than a dependency. The state
//! is `Clone`: the proxy absorbs a stream's fixed prefix once and clones
//! the state per event.

/// An incremental SipHash-2-4 state.
#[derive(Clone)]
pub(crate) struct SipHasher24 {
    v: [u64; 4],
    /// Bytes not yet absorbed (fewer than 8), little-endian in `tail`.
    tail: u64,
    ntail: usize,
    /// Total bytes written, mod 256 (only the low byte is used).
    len: usize,
}

impl std::fmt::Debug for SipHasher24 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SipHasher24(<keyed>)")
    }
}

#[inline(always)]
fn round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

impl SipHasher24 {
    /// A state keyed with `key` (16 bytes, little-endian halves).
    pub(crate) fn new(key: &[u8; 16]) -> Self {
        let k0 = u64::from_le_bytes(key[..8].try_into().expect("8 bytes"));
        let k1 = u64::from_le_bytes(key[8..].try_into().expect("8 bytes"));
        SipHasher24 {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            ntail: 0,
            len: 0,
        }
    }

    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        round(&mut self.v);
        round(&mut self.v);
        self.v[0] ^= m;
    }

    /// Absorbs `bytes`.
    pub(crate) fn write(&mut self, mut bytes: &[u8]) {
        self.len = self.len.wrapping_add(bytes.len());
        if self.ntail > 0 {
            while self.ntail < 8 {
                let Some((&b, rest)) = bytes.split_first() else {
                    return;
                };
                self.tail |= u64::from(b) << (8 * self.ntail);
                self.ntail += 1;
                bytes = rest;
            }
            let m = self.tail;
            self.compress(m);
            self.tail = 0;
            self.ntail = 0;
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.compress(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        for (i, &b) in chunks.remainder().iter().enumerate() {
            self.tail |= u64::from(b) << (8 * i);
        }
        self.ntail = chunks.remainder().len();
    }

    /// The 64-bit tag of everything written.
    pub(crate) fn finish(mut self) -> u64 {
        let b = ((self.len as u64 & 0xff) << 56) | self.tail;
        self.compress(b);
        self.v[2] ^= 0xff;
        for _ in 0..4 {
            round(&mut self.v);
        }
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> [u8; 16] {
        std::array::from_fn(|i| i as u8)
    }

    #[test]
    fn reference_vectors() {
        // From the SipHash paper's test vectors: key 00..0f, message
        // 00..(n-1).
        let msg: Vec<u8> = (0..64u8).collect();
        let want: [(usize, u64); 4] = [
            (0, 0x726f_db47_dd0e_0e31),
            (1, 0x74f8_39c5_93dc_67fd),
            (8, 0x93f5_f579_9a93_2462),
            (15, 0xa129_ca61_49be_45e5),
        ];
        for (n, tag) in want {
            let mut h = SipHasher24::new(&key());
            h.write(&msg[..n]);
            assert_eq!(h.finish(), tag, "length {n}");
        }
    }

    #[test]
    #[allow(deprecated)]
    fn matches_std_siphash_for_any_split() {
        use std::hash::Hasher;
        let msg: Vec<u8> = (0..100u32).map(|i| (i * 37 % 251) as u8).collect();
        for n in 0..msg.len() {
            let mut reference = std::hash::SipHasher::new_with_keys(
                u64::from_le_bytes(key()[..8].try_into().unwrap()),
                u64::from_le_bytes(key()[8..].try_into().unwrap()),
            );
            reference.write(&msg[..n]);
            for split in [0, n / 3, n / 2, n] {
                let mut h = SipHasher24::new(&key());
                h.write(&msg[..split]);
                let mut from_clone = h.clone();
                h.write(&msg[split..n]);
                from_clone.write(&msg[split..n]);
                assert_eq!(h.finish(), reference.finish(), "n {n} split {split}");
                assert_eq!(from_clone.finish(), reference.finish(), "clone {n}");
            }
        }
    }
}
