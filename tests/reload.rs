//! SIGHUP reloads the static registry without dropping open connections; a bad file is rejected
//! and the registry in force stays.
mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{get, runner_config, Proxy};
use tokio_tungstenite::tungstenite::Message;

fn sandbox(id: &str) -> String {
    format!("[[registry.sandboxes]]\nid = \"{id}\"\nrunner = \"runner-1\"\npublic = true\n")
}

async fn eventually_status(proxy: &Proxy, host: &str, status: u16) -> bool {
    for _ in 0..100 {
        if get(proxy.addr, host, "/").await.status == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_static_registry_and_keeps_connections() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let runner = listener.local_addr().unwrap();
    tokio::spawn(sandgate::cli::demo::run_demo_runner(listener, "k".into()));
    let proxy = Proxy::start(&runner_config(runner, "k", &sandbox("a")));
    assert_eq!(
        get(proxy.addr, "3000-a.preview.localhost", "/")
            .await
            .status,
        200
    );
    assert_eq!(
        get(proxy.addr, "3000-b.preview.localhost", "/")
            .await
            .status,
        404
    );

    let stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let url = format!("ws://3000-a.preview.localhost:{}/ws", proxy.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();

    // Listen address stays as it was: the reload only swaps the registry.
    let with_b = std::fs::read_to_string(&proxy.config_path).unwrap() + &sandbox("b");
    std::fs::write(&proxy.config_path, with_b).unwrap();
    proxy.signal("HUP");
    assert!(eventually_status(&proxy, "3000-b.preview.localhost", 200).await);

    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );

    std::fs::write(
        &proxy.config_path,
        "[[registry.sandboxes]]\nid = \"c\"\nrunner = \"nope\"\n",
    )
    .unwrap();
    proxy.signal("HUP");
    let mut rejected = false;
    for _ in 0..100 {
        if proxy.stderr().contains("reload rejected") {
            rejected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(rejected, "log:\n{}", proxy.stderr());
    assert_eq!(
        get(proxy.addr, "3000-b.preview.localhost", "/")
            .await
            .status,
        200
    );
    ws.send(Message::text("after bad reload")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("after bad reload")
    );
}
