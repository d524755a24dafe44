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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

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
    // One of `max_subscribers` places, held as long as the stream is open.
    let place = state.subscribers.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(
            format!(
                "Prism has {} change streams open, its limit (max_subscribers): try again later",
                state.limits.max_subscribers
            ),
            5,
        )
    })?;
    let (events, receiver) = mpsc::channel(64);
    let follower = Follower {
        registry: state.registry.clone(),
        closing: state.closing.clone(),
        name,
        prefix: params.prefix,
        events,
        budget: Arc::new(Semaphore::new(SUBSCRIBER_BYTES)),
    };
    tokio::spawn(follower.run(projector, resume));
    // Each event's share of the budget is given back as the event goes out.
    let stream = futures::stream::unfold((receiver, place), |(mut receiver, place)| async move {
        let (event, _share) = receiver.recv().await?;
        Some((Ok(event), (receiver, place)))
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

/// Most bytes of events one subscriber may have waiting (built but not yet sent); an event
/// larger than this waits until none does. A slow reader holds no more than this.
pub const SUBSCRIBER_BYTES: usize = 1 << 20;

/// Sends one subscriber its changes until it goes away or the projector does.
struct Follower {
    registry: Registry,
    closing: tokio::sync::watch::Receiver<bool>,
    name: String,
    prefix: String,
    /// Events with their share of the budget.
    events: mpsc::Sender<(Event, OwnedSemaphorePermit)>,
    /// The subscriber's [`SUBSCRIBER_BYTES`].
    budget: Arc<Semaphore>,
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
                        // Unloaded, not deleted (in a cluster, another node owns it now): the
                        // stream ends; the client reconnects, through any node, and resumes.
                        let kept = self.registry.recorded();
                        if kept.is_ok_and(|names| names.contains(&self.name)) {
                            return Ok(());
                        }
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

    /// Sends an event of `data`, waiting (at most [`SEND_TIMEOUT`]) for its share of the budget.
    async fn send_sized(&self, event: Event, data_len: usize) -> Result<(), Gone> {
        let share = (data_len + 64).min(SUBSCRIBER_BYTES) as u32;
        let send = async {
            let permit = self.budget.clone().acquire_many_owned(share).await.ok()?;
            self.events.send((event, permit)).await.ok()
        };
        match tokio::time::timeout(SEND_TIMEOUT, send).await {
            Ok(Some(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    /// Sends a small event (no data beyond a line of JSON).
    async fn send(&self, event: Event) -> Result<(), Gone> {
        self.send_sized(event, 0).await
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

    /// Sends a commit's changes under the prefix, one at a time (each is built only when the
    /// budget has room for it), the last one with the commit's id; only the id when none
    /// matches (so the client's position keeps up).
    async fn send_batch(&self, at: &Cursor, batch: &ChangeBatch) -> Result<(), Gone> {
        // References only: the events are built one by one below.
        let mut changes: Vec<(&String, &Option<Vec<u8>>)> = Vec::new();
        for (key, value) in batch.changes.range(self.prefix.clone()..) {
            if !key.starts_with(&self.prefix) {
                break;
            }
            changes.push((key, value));
        }
        let id = at.id(batch.position);
        if changes.is_empty() {
            return self.send(Event::default().id(id)).await;
        }
        let last = changes.len() - 1;
        for (i, (key, value)) in changes.into_iter().enumerate() {
            let mut data = match value {
                Some(value) => super::views::entry_json(key, value),
                None => json!({ "key": key, "deleted": true }),
            };
            data["position"] = batch.position.into();
            let data = data.to_string();
            let len = data.len();
            let mut event = Event::default().event("change").data(data);
            if i == last {
                event = event.id(id.clone());
            }
            self.send_sized(event, len).await?;
        }
        Ok(())
    }
}
