//! The shortest end-to-end path: real binary, real demo runner, real HTTP.
mod support;

use support::{get, runner_config, Proxy};

#[tokio::test]
async fn preview_and_health_through_the_real_binary() {
    let runner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let runner_addr = runner.local_addr().unwrap();
    tokio::spawn(sandgate::demo::run_demo_runner(runner, "k".into()));
    let proxy = Proxy::start(&runner_config(
        runner_addr,
        "k",
        "[[registry.sandboxes]]\nid = \"sbx-1\"\nrunner = \"runner-1\"\npublic = true\n",
    ));
    let reply = get(proxy.addr, "3000-sbx-1.preview.localhost", "/hi").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.text(),
        "hello from sandbox sbx-1, port 3000, path /hi\n"
    );
    let health = get(proxy.addr, "127.0.0.1", "/health").await;
    assert_eq!(health.json()["status"], "ok");
}
