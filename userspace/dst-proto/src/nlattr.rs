// SPDX-License-Identifier: GPL-2.0

//! Netlink attribute (TLV) encoding and decoding.
//!
//! A netlink attribute is a 4-byte header (`u16` length including the
//! header, `u16` type) followed by the payload, padded to 4 bytes.  Integers
//! are in host byte order.  This module is used on both sides: the kernel
//! builds its replies and reads its requests with it, `dstctl` does the
//! reverse.  Parsing never trusts a length: every slice is bounds-checked.

/// Size of an attribute header.
pub const NLA_HDRLEN: usize = 4;
/// Attribute type flag: the payload is a stream of attributes.
pub const NLA_F_NESTED: u16 = 1 << 15;
/// Attribute type flag: the payload is in network byte order.
pub const NLA_F_NET_BYTEORDER: u16 = 1 << 14;
/// Mask of the type bits proper.
pub const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// Rounds `len` up to the netlink alignment (4 bytes).
pub const fn nla_align(len: usize) -> usize {
    (len + 3) & !3
}

/// Why an attribute stream or value could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A header or a length runs past the end of the buffer.
    Truncated,
    /// A value has the wrong size or an invalid encoding.
    BadValue(u16),
    /// The output buffer is full (or an allocation failed).
    NoSpace,
}

/// One attribute, borrowed from a received buffer.
#[derive(Debug, Clone, Copy)]
pub struct Attr<'a> {
    /// Attribute type with the flag bits removed.
    pub kind: u16,
    /// The payload, without padding.
    pub payload: &'a [u8],
}

impl<'a> Attr<'a> {
    fn exact<const N: usize>(&self) -> Result<[u8; N], Error> {
        self.payload
            .try_into()
            .map_err(|_| Error::BadValue(self.kind))
    }

    /// The payload as a `u8`.
    pub fn u8(&self) -> Result<u8, Error> {
        Ok(self.exact::<1>()?[0])
    }

    /// The payload as a `u16`.
    pub fn u16(&self) -> Result<u16, Error> {
        Ok(u16::from_ne_bytes(self.exact()?))
    }

    /// The payload as a `u32`.
    pub fn u32(&self) -> Result<u32, Error> {
        Ok(u32::from_ne_bytes(self.exact()?))
    }

    /// The payload as a `u64`.
    pub fn u64(&self) -> Result<u64, Error> {
        Ok(u64::from_ne_bytes(self.exact()?))
    }

    /// The payload as a NUL-terminated UTF-8 string, without the NUL.
    ///
    /// A string without its terminator, with an embedded NUL, or that is not
    /// UTF-8 is refused.
    pub fn str(&self) -> Result<&'a str, Error> {
        let bad = Error::BadValue(self.kind);
        let (last, body) = self.payload.split_last().ok_or(bad)?;
        if *last != 0 || body.contains(&0) {
            return Err(bad);
        }
        core::str::from_utf8(body).map_err(|_| bad)
    }

    /// The payload as a nested attribute stream.
    pub fn nested(&self) -> Attrs<'a> {
        Attrs::new(self.payload)
    }
}

/// An iterator over an attribute stream.
///
/// Yields `Err(Error::Truncated)` once and then stops if the stream is
/// malformed.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    /// Iterates the attributes in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Attrs { rest: buf }
    }

    /// The first attribute of type `kind`, if any.
    pub fn find(&self, kind: u16) -> Result<Option<Attr<'a>>, Error> {
        for a in self.clone() {
            let a = a?;
            if a.kind == kind {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<Attr<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let parsed = parse_one(self.rest);
        match parsed {
            Ok((attr, used)) => {
                self.rest = self.rest.get(used..).unwrap_or(&[]);
                Some(Ok(attr))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

fn parse_one(buf: &[u8]) -> Result<(Attr<'_>, usize), Error> {
    let hdr = buf.get(..NLA_HDRLEN).ok_or(Error::Truncated)?;
    let len = u16::from_ne_bytes([hdr[0], hdr[1]]) as usize;
    let kind = u16::from_ne_bytes([hdr[2], hdr[3]]) & NLA_TYPE_MASK;
    if len < NLA_HDRLEN {
        return Err(Error::Truncated);
    }
    let payload = buf.get(NLA_HDRLEN..len).ok_or(Error::Truncated)?;
    // The last attribute may lack its padding.
    let used = nla_align(len).min(buf.len());
    Ok((Attr { kind, payload }, used))
}

/// Where an encoder puts its bytes.
pub trait Sink {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error>;
    /// Number of bytes written so far.
    fn len(&self) -> usize;
    /// Whether nothing has been written.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Overwrites the two bytes at `at` (a length field written earlier).
    fn patch_u16(&mut self, at: usize, v: u16);
}

/// A [`Sink`] over a fixed buffer.
#[derive(Debug)]
pub struct SliceSink<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceSink<'a> {
    /// Writes into `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        SliceSink { buf, len: 0 }
    }

    /// The bytes written.
    pub fn written(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Sink for SliceSink<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let end = self.len.checked_add(bytes.len()).ok_or(Error::NoSpace)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(Error::NoSpace)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    fn len(&self) -> usize {
        self.len
    }

    fn patch_u16(&mut self, at: usize, v: u16) {
        if let Some(dst) = self.buf.get_mut(at..at + 2) {
            dst.copy_from_slice(&v.to_ne_bytes());
        }
    }
}

/// An open nested attribute; close it with [`Writer::end_nest`].
#[derive(Debug)]
#[must_use]
pub struct Nest(usize);

/// Encodes attributes into a [`Sink`].
#[derive(Debug)]
pub struct Writer<'s, S: Sink> {
    sink: &'s mut S,
}

const PAD: [u8; 4] = [0; 4];

impl<'s, S: Sink> Writer<'s, S> {
    /// Encodes into `sink`, after whatever it already holds.
    pub fn new(sink: &'s mut S) -> Self {
        Writer { sink }
    }

    fn header(&mut self, kind: u16, payload_len: usize) -> Result<(), Error> {
        let len = u16::try_from(NLA_HDRLEN + payload_len).map_err(|_| Error::NoSpace)?;
        self.sink.put(&len.to_ne_bytes())?;
        self.sink.put(&kind.to_ne_bytes())
    }

    /// Appends an attribute with a raw payload.
    pub fn put_bytes(&mut self, kind: u16, payload: &[u8]) -> Result<(), Error> {
        self.header(kind, payload.len())?;
        self.sink.put(payload)?;
        self.sink
            .put(&PAD[..nla_align(payload.len()) - payload.len()])
    }

    /// Appends a flag (an attribute without payload).
    pub fn put_flag(&mut self, kind: u16) -> Result<(), Error> {
        self.put_bytes(kind, &[])
    }

    /// Appends a `u8` attribute.
    pub fn put_u8(&mut self, kind: u16, v: u8) -> Result<(), Error> {
        self.put_bytes(kind, &[v])
    }

    /// Appends a `u32` attribute.
    pub fn put_u32(&mut self, kind: u16, v: u32) -> Result<(), Error> {
        self.put_bytes(kind, &v.to_ne_bytes())
    }

    /// Appends a `u64` attribute.
    pub fn put_u64(&mut self, kind: u16, v: u64) -> Result<(), Error> {
        self.put_bytes(kind, &v.to_ne_bytes())
    }

    /// Appends a NUL-terminated string attribute.
    pub fn put_str(&mut self, kind: u16, s: &str) -> Result<(), Error> {
        self.put_str_bytes(kind, s.as_bytes())
    }

    /// Appends a NUL-terminated string attribute from raw bytes (which must
    /// not contain a NUL).
    pub fn put_str_bytes(&mut self, kind: u16, s: &[u8]) -> Result<(), Error> {
        self.header(kind, s.len() + 1)?;
        self.sink.put(s)?;
        self.sink.put(&[0])?;
        self.sink
            .put(&PAD[..nla_align(s.len() + 1) - (s.len() + 1)])
    }

    /// Opens a nested attribute.
    pub fn begin_nest(&mut self, kind: u16) -> Result<Nest, Error> {
        let at = self.sink.len();
        self.header(kind | NLA_F_NESTED, 0)?;
        Ok(Nest(at))
    }

    /// Closes a nested attribute opened by [`Writer::begin_nest`].
    pub fn end_nest(&mut self, nest: Nest) -> Result<(), Error> {
        let len = u16::try_from(self.sink.len() - nest.0).map_err(|_| Error::NoSpace)?;
        self.sink.patch_u16(nest.0, len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut buf = [0u8; 256];
        let mut sink = SliceSink::new(&mut buf);
        let mut w = Writer::new(&mut sink);
        w.put_u8(1, 7).unwrap();
        w.put_u32(2, 0xdead_beef).unwrap();
        w.put_u64(3, u64::MAX - 1).unwrap();
        w.put_str(4, "ram0").unwrap();
        let n = w.begin_nest(5).unwrap();
        w.put_str(1, "/dev/ram1").unwrap();
        w.put_flag(2).unwrap();
        w.end_nest(n).unwrap();
        let bytes = sink.written();
        assert_eq!(bytes.len() % 4, 0);

        let v: Vec<_> = Attrs::new(bytes).map(|a| a.unwrap()).collect();
        assert_eq!(v.len(), 5);
        assert_eq!(v[0].u8().unwrap(), 7);
        assert_eq!(v[1].u32().unwrap(), 0xdead_beef);
        assert_eq!(v[2].u64().unwrap(), u64::MAX - 1);
        assert_eq!(v[3].str().unwrap(), "ram0");
        assert_eq!(v[4].kind, 5);
        let inner: Vec<_> = v[4].nested().map(|a| a.unwrap()).collect();
        assert_eq!(inner[0].str().unwrap(), "/dev/ram1");
        assert_eq!(inner[1].kind, 2);
        assert!(inner[1].payload.is_empty());
    }

    #[test]
    fn truncated_streams_are_refused() {
        // Header claims 8 bytes, only 6 present.
        let buf = [8u8, 0, 1, 0, 0xaa, 0xbb];
        let mut it = Attrs::new(&buf);
        assert_eq!(it.next().unwrap().unwrap_err(), Error::Truncated);
        assert!(it.next().is_none());
        // Length shorter than a header.
        let buf = [2u8, 0, 1, 0];
        assert_eq!(
            Attrs::new(&buf).next().unwrap().unwrap_err(),
            Error::Truncated
        );
        // Dangling bytes after a good attribute.
        let buf = [5u8, 0, 1, 0, 9, 0, 0, 0, 1];
        let mut it = Attrs::new(&buf);
        assert_eq!(it.next().unwrap().unwrap().u8().unwrap(), 9);
        assert_eq!(it.next().unwrap().unwrap_err(), Error::Truncated);
    }

    #[test]
    fn bad_values_are_refused() {
        let a = Attr {
            kind: 3,
            payload: b"abc",
        };
        assert_eq!(a.str().unwrap_err(), Error::BadValue(3));
        assert_eq!(a.u32().unwrap_err(), Error::BadValue(3));
        let a = Attr {
            kind: 3,
            payload: b"a\0c\0",
        };
        assert_eq!(a.str().unwrap_err(), Error::BadValue(3));
        let a = Attr {
            kind: 3,
            payload: b"\xff\0",
        };
        assert_eq!(a.str().unwrap_err(), Error::BadValue(3));
    }

    #[test]
    fn slice_sink_overflow() {
        let mut buf = [0u8; 6];
        let mut sink = SliceSink::new(&mut buf);
        let mut w = Writer::new(&mut sink);
        assert_eq!(w.put_u32(1, 1).unwrap_err(), Error::NoSpace);
    }

    #[test]
    fn oversized_attribute_is_refused() {
        let mut buf = vec![0u8; 70_000];
        let mut sink = SliceSink::new(&mut buf);
        let mut w = Writer::new(&mut sink);
        let big = vec![1u8; 65_600];
        assert_eq!(w.put_bytes(1, &big).unwrap_err(), Error::NoSpace);
    }
}
