//! The `etcd-client` crate, set up the way the fault tests use it.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

/// A client of `url` that gives up connecting after 2 s and on any request after 15 s.
pub async fn etcd_client(url: &str) -> Client {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(15));
    Client::connect([url], Some(opts))
        .await
        .expect("connect etcd client")
}

/// Every key from `from` on (`from`-key range), with its value, read in pages of `page` keys
/// (keys and values as UTF-8, lossily). Panics on a failed read.
pub async fn read_from_key(c: &mut Client, from: &[u8], page: i64) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut from = from.to_vec();
    loop {
        let r = c
            .get(
                from.clone(),
                Some(GetOptions::new().with_from_key().with_limit(page)),
            )
            .await
            .expect("read back");
        for kv in r.kvs() {
            m.insert(
                kv.key_str().unwrap_or_default().to_string(),
                kv.value_str().unwrap_or_default().to_string(),
            );
        }
        match r.kvs().last() {
            Some(last) if r.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return m,
        }
    }
}

/// Acknowledged writes (key → value), shared by a test's writers.
pub type Acked = std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>;

/// One writer of a fault test: puts `kv(0)`, `kv(1)`, ... on `url` until `until` or its first
/// error. Each acknowledged put goes into `acked`; the first error's text into `errors`.
pub async fn put_until_error(
    url: &str,
    until: std::time::Instant,
    kv: impl Fn(usize) -> (String, String),
    acked: Acked,
    errors: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut c = etcd_client(url).await;
    let mut i = 0;
    while std::time::Instant::now() < until {
        let (k, v) = kv(i);
        match c.put(k.clone(), v.clone(), None).await {
            Ok(_) => {
                acked.lock().unwrap().insert(k, v);
            }
            Err(e) => {
                errors.lock().unwrap().push(e.to_string());
                return;
            }
        }
        i += 1;
    }
}
