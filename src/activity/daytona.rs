//! The `daytona` activity sink: one `POST /sandbox/{id}/last-activity` per sandbox, through the
//! registry's Daytona API client (same retry rules).

use std::sync::Arc;

use futures_util::StreamExt;
use http::{Method, StatusCode};

use crate::activity::{ActivitySink, PartialWrite, SinkError};
use crate::config::DaytonaConfig;
use crate::registry::daytona::api::{segment, DaytonaApi};
use crate::registry::BoxFuture;

/// The `daytona` activity sink: one `POST /sandbox/{id}/last-activity` per sandbox, at most
/// `concurrency` at once, with the API client's retry rules.
pub struct DaytonaActivitySink {
    api: DaytonaApi,
    concurrency: usize,
}

impl DaytonaActivitySink {
    pub fn new(config: &DaytonaConfig, concurrency: usize) -> Result<DaytonaActivitySink, String> {
        Ok(DaytonaActivitySink {
            api: DaytonaApi::new(config)?,
            concurrency: concurrency.max(1),
        })
    }

    /// Whether the API took (or has no use for) the mark.
    async fn post(&self, id: &str) -> Result<(), String> {
        let Some(id) = segment(id) else {
            return Ok(());
        };
        let what = "POST /sandbox/{id}/last-activity";
        let path = format!("/sandbox/{id}/last-activity");
        match self.api.call(Method::POST, &path, what).await {
            Ok(answer) if answer.status.is_success() => Ok(()),
            // A deleted sandbox: retrying would never succeed.
            Ok(answer) if answer.status == StatusCode::NOT_FOUND => Ok(()),
            Ok(answer) => Err(format!(
                "{what}: unexpected status {}",
                answer.status.as_u16()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl ActivitySink for DaytonaActivitySink {
    fn write<'a>(&'a self, batch: &'a [(Arc<str>, u64)]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move { self.write_partial(batch).await.map_err(|p| p.error) })
    }

    fn write_partial<'a>(
        &'a self,
        batch: &'a [(Arc<str>, u64)],
    ) -> BoxFuture<'a, Result<(), PartialWrite>> {
        Box::pin(async move {
            let posts: Vec<_> = batch
                .iter()
                .enumerate()
                .map(|(i, (id, _))| async move { (i, self.post(id).await) })
                .collect();
            let results: Vec<(usize, Result<(), String>)> = futures_util::stream::iter(posts)
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
            let mut written = Vec::with_capacity(results.len());
            let mut failed = 0;
            let mut first_error = None;
            for (i, result) in results {
                match result {
                    Ok(()) => written.push(i),
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                None => Ok(()),
                Some(e) => Err(PartialWrite {
                    written,
                    error: SinkError(format!(
                        "{failed} of {} last-activity writes failed, first: {e}",
                        batch.len()
                    )),
                }),
            }
        })
    }
}
