//! Endpoint parsing and gRPC connections.
//!
//! An endpoint is `host:port` or `http://host:port` (IPv6 as `[::1]:2379`). `--conns`
//! connections are opened round-robin over the endpoints, each one HTTP/2 connection
//! (a [`Conn`]); clients share them round-robin, as etcd's tool does.

use std::time::Duration;

use crate::transport::{Conn, H2Settings};

/// Parses one endpoint into the `http://host:port` form tonic wants.
pub fn parse_endpoint(raw: &str) -> Result<String, String> {
    let s = raw.trim();
    let rest = if let Some(r) = s.strip_prefix("http://") {
        r
    } else if s.starts_with("https://") || s.starts_with("unixs://") {
        return Err(format!(
            "endpoint {raw:?}: TLS endpoints are not supported yet"
        ));
    } else if s.contains("://") {
        return Err(format!(
            "endpoint {raw:?}: only http:// or host:port is supported"
        ));
    } else {
        s
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err(format!("endpoint {raw:?}: unexpected path"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, p) = v6
            .split_once("]:")
            .ok_or_else(|| format!("endpoint {raw:?}: expected [ipv6]:port"))?;
        (format!("[{h}]"), p)
    } else {
        let (h, p) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("endpoint {raw:?}: expected host:port"))?;
        if h.contains(':') {
            return Err(format!("endpoint {raw:?}: write IPv6 hosts as [addr]:port"));
        }
        (h.to_string(), p)
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("endpoint {raw:?}: empty host"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("endpoint {raw:?}: bad port {port:?}"))?;
    if port == 0 {
        return Err(format!("endpoint {raw:?}: port 0"));
    }
    Ok(format!("http://{host}:{port}"))
}

/// Parses a comma-separated endpoint list (empty items are skipped).
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, String> {
    let eps = list
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(parse_endpoint)
        .collect::<Result<Vec<_>, _>>()?;
    if eps.is_empty() {
        return Err("no endpoints given".into());
    }
    Ok(eps)
}

/// How connections are made.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    pub dial_timeout: Duration,
}

/// HTTP/2 flow-control windows: large enough that a connection carrying hundreds of
/// concurrent streams, or a big range response, is never throttled by the window
/// (grpc-go reaches similar sizes through its BDP estimator).
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 32 << 20;

/// Opens one connection to `url` (already normalised by [`parse_endpoint`]).
pub async fn connect(url: &str, opts: &ConnectOptions) -> Result<Conn, String> {
    let h2 = H2Settings {
        stream_window: STREAM_WINDOW,
        connection_window: CONNECTION_WINDOW,
    };
    Conn::connect(url, opts.dial_timeout, h2).await
}

/// Opens `conns` connections round-robin over `endpoints`.
pub async fn connect_all(
    endpoints: &[String],
    conns: usize,
    opts: &ConnectOptions,
) -> Result<Vec<Conn>, String> {
    let mut out = Vec::with_capacity(conns);
    for i in 0..conns.max(1) {
        out.push(connect(&endpoints[i % endpoints.len()], opts).await?);
    }
    Ok(out)
}

/// Formats an error with its sources ("transport error: connection refused").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_host_port_and_http() {
        assert_eq!(
            parse_endpoint("127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            parse_endpoint("http://127.0.0.1:2379").unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            parse_endpoint("http://localhost:2379/").unwrap(),
            "http://localhost:2379"
        );
        assert_eq!(
            parse_endpoint(" etcd-0.local:12379 ").unwrap(),
            "http://etcd-0.local:12379"
        );
        assert_eq!(parse_endpoint("[::1]:2379").unwrap(), "http://[::1]:2379");
        assert_eq!(
            parse_endpoint("http://[::1]:2379").unwrap(),
            "http://[::1]:2379"
        );
    }

    #[test]
    fn rejects_bad_endpoints() {
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:",
            "127.0.0.1:99999",
            "127.0.0.1:0",
            ":2379",
            "https://127.0.0.1:2379",
            "grpc://127.0.0.1:2379",
            "http://127.0.0.1:2379/v3",
            "::1:2379",
            "[::1]2379",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn endpoint_lists() {
        assert_eq!(
            parse_endpoints("127.0.0.1:1,http://127.0.0.1:2,").unwrap(),
            vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        assert!(parse_endpoints(",").is_err());
        assert!(parse_endpoints("127.0.0.1:1,bad").is_err());
    }
}
