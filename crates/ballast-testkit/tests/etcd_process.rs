//! The harness against real etcd processes: start, readiness, restart on the same data dir and ports,
//! stop/kill, cleanup on drop, etcdctl and raw gRPC helpers.

use ballast_proto::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use ballast_testkit::{
    block_on, etcdctl, kv_client, maintenance_client, EtcdProcess, Server, ServerKind,
};

fn pid_alive(pid: u32) -> bool {
    // A reaped child has no /proc entry; a zombie would still show up, but we always reap.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn start_put_restart_get_and_cleanup() {
    let mut etcd = EtcdProcess::start();
    let url = etcd.client_url();
    let pid = etcd.pid().expect("running");
    let dir = etcd.data_dir().parent().unwrap().to_path_buf();
    assert!(etcd.is_running());

    let out = etcdctl(&url, &["put", "k", "v1"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");

    // SIGTERM + wait, then start again on the same data dir and ports: the data survives.
    etcd.restart();
    assert_eq!(etcd.client_url(), url);
    assert_ne!(etcd.pid(), Some(pid));
    assert!(!pid_alive(pid));
    let out = etcd.etcdctl(&["get", "k", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v1\n", "{out:?}");

    // Raw gRPC helpers work from inside another runtime.
    let url2 = url.clone();
    let (rev, status_rev) = block_on(async move {
        let mut kv = kv_client(&url2).await;
        let put = kv
            .put(PutRequest {
                key: b"k2".to_vec(),
                value: b"v2".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let got = kv
            .range(RangeRequest {
                key: b"k2".to_vec(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.kvs[0].value, b"v2");
        let mut m = maintenance_client(&url2).await;
        let status = m.status(StatusRequest {}).await.unwrap().into_inner();
        (
            put.header.unwrap().revision,
            status.header.unwrap().revision,
        )
    });
    assert_eq!(rev, 3);
    assert_eq!(status_rev, 3);

    // SIGKILL, then restart from the killed state.
    etcd.kill();
    assert!(!etcd.is_running());
    assert!(etcd.pid().is_none());
    etcd.restart();
    let out = etcd.etcdctl(&["get", "k2", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "v2\n", "{out:?}");

    assert!(
        etcd.stop().is_some(),
        "stop() on a running server returns its exit status"
    );
    let last = etcd.pid();
    assert!(last.is_none());
    drop(etcd);
    assert!(!dir.exists(), "temp dir {} left behind", dir.display());
}

#[test]
fn drop_kills_process_and_removes_dir() {
    let etcd = Server::start(ServerKind::Etcd);
    let pid = etcd.pid().unwrap();
    let dir = etcd.data_dir().parent().unwrap().to_path_buf();
    assert!(pid_alive(pid));
    assert!(dir.exists());
    drop(etcd);
    assert!(!pid_alive(pid), "pid {pid} still alive after drop");
    assert!(!dir.exists());
}

#[test]
fn parallel_servers_get_distinct_ports() {
    let servers: Vec<Server> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(EtcdProcess::start)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut urls: Vec<String> = servers.iter().map(Server::client_url).collect();
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 3);
    for s in &servers {
        let out = s.etcdctl(&["endpoint", "health"]);
        assert!(out.status.success(), "{out:?}");
    }
}
