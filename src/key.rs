//! The key format: `<prefix>_<body>`.
//!
//! The body is 50 base62 characters made of three fixed-width parts:
//!
//! | part | bits | characters | role |
//! | --- | --- | --- | --- |
//! | key id | 64 | 11 | the public selector, looked up in the index |
//! | secret | 192 | 33 (three 64-bit words) | the verifier; only its digest is stored |
//! | checksum | 32 | 6 | CRC-32 of everything before it, so typos and truncations are refused before any lookup |
//!
//! Fixed widths make the body parseable without separators, so a key is one
//! "word" that double-click selects and that [`KEY_REGEX`] finds in logs and
//! repositories. CRC-32 (rather than a truncated hash) is used because it
//! *guarantees* detection of every single-character substitution and every
//! adjacent transposition: both are bursts shorter than 32 bits.
//!
//! Invariant: never change the widths, the alphabet or the checksum input:
//! keys minted by every earlier version must keep parsing.

use std::{fmt, str::FromStr};

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// The prefix used when a mint request names none.
pub const DEFAULT_PREFIX: &str = "kw";

/// A regular expression that matches every keyward key, for secret scanners
/// (GitHub push protection, gitleaks, trufflehog). Documented in the README.
pub const KEY_REGEX: &str = r"\b[a-z][a-z0-9]{0,15}_[0-9A-Za-z]{50}\b";

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Base62 characters needed for any `u64` (62^11 > 2^64 > 62^10).
const WORD_CHARS: usize = 11;
const SECRET_WORDS: usize = 3;
const SECRET_BYTES: usize = SECRET_WORDS * 8;
const CHECKSUM_CHARS: usize = 6;
const ID_END: usize = WORD_CHARS;
const SECRET_END: usize = ID_END + SECRET_WORDS * WORD_CHARS;
/// Length of a key id as text.
pub const KEY_ID_CHARS: usize = WORD_CHARS;
/// Length of the body after `<prefix>_`.
pub const BODY_CHARS: usize = SECRET_END + CHECKSUM_CHARS;
const MAX_PREFIX_CHARS: usize = 16;

/// BLAKE3 `derive_key` context: domain-separates key digests from any other
/// use of BLAKE3. Changing it invalidates every stored digest.
const DIGEST_CONTEXT: &str = "keyward 2026-11-29 api key secret digest v1";

/// Why a presented string is not a well-formed key. Only ever logged, never
/// shown to a Validate caller (who learns just `INVALID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// No `_` separates a prefix from the body.
    #[error("key has no `<prefix>_` part")]
    MissingSeparator,
    /// The prefix breaks the prefix grammar.
    #[error("key prefix is not `[a-z][a-z0-9]{{0,15}}`")]
    BadPrefix,
    /// The body has the wrong length or a character outside base62.
    #[error("key body is not {BODY_CHARS} base62 characters")]
    BadBody,
    /// A typo or a truncated copy: the CRC-32 in the body does not match.
    #[error("key checksum does not match")]
    BadChecksum,
}

/// Why a string is not a valid key prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "prefix must match [a-z][a-z0-9]{{0,15}} (a lowercase letter, then up to 15 lowercase letters or digits)"
)]
pub struct InvalidPrefix;

/// A key prefix such as `kw` or `ci`: `[a-z][a-z0-9]{0,15}`. It tells a
/// reader (and a secret scanner) what a leaked key belongs to.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Prefix(String);

impl Prefix {
    /// The prefix as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn is_valid(s: &str) -> bool {
        let bytes = s.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= MAX_PREFIX_CHARS
            && bytes[0].is_ascii_lowercase()
            && bytes[1..]
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    }
}

impl Default for Prefix {
    fn default() -> Self {
        Self(DEFAULT_PREFIX.to_owned())
    }
}

impl FromStr for Prefix {
    type Err = InvalidPrefix;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if Self::is_valid(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidPrefix)
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix({})", self.0)
    }
}

/// Why a string is not a key id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key id must be {WORD_CHARS} base62 characters")]
pub struct InvalidKeyId;

/// The public id of a key (the selector): 64 random bits, shown as 11 base62
/// characters. It is not secret: it appears in logs, audit records and the
/// key itself, right after `<prefix>_`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(u64);

/// A map keyed by key id, hashed with foldhash rather than std's default
/// hasher: every Validate looks ids up in the index and in the rate limiter,
/// and hashing a `u64` the default way cost more than the lookup itself.
/// Still seeded at random per process, so the ids a client presents cannot
/// be picked to collide.
pub type KeyMap<V> = std::collections::HashMap<KeyId, V, HotPathHasher>;

/// The hasher of [`KeyMap`] and of the other maps read on every Validate or
/// gateway check (the rate limiters', by limit then by key id; a gateway's
/// routes): foldhash, seeded at random per process.
pub type HotPathHasher = foldhash::fast::RandomState;

impl KeyId {
    /// A fresh random id from the OS CSPRNG.
    ///
    /// # Errors
    /// When the OS random source fails.
    pub fn random() -> Result<Self, getrandom::Error> {
        getrandom::u64().map(Self)
    }

    /// An id from its numeric value (for tests and benchmarks).
    #[must_use]
    pub const fn from_u64(value: u64) -> Self {
        Self(value)
    }

    fn to_chars(self) -> [u8; WORD_CHARS] {
        encode_word(self.0)
    }

    /// The id as text, as `Display` writes it, without going through the
    /// formatting machinery: every Validate response carries one.
    ///
    /// # Panics
    /// Never: the alphabet is ASCII.
    #[must_use]
    pub fn text(self) -> String {
        String::from_utf8(self.to_chars().to_vec()).expect("the alphabet is ASCII")
    }

    /// The id's text as ASCII bytes, for writers that need no `String`.
    #[must_use]
    pub fn ascii(self) -> [u8; KEY_ID_CHARS] {
        self.to_chars()
    }
}

impl FromStr for KeyId {
    type Err = InvalidKeyId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_word(s.as_bytes()).map(Self).ok_or(InvalidKeyId)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The alphabet is ASCII, so this never fails.
        f.write_str(std::str::from_utf8(&self.to_chars()).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A full plaintext key. It exists only between mint (or rotate) and the
/// response that shows it once: it has no `Display`, its `Debug` is redacted
/// and its memory is wiped on drop.
#[derive(Clone)]
pub struct PlaintextKey(String);

impl Drop for PlaintextKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl PlaintextKey {
    /// The key text, for the one place that must show it (a mint or rotate
    /// response, or a file written with mode 0600).
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PlaintextKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlaintextKey(<redacted>)")
    }
}

/// BLAKE3 digest of a key's prefix, id and secret: the only form in which a
/// key is stored. Comparing two digests is constant-time.
#[derive(Clone, Copy)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// Rebuilds a digest read back from the database.
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest, for storage.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A digest no secret hashes to in practice, compared against when the
    /// key id is unknown so that unknown ids cost the same time as known ones.
    #[must_use]
    pub const fn dummy() -> Self {
        Self([0x5a; 32])
    }

    /// Constant-time equality: the time taken does not depend on how many
    /// leading bytes match, so a caller cannot guess a digest byte by byte.
    ///
    /// # Panics
    /// Never: a digest is four 8-byte words.
    #[must_use]
    pub fn ct_eq(&self, other: &Self) -> bool {
        // Compared as four words rather than 32 bytes: subtle's slice
        // comparison is as constant-time either way (every element is
        // compared, the results combined without branching), with an
        // eighth of the work; every Validate compares two digests.
        let words = |digest: &Self| -> [u64; 4] {
            std::array::from_fn(|i| {
                u64::from_ne_bytes(digest.0[i * 8..(i + 1) * 8].try_into().expect("8 bytes"))
            })
        };
        words(self)[..].ct_eq(&words(other)[..]).into()
    }
}

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyDigest(..)")
    }
}

/// A freshly generated key: its id, the plaintext to show once, and the
/// digest to store.
#[derive(Debug)]
pub struct MintedKey {
    /// Public, and the index's lookup key.
    pub id: KeyId,
    /// What the key starts with, chosen at mint.
    pub prefix: Prefix,
    /// The whole key, shown to the minting caller once and never stored.
    pub plaintext: PlaintextKey,
    /// What the database keeps instead of the secret.
    pub digest: KeyDigest,
}

impl MintedKey {
    /// Generates a key with the given prefix: random id and secret from the
    /// OS CSPRNG.
    ///
    /// # Errors
    /// When the OS random source fails; keyward then refuses to mint rather
    /// than fall back to a weaker source.
    pub fn generate(prefix: &Prefix) -> Result<Self, getrandom::Error> {
        let id = KeyId::random()?;
        let mut secret = Secret([0; SECRET_BYTES]);
        getrandom::fill(&mut secret.0)?;

        let mut text = String::with_capacity(prefix.0.len() + 1 + BODY_CHARS);
        text.push_str(&prefix.0);
        text.push('_');
        push_ascii(&mut text, &id.to_chars());
        for word in secret.words() {
            push_ascii(&mut text, &encode_word(word));
        }
        let checksum = crc32fast::hash(text.as_bytes());
        push_ascii(&mut text, &encode_checksum(checksum));

        let digest = digest(&prefix.0, id, &secret);
        Ok(Self {
            id,
            prefix: prefix.clone(),
            plaintext: PlaintextKey(text),
            digest,
        })
    }
}

/// The verifier part of a key. Wiped on drop.
struct Secret([u8; SECRET_BYTES]);

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Secret {
    fn words(&self) -> impl Iterator<Item = u64> + '_ {
        self.0
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().expect("chunks of 8")))
    }
}

/// A presented key whose format and checksum are correct. Parsing costs no
/// lookup, so malformed input is refused before touching the index.
pub struct ParsedKey<'a> {
    prefix: &'a str,
    id: KeyId,
    secret: Secret,
}

impl<'a> ParsedKey<'a> {
    /// Parses `<prefix>_<body>` and checks the checksum.
    ///
    /// # Errors
    /// A [`FormatError`] naming what is wrong; it never contains the input.
    pub fn parse(key: &'a str) -> Result<Self, FormatError> {
        // The separator is within the first 17 bytes of any key: looked
        // for there first, byte by byte (cheaper than a general search).
        let separator = key
            .bytes()
            .take(MAX_PREFIX_CHARS + 1)
            .position(|b| b == b'_')
            .or_else(|| key.find('_'))
            .ok_or(FormatError::MissingSeparator)?;
        let (prefix, body) = (&key[..separator], &key[separator + 1..]);
        if !Prefix::is_valid(prefix) {
            return Err(FormatError::BadPrefix);
        }
        let body = body.as_bytes();
        if body.len() != BODY_CHARS {
            return Err(FormatError::BadBody);
        }
        let id = decode_word(&body[..ID_END]).ok_or(FormatError::BadBody)?;
        let mut secret = Secret([0; SECRET_BYTES]);
        for (i, chunk) in body[ID_END..SECRET_END]
            .chunks_exact(WORD_CHARS)
            .enumerate()
        {
            let word = decode_word(chunk).ok_or(FormatError::BadBody)?;
            secret.0[i * 8..(i + 1) * 8].copy_from_slice(&word.to_be_bytes());
        }
        let checksum = decode_checksum(&body[SECRET_END..]).ok_or(FormatError::BadBody)?;
        let checked_len = prefix.len() + 1 + SECRET_END;
        if crc32fast::hash(&key.as_bytes()[..checked_len]) != checksum {
            return Err(FormatError::BadChecksum);
        }
        Ok(Self {
            prefix,
            id: KeyId(id),
            secret,
        })
    }

    /// The public key id.
    #[must_use]
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The digest to compare with the stored one.
    #[must_use]
    pub fn digest(&self) -> KeyDigest {
        digest(self.prefix, self.id, &self.secret)
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("prefix", &self.prefix)
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Binds prefix and id into the digest, so a stored digest verifies only the
/// exact key it was made for (a right secret under a wrong prefix fails).
///
/// Every Validate computes two of these (the caller's key and the presented
/// one), so the work that does not depend on the key is done once: the
/// context key that `derive_key` mode derives from [`DIGEST_CONTEXT`] is
/// computed at first use (`blake3::hazmat`, same result as
/// `Hasher::new_derive_key`), and the input, at most 49 bytes, goes in with
/// one `update` from a buffer that is wiped afterwards.
fn digest(prefix: &str, id: KeyId, secret: &Secret) -> KeyDigest {
    use blake3::hazmat::HasherExt as _;
    static CONTEXT_KEY: std::sync::LazyLock<blake3::hazmat::ContextKey> =
        std::sync::LazyLock::new(|| blake3::hazmat::hash_derive_key_context(DIGEST_CONTEXT));
    const MAX_INPUT: usize = MAX_PREFIX_CHARS + 1 + 8 + SECRET_BYTES;
    let mut input = zeroize::Zeroizing::new([0_u8; MAX_INPUT]);
    let prefix = prefix.as_bytes();
    let id_at = prefix.len() + 1;
    let secret_at = id_at + 8;
    let end = secret_at + SECRET_BYTES;
    input[..prefix.len()].copy_from_slice(prefix);
    input[id_at..secret_at].copy_from_slice(&id.0.to_be_bytes());
    input[secret_at..end].copy_from_slice(&secret.0);
    let mut hasher = blake3::Hasher::new_from_context_key(&CONTEXT_KEY);
    hasher.update(&input[..end]);
    KeyDigest(*hasher.finalize().as_bytes())
}

fn push_ascii(out: &mut String, chars: &[u8]) {
    out.extend(chars.iter().map(|&b| char::from(b)));
}

fn encode_word(mut value: u64) -> [u8; WORD_CHARS] {
    let mut out = [b'0'; WORD_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    out
}

fn encode_checksum(value: u32) -> [u8; CHECKSUM_CHARS] {
    let word = encode_word(u64::from(value));
    // A u32 needs 6 base62 characters; the leading 5 of the word are '0'.
    word[WORD_CHARS - CHECKSUM_CHARS..]
        .try_into()
        .expect("slice of CHECKSUM_CHARS")
}

/// The value of each base62 character, `NOT_BASE62` for any other byte: a
/// table, because every Validate decodes 61 characters (two keys' ids,
/// secrets and checksums) and a lookup is cheaper than three range tests.
const DIGITS: [u8; 256] = {
    let mut table = [NOT_BASE62; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        #[allow(clippy::cast_possible_truncation)] // i < 62
        {
            table[ALPHABET[i] as usize] = i as u8;
        }
        i += 1;
    }
    table
};
const NOT_BASE62: u8 = 0xff;

fn digit(c: u8) -> Option<u64> {
    match DIGITS[usize::from(c)] {
        NOT_BASE62 => None,
        d => Some(u64::from(d)),
    }
}

/// Decodes fixed-width base62; `None` on a bad character, a wrong length or
/// a value that overflows `u64` (not every 11-character string is a word).
fn decode_word(chars: &[u8]) -> Option<u64> {
    if chars.len() != WORD_CHARS {
        return None;
    }
    // Ten digits never overflow (62^10 < 2^64); only the last can.
    let (head, last) = chars.split_at(WORD_CHARS - 1);
    let head = head
        .iter()
        .try_fold(0u64, |acc, &c| Some(acc * 62 + digit(c)?))?;
    head.checked_mul(62)?.checked_add(digit(last[0])?)
}

fn decode_checksum(chars: &[u8]) -> Option<u32> {
    let value = chars
        .iter()
        .try_fold(0u64, |acc, &c| Some(acc * 62 + digit(c)?))?;
    u32::try_from(value).ok()
}

/// A well-formed key (valid checksum) with `id`'s key id and the secret of
/// `donor`: the "right id, wrong secret" case, for tests of other layers.
/// Outside this crate only through `testing::forge`.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn forge(id: KeyId, donor: &str) -> String {
    let prefix = donor.split_once('_').expect("a key").0;
    let secret = &donor[prefix.len() + 1 + ID_END..prefix.len() + 1 + SECRET_END];
    let mut text = format!("{prefix}_{id}{secret}");
    let checksum = crc32fast::hash(text.as_bytes());
    push_ascii(&mut text, &encode_checksum(checksum));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mint(prefix: &str) -> MintedKey {
        MintedKey::generate(&prefix.parse().unwrap()).unwrap()
    }

    /// Searches like a secret scanner does: anywhere in the text.
    fn key_regex_matches(text: &str) -> bool {
        regex::Regex::new(KEY_REGEX).unwrap().is_match(text)
    }

    #[test]
    fn generated_keys_round_trip() {
        for prefix in ["kw", "a", "ci", "abcdefghijklmnop", "x9"] {
            let minted = mint(prefix);
            let text = minted.plaintext.expose();
            assert_eq!(text.len(), prefix.len() + 1 + BODY_CHARS);
            let parsed = ParsedKey::parse(text).unwrap();
            assert_eq!(parsed.id(), minted.id);
            assert!(parsed.digest().ct_eq(&minted.digest));
            assert!(text.starts_with(&format!("{prefix}_{}", minted.id)));
        }
    }

    #[test]
    fn prefixes_are_validated() {
        for good in ["kw", "a", "a0", "abcdefghijklmnop"] {
            assert!(good.parse::<Prefix>().is_ok(), "{good}");
        }
        for bad in [
            "",
            "0a",
            "Kw",
            "k_w",
            "abcdefghijklmnopq",
            "kw-",
            "é",
            " kw",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_keys_are_named() {
        let good = mint("kw");
        let text = good.plaintext.expose();
        let cases: &[(&str, FormatError)] = &[
            ("", FormatError::MissingSeparator),
            ("kwabc", FormatError::MissingSeparator),
            ("KW_abc", FormatError::BadPrefix),
            ("_abc", FormatError::BadPrefix),
            ("kw_abc", FormatError::BadBody),
            (&text[..text.len() - 1], FormatError::BadBody),
        ];
        for (input, expected) in cases {
            assert_eq!(ParsedKey::parse(input).unwrap_err(), *expected);
        }
        let non_ascii = format!("{}é", &text[..text.len() - 2]);
        assert_eq!(
            ParsedKey::parse(&non_ascii).unwrap_err(),
            FormatError::BadBody
        );
        let huge = format!("kw_{}", "a".repeat(100 * 1024));
        assert_eq!(ParsedKey::parse(&huge).unwrap_err(), FormatError::BadBody);
        // An 11-character word above u64::MAX is malformed, not wrapped.
        let overflow = format!("kw_zzzzzzzzzzz{}", &text[3 + WORD_CHARS..]);
        assert_eq!(
            ParsedKey::parse(&overflow).unwrap_err(),
            FormatError::BadBody
        );
    }

    #[test]
    fn right_secret_under_another_prefix_has_another_digest() {
        let minted = mint("kw");
        let body = &minted.plaintext.expose()[3..SECRET_END + 3];
        let mut forged = format!("ci_{body}");
        let checksum = crc32fast::hash(forged.as_bytes());
        push_ascii(&mut forged, &encode_checksum(checksum));
        let parsed = ParsedKey::parse(&forged).unwrap();
        assert_eq!(parsed.id(), minted.id);
        assert!(!parsed.digest().ct_eq(&minted.digest));
    }

    /// Stored digests must keep verifying: the precomputed context key and
    /// the single update give exactly BLAKE3's `derive_key` of prefix, a
    /// zero byte, the id (big-endian) and the secret, for prefixes of every
    /// length.
    #[test]
    fn digest_is_blake3_derive_key_of_prefix_id_and_secret() {
        for prefix in ["k", "kw", "abcdefghijklmnop"] {
            let secret = Secret(std::array::from_fn(|i| u8::try_from(i * 7).unwrap()));
            let id = KeyId(0x0123_4567_89ab_cdef);
            let mut input = prefix.as_bytes().to_vec();
            input.push(0);
            input.extend_from_slice(&id.0.to_be_bytes());
            input.extend_from_slice(&secret.0);
            let expected = blake3::derive_key(DIGEST_CONTEXT, &input);
            assert_eq!(
                digest(prefix, id, &secret).as_bytes(),
                &expected,
                "{prefix}"
            );
        }
    }

    #[test]
    fn base62_digits_are_the_alphabet_and_nothing_else() {
        for byte in 0..=u8::MAX {
            let expected = ALPHABET
                .iter()
                .position(|&c| c == byte)
                .map(|i| u64::try_from(i).unwrap());
            assert_eq!(digit(byte), expected, "{byte}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let minted = mint("kw");
        let text = minted.plaintext.expose().to_owned();
        let secret_part = &text[3 + ID_END..3 + SECRET_END];
        let printed = format!("{minted:?} {:?}", ParsedKey::parse(&text).unwrap());
        assert!(!printed.contains(secret_part), "{printed}");
        assert!(printed.contains("redacted"));
    }

    #[test]
    fn mints_never_share_an_id() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(mint("kw").id));
        }
    }

    #[test]
    fn word_encoding_edges() {
        for value in [0, 1, 61, 62, u64::from(u32::MAX), u64::MAX - 1, u64::MAX] {
            assert_eq!(decode_word(&encode_word(value)), Some(value));
        }
        assert_eq!(decode_checksum(&encode_checksum(u32::MAX)), Some(u32::MAX));
        assert_eq!(decode_checksum(b"zzzzzz"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_single_substitution_is_refused(prefix in "[a-z][a-z0-9]{0,15}") {
            let minted = mint(&prefix);
            let text = minted.plaintext.expose().as_bytes().to_vec();
            for pos in 0..text.len() {
                for &c in ALPHABET.iter().chain(b"_-") {
                    if c == text[pos] {
                        continue;
                    }
                    let mut typo = text.clone();
                    typo[pos] = c;
                    let typo = String::from_utf8(typo).unwrap();
                    prop_assert!(ParsedKey::parse(&typo).is_err(), "accepted {typo}");
                }
            }
        }

        #[test]
        fn every_adjacent_transposition_is_refused(prefix in "[a-z][a-z0-9]{0,15}") {
            let minted = mint(&prefix);
            let text = minted.plaintext.expose().as_bytes().to_vec();
            for pos in 0..text.len() - 1 {
                if text[pos] == text[pos + 1] {
                    continue;
                }
                let mut swapped = text.clone();
                swapped.swap(pos, pos + 1);
                let swapped = String::from_utf8(swapped).unwrap();
                prop_assert!(ParsedKey::parse(&swapped).is_err(), "accepted {swapped}");
            }
        }

        #[test]
        fn regex_matches_every_generated_key(prefix in "[a-z][a-z0-9]{0,15}") {
            let minted = mint(&prefix);
            let text = minted.plaintext.expose();
            prop_assert!(key_regex_matches(text));
            let found = regex::Regex::new(KEY_REGEX).unwrap();
            let embedded = format!("export TOKEN={text}\n");
            prop_assert_eq!(found.find(&embedded).map(|m| m.as_str()), Some(text));
        }

        #[test]
        fn parse_never_panics(input in "\\PC{0,80}") {
            let _ = ParsedKey::parse(&input);
        }

        #[test]
        fn key_id_text_round_trips(raw in any::<u64>()) {
            let id = KeyId(raw);
            prop_assert_eq!(id.to_string().parse::<KeyId>(), Ok(id));
        }

        /// Any text at all, control characters and invalid-UTF-8
        /// replacements included: every parser answers, none panics, and
        /// what they accept prints back as it came (so it is canonical).
        #[test]
        fn parsers_answer_any_text(input in hostile_text()) {
            if let Ok(parsed) = ParsedKey::parse(&input) {
                // Only a key that secret scanners would find is one.
                let whole = format!("^{}$", KEY_REGEX.trim_start_matches(r"\b").trim_end_matches(r"\b"));
                prop_assert!(regex::Regex::new(&whole).unwrap().is_match(&input));
                prop_assert!(input.contains(&parsed.id().to_string()));
            }
            if let Ok(prefix) = input.parse::<Prefix>() {
                prop_assert_eq!(prefix.to_string(), input.clone());
            }
            if let Ok(id) = input.parse::<KeyId>() {
                prop_assert_eq!(id.to_string(), input.clone());
            }
        }

        /// Close misses of a real key (a character replaced by any other,
        /// one cut or added) are refused, never accepted or panicking.
        #[test]
        fn near_keys_are_refused(
            prefix in "[a-z][a-z0-9]{0,15}",
            position in any::<proptest::sample::Index>(),
            replacement in any::<char>(),
            cut in any::<bool>(),
        ) {
            let minted = mint(&prefix);
            let text = minted.plaintext.expose();
            let at = position.index(text.len());
            let mut near = text.to_owned();
            if cut {
                near.remove(at);
            } else if replacement != char::from(text.as_bytes()[at]) {
                near.replace_range(at..=at, &replacement.to_string());
            } else {
                near.push(replacement);
            }
            prop_assert!(ParsedKey::parse(&near).is_err(), "accepted {near:?}");
        }
    }

    /// Text as an attacker sends it: anything, invalid UTF-8 (as decoded
    /// lossily), control and bidirectional characters, and near-keys.
    fn hostile_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            proptest::collection::vec(any::<u8>(), 0..80)
                .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
            "[a-z]{1,3}_[0-9A-Za-z\\x00-\\x1f\u{202e}\u{200b}]{45,55}",
            "[0-9A-Za-z]{9,13}",
            "[a-z0-9_]{0,20}",
        ]
    }

    #[test]
    fn regex_rejects_near_misses() {
        let minted = mint("kw");
        let text = minted.plaintext.expose();
        let near_misses = [
            format!("Kw{}", &text[2..]),
            text[..text.len() - 1].to_owned(),
            format!("{text}a"),
            format!("kw-{}", &text[3..]),
            format!("abcdefghijklmnopq{}", &text[2..]),
            format!("{}!{}", &text[..10], &text[11..]),
        ];
        for miss in near_misses {
            assert!(!key_regex_matches(&miss), "{miss}");
        }
    }
}
