//! Client persistence: one SQLite database per device (rusqlite, `bundled`: nothing to install).
//!
//! Two tables: `state` holds the library's snapshots and the client's own small records under
//! named keys, `messages` is the device's message history (append-only). Every save is one
//! transaction, so a crash leaves either the state before the save or the state after it.
//! A real client would also encrypt the database at rest (for example with SQLCipher): the
//! snapshots hold secret keys.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

/// One row of the message history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogRow {
    /// The application message id.
    pub(crate) msg_id: u64,
    /// Who sent it, as shown to the user (`alice.phone`).
    pub(crate) from: String,
    /// `direct` or `group`.
    pub(crate) channel: String,
    /// The text (or the attachment's name).
    pub(crate) body: String,
}

/// A device's database.
pub(crate) struct Store {
    conn: Connection,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub(crate) fn open(path: &Path) -> Result<Self, String> {
        let conn = Connection::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
        // WAL with NORMAL sync: each commit is atomic and durable against a process crash.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS state (
                 name  TEXT PRIMARY KEY,
                 value BLOB NOT NULL
             );
             CREATE TABLE IF NOT EXISTS messages (
                 seq     INTEGER PRIMARY KEY AUTOINCREMENT,
                 msg_id  BLOB NOT NULL,
                 sender  TEXT NOT NULL,
                 channel TEXT NOT NULL,
                 body    TEXT NOT NULL
             );",
        )
        .map_err(|e| format!("schema: {e}"))?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Writes `state` rows (replacing rows of the same name), deletes rows named in `delete`,
    /// and appends `messages`, in one transaction.
    pub(crate) fn save(
        &mut self,
        state: &[(String, Vec<u8>)],
        delete: &[String],
        messages: &[LogRow],
    ) -> Result<(), String> {
        let tx = self.conn.transaction().map_err(|e| format!("begin: {e}"))?;
        {
            let mut put = tx
                .prepare_cached("INSERT OR REPLACE INTO state (name, value) VALUES (?1, ?2)")
                .map_err(|e| format!("prepare: {e}"))?;
            for (name, value) in state {
                put.execute(params![name, value])
                    .map_err(|e| format!("write {name}: {e}"))?;
            }
            for name in delete {
                tx.execute("DELETE FROM state WHERE name = ?1", params![name])
                    .map_err(|e| format!("delete {name}: {e}"))?;
            }
            let mut log = tx
                .prepare_cached(
                    "INSERT INTO messages (msg_id, sender, channel, body) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(|e| format!("prepare: {e}"))?;
            for m in messages {
                log.execute(params![
                    m.msg_id.to_be_bytes().to_vec(),
                    m.from,
                    m.channel,
                    m.body
                ])
                .map_err(|e| format!("append message: {e}"))?;
            }
        }
        tx.commit().map_err(|e| format!("commit: {e}"))
    }

    /// Every `state` row.
    pub(crate) fn load_state(&self) -> Result<BTreeMap<String, Vec<u8>>, String> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, value FROM state")
            .map_err(|e| format!("prepare: {e}"))?;
        let rows = stmt
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
            })
            .map_err(|e| format!("query: {e}"))?;
        rows.collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(|e| format!("read state: {e}"))
    }

    /// The message history, oldest first.
    pub(crate) fn load_messages(&self) -> Result<Vec<LogRow>, String> {
        let mut stmt = self
            .conn
            .prepare("SELECT msg_id, sender, channel, body FROM messages ORDER BY seq")
            .map_err(|e| format!("prepare: {e}"))?;
        let rows = stmt
            .query_map([], |row| {
                let id: Vec<u8> = row.get(0)?;
                Ok((id, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .map_err(|e| format!("query: {e}"))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, from, channel, body) = row.map_err(|e| format!("read message: {e}"))?;
            let id: [u8; 8] = id.try_into().map_err(|_| "bad message id".to_string())?;
            out.push(LogRow {
                msg_id: u64::from_be_bytes(id),
                from,
                channel,
                body,
            });
        }
        Ok(out)
    }

    /// Size of the database in bytes (pages in use, WAL included once checkpointed).
    pub(crate) fn size(&self) -> u64 {
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap_or(0);
        let page: i64 = self
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap_or(0);
        u64::try_from(pages.saturating_mul(page)).unwrap_or(0)
    }

    /// The database file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// A tiny length-prefixed encoder for the client's own records.
#[derive(Default)]
pub(crate) struct Writer(Vec<u8>);

impl Writer {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn bytes(&mut self, v: &[u8]) -> &mut Self {
        let len = u32::try_from(v.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(v);
        self
    }

    pub(crate) fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }

    pub(crate) fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// The decoder for [`Writer`]'s output; every read is checked.
pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self(bytes)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1)?.first().copied()
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }

    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = u32::from_be_bytes(self.take(4)?.try_into().ok()?);
        self.take(usize::try_from(len).ok()?)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes()?.try_into().ok()
    }

    pub(crate) fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
