//! The caller credential a connection last proved, so that a client sending
//! the same `authorization` on every call of a connection (as gRPC clients
//! do) pays for parsing and hashing its key once per connection rather than
//! once per call. On the Validate path that was half of keyward's own work.
//!
//! Only the proof that the text is the key whose digest the index holds is
//! skipped: parsing, the checksum and the BLAKE3 digest. The rest runs on
//! every call against the index as it is then. The entry must still be the
//! very one proven: revoking, rotating or updating a key replaces or
//! removes its entry, so the next call is proven from scratch (and refused).
//! Expiry, allow-list and permissions are checked again each time. A
//! different credential on the same connection is proven from scratch and,
//! if valid, replaces the one remembered.
//!
//! The credential's text is kept, to compare the next one with in constant
//! time, for as long as the connection lasts: in memory only, wiped when
//! replaced and when the connection closes. SECURITY.md lists it.

use std::{
    fmt,
    sync::{Arc, PoisonError, RwLock},
};

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::model::IndexedKey;

/// One connection's proven caller credential; see the module docs.
#[derive(Default)]
pub struct ProvenCredential {
    proof: RwLock<Option<Proof>>,
}

/// A credential's text and the index entry it was proven against.
struct Proof {
    text: Box<[u8]>,
    key: Arc<IndexedKey>,
}

impl Drop for Proof {
    fn drop(&mut self) {
        self.text.zeroize();
    }
}

impl ProvenCredential {
    /// The index entry `presented` was proven against, when it is the text
    /// remembered (compared in constant time).
    #[must_use]
    pub fn recall(&self, presented: &str) -> Option<Arc<IndexedKey>> {
        let proof = self.proof.read().unwrap_or_else(PoisonError::into_inner);
        let proof = proof.as_ref()?;
        same_text(&proof.text, presented.as_bytes()).then(|| proof.key.clone())
    }

    /// Remembers that `presented` proved to be `key`'s credential.
    pub fn remember(&self, presented: &str, key: &Arc<IndexedKey>) {
        let proof = Proof {
            text: presented.as_bytes().into(),
            key: key.clone(),
        };
        // The one replaced is wiped as it drops, after the lock is let go.
        let _replaced = self
            .proof
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(proof);
    }
}

/// Whether `a` and `b` are the same bytes, in time that depends on their
/// length only (a key's length is public: it is fixed by the format). In
/// 8-byte words: subtle compares each element of a slice the same way, and
/// a key is some 60 bytes, so words are an eighth of the work.
fn same_text(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |chunk: &[u8]| {
        let mut bytes = [0_u8; 8];
        bytes[..chunk.len()].copy_from_slice(chunk);
        u64::from_ne_bytes(bytes)
    };
    a.chunks(8)
        .zip(b.chunks(8))
        .fold(subtle::Choice::from(1), |same, (x, y)| {
            same & word(x).ct_eq(&word(y))
        })
        .into()
}

/// Names the key remembered, never its text.
impl fmt::Debug for ProvenCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proof = self.proof.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("ProvenCredential")
            .field("key_id", &proof.as_ref().map(|proof| proof.key.id))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_compares_every_byte() {
        let text = b"kw_0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXY";
        assert!(same_text(text, text));
        for i in 0..text.len() {
            let mut other = *text;
            other[i] ^= 1;
            assert!(!same_text(text, &other), "byte {i}");
        }
        assert!(!same_text(text, &text[..text.len() - 1]));
        assert!(same_text(b"", b""));
        assert!(!same_text(b"abc", b"abc\0"));
    }
}
