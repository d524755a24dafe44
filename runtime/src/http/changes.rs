//! `GET /projectors/{name}/changes?prefix=`: a projector's view changes as Server-Sent Events.
//!
//! - `event: change`, `data: {"position", "key", "value" | "value_base64" | "deleted": true}`:
//!   a key's new value (or its deletion) as of the commit at `position`. A commit's changes come
//!   together, in key order; the last one carries the SSE `id`
//!   `<incarnation>-<generation>-<position>` (the incarnation tells this deployment from an
//!   earlier one of the same name).
//! - `event: subscribed`: the first event of a stream started without `Last-Event-ID`, with the
//!   `generation` and `checkpoint` the stream starts after, and its id.
//! - `event: reset`: the stream cannot continue from where the client was (the projector was
//!   rebuilt or deployed anew, the position is older than the changes Prism keeps, or a
//!   dead-letter retry changed the view at an earlier position): re-read the view; the stream
//!   goes on from the `checkpoint` given.
//! - `event: deleted`: the projector was deleted; the stream ends.
//!
//! A client reconnecting with `Last-Event-ID` (the header browsers send, or `?last_event_id=`)
//! continues exactly after that commit. Changes are at-least-once across reconnects: values are
//! whole, so applying one twice is harmless. A commit with no change under `prefix` sends only
//! its `id`, so a client's position keeps up.

use super::extract::{Path, Query};
use super::{ApiError, AppState};
use crate::projector::{ChangeBatch, Generation, ProjectorHandle, Registry, Since};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use prism_client::wire::ChangeParams;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::mpsc;

/// `GET /projectors/{name}/changes?prefix=&last_event_id=`.
#[utoipa::path(
    get,
    path = "/projectors/{name}/changes",
    tag = "views",
    params(
        ("name" = String, Path, description = "The projector's name."),
        ChangeParams,
        ("Last-Event-ID" = Option<String>, Header,
            description = "Resume after this event id, `<incarnation>-<generation>-<position>`."),
    ),
    responses(
        (status = 200, description = "Server-Sent Events, until the client leaves, the projector \
            is deleted or Prism shuts down. `event: change`, `data: {\"position\", \"key\", \
            \"value\" | \"value_base64\" | \"deleted\": true}`: a key's new value as of the commit \
            at `position` (a commit's last change carries the id `<incarnation>-<generation>-<position>`); \
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
    Query(params): Query<ChangeParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
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
    let projector = state.projector(&name)?;
    let (events, receiver) = mpsc::channel(256);
    let follower = Follower {
        registry: state.registry.clone(),
        closing: state.closing.clone(),
        name,
        prefix: params.prefix,
        events,
    };
    tokio::spawn(follower.run(projector, resume));
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        let event = receiver.recv().await?;
        Some((Ok(event), receiver))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// `<incarnation>-<generation>-<position>`.
fn parse_id(id: &str) -> Result<(u64, u64, u64), ApiError> {
    let mut parts = id.splitn(3, '-').map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(incarnation)), Some(Ok(generation)), Some(Ok(position))) => {
            Ok((incarnation, generation, position))
        }
        _ => Err(ApiError::bad_request(format!(
            "Last-Event-ID {id:?} is not <incarnation>-<generation>-<position>, as this stream's ids are"
        ))),
    }
}

/// How long a client may leave an event unread before it is dropped (it would otherwise hold
/// an old generation, and its kept changes, for as long as it stays connected).
const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends one subscriber its changes until it goes away or the projector does.
struct Follower {
    registry: Registry,
    closing: tokio::sync::watch::Receiver<bool>,
    name: String,
    prefix: String,
    events: mpsc::Sender<Event>,
}

/// Where a follower is: which deployment and generation, and the last position sent.
struct Cursor {
    projector: Arc<ProjectorHandle>,
    generation: Arc<Generation>,
    after: u64,
    /// The feed's invalidation count last seen.
    invalidations: u64,
}

impl Cursor {
    fn id(&self, position: u64) -> String {
        format!(
            "{}-{}-{position}",
            self.projector.incarnation, self.generation.id
        )
    }
}

/// The subscriber went away (or stopped reading).
struct Gone;

impl Follower {
    async fn run(self, projector: Arc<ProjectorHandle>, resume: Option<(u64, u64, u64)>) {
        let mut closing = self.closing.clone();
        // Ends the stream when Prism shuts down (graceful shutdown waits for open answers).
        tokio::select! {
            _ = self.follow(projector, resume) => {}
            _ = closing.wait_for(|closing| *closing) => {}
        }
    }

    async fn follow(
        &self,
        projector: Arc<ProjectorHandle>,
        resume: Option<(u64, u64, u64)>,
    ) -> Result<(), Gone> {
        let generation = projector.serving();
        let mut at = Cursor {
            invalidations: generation.changes.invalidations(),
            after: 0,
            projector,
            generation,
        };
        match resume {
            Some((incarnation, generation, position))
                if incarnation == at.projector.incarnation && generation == at.generation.id =>
            {
                at.after = position;
            }
            Some(_) => {
                self.reset(
                    &mut at,
                    "the projector was rebuilt or deployed anew since (another generation)",
                )
                .await?;
            }
            None => {
                at.after = at.generation.changes.checkpoint();
                let data = json!({ "generation": at.generation.id, "checkpoint": at.after });
                self.send(
                    Event::default()
                        .event("subscribed")
                        .id(at.id(at.after))
                        .data(data.to_string()),
                )
                .await?;
            }
        }
        loop {
            let feed = at.generation.changes.clone();
            let mut wake = feed.subscribe();
            if feed.invalidations() != at.invalidations {
                at.invalidations = feed.invalidations();
                self.reset(
                    &mut at,
                    "a dead letter was retried: the view changed at an earlier position",
                )
                .await?;
                continue;
            }
            match feed.since(at.after) {
                Since::Changes(batches) => {
                    for batch in batches {
                        self.send_batch(&at, &batch).await?;
                        at.after = batch.position;
                    }
                }
                Since::Gone { .. } => {
                    self.reset(
                        &mut at,
                        "the position is older than the changes Prism keeps",
                    )
                    .await?;
                    continue;
                }
                Since::Ahead { .. } => {
                    // Committed but not yet published (the client read the view a moment
                    // before the runner handed the commit to the feed): wait for it.
                    let committed = at.generation.store.checkpoint().unwrap_or_default();
                    if at.after > committed {
                        self.reset(&mut at, "the position is ahead of this projector's view")
                            .await?;
                        continue;
                    }
                }
                Since::Closed => {
                    let Some(projector) = self.registry.get(&self.name) else {
                        self.send(Event::default().event("deleted").data("{}"))
                            .await?;
                        return Ok(());
                    };
                    let next = projector.serving();
                    if Arc::ptr_eq(&projector, &at.projector) && Arc::ptr_eq(&next, &at.generation)
                    {
                        // Stopped and not replaced: Prism is shutting down.
                        return Ok(());
                    }
                    let same_view =
                        Arc::ptr_eq(&projector, &at.projector) && next.id == at.generation.id;
                    at.projector = projector;
                    at.invalidations = next.changes.invalidations();
                    at.generation = next;
                    if !same_view {
                        self.reset(
                            &mut at,
                            "the projector was rebuilt or deployed anew (another generation)",
                        )
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
        match tokio::time::timeout(SEND_TIMEOUT, self.events.send(event)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    /// Tells the client to re-read; the stream goes on from the feed's checkpoint.
    async fn reset(&self, at: &mut Cursor, reason: &str) -> Result<(), Gone> {
        at.after = at.generation.changes.checkpoint();
        let data = json!({
            "reason": reason,
            "generation": at.generation.id,
            "checkpoint": at.after,
        });
        self.send(
            Event::default()
                .event("reset")
                .id(at.id(at.after))
                .data(data.to_string()),
        )
        .await
    }

    async fn send_batch(&self, at: &Cursor, batch: &ChangeBatch) -> Result<(), Gone> {
        for event in self.batch_events(at, batch) {
            self.send(event).await?;
        }
        Ok(())
    }

    /// A commit's changes under the prefix, the last one with the commit's id; only the id when
    /// none matches (so the client's position keeps up).
    fn batch_events(&self, at: &Cursor, batch: &ChangeBatch) -> Vec<Event> {
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
        let id = at.id(batch.position);
        match events.pop() {
            Some(last) => events.push(last.id(id)),
            None => events.push(Event::default().id(id)),
        }
        events
    }
}
