//! Pieces for messages written by hand (`impl prost::Message` over a
//! borrowed view rather than a generated struct): the answers on the hot
//! path, Validate's and Envoy's `Check`, are written straight from the
//! index entry of a key instead of strings copied out of it first.
//!
//! Each `*_len` gives the bytes its `put_*` writes, so a message's
//! `encoded_len` and `encode_raw` are the same walk over its parts. Like
//! prost's generated code, scalar fields equal to their default are left out.

use prost::{
    bytes::BufMut,
    encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len},
};

/// Bytes of a length-delimited field whose contents take `len` bytes.
#[must_use]
pub fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// The key and length of a length-delimited field; its `len` bytes of
/// contents are the caller's to write next.
pub fn put_delimited(tag: u32, len: usize, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// Bytes of a string or bytes field: none when `text` is empty.
#[must_use]
pub fn str_len(tag: u32, text: &[u8]) -> usize {
    if text.is_empty() {
        0
    } else {
        delimited_len(tag, text.len())
    }
}

/// A string or bytes field, left out when `text` is empty.
pub fn put_str(tag: u32, text: &[u8], buf: &mut impl BufMut) {
    if !text.is_empty() {
        put_delimited(tag, text.len(), buf);
        buf.put_slice(text);
    }
}

/// Bytes of an element of a repeated string field: written even when
/// empty, as an element is there or not.
#[must_use]
pub fn element_len(tag: u32, text: &[u8]) -> usize {
    delimited_len(tag, text.len())
}

/// An element of a repeated string field.
pub fn put_element(tag: u32, text: &[u8], buf: &mut impl BufMut) {
    put_delimited(tag, text.len(), buf);
    buf.put_slice(text);
}

/// Bytes of a varint field (integer, bool or enum): none when zero.
#[must_use]
pub fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

/// A varint field (integer, bool or enum), left out when zero.
pub fn put_varint(tag: u32, value: u64, buf: &mut impl BufMut) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// Bytes of a `map<string, string>` entry's contents.
#[must_use]
pub fn map_entry_len(name: &[u8], value: &[u8]) -> usize {
    str_len(MAP_KEY, name) + str_len(MAP_VALUE, value)
}

/// A `map<string, string>` field's entry for `name` and `value`.
pub fn put_map_entry(tag: u32, name: &[u8], value: &[u8], buf: &mut impl BufMut) {
    put_delimited(tag, map_entry_len(name, value), buf);
    put_str(MAP_KEY, name, buf);
    put_str(MAP_VALUE, value, buf);
}

/// A map entry's field numbers, fixed by protobuf.
pub const MAP_KEY: u32 = 1;
/// See [`MAP_KEY`].
pub const MAP_VALUE: u32 = 2;
