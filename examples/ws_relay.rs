//! Alice and Bob over real WebSockets on loopback, through an untrusted relay: any transport
//! can carry the crate's bytes.
//!
//! The relay (a tokio task on `127.0.0.1` with an OS-assigned port) is a key server and a
//! store-and-forward message relay in one. It verifies signed device lists and issues sender
//! certificates for listed devices, stores prekey uploads and hands out bundles, splits sealed
//! multi-recipient uploads with [`server::split_upload`], validates single envelopes with
//! [`Envelope::from_bytes`], and forwards each [`Envelope`] to its recipient device if it is
//! connected or queues it until it connects. It routes on the recipient alone: every message is
//! a sealed fan-out, so it never learns the sender from an envelope, and it never sees a
//! plaintext or a secret key.
//!
//! Each client (one device each) has an account key, a device identity key, [`PreKeys`] and a
//! [`SessionBook`]. Alice fetches Bob's device list and a PQXDH bundle through the relay while
//! Bob is offline, sends two messages that the relay queues, and then they take turns: five
//! messages each way, each an application payload ([`content::application`]) sent with
//! [`SessionBook::fan_out_sealed`] and read with [`SessionBook::open_sealed`] and
//! [`SessionBook::receive_fan_out`].
//!
//! Framing: text frames are requests (`hello`, `list`, `bundle`, `bye`) and replies
//! (`ok …`, `err …`); binary frames carry exactly one of the crate's encodings, as produced,
//! told apart by its leading byte (PROTOCOL.md's table of leading bytes).
//!
//! **Demo only**: a client "authenticates" by naming its address in its first frame, and the
//! relay believes it; a real server authenticates the connection (for example with a signature
//! by the device key over a fresh challenge). Uploads here travel on the sender's own
//! connection, so this relay could still link them to it; a deployment that wants sealed sender
//! to hide the sender from the server too sends sealed uploads over an unauthenticated
//! connection. The RNGs are seeded for a readable transcript; real clients use an OS CSPRNG.
//! Nothing is persisted, although the comments show where a client must persist its state
//! before sending.
//!
//! Run with `cargo run --example ws_relay`; `tests/ws_relay.rs` runs it end to end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use confidant::book::{Address, SessionBook};
use confidant::certificate::{CertificateValidator, ServerCertificate};
use confidant::content::{self, Content};
use confidant::device::{DeviceEntry, DeviceList, VerifiedDeviceList};
use confidant::envelope::{Envelope, EnvelopeContent, EnvelopeKind};
use confidant::server::{self, DeviceKeys};
use confidant::{IdentityKey, IdentityKeyPair, Message, PreKeyBundle, PreKeys, Session, Timestamp};
use futures_util::{SinkExt, StreamExt};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::SeedableRng;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Leading bytes of the crate's encodings (PROTOCOL.md, table of leading bytes). The crate
/// does not export them; the relay dispatches binary frames on them.
const PREKEY_UPLOAD: u8 = 0x22;
/// A signed device list.
const DEVICE_LIST: u8 = 0x41;
/// One envelope.
const ENVELOPE: u8 = 0x71;
/// A sealed multi-recipient upload.
const SEALED_UPLOAD: u8 = 0x72;
/// An unsealed fan-out upload.
const FANOUT_UPLOAD: u8 = 0x73;

/// How long a client waits for any one frame before giving up.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long sender certificates are valid.
const CERTIFICATE_LIFETIME_MS: u64 = 24 * 3_600_000;

/// The messages of the conversation: Alice's, then Bob's.
const ALICE_SAYS: [&str; 5] = [
    "Hi Bob, it's Alice.",
    "Are you there?",
    "Great. The relay only sees envelopes.",
    "Sealed sender: it can't tell who wrote this.",
    "Talk soon!",
];
/// Bob's messages.
const BOB_SAYS: [&str; 5] = [
    "Hi Alice! I was offline, the relay queued you.",
    "PQXDH session up, ratchet turning.",
    "And it can't read this either.",
    "Bye for now.",
    "(still here, one more)",
];

/// What the relay did with an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Sent straight to the connected recipient.
    Forwarded,
    /// Stored until the recipient connects.
    Queued,
    /// Sent from the queue when the recipient connected.
    Delivered,
}

/// One line of the relay's view of the traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayEvent {
    /// The recipient device: all the relay learns from a sealed envelope.
    pub recipient: Address,
    /// The envelope's kind.
    pub kind: EnvelopeKind,
    /// The envelope's size in bytes.
    pub size: usize,
    /// What the relay did with it.
    pub route: Route,
    /// Whether the envelope names its sender (never, for sealed envelopes).
    pub names_sender: bool,
}

/// The outcome of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Where the relay listened.
    pub relay: SocketAddr,
    /// What Alice read, in order.
    pub alice_read: Vec<String>,
    /// What Bob read, in order.
    pub bob_read: Vec<String>,
    /// Every envelope the relay routed.
    pub relay_log: Vec<RelayEvent>,
    /// Every binary frame the relay received, as received.
    pub relay_frames: Vec<Vec<u8>>,
    /// The transcript, one line per step, clients and relay interleaved.
    pub transcript: Vec<String>,
}

/// The shared transcript.
#[derive(Clone, Default)]
struct Transcript(Arc<Mutex<Vec<String>>>);

impl Transcript {
    fn line(&self, who: &str, what: impl Display) {
        self.0.lock().unwrap().push(format!("{who:<6} {what}"));
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Milliseconds since the Unix epoch (the crate takes time from the caller).
fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// `context: error`, for `map_err`.
fn ctx<E: Display>(context: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{context}: {e}")
}

/// A short, readable name for a device: the first 4 bytes of its account key and its id.
fn short(address: &Address) -> String {
    format!(
        "{}…#{}",
        hex::encode(&address.account.to_bytes()[..4]),
        address.device
    )
}

// ---------------------------------------------------------------------------------------------
// The relay.
// ---------------------------------------------------------------------------------------------

/// A connected device: its connection id and its outgoing frames.
struct Online {
    connection: u64,
    outgoing: mpsc::UnboundedSender<Frame>,
}

/// Everything the relay holds: public keys, signed lists, ciphertext.
struct Relay {
    /// The key server's certificate-signing key and its certificate from the trust root.
    server_key: IdentityKeyPair,
    server_certificate: Vec<u8>,
    /// Verified device lists by account key, with the bytes as uploaded.
    lists: BTreeMap<IdentityKey, (Vec<u8>, VerifiedDeviceList)>,
    /// Prekey records by device.
    keys: BTreeMap<Address, DeviceKeys>,
    online: BTreeMap<Address, Online>,
    /// Envelopes (`Envelope::to_bytes`) waiting for their recipient.
    queues: BTreeMap<Address, VecDeque<Vec<u8>>>,
    /// What the relay saw, for the summary: every envelope routed, every binary frame.
    log: Vec<RelayEvent>,
    frames: Vec<Vec<u8>>,
    transcript: Transcript,
    /// Display names for the transcript only (the relay knows addresses, not people).
    names: BTreeMap<Address, &'static str>,
}

impl Relay {
    fn name(&self, address: &Address) -> String {
        match self.names.get(address) {
            Some(name) => format!("{name}#{}", address.device),
            None => short(address),
        }
    }

    fn record(&mut self, envelope: &Envelope, size: usize, route: Route) {
        let how = match route {
            Route::Forwarded => "forwarded",
            Route::Queued => "queued (recipient offline)",
            Route::Delivered => "delivered from the queue",
        };
        self.transcript.line(
            "relay",
            format!(
                "-> {:<8} {:?} envelope, {size} B, sender {}: {how}",
                self.name(&envelope.recipient),
                envelope.kind(),
                if envelope.sender().is_some() {
                    "named"
                } else {
                    "hidden"
                },
            ),
        );
        self.log.push(RelayEvent {
            recipient: envelope.recipient,
            kind: envelope.kind(),
            size,
            route,
            names_sender: envelope.sender().is_some(),
        });
    }

    /// Whether `device` is in its account's verified device list.
    fn listed(&self, device: &Address) -> bool {
        self.lists
            .get(&device.account)
            .is_some_and(|(_, list)| list.device_key(device.device).is_some())
    }

    /// Forwards or queues envelopes that all passed validation.
    fn route(&mut self, envelopes: &[Envelope]) {
        for envelope in envelopes {
            let bytes = envelope.to_bytes();
            let size = bytes.len();
            let forwarded = self
                .online
                .get(&envelope.recipient)
                .is_some_and(|o| o.outgoing.send(Frame::binary(bytes.clone())).is_ok());
            if forwarded {
                self.record(envelope, size, Route::Forwarded);
            } else {
                self.queues
                    .entry(envelope.recipient)
                    .or_default()
                    .push_back(bytes);
                self.record(envelope, size, Route::Queued);
            }
        }
    }

    /// Checks every envelope of one upload before routing any: recipients must be listed
    /// devices, and an unsealed envelope must come from the authenticated device.
    fn accept(&mut self, me: &Address, envelopes: &[Envelope]) -> Result<String, String> {
        for envelope in envelopes {
            if !self.listed(&envelope.recipient) {
                return Err(format!("unknown recipient {}", short(&envelope.recipient)));
            }
            if envelope.sender().is_some_and(|s| s != *me) {
                return Err("the sender is not the authenticated device".into());
            }
        }
        self.route(envelopes);
        Ok(format!("ok {} envelope(s)", envelopes.len()))
    }

    /// A text request: `hello <account hex> <device>`, `list <account hex>`,
    /// `bundle <account hex> <device>` or `bye`.
    fn text(
        &mut self,
        me: &mut Option<Address>,
        connection: u64,
        outgoing: &mpsc::UnboundedSender<Frame>,
        request: &str,
    ) -> Result<Frame, String> {
        let words: Vec<&str> = request.split_whitespace().collect();
        let account = |hex_key: &str| -> Result<IdentityKey, String> {
            let bytes = hex::decode(hex_key).map_err(ctx("account"))?;
            IdentityKey::from_bytes(&bytes).map_err(ctx("account"))
        };
        let device = |id: &str| id.parse::<u32>().map_err(ctx("device"));
        match (words.as_slice(), *me) {
            (["hello", a, d], None) => {
                // Demo only: the claimed address is believed.
                let address = Address {
                    account: account(a)?,
                    device: device(d)?,
                };
                *me = Some(address);
                self.online.insert(
                    address,
                    Online {
                        connection,
                        outgoing: outgoing.clone(),
                    },
                );
                let queued: Vec<Vec<u8>> = self
                    .queues
                    .remove(&address)
                    .map(Vec::from)
                    .unwrap_or_default();
                for bytes in &queued {
                    let envelope = Envelope::from_bytes(bytes).map_err(ctx("queued envelope"))?;
                    outgoing
                        .send(Frame::binary(bytes.clone()))
                        .map_err(ctx("deliver"))?;
                    self.record(&envelope, bytes.len(), Route::Delivered);
                }
                Ok(Frame::text(format!("ok hello, {} queued", queued.len())))
            }
            (["list", a], Some(_)) => match self.lists.get(&account(a)?) {
                Some((bytes, _)) => Ok(Frame::binary(bytes.clone())),
                None => Err("no device list for that account".into()),
            },
            (["bundle", a, d], Some(_)) => {
                let target = Address {
                    account: account(a)?,
                    device: device(d)?,
                };
                let keys = self
                    .keys
                    .get_mut(&target)
                    .ok_or("no prekeys for that device")?;
                let fetched = keys.fetch_bundle();
                let bundle = fetched.bundle.to_bytes();
                self.transcript.line(
                    "relay",
                    format!(
                        "serves a bundle of {} ({} B; {} EC + {} KEM one-time prekeys left)",
                        self.name(&target),
                        bundle.len(),
                        fetched.remaining_one_time_prekeys,
                        fetched.remaining_one_time_kem_prekeys
                    ),
                );
                Ok(Frame::binary(bundle))
            }
            (["bye"], Some(address)) => {
                if self
                    .online
                    .get(&address)
                    .is_some_and(|o| o.connection == connection)
                {
                    self.online.remove(&address);
                }
                *me = None;
                Ok(Frame::text("ok bye"))
            }
            (_, None) => Err("say hello first".into()),
            _ => Err(format!("unknown request {request:?}")),
        }
    }

    /// A binary frame: one of the crate's encodings.
    fn binary(&mut self, me: Option<Address>, bytes: &[u8]) -> Result<Frame, String> {
        self.frames.push(bytes.to_vec());
        let me = me.ok_or("say hello first")?;
        match bytes.first() {
            Some(&DEVICE_LIST) => {
                let previous = self.lists.get(&me.account).map(|(_, l)| l);
                let list = VerifiedDeviceList::verify(bytes, &me.account, previous)
                    .map_err(ctx("device list"))?;
                // The key server certifies only devices the account listed.
                let certificate = server::issue_sender_certificate(
                    &self.server_key,
                    &self.server_certificate,
                    &list,
                    me.device,
                    now().plus_ms(CERTIFICATE_LIFETIME_MS),
                )
                .ok_or("this device is not in the list")?;
                self.lists.insert(me.account, (bytes.to_vec(), list));
                Ok(Frame::binary(certificate))
            }
            Some(&PREKEY_UPLOAD) => {
                let listed = self
                    .lists
                    .get(&me.account)
                    .and_then(|(_, l)| l.device_key(me.device))
                    .ok_or("upload the device list first")?;
                // A later upload is checked against the stored identity, atomically.
                let keys = match self.keys.entry(me) {
                    Entry::Occupied(stored) => {
                        let keys = stored.into_mut();
                        keys.apply_upload(bytes).map_err(ctx("prekey upload"))?;
                        keys
                    }
                    Entry::Vacant(slot) => {
                        let keys = DeviceKeys::register(bytes).map_err(ctx("prekey upload"))?;
                        if keys.identity_key() != listed {
                            return Err("the upload is not by the listed device key".into());
                        }
                        slot.insert(keys)
                    }
                };
                Ok(Frame::text(format!(
                    "ok prekeys, {} EC + {} KEM one-time in stock",
                    keys.one_time_prekey_count(),
                    keys.one_time_kem_prekey_count()
                )))
            }
            Some(&SEALED_UPLOAD | &FANOUT_UPLOAD) => {
                let envelopes = server::split_upload(bytes).map_err(ctx("upload"))?;
                self.accept(&me, &envelopes).map(Frame::text)
            }
            Some(&ENVELOPE) => {
                let envelope = Envelope::from_bytes(bytes).map_err(ctx("envelope"))?;
                self.accept(&me, &[envelope]).map(Frame::text)
            }
            _ => Err("unknown frame".into()),
        }
    }
}

/// Serves one WebSocket connection until the client closes it.
async fn serve(relay: Arc<Mutex<Relay>>, stream: TcpStream, connection: u64) -> Result<(), String> {
    let mut ws = tokio_tungstenite::accept_async(stream)
        .await
        .map_err(ctx("websocket handshake"))?;
    let (outgoing, mut frames_out) = mpsc::unbounded_channel::<Frame>();
    let mut me: Option<Address> = None;
    loop {
        tokio::select! {
            incoming = ws.next() => {
                let Some(frame) = incoming else { break };
                let reply = match frame.map_err(ctx("relay read"))? {
                    Frame::Text(request) => relay
                        .lock()
                        .unwrap()
                        .text(&mut me, connection, &outgoing, request.as_str()),
                    Frame::Binary(bytes) => relay.lock().unwrap().binary(me, &bytes),
                    // Pings are answered, and a close is acknowledged, by tungstenite.
                    _ => continue,
                };
                // Replies share the queue with forwarded envelopes, so they keep their order.
                let reply = reply.unwrap_or_else(|e| Frame::text(format!("err {e}")));
                outgoing.send(reply).map_err(ctx("reply"))?;
            }
            Some(frame) = frames_out.recv() => {
                ws.send(frame).await.map_err(ctx("relay write"))?;
            }
        }
    }
    // Closed without saying bye: go offline.
    if let Some(address) = me {
        let mut relay = relay.lock().unwrap();
        if relay
            .online
            .get(&address)
            .is_some_and(|o| o.connection == connection)
        {
            relay.online.remove(&address);
        }
    }
    Ok(())
}

/// Accepts connections until told to stop, then waits for every connection to end.
async fn accept_loop(
    listener: TcpListener,
    relay: Arc<Mutex<Relay>>,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), String> {
    let mut connections = JoinSet::new();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let (stream, _) = accepted.map_err(ctx("accept"))?;
                next_id += 1;
                connections.spawn(serve(relay.clone(), stream, next_id));
            }
        }
    }
    while let Some(done) = connections.join_next().await {
        done.map_err(ctx("connection task"))??;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The clients.
// ---------------------------------------------------------------------------------------------

/// A client's WebSocket.
type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A reply to a request.
enum Reply {
    Text(String),
    Binary(Vec<u8>),
}

/// One account with one device: all its secrets stay here.
struct Client {
    name: &'static str,
    rng: ChaCha20Rng,
    account: IdentityKeyPair,
    identity: IdentityKeyPair,
    address: Address,
    prekeys: PreKeys,
    book: SessionBook,
    /// The pinned trust root of sender certificates.
    validator: CertificateValidator,
    /// This device's sender certificate, from the relay.
    certificate: Vec<u8>,
    socket: Option<Socket>,
    /// Envelopes that arrived while waiting for a reply.
    inbox: VecDeque<Envelope>,
    read: Vec<String>,
    transcript: Transcript,
}

impl Client {
    fn new(name: &'static str, seed: u64, validator: CertificateValidator, t: Transcript) -> Self {
        // Demo only: seeded for a reproducible key schedule. Real clients use an OS CSPRNG.
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let account = IdentityKeyPair::generate(&mut rng);
        let identity = IdentityKeyPair::generate(&mut rng);
        let prekeys = PreKeys::new(&mut rng, &identity, now());
        Self {
            name,
            address: Address {
                account: account.public(),
                device: 1,
            },
            rng,
            account,
            identity,
            prekeys,
            book: SessionBook::new(),
            validator,
            certificate: Vec::new(),
            socket: None,
            inbox: VecDeque::new(),
            read: Vec::new(),
            transcript: t,
        }
    }

    fn say(&self, what: impl Display) {
        self.transcript.line(self.name, what);
    }

    async fn connect(&mut self, url: &str) -> Result<(), String> {
        let (socket, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(ctx("connect"))?;
        self.socket = Some(socket);
        let hello = format!(
            "hello {} {}",
            hex::encode(self.address.account.to_bytes()),
            self.address.device
        );
        let Reply::Text(reply) = self.request(Frame::text(hello)).await? else {
            return Err("hello: unexpected reply".into());
        };
        self.say(format!("connects as {}: {reply}", short(&self.address)));
        Ok(())
    }

    /// Says bye (the relay takes the device offline), then closes the WebSocket.
    async fn disconnect(&mut self) -> Result<(), String> {
        self.request(Frame::text("bye")).await?;
        let mut socket = self.socket.take().ok_or("not connected")?;
        socket.close(None).await.map_err(ctx("close"))?;
        while let Some(frame) = tokio::time::timeout(FRAME_TIMEOUT, socket.next())
            .await
            .map_err(ctx("close"))?
        {
            if let Frame::Binary(_) | Frame::Text(_) = frame.map_err(ctx("close"))? {
                return Err("a frame arrived after bye".into());
            }
        }
        Ok(())
    }

    /// The next frame, or an error after [`FRAME_TIMEOUT`].
    async fn next_frame(&mut self) -> Result<Frame, String> {
        let socket = self.socket.as_mut().ok_or("not connected")?;
        tokio::time::timeout(FRAME_TIMEOUT, socket.next())
            .await
            .map_err(ctx("waiting for the relay"))?
            .ok_or("the relay closed the connection")?
            .map_err(ctx("read"))
    }

    /// Sends a request and waits for its reply, keeping envelopes that arrive meanwhile.
    async fn request(&mut self, frame: Frame) -> Result<Reply, String> {
        let socket = self.socket.as_mut().ok_or("not connected")?;
        socket.send(frame).await.map_err(ctx("send"))?;
        loop {
            match self.next_frame().await? {
                Frame::Text(text) if text.starts_with("err") => {
                    return Err(format!("relay: {}", text.as_str()));
                }
                Frame::Text(text) => return Ok(Reply::Text(text.as_str().to_owned())),
                Frame::Binary(bytes) if bytes.first() == Some(&ENVELOPE) => {
                    let envelope = Envelope::from_bytes(&bytes).map_err(ctx("envelope"))?;
                    self.inbox.push_back(envelope);
                }
                Frame::Binary(bytes) => return Ok(Reply::Binary(bytes.to_vec())),
                _ => {}
            }
        }
    }

    async fn request_bytes(&mut self, frame: Frame) -> Result<Vec<u8>, String> {
        match self.request(frame).await? {
            Reply::Binary(bytes) => Ok(bytes),
            Reply::Text(text) => Err(format!("expected bytes, got {text:?}")),
        }
    }

    /// Uploads the signed device list (getting a sender certificate back) and prekeys.
    async fn register(&mut self) -> Result<(), String> {
        let list = DeviceList {
            account_id: self.name.as_bytes().to_vec(),
            version: 1,
            timestamp: now(),
            entries: vec![DeviceEntry::local(
                &self.account,
                &self.identity,
                self.address.device,
            )],
        }
        .sign(&self.account)
        .map_err(ctx("sign device list"))?;
        // Its own list goes into the book too: a fan-out also reaches the sender's other
        // devices (none here).
        let verified = VerifiedDeviceList::verify(&list, &self.account.public(), None)
            .map_err(ctx("own device list"))?;
        self.book
            .apply_device_list(&verified)
            .map_err(ctx("own device list"))?;
        self.certificate = self.request_bytes(Frame::binary(list.clone())).await?;
        let certified = self
            .validator
            .validate(&self.certificate, now())
            .map_err(ctx("sender certificate"))?;
        if certified.sender() != self.address || certified.identity_key() != self.identity.public()
        {
            return Err("the relay certified someone else".into());
        }
        self.say(format!(
            "uploads its signed device list ({} B), gets a sender certificate ({} B)",
            list.len(),
            self.certificate.len()
        ));

        let one_time = self
            .prekeys
            .generate_one_time_prekeys(&mut self.rng, 5)
            .map_err(ctx("prekeys"))?;
        let one_time_kem = self
            .prekeys
            .generate_one_time_kem_prekeys(&mut self.rng, &self.identity, 2)
            .map_err(ctx("prekeys"))?;
        // Persist before upload: the relay will hand these out.
        let _persist_first = self.prekeys.snapshot();
        let upload = self
            .prekeys
            .upload(&self.identity, one_time, one_time_kem)
            .to_bytes();
        let Reply::Text(reply) = self.request(Frame::binary(upload.clone())).await? else {
            return Err("prekey upload: unexpected reply".into());
        };
        self.say(format!("uploads prekeys ({} B): {reply}", upload.len()));
        Ok(())
    }

    /// Fetches a contact's device list and verifies it against the contact's account key,
    /// pinned out of band (for example by comparing safety numbers).
    async fn add_contact(&mut self, name: &str, account: IdentityKey) -> Result<(), String> {
        let request = format!("list {}", hex::encode(account.to_bytes()));
        let bytes = self.request_bytes(Frame::text(request)).await?;
        let list =
            VerifiedDeviceList::verify(&bytes, &account, None).map_err(ctx("device list"))?;
        self.book
            .apply_device_list(&list)
            .map_err(ctx("device list"))?;
        self.say(format!(
            "fetches {name}'s device list: {} device(s), verified against the pinned account key",
            list.entries().len()
        ));
        Ok(())
    }

    /// Starts a PQXDH session with every listed device of `account` that has none yet.
    async fn ensure_sessions(&mut self, account: IdentityKey) -> Result<(), String> {
        let missing: Vec<Address> = self
            .book
            .devices()
            .filter(|(a, active)| a.account == account && !active)
            .map(|(a, _)| a)
            .collect();
        for device in missing {
            let expected = self.book.device_key(&device).ok_or("unlisted device")?;
            let request = format!(
                "bundle {} {}",
                hex::encode(device.account.to_bytes()),
                device.device
            );
            let bytes = self.request_bytes(Frame::text(request)).await?;
            let bundle = PreKeyBundle::from_bytes(&bytes)
                .map_err(ctx("bundle"))?
                .verify_for(&expected)
                .map_err(ctx("bundle"))?;
            let one_time = bundle
                .one_time_prekey()
                .map_or("none left".to_owned(), |k| k.id().to_string());
            let session = Session::initiate(&mut self.rng, &self.identity, bundle)
                .map_err(ctx("initiate"))?;
            let handshake = session.handshake();
            self.book
                .insert(device, session)
                .map_err(ctx("insert session"))?;
            self.say(format!(
                "verifies the bundle, starts a {handshake:?} session with {} (one-time prekey \
                 {one_time})",
                short(&device)
            ));
        }
        Ok(())
    }

    /// Sends `text` to every device of `account`, as one sealed fan-out.
    async fn send(&mut self, to: &str, account: IdentityKey, text: &str) -> Result<(), String> {
        self.ensure_sessions(account).await?;
        let sealed = self
            .book
            .fan_out_sealed(
                &mut self.rng,
                &self.identity,
                &self.certificate,
                &[account],
                &self.address,
                &content::application(text.as_bytes()),
            )
            .map_err(ctx("fan out"))?;
        if !sealed.needs_bundle.is_empty() {
            return Err(format!("no session with {:?}", sealed.needs_bundle));
        }
        // Persist before send: the book's ratchets moved.
        let _persist_first = self.book.snapshot();
        self.say(format!(
            "sends {text:?} to {to} (sealed upload, {} B)",
            sealed.upload.len()
        ));
        let Reply::Text(_) = self.request(Frame::binary(sealed.upload)).await? else {
            return Err("upload: unexpected reply".into());
        };
        Ok(())
    }

    /// Waits for the next envelope and reads it: open the seal, then the fan-out.
    /// Returns the certified sender, the text, and whether it started a new session.
    async fn receive(&mut self) -> Result<(Address, String, bool), String> {
        let envelope = loop {
            if let Some(envelope) = self.inbox.pop_front() {
                break envelope;
            }
            match self.next_frame().await? {
                Frame::Binary(bytes) if bytes.first() == Some(&ENVELOPE) => {
                    let envelope = Envelope::from_bytes(&bytes).map_err(ctx("envelope"))?;
                    self.inbox.push_back(envelope);
                }
                Frame::Binary(_) | Frame::Text(_) => return Err("unexpected frame".into()),
                _ => {}
            }
        };
        if envelope.recipient != self.address {
            return Err("an envelope for another device".into());
        }
        let EnvelopeContent::Sealed(sealed) = &envelope.content else {
            return Err(format!(
                "expected a sealed envelope, got {:?}",
                envelope.kind()
            ));
        };
        let unsealed = self
            .book
            .open_sealed(&self.identity, &self.validator, now(), sealed)
            .map_err(ctx("open sealed"))?;
        let EnvelopeContent::FanOut {
            sender,
            entry,
            body,
        } = &unsealed.content
        else {
            return Err("expected a fan-out inside the seal".into());
        };
        let entry = Message::from_bytes(entry).map_err(ctx("key entry"))?;
        let received = self
            .book
            .receive_fan_out(
                &mut self.rng,
                &self.identity,
                &mut self.prekeys,
                sender,
                &entry,
                body,
            )
            .map_err(ctx("receive"))?;
        // Persist the book (and prekeys, for a new session) before acknowledging.
        let _persist_first = (self.book.snapshot(), self.prekeys.snapshot());
        let Content::Application(payload) =
            content::parse(&received.plaintext).map_err(ctx("content"))?
        else {
            return Err("expected an application payload".into());
        };
        let text = String::from_utf8(payload.to_vec()).map_err(ctx("utf-8"))?;
        self.read.push(text.clone());
        Ok((*sender, text, received.new_session))
    }

    /// Reads one message and checks that `name` at `sender` sent it.
    async fn expect_from(&mut self, name: &str, sender: &Address) -> Result<(), String> {
        let (from, text, new_session) = self.receive().await?;
        if from != *sender {
            return Err(format!("{}: message from an unexpected sender", self.name));
        }
        self.say(format!(
            "reads {text:?}, sealed by {name} ({}): certificate valid{}",
            short(&from),
            if new_session { ", new session" } else { "" }
        ));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The run.
// ---------------------------------------------------------------------------------------------

/// Starts the relay on `127.0.0.1` with an OS-assigned port, runs the conversation, checks
/// that every message arrived exactly once with the right plaintext, and shuts the relay down.
///
/// # Errors
/// A description of the first failure.
pub async fn run() -> Result<Summary, String> {
    let transcript = Transcript::default();
    // Demo only: seeded. The trust root is kept offline; clients pin its public key.
    let mut rng = ChaCha20Rng::seed_from_u64(0x5eed);
    let root = IdentityKeyPair::generate(&mut rng);
    let server_key = IdentityKeyPair::generate(&mut rng);
    let server_certificate = ServerCertificate::issue(&root, 1, &server_key.public());
    let validator = CertificateValidator::new(root.public());

    let mut alice = Client::new("alice", 1, validator.clone(), transcript.clone());
    let mut bob = Client::new("bob", 2, validator, transcript.clone());
    let names = [(alice.address, "alice"), (bob.address, "bob")];

    let relay = Arc::new(Mutex::new(Relay {
        server_key,
        server_certificate,
        lists: BTreeMap::new(),
        keys: BTreeMap::new(),
        online: BTreeMap::new(),
        queues: BTreeMap::new(),
        log: Vec::new(),
        frames: Vec::new(),
        transcript: transcript.clone(),
        names: names.into_iter().collect(),
    }));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(ctx("bind"))?;
    let address = listener.local_addr().map_err(ctx("local address"))?;
    let url = format!("ws://{address}/");
    let (stop, stopped) = oneshot::channel();
    let relay_task = tokio::spawn(accept_loop(listener, relay.clone(), stopped));
    transcript.line("relay", format!("listens on {url}"));

    let conversation = async {
        // Both register; Bob learns Alice's devices, then goes offline.
        alice.connect(&url).await?;
        alice.register().await?;
        bob.connect(&url).await?;
        bob.register().await?;
        bob.add_contact("alice", alice.address.account).await?;
        bob.disconnect().await?;
        bob.say("goes offline");

        // Alice fetches Bob's devices and a bundle, and writes twice: the relay queues.
        alice.add_contact("bob", bob.address.account).await?;
        for text in &ALICE_SAYS[..2] {
            alice.send("bob", bob.address.account, text).await?;
        }

        // Bob comes back: the queue is delivered; then they take turns.
        bob.connect(&url).await?;
        for _ in 0..2 {
            bob.expect_from("alice", &alice.address).await?;
        }
        for (i, text) in BOB_SAYS.iter().enumerate() {
            bob.send("alice", alice.address.account, text).await?;
            alice.expect_from("bob", &bob.address).await?;
            if let Some(text) = ALICE_SAYS.get(i + 2) {
                alice.send("bob", bob.address.account, text).await?;
                bob.expect_from("alice", &alice.address).await?;
            }
        }

        // The relay refuses what does not parse, and the connection stays usable.
        match alice
            .request(Frame::binary(vec![ENVELOPE, 0xff, 0x01]))
            .await
        {
            Err(e) => alice.say(format!("sends a malformed envelope: {e}")),
            Ok(_) => return Err("the relay accepted a malformed envelope".to_owned()),
        }

        // Nothing left over: a request round trip flushes anything in flight.
        alice.disconnect().await?;
        bob.disconnect().await?;
        if !alice.inbox.is_empty() || !bob.inbox.is_empty() {
            return Err("unread envelopes left over".to_owned());
        }
        Ok::<(), String>(())
    };
    let outcome = conversation.await;
    // Stop the relay whatever happened; after an error the clients' sockets close on drop.
    drop((alice.socket.take(), bob.socket.take()));
    let _ = stop.send(());
    let relay_outcome = tokio::time::timeout(FRAME_TIMEOUT, relay_task)
        .await
        .map_err(ctx("relay shutdown"))?
        .map_err(ctx("relay task"))?;
    outcome?;
    relay_outcome?;
    transcript.line("relay", "stopped");

    let relay = relay.lock().unwrap();
    let summary = Summary {
        relay: address,
        alice_read: alice.read.clone(),
        bob_read: bob.read.clone(),
        relay_log: relay.log.clone(),
        relay_frames: relay.frames.clone(),
        transcript: transcript.lines(),
    };
    check(&summary)?;
    Ok(summary)
}

/// Every message arrived exactly once, in order, with the right plaintext; the relay saw only
/// sealed envelopes and no plaintext.
fn check(summary: &Summary) -> Result<(), String> {
    if summary.bob_read != ALICE_SAYS {
        return Err(format!("Bob read {:?}", summary.bob_read));
    }
    if summary.alice_read != BOB_SAYS {
        return Err(format!("Alice read {:?}", summary.alice_read));
    }
    let routed = |route| {
        summary
            .relay_log
            .iter()
            .filter(|e| e.route == route)
            .count()
    };
    let (forwarded, queued, delivered) = (
        routed(Route::Forwarded),
        routed(Route::Queued),
        routed(Route::Delivered),
    );
    if (forwarded, queued, delivered) != (8, 2, 2) {
        return Err(format!(
            "relay: {forwarded} forwarded, {queued} queued, {delivered} delivered"
        ));
    }
    if summary
        .relay_log
        .iter()
        .any(|e| e.kind != EnvelopeKind::Sealed || e.names_sender)
    {
        return Err("the relay saw an envelope that was not sealed".into());
    }
    for text in ALICE_SAYS.iter().chain(&BOB_SAYS) {
        if summary
            .relay_frames
            .iter()
            .any(|frame| frame.windows(text.len()).any(|w| w == text.as_bytes()))
        {
            return Err(format!("the relay saw the plaintext {text:?}"));
        }
    }
    Ok(())
}

#[allow(dead_code)] // also compiled into tests/ws_relay.rs, which has its own entry point
fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("ws_relay: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    match runtime.block_on(run()) {
        Ok(summary) => {
            for line in &summary.transcript {
                println!("{line}");
            }
            println!(
                "\n{} messages each way arrived exactly once; the relay routed {} sealed \
                 envelopes and saw no plaintext ({:.0?}).",
                ALICE_SAYS.len(),
                summary.relay_log.len(),
                started.elapsed()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ws_relay failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
