//! Which requests count as activity: everything except requests carrying the skip header, on
//! an ignored preview port, or from an ignored user agent (uptime monitors). Wake-on-request
//! asks the same question first, so a request that does not count never starts a sandbox.

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::dfa::DFA;
use aho_corasick::Anchored;
use http::header::USER_AGENT;
use http::{HeaderMap, HeaderName};

use crate::base::header_scan::{Present, Tracked};
use crate::config::ActivityConfig;

pub const SKIP_HEADER: HeaderName = HeaderName::from_static(Tracked::SkipActivity.name());

/// Built once from `[activity]`; asked per request without allocating.
pub struct Rules {
    ignore_ports: Box<[u16]>,
    /// `None` when no pattern is configured: no `User-Agent` lookup at all.
    ignore_user_agents: Option<AgentMatcher>,
}

impl Rules {
    pub fn new(config: &ActivityConfig) -> Rules {
        Rules {
            ignore_ports: config.ignore_ports.clone().into(),
            ignore_user_agents: user_agent_matcher(&config.ignore_user_agents),
        }
    }

    /// `false` for a request that must neither mark nor wake its sandbox.
    pub fn counts(&self, port: Option<u16>, headers: &HeaderMap, present: Present) -> bool {
        self.counts_but_for_agent(port, headers, present) && !self.sent_by_ignored_agent(headers)
    }

    /// The cheap part of [`Rules::counts`]: the skip header and the port.
    pub fn counts_but_for_agent(
        &self,
        port: Option<u16>,
        headers: &HeaderMap,
        present: Present,
    ) -> bool {
        !(skip_requested(headers, present) || port.is_some_and(|p| self.ignore_ports.contains(&p)))
    }

    /// The costly part of [`Rules::counts`]: the `User-Agent` against the patterns.
    pub fn sent_by_ignored_agent(&self, headers: &HeaderMap) -> bool {
        let Some(matcher) = &self.ignore_user_agents else {
            return false;
        };
        headers
            .get_all(USER_AGENT)
            .iter()
            .any(|agent| matcher.is_match(agent.as_bytes()))
    }
}

/// The patterns as one ASCII case-insensitive Aho-Corasick DFA, walked by hand: a browser's
/// 120-byte agent costs ~1,350 instructions this way against ~1,850 through
/// `AhoCorasick::is_match`, whose generic search loop does more per byte.
pub struct AgentMatcher {
    dfa: DFA,
    start: StateID,
}

impl AgentMatcher {
    pub fn new(patterns: &[String]) -> Result<AgentMatcher, String> {
        let dfa = DFA::builder()
            .ascii_case_insensitive(true)
            .build(patterns)
            .map_err(|e| e.to_string())?;
        let start = dfa.start_state(Anchored::No).map_err(|e| e.to_string())?;
        Ok(AgentMatcher { dfa, start })
    }

    pub fn is_match(&self, haystack: &[u8]) -> bool {
        let mut state = self.start;
        for &byte in haystack {
            state = self.dfa.next_state(Anchored::No, state, byte);
            // Special states are the dead and match states; an unanchored search never dies.
            if self.dfa.is_special(state) && self.dfa.is_match(state) {
                return true;
            }
        }
        false
    }
}

/// `X-Daytona-Skip-Last-Activity-Update: true` (any case).
fn skip_requested(headers: &HeaderMap, present: Present) -> bool {
    present.may_have(Tracked::SkipActivity)
        && headers
            .get(SKIP_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// The patterns' matcher; `None` for no patterns.
fn user_agent_matcher(patterns: &[String]) -> Option<AgentMatcher> {
    if patterns.is_empty() {
        return None;
    }
    match AgentMatcher::new(patterns) {
        Ok(matcher) => Some(matcher),
        Err(e) => {
            // Unreachable for a validated config (the same build is tried there).
            tracing::error!(error = %e, "activity.ignore_user_agents: no matcher; every agent counts");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn rules(toml: &str) -> Rules {
        let config = crate::config::Config::from_toml_str(&format!("[activity]\n{toml}\n"))
            .unwrap()
            .activity;
        Rules::new(&config)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn requests_count_unless_skipped_on_an_ignored_port_or_from_a_monitor() {
        let rules = rules("ignore_ports = [9090]");
        let browser = "Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0 Safari/537.36";
        for (name, port, pairs, counts) in [
            ("plain", Some(3000), vec![], true),
            ("toolbox", None, vec![], true),
            ("browser", Some(3000), vec![("user-agent", browser)], true),
            ("ignored port", Some(9090), vec![], false),
            (
                "skip",
                Some(3000),
                vec![(Tracked::SkipActivity.name(), "TRUE")],
                false,
            ),
            (
                "skip false",
                Some(3000),
                vec![(Tracked::SkipActivity.name(), "false")],
                true,
            ),
            (
                "monitor",
                Some(3000),
                vec![("user-agent", "Mozilla/5.0+(compatible; UptimeRobot/2.0)")],
                false,
            ),
            (
                "monitor, odd case",
                Some(3000),
                vec![("user-agent", "KUBE-PROBE/1.31")],
                false,
            ),
            (
                "monitor in a second User-Agent",
                Some(3000),
                vec![("user-agent", browser), ("user-agent", "GoogleHC/1.0")],
                false,
            ),
        ] {
            let map = headers(&pairs);
            assert_eq!(
                rules.counts(port, &map, Present::scan(&map)),
                counts,
                "{name}"
            );
        }
    }

    #[test]
    fn no_patterns_count_every_agent_and_need_no_lookup() {
        let rules = rules("ignore_user_agents = []");
        assert!(rules.ignore_user_agents.is_none());
        let map = headers(&[("user-agent", "UptimeRobot/2.0")]);
        assert!(rules.counts(Some(3000), &map, Present::scan(&map)));
    }

    #[test]
    fn the_hand_walked_automaton_finds_what_a_naive_search_finds() {
        let patterns: Vec<String> = ["abcd", "bc", "Site24x7", "x", "ÉTÉ", "Better Uptime"]
            .map(String::from)
            .to_vec();
        let matcher = AgentMatcher::new(&patterns).unwrap();
        let naive = |hay: &str| {
            let hay = hay.to_ascii_lowercase();
            patterns
                .iter()
                .any(|p| hay.contains(&p.to_ascii_lowercase()))
        };
        for hay in [
            "",
            "a",
            "ab",
            "abc",
            "ABCD",
            "zzabcdzz",
            "aBc",
            "b",
            "c",
            "site24X",
            "SITE24X7",
            "été",
            "ÉTÉ!",
            "better uptime bot",
            "better  uptime",
            "Mozilla/5.0 (Windows NT 10.0)",
            "x",
            "yyy",
            "abab abd bd",
        ] {
            assert_eq!(matcher.is_match(hay.as_bytes()), naive(hay), "{hay:?}");
        }
    }
}
