//! A minimal cookie-keeping "browser" for redirect flows: host-only cookies (keyed by host
//! without port, like real browsers), absolute or relative `Location`s, navigation headers.
//! Every host goes to the proxy unless routed elsewhere (e.g. the test identity provider).

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{send, Reply};

pub struct Browser {
    proxy: SocketAddr,
    routes: HashMap<String, SocketAddr>,
    /// host → (name → value)
    pub jar: HashMap<String, HashMap<String, String>>,
    pub visited: Vec<String>,
}

pub fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

fn host_of(authority: &str) -> String {
    authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .to_ascii_lowercase()
}

impl Browser {
    pub fn new(proxy: SocketAddr) -> Self {
        Browser {
            proxy,
            routes: HashMap::new(),
            jar: HashMap::new(),
            visited: Vec::new(),
        }
    }

    /// Requests to `authority` go to `addr` instead of the proxy.
    pub fn route(&mut self, authority: &str, addr: SocketAddr) {
        self.routes.insert(authority.to_string(), addr);
    }

    pub fn cookie(&self, host: &str, name: &str) -> Option<&String> {
        self.jar.get(host).and_then(|c| c.get(name))
    }

    /// One navigation request (no redirect following); stores `Set-Cookie`s.
    pub async fn get(&mut self, url: &str) -> Reply {
        let (authority, path) = split_url(url);
        let addr = *self.routes.get(&authority).unwrap_or(&self.proxy);
        let host = host_of(&authority);
        let cookie_header = self
            .jar
            .get(&host)
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        let mut headers = vec![
            ("accept", "text/html,application/xhtml+xml"),
            ("sec-fetch-mode", "navigate"),
            ("user-agent", "Mozilla/5.0 (sandgate tests)"),
        ];
        if !cookie_header.is_empty() {
            headers.push(("cookie", cookie_header.as_str()));
        }
        self.visited.push(url.to_string());
        let reply = send(addr, "GET", &authority, &path, &headers, b"").await;
        for set in reply.headers.get_all("set-cookie") {
            let set = set.to_str().unwrap();
            let (pair, attrs) = set.split_once(';').unwrap_or((set, ""));
            let (name, value) = pair.split_once('=').unwrap();
            let jar = self.jar.entry(host.clone()).or_default();
            if attrs.contains("Max-Age=0") {
                jar.remove(name);
            } else {
                jar.insert(name.to_string(), value.to_string());
            }
        }
        reply
    }

    /// Follows redirects (up to 10) from `url`; returns the final reply and its URL.
    pub async fn navigate(&mut self, url: &str) -> (Reply, String) {
        let mut url = url.to_string();
        for _ in 0..10 {
            let reply = self.get(&url).await;
            if !(300..400).contains(&reply.status) {
                return (reply, url);
            }
            let location = reply.headers["location"].to_str().unwrap().to_string();
            url = if location.starts_with("http://") {
                location
            } else {
                assert!(location.starts_with('/'), "relative Location {location:?}");
                let (authority, _) = split_url(&url);
                format!("http://{authority}{location}")
            };
        }
        panic!("too many redirects: {:?}", self.visited);
    }
}
