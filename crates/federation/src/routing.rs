//! Routing keys and subnets of the Swaptacular Messaging Protocol.
//!
//! A message about a creditor, a debtor or both is routed by a key made from their ids: the
//! top 24 bits of the MD5 digest of the ids (each as 8 bytes, big-endian two's complement),
//! written as 24 words `0` or `1` joined by dots. Topic patterns then pick shards: `0.#`
//! is half of all keys, `1.0.1.#` an eighth.
//!
//! A subnet is a prefix of the 64 bits of an id, written as hex digits (up to 16: `0a1b`
//! is every id whose top 16 bits are `0x0a1b`). Every id in a message from a peer must be
//! in the subnet that peer may speak for; a creditors agent's ids are moved between its
//! own subnet and the one an accounting authority knows it by ([`Subnet::translate`]).

use md5::{Digest, Md5};

/// Words in a routing key.
pub const ROUTING_BITS: usize = 24;

/// The routing key of a message about `ids` (in the order the protocol gives them: the
/// debtor's then the creditor's for an accounting authority, the one id otherwise).
pub fn routing_key(ids: &[i64]) -> String {
    let mut md5 = Md5::new();
    for id in ids {
        md5.update(id.to_be_bytes());
    }
    let digest = md5.finalize();
    let mut key = String::with_capacity(2 * ROUTING_BITS - 1);
    for bit in 0..ROUTING_BITS {
        if bit > 0 {
            key.push('.');
        }
        let set = digest[bit / 8] & (0x80 >> (bit % 8)) != 0;
        key.push(if set { '1' } else { '0' });
    }
    key
}

/// A prefix of the 64 bits of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Subnet {
    value: u64,
    mask: u64,
}

/// A subnet that cannot be read, or used where it does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    #[error("invalid subnet {0:?}: expected up to 16 hex digits, not all of them f")]
    Invalid(String),
    #[error("subnet {0} is not whole bytes, so no binding key selects it")]
    NotBytes(String),
}

impl Subnet {
    /// Every id (the empty prefix).
    pub const ALL: Subnet = Subnet { value: 0, mask: 0 };
    /// Id 0 only (16 zero digits): the creditors an accounting authority's debtors agent
    /// peer may speak for.
    pub const ZERO: Subnet = Subnet {
        value: 0,
        mask: u64::MAX,
    };

    /// Reads a subnet written as up to 16 hex digits (either case); the empty string is
    /// [`Subnet::ALL`]. Sixteen `f`s are refused, as the protocol does.
    pub fn parse(hex: &str) -> Result<Subnet, SubnetError> {
        let invalid = || SubnetError::Invalid(hex.to_owned());
        if hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid());
        }
        if hex.is_empty() {
            return Ok(Subnet::ALL);
        }
        let bits = 4 * hex.len() as u32;
        let digits = u64::from_str_radix(hex, 16).map_err(|_| invalid())?;
        let shift = 64 - bits;
        let value = digits.checked_shl(shift).unwrap_or(0);
        let mask = u64::MAX.checked_shl(shift).unwrap_or(0);
        if value == u64::MAX {
            return Err(invalid());
        }
        Ok(Subnet { value, mask })
    }

    /// The bits an id in the subnet starts with, and which bits those are.
    pub fn value_and_mask(&self) -> (u64, u64) {
        (self.value, self.mask)
    }

    /// Whether id `id` is in the subnet.
    pub fn contains(&self, id: i64) -> bool {
        (id as u64) & self.mask == self.value
    }

    /// The topic pattern that selects the messages routed by an id of the subnet through a
    /// topic exchange keyed by the id's bytes in hex (`0a.1b.#`): each whole byte of the
    /// prefix a word, then `#` unless the prefix is the whole id.
    pub fn binding_key(&self) -> Result<String, SubnetError> {
        let (value, mask) = (self.value.to_be_bytes(), self.mask.to_be_bytes());
        let mut words = Vec::new();
        for (v, m) in value.iter().zip(mask) {
            match m {
                0 => break,
                0xff => words.push(format!("{v:02x}")),
                _ => return Err(SubnetError::NotBytes(self.to_string())),
            }
        }
        if words.len() < 8 {
            words.push("#".into());
        }
        Ok(words.join("."))
    }

    /// Moves `id`, which must be in `self`, to the same place in `to` (a creditors agent's
    /// creditor ids between its own subnet and the one a peer knows it by). `None` if `id`
    /// is not in `self` or the two prefixes differ in length.
    pub fn translate(&self, id: i64, to: &Subnet) -> Option<i64> {
        if self.mask != to.mask || !self.contains(id) {
            return None;
        }
        Some((to.value | (id as u64 & !self.mask)) as i64)
    }
}

impl std::fmt::Display for Subnet {
    /// As written in the node database: the prefix's hex digits.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = (self.mask.count_ones() / 4) as usize;
        let hex = format!("{:016x}", self.value);
        f.write_str(&hex[..digits])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_123: &str = "1.1.1.1.1.1.0.0.0.0.0.1.0.0.0.0.0.1.1.0.0.0.1.1";
    const VECTOR_MINUS_123: &str = "1.1.0.0.0.0.1.1.1.1.1.1.1.1.1.0.1.0.1.0.1.1.1.1";
    const VECTOR_0: &str = "0.1.1.1.1.1.0.1.1.1.1.0.1.0.1.0.0.0.1.1.0.1.1.0";
    const VECTOR_MIN_MAX: &str = "0.0.0.0.0.0.1.0.1.1.1.0.1.0.1.0.0.0.1.0.1.1.0.0";

    /// Vectors computed from the definition with Python's `hashlib` (md5 over
    /// `n.to_bytes(8, "big", signed=True)` of each id, top 24 bits), and the one the
    /// protocol's documentation gives for (123, 456).
    #[test]
    fn routing_keys_are_the_top_24_bits_of_the_md5_of_the_ids() {
        let cases: &[(&[i64], &str)] = &[
            (
                &[123, 456],
                "0.0.0.0.1.0.0.0.0.1.0.0.0.1.0.0.0.0.1.1.0.1.0.0",
            ),
            (&[123], VECTOR_123),
            (&[-123], VECTOR_MINUS_123),
            (&[0], VECTOR_0),
            (&[i64::MIN, i64::MAX], VECTOR_MIN_MAX),
        ];
        for (ids, key) in cases {
            assert_eq!(routing_key(ids), *key, "{ids:?}");
        }
    }

    #[test]
    fn subnets_read_match_and_bind_as_prefixes() {
        let s = Subnet::parse("0a1b").expect("valid");
        assert_eq!(s.value_and_mask(), (0x0a1b << 48, 0xffff << 48));
        assert!(s.contains(0x0a1b_0000_0000_0001));
        assert!(!s.contains(0x0a1c_0000_0000_0001));
        assert_eq!(s.binding_key().as_deref(), Ok("0a.1b.#"));
        assert_eq!(s.to_string(), "0a1b");
        assert_eq!(Subnet::parse(""), Ok(Subnet::ALL));
        assert!(Subnet::ALL.contains(i64::MIN) && Subnet::ALL.contains(-1));
        assert_eq!(Subnet::ALL.binding_key().as_deref(), Ok("#"));
        assert_eq!(Subnet::parse("0000000000000000"), Ok(Subnet::ZERO));
        assert!(Subnet::ZERO.contains(0) && !Subnet::ZERO.contains(1));
        assert_eq!(
            Subnet::ZERO.binding_key().as_deref(),
            Ok("00.00.00.00.00.00.00.00")
        );
        // Negative ids are their two's complement bits.
        let high = Subnet::parse("ff").expect("valid");
        assert!(high.contains(-1) && high.contains(i64::MIN | 0x7f00_0000_0000_0000));
        assert!(!high.contains(1));
        // An odd number of digits has no binding key.
        assert!(matches!(
            Subnet::parse("a").expect("valid").binding_key(),
            Err(SubnetError::NotBytes(_))
        ));
        for bad in [
            "ffffffffffffffff",
            "0a1b0a1b0a1b0a1b0",
            "0x1a",
            "g",
            " 1",
            "1_0",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Subnet::parse("fffffffffffffffe").is_ok());
    }

    #[test]
    fn translate_moves_an_id_between_subnets_of_one_length() {
        let ours = Subnet::parse("0000010000").expect("valid");
        let theirs = Subnet::parse("0000020000").expect("valid");
        let id = 0x0000_0100_0000_1234;
        assert_eq!(ours.translate(id, &theirs), Some(0x0000_0200_0000_1234));
        assert_eq!(theirs.translate(0x0000_0200_0000_1234, &ours), Some(id));
        assert_eq!(theirs.translate(id, &ours), None, "not in the subnet");
        let shorter = Subnet::parse("00000100").expect("valid");
        assert_eq!(ours.translate(id, &shorter), None, "another length");
    }
}
