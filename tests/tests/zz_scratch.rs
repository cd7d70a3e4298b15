use ballast_testkit::watch::{self, Received, WatchStream};
use std::time::Duration;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch() {
    let server = ballast_testkit::start_candidate();
    let url = server.client_url();
    let w = watch::Windows { stream: Some(4096), connection: Some(16 << 20) };
    let client = watch::watch_client_on(watch::watch_channel(&url, w).await);
    let mut st = WatchStream::open_buffered(&client, 1);
    let mut req = watch::create_request([0], [0]);
    req.progress_notify = std::env::var("PN").is_ok();
    st.create(req);
    let _ = st.recv_timeout(Duration::from_secs(5)).await; // created
    let n: i64 = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(6000);
    let mut tasks = Vec::new();
    for c in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut kv = ballast_testkit::kv_client(&url).await;
            let mut last = 0;
            for i in 0..n / 4 {
                let r = kv.put(ballast_proto::etcdserverpb::PutRequest { key: format!("k{c}/{}", i % 50).into_bytes(), value: b"v".to_vec(), ..Default::default() }).await.unwrap().into_inner();
                last = r.header.unwrap().revision;
            }
            last
        }));
    }
    let mut head = 0;
    for t in tasks { head = head.max(t.await.unwrap()); }
    st.request_progress();
    let mut got = std::collections::BTreeSet::new();
    let mut trace = Vec::new();
    while let Some((_, Received::Response(r))) = st.recv_timeout(Duration::from_secs(3)).await {
        let rev = r.header.as_ref().unwrap().revision;
        if r.events.is_empty() { trace.push(format!("P{}@{rev}", if r.watch_id == -1 {"R"} else {""})); }
        else {
            let f = r.events[0].kv.as_ref().unwrap().mod_revision;
            let l = r.events.last().unwrap().kv.as_ref().unwrap().mod_revision;
            if trace.last().map_or(true, |t: &String| !t.starts_with('E')) || l != f { trace.push(format!("E[{f}..{l}]@{rev}")); }
            else { let t = trace.last_mut().unwrap(); *t = format!("{}..{l}", t.split("..").next().unwrap()); }
            for e in &r.events { got.insert(e.kv.as_ref().unwrap().mod_revision); }
        }
    }
    let missing: Vec<i64> = (2..=head).filter(|r| !got.contains(r)).collect();
    eprintln!("{}: head {head}, got {} revisions, missing {} (first {:?}); trace: {}", server.kind(), got.len(), missing.len(), missing.first(), trace.join(" "));
}
