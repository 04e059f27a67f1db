//! What fine-tuning must keep across restarts: uploaded files (OpenAI's Files API) and the
//! jobs, events and checkpoints of fine-tuning jobs, in SQLite at `<data_dir>/flint.db`, with
//! file contents beside it in `<data_dir>/files/<id>`.
//!
//! Job, event and checkpoint bodies are opaque JSON: the job logic owns their shape, so it can
//! grow fields without a migration; only what is queried on (ids, times, status) has columns.
//! One connection behind a mutex is enough: every call is a short statement, and file contents
//! are read and written outside the lock. An upload is written to a temporary file beside the
//! others ([`super::upload::Upload`]) and becomes a file only once complete ([`Store::commit_file`]).

use std::{
    collections::HashMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};
use serde::Serialize;
use serde_json::Value;

use crate::generation::new_id;

/// The schema, one entry a version: `user_version` says how many have run. Append only.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE files (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL,
        bytes INTEGER NOT NULL, filename TEXT NOT NULL, purpose TEXT NOT NULL, status TEXT NOT NULL,
        status_details TEXT);
    CREATE INDEX files_purpose ON files (purpose, seq);
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY, created_at INTEGER NOT NULL, status TEXT NOT NULL, model TEXT NOT NULL,
        body TEXT NOT NULL);
    CREATE INDEX jobs_created ON jobs (created_at, id);
    CREATE INDEX jobs_status ON jobs (status);
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, job_id TEXT NOT NULL,
        created_at INTEGER NOT NULL, body TEXT NOT NULL);
    CREATE INDEX events_job ON events (job_id, seq);
    CREATE TABLE checkpoints (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, job_id TEXT NOT NULL,
        created_at INTEGER NOT NULL, step INTEGER NOT NULL, body TEXT NOT NULL);
    CREATE INDEX checkpoints_job ON checkpoints (job_id, seq);
"];

/// Temporary upload files start with this, so a crash's leftovers can be told apart.
const TMP_PREFIX: &str = ".upload-";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A newer flint migrated the database; running an older one on it could corrupt it.
    #[error("{}: schema version {found} is newer than this flint knows ({known}); upgrade flint", path.display())]
    TooNew { path: PathBuf, found: i64, known: i64 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// An uploaded file, as OpenAI's API describes it.
#[derive(Serialize, Clone, Debug, PartialEq, utoipa::ToSchema)]
pub struct FileObject {
    /// `file-` and 24 hex digits.
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    pub bytes: u64,
    /// Unix seconds.
    pub created_at: i64,
    pub filename: String,
    pub purpose: String,
    /// Always `processed`: files are checked before they are stored.
    pub status: String,
    pub status_details: Option<String>,
}

impl FileObject {
    /// A new file's description (its id is new; `bytes` is filled in when it is complete).
    pub(super) fn new(filename: &str, purpose: &str) -> Self {
        Self {
            id: new_id("file"),
            object: "file",
            bytes: 0,
            created_at: chrono::Utc::now().timestamp(),
            filename: filename.to_string(),
            purpose: purpose.to_string(),
            status: "processed".into(),
            status_details: None,
        }
    }

    fn from_row(r: &Row) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            object: "file",
            bytes: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
            created_at: r.get(2)?,
            filename: r.get(3)?,
            purpose: r.get(4)?,
            status: r.get(5)?,
            status_details: r.get(6)?,
        })
    }
}

const FILE_COLUMNS: &str = "id, bytes, created_at, filename, purpose, status, status_details";

/// The database and the file directory of `--data-dir`.
pub struct Store {
    conn: Mutex<Connection>,
    files_dir: PathBuf,
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/flint.db` and `<data_dir>/files/`, and brings the
    /// schema up to date.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let files_dir = data_dir.join("files");
        fs::create_dir_all(&files_dir).map_err(io(&files_dir))?;
        let db = data_dir.join("flint.db");
        let mut conn = Connection::open(&db)?;
        // WAL: readers never wait for a writer, and a crash mid-write leaves the last commit.
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        migrate(&mut conn, &db)?;
        remove_leftover_uploads(&files_dir);
        Ok(Self { conn: Mutex::new(conn), files_dir })
    }

    /// The connection; a panic in another thread mid-call cannot leave a half-done statement
    /// (SQLite rolls it back), so a poisoned lock is safe to take over.
    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- files ----

    /// Stores a file held in memory (uploads stream through [`super::upload::Upload`]).
    pub fn insert_file(&self, filename: &str, purpose: &str, data: &[u8]) -> Result<FileObject> {
        let mut file = FileObject::new(filename, purpose);
        file.bytes = data.len() as u64;
        let tmp = self.upload_path(&file.id);
        let written = fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        });
        if let Err(e) = written.map_err(io(&tmp)).and_then(|()| self.commit_file(&file, &tmp)) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(file)
    }

    /// Where the upload of file `id` is written until it is complete: never listed, and
    /// removed at startup if a crash left it.
    pub(super) fn upload_path(&self, id: &str) -> PathBuf {
        self.files_dir.join(format!("{TMP_PREFIX}{id}"))
    }

    /// Makes `tmp`, complete and synced to disk, the contents of `file`, and records `file`.
    /// The contents are in place before the row exists, and are removed if the row cannot be
    /// written; `tmp` is the caller's to remove if this fails.
    pub(super) fn commit_file(&self, file: &FileObject, tmp: &Path) -> Result<()> {
        let path = self.file_path(&file.id);
        fs::rename(tmp, &path).map_err(io(&path))?;
        // The rename itself is durable only once the directory is synced (POSIX).
        #[cfg(unix)]
        if let Err(e) = fs::File::open(&self.files_dir).and_then(|d| d.sync_all()) {
            let _ = fs::remove_file(&path);
            return Err(io(&self.files_dir)(e));
        }
        let inserted = self.conn().execute(
            "INSERT INTO files (id, bytes, created_at, filename, purpose, status, status_details)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![file.id, file.bytes as i64, file.created_at, file.filename, file.purpose, file.status, file.status_details],
        );
        if let Err(e) = inserted {
            let _ = fs::remove_file(&path);
            return Err(e.into());
        }
        Ok(())
    }

    pub fn get_file(&self, id: &str) -> Result<Option<FileObject>> {
        let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ?1");
        Ok(self.conn().query_row(&sql, [id], FileObject::from_row).optional()?)
    }

    /// A page of files (of one `purpose`, or all) in upload order, starting after the file
    /// `after` (OpenAI's cursor; an unknown one gives an empty page), and whether more follow.
    pub fn list_files(
        &self,
        purpose: Option<&str>,
        after: Option<&str>,
        limit: usize,
        newest_first: bool,
    ) -> Result<(Vec<FileObject>, bool)> {
        let (cmp, order) = if newest_first { ("<", "DESC") } else { (">", "ASC") };
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE (?1 IS NULL OR purpose = ?1)
             AND (?2 IS NULL OR seq {cmp} (SELECT seq FROM files WHERE id = ?2))
             ORDER BY seq {order} LIMIT ?3"
        );
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params![purpose, after, fetch_limit(limit)], FileObject::from_row)?;
        Ok(page(rows.collect::<rusqlite::Result<Vec<_>>>()?, limit))
    }

    /// Where the contents of file `id` live. Only for ids the store handed out: it does not
    /// check that `id` is a plain name.
    pub fn file_path(&self, id: &str) -> PathBuf {
        self.files_dir.join(id)
    }

    /// File `id`'s description and its contents opened for reading (a file deleted while it
    /// is read stays readable through the handle); `None` if there is no such file.
    pub fn open_file(&self, id: &str) -> Result<Option<(FileObject, fs::File)>> {
        // The row is checked first: `id` comes from a URL and must not name any other path.
        let Some(file) = self.get_file(id)? else { return Ok(None) };
        let path = self.file_path(id);
        match fs::File::open(&path) {
            Ok(f) => Ok(Some((file, f))),
            // Deleted since the row was read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Deletes file `id` (false: there was none). The row goes first, so a file is never
    /// listed without its contents.
    pub fn delete_file(&self, id: &str) -> Result<bool> {
        if self.conn().execute("DELETE FROM files WHERE id = ?1", [id])? == 0 {
            return Ok(false);
        }
        let path = self.file_path(id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            // The file is gone from the API either way; the bytes are only wasted space.
            Err(e) => tracing::warn!(path = %path.display(), "cannot remove a deleted file's contents: {e}"),
        }
        Ok(true)
    }

    // ---- jobs ----

    pub fn insert_job(&self, id: &str, created_at: i64, status: &str, model: &str, body: &Value) -> Result<()> {
        let body = serde_json::to_string(body)?;
        self.conn().execute(
            "INSERT INTO jobs (id, created_at, status, model, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, created_at, status, model, body],
        )?;
        Ok(())
    }

    /// Replaces job `id`'s status and body (false: no such job).
    pub fn update_job(&self, id: &str, status: &str, body: &Value) -> Result<bool> {
        let body = serde_json::to_string(body)?;
        let n = self.conn().execute("UPDATE jobs SET status = ?2, body = ?3 WHERE id = ?1", params![id, status, body])?;
        Ok(n > 0)
    }

    pub fn get_job(&self, id: &str) -> Result<Option<Value>> {
        let body: Option<String> =
            self.conn().query_row("SELECT body FROM jobs WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    /// A page of jobs, newest first; `after`: only jobs older than that one.
    pub fn list_jobs(&self, after: Option<&str>, limit: usize) -> Result<(Vec<Value>, bool)> {
        self.bodies(
            "SELECT body FROM jobs
             WHERE ?1 IS NULL OR (created_at, id) < (SELECT created_at, id FROM jobs WHERE id = ?1)
             ORDER BY created_at DESC, id DESC LIMIT ?2",
            params![after, fetch_limit(limit)],
            limit,
        )
    }

    /// Every job whose status is one of `statuses`, oldest first (what to resume on startup).
    pub fn jobs_with_status(&self, statuses: &[&str]) -> Result<Vec<Value>> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; statuses.len()].join(", ");
        let sql = format!("SELECT body FROM jobs WHERE status IN ({marks}) ORDER BY created_at ASC, id ASC");
        Ok(self.bodies(&sql, params_from_iter(statuses), usize::MAX)?.0)
    }

    /// How many jobs have each status (statuses without jobs are absent).
    pub fn job_counts(&self) -> Result<HashMap<String, usize>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT status, COUNT(*) FROM jobs GROUP BY status")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let counts = rows.map(|r| r.map(|(s, n)| (s, usize::try_from(n).unwrap_or(0))));
        Ok(counts.collect::<rusqlite::Result<_>>()?)
    }

    // ---- events and checkpoints ----

    pub fn add_event(&self, job_id: &str, id: &str, created_at: i64, body: &Value) -> Result<()> {
        let body = serde_json::to_string(body)?;
        self.conn().execute(
            "INSERT INTO events (id, job_id, created_at, body) VALUES (?1, ?2, ?3, ?4)",
            params![id, job_id, created_at, body],
        )?;
        Ok(())
    }

    /// A page of job `job_id`'s events, newest first (as OpenAI lists them); `after`: only
    /// events older than that one.
    pub fn list_events(&self, job_id: &str, after: Option<&str>, limit: usize) -> Result<(Vec<Value>, bool)> {
        self.bodies(
            "SELECT body FROM events WHERE job_id = ?1
             AND (?2 IS NULL OR seq < (SELECT seq FROM events WHERE id = ?2))
             ORDER BY seq DESC LIMIT ?3",
            params![job_id, after, fetch_limit(limit)],
            limit,
        )
    }

    pub fn add_checkpoint(&self, job_id: &str, id: &str, created_at: i64, step: i64, body: &Value) -> Result<()> {
        let body = serde_json::to_string(body)?;
        self.conn().execute(
            "INSERT INTO checkpoints (id, job_id, created_at, step, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, job_id, created_at, step, body],
        )?;
        Ok(())
    }

    /// A page of job `job_id`'s checkpoints, newest first; `after`: only older ones.
    pub fn list_checkpoints(&self, job_id: &str, after: Option<&str>, limit: usize) -> Result<(Vec<Value>, bool)> {
        self.bodies(
            "SELECT body FROM checkpoints WHERE job_id = ?1
             AND (?2 IS NULL OR seq < (SELECT seq FROM checkpoints WHERE id = ?2))
             ORDER BY seq DESC LIMIT ?3",
            params![job_id, after, fetch_limit(limit)],
            limit,
        )
    }

    /// Runs a query whose one column is a JSON body; at most `limit` bodies and whether the
    /// query found more (it must fetch `limit + 1`).
    fn bodies(&self, sql: &str, params: impl rusqlite::Params, limit: usize) -> Result<(Vec<Value>, bool)> {
        let texts: Vec<String> = {
            let conn = self.conn();
            let mut stmt = conn.prepare(sql)?;
            let rows = stmt.query_map(params, |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let (texts, more) = page(texts, limit);
        let values = texts.iter().map(|t| serde_json::from_str(t)).collect::<Result<_, _>>()?;
        Ok((values, more))
    }
}

/// One more row than the page holds, to know whether another page follows.
fn fetch_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX - 1).saturating_add(1)
}

fn page<T>(mut rows: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    (rows, more)
}

/// Applies the migrations `user_version` says have not run, each in its own transaction.
fn migrate(conn: &mut Connection, db: &Path) -> Result<()> {
    let known = MIGRATIONS.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(StoreError::TooNew { path: db.to_path_buf(), found, known });
    }
    for (v, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", v as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Temporary files of uploads a crash interrupted: never listed, so only wasted space.
fn remove_leftover_uploads(files_dir: &Path) {
    let Ok(entries) = fs::read_dir(files_dir) else { return };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        (dir, store)
    }

    fn read(store: &Store, id: &str) -> Option<Vec<u8>> {
        let (_, mut f) = store.open_file(id).unwrap()?;
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut data).unwrap();
        Some(data)
    }

    fn ids(files: &[FileObject]) -> Vec<&str> {
        files.iter().map(|f| f.id.as_str()).collect()
    }

    #[test]
    fn files_round_trip_and_survive_a_restart() {
        let (dir, store) = store();
        let f = store.insert_file("train.jsonl", "fine-tune", b"{}\n").unwrap();
        assert!(f.id.starts_with("file-") && f.id.len() == 29, "{}", f.id);
        assert_eq!((f.object, f.bytes, f.status.as_str()), ("file", 3, "processed"));
        assert_eq!(store.get_file(&f.id).unwrap().as_ref(), Some(&f));
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get_file(&f.id).unwrap(), Some(f.clone()));
        assert_eq!(read(&store, &f.id).as_deref(), Some(&b"{}\n"[..]));
        assert_eq!(store.get_file("file-nope").unwrap(), None);
        assert_eq!(read(&store, "../flint.db"), None);
    }

    #[test]
    fn file_lists_page_in_both_orders() {
        let (_dir, store) = store();
        let a = store.insert_file("a", "fine-tune", b"a").unwrap();
        let b = store.insert_file("b", "batch", b"b").unwrap();
        let c = store.insert_file("c", "fine-tune", b"c").unwrap();
        let (all, more) = store.list_files(None, None, 10, true).unwrap();
        assert_eq!((ids(&all), more), (vec![c.id.as_str(), &b.id, &a.id], false));
        let (first, more) = store.list_files(None, None, 2, false).unwrap();
        assert_eq!((ids(&first), more), (vec![a.id.as_str(), &b.id], true));
        let (rest, more) = store.list_files(None, Some(&b.id), 2, false).unwrap();
        assert_eq!((ids(&rest), more), (vec![c.id.as_str()], false));
        let (older, more) = store.list_files(None, Some(&c.id), 1, true).unwrap();
        assert_eq!((ids(&older), more), (vec![b.id.as_str()], true));
        let (tune, _) = store.list_files(Some("fine-tune"), None, 10, true).unwrap();
        assert_eq!(ids(&tune), [c.id.as_str(), &a.id]);
        assert!(store.list_files(None, Some("file-unknown"), 10, true).unwrap().0.is_empty());
        let (none, more) = store.list_files(None, None, 0, true).unwrap();
        assert_eq!((none.len(), more), (0, true));
    }

    #[test]
    fn delete_removes_row_and_contents() {
        let (_dir, store) = store();
        let f = store.insert_file("a", "user_data", b"abc").unwrap();
        let path = store.file_path(&f.id);
        assert!(path.is_file());
        assert!(store.delete_file(&f.id).unwrap());
        assert!(!path.exists());
        assert_eq!(store.get_file(&f.id).unwrap(), None);
        assert_eq!(read(&store, &f.id), None);
        assert!(!store.delete_file(&f.id).unwrap());
    }

    #[test]
    fn a_failed_insert_leaves_no_file() {
        let (dir, store) = store();
        store.conn().execute_batch("DROP TABLE files").unwrap();
        assert!(matches!(store.insert_file("a", "batch", b"abc"), Err(StoreError::Sqlite(_))));
        assert_eq!(fs::read_dir(dir.path().join("files")).unwrap().count(), 0);
    }

    #[test]
    fn migrations_run_once_and_refuse_a_newer_schema() {
        let (dir, store) = store();
        store.insert_job("ftjob-1", 1, "queued", "m", &json!({"id": "ftjob-1"})).unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let v: i64 = store.conn().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        assert!(store.get_job("ftjob-1").unwrap().is_some());
        store.conn().pragma_update(None, "user_version", 99).unwrap();
        drop(store);
        assert!(matches!(Store::open(dir.path()), Err(StoreError::TooNew { found: 99, .. })));
    }

    #[test]
    fn jobs_round_trip_and_page_newest_first() {
        let (_dir, store) = store();
        for (id, t) in [("ftjob-a", 10), ("ftjob-b", 20), ("ftjob-c", 20), ("ftjob-d", 30)] {
            store.insert_job(id, t, "queued", "m", &json!({"id": id, "status": "queued"})).unwrap();
        }
        let page_ids = |v: &[Value]| v.iter().map(|j| j["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
        let (p, more) = store.list_jobs(None, 2).unwrap();
        assert_eq!((page_ids(&p), more), (vec!["ftjob-d".into(), "ftjob-c".into()], true));
        let (p, more) = store.list_jobs(Some("ftjob-c"), 2).unwrap();
        assert_eq!((page_ids(&p), more), (vec!["ftjob-b".into(), "ftjob-a".into()], false));
        assert!(store.update_job("ftjob-b", "running", &json!({"id": "ftjob-b", "status": "running"})).unwrap());
        assert!(!store.update_job("ftjob-x", "running", &json!({})).unwrap());
        let counts = store.job_counts().unwrap();
        assert_eq!((counts.get("queued"), counts.get("running"), counts.get("failed")), (Some(&3), Some(&1), None));
        assert_eq!(store.get_job("ftjob-b").unwrap().unwrap()["status"], "running");
        assert_eq!(store.get_job("ftjob-x").unwrap(), None);
        let active = store.jobs_with_status(&["queued", "running"]).unwrap();
        assert_eq!(page_ids(&active), ["ftjob-a", "ftjob-b", "ftjob-c", "ftjob-d"]);
        assert_eq!(page_ids(&store.jobs_with_status(&["running"]).unwrap()), ["ftjob-b"]);
        assert!(store.jobs_with_status(&[]).unwrap().is_empty());
    }

    #[test]
    fn events_and_checkpoints_page_newest_first_per_job() {
        let (_dir, store) = store();
        for i in 0..5 {
            store.add_event("j1", &format!("ev-{i}"), i, &json!({"n": i})).unwrap();
            store.add_checkpoint("j1", &format!("ck-{i}"), i, i * 10, &json!({"step": i * 10})).unwrap();
        }
        store.add_event("j2", "ev-other", 0, &json!({"n": 99})).unwrap();
        let ns = |v: &[Value]| v.iter().map(|e| e["n"].as_i64().unwrap()).collect::<Vec<_>>();
        let (p, more) = store.list_events("j1", None, 2).unwrap();
        assert_eq!((ns(&p), more), (vec![4, 3], true));
        let (p, more) = store.list_events("j1", Some("ev-3"), 10).unwrap();
        assert_eq!((ns(&p), more), (vec![2, 1, 0], false));
        assert_eq!(ns(&store.list_events("j2", None, 10).unwrap().0), [99]);
        let (p, more) = store.list_checkpoints("j1", Some("ck-1"), 10).unwrap();
        assert_eq!((p, more), (vec![json!({"step": 0})], false));
        assert!(store.add_event("j1", "ev-0", 9, &json!({})).is_err(), "event ids are unique");
    }
}
