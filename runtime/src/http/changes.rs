//! `GET /projectors/{name}/changes?prefix=`: a projector's view changes as Server-Sent Events.
//!
//! - `event: change`, `data: {"position", "key", "value" | "value_base64" | "deleted": true}`:
//!   a key's new value (or its deletion) as of the commit at `position`. A commit's changes come
//!   together, in key order; the last one carries the SSE `id` `<generation>-<position>`.
//! - `event: subscribed`: the first event of a stream started without `Last-Event-ID`, with the
//!   `generation` and `checkpoint` the stream starts after (read the view, then subscribe with
//!   `Last-Event-ID: <generation>-<checkpoint>` from its `Prism-Generation`/`Prism-Checkpoint`
//!   headers, and nothing is missed in between).
//! - `event: reset`: the stream cannot continue from where the client was (the projector was
//!   rebuilt, or the position is older than the changes Prism keeps): re-read the view; the
//!   stream goes on from the `checkpoint` given.
//! - `event: deleted`: the projector was deleted; the stream ends.
//!
//! A client reconnecting with `Last-Event-ID` (the header browsers send, or `?last_event_id=`)
//! continues exactly after that commit. Changes are at-least-once across reconnects: values are
//! whole, so applying one twice is harmless. A commit with no change under `prefix` sends only
//! its `id`, so a client's position keeps up.

use super::{ApiError, AppState};
use crate::projector::{ChangeBatch, Generation, Registry, Since};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;
use utoipa::IntoParams;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ChangeParams {
    /// Only changes of keys starting with this (default: every key).
    #[serde(default)]
    prefix: String,
    /// Resume after this event id, `<generation>-<position>` (for clients that cannot send the
    /// `Last-Event-ID` header; the header wins).
    last_event_id: Option<String>,
}

/// `GET /projectors/{name}/changes?prefix=&last_event_id=`.
#[utoipa::path(
    get,
    path = "/projectors/{name}/changes",
    tag = "views",
    params(
        ("name" = String, Path, description = "The projector's name."),
        ChangeParams,
        ("Last-Event-ID" = Option<String>, Header,
            description = "Resume after this event id, `<generation>-<position>`."),
    ),
    responses(
        (status = 200, description = "Server-Sent Events, until the client leaves, the projector \
            is deleted or Prism shuts down. `event: change`, `data: {\"position\", \"key\", \
            \"value\" | \"value_base64\" | \"deleted\": true}`: a key's new value as of the commit \
            at `position` (a commit's last change carries the id `<generation>-<position>`); \
            `event: subscribed`, `data: {\"generation\", \"checkpoint\"}`: the first event without \
            `Last-Event-ID`; `event: reset`, `data: {\"reason\", \"generation\", \"checkpoint\"}`: \
            re-read the view, the stream goes on from `checkpoint`; `event: deleted`: the \
            projector was deleted, the stream ends. A commit with no change under `prefix` sends \
            only its id.",
            content_type = "text/event-stream", body = String),
        (status = 400, description = "A bad `Last-Event-ID` or an unknown query parameter.",
            body = super::ErrorBody),
        (status = 404, description = "No such projector.", body = super::ErrorBody),
    ),
)]
pub async fn changes(
    State(state): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    params: Result<Query<ChangeParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(params) = params?;
    let resume = match headers.get("last-event-id") {
        Some(header) => Some(
            header
                .to_str()
                .map_err(|_| ApiError::bad_request("Last-Event-ID is not text"))?
                .to_string(),
        ),
        None => params.last_event_id,
    };
    let resume = resume.as_deref().map(parse_id).transpose()?;
    let generation = state.projector(&name)?.serving();
    let (events, receiver) = mpsc::channel(256);
    let follower = Follower {
        registry: state.registry.clone(),
        closing: state.closing.clone(),
        name,
        prefix: params.prefix,
        events,
    };
    tokio::spawn(follower.run(generation, resume));
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = receiver.recv().await?;
        Some((Ok(event), receiver))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `<generation>-<position>`.
fn parse_id(id: &str) -> Result<(u64, u64), ApiError> {
    id.split_once('-')
        .and_then(|(g, p)| Some((g.parse().ok()?, p.parse().ok()?)))
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Last-Event-ID {id:?} is not <generation>-<position>, as this stream's ids are"
            ))
        })
}

fn event_id(generation: &Generation, position: u64) -> String {
    format!("{}-{position}", generation.id())
}

/// Sends one subscriber its changes until it goes away or the projector does.
struct Follower {
    registry: Registry,
    closing: tokio::sync::watch::Receiver<bool>,
    name: String,
    prefix: String,
    events: mpsc::Sender<Event>,
}

/// The subscriber went away.
struct Gone;

impl Follower {
    async fn run(self, mut generation: Arc<Generation>, resume: Option<(u64, u64)>) {
        let mut closing = self.closing.clone();
        // Ends the stream when Prism shuts down (graceful shutdown waits for open answers).
        tokio::select! {
            _ = self.follow(&mut generation, resume) => {}
            _ = closing.wait_for(|closing| *closing) => {}
        }
    }

    async fn follow(
        &self,
        generation: &mut Arc<Generation>,
        resume: Option<(u64, u64)>,
    ) -> Result<(), Gone> {
        let mut after = match resume {
            Some((id, position)) if id == generation.id() => position,
            Some(_) => {
                self.reset(
                    generation,
                    "the projector was rebuilt since (a new generation)",
                )
                .await?
            }
            None => {
                let checkpoint = generation.changes.checkpoint();
                let data = json!({ "generation": generation.id(), "checkpoint": checkpoint });
                self.send(
                    Event::default()
                        .event("subscribed")
                        .id(event_id(generation, checkpoint))
                        .data(data.to_string()),
                )
                .await?;
                checkpoint
            }
        };
        loop {
            let mut wake = generation.changes.subscribe();
            match generation.changes.since(after) {
                Since::Changes(batches) => {
                    for batch in batches {
                        self.send_batch(generation, &batch).await?;
                        after = batch.position;
                    }
                }
                Since::Gone { .. } => {
                    after = self
                        .reset(
                            generation,
                            "the position is older than the changes Prism keeps",
                        )
                        .await?;
                    continue;
                }
                Since::Closed => {
                    let Some(projector) = self.registry.get(&self.name) else {
                        self.send(Event::default().event("deleted").data("{}"))
                            .await?;
                        return Ok(());
                    };
                    let next = projector.serving();
                    if Arc::ptr_eq(&next, generation) {
                        // Stopped and not replaced: Prism is shutting down.
                        return Ok(());
                    }
                    let rebuilt = next.id() != generation.id();
                    *generation = next;
                    if rebuilt {
                        after = self
                            .reset(generation, "the projector was rebuilt (a new generation)")
                            .await?;
                    }
                    continue;
                }
            }
            tokio::select! {
                woken = wake.changed() => if woken.is_err() { return Ok(()) },
                () = self.events.closed() => return Err(Gone),
            }
        }
    }

    async fn send(&self, event: Event) -> Result<(), Gone> {
        self.events.send(event).await.map_err(|_| Gone)
    }

    /// Tells the client to re-read; returns the position the stream goes on from.
    async fn reset(&self, generation: &Generation, reason: &str) -> Result<u64, Gone> {
        let checkpoint = generation.changes.checkpoint();
        let data = json!({
            "reason": reason,
            "generation": generation.id(),
            "checkpoint": checkpoint,
        });
        self.send(
            Event::default()
                .event("reset")
                .id(event_id(generation, checkpoint))
                .data(data.to_string()),
        )
        .await?;
        Ok(checkpoint)
    }

    async fn send_batch(&self, generation: &Generation, batch: &ChangeBatch) -> Result<(), Gone> {
        for event in self.batch_events(generation, batch) {
            self.send(event).await?;
        }
        Ok(())
    }

    /// A commit's changes under the prefix, the last one with the commit's id; only the id when
    /// none matches (so the client's position keeps up).
    fn batch_events(&self, generation: &Generation, batch: &ChangeBatch) -> Vec<Event> {
        let mut events: Vec<Event> = batch
            .changes
            .range(self.prefix.clone()..)
            .take_while(|(key, _)| key.starts_with(&self.prefix))
            .map(|(key, value)| {
                let mut data = match value {
                    Some(value) => super::views::entry_json(key, value),
                    None => json!({ "key": key, "deleted": true }),
                };
                data["position"] = batch.position.into();
                Event::default().event("change").data(data.to_string())
            })
            .collect();
        let id = event_id(generation, batch.position);
        match events.pop() {
            Some(last) => events.push(last.id(id)),
            None => events.push(Event::default().id(id)),
        }
        events
    }
}
