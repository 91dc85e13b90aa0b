//! DNS-01 through the operator's hook command (`acme.dns01.hook`): `<hook> set <record> <value>`
//! publishes the TXT record, `<hook> clear <record> <value>` removes it. Its arguments come from
//! the configured names and the CA's challenge only, never from a client.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use super::order::{FailureReason, OrderFailure};
use crate::config::Dns01Config;

/// The hook's output kept for an error message.
const OUTPUT_SHOWN: usize = 300;

#[derive(Debug)]
pub struct DnsHook {
    command: PathBuf,
    timeout: Duration,
    pub propagation_wait: Duration,
}

impl DnsHook {
    /// `None` when no hook is configured.
    pub fn from_config(config: &Dns01Config) -> Result<Option<DnsHook>, String> {
        let Some(command) = &config.hook else {
            return Ok(None);
        };
        check_executable(command)?;
        Ok(Some(DnsHook {
            command: command.clone(),
            timeout: config.hook_timeout,
            propagation_wait: config.propagation_wait,
        }))
    }

    /// Runs `<hook> <action> <record> <value>` in its own process group; fails on a non-zero
    /// exit, a hook that cannot start, or one still running after `acme.dns01.hook_timeout`.
    /// Whatever the hook started is killed with it when it ends, times out or is dropped (an
    /// order dropped at `acme.order_timeout`): no stray `set` lands after the `clear`.
    pub async fn run(&self, action: &str, record: &str, value: &str) -> Result<(), OrderFailure> {
        let failed = |detail: String| {
            OrderFailure::new(
                FailureReason::DnsHook,
                format!("acme.dns01.hook {action} {record}: {detail}"),
            )
        };
        let mut child = tokio::process::Command::new(&self.command)
            .args([action, record, value])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .map_err(|e| failed(format!("{}: {e}", self.command.display())))?;
        let group = ProcessGroup(child.id());
        let stdout = OutputTail::read(child.stdout.take());
        let stderr = OutputTail::read(child.stderr.take());
        let waited = tokio::time::timeout(self.timeout, child.wait()).await;
        drop(group);
        let status = match waited {
            Ok(status) => status.map_err(|e| failed(e.to_string()))?,
            Err(_) => {
                let _ = child.wait().await;
                return Err(failed(format!(
                    "still running after {:?}; killed",
                    self.timeout
                )));
            }
        };
        if status.success() {
            return Ok(());
        }
        let mut said = stderr.text().await;
        if said.is_empty() {
            said = stdout.text().await;
        }
        Err(failed(format!("{status}: {said}")))
    }
}

/// A hook's process group (its id is the hook's pid), killed on drop.
struct ProcessGroup(Option<u32>);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        if let Some(id) = self.0.and_then(|id| i32::try_from(id).ok()) {
            // ESRCH (everything already gone) is the usual answer.
            let _ = killpg(Pid::from_raw(id), Signal::SIGKILL);
        }
    }
}

/// The end of a hook's output: read to its end in a task (so a chatty hook never blocks on a
/// full pipe), keeping at most twice [`OUTPUT_SHOWN`] bytes.
struct OutputTail {
    kept: Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl OutputTail {
    fn read(pipe: Option<impl tokio::io::AsyncRead + Unpin + Send + 'static>) -> OutputTail {
        use tokio::io::AsyncReadExt;
        let kept = Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = pipe.map(|mut pipe| {
            let kept = kept.clone();
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
                    let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
                    kept.extend_from_slice(&chunk[..n]);
                    if kept.len() > 2 * OUTPUT_SHOWN {
                        let excess = kept.len() - OUTPUT_SHOWN;
                        kept.drain(..excess);
                    }
                }
            })
        });
        OutputTail { kept, reader }
    }

    /// What was kept, trimmed, at most [`OUTPUT_SHOWN`] bytes. Waits a moment for the pipe's
    /// end (a process the hook left behind may hold it open).
    async fn text(mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let abort = reader.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), reader)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&kept);
        tail(text.trim()).to_owned()
    }
}

impl Drop for OutputTail {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

/// The last [`OUTPUT_SHOWN`] bytes of `text` (on a character boundary).
fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(OUTPUT_SHOWN);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The TXT record DNS-01 checks for `name`: `_acme-challenge.<name without *.>`.
pub fn record_name(name: &str) -> String {
    format!(
        "_acme-challenge.{}",
        name.strip_prefix("*.").unwrap_or(name)
    )
}

/// The records one order published; each is cleared (in a spawned task) when this is dropped,
/// however the order ended.
pub struct PublishedRecords {
    hook: Arc<DnsHook>,
    records: Vec<(String, String)>,
}

impl PublishedRecords {
    pub fn new(hook: Arc<DnsHook>) -> PublishedRecords {
        PublishedRecords {
            hook,
            records: Vec::new(),
        }
    }

    /// Publishes `record` = `value` and waits `acme.dns01.propagation_wait`.
    pub async fn publish(&mut self, record: String, value: String) -> Result<(), OrderFailure> {
        // Kept before the run: a hook that failed half-way may have published it.
        self.records.push((record.clone(), value.clone()));
        self.hook.run("set", &record, &value).await?;
        tokio::time::sleep(self.hook.propagation_wait).await;
        Ok(())
    }
}

impl Drop for PublishedRecords {
    fn drop(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hook = self.hook.clone();
        let records = std::mem::take(&mut self.records);
        runtime.spawn(async move {
            for (record, value) in records {
                if let Err(e) = hook.run("clear", &record, &value).await {
                    tracing::warn!(record, error = %e.detail, "ACME DNS record not cleared");
                }
            }
        });
    }
}

/// The hook must be there and executable now, not at the first order hours later.
fn check_executable(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let metadata =
        std::fs::metadata(path).map_err(|e| format!("acme.dns01.hook {}: {e}", path.display()))?;
    if !metadata.is_file() || metadata.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "acme.dns01.hook {}: not an executable file",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_named_after_the_base_domain() {
        // (certificate name, TXT record)
        let rows = [
            (
                "*.preview.example.com",
                "_acme-challenge.preview.example.com",
            ),
            ("example.com", "_acme-challenge.example.com"),
        ];
        for (name, record) in rows {
            assert_eq!(record_name(name), record, "{name}");
        }
    }

    #[test]
    fn long_output_keeps_its_end_on_a_character_boundary() {
        let text = format!("{}é{}", "a".repeat(10), "b".repeat(OUTPUT_SHOWN - 1));
        let shown = tail(&text);
        assert!(shown.len() <= OUTPUT_SHOWN && shown.ends_with('b'));
        assert_eq!(tail("short"), "short");
    }

    fn hook_script(dir: &std::path::Path, body: &str) -> DnsHook {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("hook");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        DnsHook::from_config(&Dns01Config {
            hook: Some(path),
            hook_timeout: Duration::from_millis(500),
            ..Dns01Config::default()
        })
        .unwrap()
        .unwrap()
    }

    #[tokio::test]
    async fn a_hook_failure_says_what_the_hook_said() {
        let dir = tempfile::tempdir().unwrap();
        // (script, error contains; None: success)
        let rows: [(&str, Option<&str>); 7] = [
            ("echo \"$1 $2 $3\" > \"$(dirname \"$0\")/args\"", None),
            (
                "echo 'no API token' >&2; exit 3",
                Some("exit status: 3: no API token"),
            ),
            ("echo 'only stdout'; exit 1", Some("only stdout")),
            ("sleep 5", Some("still running after 500ms; killed")),
            // A chatty hook: its pipe is drained, the end is kept.
            (
                "head -c 1000000 /dev/zero | tr '\\0' x; echo ' the end' >&2; exit 1",
                Some("the end"),
            ),
            // A hook leaving a process behind that holds its output open.
            (
                "(sleep 5 &) ; echo gone >&2; exit 2",
                Some("exit status: 2: gone"),
            ),
            // What a timed-out hook started dies with it: no late write.
            (
                "(sleep 1; touch \"$(dirname \"$0\")/late\") & sleep 5",
                Some("killed"),
            ),
        ];
        for (script, expected) in rows {
            let hook = hook_script(dir.path(), script);
            let result = hook
                .run("set", "_acme-challenge.a.example.com", "v4lue")
                .await;
            match expected {
                None => {
                    assert!(result.is_ok(), "{script}: {result:?}");
                    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
                    assert_eq!(args.trim(), "set _acme-challenge.a.example.com v4lue");
                }
                Some(says) => {
                    let failure = result.expect_err(script);
                    assert_eq!(failure.reason, FailureReason::DnsHook);
                    assert!(
                        failure.detail.contains(says),
                        "{script}: {}",
                        failure.detail
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !dir.path().join("late").exists(),
            "a killed hook's child wrote"
        );
    }

    #[test]
    fn a_missing_or_plain_file_hook_is_refused_at_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        for path in [dir.path().join("missing"), plain, dir.path().to_path_buf()] {
            let config = Dns01Config {
                hook: Some(path.clone()),
                ..Dns01Config::default()
            };
            let error = DnsHook::from_config(&config).unwrap_err();
            assert!(error.starts_with("acme.dns01.hook "), "{path:?}: {error}");
        }
    }
}
