//! The few names Ballast reads out of an X.509 certificate: the subject's common name (for the
//! allowed-CN check) and the subject alternative names (for etcd's check that a client's
//! certificate names the address it connects from).
//!
//! webpki verifies chains and matches a name against the SANs, but exposes neither the CN nor
//! the SAN list; a DER walk over the handful of fields needed is shorter than another parsing
//! crate. It is only ever given certificates that webpki has already verified (well-formed and
//! signed by a trusted CA); anything it does not understand reads as "no name", which makes the
//! checks refuse, never accept.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The names in one certificate.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct CertNames {
    /// The subject's common name; the last one when there are several, as Go reads it.
    pub common_name: Option<String>,
    /// dNSName entries of the subjectAltName extension.
    pub dns_names: Vec<String>,
    /// iPAddress entries of the subjectAltName extension.
    pub ip_addresses: Vec<IpAddr>,
}

const TAG_BOOLEAN: u8 = 0x01;
const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_VERSION: u8 = 0xA0; // [0] EXPLICIT
const TAG_EXTENSIONS: u8 = 0xA3; // [3] EXPLICIT
const TAG_SAN_DNS: u8 = 0x82; // [2] IMPLICIT IA5String
const TAG_SAN_IP: u8 = 0x87; // [7] IMPLICIT OCTET STRING

const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1D, 0x11]; // 2.5.29.17

/// Reads the names of a DER certificate; `None` when it is not a certificate this reader
/// understands.
pub(crate) fn cert_names(der: &[u8]) -> Option<CertNames> {
    let (cert, _) = expect(der, TAG_SEQUENCE)?;
    let (tbs, _) = expect(cert, TAG_SEQUENCE)?;
    let mut rest = tbs;
    let (tag, _, after) = tlv(rest)?;
    if tag == TAG_VERSION {
        rest = after;
    }
    let (_serial, rest) = expect(rest, TAG_INTEGER)?;
    let (_signature, rest) = expect(rest, TAG_SEQUENCE)?;
    let (_issuer, rest) = expect(rest, TAG_SEQUENCE)?;
    let (_validity, rest) = expect(rest, TAG_SEQUENCE)?;
    let (subject, rest) = expect(rest, TAG_SEQUENCE)?;
    let (_spki, mut rest) = expect(rest, TAG_SEQUENCE)?;

    let mut names = CertNames {
        common_name: common_name(subject)?,
        ..CertNames::default()
    };
    // issuerUniqueID [1], subjectUniqueID [2], then extensions [3].
    while !rest.is_empty() {
        let (tag, content, after) = tlv(rest)?;
        if tag == TAG_EXTENSIONS {
            read_extensions(content, &mut names)?;
        }
        rest = after;
    }
    Some(names)
}

/// The last CN attribute of a Name (`None` inside `Some` when there is none).
fn common_name(name: &[u8]) -> Option<Option<String>> {
    let mut found = None;
    let mut rdns = name;
    while !rdns.is_empty() {
        let (rdn, after) = expect(rdns, TAG_SET)?;
        rdns = after;
        let mut attrs = rdn;
        while !attrs.is_empty() {
            let (attr, after) = expect(attrs, TAG_SEQUENCE)?;
            attrs = after;
            let (oid, value) = expect(attr, TAG_OID)?;
            if oid == OID_COMMON_NAME {
                let (tag, bytes, _) = tlv(value)?;
                found = Some(directory_string(tag, bytes)?);
            }
        }
    }
    Some(found)
}

/// A DirectoryString (or IA5String) as text.
fn directory_string(tag: u8, bytes: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String
        0x0C | 0x13 | 0x16 => String::from_utf8(bytes.to_vec()).ok(),
        // TeletexString: Go takes the bytes as they are; read them as Latin-1.
        0x14 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        // BMPString: UTF-16, big-endian.
        0x1E => {
            if !bytes.len().is_multiple_of(2) {
                return None;
            }
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

fn read_extensions(explicit: &[u8], names: &mut CertNames) -> Option<()> {
    let (mut exts, _) = expect(explicit, TAG_SEQUENCE)?;
    while !exts.is_empty() {
        let (ext, after) = expect(exts, TAG_SEQUENCE)?;
        exts = after;
        let (oid, mut rest) = expect(ext, TAG_OID)?;
        if oid != OID_SUBJECT_ALT_NAME {
            continue;
        }
        if let Some((TAG_BOOLEAN, _, after)) = tlv(rest) {
            rest = after; // critical
        }
        let (value, _) = expect(rest, TAG_OCTET_STRING)?;
        let (mut general_names, _) = expect(value, TAG_SEQUENCE)?;
        while !general_names.is_empty() {
            let (tag, bytes, after) = tlv(general_names)?;
            general_names = after;
            match tag {
                TAG_SAN_DNS => names
                    .dns_names
                    .push(String::from_utf8(bytes.to_vec()).ok()?),
                TAG_SAN_IP => names.ip_addresses.push(ip_from_bytes(bytes)?),
                _ => {}
            }
        }
    }
    Some(())
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(|v6| IpAddr::V6(Ipv6Addr::from(v6)))
}

/// The content of the next element if it has `tag`, and what follows it.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (found, content, rest) = tlv(input)?;
    (found == tag).then_some((content, rest))
}

/// Splits the next DER element: (tag, content, rest). Low tag numbers and definite lengths up
/// to four bytes only, which is all a certificate uses.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1F == 0x1F {
        return None; // high tag number form
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None; // indefinite, or longer than any certificate
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair, SanType};

    fn cert(params: &CertificateParams) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn reads_common_name_and_sans() {
        let mut params = CertificateParams::new(vec![
            "node-a.example".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .expect("params");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "ballast");
        params
            .distinguished_name
            .push(DnType::CommonName, "member-a");
        let names = cert_names(&cert(&params)).expect("parsed");
        assert_eq!(names.common_name.as_deref(), Some("member-a"));
        assert_eq!(names.dns_names, vec!["node-a.example".to_string()]);
        assert_eq!(
            names.ip_addresses,
            vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::V6(Ipv6Addr::LOCALHOST)
            ]
        );
    }

    #[test]
    fn no_common_name_no_sans() {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "etcd");
        let names = cert_names(&cert(&params)).expect("parsed");
        assert_eq!(names, CertNames::default());
    }

    #[test]
    fn string_kinds() {
        for (value, want) in [
            (
                DnValue::PrintableString("member-b".try_into().expect("printable")),
                "member-b",
            ),
            (
                DnValue::BmpString("mémbre".try_into().expect("bmp")),
                "mémbre",
            ),
            (DnValue::Utf8String("成员".into()), "成员"),
        ] {
            let mut params = CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            params.distinguished_name.push(DnType::CommonName, value);
            params.subject_alt_names = vec![SanType::DnsName("x.example".try_into().expect("dns"))];
            let names = cert_names(&cert(&params)).expect("parsed");
            assert_eq!(names.common_name.as_deref(), Some(want));
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(cert_names(&[]), None);
        assert_eq!(cert_names(&[0x30, 0x05, 0x02]), None);
        assert_eq!(cert_names(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(cert_names(&[0x30, 0x80, 0x00, 0x00]), None);
    }
}
