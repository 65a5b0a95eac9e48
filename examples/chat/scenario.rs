//! The chat scenario: Alice (phone + laptop), Bob (phone) and Carol (phone, then a tablet)
//! through the untrusted relay ([`crate::relay`]), every client persisting to SQLite
//! ([`crate::store`]). Deterministic for a seed: one `ChaCha20Rng`, simulated time.
//!
//! [`run`] plays it and returns a [`Report`]: the transcript, a summary table, named checks,
//! and what the relay stored together with every plaintext sent (for an independent audit).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use confidant::IdentityKey;
use confidant::attachment::{AttachmentEncryptor, ciphertext_len, encrypt_chunk};
use confidant::book::Address;
use confidant::envelope::{Envelope, EnvelopeContent, EnvelopeKind};
use confidant::group::{GroupId, KeyStatus};
use confidant::{IdentityKeyPair, Timestamp};
use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::client::{App, Device, Outcome, Sent};
use crate::relay::{self, Note, Relay};

/// Size of the generated attachment.
const ATTACHMENT_SIZE: usize = 5 * 1024 * 1024;
/// Attachment chunk size.
const CHUNK: u32 = 64 * 1024;
/// Messages sent while Bob's phone is offline.
const OFFLINE_MESSAGES: usize = 50;
/// One-time prekeys uploaded at registration (EC, KEM).
const PREKEYS: (usize, usize) = (30, 22);
const DAY_MS: u64 = 86_400_000;

/// Everything a run produced. (The audit fields are read by `tests/chat_demo.rs`.)
#[derive(Debug, Default)]
#[allow(dead_code)]
pub(crate) struct Report {
    /// The seed.
    pub(crate) seed: u64,
    /// The transcript (empty when quiet).
    pub(crate) lines: Vec<String>,
    /// The summary table.
    pub(crate) summary: Vec<String>,
    /// Named checks.
    pub(crate) checks: Vec<(String, bool)>,
    /// Everything the relay stored or received.
    pub(crate) relay_blobs: Vec<Vec<u8>>,
    /// Every plaintext any client sent (texts, names), each at least 8 bytes.
    pub(crate) plaintexts: Vec<Vec<u8>>,
    /// The first 64 KiB of the attachment.
    pub(crate) attachment_prefix: Vec<u8>,
}

#[allow(dead_code)]
impl Report {
    /// What the relay stored (envelopes, uploads, lists, certificates, key records, blobs).
    pub(crate) fn relay_blobs(&self) -> &[Vec<u8>] {
        &self.relay_blobs
    }

    /// Whether every check passed.
    pub(crate) fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|(_, ok)| *ok)
    }
}

/// Plays the scenario for `seed`. `quiet` skips building the transcript.
pub(crate) fn run(seed: u64, quiet: bool) -> Report {
    let mut world = World::new(seed, quiet);
    let outcome = world.play();
    let mut report = world.finish();
    if let Err(e) = outcome {
        report.lines.push(format!("!! scenario stopped: {e}"));
        report
            .checks
            .insert(0, (format!("scenario ran to completion ({e})"), false));
    } else {
        report
            .checks
            .insert(0, ("scenario ran to completion".to_string(), true));
    }
    report
}

/// A message the scenario sent, and who must read it.
struct Expect {
    id: u64,
    text: String,
    to: BTreeSet<&'static str>,
    group: bool,
}

/// Where a text goes.
enum To {
    /// The devices of these accounts (and the sender's other devices).
    Direct(&'static [&'static str]),
    /// The group.
    Group,
}

struct World {
    rng: ChaCha20Rng,
    now: Timestamp,
    relay: Relay,
    root: IdentityKey,
    dir: PathBuf,
    quiet: bool,
    seed: u64,
    lines: Vec<String>,
    devices: BTreeMap<&'static str, Device>,
    names: BTreeMap<Address, &'static str>,
    accounts: BTreeMap<&'static str, IdentityKey>,
    /// Listed devices per account, as the scenario knows them (the ground truth).
    current: BTreeMap<&'static str, BTreeSet<&'static str>>,
    offline: BTreeSet<&'static str>,
    group: Option<GroupId>,
    /// Every group message sent: (sender, bytes, phase).
    group_log: Vec<(Address, Vec<u8>, &'static str)>,
    expected: Vec<Expect>,
    plaintexts: Vec<Vec<u8>>,
    attachment_prefix: Vec<u8>,
    checks: Vec<(String, bool)>,
    attachment_stats: String,
}

fn get<'a>(
    devices: &'a mut BTreeMap<&'static str, Device>,
    name: &str,
) -> Result<&'a mut Device, String> {
    devices
        .get_mut(name)
        .ok_or_else(|| format!("no device {name}"))
}

/// Human-readable sizes.
fn size(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.2} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

static RUN: AtomicU64 = AtomicU64::new(0);

const PHRASES: [&str; 16] = [
    "did you see the new cafe on Fifth Street?",
    "the train is late again, ugh",
    "sending you the recipe tonight",
    "who is bringing the cake on Sunday?",
    "remember to water the plants please",
    "the concert tickets go on sale at ten",
    "I found your umbrella in my car",
    "happy birthday to your sister from me",
    "can you review my slides before noon?",
    "the cat knocked over the coffee again",
    "let's try the ramen place next week",
    "I'm running ten minutes behind",
    "the museum is free on Thursdays",
    "did anyone take photos at the party?",
    "the wifi password changed this morning",
    "don't forget the library books",
];

impl World {
    fn new(seed: u64, quiet: bool) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (relay, root) = Relay::new(&mut rng);
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "confidant-chat-{}-{seed}-{run}",
            std::process::id()
        ));
        Self {
            rng,
            now: Timestamp(1_795_000_000_000),
            relay,
            root,
            dir,
            quiet,
            seed,
            lines: Vec::new(),
            devices: BTreeMap::new(),
            names: BTreeMap::new(),
            accounts: BTreeMap::new(),
            current: BTreeMap::new(),
            offline: BTreeSet::new(),
            group: None,
            group_log: Vec::new(),
            expected: Vec::new(),
            plaintexts: Vec::new(),
            attachment_prefix: Vec::new(),
            checks: Vec::new(),
            attachment_stats: String::new(),
        }
    }

    // ---- transcript ----------------------------------------------------------------------

    fn section(&mut self, title: &str) {
        if !self.quiet {
            self.lines.push(String::new());
            self.lines.push(format!(
                "── {title} {}",
                "─".repeat(92usize.saturating_sub(title.chars().count()))
            ));
        }
    }

    fn say(&mut self, who: &str, what: &str, relay: &str) {
        if self.quiet {
            return;
        }
        if relay.is_empty() {
            let what = clip(what, 110);
            self.lines.push(format!("{who:<13}{what}"));
        } else {
            let what = clip(what, 62);
            self.lines
                .push(format!("{who:<13}{what:<62} │ relay: {relay}"));
        }
    }

    fn account_name(&self, account: &IdentityKey) -> String {
        self.accounts
            .iter()
            .find(|(_, k)| *k == account)
            .map_or_else(|| relay::hex6(account), |(n, _)| (*n).to_string())
    }

    fn name(&self, address: &Address) -> String {
        self.names
            .get(address)
            .map_or_else(|| relay::short(address), |n| (*n).to_string())
    }

    /// The relay's notes since the last call, as one line.
    fn relay_notes(&mut self) -> String {
        let notes = self.relay.take_notes();
        let mut parts: Vec<String> = Vec::new();
        let mut queued: Vec<(String, usize, Vec<String>)> = Vec::new();
        let (mut blob_chunks, mut blob_last) = (0, None);
        let mut served = 0;
        for note in notes {
            match note {
                Note::Queued {
                    to,
                    kind,
                    size: n,
                    from,
                } => {
                    let kind = match (kind, from) {
                        (EnvelopeKind::Sealed, _) => "sealed".to_string(),
                        (k, Some(f)) => {
                            format!("{} (sender {} visible)", relay::kind_name(k), self.name(&f))
                        }
                        (k, None) => relay::kind_name(k).to_string(),
                    };
                    let to = self.name(&to);
                    match queued.iter_mut().find(|(k, s, _)| *k == kind && *s == n) {
                        Some((_, _, list)) => list.push(to),
                        None => queued.push((kind, n, vec![to])),
                    }
                }
                Note::Dropped { to } => {
                    parts.push(format!("dropped for unlisted {}", self.name(&to)))
                }
                Note::Delivered {
                    to,
                    count,
                    bytes,
                    duplicates,
                    shuffled,
                } => {
                    let mut s = format!(
                        "handed {count} ({}) to {}",
                        size(bytes as u64),
                        self.name(&to)
                    );
                    if shuffled {
                        s.push_str(&format!(", shuffled, {duplicates} duplicated"));
                    }
                    parts.push(s);
                }
                Note::Keys { device, bytes } => parts.push(format!(
                    "stored {} public prekeys of {}",
                    size(bytes as u64),
                    self.name(&device)
                )),
                Note::Bundle {
                    device,
                    bytes,
                    left,
                    left_kem,
                } => parts.push(format!(
                    "bundle of {} ({}; {left}+{left_kem} one-time left)",
                    self.name(&device),
                    size(bytes as u64)
                )),
                Note::List {
                    account,
                    version,
                    devices,
                    bytes,
                } => {
                    let who = self.account_name(&account);
                    parts.push(format!(
                        "stored {who}'s signed list v{version} ({devices} device{}, {})",
                        if devices == 1 { "" } else { "s" },
                        size(bytes as u64)
                    ));
                }
                Note::Refused { what } => parts.push(format!("REFUSED {what}")),
                Note::Certificate { device, bytes } => parts.push(format!(
                    "certificate for {} ({})",
                    self.name(&device),
                    size(bytes as u64)
                )),
                Note::Blob {
                    chunks,
                    stored,
                    total,
                    ..
                } => {
                    blob_chunks += chunks;
                    blob_last = Some((stored, total));
                }
                Note::Download { bytes, .. } => served += bytes,
                Note::Attack { what } => parts.push(format!("ATTACK: {what}")),
            }
        }
        for (kind, n, to) in queued {
            let count = if to.len() > 1 {
                format!("{}× ", to.len())
            } else {
                String::new()
            };
            parts.insert(
                0,
                format!(
                    "queued {count}{kind} {} → {}",
                    size(n as u64),
                    to.join(", ")
                ),
            );
        }
        if let Some((stored, total)) = blob_last {
            parts.push(format!(
                "+{blob_chunks} chunks, holds {} of {}",
                size(stored),
                size(total)
            ));
        }
        if served > 0 {
            parts.push(format!("served {} of ciphertext", size(served)));
        }
        parts.join("; ")
    }

    fn describe(&self, outcome: &Outcome) -> String {
        let group = |g: &Option<GroupId>| if g.is_some() { " (group)" } else { "" };
        match outcome {
            Outcome::App {
                from,
                app,
                group: g,
            } => {
                let from = self.name(from);
                match app {
                    App::Text { text, .. } => format!("← {from}{}: \"{text}\"", group(g)),
                    App::Delivered(ids) => {
                        format!("✓ delivered receipt from {from} ({} msg)", ids.len())
                    }
                    App::Read(ids) => format!("✓✓ read receipt from {from} ({} msg)", ids.len()),
                    App::Typing(true) => format!("… {from} is typing"),
                    App::Typing(false) => format!("{from} stopped typing"),
                    App::Attachment { name, .. } => {
                        format!("← {from}{}: attachment {name}", group(g))
                    }
                    App::GroupInfo { name, accounts, .. } => {
                        format!(
                            "joins group \"{name}\" ({} accounts) via {from}",
                            accounts.len()
                        )
                    }
                }
            }
            Outcome::Key { from, status } => {
                format!("installs {}'s sender key ({status:?})", self.name(from))
            }
            Outcome::Held {
                from,
                distribution: true,
            } => format!(
                "keeps {}'s sender key until it knows the group",
                self.name(from)
            ),
            Outcome::Held { from, .. } => {
                format!(
                    "holds a group message from {} until its key arrives",
                    self.name(from)
                )
            }
            Outcome::Rejected {
                from,
                reason,
                duplicate,
            } => {
                let what = if *duplicate {
                    "✗ refused duplicate"
                } else {
                    "✗ refused"
                };
                match from {
                    Some(f) => format!("{what} from {}: {reason}", self.name(f)),
                    None => format!("{what}: {reason}"),
                }
            }
        }
    }

    fn show(&mut self, who: &str, outcomes: &[Outcome], relay: &str) {
        if self.quiet {
            return;
        }
        if outcomes.is_empty() {
            self.say(who, "(nothing new)", relay);
        }
        // Consecutive identical lines are shown once, with a count.
        let mut rows: Vec<(String, usize)> = Vec::new();
        for o in outcomes {
            let what = self.describe(o);
            match rows.last_mut() {
                Some((last, n)) if *last == what => *n += 1,
                _ => rows.push((what, 1)),
            }
        }
        for (i, (what, n)) in rows.into_iter().enumerate() {
            let what = if n > 1 {
                format!("{what} (×{n})")
            } else {
                what
            };
            self.say(
                if i == 0 { who } else { "" },
                &what,
                if i == 0 { relay } else { "" },
            );
        }
    }

    fn advance(&mut self) {
        let step = 1_000 + self.rng.next_u64() % 30_000;
        self.now = self.now.plus_ms(step);
    }

    // ---- actions -------------------------------------------------------------------------

    /// Fetches and processes `name`'s queue; prints each outcome when `verbose`.
    fn sync(&mut self, name: &'static str, verbose: bool) -> Result<Vec<Outcome>, String> {
        self.advance();
        let out = get(&mut self.devices, name)?.sync(&mut self.rng, &mut self.relay, self.now)?;
        let notes = self.relay_notes();
        if verbose {
            self.show(name, &out, &notes);
        }
        let topped =
            get(&mut self.devices, name)?.top_up_prekeys(&mut self.rng, &mut self.relay)?;
        let notes = self.relay_notes();
        if let Some(bytes) = topped {
            self.say(
                name,
                &format!(
                    "key server said stock is low: uploads more one-time prekeys ({})",
                    size(bytes as u64)
                ),
                &notes,
            );
        }
        Ok(out)
    }

    /// Syncs every online current device except `except`; returns who read what.
    fn deliver(
        &mut self,
        except: &str,
        verbose: bool,
    ) -> Result<Vec<(&'static str, Vec<Outcome>)>, String> {
        let names: Vec<&'static str> = self
            .current
            .values()
            .flatten()
            .copied()
            .filter(|n| *n != except && !self.offline.contains(n))
            .collect();
        let mut all = Vec::new();
        for name in names {
            let out = self.sync(name, verbose)?;
            all.push((name, out));
        }
        Ok(all)
    }

    fn intended(&self, from: &str, to: &To) -> BTreeSet<&'static str> {
        let account = |dev: &str| dev.split('.').next().unwrap_or_default().to_string();
        let own = account(from);
        let accounts: Vec<String> = match to {
            To::Direct(list) => list.iter().map(|s| (*s).to_string()).chain([own]).collect(),
            To::Group => vec!["alice".into(), "bob".into(), "carol".into()],
        };
        self.current
            .iter()
            .filter(|(a, _)| accounts.iter().any(|x| x == *a))
            .flat_map(|(_, d)| d.iter().copied())
            .filter(|d| *d != from)
            .collect()
    }

    fn keys_of(&self, names: &[&str]) -> Vec<IdentityKey> {
        names
            .iter()
            .filter_map(|n| self.accounts.get(n).copied())
            .collect()
    }

    /// Sends a text and records who must read it.
    fn text(&mut self, from: &'static str, to: To, text: &str) -> Result<(u64, Sent), String> {
        self.advance();
        let id = self.rng.next_u64();
        let app = App::Text {
            id,
            text: text.to_string(),
        };
        let sent = self.send(from, &to, &app)?;
        let intended = self.intended(from, &to);
        self.expected.push(Expect {
            id,
            text: text.to_string(),
            to: intended,
            group: matches!(to, To::Group),
        });
        self.plaintexts.push(text.as_bytes().to_vec());
        Ok((id, sent))
    }

    fn send(&mut self, from: &'static str, to: &To, app: &App) -> Result<Sent, String> {
        let accounts = match to {
            To::Direct(list) => {
                let mut keys = self.keys_of(list);
                keys.extend(self.keys_of(&[from.split('.').next().unwrap_or_default()]));
                keys
            }
            To::Group => Vec::new(),
        };
        let group = self.group;
        let d = get(&mut self.devices, from)?;
        let sent = match to {
            To::Direct(_) => {
                d.send_direct(&mut self.rng, &mut self.relay, &accounts, app, false)?
            }
            To::Group => {
                let group = group.ok_or("no group yet")?;
                d.send_group(&mut self.rng, &mut self.relay, self.now, &group, app)?
            }
        };
        if let Some(m) = &sent.group_message {
            let phase = if self
                .current
                .get("carol")
                .is_some_and(|c| c.contains("carol.tablet"))
            {
                "after-link"
            } else {
                "before-link"
            };
            let phase = if self
                .current
                .get("alice")
                .is_some_and(|a| !a.contains("alice.laptop"))
            {
                "after-removal"
            } else {
                phase
            };
            self.group_log.push((d.address, m.clone(), phase));
        }
        Ok(sent)
    }

    /// Sends a text and shows it; returns the id.
    fn say_text(&mut self, from: &'static str, to: To, text: &str) -> Result<u64, String> {
        let label = match &to {
            To::Direct(list) => list.join(", "),
            To::Group => "group".to_string(),
        };
        let (id, sent) = self.text(from, to, text)?;
        let notes = self.relay_notes();
        self.say(from, &format!("[→ {label}] \"{text}\""), &notes);
        self.sent_details(&sent);
        Ok(id)
    }

    /// Continuation lines: sessions a send had to start, sender keys it distributed.
    fn sent_details(&mut self, sent: &Sent) {
        if !sent.new_sessions.is_empty() {
            let peers: Vec<String> = sent.new_sessions.iter().map(|a| self.name(a)).collect();
            self.say(
                "",
                &format!(
                    "  (first contact: fetched bundles, started PQXDH sessions with {})",
                    peers.join(", ")
                ),
                "",
            );
        }
        if !sent.distributed_to.is_empty() {
            self.say(
                "",
                &format!(
                    "  (new sender key, sent first through the pairwise sessions to {} devices)",
                    sent.distributed_to.len()
                ),
                "",
            );
        }
    }

    /// Sends a receipt / typing signal and shows it.
    fn signal(
        &mut self,
        from: &'static str,
        to: &'static [&'static str],
        app: App,
        label: &str,
    ) -> Result<(), String> {
        self.advance();
        self.send(from, &To::Direct(to), &app)?;
        let notes = self.relay_notes();
        self.say(from, label, &notes);
        Ok(())
    }

    fn check(&mut self, name: impl Into<String>, ok: bool) {
        self.checks.push((name.into(), ok));
    }

    // ---- the story -----------------------------------------------------------------------

    fn play(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("temp dir: {e}"))?;
        self.setup()?;
        self.direct_chat()?;
        self.safety_numbers()?;
        self.group_chat()?;
        self.offline_and_catch_up()?;
        self.restart()?;
        self.link_tablet()?;
        self.simultaneous_initiation()?;
        self.remove_laptop()?;
        self.attachment()?;
        self.final_checks();
        Ok(())
    }

    fn add_device(
        &mut self,
        name: &'static str,
        account: &'static str,
        device_id: u32,
        primary: Option<IdentityKeyPair>,
    ) -> Result<(), String> {
        let key = *self.accounts.get(account).ok_or("unknown account")?;
        let db = self.dir.join(format!("{name}.sqlite"));
        let device = Device::create(
            &mut self.rng,
            self.now,
            name,
            account,
            key,
            device_id,
            primary,
            self.root,
            &db,
        )?;
        self.names.insert(device.address, name);
        self.devices.insert(name, device);
        let d = get(&mut self.devices, name)?;
        d.upload_prekeys(&mut self.rng, &mut self.relay, PREKEYS.0, PREKEYS.1)?;
        let notes = self.relay_notes();
        self.say(
            name,
            &format!(
                "new identity; uploads signed + {} EC + {} ML-KEM prekeys",
                PREKEYS.0, PREKEYS.1
            ),
            &notes,
        );
        Ok(())
    }

    /// Pins contacts (trust on first use), fetches lists and a certificate.
    fn join_directory(&mut self, name: &'static str) -> Result<(), String> {
        let ids = ["alice", "bob", "carol"];
        for id in ids {
            let key = self
                .relay
                .lookup(id.as_bytes())
                .ok_or("account not registered")?;
            let _first_use = get(&mut self.devices, name)?.add_contact(id, key)?;
        }
        let expires = self.now.plus_ms(7 * DAY_MS);
        let d = get(&mut self.devices, name)?;
        if !d.renew_certificate(&mut self.relay, expires) {
            return Err(format!("no certificate for {name}"));
        }
        d.refresh_lists(&mut self.rng, &mut self.relay)?;
        let notes = self.relay_notes();
        self.say(
            name,
            "pins alice, bob, carol; verifies their device lists",
            &notes,
        );
        Ok(())
    }

    fn setup(&mut self) -> Result<(), String> {
        self.section("1. Setup: identities, prekeys, signed device lists, sender certificates");
        let alice = IdentityKeyPair::generate(&mut self.rng);
        let bob = IdentityKeyPair::generate(&mut self.rng);
        let carol = IdentityKeyPair::generate(&mut self.rng);
        self.accounts.insert("alice", alice.public());
        self.accounts.insert("bob", bob.public());
        self.accounts.insert("carol", carol.public());
        self.add_device("alice.phone", "alice", 1, Some(alice))?;
        self.add_device("alice.laptop", "alice", 2, None)?;
        self.add_device("bob.phone", "bob", 1, Some(bob))?;
        self.add_device("carol.phone", "carol", 1, Some(carol))?;

        // Alice links her laptop: it shows a QR code, her phone signs it into her list.
        let request = get(&mut self.devices, "alice.laptop")?.link_request();
        self.say(
            "alice.laptop",
            &format!(
                "shows a link QR code ({} B: its key, signed)",
                request.len()
            ),
            "",
        );
        for (primary, linked) in [
            ("alice.phone", Some(("alice.laptop", 2))),
            ("bob.phone", None),
            ("carol.phone", None),
        ] {
            let d = get(&mut self.devices, primary)?;
            let mut entries = vec![d.own_entry().ok_or("not primary")?];
            if let Some((_, id)) = linked {
                entries.push(d.link(&request, id)?);
            }
            let version = d.publish_list(&mut self.relay, self.now, entries)?;
            let notes = self.relay_notes();
            self.say(
                primary,
                &format!("signs its account's device list v{version}"),
                &notes,
            );
        }
        self.current
            .insert("alice", ["alice.phone", "alice.laptop"].into());
        self.current.insert("bob", ["bob.phone"].into());
        self.current.insert("carol", ["carol.phone"].into());
        for name in ["alice.phone", "alice.laptop", "bob.phone", "carol.phone"] {
            self.join_directory(name)?;
        }
        if !self.quiet {
            let legend: Vec<String> = self
                .names
                .iter()
                .map(|(a, n)| format!("{} = {n}", relay::short(a)))
                .collect();
            self.lines.push(format!(
                "(the relay knows devices only as account-key/device: {}; names below are for you)",
                legend.join(", ")
            ));
        }
        Ok(())
    }

    fn direct_chat(&mut self) -> Result<(), String> {
        self.section("2. Alice ↔ Bob: a 1:1 chat, receipts and typing indicators (sealed sender)");
        // One unsealed envelope, for comparison: the relay sees who sent it.
        self.advance();
        let bob = self.keys_of(&["bob"]);
        let d = get(&mut self.devices, "alice.phone")?;
        d.send_direct(
            &mut self.rng,
            &mut self.relay,
            &bob,
            &App::Typing(true),
            true,
        )?;
        let notes = self.relay_notes();
        self.say(
            "alice.phone",
            "typing… (unsealed, for comparison: sender visible)",
            &notes,
        );
        let seen_typing_bob = self.sync("bob.phone", true)?;
        let hello = self.say_text(
            "alice.phone",
            To::Direct(&["bob"]),
            "Hi Bob! Are we still on for lunch on Friday?",
        )?;
        self.sync("alice.laptop", true)?;
        self.sync("bob.phone", true)?;
        self.signal(
            "bob.phone",
            &["alice"],
            App::Delivered(vec![hello]),
            "sends delivery receipt (encrypted)",
        )?;
        self.signal(
            "bob.phone",
            &["alice"],
            App::Read(vec![hello]),
            "opens the chat: read receipt (encrypted)",
        )?;
        self.signal(
            "bob.phone",
            &["alice"],
            App::Typing(true),
            "typing… (sealed)",
        )?;
        let reply = self.say_text(
            "bob.phone",
            To::Direct(&["alice"]),
            "Yes! 12:30 at the usual place?",
        )?;
        let seen_alice = self.sync("alice.phone", true)?;
        self.sync("alice.laptop", true)?;
        self.signal(
            "alice.phone",
            &["bob"],
            App::Delivered(vec![reply]),
            "sends delivery receipt",
        )?;
        self.signal(
            "alice.phone",
            &["bob"],
            App::Read(vec![reply]),
            "sends read receipt",
        )?;
        self.say_text(
            "alice.laptop",
            To::Direct(&["bob"]),
            "From my laptop: perfect, see you there.",
        )?;
        let seen_bob = self.sync("bob.phone", true)?;
        self.sync("alice.phone", true)?;

        let bob_addr = get(&mut self.devices, "bob.phone")?.address;
        let alice = get(&mut self.devices, "alice.phone")?;
        let (delivered, read) = alice.receipts.get(&hello).cloned().unwrap_or_default();
        let receipts = delivered.contains(&bob_addr) && read.contains(&bob_addr);
        let typing = |o: &[Outcome]| {
            o.iter().any(|x| {
                matches!(
                    x,
                    Outcome::App {
                        app: App::Typing(true),
                        ..
                    }
                )
            })
        };
        let bob_receipts = seen_bob.iter().any(|x| {
            matches!(
                x,
                Outcome::App {
                    app: App::Read(_),
                    ..
                }
            )
        });
        self.check(
            "delivery and read receipts and typing indicators arrive, encrypted, both ways",
            receipts && bob_receipts && typing(&seen_typing_bob) && typing(&seen_alice),
        );
        Ok(())
    }

    fn safety_numbers(&mut self) -> Result<(), String> {
        self.section("3. Safety numbers: Alice and Bob compare");
        let (alice, bob) = (self.accounts["alice"], self.accounts["bob"]);
        let at_alice = get(&mut self.devices, "alice.phone")?
            .safety_number(&bob)
            .ok_or("no lists")?;
        let at_bob = get(&mut self.devices, "bob.phone")?
            .safety_number(&alice)
            .ok_or("no lists")?;
        let grouped = at_alice.displayable_grouped();
        let (first, second) = grouped.split_at(grouped.len() / 2);
        self.say(
            "alice.phone",
            &format!("safety number {first}"),
            "(nothing: computed locally)",
        );
        self.say("", &format!("              {}", second.trim_start()), "");
        let grouped = at_bob.displayable_grouped();
        let (first, second) = grouped.split_at(grouped.len() / 2);
        self.say("bob.phone", &format!("safety number {first}"), "");
        self.say("", &format!("              {}", second.trim_start()), "");
        let scanned = at_bob.compare_scanned(&at_alice.scannable()) == Ok(true);
        let equal = at_alice.displayable() == at_bob.displayable() && scanned;
        let verified = get(&mut self.devices, "alice.phone")?.mark_verified("bob")
            & get(&mut self.devices, "bob.phone")?.mark_verified("alice");
        self.say(
            "bob.phone",
            &format!(
                "scans Alice's QR code: {}; both mark each other verified",
                if scanned { "match" } else { "MISMATCH" }
            ),
            "",
        );
        self.check(
            "safety numbers are identical on both sides (60 digits and QR scan)",
            equal && verified,
        );
        Ok(())
    }

    fn group_chat(&mut self) -> Result<(), String> {
        self.section("4. A group of all three accounts (every device), sender keys, sealed");
        let accounts = self.keys_of(&["alice", "bob", "carol"]);
        let id = GroupId::random(&mut self.rng);
        self.group = Some(id);
        self.advance();
        let d = get(&mut self.devices, "alice.phone")?;
        let members = d.install_group(id, "Lunch club", &accounts)?;
        let info = d.group_info(&id).ok_or("no group")?;
        self.plaintexts.push(b"Lunch club".to_vec());
        let sent = d.send_direct(&mut self.rng, &mut self.relay, &accounts, &info, false)?;
        let notes = self.relay_notes();
        self.say(
            "alice.phone",
            &format!("creates \"Lunch club\" ({members} devices); tells every device"),
            &notes,
        );
        self.sent_details(&sent);
        self.say_text(
            "alice.phone",
            To::Group,
            "Welcome to the lunch club, everyone!",
        )?;
        self.deliver("alice.phone", true)?;
        for (from, text) in [
            ("bob.phone", "Thanks Alice! Friday works for me."),
            ("carol.phone", "Count me in, I'll book a table."),
            ("alice.laptop", "Laptop here: calendar invite sent."),
        ] {
            self.say_text(from, To::Group, text)?;
            self.deliver(from, true)?;
        }
        Ok(())
    }

    fn offline_and_catch_up(&mut self) -> Result<(), String> {
        self.section(&format!(
            "5. Bob's phone goes offline; {OFFLINE_MESSAGES} messages (1:1 and group) queue up for it"
        ));
        self.offline.insert("bob.phone");
        let bob = get(&mut self.devices, "bob.phone")?.address;
        let mut for_bob = BTreeSet::new();
        for i in 0..OFFLINE_MESSAGES {
            let phrase = PHRASES[relay::pick(&mut self.rng, PHRASES.len())];
            let (from, to) = match relay::pick(&mut self.rng, 5) {
                0 => ("alice.phone", To::Direct(&["bob"])),
                1 => ("alice.laptop", To::Direct(&["bob"])),
                2 => ("alice.phone", To::Group),
                3 => ("carol.phone", To::Group),
                _ => ("alice.laptop", To::Group),
            };
            let label = if matches!(to, To::Group) {
                "group"
            } else {
                "bob"
            };
            let text = format!("#{:02} {phrase}", i + 1);
            let (id, _) = self.text(from, to, &text)?;
            for_bob.insert(id);
            let notes = self.relay_notes();
            let read = self.deliver(from, false)?;
            let readers: Vec<&str> = read
                .iter()
                .filter(|(_, o)| o.iter().any(|x| matches!(x, Outcome::App { app: App::Text { id: i, .. }, .. } if *i == id)))
                .map(|(n, _)| *n)
                .collect();
            let queued = self.relay.pending(&bob);
            self.say(
                from,
                &format!(
                    "[→ {label}] \"{}\" read live by {}",
                    clip(&text, 30),
                    readers.len()
                ),
                &format!("{notes}; bob.phone's queue: {queued}"),
            );
        }

        self.section(
            "6. Bob's phone is back: the relay hands over its queue shuffled, with duplicates",
        );
        self.offline.remove("bob.phone");
        self.advance();
        let duplicates = 6 + relay::pick(&mut self.rng, 6);
        let batch = self.relay.fetch_shuffled(&bob, &mut self.rng, duplicates);
        let notes = self.relay_notes();
        let d = get(&mut self.devices, "bob.phone")?;
        let before = d.stats;
        let outcomes = d.process_batch(&mut self.rng, self.now, &batch)?;
        self.relay.ack(&bob, &batch.iter().map(|s| s.id).collect());
        let after = d.stats;
        let held = d.held();
        let read: Vec<u64> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::App {
                    app: App::Text { id, .. },
                    ..
                } => Some(*id),
                _ => None,
            })
            .collect();
        let read_set: BTreeSet<u64> = read.iter().copied().collect();
        let held_then_read = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Held { .. }))
            .count();
        let first_dup = outcomes.iter().position(|o| {
            matches!(
                o,
                Outcome::Rejected {
                    duplicate: true,
                    ..
                }
            )
        });
        let shown: Vec<Outcome> = outcomes
            .into_iter()
            .enumerate()
            .filter(|(i, _)| *i < 5 || Some(*i) == first_dup)
            .map(|(_, o)| o)
            .collect();
        self.show("bob.phone", &shown, &notes);
        self.say(
            "bob.phone",
            &format!(
                "… read {} messages, refused {} duplicates, {} held until their key came",
                read.len(),
                after.duplicates - before.duplicates,
                held_then_read
            ),
            "",
        );
        let dups = after.duplicates - before.duplicates;
        self.check(
            format!("out-of-order catch-up complete: bob.phone read all {OFFLINE_MESSAGES} queued messages once"),
            read_set == for_bob && read.len() == for_bob.len() && held == 0,
        );
        self.check(
            format!("duplicates rejected: {duplicates} extra copies handed out, {dups} refused, none read twice"),
            dups == duplicates as u64 && after.failed == before.failed,
        );
        let direct: Vec<u64> = self
            .expected
            .iter()
            .filter(|e| for_bob.contains(&e.id) && !e.group)
            .map(|e| e.id)
            .collect();
        self.signal(
            "bob.phone",
            &["alice"],
            App::Delivered(direct.clone()),
            &format!("delivery receipt for {} messages", direct.len()),
        )?;
        self.signal(
            "bob.phone",
            &["alice"],
            App::Read(direct),
            "read receipt for them",
        )?;
        self.sync("alice.phone", true)?;
        self.sync("alice.laptop", false)?;
        Ok(())
    }

    fn restart(&mut self) -> Result<(), String> {
        self.section("7. Bob's client restarts from its SQLite database mid-conversation");
        let ids = [
            self.say_text(
                "alice.phone",
                To::Direct(&["bob"]),
                "Quick one: vegetarian options there?",
            )?,
            self.say_text(
                "alice.phone",
                To::Direct(&["bob"]),
                "And can we make it 13:00 instead?",
            )?,
            self.say_text("carol.phone", To::Group, "Table booked for four at 13:00.")?,
            self.say_text(
                "alice.phone",
                To::Direct(&["bob"]),
                "Let me know when you can!",
            )?,
        ];
        self.deliver("bob.phone", false)?;
        self.offline.insert("bob.phone");
        self.advance();
        let bob = get(&mut self.devices, "bob.phone")?.address;
        // Bob's own decoys (sealed to himself) are dropped on receipt: leave them out of the
        // count.
        let d = get(&mut self.devices, "bob.phone")?;
        let batch: Vec<_> = self
            .relay
            .fetch(&bob)
            .into_iter()
            .filter(|s| !d.is_own_decoy(&s.bytes))
            .collect();
        let notes = self.relay_notes();
        let first: Vec<_> = batch.iter().take(2).cloned().collect();
        let d = get(&mut self.devices, "bob.phone")?;
        let outcomes = d.process_batch(&mut self.rng, self.now, &first)?;
        let db = d.db_path().to_path_buf();
        self.show("bob.phone", &outcomes, &notes);
        self.say(
            "bob.phone",
            &format!(
                "CRASH after reading {} of {} (nothing acknowledged)",
                first.len(),
                batch.len()
            ),
            &format!("still holds {} for bob.phone", self.relay.pending(&bob)),
        );
        // Every in-memory value is dropped; only the database file survives.
        self.devices.remove("bob.phone");
        let restored = Device::load(&db)?;
        let summary = restored.restored_summary();
        let db_size = restored.db_size();
        self.devices.insert("bob.phone", restored);
        self.offline.remove("bob.phone");
        self.say(
            "bob.phone",
            &format!(
                "restarts from {} ({}): {summary}",
                db.file_name().and_then(|f| f.to_str()).unwrap_or("db"),
                size(db_size)
            ),
            "",
        );
        let d = get(&mut self.devices, "bob.phone")?;
        let before = d.stats;
        let out = self.sync("bob.phone", true)?;
        let after = get(&mut self.devices, "bob.phone")?.stats;
        let reply = self.say_text(
            "bob.phone",
            To::Direct(&["alice"]),
            "Back after a restart: veggie is fine, 13:00 works.",
        )?;
        let alice_read = self.sync("alice.phone", true)?;
        let group_msg = self.say_text(
            "bob.phone",
            To::Group,
            "My phone restarted mid-chat and nothing was lost.",
        )?;
        let read_by = self.deliver("bob.phone", false)?;
        let log = get(&mut self.devices, "bob.phone")?.log().to_vec();
        let all_once = ids
            .iter()
            .all(|id| log.iter().filter(|l| l.msg_id == *id).count() == 1);
        let reads = |o: &[Outcome], want: u64| {
            o.iter()
                .any(|x| matches!(x, Outcome::App { app: App::Text { id, .. }, .. } if *id == want))
        };
        let group_ok = read_by.iter().all(|(_, o)| reads(o, group_msg));
        let new_read = out
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Outcome::App {
                        app: App::Text { .. },
                        ..
                    }
                )
            })
            .count();
        self.say(
            "(everyone)",
            &format!(
                "{} devices read Bob's post-restart group message",
                read_by.len()
            ),
            "",
        );
        self.check(
            "Bob after restart: redelivered copies refused, the rest read, his replies readable",
            all_once
                && after.duplicates - before.duplicates == first.len() as u64
                && new_read == batch.len() - first.len()
                && reads(&alice_read, reply)
                && group_ok,
        );
        Ok(())
    }

    fn link_tablet(&mut self) -> Result<(), String> {
        self.section("8. Carol links her tablet mid-run");
        self.add_device("carol.tablet", "carol", 2, None)?;
        let request = get(&mut self.devices, "carol.tablet")?.link_request();
        self.say(
            "carol.tablet",
            &format!("shows its link QR code ({} B)", request.len()),
            "",
        );
        let phone = get(&mut self.devices, "carol.phone")?;
        let mut entries = phone.account_entries();
        entries.push(phone.link(&request, 2)?);
        let version = phone.publish_list(&mut self.relay, self.now, entries)?;
        let contacts = phone.contacts();
        let notes = self.relay_notes();
        self.say(
            "carol.phone",
            &format!("scans it, signs device list v{version} with the tablet"),
            &notes,
        );
        self.current
            .get_mut("carol")
            .ok_or("no carol")?
            .insert("carol.tablet");
        // Contacts come over the link channel from the phone (already verified there).
        let tablet = get(&mut self.devices, "carol.tablet")?;
        for (name, key) in contacts {
            let _ = tablet.add_contact(&name, key)?;
        }
        let expires = self.now.plus_ms(7 * DAY_MS);
        if !tablet.renew_certificate(&mut self.relay, expires) {
            return Err("no certificate for the tablet".into());
        }
        tablet.refresh_lists(&mut self.rng, &mut self.relay)?;
        let notes = self.relay_notes();
        self.say(
            "carol.tablet",
            "gets contacts over the link; verifies lists",
            &notes,
        );

        // Everyone but Bob's phone (busy: next section) learns of the tablet now.
        for name in ["carol.phone", "alice.phone", "alice.laptop"] {
            self.advance();
            let d = get(&mut self.devices, name)?;
            let (events, sends) = d.refresh_lists(&mut self.rng, &mut self.relay)?;
            let notes = self.relay_notes();
            let what = events
                .iter()
                .map(|e| {
                    format!(
                        "applies {}'s list v{} (+device {:?})",
                        self.account_name(&e.account),
                        e.version,
                        e.added
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let dist = if sends.is_empty() {
                String::new()
            } else {
                "; sends the tablet its key".to_string()
            };
            self.say(name, &format!("{what}{dist}"), &notes);
        }
        let group = self.group.ok_or("no group")?;
        self.advance();
        let carol = self.keys_of(&["carol"]);
        let phone = get(&mut self.devices, "carol.phone")?;
        let info = phone.group_info(&group).ok_or("no group")?;
        phone.send_direct(&mut self.rng, &mut self.relay, &carol, &info, false)?;
        let notes = self.relay_notes();
        self.say(
            "carol.phone",
            "syncs the group to the tablet (encrypted)",
            &notes,
        );
        self.sync("carol.tablet", true)?;

        // What was said before the link stays unreadable to the tablet.
        let tablet_addr = get(&mut self.devices, "carol.tablet")?.address;
        let phone_addr = get(&mut self.devices, "carol.phone")?.address;
        self.advance();
        let copied = self.relay.redirect_recent(&phone_addr, tablet_addr, 6);
        let out = self.sync("carol.tablet", true)?;
        let relay_read = out
            .iter()
            .any(|o| matches!(o, Outcome::App { .. } | Outcome::Key { .. }));
        let earlier: Vec<(Address, Vec<u8>)> = self
            .group_log
            .iter()
            .filter(|(_, _, p)| *p == "before-link")
            .rev()
            .take(8)
            .map(|(a, m, _)| (*a, m.clone()))
            .collect();
        let tablet = get(&mut self.devices, "carol.tablet")?;
        let mut failures = Vec::new();
        for (sender, message) in &earlier {
            if let Err(e) = tablet.try_group_ciphertext(sender, message) {
                failures.push(e);
            }
        }
        self.say(
            "carol.tablet",
            &format!(
                "given {} earlier group ciphertexts: {} unreadable ({})",
                earlier.len(),
                failures.len(),
                failures.first().map_or("", String::as_str)
            ),
            "",
        );
        self.check(
            format!(
                "carol.tablet cannot read group messages from before it was linked ({} replayed envelopes, {} ciphertexts)",
                copied,
                earlier.len()
            ),
            !relay_read && copied > 0 && !earlier.is_empty() && failures.len() == earlier.len(),
        );
        let welcome = self.say_text("alice.phone", To::Group, "Welcome, Carol's tablet!")?;
        let read = self.deliver("alice.phone", false)?;
        let tablet_read = read.iter().any(|(n, o)| {
            *n == "carol.tablet"
                && o.iter().any(|x| matches!(x, Outcome::App { app: App::Text { id, .. }, .. } if *id == welcome))
        });
        self.say(
            "carol.tablet",
            if tablet_read {
                "← alice.phone (group): \"Welcome, Carol's tablet!\""
            } else {
                "did NOT read the welcome"
            },
            "",
        );
        self.check(
            "carol.tablet reads group messages sent after it was linked",
            tablet_read,
        );
        Ok(())
    }

    fn simultaneous_initiation(&mut self) -> Result<(), String> {
        self.section("9. Simultaneous initiation: bob.phone and carol.tablet both send first");
        let bob = get(&mut self.devices, "bob.phone")?.address;
        let tablet = get(&mut self.devices, "carol.tablet")?.address;
        let none_before = get(&mut self.devices, "bob.phone")?.session_count(&tablet) == 0
            && get(&mut self.devices, "carol.tablet")?.session_count(&bob) == 0;
        // Bob's phone learns of the tablet and hands it its sender key (starting a session)…
        self.advance();
        let d = get(&mut self.devices, "bob.phone")?;
        let (events, sends) = d.refresh_lists(&mut self.rng, &mut self.relay)?;
        let notes = self.relay_notes();
        let version = events.first().map_or(0, |e| e.version);
        self.say(
            "bob.phone",
            &format!("applies carol's list v{version}; sends the tablet its sender key"),
            &notes,
        );
        for sent in &sends {
            self.sent_details(&Sent {
                new_sessions: sent.new_sessions.clone(),
                ..Sent::default()
            });
        }
        let from_bob = self.say_text(
            "bob.phone",
            To::Direct(&["carol"]),
            "Hi Carol! Is that your new tablet?",
        )?;
        // …while the tablet, not having read anything from Bob, starts one of its own.
        let hello = self.say_text("carol.tablet", To::Group, "Hello from Carol's new tablet!")?;
        let from_tablet = self.say_text(
            "carol.tablet",
            To::Direct(&["bob"]),
            "Hi Bob, typing this on my tablet.",
        )?;
        let crossed = get(&mut self.devices, "bob.phone")?.session_count(&tablet) == 1
            && get(&mut self.devices, "carol.tablet")?.session_count(&bob) == 1;
        let at_bob = self.sync("bob.phone", true)?;
        let at_tablet = self.sync("carol.tablet", true)?;
        self.sync("carol.phone", true)?;
        self.deliver("carol.tablet", false)?;
        let reads = |o: &[Outcome], want: u64| {
            o.iter()
                .any(|x| matches!(x, Outcome::App { app: App::Text { id, .. }, .. } if *id == want))
        };
        let key_from_bob = at_tablet
            .iter()
            .any(|o| matches!(o, Outcome::Key { from, status: KeyStatus::New } if *from == bob));
        let both_read = reads(&at_bob, hello)
            && reads(&at_bob, from_tablet)
            && reads(&at_tablet, from_bob)
            && key_from_bob;
        let counts = (
            get(&mut self.devices, "bob.phone")?.session_count(&tablet),
            get(&mut self.devices, "carol.tablet")?.session_count(&bob),
        );
        self.say(
            "(both)",
            &format!(
                "each now holds {} and {} sessions for the other: both first messages read",
                counts.0, counts.1
            ),
            "",
        );
        let r1 = self.say_text(
            "bob.phone",
            To::Direct(&["carol"]),
            "Both our first messages arrived.",
        )?;
        let got1 = self.sync("carol.tablet", true)?;
        self.sync("carol.phone", false)?;
        let r2 = self.say_text(
            "carol.tablet",
            To::Direct(&["bob"]),
            "And now we share one session.",
        )?;
        let got2 = self.sync("bob.phone", true)?;
        self.sync("carol.phone", false)?;
        let k1 = get(&mut self.devices, "bob.phone")?.active_base_key(&tablet);
        let k2 = get(&mut self.devices, "carol.tablet")?.active_base_key(&bob);
        let converged = k1.is_some() && k1 == k2;
        self.say(
            "(both)",
            &format!(
                "active sessions {}: base key {}",
                if converged { "converged" } else { "DIFFER" },
                k1.map(|k| hex::encode(k.get(..6).unwrap_or_default()))
                    .unwrap_or_default()
            ),
            "",
        );
        self.check(
            "simultaneous initiation: both first messages read, sessions converge",
            none_before
                && crossed
                && both_read
                && reads(&got1, r1)
                && reads(&got2, r2)
                && converged,
        );
        Ok(())
    }

    fn remove_laptop(&mut self) -> Result<(), String> {
        self.section("10. Alice removes her laptop; it keeps its stale state and keeps fetching");
        let laptop = get(&mut self.devices, "alice.laptop")?.address;
        let alice = self.accounts["alice"];
        let old_list = self.relay.device_list(&alice).ok_or("no list")?;
        let phone = get(&mut self.devices, "alice.phone")?;
        let entries: Vec<_> = phone
            .account_entries()
            .into_iter()
            .filter(|e| e.device_id() != laptop.device)
            .collect();
        let version = phone.publish_list(&mut self.relay, self.now, entries)?;
        let notes = self.relay_notes();
        self.say(
            "alice.phone",
            &format!("signs device list v{version} without the laptop"),
            &notes,
        );
        self.current
            .get_mut("alice")
            .ok_or("no alice")?
            .remove("alice.laptop");
        for name in ["alice.phone", "bob.phone", "carol.phone", "carol.tablet"] {
            self.advance();
            let d = get(&mut self.devices, name)?;
            let (events, _) = d.refresh_lists(&mut self.rng, &mut self.relay)?;
            let sessions = d.session_count(&laptop);
            let what = events
                .iter()
                .map(|e| {
                    format!(
                        "applies {}'s list v{} (-device {:?}): {sessions} sessions left with it; group re-keys",
                        self.account_name(&e.account),
                        e.version,
                        e.removed
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let notes = self.relay_notes();
            self.say(name, &what, &notes);
        }
        // A replayed old list (from a malicious relay) is refused.
        let rollback = get(&mut self.devices, "bob.phone")?.apply_list(&alice, &old_list);
        self.say(
            "bob.phone",
            &format!(
                "relay serves alice's old list v{}: {}",
                version - 1,
                rollback
                    .as_ref()
                    .map_or_else(|e| format!("refused ({e})"), |_| "ACCEPTED".to_string())
            ),
            "",
        );
        self.check("a rolled-back device list is refused", rollback.is_err());

        let expires = self.now.plus_ms(7 * DAY_MS);
        let certified =
            get(&mut self.devices, "alice.laptop")?.renew_certificate(&mut self.relay, expires);
        let notes = self.relay_notes();
        self.say(
            "alice.laptop",
            "asks for a fresh sender certificate",
            &notes,
        );

        let mut after = Vec::new();
        after.push(self.say_text(
            "alice.phone",
            To::Direct(&["bob"]),
            "I removed my old laptop from my account.",
        )?);
        self.deliver("alice.phone", false)?;
        for (from, text) in [
            (
                "alice.phone",
                "New sender key: the old laptop can't read this.",
            ),
            ("bob.phone", "Rotated mine too, thanks to the removal."),
            ("carol.phone", "Same here, new key for everyone left."),
            ("carol.tablet", "Tablet rotating as well."),
        ] {
            after.push(self.say_text(from, To::Group, text)?);
            self.deliver(from, false)?;
        }
        // The stale laptop fetches: its queue is gone; the relay tries to leak Alice's phone's
        // newest envelopes to it.
        let phone_addr = get(&mut self.devices, "alice.phone")?.address;
        self.advance();
        let copied = self.relay.redirect_recent(&phone_addr, laptop, 8);
        let out = self.sync("alice.laptop", true)?;
        let mut read_any = out
            .iter()
            .any(|o| matches!(o, Outcome::App { .. } | Outcome::Key { .. }));
        let leaked: Vec<(Address, Vec<u8>)> = self
            .group_log
            .iter()
            .filter(|(_, _, p)| *p == "after-removal")
            .map(|(a, m, _)| (*a, m.clone()))
            .collect();
        let d = get(&mut self.devices, "alice.laptop")?;
        let mut refused = Vec::new();
        for (sender, message) in &leaked {
            match d.try_group_ciphertext(sender, message) {
                Ok(_) => read_any = true,
                Err(e) => refused.push(e),
            }
        }
        let laptop_log_after = d.log().iter().filter(|l| after.contains(&l.msg_id)).count();
        self.say(
            "alice.laptop",
            &format!(
                "even given the {} new group ciphertexts: {} unreadable ({})",
                leaked.len(),
                refused.len(),
                refused.first().map_or("", String::as_str)
            ),
            "",
        );
        self.check(
            format!(
                "removed laptop reads nothing sent after its removal ({} relayed envelopes, {} ciphertexts tried)",
                copied,
                leaked.len()
            ),
            !read_any && copied > 0 && refused.len() == leaked.len() && !leaked.is_empty() && laptop_log_after == 0,
        );

        // It still holds a valid old certificate and its old sessions: it tries to talk.
        self.advance();
        let id = self.rng.next_u64();
        let text = "Laptop here, can anyone still read me?";
        let bob = self.keys_of(&["bob", "alice"]);
        let d = get(&mut self.devices, "alice.laptop")?;
        let sent = d.send_direct(
            &mut self.rng,
            &mut self.relay,
            &bob,
            &App::Text {
                id,
                text: text.into(),
            },
            false,
        )?;
        let group = self.group.ok_or("no group")?;
        let gid = self.rng.next_u64();
        let gtext = "Laptop to the group: hello?";
        let gsent = d.send_group(
            &mut self.rng,
            &mut self.relay,
            self.now,
            &group,
            &App::Text {
                id: gid,
                text: gtext.into(),
            },
        )?;
        self.expected.push(Expect {
            id,
            text: text.into(),
            to: BTreeSet::new(),
            group: false,
        });
        self.expected.push(Expect {
            id: gid,
            text: gtext.into(),
            to: BTreeSet::new(),
            group: true,
        });
        self.plaintexts.push(text.as_bytes().to_vec());
        self.plaintexts.push(gtext.as_bytes().to_vec());
        let notes = self.relay_notes();
        self.say(
            "alice.laptop",
            &format!("sends \"{text}\" and a group message with its old certificate"),
            &notes,
        );
        let out = self.deliver("alice.laptop", true)?;
        let refused_all = out.iter().all(|(_, o)| {
            !o.iter()
                .any(|x| matches!(x, Outcome::App { from, .. } if *from == laptop))
        });
        self.check(
            "the removed laptop is refused: receivers reject its messages, the relay won't certify it",
            !certified && refused_all && (sent.queued.len() + gsent.queued.len()) > 0,
        );
        Ok(())
    }

    fn attachment(&mut self) -> Result<(), String> {
        self.section("11. An attachment: a 5 MiB file, chunked upload interrupted and resumed");
        let mut file = vec![0u8; ATTACHMENT_SIZE];
        ChaCha20Rng::seed_from_u64(self.seed ^ 0xa77a_c4ed).fill_bytes(&mut file);
        let path = self.dir.join("lunch-photos.zip");
        std::fs::write(&path, &file).map_err(|e| format!("write file: {e}"))?;
        self.attachment_prefix = file.get(..64 * 1024).unwrap_or_default().to_vec();
        let original: [u8; 32] = Sha256::digest(&file).into();
        let chunk_len = u64::from(CHUNK) + 16;
        let total = ciphertext_len(file.len() as u64, CHUNK).map_err(|e| e.to_string())?;
        let chunks = total.div_ceil(chunk_len);
        let mut encryptor = AttachmentEncryptor::new(&mut self.rng, CHUNK, "application/zip")
            .map_err(|e| e.to_string())?;
        // The key (with chunk size and type) is what a client persists to resume.
        let key = *encryptor.key();
        let blob = self.relay.create_blob(&mut self.rng, total, chunk_len);
        let stop_after =
            10 + relay::pick(&mut self.rng, usize::try_from(chunks).unwrap_or(1) - 20) as u64;
        let source = std::fs::read(&path).map_err(|e| format!("read file: {e}"))?;
        let mut out = Vec::new();
        let mut sent_chunks = 0u64;
        for piece in source.chunks(CHUNK as usize) {
            encryptor
                .update(piece, &mut out)
                .map_err(|e| e.to_string())?;
            if !out.is_empty() {
                let offset = self.relay.blob_offset(blob).ok_or("no blob")?;
                self.relay.upload_chunks(blob, offset, &out)?;
                sent_chunks += out.len() as u64 / chunk_len;
                out.clear();
            }
            if sent_chunks >= stop_after {
                break;
            }
        }
        drop(encryptor);
        let notes = self.relay_notes();
        self.say(
            "alice.phone",
            &format!(
                "encrypts {} ({chunks} chunks); link drops after {sent_chunks}",
                size(file.len() as u64)
            ),
            &notes,
        );
        // Resume: ask the relay where it stopped, re-encrypt under the same key (identical
        // bytes), upload only from there.
        let offset = self.relay.blob_offset(blob).ok_or("no blob")?;
        let mut encryptor = AttachmentEncryptor::with_key(&key, CHUNK, "application/zip")
            .map_err(|e| e.to_string())?;
        let mut produced = 0u64;
        for piece in source.chunks(CHUNK as usize) {
            encryptor
                .update(piece, &mut out)
                .map_err(|e| e.to_string())?;
            produced = self.upload_from(blob, offset, produced, &mut out)?;
        }
        let pointer = encryptor.finish(&mut out);
        self.upload_from(blob, offset, produced, &mut out)?;
        let notes = self.relay_notes();
        self.say(
            "alice.phone",
            &format!(
                "resumes at chunk {}: same key, same bytes, sends the rest",
                offset / chunk_len
            ),
            &notes,
        );
        // Identical ciphertext: the relay's blob equals an uninterrupted encryption, its
        // digest is the pointer's, and chunk k regenerates alone with `encrypt_chunk`.
        let stored = self.relay.blob(blob).ok_or("no blob")?.to_vec();
        let mut reference = Vec::new();
        let mut whole = AttachmentEncryptor::with_key(&key, CHUNK, "application/zip")
            .map_err(|e| e.to_string())?;
        whole
            .update(&file, &mut reference)
            .map_err(|e| e.to_string())?;
        let _ = whole.finish(&mut reference);
        let k = offset / chunk_len;
        let k_usize = usize::try_from(k).unwrap_or(0);
        let plain_k = file
            .get(k_usize * CHUNK as usize..(k_usize + 1) * CHUNK as usize)
            .unwrap_or_default();
        let regenerated = encrypt_chunk(&key, CHUNK, u32::try_from(k).unwrap_or(0), false, plain_k)
            .map_err(|e| e.to_string())?;
        let stored_k = stored
            .get(k_usize * chunk_len as usize..(k_usize + 1) * chunk_len as usize)
            .unwrap_or_default();
        let digest: [u8; 32] = Sha256::digest(&stored).into();
        let identical =
            stored == reference && digest == *pointer.digest() && regenerated == stored_k;
        self.say(
            "alice.phone",
            &format!(
                "relay blob == uninterrupted encryption: {identical}; SHA-256 {}…",
                hex::encode(digest.get(..8).unwrap_or_default())
            ),
            "",
        );
        self.check(
            "resumed upload produced the identical ciphertext (and the pointer's digest)",
            identical,
        );

        let name = "lunch-photos.zip".to_string();
        self.plaintexts.push(name.as_bytes().to_vec());
        self.advance();
        let id = self.rng.next_u64();
        let app = App::Attachment {
            id,
            name: name.clone(),
            blob,
            pointer: pointer.to_bytes().to_vec(),
        };
        self.send("alice.phone", &To::Group, &app)?;
        let intended = self.intended("alice.phone", &To::Group);
        self.expected.push(Expect {
            id,
            text: name.clone(),
            to: intended.clone(),
            group: true,
        });
        let notes = self.relay_notes();
        self.say(
            "alice.phone",
            &format!("[→ group] {name} (pointer: key, digest, size)"),
            &notes,
        );
        let mut matches = 0;
        for reader in intended.iter().copied().collect::<Vec<_>>() {
            let out = self.sync(reader, false)?;
            let pointer_msg = out.iter().find_map(|o| match o {
                Outcome::App {
                    app: App::Attachment { blob, pointer, .. },
                    ..
                } => Some((*blob, pointer.clone())),
                _ => None,
            });
            self.relay.take_notes();
            let Some((blob, pointer)) = pointer_msg else {
                self.say(reader, "did NOT get the attachment pointer", "");
                continue;
            };
            let d = get(&mut self.devices, reader)?;
            let result = d.download_attachment(&mut self.relay, blob, &pointer);
            let notes = self.relay_notes();
            let what = match result {
                Ok(plain) => {
                    let got: [u8; 32] = Sha256::digest(&plain).into();
                    if got == original {
                        matches += 1;
                    }
                    format!(
                        "downloads, decrypts {}: SHA-256 {}… {}",
                        size(plain.len() as u64),
                        hex::encode(got.get(..8).unwrap_or_default()),
                        if got == original {
                            "= original"
                        } else {
                            "≠ ORIGINAL"
                        }
                    )
                }
                Err(e) => format!("download failed: {e}"),
            };
            self.say(reader, &what, &notes);
        }
        self.attachment_stats = format!(
            "1 blob, {} in {chunks} chunks (upload interrupted after {sent_chunks}, resumed at {})",
            size(total),
            offset / chunk_len
        );
        self.check(
            format!(
                "attachment: SHA-256 matches the original on all {} receiving devices",
                intended.len()
            ),
            matches == intended.len() && !intended.is_empty(),
        );
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    /// Uploads the part of `out` beyond the relay's resume `offset`; returns bytes produced.
    fn upload_from(
        &mut self,
        blob: u64,
        offset: u64,
        produced: u64,
        out: &mut Vec<u8>,
    ) -> Result<u64, String> {
        let end = produced + out.len() as u64;
        if end > offset {
            let skip = usize::try_from(offset.saturating_sub(produced)).unwrap_or(0);
            let at = self.relay.blob_offset(blob).ok_or("no blob")?;
            self.relay
                .upload_chunks(blob, at, out.get(skip..).unwrap_or_default())?;
        }
        out.clear();
        Ok(end)
    }

    /// The checks over the whole run.
    fn final_checks(&mut self) {
        // Deliveries: each intended device read each message exactly once, with its text;
        // nobody read anything not meant for it.
        let mut seen: BTreeMap<(&'static str, u64), Vec<String>> = BTreeMap::new();
        for (name, d) in &self.devices {
            for l in d.log() {
                seen.entry((*name, l.msg_id))
                    .or_default()
                    .push(l.body.clone());
            }
        }
        let mut wrong = Vec::new();
        let mut deliveries = 0;
        let mut known = BTreeSet::new();
        for e in &self.expected {
            for to in &e.to {
                known.insert((*to, e.id));
                match seen.get(&(*to, e.id)) {
                    Some(bodies) if bodies.len() == 1 && bodies.first() == Some(&e.text) => {
                        deliveries += 1
                    }
                    other => wrong.push(format!(
                        "{to} got {:?} for \"{}\"",
                        other.map(Vec::len),
                        e.text
                    )),
                }
            }
        }
        let unexpected: Vec<String> = seen
            .keys()
            .filter(|k| !known.contains(*k))
            .map(|(d, id)| format!("{d} read {id:x}"))
            .collect();
        if !self.quiet {
            for w in wrong.iter().chain(unexpected.iter()).take(10) {
                self.lines.push(format!("!! {w}"));
            }
        }
        self.check(
            format!("every message reached each intended device exactly once, with the right text ({deliveries} deliveries)"),
            wrong.is_empty() && deliveries > 0,
        );
        self.check(
            "no device read a message not meant for it (removed, not yet linked)",
            unexpected.is_empty(),
        );

        // Sealed envelopes name their recipient and no other key.
        let keys: Vec<[u8; 32]> = self
            .devices
            .values()
            .flat_map(|d| [d.identity_key().to_bytes(), d.identity_key().x25519()])
            .chain(
                self.accounts
                    .values()
                    .flat_map(|k| [k.to_bytes(), k.x25519()]),
            )
            .collect();
        let mut sealed = 0;
        let mut exposed = 0;
        for (recipient, bytes) in self.relay.history() {
            let Ok(envelope) = Envelope::from_bytes(bytes) else {
                continue;
            };
            if !matches!(envelope.content, EnvelopeContent::Sealed(_)) {
                continue;
            }
            sealed += 1;
            let own: Vec<[u8; 32]> = self
                .devices
                .values()
                .filter(|d| d.address == *recipient)
                .flat_map(|d| [d.identity_key().to_bytes(), d.identity_key().x25519()])
                .chain([recipient.account.to_bytes(), recipient.account.x25519()])
                .collect();
            if keys
                .iter()
                .filter(|k| !own.contains(k))
                .any(|k| bytes.windows(32).any(|w| w == k))
            {
                exposed += 1;
            }
        }
        self.check(
            format!("sealed envelopes carry no sender key bytes ({sealed} checked: only the recipient's key appears)"),
            sealed > 0 && exposed == 0,
        );

        let blobs = self.relay.all_bytes();
        let mut needles: Vec<Vec<u8>> = self.plaintexts.clone();
        needles.extend(self.attachment_prefix.chunks(32).map(<[u8]>::to_vec));
        needles.push(self.attachment_prefix.clone());
        let leaks = count_leaks(&blobs, &needles);
        let bytes: usize = blobs.iter().map(Vec::len).sum();
        self.check(
            format!(
                "relay stored no plaintext ({} blobs, {} searched for {} plaintexts and the attachment's first 64 KiB)",
                blobs.len(),
                size(bytes as u64),
                self.plaintexts.len()
            ),
            leaks == 0 && !self.attachment_prefix.is_empty() && self.plaintexts.iter().all(|p| p.len() >= 8),
        );
    }

    fn summary(&self) -> Vec<String> {
        let mut out = vec![
            format!(
                "{:<14}{:>6}{:>6}{:>9}{:>7}{:>9}{:>10}{:>11}",
                "device", "sent", "read", "signals", "dups", "refused", "sessions", "database"
            ),
            "─".repeat(72),
        ];
        for (name, d) in &self.devices {
            let s = d.stats;
            let note = if self.current.values().any(|c| c.contains(name)) {
                ""
            } else {
                "  (removed)"
            };
            out.push(format!(
                "{name:<14}{:>6}{:>6}{:>9}{:>7}{:>9}{:>10}{:>11}{note}",
                s.sent,
                s.received,
                s.signals,
                s.duplicates,
                s.failed,
                d.active_sessions(),
                size(d.db_size())
            ));
        }
        let r = self.relay.stats();
        let (held, held_bytes) = self.relay.held();
        let queued: usize = r.queued.values().map(|(n, _)| n).sum();
        let queued_bytes: usize = r.queued.values().map(|(_, b)| b).sum();
        let kinds: Vec<String> = r
            .queued
            .iter()
            .map(|(k, (n, b))| format!("{k} {n} ({})", size(*b as u64)))
            .collect();
        out.push(String::new());
        out.push(format!(
            "relay: {queued} envelopes queued, {} (by kind: {}); {} handed out; {held} still held ({})",
            size(queued_bytes as u64),
            kinds.join(", "),
            r.delivered,
            size(held_bytes as u64)
        ));
        out.push(format!(
            "       {} prekey uploads ({}), {} bundles, {} device lists, {} certificates, {} requests refused",
            r.key_uploads.0,
            size(r.key_uploads.1 as u64),
            r.bundles,
            r.lists,
            r.certificates,
            r.refused
        ));
        out.push(format!("       attachments: {}", self.attachment_stats));
        out
    }

    fn finish(self) -> Report {
        let summary = self.summary();
        let relay_blobs = self.relay.all_bytes();
        let report = Report {
            seed: self.seed,
            lines: self.lines,
            summary,
            checks: self.checks,
            relay_blobs,
            plaintexts: self.plaintexts,
            attachment_prefix: self.attachment_prefix,
        };
        drop(self.devices);
        let _ = std::fs::remove_dir_all(&self.dir);
        report
    }
}

/// Occurrences of any needle (each at least 8 bytes) in any blob: every 8-byte window of every
/// blob is looked up by its first 8 bytes, then compared in full.
fn count_leaks(blobs: &[Vec<u8>], needles: &[Vec<u8>]) -> usize {
    let mut index: HashMap<[u8; 8], Vec<&[u8]>> = HashMap::new();
    for n in needles {
        if let Some(head) = n.first_chunk::<8>() {
            index.entry(*head).or_default().push(n);
        }
    }
    let mut hits = 0;
    for blob in blobs {
        for (i, w) in blob.windows(8).enumerate() {
            let Ok(head) = <[u8; 8]>::try_from(w) else {
                continue;
            };
            if let Some(candidates) = index.get(&head) {
                let rest = blob.get(i..).unwrap_or_default();
                hits += candidates.iter().filter(|c| rest.starts_with(c)).count();
            }
        }
    }
    hits
}
