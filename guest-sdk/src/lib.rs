//! Write Prism projectors in Rust.
//!
//! A projector turns events into a read model ("view"): an ordered key-value map that Prism
//! stores, checkpoints and serves over HTTP. Prism runs projectors as sandboxed WebAssembly
//! components; this crate hides the WebAssembly plumbing so a projector is a plain Rust type.
//!
//! # Concepts
//! - [`Projector`]: the trait you implement. `apply` is called once per event, in log order.
//! - [`Event`]: one event, with its position, stream, type, and JSON `data`/`metadata`.
//! - [`View`]: your projector's key-value view. Values are JSON (via serde) or raw bytes.
//!   Writes commit atomically with Prism's checkpoint after each batch, so the view never holds
//!   half a batch, and no event is applied twice.
//! - [`Subscription`]: which event types and stream prefixes you want; Prism filters before
//!   calling into your code, so unwanted events cost nothing.
//! - [`export_projector!`]: exports your type as the component's entry points.
//!
//! Projectors are pure: they cannot read clocks, files or the network. Everything they know
//! comes from events and their own view, so a replay always yields the same view.
//!
//! # Example
//! ```no_run
//! use prism_guest::{Event, Error, Projector, Subscription, View};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Deposited { account: String, amount: i64 }
//!
//! struct Balances;
//!
//! impl Projector for Balances {
//!     const NAME: &'static str = "balances";
//!     const SCHEMA_VERSION: u32 = 1;
//!
//!     fn subscription() -> Subscription {
//!         Subscription::event_types(["Deposited"])
//!     }
//!
//!     fn apply(event: &Event<'_>, view: &mut View) -> Result<(), Error> {
//!         let deposit: Deposited = event.data()?;
//!         // A key from parts, built without an allocation per event.
//!         view.update(("balance/", &deposit.account), |balance: &mut i64| {
//!             *balance += deposit.amount
//!         })
//!     }
//! }
//!
//! prism_guest::export_projector!(Balances);
//! ```
//!
//! Build it for `wasm32-unknown-unknown` (`prism`'s tooling finds a toolchain for you) and
//! upload the `.wasm` with `prism deploy balances target/.../balances.wasm`.

use hashbrown::HashMap;
use rustc_hash::FxBuildHasher;
use serde::Serialize;
use serde::de::{Deserialize, DeserializeOwned};
use std::any::Any;
use std::fmt;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "projector-world",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "__export_projector_world",
        default_bindings_module: "prism_guest::bindings",
    });
}

use bindings::prism::projector::{host, types as wit, view as wit_view};

/// A projector: a pure function from events to writes on its [`View`].
///
/// Implement it on a unit struct and export it with [`export_projector!`].
pub trait Projector {
    /// A human-readable name of the projector code, shown in Prism's status.
    const NAME: &'static str;

    /// Version of the view's layout. Bump it when a new version of your code needs the view
    /// rebuilt from the start of the log (new keys, new value format); keep it when the new code
    /// can continue from the existing view.
    const SCHEMA_VERSION: u32 = 1;

    /// Which events to deliver. Defaults to every event.
    fn subscription() -> Subscription {
        Subscription::all()
    }

    /// Called once per instance with the deployment's configuration string (may be empty).
    fn init(config: &str) -> Result<(), Error> {
        let _ = config;
        Ok(())
    }

    /// Applies one event to the view. Returning an error fails the whole batch: none of its
    /// writes are kept, and Prism reports the event.
    fn apply(event: &Event<'_>, view: &mut View) -> Result<(), Error>;
}

/// Which events a projector wants. An event is delivered when it matches both the type list
/// and the stream-prefix list; an empty list matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    event_types: Vec<String>,
    stream_prefixes: Vec<String>,
}

impl Subscription {
    /// Every event of the log.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only events of these types.
    pub fn event_types<I, S>(types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::default().and_event_types(types)
    }

    /// Only events of streams whose name starts with one of these prefixes.
    pub fn stream_prefixes<I, S>(prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::default().and_stream_prefixes(prefixes)
    }

    /// Adds event types to the subscription.
    pub fn and_event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_types.extend(types.into_iter().map(Into::into));
        self
    }

    /// Adds stream prefixes to the subscription.
    pub fn and_stream_prefixes<I, S>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.stream_prefixes
            .extend(prefixes.into_iter().map(Into::into));
        self
    }
}

/// One event, borrowed from the batch Prism delivered.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// Global, gapless position in the log (the first event is 1).
    pub position: u64,
    /// Position within its stream (the first event of a stream is 1).
    pub stream_version: u64,
    /// When the log stored the event, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The stream the event belongs to, e.g. `order-42`.
    pub stream: &'a str,
    /// The event's type, e.g. `OrderPlaced`.
    pub event_type: &'a str,
    data: &'a [u8],
    metadata: &'a [u8],
}

impl<'a> Event<'a> {
    /// Decodes the event's JSON data into `T`.
    pub fn data<T: Deserialize<'a>>(&self) -> Result<T, Error> {
        serde_json::from_slice(self.data).map_err(|e| {
            // The host names the event (position, type, stream) wherever it shows the error.
            Error::msg(format!("bad data: {e}"))
        })
    }

    /// The event's data as the JSON bytes that were appended.
    pub fn raw_data(&self) -> &'a [u8] {
        self.data
    }

    /// Decodes the event's JSON metadata into `T`.
    pub fn metadata<T: Deserialize<'a>>(&self) -> Result<T, Error> {
        serde_json::from_slice(self.metadata).map_err(|e| {
            Error::msg(format!(
                "event {} ({}): bad metadata: {e}",
                self.position, self.event_type
            ))
        })
    }

    /// The event's metadata as JSON bytes (`{}` when none was given).
    pub fn raw_metadata(&self) -> &'a [u8] {
        self.metadata
    }

    /// The stream's category: the part of the stream name before the first `-`
    /// (`order-42` → `order`), or the whole name when it has none.
    pub fn category(&self) -> &'a str {
        category(self.stream)
    }
}

/// The category of a stream name: the part before the first `-`, or the whole name.
pub fn category(stream: &str) -> &str {
    stream.split_once('-').map_or(stream, |(c, _)| c)
}

/// A view key: a string (`"stats"`, `&String`), or a tuple of parts joined in order —
/// `("customer/", id)`, `("day/", 2024u32, "/total")` — built in a buffer the view reuses, so
/// naming a key costs no allocation (only a key new to the batch is copied, once).
pub trait Key {
    /// Appends the key to `into`.
    fn write_to(&self, into: &mut String);
    /// The key itself, when it already is one string.
    fn as_str(&self) -> Option<&str> {
        None
    }
}

/// One part of a tuple [`Key`]: a string, a character, or an integer (in decimal).
pub trait KeyPart {
    /// Appends the part to `into`.
    fn push_to(&self, into: &mut String);
}

impl Key for str {
    fn write_to(&self, into: &mut String) {
        into.push_str(self)
    }
    fn as_str(&self) -> Option<&str> {
        Some(self)
    }
}

impl Key for String {
    fn write_to(&self, into: &mut String) {
        into.push_str(self)
    }
    fn as_str(&self) -> Option<&str> {
        Some(self)
    }
}

impl<K: Key + ?Sized> Key for &K {
    fn write_to(&self, into: &mut String) {
        (**self).write_to(into)
    }
    fn as_str(&self) -> Option<&str> {
        (**self).as_str()
    }
}

impl KeyPart for str {
    fn push_to(&self, into: &mut String) {
        into.push_str(self)
    }
}

impl KeyPart for String {
    fn push_to(&self, into: &mut String) {
        into.push_str(self)
    }
}

impl KeyPart for char {
    fn push_to(&self, into: &mut String) {
        into.push(*self)
    }
}

impl<P: KeyPart + ?Sized> KeyPart for &P {
    fn push_to(&self, into: &mut String) {
        (**self).push_to(into)
    }
}

macro_rules! integer_key_parts {
    ($($t:ty),*) => {$(
        impl KeyPart for $t {
            fn push_to(&self, into: &mut String) {
                use std::fmt::Write;
                let _ = write!(into, "{self}");
            }
        }
    )*};
}
integer_key_parts!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

macro_rules! tuple_keys {
    ($(($($part:ident),+)),*) => {$(
        impl<$($part: KeyPart),+> Key for ($($part,)+) {
            #[allow(non_snake_case)]
            fn write_to(&self, into: &mut String) {
                let ($($part,)+) = self;
                $($part.push_to(into);)+
            }
        }
    )*};
}
tuple_keys!((A, B), (A, B, C), (A, B, C, D), (A, B, C, D, E));

/// The projector's view: an ordered key-value map. Values written with [`View::put`] are JSON.
///
/// Within one batch the view keeps what it read and wrote in guest memory: a key read or
/// written again costs no call to the host, and the batch's writes go to the host in one call
/// when `apply` ends. Prism commits them with the checkpoint when the batch succeeds.
pub struct View {
    /// Values read or written during this batch; `dirty` ones still have to reach the host.
    cache: HashMap<String, Cached, FxBuildHasher>,
    /// Where tuple keys are built (reused).
    key: String,
}

struct Cached {
    value: Cell,
    dirty: bool,
}

/// A cached value: bytes as the host has them, or a value [`View::update`] decoded, kept
/// decoded so that updating the same key again costs no JSON round trip.
enum Cell {
    Bytes(Option<Vec<u8>>),
    Typed(Box<dyn Erased>),
}

/// A decoded value whose type is known only to the code that decoded it.
trait Erased: Any {
    fn to_json(&self) -> Vec<u8>;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Serialize + Any> Erased for T {
    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a view value serializes")
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Cell {
    /// The value as bytes (encoding a decoded one).
    fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Cell::Bytes(bytes) => bytes,
            Cell::Typed(value) => Some(value.to_json()),
        }
    }
}

impl View {
    fn new() -> Self {
        View {
            cache: HashMap::default(),
            key: String::new(),
        }
    }

    /// Calls `f` with `key` as one string, built in the reused buffer when it is a tuple.
    fn keyed<R>(&mut self, key: impl Key, f: impl FnOnce(&mut View, &str) -> R) -> R {
        if let Some(key) = key.as_str() {
            return f(self, key);
        }
        let mut buffer = std::mem::take(&mut self.key);
        buffer.clear();
        key.write_to(&mut buffer);
        let result = f(self, &buffer);
        self.key = buffer;
        result
    }

    /// Reads and decodes the JSON value under `key`.
    pub fn get<T: DeserializeOwned>(&mut self, key: impl Key) -> Result<Option<T>, Error> {
        self.keyed(key, |view, key| view.get_str(key))
    }

    fn get_str<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, Error> {
        match self.cached(key) {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(bytes)
                .map(Some)
                .map_err(|e| Error::msg(format!("view key {key:?}: bad JSON value: {e}"))),
        }
    }

    /// Reads the raw bytes under `key`.
    pub fn get_raw(&mut self, key: impl Key) -> Option<Vec<u8>> {
        self.keyed(key, |view, key| view.cached(key).map(<[u8]>::to_vec))
    }

    /// The entry for `key`, read from the host on first use.
    fn entry(&mut self, key: &str) -> &mut Cached {
        // One lookup; the key is copied only when it is new.
        self.cache.entry_ref(key).or_insert_with(|| Cached {
            value: Cell::Bytes(wit_view::get(key)),
            dirty: false,
        })
    }

    fn cached(&mut self, key: &str) -> Option<&[u8]> {
        let entry = self.entry(key);
        if let Cell::Typed(_) = entry.value {
            let cell = std::mem::replace(&mut entry.value, Cell::Bytes(None));
            entry.value = Cell::Bytes(cell.into_bytes());
        }
        match &entry.value {
            Cell::Bytes(bytes) => bytes.as_deref(),
            Cell::Typed(_) => unreachable!("turned into bytes above"),
        }
    }

    fn write(&mut self, key: &str, value: Option<Vec<u8>>) {
        let cached = Cached {
            value: Cell::Bytes(value),
            dirty: true,
        };
        match self.cache.get_mut(key) {
            Some(entry) => *entry = cached,
            None => {
                self.cache.insert(key.to_string(), cached);
            }
        }
    }

    /// Stores `value` as JSON under `key`.
    pub fn put<T: Serialize + ?Sized>(&mut self, key: impl Key, value: &T) -> Result<(), Error> {
        self.keyed(key, |view, key| {
            let bytes = serde_json::to_vec(value)
                .map_err(|e| Error::msg(format!("view key {key:?}: cannot encode value: {e}")))?;
            view.write(key, Some(bytes));
            Ok(())
        })
    }

    /// Stores raw bytes under `key`.
    pub fn put_raw(&mut self, key: impl Key, value: &[u8]) {
        self.keyed(key, |view, key| view.write(key, Some(value.to_vec())))
    }

    /// Removes `key` (a missing key is fine).
    pub fn delete(&mut self, key: impl Key) {
        self.keyed(key, |view, key| view.write(key, None))
    }

    /// Sends the buffered writes to the host.
    fn flush(&mut self) {
        let writes: Vec<(String, Option<Vec<u8>>)> = self
            .cache
            .iter_mut()
            .filter(|(_, entry)| entry.dirty)
            .map(|(key, entry)| {
                entry.dirty = false;
                let bytes = match &entry.value {
                    Cell::Bytes(bytes) => bytes.clone(),
                    Cell::Typed(value) => Some(value.to_json()),
                };
                (key.clone(), bytes)
            })
            .collect();
        if !writes.is_empty() {
            wit_view::write_many(&writes);
        }
    }

    /// Reads the value under `key` (or `T::default()` when missing), lets `f` change it, and
    /// stores it back. The value stays decoded for the rest of the batch, so updating a hot key
    /// (a counter, a total) costs no JSON decoding or encoding per event.
    pub fn update<T, F>(&mut self, key: impl Key, f: F) -> Result<(), Error>
    where
        T: Serialize + DeserializeOwned + Default + Any,
        F: FnOnce(&mut T),
    {
        self.keyed(key, |view, key| view.update_str(key, f))
    }

    fn update_str<T, F>(&mut self, key: &str, f: F) -> Result<(), Error>
    where
        T: Serialize + DeserializeOwned + Default + Any,
        F: FnOnce(&mut T),
    {
        let entry = self.entry(key);
        // (No let-chains: the SDK builds with Rust 1.85.)
        if let Cell::Typed(value) = &mut entry.value {
            if let Some(value) = value.as_any_mut().downcast_mut::<T>() {
                f(value);
                entry.dirty = true;
                return Ok(());
            }
        }
        let bytes = std::mem::replace(&mut entry.value, Cell::Bytes(None)).into_bytes();
        let mut value: T = match &bytes {
            None => T::default(),
            Some(raw) => match serde_json::from_slice(raw) {
                Ok(value) => value,
                Err(e) => {
                    entry.value = Cell::Bytes(bytes);
                    return Err(Error::msg(format!("view key {key:?}: bad JSON value: {e}")));
                }
            },
        };
        f(&mut value);
        entry.value = Cell::Typed(Box::new(value));
        entry.dirty = true;
        Ok(())
    }

    /// Reads the value under `key`, and stores what `f` returns: `Some` replaces the value,
    /// `None` deletes the key.
    pub fn modify<T, F>(&mut self, key: impl Key, f: F) -> Result<(), Error>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Option<T>) -> Option<T>,
    {
        self.keyed(key, |view, key| match f(view.get_str::<T>(key)?) {
            Some(value) => view.put(key, &value),
            None => {
                view.delete(key);
                Ok(())
            }
        })
    }

    /// Up to `limit` entries whose key starts with `prefix`, in key order, after the key
    /// `after` when given. Values are decoded from JSON.
    pub fn scan<T: DeserializeOwned>(
        &mut self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, T)>, Error> {
        // The host merges its view with the batch's writes: send them first.
        self.flush();
        wit_view::scan(prefix, after, limit)
            .into_iter()
            .map(|(key, bytes)| match serde_json::from_slice(&bytes) {
                Ok(value) => Ok((key, value)),
                Err(e) => Err(Error::msg(format!("view key {key:?}: bad JSON value: {e}"))),
            })
            .collect()
    }
}

/// An error from a projector: a message Prism shows with the failing event.
///
/// Any `std::error::Error` converts into it, so `?` works on serde and parsing errors.
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Error(message.to_string())
    }

    /// The error's message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        Error(error.to_string())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Diagnostics written to Prism's log, tagged with the projector's deployment name.
pub mod log {
    use super::host;
    pub use super::wit::Level;

    /// Writes a line at `level`.
    pub fn write(level: Level, message: &str) {
        host::log(level, message)
    }
    /// Writes a debug line.
    pub fn debug(message: &str) {
        write(Level::Debug, message)
    }
    /// Writes an info line.
    pub fn info(message: &str) {
        write(Level::Info, message)
    }
    /// Writes a warning.
    pub fn warn(message: &str) {
        write(Level::Warn, message)
    }
    /// Writes an error line.
    pub fn error(message: &str) {
        write(Level::Error, message)
    }
}

/// Exports a [`Projector`] type as the component's entry points.
///
/// ```text
/// prism_guest::export_projector!(MyProjector);
/// ```
#[macro_export]
macro_rules! export_projector {
    ($projector:ty) => {
        const _: () = {
            struct PrismExport;
            impl $crate::bindings::exports::prism::projector::projector::Guest for PrismExport {
                fn describe() -> $crate::bindings::prism::projector::types::Descriptor {
                    $crate::__private::describe::<$projector>()
                }
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::__private::init::<$projector>(&config)
                }
                fn apply(
                    batch: $crate::bindings::prism::projector::types::Batch,
                ) -> ::std::result::Result<(), $crate::bindings::prism::projector::types::ApplyError> {
                    $crate::__private::apply::<$projector>(batch)
                }
            }
            $crate::bindings::__export_projector_world!(PrismExport with_types_in $crate::bindings);
        };
    };
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    pub fn describe<P: Projector>() -> wit::Descriptor {
        let Subscription {
            event_types,
            stream_prefixes,
        } = P::subscription();
        wit::Descriptor {
            name: P::NAME.to_string(),
            event_types,
            stream_prefixes,
            schema_version: P::SCHEMA_VERSION,
        }
    }

    pub fn init<P: Projector>(config: &str) -> Result<(), String> {
        P::init(config).map_err(|e| e.0)
    }

    pub fn apply<P: Projector>(batch: wit::Batch) -> Result<(), wit::ApplyError> {
        let mut view = View::new();
        for (index, header) in batch.events.iter().enumerate() {
            // Starts this event's own instruction budget, and names the event a trap belongs to.
            host::begin_event(index as u32);
            let fail = |message: String| wit::ApplyError {
                index: index as u32,
                message,
            };
            let event = decode(header, &batch.bytes).map_err(fail)?;
            P::apply(&event, &mut view).map_err(|e| fail(e.0))?;
        }
        view.flush();
        Ok(())
    }

    /// Borrows one event out of a batch's shared byte buffer.
    pub fn decode<'a>(header: &wit::EventHeader, bytes: &'a [u8]) -> Result<Event<'a>, String> {
        let slice = |offset: u32, len: u32, what: &str| {
            let start = offset as usize;
            start
                .checked_add(len as usize)
                .and_then(|end| bytes.get(start..end))
                .ok_or_else(|| format!("event {}: {what} out of bounds", header.position))
        };
        let text = |offset, len, what| {
            let bytes = slice(offset, len, what)?;
            // Stream names and event types were validated as UTF-8 when they were appended;
            // the host copies them unchanged.
            if cfg!(debug_assertions) && std::str::from_utf8(bytes).is_err() {
                return Err(format!("event {}: {what} is not UTF-8", header.position));
            }
            // SAFETY: the host only sends strings it holds as `&str` (see above).
            Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
        };
        Ok(Event {
            position: header.position,
            stream_version: header.stream_version,
            timestamp_ms: header.timestamp_ms,
            stream: text(header.stream_offset, header.stream_len, "stream")?,
            event_type: text(header.type_offset, header.type_len, "type")?,
            data: slice(header.data_offset, header.data_len, "data")?,
            metadata: slice(header.metadata_offset, header.metadata_len, "metadata")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(position: u64, parts: [(u32, u32); 4]) -> wit::EventHeader {
        wit::EventHeader {
            position,
            stream_version: 1,
            timestamp_ms: 7,
            stream_offset: parts[0].0,
            stream_len: parts[0].1,
            type_offset: parts[1].0,
            type_len: parts[1].1,
            data_offset: parts[2].0,
            data_len: parts[2].1,
            metadata_offset: parts[3].0,
            metadata_len: parts[3].1,
        }
    }

    #[test]
    fn decodes_an_event_from_the_shared_buffer() {
        let bytes = b"order-1OrderPlaced{\"total\":5}{}";
        let h = header(3, [(0, 7), (7, 11), (18, 11), (29, 2)]);
        let event = __private::decode(&h, bytes).unwrap();
        assert_eq!(event.stream, "order-1");
        assert_eq!(event.event_type, "OrderPlaced");
        assert_eq!(event.category(), "order");
        assert_eq!(event.position, 3);
        #[derive(serde::Deserialize)]
        struct Placed {
            total: u32,
        }
        assert_eq!(event.data::<Placed>().unwrap().total, 5);
        assert_eq!(event.raw_metadata(), b"{}");
    }

    #[test]
    fn rejects_out_of_bounds_headers() {
        let h = header(9, [(0, 7), (7, 11), (18, 100), (0, 0)]);
        let err = __private::decode(&h, b"order-1OrderPlaced{}").unwrap_err();
        assert!(err.contains("event 9: data out of bounds"), "{err}");
    }

    #[test]
    fn bad_data_names_the_event() {
        let h = header(4, [(0, 1), (1, 1), (2, 3), (0, 0)]);
        let event = __private::decode(&h, b"sTnot").unwrap();
        let err = event.data::<u32>().unwrap_err();
        assert!(err.message().starts_with("bad data: "), "{err}");
    }

    #[test]
    fn category_is_the_part_before_the_first_dash() {
        assert_eq!(category("account-7-x"), "account");
        assert_eq!(category("plain"), "plain");
    }
}
