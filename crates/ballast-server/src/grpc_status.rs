//! Rewrites the few gRPC errors that tonic produces itself (before our handlers run) into the
//! code and wording grpc-go — and so etcd — uses, since clients match on them:
//! - a request over the receive limit: tonic says OutOfRange "Error, decoded message length too
//!   large: found N bytes, the limit is: M bytes"; grpc-go says ResourceExhausted
//!   "grpc: received message larger than max (N vs. M)".
//! - a message nested deeper than the protobuf decoder allows (only a deeply nested Txn can be):
//!   InvalidArgument with Ballast's nesting-limit error instead of an Internal decode error.
//!
//! Both arrive as trailers-only responses, with the status in the response headers.

use axum::http::HeaderValue;
use axum::response::Response;

use crate::error::ServerError;

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Numbers in tonic's "found N bytes, the limit is: M bytes".
fn sizes(msg: &str) -> Option<(u64, u64)> {
    let nums: Vec<u64> = msg
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect();
    match nums.as_slice() {
        [found, limit] => Some((*found, *limit)),
        _ => None,
    }
}

/// The rewrite itself, on (code, decoded message).
fn rewrite(code: &str, msg: &str) -> Option<(u8, String)> {
    match code {
        "11" if msg.starts_with("Error, decoded message length too large") => {
            let (found, limit) = sizes(msg)?;
            Some((
                8,
                format!("grpc: received message larger than max ({found} vs. {limit})"),
            ))
        }
        "13" if msg.contains("recursion limit reached") => {
            Some((3, ServerError::TxnTooDeep.to_string()))
        }
        _ => None,
    }
}

pub async fn etcd_wording(mut resp: Response) -> Response {
    let headers = resp.headers_mut();
    let Some(code) = headers.get("grpc-status").and_then(|v| v.to_str().ok()) else {
        return resp;
    };
    if code != "11" && code != "13" {
        return resp;
    }
    let msg = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    if let Some((new_code, new_msg)) = rewrite(code, &msg) {
        headers.insert("grpc-status", HeaderValue::from(new_code as u16));
        if let Ok(v) = HeaderValue::from_str(&percent_encode(&new_msg)) {
            headers.insert("grpc-message", v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_request_gets_grpc_go_wording() {
        let msg = "Error, decoded message length too large: found 3145740 bytes, the limit is: 2097152 bytes";
        assert_eq!(
            rewrite("11", msg),
            Some((
                8,
                "grpc: received message larger than max (3145740 vs. 2097152)".into()
            ))
        );
        assert_eq!(
            rewrite(
                "11",
                "etcdserver: mvcc: required revision has been compacted"
            ),
            None
        );
    }

    #[test]
    fn recursion_limit_becomes_the_nesting_error() {
        let (code, msg) = rewrite(
            "13",
            "failed to decode Protobuf message: recursion limit reached",
        )
        .unwrap();
        assert_eq!(code, 3);
        assert!(msg.contains("nesting"));
    }

    #[test]
    fn percent_coding_round_trips() {
        let s = "grpc: received message larger than max (1 vs. 2) 100%";
        assert_eq!(percent_decode(&percent_encode(s)), s);
        assert_eq!(percent_decode("a%20b%3Ac"), "a b:c");
    }
}
